//! ACME for several relays on one JetStream spool: they order once and
//! serve the same certificate. The state lives in the spool's shared
//! bucket `{prefix}_acme` instead of files:
//!
//! - `account`: the account, as [`super::store`] writes it to a file;
//! - `certificate`: the chain and key (a copy also goes to each relay's
//!   own files, for `webhook-relay cert status` on that host);
//! - `order`: the turn to order, `{relay, until_ms}`, taken by a create
//!   that fails while another relay holds it, or by an update of a turn
//!   whose holder let it lapse (a relay killed mid-order);
//! - `challenge.tls.{domain}` and `challenge.http.{token}`: the answers of
//!   the order under way. The CA's validation reaches whichever relay the
//!   load balancer picks, so every relay answers them.
//!
//! Every relay watches the bucket: a newer certificate is installed as it
//! lands, and challenge answers come and go with the order.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::certificate::Loaded;
use super::store::{StoredAccount, StoredCertificate};
use super::{Acme, AcmeError, ATTEMPT_TIMEOUT};
use crate::spool::{SharedChange, SharedState, SpoolError};

const ACCOUNT: &str = "account";
const CERTIFICATE: &str = "certificate";
const ORDER: &str = "order";
const TLS_CHALLENGE: &str = "challenge.tls.";
const HTTP_CHALLENGE: &str = "challenge.http.";

/// How long a published challenge answer is given to reach the other
/// relays before the CA is told to validate. Their watches deliver in
/// milliseconds; no relay acknowledges it (none knows how many there are),
/// so a second covers a busy one.
const CHALLENGE_SPREAD: std::time::Duration = std::time::Duration::from_secs(1);

/// The bucket's name under the spool's prefix.
pub(super) const BUCKET: &str = "acme";

/// Who is ordering, and until when its turn holds.
#[derive(Debug, Serialize, Deserialize)]
struct Turn {
    relay: String,
    until_ms: i64,
}

/// What [`Shared::take_turn`] found.
pub(super) enum Taken {
    Mine,
    /// Another relay is ordering; its certificate comes by the watch.
    Theirs(String),
}

/// This relay's handle on the shared ACME state.
#[derive(Clone)]
pub(super) struct Shared {
    state: SharedState,
    /// This process, in the turn's record.
    relay: String,
}

impl From<SpoolError> for AcmeError {
    fn from(err: SpoolError) -> AcmeError {
        AcmeError::Shared(err.to_string())
    }
}

impl Shared {
    pub(super) fn new(state: SharedState) -> Shared {
        Shared {
            state,
            relay: ulid::Ulid::new().to_string(),
        }
    }

