//! The audit log on JetStream: one message per record, `P.a.{auditid}`,
//! its entry as JSON in `Relay-Meta` (no body: the fold reads headers
//! only), published expecting nothing on its subject and answered once
//! the servers acknowledged it (durable as a notification is) and this
//! relay's index folded it in. Every relay's fold keeps each record in
//! its index (`A{id}` → `[sequence u64][entry JSON]`), which the log's
//! pages (newest first, older than a cursor, as sled's) and its walk
//! read: no message is fetched to read the log.
//!
//! Ids follow both this relay's last one and the newest its index holds,
//! so new ids follow those found on open; other relays' ids interleave by
//! time. Retention of audit records is step 7's.

use super::staged::Writes;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::index::{storage, Index};
use super::store::Published;
use super::subjects::META;
use super::JetStreamSpool;
use crate::spool::{cause, AuditEntry, AuditId, AuditRecord, RecordStream, SpoolError};

const AUDIT: u8 = b'A';
/// Tries of one record when its id is taken (another relay's, made in
/// the same millisecond from the same newest id).
const TRIES: usize = 3;

fn key(id: AuditId) -> [u8; 17] {
    let mut key = [AUDIT; 17];
    key[1..].copy_from_slice(&id.to_bytes());
    key
}

/// An audit record folded in.
pub(super) fn fold_audit(batch: &mut Writes, sequence: u64, id: AuditId, meta: &str) {
    let mut value = sequence.to_be_bytes().to_vec();
    value.extend_from_slice(meta.as_bytes());
    batch.insert(&key(id), value);
}

/// An audit record removed by retention (`removal.rs`).
pub(super) fn unfold_audit(batch: &mut Writes, id: AuditId) {
    batch.remove(&key(id));
}

fn record(key: &[u8], value: &[u8]) -> Result<AuditRecord, SpoolError> {
    let id = key
        .get(1..)
        .and_then(AuditId::from_bytes)
        .ok_or_else(|| SpoolError::Corrupt(format!("malformed audit key {key:?}")))?;
    let json = value
        .get(8..)
        .ok_or_else(|| SpoolError::Corrupt(format!("audit record {id}: too short")))?;
    let entry = serde_json::from_slice(json)
        .map_err(|e| SpoolError::Corrupt(format!("audit record {id}: {e}")))?;
    Ok(AuditRecord {
        id,
        at_ms: id.ms(),
        entry,
    })
}

impl Index {
    /// The newest audit record's id, if there is one.
    pub(super) fn newest_audit(&self) -> Result<Option<AuditId>, SpoolError> {
        let db = self.db()?;
        match db.scan_prefix([AUDIT]).next_back() {
            Some(item) => {
                let (key, _) = item.map_err(storage)?;
                Ok(key.get(1..).and_then(AuditId::from_bytes))
            }
            None => Ok(None),
        }
    }

    /// Up to `limit` records, newest first, strictly older than `before`
    /// when given; one that cannot be read is left out (with a warning).
    pub(super) fn audit_log(
        &self,
        before: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, SpoolError> {
        let db = self.db()?;
        let until = match before {
            Some(before) => key(before).to_vec(),
            None => vec![AUDIT + 1],
        };
        let mut out = Vec::new();
        for item in db.range(vec![AUDIT]..until).rev() {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(storage)?;
            match record(&key, &value) {
                Ok(record) => out.push(record),
                Err(err) => tracing::warn!(error = %err, "an audit record is left out"),
            }
        }
        Ok(out)
    }

    /// Every record, oldest first; one that cannot be read is an `Err`.
    pub(super) fn audit_walk(
        &self,
    ) -> Result<impl Iterator<Item = Result<AuditRecord, SpoolError>> + Send, SpoolError> {
        Ok(self.db()?.scan_prefix([AUDIT]).map(|item| {
            let (key, value) = item.map_err(storage)?;
            record(&key, &value)
        }))
    }
}

impl JetStreamSpool {
    /// Appends `entry` to the log, stamped with the spool's clock; answers
    /// once it is durable and this relay's reads see it.
    pub(crate) async fn audit(&self, entry: AuditEntry) -> Result<AuditId, SpoolError> {
        self.open_for_writes()?;
        let (id, sequence) = self.publish_audit(&entry).await?;
        self.caught_up(sequence).await?;
        Ok(id)
    }

    /// Publishes an audit record under a new id; the id and its sequence.
    pub(super) async fn publish_audit(
        &self,
        entry: &AuditEntry,
    ) -> Result<(AuditId, u64), SpoolError> {
        let json = serde_json::to_string(entry).map_err(|e| SpoolError::Encode(cause(e)))?;
        for _ in 0..TRIES {
            let id = self.next_audit_id()?;
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
            headers.insert(META, json.as_str());
            let subject = self.link.names().audit(id);
            let published = self.publish_record(subject, headers, Bytes::new()).await?;
            if let Published::Acked(ack) = published {
                return Ok((id, ack.sequence));
            }
        }
        Err(SpoolError::Unavailable(format!(
            "JetStream: no free audit record id in {TRIES} tries"
        )))
    }

    /// An id after this relay's last one and the newest in the index.
    fn next_audit_id(&self) -> Result<AuditId, SpoolError> {
        let newest = self.index.newest_audit()?;
        let mut last = self.last_audit.lock().unwrap_or_else(|e| e.into_inner());
        let after = match (*last, newest) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let id = AuditId::next_after(after, self.clock.now_ms());
        *last = Some(id);
        Ok(id)
    }

    /// How many records the log holds (this relay's index).
    pub(crate) async fn audit_count(&self) -> Result<u64, SpoolError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || {
            let mut count = 0u64;
            for item in index.db()?.scan_prefix([AUDIT]) {
                item.map_err(storage)?;
                count += 1;
            }
            Ok(count)
        })
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// A page of the log, as [`Index::audit_log`].
    pub(crate) async fn audit_log(
        &self,
        before: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, SpoolError> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.audit_log(before, limit))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// The whole log, oldest first.
    pub(crate) fn audit_records(self: &Arc<Self>) -> RecordStream<AuditRecord> {
        let index = self.index.clone();
        RecordStream::blocking(move |send| match index.audit_walk() {
            Ok(records) => {
                for record in records {
                    if !send(record) {
                        break; // the reader let go
                    }
                }
            }
            Err(err) => {
                send(Err(err));
            }
        })
    }
}
