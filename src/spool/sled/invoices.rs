//! The invoice index: notifications by (source, subject), kept by the
//! writer in the batch that stores each notification, so it is exactly as
//! durable as what it indexes and never needs a scan to answer.
//!
//! | prefix | key                                      | value                                            |
//! |--------|------------------------------------------|--------------------------------------------------|
//! | `i`    | source 0x00 subject 0x00 id (16)         | status (1), superseded (1), resends (u32 BE)     |
//! | `v`    | source 0x00 subject                      | current status (1), latest id (16), its ms (8)   |
//!
//! `i` is the timeline: one entry per stored notification, in id (time)
//! order under its invoice's prefix, with the status it told, whether it
//! would have moved a final status back, and how often the provider resent
//! it inside the dedup window (each resend is a duplicate the dedup path
//! answers). `v` is the invoice: its current status (a final one never
//! regresses, see `providers::status`) and its latest notification.
//! Retention removes a notification's `i` entry with it, and the `v` entry
//! with the last one. A spool written before the index existed gets it in
//! one walk at open (`open.rs`), like the counts.
//!
//! The encodings and the writer's steps are here; pure apart from the
//! store reads the writer hands in.

use std::collections::{HashMap, HashSet};

use ::sled::Batch;

use super::{storage, SledSpool, Store};
use crate::providers::{InvoiceStatus, ALL_STATUSES};
use crate::spool::record::Record;
use crate::spool::{
    Invoice, InvoiceCursor, NotificationId, NotificationMeta, SpoolError, TimelineEntry,
};

pub const ENTRY: u8 = b'i';
pub const INVOICE: u8 = b'v';
/// Present once the index covers every notification (set by the upgrade).
pub const BUILT: &[u8] = b"minvoices";

/// Which invoice a notification is about, as the writer indexes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRef {
    pub source: String,
    pub subject: String,
    pub status: InvoiceStatus,
}

impl InvoiceRef {
    /// The invoice of a notification, if it names one that fits a key
    /// (no 0x00, which separates the parts; the provider checks refuse
    /// control characters anyway).
    pub fn of(source: &str, subject: Option<&str>, status: InvoiceStatus) -> Option<InvoiceRef> {
        let subject = subject.filter(|s| !s.is_empty() && !s.contains('\0'))?;
        (!source.contains('\0')).then(|| InvoiceRef {
            source: source.to_owned(),
            subject: subject.to_owned(),
            status,
        })
    }
}

// === keys and values ===

fn status_byte(status: InvoiceStatus) -> u8 {
    ALL_STATUSES
        .iter()
        .position(|s| *s == status)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
}

fn status_of_byte(byte: u8) -> InvoiceStatus {
    ALL_STATUSES
        .get(usize::from(byte))
        .copied()
        .unwrap_or(InvoiceStatus::Unknown)
}

/// `v` source 0x00 subject.
pub fn invoice_key(source: &str, subject: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + source.len() + subject.len());
    key.push(INVOICE);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(subject.as_bytes());
    key
}

/// `v` source 0x00: every invoice of a source.
pub fn source_prefix(source: &str) -> Vec<u8> {
    invoice_key(source, "")
}

/// The source and subject of a `v` key.
pub fn split_invoice_key(key: &[u8]) -> Option<(&str, &str)> {
    let rest = key.get(1..)?;
    let zero = rest.iter().position(|&b| b == 0)?;
    let source = std::str::from_utf8(&rest[..zero]).ok()?;
    let subject = std::str::from_utf8(rest.get(zero + 1..)?).ok()?;
    Some((source, subject))
}

/// `i` source 0x00 subject 0x00: an invoice's timeline.
pub fn timeline_prefix(source: &str, subject: &str) -> Vec<u8> {
    let mut key = invoice_key(source, subject);
    key[0] = ENTRY;
    key.push(0);
    key
}

pub fn entry_key(source: &str, subject: &str, id: NotificationId) -> Vec<u8> {
    let mut key = timeline_prefix(source, subject);
    key.extend_from_slice(&id.to_bytes());
    key
}

