//! The backup archive of a spool, whatever the backend: what a restored
//! relay needs, in the spool's own words (records as the spool encodes
//! them, deliveries as [`Delivery`], invoice index entries, audit records,
//! API-created subscriptions, paused marks, the stuck check's marks, the
//! invoices' reconcile checks), not a
//! store's keys: indexes that follow from the records (dedup, due times,
//! cursors, counts) are rebuilt by the restore.
//!
//! The file is one zstd stream of:
//!
//! ```text
//! MAGIC                                  "webhook-relay spool backup\n"
//! item*   kind (1) ++ length (u32 BE) ++ payload
//! end     b'E' ++ length (u32 BE) ++ the manifest (JSON)
//! ```
//!
//! The manifest comes last because the archive is streamed while the spool
//! is walked: it holds the format, the counts per kind, the newest
//! notification and the SHA-256 of every byte before the end item. A
//! reader refuses an archive whose end is missing (truncated), whose
//! checksum or counts differ, or that goes on past its end.
//!
//! Reconcile checks (kind `C`) came later within format 1: their count is
//! left out of a manifest when zero, so an archive without checks is read
//! by older relays as before, and one with checks is refused by them as
//! holding an unknown kind of item, never restored without its checks.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::reconcile::StoredCheck;
use super::{AuditId, NotificationId, ReconcileCheck, SpoolError, StuckInvoice};
use crate::delivery::Delivery;
use crate::providers::InvoiceStatus;

/// The archive's format; a reader refuses any other.
pub const FORMAT: u32 = 1;
const MAGIC: &[u8] = b"webhook-relay spool backup\n";
/// zstd's level: its default, fast enough that a backup is bound by the
/// spool's reads rather than by the compressor.
const LEVEL: i32 = 3;
/// No item is larger (a body is bounded by `max_body`, far below): a
/// damaged length must not make a reader allocate gigabytes.
const MAX_ITEM: usize = 256 << 20;

const NOTIFICATION: u8 = b'N';
const QUARANTINED: u8 = b'Q';
const AUDIT: u8 = b'A';
const SUBSCRIPTION: u8 = b'S';
const PAUSED: u8 = b'P';
const STUCK: u8 = b'K';
const WALKED: u8 = b'W';
const CHECK: u8 = b'C';
const END: u8 = b'E';

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("not a spool backup (it does not start as one)")]
    NotAnArchive,
    #[error("the archive is truncated: {0}")]
    Truncated(String),
    #[error("the archive is damaged: {0}")]
    Damaged(String),
    #[error("the archive is of format {0}; this relay reads format {FORMAT}")]
    Format(u32),
    #[error(
        "the archive's checksum does not match its content (manifest {expected}, content {found})"
    )]
    Checksum { expected: String, found: String },
    #[error("the archive's content does not match its manifest: {0}")]
    Counts(String),
    #[error("{} is not empty: a restore only writes into a new or empty directory", .0.display())]
    NotEmpty(std::path::PathBuf),
    #[error("the restored spool does not match the archive: {0}")]
    Restored(String),
}

/// How many of each kind an archive holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveCounts {
    pub notifications: u64,
    /// Delivery records (a delivery never attempted has none: it is
    /// pending by its notification's fan-out).
    pub deliveries: u64,
    pub quarantined: u64,
    pub audit_records: u64,
    pub subscriptions: u64,
    pub paused: u64,
    pub stuck_marks: u64,
    pub walked_marks: u64,
    /// Reconcile checks (absent from archives made before them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub checks: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The archive's last item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// When the backup began (Unix ms).
    pub created_ms: i64,
    /// The newest notification in it: the spool's durable watermark when
    /// the backup began (nothing newer is in it).
    pub newest: Option<String>,
    pub counts: ArchiveCounts,
    /// SHA-256 (hex) of every byte of the content before the end item.
    pub sha256: String,
}

/// A notification's entry in its invoice's timeline, as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub status: InvoiceStatus,
    pub superseded: bool,
    pub resends: u32,
    /// The invoice's status after this notification.
    pub after: InvoiceStatus,
}

/// A notification with what the spool holds about it.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationItem {
    pub id: NotificationId,
    /// The record as the spool encodes it ([`super::Record::encode`]).
    pub record: Vec<u8>,
    /// Its delivery records as they stood when the walk read them.
    pub deliveries: Vec<Delivery>,
    pub invoice: Option<IndexEntry>,
}

