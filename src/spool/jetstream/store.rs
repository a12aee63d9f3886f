//! Writes: a notification stored once per dedup key within the window,
//! and a body quarantined (`docs/design/jetstream.md`, "Store, dedup,
//! fan-out, quarantine").
//!
//! A store is one publish to `P.n.{src}.{kh}.{id}` that expects the last
//! sequence over `P.n.{src}.{kh}.*` to be the one it read (0 at first), so
//! of two stores of one key only one lands, on any relay. The loser reads
//! the newest message of the key: its own id (a retry after a lost ack) is
//! `New`; another's received inside the window (by `received_ms`, as the
//! contract asks, not server time) is a `Duplicate`, noted as a resend
//! `P.e.{id}.{ulid}`; an older one is taken over by publishing again
//! expecting its sequence. Each answers once JetStream acknowledged it and
//! the local index folded it in (read-your-writes).

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::connect::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT;
use super::index::Family;
use super::subjects::{META, RELEASED};
use super::{JetStreamSpool, Names};
use crate::providers::Notification;
use crate::spool::{
    cause, dedup, NotificationId, NotificationMeta, QuarantineMeta, Received, SpoolError, Stored,
};

/// Tries of one store when other relays take the key over meanwhile.
const TRIES: usize = 4;

/// What one publish came to.
pub(super) enum Published {
    Acked(PublishAck),
    /// Another message holds the key now (the compare-and-set failed).
    Taken,
}

/// One store, as it goes to the servers.
struct Store {
    context: jetstream::Context,
    stream: Stream,
    names: Names,
    id: NotificationId,
    subject: String,
    wildcard: String,
    meta: String,
    released: Option<NotificationId>,
    body: Bytes,
    received_ms: i64,
    window_ms: i64,
    timeout: Duration,
    /// Made of the provider's answer: the relay asking again is not a
    /// resend, so its duplicate publishes no `P.e`.
    reconciled: bool,
}

impl JetStreamSpool {
    pub(crate) async fn store(
        &self,
        received: Received,
        notification: Notification,
        released: Option<NotificationId>,
    ) -> Result<Stored, SpoolError> {
        let subscriptions = self.routes.load().matching(
            &received.source,
            &notification.event_type,
            notification.status,
        );
        self.store_to(received, notification, released, subscriptions)
            .await
    }

    /// Stores a notification fanned out to these subscriptions only; what
    /// the servers answered is noted for [`Self::health`].
    pub(crate) async fn store_to(
        &self,
        received: Received,
        notification: Notification,
        released: Option<NotificationId>,
        subscriptions: Vec<String>,
    ) -> Result<Stored, SpoolError> {
        self.open_for_writes()?;
        self.connected()?;
        let stored = self
            .store_on_servers(received, notification, released, subscriptions)
            .await;
        self.outage.note(&stored, self.clock);
        stored
    }

    async fn store_on_servers(
        &self,
        received: Received,
        notification: Notification,
        released: Option<NotificationId>,
        subscriptions: Vec<String>,
    ) -> Result<Stored, SpoolError> {
        let held = match released {
            Some(quarantined) => Some(self.still_quarantined(quarantined).await?),
            None => None,
        };
        let reconciled = notification
            .flags
            .contains(&crate::providers::Flag::Reconciled);
        let early = self
            .reconciled_duplicate(&received.source, &notification, received.received_ms)
            .await?;
        let id = self.next_id(received.received_ms);
        let meta = NotificationMeta {
            id: id.to_string(),
            source: received.source,
            received_ms: received.received_ms,
            event_type: notification.event_type,
            subject: notification.subject,
            dedup_key: notification.dedup_key,
            provider_time: notification.provider_time.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
            status: notification.status,
            // Decided by the fold, in the invoice index (`invoices.rs`).
            superseded: false,
            content_type: received.content_type,
            headers: received.headers,
            peer: received.peer,
            subscriptions,
            flags: notification
                .flags
                .iter()
                .map(|flag| flag.as_str().to_owned())
                .collect(),
        };
        let names = self.link.names().clone();
        let store = Store {
            context: self.link.context().clone(),
            stream: self.stream.clone(),
            subject: names.notification(&meta.source, &meta.dedup_key, id),
            wildcard: names.dedup_wildcard(&meta.source, &meta.dedup_key),
            names,
            id,
            meta: serde_json::to_string(&meta).map_err(|e| SpoolError::Encode(cause(e)))?,
            released,
            body: received.body,
            received_ms: received.received_ms,
            window_ms: dedup::window_ms(&self.config),
            timeout: self.config.jetstream.store_timeout.0,
            reconciled,
        };
        let (stored, mut sequence) = match early {
            Some(answer) => answer,
            None => self.bridge.run(store.run()).await??,
        };
        if let Some(held) = held {
            // A resend carries no release: the tombstone takes the body out
            // either way (and out of the stream, one message per subject).
            if let Some(tombstone) = self.tombstone(held).await? {
                sequence = sequence.max(tombstone);
            }
        }
        self.caught_up(sequence).await?;
        Ok(stored)
    }