/// One notification in an invoice's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub status: InvoiceStatus,
    pub superseded: bool,
    pub resends: u32,
}

impl Entry {
    pub fn encode(&self) -> [u8; 6] {
        let mut out = [0; 6];
        out[0] = status_byte(self.status);
        out[1] = u8::from(self.superseded);
        out[2..].copy_from_slice(&self.resends.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let resends: [u8; 4] = bytes.get(2..6)?.try_into().ok()?;
        Some(Entry {
            status: status_of_byte(*bytes.first()?),
            superseded: *bytes.get(1)? != 0,
            resends: u32::from_be_bytes(resends),
        })
    }
}

/// An invoice: where it stands and its latest notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub status: InvoiceStatus,
    pub latest: NotificationId,
    pub latest_ms: i64,
}

impl Current {
    pub fn encode(&self) -> [u8; 25] {
        let mut out = [0; 25];
        out[0] = status_byte(self.status);
        out[1..17].copy_from_slice(&self.latest.to_bytes());
        out[17..].copy_from_slice(&self.latest_ms.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Current> {
        let ms: [u8; 8] = bytes.get(17..25)?.try_into().ok()?;
        Some(Current {
            status: status_of_byte(*bytes.first()?),
            latest: NotificationId::from_bytes(bytes.get(1..17)?)?,
            latest_ms: i64::from_be_bytes(ms),
        })
    }
}

// === the writer's steps ===

/// What one group has written to the index and not yet applied: the
/// writer reads its own uncommitted entries through it, so two
/// notifications of one invoice in one group see each other.
#[derive(Default)]
pub struct Pending {
    values: HashMap<Vec<u8>, Vec<u8>>,
}

impl Pending {
    fn get(&self, store: &Store, key: &[u8]) -> Result<Option<Vec<u8>>, SpoolError> {
        match self.values.get(key) {
            Some(value) => Ok(Some(value.clone())),
            None => Ok(store.tree.get(key).map_err(storage)?.map(|v| v.to_vec())),
        }
    }

    fn put(&mut self, batch: &mut Batch, key: Vec<u8>, value: Vec<u8>) {
        batch.insert(key.as_slice(), value.as_slice());
        self.values.insert(key, value);
    }

    /// A new notification of `invoice`: its timeline entry, and the
    /// invoice's status moved on (or kept, when the notification would
    /// move a final status back). Answers whether it was superseded.
    pub fn stored(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        invoice: &InvoiceRef,
        id: NotificationId,
        received_ms: i64,
    ) -> Result<bool, SpoolError> {
        let key = invoice_key(&invoice.source, &invoice.subject);
        let before = self.get(store, &key)?.and_then(|v| Current::decode(&v));
        let transition = invoice.status.apply_to(before.map(|c| c.status));
        let entry = Entry {
            status: invoice.status,
            superseded: transition.superseded,
            resends: 0,
        };
        self.put(
            batch,
            entry_key(&invoice.source, &invoice.subject, id),
            entry.encode().to_vec(),
        );
        let current = Current {
            status: transition.status,
            latest: id,
            latest_ms: received_ms,
        };
        self.put(batch, key, current.encode().to_vec());
        Ok(transition.superseded)
    }

    /// The provider sent notification `first` of `invoice` again (a
    /// duplicate inside the dedup window): count it on its entry.
    pub fn resent(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        invoice: &InvoiceRef,
        first: NotificationId,
    ) -> Result<(), SpoolError> {
        let key = entry_key(&invoice.source, &invoice.subject, first);
        // An entry missing (removed by retention meanwhile) counts nothing.
        if let Some(mut entry) = self.get(store, &key)?.and_then(|v| Entry::decode(&v)) {
            entry.resends = entry.resends.saturating_add(1);
            self.put(batch, key, entry.encode().to_vec());
        }
        Ok(())
    }
}

/// What `spool check` finds wrong with an index entry, if anything.
pub fn check_entry(key: &[u8], value: &[u8]) -> Option<String> {
    let readable = match key.first().copied() {
        Some(ENTRY) => Entry::decode(value).is_some() && key.len() > 18,
        Some(INVOICE) => Current::decode(value).is_some() && split_invoice_key(key).is_some(),
        _ => false,
    };
    (!readable).then(|| format!("malformed invoice index entry {key:?}"))
}

/// A superseded notification as the writer stores it.
pub struct Superseded {
    /// Its record, marked superseded.
    pub record: Vec<u8>,
    /// The subscriptions that still take it.
    pub kept: Vec<String>,
    /// Those that skip such notifications: their deliveries are recorded
    /// as purged.
    pub skipped: Vec<String>,
}

/// Marks a superseded notification's record and takes the subscriptions
/// that skip such notifications out of its fan-out.
pub fn supersede(
    record: &[u8],
    subscriptions: Vec<String>,
    skips: impl Fn(&str) -> bool,
) -> Result<Superseded, SpoolError> {
    let mut decoded = Record::<NotificationMeta>::decode(record)?;
    let (skipped, kept): (Vec<String>, Vec<String>) =
        subscriptions.into_iter().partition(|name| skips(name));
    decoded.meta.superseded = true;
    decoded.meta.subscriptions = kept.clone();
    Ok(Superseded {
        record: decoded.encode()?,
        kept,
        skipped,
    })
}

// === reads ===

impl SledSpool {
    pub fn invoices(
        &self,
        source: Option<&str>,
        after: Option<&InvoiceCursor>,
        max: usize,
    ) -> Result<Vec<Invoice>, SpoolError> {
        let store = self.shared.store()?;
        let prefix = match source {
            Some(source) => source_prefix(source),
            None => vec![INVOICE],
        };
        let start = match after {
            // Strictly after it: the key with a 0x00 appended is the next.
            Some(cursor) => {
                let mut key = invoice_key(&cursor.source, &cursor.subject);
                key.push(0);
                key.max(prefix.clone())
            }
            None => prefix.clone(),
        };
        let mut found = Vec::new();
        for item in store.tree.range(start..) {
            let (key, value) = item.map_err(storage)?;
            if !key.starts_with(&prefix) || found.len() == max {
                break;
            }
            if let Some(invoice) = invoice_of(&key, &value) {
                found.push(invoice);
            }
        }
        Ok(found)
    }

    pub fn invoice(
        &self,
        source: &str,
        subject: &str,
    ) -> Result<Option<(Invoice, Vec<TimelineEntry>)>, SpoolError> {
        let store = self.shared.store()?;
        let key = invoice_key(source, subject);
        let Some(invoice) = store.get(&key)?.and_then(|v| invoice_of(&key, &v)) else {
            return Ok(None);
        };
        let prefix = timeline_prefix(source, subject);
        let mut timeline = Vec::new();
        for item in store.tree.scan_prefix(&prefix) {
            let (key, value) = item.map_err(storage)?;
            let id = key.get(prefix.len()..).and_then(NotificationId::from_bytes);
            if let (Some(id), Some(entry)) = (id, Entry::decode(&value)) {
                timeline.push(TimelineEntry {
                    id,
                    status: entry.status,
                    superseded: entry.superseded,
                    resends: entry.resends,
                });
            }
        }
        Ok(Some((invoice, timeline)))
    }
}

fn invoice_of(key: &[u8], value: &[u8]) -> Option<Invoice> {
    let (source, subject) = split_invoice_key(key)?;
    let current = Current::decode(value)?;
    Some(Invoice {
        source: source.to_owned(),
        subject: subject.to_owned(),
        status: current.status,
        latest: current.latest,
        latest_ms: current.latest_ms,
    })
}

// === the upgrade ===

/// Records indexed per batch by the upgrade: bounded memory on any spool.
const UPGRADE_BATCH: usize = 4096;

/// Builds the index of a spool written before it existed, in one walk over
/// its notifications (in id order, so each invoice's status moves as it
/// did), once: the mark says it is done. Records of that time carry no
/// status (they read as `unknown`) and their resends were not counted.
/// Answers how many notifications it indexed, `None` when the index was
/// there already.
pub fn build_on_open(store: &Store) -> Result<Option<u64>, SpoolError> {
    if store.tree.get(BUILT).map_err(storage)?.is_some() {
        return Ok(None);
    }
    let mut indexed = 0;
    let mut batch = Batch::default();
    let mut pending = Pending::default();
    for item in store.tree.scan_prefix([super::keys::NOTIFICATION]) {
        let (key, value) = item.map_err(storage)?;
        let Some(id) = super::keys::id_of(&key) else {
            continue;
        };
        // An unreadable record is reported by the walks that read it.
        let Ok(record) = Record::<NotificationMeta>::decode(&value) else {
            continue;
        };
        let meta = record.meta;
        let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status)
        else {
            continue;
        };
        pending.stored(store, &mut batch, &invoice, id, meta.received_ms)?;
        indexed += 1;
        if indexed % UPGRADE_BATCH as u64 == 0 {
            store
                .tree
                .apply_batch(std::mem::take(&mut batch))
                .map_err(storage)?;
            pending = Pending::default();
        }
    }
    batch.insert(BUILT, &[]);
    store.tree.apply_batch(batch).map_err(storage)?;
    store.db.flush().map_err(storage)?;
    Ok(Some(indexed))
}

/// What one retention slice removed from the index, so that two
/// notifications of one invoice removed in the same slice see each other
/// gone and the invoice goes with the last.
#[derive(Default)]
pub struct Removed {
    entries: HashSet<Vec<u8>>,
}

impl Removed {
    /// Retention removes notification `id`: its entry, and its invoice when
    /// no other notification of it is left.
    pub fn notification(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        meta: &NotificationMeta,
        id: NotificationId,
    ) -> Result<(), SpoolError> {
        let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status)
        else {
            return Ok(());
        };
        let (source, subject) = (&invoice.source, &invoice.subject);
        let entry = entry_key(source, subject, id);
        batch.remove(entry.as_slice());
        self.entries.insert(entry);
        let mut left = false;
        for key in store
            .tree
            .scan_prefix(timeline_prefix(source, subject))
            .keys()
        {
            if !self.entries.contains(key.map_err(storage)?.as_ref()) {
                left = true;
                break;
            }
        }
        if !left {
            batch.remove(invoice_key(source, subject));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for status in ALL_STATUSES {
            let entry = Entry {
                status,
                superseded: true,
                resends: 7,
            };
            assert_eq!(Entry::decode(&entry.encode()), Some(entry));
            let current = Current {
                status,
                latest: NotificationId::new(5_000),
                latest_ms: 5_000,
            };
            assert_eq!(Current::decode(&current.encode()), Some(current));
        }
        assert_eq!(Entry::decode(&[0, 1]), None);
        assert_eq!(Current::decode(&[0; 10]), None);
    }

