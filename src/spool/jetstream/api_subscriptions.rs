//! Subscriptions created through the admin API, on JetStream
//! (`docs/design/jetstream.md` §1.3): the latest message on
//! `P.c.sub.{name}` is the subscription (its JSON in `Relay-Meta`, no
//! body; `Relay-Audit` names the audit record of the change) or, once
//! removed, a tombstone without metadata. Every relay's fold keeps it in
//! its index (`S{name}` → `[sequence u64][JSON, or nothing for a
//! tombstone]`), so every relay sees it and it holds across a reopen; a
//! removal also forgets the subscription's pause, as on sled.
//!
//! Not one atomic batch with its audit record (the design doc says why):
//! the audit record is published first, then the subscription expecting
//! the sequence this relay's index holds for its subject. So no change
//! is ever kept without its record; a change refused (another relay's
//! came first, or no answer) leaves a record of what was asked, which
//! `Relay-Audit` on the change that did land tells apart.

use super::staged::Writes;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::index::{storage, Index};
use super::pause::forget_pause;
use super::store::Published;
use super::subjects::{AUDIT, META};
use super::JetStreamSpool;
use crate::spool::{cause, ApiSubscription, AuditEntry, AuditId, SpoolError};

const SUBSCRIPTION: u8 = b'S';

fn key(name: &str) -> Vec<u8> {
    let mut key = vec![SUBSCRIPTION];
    key.extend_from_slice(name.as_bytes());
    key
}

/// An API subscription's message folded in (`None`: its tombstone).
pub(super) fn fold_api_subscription(
    batch: &mut Writes,
    sequence: u64,
    name: &str,
    meta: Option<&str>,
) {
    let mut value = sequence.to_be_bytes().to_vec();
    match meta {
        Some(meta) => value.extend_from_slice(meta.as_bytes()),
        None => forget_pause(batch, name),
    }
    batch.insert(key(name), value);
}

impl Index {
    /// The API subscriptions, by name; one that cannot be read is left
    /// out (with a warning).
    pub(super) fn api_subscriptions(&self) -> Result<Vec<ApiSubscription>, SpoolError> {
        let mut out = Vec::new();
        for item in self.db()?.scan_prefix([SUBSCRIPTION]) {
            let (key, value) = item.map_err(storage)?;
            let Some(json) = value.get(8..).filter(|json| !json.is_empty()) else {
                continue; // removed
            };
            match serde_json::from_slice(json) {
                Ok(subscription) => out.push(subscription),
                Err(err) => {
                    let name = String::from_utf8_lossy(key.get(1..).unwrap_or_default());
                    tracing::warn!(name = %name, error = %err, "an API subscription cannot be read");
                }
            }
        }
        Ok(out)
    }

    /// The sequence of `name`'s latest message (0: none), and whether it
    /// is a subscription (not a tombstone).
    fn api_subscription_at(&self, name: &str) -> Result<(u64, bool), SpoolError> {
        let Some(value) = self.db()?.get(key(name)).map_err(storage)? else {
            return Ok((0, false));
        };
        let sequence = value
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| {
                SpoolError::Corrupt(format!("API subscription {name:?} in the index"))
            })?;
        Ok((sequence, value.len() > 8))
    }
}

impl JetStreamSpool {
    /// The API subscriptions as this relay's index holds them.
    /// Hears each API subscription change folded in, whichever relay made
    /// it (the relay applies them to its routes and targets).
    pub(crate) fn subscription_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.index.watch_subscriptions()
    }

    pub(crate) fn api_subscriptions(&self) -> Vec<ApiSubscription> {
        self.index.api_subscriptions().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "the API subscriptions cannot be read");
            Vec::new()
        })
    }

    /// Keeps (creates or replaces) an API subscription, after its audit
    /// record; answers the record's id once both are durable.
    pub(crate) async fn put_subscription(
        &self,
        subscription: ApiSubscription,
        audit: AuditEntry,
    ) -> Result<AuditId, SpoolError> {
        self.open_for_writes()?;
        let json =
            serde_json::to_string(&subscription).map_err(|e| SpoolError::Encode(cause(e)))?;
        let (expected, _) = self.index.api_subscription_at(&subscription.name)?;
        let (id, _) = self.publish_audit(&audit).await?;
        self.change_subscription(&subscription.name, Some(json), expected, id)
            .await
    }

    /// Forgets an API subscription, after its audit record; answers the
    /// record's id once both are durable (one not there is only audited).
    pub(crate) async fn remove_subscription(
        &self,
        name: &str,
        audit: AuditEntry,
    ) -> Result<AuditId, SpoolError> {
        self.open_for_writes()?;
        let (expected, live) = self.index.api_subscription_at(name)?;
        let (id, sequence) = self.publish_audit(&audit).await?;
        if !live {
            self.caught_up(sequence).await?;
            return Ok(id);
        }
        self.change_subscription(name, None, expected, id).await
    }

    /// Publishes `name`'s new message (`None`: its tombstone) expecting
    /// `expected` on its subject.
    pub(super) async fn change_subscription(
        &self,
        name: &str,
        json: Option<String>,
        expected: u64,
        audit: AuditId,
    ) -> Result<AuditId, SpoolError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        headers.insert(AUDIT, audit.to_string().as_str());
        if let Some(json) = &json {
            headers.insert(META, json.as_str());
        }
        let subject = self.link.names().api_subscription(name);
        let published = self.publish_record(subject, headers, Bytes::new()).await?;
        match published {
            Published::Acked(ack) => self.caught_up(ack.sequence).await.map(|()| audit),
            Published::Taken => {
                // Another relay changed it first: read it again to retry.
                self.sync().await?;
                Err(SpoolError::Unavailable(format!(
                    "API subscription {name:?} was changed meanwhile (on another relay?); \
                     read it again and retry (audit record {audit} records what was asked)"
                )))
            }
        }
    }
}