    pub(super) async fn account(&self) -> Result<Option<StoredAccount>, AcmeError> {
        let Some(bytes) = self.state.get(ACCOUNT).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AcmeError::Shared(format!("the shared account is unreadable: {e}")))
    }

    pub(super) async fn save_account(&self, account: &StoredAccount) -> Result<(), AcmeError> {
        let bytes = serde_json::to_vec(account).map_err(|e| AcmeError::Shared(e.to_string()))?;
        self.state.put(ACCOUNT, bytes.into()).await?;
        Ok(())
    }

    pub(super) async fn certificate(&self) -> Result<Option<StoredCertificate>, AcmeError> {
        match self.state.get(CERTIFICATE).await? {
            None => Ok(None),
            Some(bytes) => decode_certificate(&bytes).map(Some),
        }
    }

    pub(super) async fn save_certificate(
        &self,
        certificate: &StoredCertificate,
    ) -> Result<(), AcmeError> {
        let bytes =
            serde_json::to_vec(certificate).map_err(|e| AcmeError::Shared(e.to_string()))?;
        self.state.put(CERTIFICATE, bytes.into()).await?;
        Ok(())
    }

    /// Takes the turn to order, for one attempt's length, unless another
    /// relay holds it and has not let it lapse (by `now_ms`, the relays'
    /// clocks being close: the turn outlasts an attempt by a minute).
    pub(super) async fn take_turn(&self, now_ms: i64) -> Result<Taken, AcmeError> {
        let hold = i64::try_from(ATTEMPT_TIMEOUT.as_millis()).unwrap_or(i64::MAX) + 60_000;
        let turn = Turn {
            relay: self.relay.clone(),
            until_ms: now_ms.saturating_add(hold),
        };
        let bytes =
            Bytes::from(serde_json::to_vec(&turn).map_err(|e| AcmeError::Shared(e.to_string()))?);
        if self.state.create(ORDER, bytes.clone()).await?.is_some() {
            return Ok(Taken::Mine);
        }
        let Some((held, revision)) = self.state.entry(ORDER).await? else {
            // Let go of between the two requests: the next look takes it.
            return Ok(Taken::Theirs("a relay that just finished".into()));
        };
        match serde_json::from_slice::<Turn>(&held) {
            Ok(other) if other.until_ms > now_ms => Ok(Taken::Theirs(other.relay)),
            // Lapsed, or unreadable: taken over, unless another relay
            // took it over first.
            _ => match self.state.update(ORDER, bytes, revision).await? {
                Some(_) => Ok(Taken::Mine),
                None => Ok(Taken::Theirs("a relay that took over a lapsed turn".into())),
            },
        }
    }

    /// Gives the turn back, if it is still this relay's.
    pub(super) async fn end_turn(&self) -> Result<(), AcmeError> {
        if let Some((held, _)) = self.state.entry(ORDER).await? {
            let mine = serde_json::from_slice::<Turn>(&held).is_ok_and(|t| t.relay == self.relay);
            if mine {
                self.state.delete(ORDER).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn publish_tls(&self, domain: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let key = format!("{TLS_CHALLENGE}{domain}");
        self.state.put(&key, Bytes::copy_from_slice(digest)).await?;
        Ok(())
    }

    pub(super) async fn publish_http(&self, token: &str, answer: &str) -> Result<(), AcmeError> {
        let key = format!("{HTTP_CHALLENGE}{token}");
        self.state
            .put(&key, Bytes::copy_from_slice(answer.as_bytes()))
            .await?;
        Ok(())
    }

    /// Removes the answers of an order that is over.
    pub(super) async fn clear_challenges(&self, domains: &[String], tokens: &[String]) {
        let keys = domains
            .iter()
            .map(|d| format!("{TLS_CHALLENGE}{d}"))
            .chain(tokens.iter().map(|t| format!("{HTTP_CHALLENGE}{t}")));
        for key in keys {
            if let Err(err) = self.state.delete(&key).await {
                tracing::debug!(key, error = %err, "a shared challenge answer was not removed");
            }
        }
    }

    pub(super) fn watch(&self) -> tokio::sync::mpsc::Receiver<SharedChange> {
        self.state.watch()
    }
}

fn decode_certificate(bytes: &[u8]) -> Result<StoredCertificate, AcmeError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AcmeError::Shared(format!("the shared certificate is unreadable: {e}")))
}