/// One thing an archive holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Notification(NotificationItem),
    Quarantined {
        id: NotificationId,
        record: Vec<u8>,
    },
    Audit {
        id: AuditId,
        entry: Vec<u8>,
    },
    /// An API-created subscription, as the spool encodes it.
    Subscription(Vec<u8>),
    Paused(String),
    Stuck(StuckInvoice),
    Walked {
        source: String,
        upto: NotificationId,
    },
    /// One check of an invoice with its provider; an invoice's checks
    /// come in the order they were made.
    Check {
        source: String,
        subject: String,
        check: ReconcileCheck,
    },
}

#[derive(Serialize, Deserialize)]
struct NotificationTail {
    deliveries: Vec<Delivery>,
    invoice: Option<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
struct StuckMark {
    source: String,
    subject: String,
    since_ms: i64,
    latest: String,
}

#[derive(Serialize, Deserialize)]
struct CheckMark {
    source: String,
    subject: String,
    check: StoredCheck,
}

#[derive(Serialize, Deserialize)]
struct WalkedMark {
    source: String,
    upto: String,
}

fn json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

impl Item {
    fn encode(&self) -> io::Result<(u8, Vec<u8>)> {
        Ok(match self {
            Item::Notification(n) => {
                let len = u32::try_from(n.record.len()).map_err(io::Error::other)?;
                let mut out = Vec::with_capacity(20 + n.record.len() + 256);
                out.extend_from_slice(&n.id.to_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&n.record);
                serde_json::to_writer(
                    &mut out,
                    &NotificationTail {
                        deliveries: n.deliveries.clone(),
                        invoice: n.invoice,
                    },
                )
                .map_err(io::Error::other)?;
                (NOTIFICATION, out)
            }
            Item::Quarantined { id, record } => {
                (QUARANTINED, [&id.to_bytes()[..], record].concat())
            }
            Item::Audit { id, entry } => (AUDIT, [&id.to_bytes()[..], entry].concat()),
            Item::Subscription(bytes) => (SUBSCRIPTION, bytes.clone()),
            Item::Paused(name) => (PAUSED, name.as_bytes().to_vec()),
            Item::Stuck(stuck) => (
                STUCK,
                json(&StuckMark {
                    source: stuck.source.clone(),
                    subject: stuck.subject.clone(),
                    since_ms: stuck.since_ms,
                    latest: stuck.latest.to_string(),
                })?,
            ),
            Item::Walked { source, upto } => (
                WALKED,
                json(&WalkedMark {
                    source: source.clone(),
                    upto: upto.to_string(),
                })?,
            ),
            Item::Check {
                source,
                subject,
                check,
            } => (
                CHECK,
                json(&CheckMark {
                    source: source.clone(),
                    subject: subject.clone(),
                    check: StoredCheck::from(check),
                })?,
            ),
        })
    }

    fn decode(kind: u8, payload: Vec<u8>) -> Result<Item, BackupError> {
        let damaged = |what: &str| BackupError::Damaged(format!("{what} item unreadable"));
        let id_of = |bytes: &[u8], what: &str| {
            NotificationId::from_bytes(bytes).ok_or_else(|| damaged(what))
        };
        Ok(match kind {
            NOTIFICATION => {
                let id = id_of(&payload, "a notification")?;
                let len: [u8; 4] = payload
                    .get(16..20)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| damaged("a notification"))?;
                let end = usize::try_from(u32::from_be_bytes(len))
                    .ok()
                    .and_then(|len| len.checked_add(20))
                    .filter(|end| *end <= payload.len())
                    .ok_or_else(|| damaged("a notification"))?;
                let tail: NotificationTail = serde_json::from_slice(&payload[end..])
                    .map_err(|e| BackupError::Damaged(format!("notification {id}: {e}")))?;
                Item::Notification(NotificationItem {
                    id,
                    record: payload[20..end].to_vec(),
                    deliveries: tail.deliveries,
                    invoice: tail.invoice,
                })
            }
            QUARANTINED => Item::Quarantined {
                id: id_of(&payload, "a quarantined")?,
                record: payload[16..].to_vec(),
            },
            AUDIT => Item::Audit {
                id: AuditId::from_bytes(&payload).ok_or_else(|| damaged("an audit"))?,
                entry: payload[16..].to_vec(),
            },
            SUBSCRIPTION => Item::Subscription(payload),
            PAUSED => Item::Paused(String::from_utf8(payload).map_err(|_| damaged("a paused"))?),
            STUCK => {
                let mark: StuckMark =
                    serde_json::from_slice(&payload).map_err(|_| damaged("a stuck mark"))?;
                Item::Stuck(StuckInvoice {
                    latest: NotificationId::parse(&mark.latest)
                        .ok_or_else(|| damaged("a stuck mark"))?,
                    source: mark.source,
                    subject: mark.subject,
                    since_ms: mark.since_ms,
                })
            }
            WALKED => {
                let mark: WalkedMark =
                    serde_json::from_slice(&payload).map_err(|_| damaged("a walked mark"))?;
                Item::Walked {
                    upto: NotificationId::parse(&mark.upto)
                        .ok_or_else(|| damaged("a walked mark"))?,
                    source: mark.source,
                }
            }
            CHECK => {
                let mark: CheckMark =
                    serde_json::from_slice(&payload).map_err(|_| damaged("a reconcile check"))?;
                Item::Check {
                    source: mark.source,
                    subject: mark.subject,
                    check: ReconcileCheck::try_from(mark.check)
                        .map_err(|_| damaged("a reconcile check"))?,
                }
            }
            other => {
                return Err(BackupError::Damaged(format!(
                    "unknown item kind {other:#04x}"
                )))
            }
        })
    }
}

