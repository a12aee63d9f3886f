//! Reads: a notification or quarantined body by id, and the walks over
//! them (oldest first, or newest first from a point). The local index
//! says which records there are, in id order, with their stream sequence
//! and metadata; each body comes by a direct get of that sequence. A
//! record the index still names but the stream no longer holds (removed
//! meanwhile) is left out.

use std::sync::Arc;

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::index::{Entry, Family};
use super::JetStreamSpool;
use crate::spool::record::Record;
use crate::spool::{
    NotificationId, NotificationRecord, QuarantineRecord, RecordStream, SpoolError,
};

impl JetStreamSpool {
    pub(crate) async fn notification(
        self: &Arc<Self>,
        id: NotificationId,
    ) -> Result<Option<NotificationRecord>, SpoolError> {
        self.read_one(Family::Notifications, id).await
    }

    pub(crate) async fn quarantine_record(
        self: &Arc<Self>,
        id: NotificationId,
    ) -> Result<Option<QuarantineRecord>, SpoolError> {
        self.read_one(Family::Quarantine, id).await
    }

    /// Whether `id` is a quarantined body (the index alone answers).
    pub(crate) async fn is_quarantined(
        self: &Arc<Self>,
        id: NotificationId,
    ) -> Result<bool, SpoolError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.get(Family::Quarantine, id))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
            .map(|found| found.is_some())
    }

    /// The notifications, oldest first, or newest first strictly before
    /// `before`.
    pub(crate) fn notifications(
        self: &Arc<Self>,
        newest_first: bool,
        before: Option<NotificationId>,
    ) -> RecordStream<NotificationRecord> {
        self.walk_records(Family::Notifications, newest_first, before)
    }

    /// The quarantined bodies, as [`JetStreamSpool::notifications`].
    pub(crate) fn quarantined(
        self: &Arc<Self>,
        newest_first: bool,
        before: Option<NotificationId>,
    ) -> RecordStream<QuarantineRecord> {
        self.walk_records(Family::Quarantine, newest_first, before)
    }

    /// Every record of `family`, oldest first, or newest first strictly
    /// before `before`.
    fn walk_records<M>(
        self: &Arc<Self>,
        family: Family,
        newest_first: bool,
        before: Option<NotificationId>,
    ) -> RecordStream<Record<M>>
    where
        M: DeserializeOwned + Send + 'static,
    {
        let spool = self.clone();
        RecordStream::blocking(move |send| {
            let entries = match spool.index.walk(family, newest_first, before) {
                Ok(entries) => entries,
                Err(err) => {
                    send(Err(err));
                    return;
                }
            };
            for entry in entries {
                let record = entry.and_then(|entry| {
                    let body = spool.bridge.block_on(spool.body(entry.sequence))?;
                    body.map(|body| record(&entry, body)).transpose()
                });
                let go_on = match record {
                    Ok(None) => true, // removed meanwhile
                    Ok(Some(record)) => send(Ok(record)),
                    Err(err) => send(Err(err)),
                };
                if !go_on {
                    break; // the reader let go
                }
            }
        })
    }

    async fn read_one<M>(
        self: &Arc<Self>,
        family: Family,
        id: NotificationId,
    ) -> Result<Option<Record<M>>, SpoolError>
    where
        M: DeserializeOwned + Send + 'static,
    {
        let index = self.index.clone();
        let entry = tokio::task::spawn_blocking(move || index.get(family, id))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))??;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let spool = self.clone();
        let sequence = entry.sequence;
        let body = self
            .bridge
            .run(async move { spool.body(sequence).await })
            .await??;
        body.map(|body| record(&entry, body)).transpose()
    }

    /// The payload of the message at `sequence`; `None` when the stream
    /// no longer holds it.
    async fn body(&self, sequence: u64) -> Result<Option<Bytes>, SpoolError> {
        body_at(&self.stream, sequence).await
    }
}

/// The payload of the message at `sequence` of `stream`; `None` when the
/// stream no longer holds it.
pub(super) async fn body_at(stream: &Stream, sequence: u64) -> Result<Option<Bytes>, SpoolError> {
    match stream.direct_get(sequence).await {
        Ok(message) => Ok(Some(message.payload)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::Unavailable(format!(
            "JetStream: reading message {sequence}: {e}"
        ))),
    }
}

pub(super) fn record<M: DeserializeOwned>(
    entry: &Entry,
    body: Bytes,
) -> Result<Record<M>, SpoolError> {
    let meta = serde_json::from_slice(&entry.meta)
        .map_err(|e| SpoolError::Corrupt(format!("the metadata of {}: {e}", entry.id)))?;
    Ok(Record { meta, body })
}