impl Acme {
    /// Follows the shared bucket until the relay stops: installs a
    /// certificate newer than the one served, and answers the challenges
    /// of whichever relay is ordering.
    pub(super) async fn follow(
        self: std::sync::Arc<Self>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) {
        let Some(shared) = &self.shared else { return };
        let mut changes = shared.watch();
        while let Some(change) = changes.recv().await {
            match change {
                SharedChange::Put { key, value } if key == CERTIFICATE => {
                    let loaded = decode_certificate(&value).and_then(|stored| {
                        Loaded::from_stored(&stored).map(|loaded| (stored, loaded))
                    });
                    match loaded {
                        Ok((stored, loaded)) => {
                            self.adopt(&stored, loaded, &metrics);
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "a certificate another relay stored cannot be used")
                        }
                    }
                }
                SharedChange::Put { key, value } => {
                    if let Some(domain) = key.strip_prefix(TLS_CHALLENGE) {
                        if let Err(err) = self.challenges.set_tls(domain, &value) {
                            tracing::warn!(domain, error = %err, "a shared TLS-ALPN-01 answer cannot be served");
                        }
                    } else if let Some(token) = key.strip_prefix(HTTP_CHALLENGE) {
                        self.challenges
                            .set_http(token, &String::from_utf8_lossy(&value));
                    }
                }
                SharedChange::Gone { key } => {
                    if let Some(domain) = key.strip_prefix(TLS_CHALLENGE) {
                        self.challenges.forget_tls(domain);
                    } else if let Some(token) = key.strip_prefix(HTTP_CHALLENGE) {
                        self.challenges.forget_http(token);
                    }
                }
            }
        }
    }

    /// The turn to order: always this relay's without a shared spool.
    pub(super) async fn take_turn(&self) -> Result<Option<Taken>, AcmeError> {
        match &self.shared {
            Some(shared) => shared.take_turn(self.clock.now_ms()).await.map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn end_turn(&self) {
        if let Some(shared) = &self.shared {
            if let Err(err) = shared.end_turn().await {
                tracing::warn!(error = %err, "the turn to order was not given back; it lapses by itself");
            }
        }
    }

    /// Serves a certificate another relay stored, if it is newer than the
    /// one served: its metric, a local copy for `cert status`, then the
    /// resolver. Whether it did.
    fn adopt(
        &self,
        stored: &StoredCertificate,
        loaded: Loaded,
        metrics: &crate::metrics::Metrics,
    ) -> bool {
        if !self.is_newer(&loaded) {
            return false;
        }
        if let Err(err) = self.store.save_certificate(stored) {
            tracing::warn!(error = %err, "the shared certificate is served but its local copy was not written");
        }
        let info = &loaded.info;
        metrics.set_certificate_expiry(&info.domains, info.validity.not_after_ms);
        self.install(loaded);
        true
    }

    /// Installs the shared certificate if another relay stored a newer one
    /// than this relay serves (its watch may lag); whether it did.
    pub(super) async fn adopt_shared(&self, metrics: &crate::metrics::Metrics) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let stored = match shared.certificate().await {
            Ok(Some(stored)) => stored,
            Ok(None) => return false,
            Err(err) => {
                tracing::warn!(error = %err, "the shared certificate cannot be read");
                return false;
            }
        };
        match Loaded::from_stored(&stored) {
            Ok(loaded) => self.adopt(&stored, loaded, metrics),
            Err(_) => false,
        }
    }

    /// Whether an account is stored for the configured directory.
    pub(super) async fn has_account(&self) -> bool {
        self.stored_account().await.ok().flatten().is_some()
    }

    /// The account stored for the configured directory, shared or in files.
    pub(super) async fn stored_account(
        &self,
    ) -> Result<Option<instant_acme::AccountCredentials>, AcmeError> {
        let directory = &self.config.directory;
        match &self.shared {
            Some(shared) => Ok(shared
                .account()
                .await?
                .filter(|stored| &stored.directory == directory)
                .map(|stored| stored.credentials)),
            None => self.store.account(directory),
        }
    }

    pub(super) async fn save_account(
        &self,
        credentials: instant_acme::AccountCredentials,
    ) -> Result<(), AcmeError> {
        let directory = self.config.directory.clone();
        match &self.shared {
            Some(shared) => {
                shared
                    .save_account(&StoredAccount {
                        directory,
                        credentials,
                    })
                    .await
            }
            None => self.store.save_account(&directory, credentials),
        }
    }

    /// Stores an issued certificate: shared first (the other relays pick
    /// it up from there), then this relay's files.
    pub(super) async fn save_certificate(
        &self,
        certificate: &StoredCertificate,
    ) -> Result<(), AcmeError> {
        if let Some(shared) = &self.shared {
            shared.save_certificate(certificate).await?;
        }
        self.store.save_certificate(certificate)
    }

    /// Answers a TLS-ALPN-01 challenge here and, shared, on every relay.
    pub(super) async fn answer_tls(&self, domain: &str, digest: &[u8]) -> Result<(), AcmeError> {
        self.challenges.set_tls(domain, digest)?;
        if let Some(shared) = &self.shared {
            shared.publish_tls(domain, digest).await?;
            tokio::time::sleep(CHALLENGE_SPREAD).await;
        }
        Ok(())
    }

    /// Answers an HTTP-01 challenge here and, shared, on every relay.
    pub(super) async fn answer_http(&self, token: &str, answer: &str) -> Result<(), AcmeError> {
        self.challenges.set_http(token, answer);
        if let Some(shared) = &self.shared {
            shared.publish_http(token, answer).await?;
            tokio::time::sleep(CHALLENGE_SPREAD).await;
        }
        Ok(())
    }

    /// Forgets the answers of an order that is over, here and shared.
    pub(super) async fn clear_challenges(&self, domains: &[String], tokens: &[String]) {
        self.challenges.clear();
        if let Some(shared) = &self.shared {
            shared.clear_challenges(domains, tokens).await;
        }
    }

    /// Whether `loaded` names the configured domains and outlives the
    /// certificate served now.
    pub(super) fn is_newer(&self, loaded: &Loaded) -> bool {
        loaded.covers(&self.config.domains)
            && self.status.certificate().is_none_or(|current| {
                loaded.info.validity.not_after_ms > current.validity.not_after_ms
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::spool::{skip_without_nats, JetStreamFixture, Routes};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_relay_has_the_turn_until_it_gives_it_back_or_lets_it_lapse() {
        if skip_without_nats() {
            return;
        }
        let fixture = JetStreamFixture::new();
        let clock = Clock::manual(1_800_000_000_000);
        let mut relays = Vec::new();
        for name in ["a", "b"] {
            let spool = fixture
                .open_relay(name, Routes::default(), clock)
                .await
                .unwrap();
            let state = spool
                .shared_state(BUCKET)
                .await
                .unwrap()
                .expect("JetStream");
            relays.push(Shared::new(state));
        }
        let (a, b) = (&relays[0], &relays[1]);
        let now = clock.now_ms();
        assert!(matches!(a.take_turn(now).await.unwrap(), Taken::Mine));
        match b.take_turn(now).await.unwrap() {
            Taken::Theirs(holder) => assert_eq!(holder, a.relay),
            Taken::Mine => panic!("two relays had the turn"),
        }
        // Given back: b takes it, and a's late give-back leaves b's alone.
        a.end_turn().await.unwrap();
        assert!(matches!(b.take_turn(now).await.unwrap(), Taken::Mine));
        a.end_turn().await.unwrap();
        assert!(matches!(a.take_turn(now).await.unwrap(), Taken::Theirs(_)));
        // b dies holding it: once it lapses, a takes it over, once.
        let lapsed = now + i64::try_from(ATTEMPT_TIMEOUT.as_millis()).unwrap() + 60_001;
        assert!(matches!(
            a.take_turn(lapsed - 2).await.unwrap(),
            Taken::Theirs(_)
        ));
        assert!(matches!(a.take_turn(lapsed).await.unwrap(), Taken::Mine));
        assert!(matches!(
            b.take_turn(lapsed).await.unwrap(),
            Taken::Theirs(_)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_sees_what_is_there_then_each_change() {
        if skip_without_nats() {
            return;
        }
        let fixture = JetStreamFixture::new();
        let spool = fixture
            .open_relay("a", Routes::default(), Clock::system())
            .await
            .unwrap();
        let shared = Shared::new(spool.shared_state(BUCKET).await.unwrap().unwrap());
        shared
            .publish_tls("relay.example.com", &[7; 32])
            .await
            .unwrap();
        let mut changes = shared.watch();
        let first = changes.recv().await.unwrap();
        assert_eq!(
            first,
            SharedChange::Put {
                key: "challenge.tls.relay.example.com".into(),
                value: Bytes::from_static(&[7; 32]),
            }
        );
        shared.publish_http("tok-1", "tok-1.thumb").await.unwrap();
        shared
            .clear_challenges(&["relay.example.com".into()], &["tok-1".into()])
            .await;
        let mut rest = Vec::new();
        for _ in 0..3 {
            rest.push(changes.recv().await.unwrap());
        }
        assert_eq!(
            rest,
            vec![
                SharedChange::Put {
                    key: "challenge.http.tok-1".into(),
                    value: Bytes::from_static(b"tok-1.thumb"),
                },
                SharedChange::Gone {
                    key: "challenge.tls.relay.example.com".into()
                },
                SharedChange::Gone {
                    key: "challenge.http.tok-1".into()
                },
            ]
        );
    }
}
