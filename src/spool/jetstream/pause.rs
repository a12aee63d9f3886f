//! Pause and resume (`docs/design/jetstream.md` §1.3): the flag is the
//! latest message on `P.c.pause.{sub}` (its `Relay-Meta` header names the
//! subscription and says paused or not), folded into every relay's index,
//! so it holds across a reopen and on every relay. A paused
//! subscription's lease fetches nothing and waits for the fold. The
//! subscription's consumer is paused on the server too (until 9999), which
//! closes the window before a lagging relay has folded the flag; the flag
//! stays the truth, and a consumer found otherwise at open is set by it.

use super::staged::Writes;
use std::collections::BTreeSet;

use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::index::{storage, Index};
use super::store::Published;
use super::subjects::META;
use super::JetStreamSpool;
use crate::spool::{cause, SpoolError};

const PAUSED: u8 = b'P';
/// A server-side pause lasts until resumed: the server takes a date, and
/// this one is as far as it goes.
const PAUSED_UNTIL: time::OffsetDateTime = time::macros::datetime!(9999-01-01 0:00 UTC);

/// What a pause message says.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PauseFlag {
    pub subscription: String,
    pub paused: bool,
}

fn key(name: &str) -> Vec<u8> {
    let mut key = vec![PAUSED];
    key.extend_from_slice(name.as_bytes());
    key
}

/// A pause message folded in.
pub(super) fn fold_pause(batch: &mut Writes, meta: &str) -> Result<(), SpoolError> {
    let flag: PauseFlag = serde_json::from_str(meta)
        .map_err(|e| SpoolError::Corrupt(format!("a pause record: {e}")))?;
    if flag.paused {
        batch.insert(key(&flag.subscription), &[1u8]);
    } else {
        batch.remove(key(&flag.subscription));
    }
    Ok(())
}

/// A subscription removed: a later one of that name starts unpaused.
pub(super) fn forget_pause(batch: &mut Writes, name: &str) {
    batch.remove(key(name));
}

impl Index {
    pub(super) fn paused(&self) -> Result<BTreeSet<String>, SpoolError> {
        let mut out = BTreeSet::new();
        for item in self.db()?.scan_prefix([PAUSED]) {
            let (key, _) = item.map_err(storage)?;
            if let Ok(name) = std::str::from_utf8(&key[1..]) {
                out.insert(name.to_owned());
            }
        }
        Ok(out)
    }

    pub(super) fn is_paused(&self, subscription: &str) -> Result<bool, SpoolError> {
        self.db()?.contains_key(key(subscription)).map_err(storage)
    }
}

impl JetStreamSpool {
    pub(crate) async fn pause(&self, subscription: &str, paused: bool) -> Result<(), SpoolError> {
        self.open_for_writes()?;
        let flag = PauseFlag {
            subscription: subscription.to_owned(),
            paused,
        };
        let json = serde_json::to_string(&flag).map_err(|e| SpoolError::Encode(cause(e)))?;
        let mut headers = HeaderMap::new();
        headers.insert(META, json.as_str());
        let subject = self.link.names().pause(subscription);
        let published = self.publish_record(subject, headers, Bytes::new()).await?;
        match published {
            Published::Acked(ack) => self.caught_up(ack.sequence).await?,
            Published::Taken => {
                return Err(SpoolError::Unavailable(
                    "JetStream refused a pause record it expected nothing of".into(),
                ))
            }
        }
        self.pause_on_server(subscription, paused).await
    }

    /// Pauses or resumes `subscription`'s consumers on the server, as its
    /// flag says; nothing for a consumer it does not have.
    pub(super) async fn pause_on_server(
        &self,
        subscription: &str,
        paused: bool,
    ) -> Result<(), SpoolError> {
        let names = self.link.names();
        for name in [
            names.consumer(subscription),
            names.retry_consumer(subscription),
        ] {
            self.pause_consumer_on_server(name, paused).await?;
        }
        Ok(())
    }

    async fn pause_consumer_on_server(&self, name: String, paused: bool) -> Result<(), SpoolError> {
        let stream = self.stream.clone();
        let answer = self
            .bridge
            .run({
                let name = name.clone();
                async move {
                    if paused {
                        stream.pause_consumer(&name, PAUSED_UNTIL).await
                    } else {
                        stream.resume_consumer(&name).await
                    }
                }
            })
            .await?;
        match answer {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(err.kind(), ConsumerErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
            {
                Ok(())
            }
            Err(err) => Err(SpoolError::Unavailable(format!(
                "JetStream: pausing or resuming the consumer {name}: {err}"
            ))),
        }
    }

    /// The subscriptions paused now, as the index has folded them.
    pub(crate) fn paused(&self) -> BTreeSet<String> {
        self.index.paused().unwrap_or_default()
    }

    pub(crate) fn is_paused(&self, subscription: &str) -> bool {
        self.index.is_paused(subscription).unwrap_or(false)
    }
}
