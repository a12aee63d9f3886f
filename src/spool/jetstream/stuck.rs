//! The stuck check's marks on JetStream (`events::stuck`; see
//! `spool/invoices.rs`): kept in the stream, so that they are read back
//! after a reopen and on every relay, and a takeover of the duty resumes
//! them.
//!
//! - `P.x.stuck.{src}.{subj}`: a stuck invoice, `Relay-Meta` =
//!   `{"since_ms":…,"latest":"…"}`; unmarked by a tombstone on the same
//!   subject (no `Relay-Meta`);
//! - `P.x.walked.{src}`: how far a source's queued notifications were
//!   walked, `Relay-Meta` = the id; a source no longer watched gets a
//!   tombstone.
//!
//! Plain publishes (one message per subject is kept: the latest wins),
//! answered once every one is acknowledged and this relay's index folded
//! it. Unlike sled's one batch, a crash in the middle of a save keeps part
//! of it: the check then tells an invoice's turn again (at least once,
//! as after a lost save on sled). The fold keeps them in the index:
//!
//! | key                          | value                           |
//! |------------------------------|---------------------------------|
//! | `Ms` source 0x00 subject     | since ms (8) ++ latest id (16)  |
//! | `Mw` source                  | id (16)                         |

use super::staged::Writes;
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::index::{storage, Index};
use super::store::{publish, Published};
use super::subjects::META;
use super::JetStreamSpool;
use crate::spool::{cause, NotificationId, SpoolError, StuckChanges, StuckInvoice, StuckMarks};

const STUCK: &[u8] = b"Ms";
const WALKED: &[u8] = b"Mw";

/// A stuck mark's metadata in the stream.
#[derive(Serialize, Deserialize)]
struct StuckMeta {
    since_ms: i64,
    latest: String,
}

fn stuck_key(source: &str, subject: &str) -> Vec<u8> {
    [STUCK, source.as_bytes(), &[0], subject.as_bytes()].concat()
}

fn walked_key(source: &str) -> Vec<u8> {
    [WALKED, source.as_bytes()].concat()
}

/// A stuck mark folded in (a tombstone, without metadata, removes it).
pub(super) fn fold_stuck(
    batch: &mut Writes,
    source: &str,
    subject: &str,
    meta: Option<&str>,
) -> Result<(), SpoolError> {
    let key = stuck_key(source, subject);
    let Some(meta) = meta else {
        batch.remove(key);
        return Ok(());
    };
    let corrupt = |detail: String| {
        SpoolError::Corrupt(format!("the stuck mark of {source}/{subject}: {detail}"))
    };
    let meta: StuckMeta = serde_json::from_str(meta).map_err(|e| corrupt(e.to_string()))?;
    let latest = NotificationId::parse(&meta.latest).ok_or_else(|| corrupt(meta.latest.clone()))?;
    let mut value = meta.since_ms.to_be_bytes().to_vec();
    value.extend_from_slice(&latest.to_bytes());
    batch.insert(key, value);
    Ok(())
}

/// How far a source was walked, folded in (a tombstone forgets it).
pub(super) fn fold_walked(batch: &mut Writes, source: &str, meta: Option<&str>) {
    let key = walked_key(source);
    match meta.and_then(NotificationId::parse) {
        Some(id) => batch.insert(key, &id.to_bytes()),
        None => batch.remove(key),
    }
}

fn decode_stuck(key: &[u8], value: &[u8]) -> Option<StuckInvoice> {
    let names = key.strip_prefix(STUCK)?;
    let zero = names.iter().position(|&b| b == 0)?;
    let since: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some(StuckInvoice {
        source: std::str::from_utf8(&names[..zero]).ok()?.to_owned(),
        subject: std::str::from_utf8(&names[zero + 1..]).ok()?.to_owned(),
        since_ms: i64::from_be_bytes(since),
        latest: NotificationId::from_bytes(value.get(8..)?)?,
    })
}

impl Index {
    /// The marks (damaged ones are skipped: at worst an invoice is
    /// announced again).
    pub(super) fn stuck_marks(&self) -> Result<StuckMarks, SpoolError> {
        let db = self.db()?;
        let mut marks = StuckMarks::default();
        for item in db.scan_prefix(STUCK) {
            let (key, value) = item.map_err(storage)?;
            marks.stuck.extend(decode_stuck(&key, &value));
        }
        for item in db.scan_prefix(WALKED) {
            let (key, value) = item.map_err(storage)?;
            let source = key.get(WALKED.len()..).map(std::str::from_utf8);
            if let (Some(Ok(source)), Some(id)) = (source, NotificationId::from_bytes(&value)) {
                marks.walked.push((source.to_owned(), id));
            }
        }
        Ok(marks)
    }
}

impl JetStreamSpool {
    pub(crate) async fn stuck_marks(&self) -> Result<StuckMarks, SpoolError> {
        self.read_index(|index| index.stuck_marks()).await
    }

    /// Publishes each change (a mark, a tombstone, how far a source was
    /// walked) and answers once all are durable and folded here. A name
    /// with a 0x00 was never indexed, so never marked.
    pub(crate) async fn save_stuck(&self, changes: StuckChanges) -> Result<(), SpoolError> {
        self.open_for_writes()?;
        let names = self.link.names();
        let mut writes: Vec<(String, Option<String>)> = Vec::new();
        for stuck in &changes.marked {
            if stuck.source.contains('\0') || stuck.subject.contains('\0') {
                continue;
            }
            let meta = StuckMeta {
                since_ms: stuck.since_ms,
                latest: stuck.latest.to_string(),
            };
            let meta = serde_json::to_string(&meta).map_err(|e| SpoolError::Encode(cause(e)))?;
            writes.push((names.stuck(&stuck.source, &stuck.subject), Some(meta)));
        }
        for (source, subject) in &changes.unmarked {
            writes.push((names.stuck(source, subject), None));
        }
        for (source, walked) in &changes.walked {
            writes.push((names.walked(source), walked.map(|id| id.to_string())));
        }
        let mut last = 0;
        for (subject, meta) in writes {
            let mut headers = HeaderMap::new();
            if let Some(meta) = &meta {
                headers.insert(META, meta.as_str());
            }
            let context = self.link.context().clone();
            let timeout = self.config.jetstream.store_timeout.0;
            let published = self
                .bridge
                .run(
                    async move { publish(&context, subject, headers, Bytes::new(), timeout).await },
                )
                .await??;
            match published {
                Published::Acked(ack) => last = last.max(ack.sequence),
                // Nothing is expected of these subjects: not refused.
                Published::Taken => {
                    return Err(SpoolError::Unavailable(
                        "JetStream refused a stuck mark".into(),
                    ))
                }
            }
        }
        if last > 0 {
            self.caught_up(last).await?;
        }
        Ok(())
    }
}