impl ArchiveCounts {
    pub(crate) fn add(&mut self, item: &Item) {
        match item {
            Item::Notification(n) => {
                self.notifications += 1;
                self.deliveries += n.deliveries.len() as u64;
            }
            Item::Quarantined { .. } => self.quarantined += 1,
            Item::Audit { .. } => self.audit_records += 1,
            Item::Subscription(_) => self.subscriptions += 1,
            Item::Paused(_) => self.paused += 1,
            Item::Stuck(_) => self.stuck_marks += 1,
            Item::Walked { .. } => self.walked_marks += 1,
            Item::Check { .. } => self.checks += 1,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === writing ===

/// Where a backend's walk puts the items it reads: an archive, or (for
/// `spool migrate`) another backend.
pub trait ItemSink {
    fn put(&mut self, item: &Item) -> io::Result<()>;
    /// How many of each kind were put so far.
    fn counts(&self) -> &ArchiveCounts;
}

impl<W: Write> ItemSink for ArchiveWriter<W> {
    fn put(&mut self, item: &Item) -> io::Result<()> {
        ArchiveWriter::put(self, item)
    }

    fn counts(&self) -> &ArchiveCounts {
        ArchiveWriter::counts(self)
    }
}

/// Writes an archive into `W` as items are put; [`ArchiveWriter::finish`]
/// adds the manifest.
pub struct ArchiveWriter<W: Write> {
    out: zstd::Encoder<'static, W>,
    hash: Sha256,
    counts: ArchiveCounts,
    created_ms: i64,
}

impl<W: Write> ArchiveWriter<W> {
    pub fn new(out: W, created_ms: i64) -> io::Result<ArchiveWriter<W>> {
        let mut writer = ArchiveWriter {
            out: zstd::Encoder::new(out, LEVEL)?,
            hash: Sha256::new(),
            counts: ArchiveCounts::default(),
            created_ms,
        };
        writer.content(MAGIC)?;
        Ok(writer)
    }

    fn content(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    pub fn put(&mut self, item: &Item) -> io::Result<()> {
        let (kind, payload) = item.encode()?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len as usize <= MAX_ITEM)
            .ok_or_else(|| io::Error::other("an item too large for the archive"))?;
        self.content(&[kind])?;
        self.content(&len.to_be_bytes())?;
        self.content(&payload)?;
        self.counts.add(item);
        Ok(())
    }

    pub fn counts(&self) -> &ArchiveCounts {
        &self.counts
    }

    /// Writes the manifest and ends the stream; answers the manifest and
    /// the inner writer (not flushed to disk: the caller's part).
    pub fn finish(mut self, newest: Option<NotificationId>) -> io::Result<(Manifest, W)> {
        let manifest = Manifest {
            format: FORMAT,
            created_ms: self.created_ms,
            newest: newest.map(|id| id.to_string()),
            counts: self.counts.clone(),
            sha256: hex(&self.hash.clone().finalize()),
        };
        let body = json(&manifest)?;
        let len = u32::try_from(body.len()).map_err(io::Error::other)?;
        self.out.write_all(&[END])?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&body)?;
        let mut inner = self.out.finish()?;
        inner.flush()?;
        Ok((manifest, inner))
    }
}

// === reading ===

/// Reads an archive item by item; the last call (`Ok(None)`) has checked
/// the manifest against what was read.
pub struct ArchiveReader<R: Read> {
    input: zstd::Decoder<'static, BufReader<R>>,
    hash: Sha256,
    counts: ArchiveCounts,
    manifest: Option<Manifest>,
}

impl<R: Read> ArchiveReader<R> {
    pub fn new(input: R) -> Result<ArchiveReader<R>, BackupError> {
        let mut buffered = BufReader::with_capacity(1 << 16, input);
        // zstd's frame magic, before the decoder makes its own error of it.
        let head = buffered.fill_buf()?;
        if head.len() >= 4 && head[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(BackupError::NotAnArchive);
        }
        let mut reader = ArchiveReader {
            input: zstd::Decoder::with_buffer(buffered)?,
            hash: Sha256::new(),
            counts: ArchiveCounts::default(),
            manifest: None,
        };
        // A stream that ends cleanly before the header is some other zstd
        // file; one that breaks off is this kind, cut.
        let mut magic = vec![0; MAGIC.len()];
        let mut filled = 0;
        while filled < magic.len() {
            match reader.input.read(&mut magic[filled..]) {
                Ok(0) => return Err(BackupError::NotAnArchive),
                Ok(n) => filled += n,
                Err(err) => return Err(read_error(&err, "its header")),
            }
        }
        if magic != MAGIC {
            return Err(BackupError::NotAnArchive);
        }
        reader.hash.update(&magic);
        Ok(reader)
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), BackupError> {
        self.input
            .read_exact(buf)
            .map_err(|err| read_error(&err, what))
    }

    /// The next item; `Ok(None)` once the manifest was read and checked.
    pub fn next_item(&mut self) -> Result<Option<Item>, BackupError> {
        if self.manifest.is_some() {
            return Ok(None);
        }
        let mut head = [0; 5];
        match self.input.read(&mut head[..1]) {
            Ok(0) => return Err(BackupError::Truncated("it ends before its manifest".into())),
            Ok(_) => {}
            Err(err) => return Err(read_error(&err, "an item")),
        }
        self.exact(&mut head[1..], "an item's header")?;
        let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))
            .ok()
            .filter(|len| *len <= MAX_ITEM)
            .ok_or_else(|| BackupError::Damaged("an item's length is out of range".into()))?;
        let mut payload = vec![0; len];
        self.exact(&mut payload, "an item")?;
        if head[0] == END {
            self.end(&payload)?;
            return Ok(None);
        }
        self.hash.update(head);
        self.hash.update(&payload);
        let item = Item::decode(head[0], payload)?;
        self.counts.add(&item);
        Ok(Some(item))
    }