    /// Removes a quarantined body for good; `NotFound` when it is not there.
    pub(crate) async fn discard(&self, id: NotificationId) -> Result<(), SpoolError> {
        self.open_for_writes()?;
        let held = self.still_quarantined(id).await?;
        match self.tombstone(held).await? {
            Some(sequence) => self.caught_up(sequence).await,
            None => Err(SpoolError::NotFound(format!(
                "quarantined body {id} (released or discarded meanwhile)"
            ))),
        }
    }

    /// The quarantine subject and sequence of `id`; `NotFound` when it is
    /// no longer quarantined. One this relay's index does not hold is
    /// looked for again once it holds what the stream holds (another
    /// relay may have quarantined it a moment ago).
    async fn still_quarantined(&self, id: NotificationId) -> Result<(String, u64), SpoolError> {
        let held = || {
            let index = self.index.clone();
            async move {
                tokio::task::spawn_blocking(move || index.get(Family::Quarantine, id))
                    .await
                    .map_err(|e| SpoolError::Task(e.to_string()))?
            }
        };
        let entry = match held().await? {
            Some(entry) => Some(entry),
            None => {
                self.sync().await?;
                held().await?
            }
        };
        let entry = entry.ok_or_else(|| {
            SpoolError::NotFound(format!(
                "quarantined body {id} (released or discarded meanwhile)"
            ))
        })?;
        let meta: QuarantineMeta = serde_json::from_slice(&entry.meta)
            .map_err(|e| SpoolError::Corrupt(format!("the metadata of {id}: {e}")))?;
        Ok((
            self.link.names().quarantine(&meta.source, id),
            entry.sequence,
        ))
    }

    /// Replaces a quarantined body by a tombstone (no metadata), expecting
    /// the body still there; the sequence the fold must reach. `None` when
    /// it was replaced elsewhere meanwhile (a discard or a release; the
    /// index has caught up with it then).
    async fn tombstone(
        &self,
        (subject, sequence): (String, u64),
    ) -> Result<Option<u64>, SpoolError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            sequence.to_string().as_str(),
        );
        let published = self.publish_record(subject, headers, Bytes::new()).await?;
        match published {
            Published::Acked(ack) => Ok(Some(ack.sequence)),
            Published::Taken => self.sync().await.map(|()| None),
        }
    }

    /// Keeps a rejected body with its reason: one publish, noted for
    /// [`Self::health`] as a store is.
    pub(crate) async fn quarantine(
        &self,
        received: Received,
        reason_kind: &str,
        reason: String,
    ) -> Result<NotificationId, SpoolError> {
        self.open_for_writes()?;
        self.connected()?;
        let kept = self
            .quarantine_on_servers(received, reason_kind, reason)
            .await;
        self.outage.note(&kept, self.clock);
        kept
    }

    async fn quarantine_on_servers(
        &self,
        received: Received,
        reason_kind: &str,
        reason: String,
    ) -> Result<NotificationId, SpoolError> {
        let id = self.next_id(received.received_ms);
        let meta = QuarantineMeta {
            id: id.to_string(),
            source: received.source,
            received_ms: received.received_ms,
            reason_kind: reason_kind.to_owned(),
            reason,
            content_type: received.content_type,
            headers: received.headers,
            peer: received.peer,
        };
        let mut headers = HeaderMap::new();
        let json = serde_json::to_string(&meta).map_err(|e| SpoolError::Encode(cause(e)))?;
        headers.insert(META, json.as_str());
        let subject = self.link.names().quarantine(&meta.source, id);
        let published = self.publish_record(subject, headers, received.body).await?;
        match published {
            Published::Acked(ack) => self.caught_up(ack.sequence).await.map(|()| id),
            Published::Taken => Err(SpoolError::Unavailable(
                "JetStream refused a quarantine record it expected nothing of".into(),
            )),
        }
    }
}