    #[test]
    fn keys_keep_invoices_apart_and_timelines_in_time_order() {
        let a = NotificationId::new(1_000);
        let b = NotificationId::new(2_000);
        assert!(entry_key("tus", "0001", a) < entry_key("tus", "0001", b));
        assert!(entry_key("tus", "0001", b).starts_with(&timeline_prefix("tus", "0001")));
        // "0001" is not a prefix of "00011"'s timeline.
        assert!(!entry_key("tus", "00011", a).starts_with(&timeline_prefix("tus", "0001")));
        assert_eq!(
            split_invoice_key(&invoice_key("tus", "0001-2")),
            Some(("tus", "0001-2"))
        );
        assert!(invoice_key("tus", "x").starts_with(&source_prefix("tus")));
        assert!(!invoice_key("tusf", "x").starts_with(&source_prefix("tus")));
    }

    #[test]
    fn only_a_subject_that_fits_a_key_is_indexed() {
        let unknown = InvoiceStatus::Unknown;
        assert!(InvoiceRef::of("tus", Some("0001"), unknown).is_some());
        assert!(InvoiceRef::of("tus", None, unknown).is_none());
        assert!(InvoiceRef::of("tus", Some(""), unknown).is_none());
        assert!(InvoiceRef::of("tus", Some("a\0b"), unknown).is_none());
    }
}
