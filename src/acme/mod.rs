//! ACME (RFC 8555): the relay orders its own publicly trusted certificate
//! for `[server.acme] domains`, serves it on the ingress listener, and
//! renews it by itself.
//!
//! The client is `instant-acme`, not `rustls-acme`. `rustls-acme` is a
//! whole manager (its own acceptor, cache and renewal timer, one
//! maintainer); the relay already has what it would replace: a
//! certificate resolver that swaps certificates under live connections
//! (`ingress::tls`), a state directory, a clock tests can drive, and soon a
//! shared JetStream store where several relays must order once under a
//! lock, which wants the order flow in our hands. `instant-acme` is only
//! the protocol (two active maintainers): TLS-ALPN-01 and HTTP-01, ARI
//! renewal windows (RFC 9773), serialisable account credentials, a custom
//! root for a private or test CA, and the same aws-lc-rs crypto as the
//! rest of the process. What it leaves to us is here:
//!
//! - [`schedule`]: when to renew and how long to back off (pure);
//! - [`store`]: account and certificate files, mode 0600;
//! - `shared`: the same, and the turn to order, in the JetStream spool's
//!   shared bucket, so several relays order once;
//! - [`certificate`]: an issued chain read back (names, issuer, expiry);
//! - [`challenge`]: challenge answers and the ingress resolver;
//! - [`http01`]: the HTTP-01 listener;
//! - [`report`]: `webhook-relay cert status`;
//! - `order`: one order, and the ARI window, through `instant-acme`;
//! - this file: the task that orders, installs and renews.

pub mod certificate;
pub mod challenge;
pub mod http01;
mod order;
pub mod report;
pub mod schedule;
mod shared;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use instant_acme::{Account, OrderStatus};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use self::certificate::{CertificateInfo, Loaded};
use self::challenge::{AcmeResolver, Challenges};
use self::order::renewal_window;
use self::schedule::{decide, renew_at, retry_after, wake_at, Decision};
use self::shared::{Shared, Taken};
use self::store::Store;
use crate::clock::Clock;
use crate::config::{AcmeChallenge, AcmeConfig, Config};
use crate::events::{Events, RelayEvent};
use crate::metrics::Metrics;
use crate::spool::Spool;

pub use crate::ingress::tls::ACME_TLS_ALPN;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is unreadable: {detail}", path.display())]
    Stored { path: PathBuf, detail: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("challenge: {0}")]
    Challenge(String),
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("the order ended {status:?}: {detail}")]
    Order { status: OrderStatus, detail: String },
    #[error("the CA did not complete the order within {0:?}")]
    TimedOut(Duration),
    /// The state shared by the relays on a JetStream spool.
    #[error("shared ACME state: {0}")]
    Shared(String),
    #[error("cannot bind the HTTP-01 listener on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Where ACME keeps its files: `acme/` beside the spool.
pub fn state_dir(config: &Config) -> PathBuf {
    config
        .spool
        .sled
        .path
        .parent()
        .map_or_else(|| PathBuf::from("acme"), |p| p.join("acme"))
}

/// The ACME tasks of a relay; dropping it stops them.
pub struct Running {
    renewing: JoinHandle<()>,
    following: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.renewing.abort();
        for task in [&self.following, &self.http].into_iter().flatten() {
            task.abort();
        }
    }
}

/// How long one order may take (challenges validated, certificate issued).
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one whole attempt may take (account, order, every request).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a relay waits before looking again while another relay on
/// the shared spool orders (its certificate usually arrives first).
const OTHERS_TURN: Duration = Duration::from_secs(10);

/// The certificate's state, as `/readyz` and the operator see it.
#[derive(Debug, Default)]
pub struct Status {
    certificate: ArcSwapOption<CertificateInfo>,
    last_error: Mutex<Option<String>>,
}