impl Store {
    /// Stores, or finds the copy this is a resend of; the answer and the
    /// stream sequence the index must reach before it is read.
    async fn run(self) -> Result<(Stored, u64), SpoolError> {
        let mut expect = 0;
        for _ in 0..TRIES {
            match publish(
                &self.context,
                self.subject.clone(),
                self.headers(expect),
                self.body.clone(),
                self.timeout,
            )
            .await?
            {
                Published::Acked(ack) => return Ok((Stored::New(self.id), ack.sequence)),
                Published::Taken => {}
            }
            let last = self
                .stream
                .direct_get_last_for_subject(self.wildcard.clone())
                .await
                .map_err(|e| unavailable("reading the stored copy of a dedup key", e))?;
            let theirs = match self.names.parse(last.subject.as_str()) {
                super::subjects::Kind::Notification(theirs) => theirs,
                _ => {
                    return Err(SpoolError::Corrupt(format!(
                        "{} under a dedup key",
                        last.subject
                    )))
                }
            };
            if theirs == self.id {
                // Ours, stored by a try whose ack was lost.
                return Ok((Stored::New(self.id), last.sequence));
            }
            let meta: NotificationMeta = last
                .headers
                .get(META)
                .and_then(|v| serde_json::from_str(v.as_str()).ok())
                .ok_or_else(|| SpoolError::Corrupt(format!("the metadata of {}", last.subject)))?;
            if dedup::is_resend(meta.received_ms, self.received_ms, self.window_ms) {
                if self.reconciled {
                    return Ok((Stored::Duplicate(theirs), last.sequence));
                }
                let resend = self.names.resend(theirs, ulid::Ulid::new());
                let noted = publish(
                    &self.context,
                    resend,
                    HeaderMap::new(),
                    Bytes::new(),
                    self.timeout,
                );
                return match noted.await? {
                    Published::Acked(ack) => Ok((Stored::Duplicate(theirs), ack.sequence)),
                    Published::Taken => Ok((Stored::Duplicate(theirs), last.sequence)),
                };
            }
            // Past the window: take the key over from that copy.
            expect = last.sequence;
        }
        Err(SpoolError::Unavailable(format!(
            "the dedup key of {} changed under {TRIES} tries",
            self.id
        )))
    }

    fn headers(&self, expect: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expect.to_string().as_str(),
        );
        headers.insert(
            EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            self.wildcard.as_str(),
        );
        headers.insert(META, self.meta.as_str());
        if let Some(released) = self.released {
            headers.insert(RELEASED, released.to_string().as_str());
        }
        headers
    }
}

/// One publish, answered once JetStream acknowledged it or refused its
/// compare-and-set; no answer within `timeout` is `Unavailable` (503).
pub(super) async fn publish(
    context: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Result<Published, SpoolError> {
    let acked = async {
        context
            .publish_with_headers(subject, headers, body)
            .await?
            .await
    };
    match tokio::time::timeout(timeout, acked).await {
        Ok(Ok(ack)) => Ok(Published::Acked(ack)),
        Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Published::Taken),
        Ok(Err(e)) => Err(unavailable("storing in JetStream", e)),
        Err(_) => Err(SpoolError::Unavailable(format!(
            "JetStream: no acknowledgement within {timeout:?} (no quorum, or unreachable?)"
        ))),
    }
}

impl JetStreamSpool {
    /// [`publish`] on the client's runtime, under `store_timeout`.
    pub(super) async fn publish_record(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Published, SpoolError> {
        let context = self.link.context().clone();
        let timeout = self.config.jetstream.store_timeout.0;
        self.bridge
            .run(async move { publish(&context, subject, headers, body, timeout).await })
            .await?
    }
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> SpoolError {
    SpoolError::Unavailable(format!("JetStream: {what}: {err}"))
}