    fn end(&mut self, payload: &[u8]) -> Result<(), BackupError> {
        let manifest: Manifest = serde_json::from_slice(payload)
            .map_err(|e| BackupError::Damaged(format!("its manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(BackupError::Format(manifest.format));
        }
        let found = hex(&self.hash.clone().finalize());
        if found != manifest.sha256 {
            return Err(BackupError::Checksum {
                expected: manifest.sha256,
                found,
            });
        }
        if manifest.counts != self.counts {
            return Err(BackupError::Counts(format!(
                "manifest {:?}, content {:?}",
                manifest.counts, self.counts
            )));
        }
        let mut more = [0; 1];
        match self.input.read(&mut more) {
            Ok(0) => {}
            Ok(_) => return Err(BackupError::Damaged("it goes on past its manifest".into())),
            Err(err) => return Err(BackupError::Damaged(format!("past its manifest: {err}"))),
        }
        self.manifest = Some(manifest);
        Ok(())
    }

    /// What was read so far.
    pub fn counts(&self) -> &ArchiveCounts {
        &self.counts
    }

    /// The checked manifest, once [`ArchiveReader::next_item`] answered `None`.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }
}

/// A read that failed: the stream (or the file under it) ends early, or
/// zstd cannot make sense of it (its own words).
fn read_error(err: &io::Error, what: &str) -> BackupError {
    if err.kind() == io::ErrorKind::UnexpectedEof || err.to_string().contains("incomplete") {
        BackupError::Truncated(format!("it ends inside {what} ({err})"))
    } else {
        BackupError::Damaged(format!("cannot decompress {what}: {err}"))
    }
}

/// Reads a whole archive and checks it; answers its manifest.
pub fn verify(input: impl Read) -> Result<Manifest, BackupError> {
    let mut reader = ArchiveReader::new(input)?;
    while reader.next_item()?.is_some() {}
    reader
        .manifest
        .ok_or_else(|| BackupError::Truncated("no manifest".into()))
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