impl Status {
    pub fn certificate(&self) -> Option<Arc<CertificateInfo>> {
        self.certificate.load_full()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_certificate(&self, info: CertificateInfo) {
        self.certificate.store(Some(Arc::new(info)));
    }

    pub fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// The ACME side of a relay: prepared before anything binds (it loads a
/// stored certificate, so a restart serves at once), started once the
/// listeners are up.
pub struct Acme {
    config: AcmeConfig,
    store: Store,
    challenges: Arc<Challenges>,
    resolver: Arc<AcmeResolver>,
    status: Arc<Status>,
    clock: Clock,
    /// On a JetStream spool: the state every relay on it shares.
    shared: Option<Shared>,
}

impl Acme {
    /// On a JetStream spool the account and certificate are the ones the
    /// relays share (a local copy of the certificate is kept too).
    pub async fn prepare(
        config: &Config,
        spool: &Spool,
        clock: Clock,
    ) -> Result<Option<Acme>, AcmeError> {
        let Some(acme) = &config.server.acme else {
            return Ok(None);
        };
        // A CA file that cannot be read fails the start, not every order.
        if let Some(ca) = &acme.directory_ca {
            CertificateDer::from_pem_file(ca).map_err(|e| AcmeError::Stored {
                path: ca.clone(),
                detail: format!("directory_ca: {e}"),
            })?;
        }
        let store = Store::new(state_dir(config));
        let challenges = Arc::new(Challenges::default());
        let resolver = AcmeResolver::new(challenges.clone());
        let status = Arc::new(Status::default());
        let shared = spool.shared_state(shared::BUCKET).await?.map(Shared::new);
        let stored = match &shared {
            Some(shared) => shared.certificate().await?,
            None => store.certificate()?,
        };
        let relay = Acme {
            config: acme.clone(),
            store,
            challenges,
            resolver,
            status,
            clock,
            shared,
        };
        match stored.map(|s| Loaded::from_stored(&s)) {
            Some(Ok(loaded)) if loaded.covers(&acme.domains) => relay.install(loaded),
            Some(Ok(_)) => tracing::info!(
                "the stored certificate names other domains: ordering one for the configured ones"
            ),
            Some(Err(err)) => {
                tracing::warn!(error = %err, "the stored certificate is unusable: ordering a new one")
            }
            None => {}
        }
        Ok(Some(relay))
    }

    pub fn resolver(&self) -> Arc<AcmeResolver> {
        self.resolver.clone()
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Why the relay is not ready yet, if it is not: no certificate.
    pub fn readiness(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let status = self.status.clone();
        let domains = self.config.domains.join(", ");
        let directory = self.config.directory.clone();
        let clock = self.clock;
        move || {
            if let Some(certificate) = status.certificate() {
                let not_after = certificate.validity.not_after_ms;
                if clock.now_ms() < not_after {
                    return None;
                }
                let expired = crate::clock::format_ms(not_after);
                return Some(match status.last_error() {
                    Some(error) => format!("the certificate for {domains} expired at {expired}; renewing failed: {error}"),
                    None => format!("the certificate for {domains} expired at {expired}; renewing it from {directory}"),
                });
            }
            Some(match status.last_error() {
                Some(error) => format!("no certificate yet for {domains} from {directory}; the last order failed: {error}"),
                None => format!("no certificate yet for {domains}: ordering it from {directory}"),
            })
        }
    }

    /// Binds the HTTP-01 listener if the config asks for one, and starts
    /// ordering and renewing, until the [`Running`] is dropped. Each
    /// certificate installed shows in `metrics` and raises
    /// `relay.certificate.renewed`; the first failure of a spell raises
    /// `relay.certificate.failing`.
    pub async fn start(
        self,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
    ) -> Result<Running, AcmeError> {
        let http = match self.config.challenge {
            AcmeChallenge::Http01 => {
                let addr = self.config.http_listen;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| AcmeError::Bind { addr, source })?;
                tracing::info!(addr = %addr, "ACME HTTP-01 listener up");
                Some(tokio::spawn(http01::serve(
                    listener,
                    self.challenges.clone(),
                )))
            }
            AcmeChallenge::TlsAlpn01 => None,
        };
        if let Some(certificate) = self.status.certificate() {
            metrics.set_certificate_expiry(&certificate.domains, certificate.validity.not_after_ms);
        }
        let acme = Arc::new(self);
        let following = acme
            .shared
            .is_some()
            .then(|| tokio::spawn(acme.clone().follow(metrics.clone())));
        let renewing = tokio::spawn(acme.run(metrics, events));
        Ok(Running {
            renewing,
            following,
            http,
        })
    }

    fn install(&self, loaded: Loaded) {
        tracing::info!(
            domains = ?loaded.info.domains,
            issuer = %loaded.info.issuer,
            not_after = %crate::clock::format_ms(loaded.info.validity.not_after_ms),
            "serving the ACME certificate"
        );
        self.resolver.install(loaded.key);
        self.status.set_certificate(loaded.info);
    }

    /// Orders when due, forever; a failure keeps the current certificate
    /// and retries after a back-off.
    async fn run(self: Arc<Self>, metrics: Arc<Metrics>, events: Arc<Events>) {
        let mut account: Option<Account> = None;
        let mut failures = 0u32;
        let mut renewal: Option<i64> = None;
        // Where in an ARI window to renew: drawn once per certificate, so
        // each look at the window does not move the point.
        let mut jitter: f64 = rand::random();
        loop {
            let current = self.status.certificate();
            if let Some(certificate) = &current {
                // After a restart: the stored account, for the ARI window
                // (never a new one: that waits for an order).
                if account.is_none() && self.has_account().await {
                    account = tokio::time::timeout(ATTEMPT_TIMEOUT, self.account())
                        .await
                        .ok()
                        .and_then(Result::ok);
                }
                let ari = match &account {
                    Some(account) => renewal_window(account, certificate).await,
                    None => None,
                };
                let at = renew_at(certificate.validity, ari.map(|(window, _)| window), jitter);
                if renewal != Some(at) {
                    renewal = Some(at);
                    tracing::info!(renew_at = %crate::clock::format_ms(at), ari = ari.is_some(), "certificate renewal planned");
                }
                let now_ms = self.clock.now_ms();
                if let Decision::WaitUntil(at) = decide(now_ms, at) {
                    let wake = wake_at(now_ms, at, ari.map(|(_, recheck)| recheck));
                    self.clock.sleep_until(self.clock.instant_at(wake)).await;
                    continue;
                }
            }
            // On a shared spool one relay orders at a time, and not at all
            // once another relay's newer certificate is here.
            match self.take_turn().await {
                Ok(Some(Taken::Mine)) | Ok(None) => {}
                Ok(Some(Taken::Theirs(relay))) => {
                    tracing::debug!(ordering = %relay, "another relay is ordering the certificate");
                    self.clock
                        .sleep_until(self.clock.instant_now() + OTHERS_TURN)
                        .await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the turn to order cannot be taken now");
                    self.clock
                        .sleep_until(self.clock.instant_now() + OTHERS_TURN)
                        .await;
                    continue;
                }
            }
            if self.adopt_shared(&metrics).await {
                self.end_turn().await;
                continue;
            }
            // The client has no timeout of its own: a CA that accepts the
            // connection and never answers must not stall renewals.
            let attempt = async {
                match account.clone() {
                    Some(account) => self.order(&account).await.map(|loaded| (loaded, None)),
                    None => {
                        let new = self.account().await?;
                        let loaded = self.order(&new).await?;
                        Ok((loaded, Some(new)))
                    }
                }
            };
            let ordered = match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok((loaded, new_account))) => {
                    if new_account.is_some() {
                        account = new_account;
                    }
                    Ok(loaded)
                }
                Ok(Err(err)) => Err(err),
                Err(_) => Err(AcmeError::TimedOut(ATTEMPT_TIMEOUT)),
            };
            self.challenges.clear();
            self.end_turn().await;
            match ordered {
                Ok(loaded) => {
                    let info = &loaded.info;
                    metrics.set_certificate_expiry(&info.domains, info.validity.not_after_ms);
                    let renewed = RelayEvent::CertificateRenewed {
                        domains: info.domains.clone(),
                        issuer: info.issuer.clone(),
                        not_after_ms: info.validity.not_after_ms,
                        failures_before: failures,
                    };
                    events.raise(renewed, self.clock.now_ms());
                    failures = 0;
                    renewal = None;
                    jitter = rand::random();
                    self.status.set_error(None);
                    self.install(loaded);
                }
                Err(err) => {
                    failures += 1;
                    let valid_until = current.as_ref().map(|c| c.validity.not_after_ms);
                    let wait =
                        retry_after(failures, rand::random(), self.clock.now_ms(), valid_until);
                    let err = described(&err);
                    tracing::warn!(error = %err, failures, retry_in = ?wait, still_serving = current.is_some(), "ACME order failed");
                    self.status.set_error(Some(err.clone()));
                    if failures == 1 {
                        let failing = RelayEvent::CertificateFailing {
                            domains: self.config.domains.clone(),
                            error: err,
                            serving_until_ms: valid_until,
                        };
                        events.raise(failing, self.clock.now_ms());
                    }
                    self.clock
                        .sleep_until(self.clock.instant_now() + wait)
                        .await;
                }
            }
        }
    }
}

/// An error with its causes (`client error (Connect): tcp connect error:
/// Connection refused`), each said once.
fn described(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let said = next.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::schedule::Validity;

    #[derive(Debug, thiserror::Error)]
    enum Layer {
        #[error("client error (Connect)")]
        Outer(#[source] Inner),
    }
    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn an_error_is_described_with_its_causes_each_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = AcmeError::Protocol(instant_acme::Error::Other(Box::new(Layer::Outer(Inner(
            refused,
        )))));
        assert_eq!(
            described(&err),
            "ACME: client error (Connect): tcp connect error: connection refused"
        );
    }

    async fn spool_of(config: &Config) -> Spool {
        let routes = crate::spool::Routes::from_config(config);
        Spool::open(&config.spool, routes, Clock::system())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_unreadable_directory_ca_fails_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\n[server.acme]\ndomains = [\"relay.example.com\"]\ndirectory_ca = \"{}\"\n\n[spool.sled]\npath = \"{}\"\n\n[sources.tus]\nprovider = \"tusfacturas\"\ntoken = \"0123456789abcdef\"\n",
            dir.path().join("missing.pem").display(),
            dir.path().join("spool").display()
        );
        let config = Config::parse(&text).unwrap();
        let spool = spool_of(&config).await;
        let err = Acme::prepare(&config, &spool, Clock::system())
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        assert!(err.to_string().contains("directory_ca"), "{err}");
    }

    #[tokio::test]
    async fn readiness_waits_for_a_certificate_and_fails_again_once_it_expired() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\n[server.acme]\ndomains = [\"relay.example.com\"]\n\n[spool.sled]\npath = \"{}\"\n\n[sources.tus]\nprovider = \"tusfacturas\"\ntoken = \"0123456789abcdef\"\n",
            dir.path().join("spool").display()
        );
        let config = Config::parse(&text).unwrap();
        let clock = Clock::manual(1_800_000_000_000);
        let spool = spool_of(&config).await;
        let acme = Acme::prepare(&config, &spool, clock)
            .await
            .unwrap()
            .expect("[server.acme]");
        let ready = acme.readiness();
        let reason = ready().expect("not ready without a certificate");
        assert!(
            reason.contains("no certificate yet for relay.example.com"),
            "{reason}"
        );
        acme.status.set_error(Some("connection refused".into()));
        assert!(ready()
            .unwrap()
            .contains("the last order failed: connection refused"));

        acme.status.set_error(None);
        acme.status
            .certificate
            .store(Some(Arc::new(CertificateInfo {
                domains: vec!["relay.example.com".into()],
                issuer: "CN=test".into(),
                validity: Validity {
                    not_before_ms: clock.now_ms(),
                    not_after_ms: clock.now_ms() + 60_000,
                },
                id: None,
            })));
        assert_eq!(ready(), None);
        clock.advance(Duration::from_secs(60));
        let reason = ready().expect("an expired certificate is not ready");
        assert!(reason.contains("expired at"), "{reason}");
    }
}
