//! The invoice index: notifications by (source, subject), kept by the
//! writer in the batch that stores each notification, so it is exactly as
//! durable as what it indexes and never needs a scan to answer.
//!
//! | prefix | key                              | value                                                        |
//! |--------|----------------------------------|--------------------------------------------------------------|
//! | `i`    | source 0x00 subject 0x00 !id (16) | status told (1), superseded (1), resends (u32 BE), after (1) |
//!
//! One entry per stored notification, newest first under its invoice's
//! prefix (the id's bytes inverted, `!id`, because sled seeks forward
//! much more cheaply than it iterates back): the status it told, whether it would have moved a
//! final status back, how often the provider resent it inside the dedup
//! window (each resend is a duplicate the dedup path answers), and the
//! invoice's status after it (a final one never regresses, see
//! `providers::status`). So the invoice's current status is its first
//! entry's, one forward seek away, and a store costs that seek and one
//! insert, and the insert alone for a final status, which follows anything
//! (an entry per invoice beside it cost a second insert on every store,
//! and a seek back from the end of the timeline cost more than the insert:
//! both measured too dear). Retention removes a notification's entry with it;
//! the invoice goes with its last one. A spool written before the index
//! existed gets it in one walk at open (`open/`), like the counts.
//!
//! Beside it, the invoices waiting for a final status, by time:
//!
//! | prefix | key                  | value   |
//! |--------|----------------------|---------|
//! | `w`    | source 0x00 id (16)  | subject |
//!
//! written in the same batch for a `queued` notification only (one more
//! insert; a final one pays nothing), removed by retention with it. The
//! stuck check walks it per source in time order from where it stopped
//! and looks each candidate's current status up in the index above (one
//! seek): never a scan of the spool.
//!
//! And the stuck check's own marks (`events::stuck`), so that a restart
//! neither announces a stuck invoice again nor misses its clearing:
//!
//! | prefix | key                                  | value                           |
//! |--------|--------------------------------------|---------------------------------|
//! | `m`    | `stuck/` source 0x00 subject         | since ms (8) ++ latest id (16) |
//! | `m`    | `walked/` source                     | id (16)                         |
//!
//! one per stuck invoice and one per watched source, written by the
//! writer when the events task saves what changed (after the events those
//! changes raised are stored). The task removes a mark when the invoice
//! clears, when retention took its notifications (the task's next look
//! finds it gone), or when its source is no longer watched: no mark
//! outlives what it marks by more than one look.
//!
//! The encodings and the writer's steps are here, and the reads.

use std::collections::HashMap;

use ::sled::Batch;

use super::{storage, SledSpool, Store};
use crate::providers::{InvoiceStatus, ALL_STATUSES};
use crate::spool::record::Record;
use crate::spool::{
    Invoice, InvoiceCursor, NotificationId, NotificationMeta, SpoolError, StuckChanges,
    StuckInvoice, StuckMarks, TimelineEntry,
};

pub const ENTRY: u8 = b'i';
/// A `queued` notification, by source and time (see above).
pub const WAITING: u8 = b'w';
/// Present once the index covers every notification (set by the upgrade).
pub const BUILT: &[u8] = b"minvoices";

/// `mstuck/` source 0x00 subject: a stuck invoice.
pub const STUCK: &[u8] = b"mstuck/";
/// `mwalked/` source: how far the stuck check walked its `w` entries.
pub const WALKED: &[u8] = b"mwalked/";

/// Which invoice a notification is about (backend-neutral: `spool/invoices.rs`).
pub use crate::spool::invoices::InvoiceRef;

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

/// `i` source 0x00: every invoice of a source.
pub fn source_prefix(source: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + source.len());
    key.push(ENTRY);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key
}

/// `i` source 0x00 subject 0x00: an invoice's timeline.
pub fn timeline_prefix(source: &str, subject: &str) -> Vec<u8> {
    let mut key = source_prefix(source);
    key.extend_from_slice(subject.as_bytes());
    key.push(0);
    key
}

/// The first key after every entry of the timeline under `prefix`.
fn past_timeline(prefix: &[u8]) -> Vec<u8> {
    let mut key = prefix.to_vec();
    if let Some(last) = key.last_mut() {
        *last = 1;
    }
    key
}

/// An id as its entry's key ends: its bytes inverted, newest first.
fn newest_first(id: NotificationId) -> [u8; 16] {
    id.to_bytes().map(|b| !b)
}

fn id_of_inverted(bytes: &[u8]) -> Option<NotificationId> {
    let inverted: [u8; 16] = bytes.try_into().ok()?;
    NotificationId::from_bytes(&inverted.map(|b| !b))
}

pub fn entry_key(source: &str, subject: &str, id: NotificationId) -> Vec<u8> {
    let mut key = timeline_prefix(source, subject);
    key.extend_from_slice(&newest_first(id));
    key
}

/// The source, subject and id of an entry's key.
pub fn split_entry_key(key: &[u8]) -> Option<(&str, &str, NotificationId)> {
    let id_at = key.len().checked_sub(16)?;
    // `i` source 0x00 subject 0x00, before the id.
    let names = key.get(1..id_at)?.strip_suffix(&[0])?;
    let zero = names.iter().position(|&b| b == 0)?;
    let source = std::str::from_utf8(&names[..zero]).ok()?;
    let subject = std::str::from_utf8(&names[zero + 1..]).ok()?;
    Some((source, subject, id_of_inverted(&key[id_at..])?))
}

/// `w` source 0x00 id: a queued notification, in time order per source.
pub fn waiting_key(source: &str, id: NotificationId) -> Vec<u8> {
    let mut key = Vec::with_capacity(18 + source.len());
    key.push(WAITING);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_bytes());
    key
}

pub fn stuck_key(source: &str, subject: &str) -> Vec<u8> {
    [STUCK, source.as_bytes(), &[0], subject.as_bytes()].concat()
}

pub fn walked_key(source: &str) -> Vec<u8> {
    [WALKED, source.as_bytes()].concat()
}

fn encode_stuck(stuck: &StuckInvoice) -> [u8; 24] {
    let mut out = [0; 24];
    out[..8].copy_from_slice(&stuck.since_ms.to_be_bytes());
    out[8..].copy_from_slice(&stuck.latest.to_bytes());
    out
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

/// Writes changes to the stuck check's marks into `batch`. A name that
/// cannot be a key part (a 0x00) was never indexed, so never marked.
pub fn save_stuck(batch: &mut Batch, changes: &StuckChanges) {
    for stuck in &changes.marked {
        if !stuck.source.contains('\0') && !stuck.subject.contains('\0') {
            batch.insert(
                stuck_key(&stuck.source, &stuck.subject),
                &encode_stuck(stuck),
            );
        }
    }
    for (source, subject) in &changes.unmarked {
        batch.remove(stuck_key(source, subject));
    }
    for (source, walked) in &changes.walked {
        match walked {
            Some(id) => batch.insert(walked_key(source), &id.to_bytes()),
            None => batch.remove(walked_key(source)),
        }
    }
}

/// One notification in an invoice's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub status: InvoiceStatus,
    pub superseded: bool,
    pub resends: u32,
    /// The invoice's status after this notification.
    pub after: InvoiceStatus,
}

impl Entry {
    pub fn encode(&self) -> [u8; 7] {
        let mut out = [0; 7];
        out[0] = status_byte(self.status);
        out[1] = u8::from(self.superseded);
        out[2..6].copy_from_slice(&self.resends.to_be_bytes());
        out[6] = status_byte(self.after);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let resends: [u8; 4] = bytes.get(2..6)?.try_into().ok()?;
        Some(Entry {
            status: status_of_byte(*bytes.first()?),
            superseded: *bytes.get(1)? != 0,
            resends: u32::from_be_bytes(resends),
            after: status_of_byte(*bytes.get(6)?),
        })
    }
}

/// What `spool check` finds wrong with an index entry, if anything.
pub fn check_entry(key: &[u8], value: &[u8]) -> Option<String> {
    let readable = Entry::decode(value).is_some() && split_entry_key(key).is_some();
    (!readable).then(|| format!("malformed invoice index entry {key:?}"))
}

/// What `spool check` finds wrong with a waiting entry, if anything.
pub fn check_waiting(key: &[u8], value: &[u8]) -> Option<String> {
    let id = key
        .len()
        .checked_sub(16)
        .and_then(|at| NotificationId::from_bytes(&key[at..]));
    let readable = id.is_some() && std::str::from_utf8(value).is_ok() && key.contains(&0);
    (!readable).then(|| format!("malformed waiting invoice entry {key:?}"))
}

// === the writer's steps ===

/// What one group has written to the index and not yet applied: the
/// writer reads its own uncommitted entries through it, so two
/// notifications of one invoice in one group see each other.
#[derive(Default)]
pub struct Pending {
    /// Entries written by the group, by key.
    entries: HashMap<Vec<u8>, Entry>,
    /// Each invoice's status after the group's last entry of it, and
    /// that entry's notification, by timeline prefix.
    latest: HashMap<Vec<u8>, (InvoiceStatus, NotificationId)>,
}

impl Pending {
    fn put(&mut self, batch: &mut Batch, key: Vec<u8>, entry: Entry) {
        batch.insert(key.as_slice(), &entry.encode());
        self.entries.insert(key, entry);
    }

    /// A new notification of `invoice`: its timeline entry, with the
    /// invoice's status moved on (or kept, when the notification would
    /// move a final status back). Answers whether it was superseded.
    pub fn stored(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        invoice: &InvoiceRef,
        id: NotificationId,
    ) -> Result<bool, SpoolError> {
        let prefix = timeline_prefix(&invoice.source, &invoice.subject);
        let before = match self.latest.get(&prefix) {
            Some((status, _)) => Some(*status),
            // A final status follows anything: no need to look (most
            // notifications are final ones, so most stores skip the seek).
            None if invoice.status.is_final() => None,
            None => newest_entry(store, &prefix)?.map(|(_, entry)| entry.after),
        };
        let transition = invoice.status.apply_to(before);
        let entry = Entry {
            status: invoice.status,
            superseded: transition.superseded,
            resends: 0,
            after: transition.status,
        };
        let mut key = prefix.clone();
        key.extend_from_slice(&newest_first(id));
        self.put(batch, key, entry);
        // Only a queued notification that leaves its invoice queued can
        // start the wait for a final status.
        if invoice.status == InvoiceStatus::Queued && transition.status == InvoiceStatus::Queued {
            batch.insert(waiting_key(&invoice.source, id), invoice.subject.as_bytes());
        }
        self.latest.insert(prefix, (transition.status, id));
        Ok(transition.superseded)
    }

    /// Where `invoice` stands now, this group's entries included: its
    /// status and latest notification; one seek when the group wrote none.
    pub fn current(
        &self,
        store: &Store,
        invoice: &InvoiceRef,
    ) -> Result<Option<(InvoiceStatus, NotificationId)>, SpoolError> {
        let prefix = timeline_prefix(&invoice.source, &invoice.subject);
        if let Some(latest) = self.latest.get(&prefix) {
            return Ok(Some(*latest));
        }
        Ok(newest_entry(store, &prefix)?.and_then(|(key, entry)| {
            let id = key.get(prefix.len()..).and_then(id_of_inverted)?;
            Some((entry.after, id))
        }))
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
        let entry = match self.entries.get(&key) {
            Some(entry) => Some(*entry),
            None => store
                .tree
                .get(&key)
                .map_err(storage)?
                .and_then(|v| Entry::decode(&v)),
        };
        // An entry missing (removed by retention meanwhile) counts nothing.
        if let Some(mut entry) = entry {
            entry.resends = entry.resends.saturating_add(1);
            self.put(batch, key, entry);
        }
        Ok(())
    }
}

/// The newest entry under a timeline prefix: the first.
fn newest_entry(store: &Store, prefix: &[u8]) -> Result<Option<(Vec<u8>, Entry)>, SpoolError> {
    let found = store
        .tree
        .range(prefix.to_vec()..past_timeline(prefix))
        .next()
        .transpose()
        .map_err(storage)?;
    Ok(found.and_then(|(key, value)| Some((key.to_vec(), Entry::decode(&value)?))))
}

/// Retention removes notification `id`: its entry (the invoice goes with
/// its last one, as nothing else is kept of it).
pub fn removed(batch: &mut Batch, meta: &NotificationMeta, id: NotificationId) {
    if let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status) {
        batch.remove(entry_key(&invoice.source, &invoice.subject, id));
        if invoice.status == InvoiceStatus::Queued {
            batch.remove(waiting_key(&invoice.source, id));
        }
    }
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
            None => vec![ENTRY],
        };
        let mut from = match after {
            Some(cursor) => {
                past_timeline(&timeline_prefix(&cursor.source, &cursor.subject)).max(prefix.clone())
            }
            None => prefix.clone(),
        };
        let mut found = Vec::new();
        // Each invoice: its first entry is its newest; then a seek past
        // the rest of its timeline.
        while found.len() < max {
            let Some(item) = store.tree.range(from.clone()..).next() else {
                break;
            };
            let (key, value) = item.map_err(storage)?;
            if !key.starts_with(&prefix) {
                break;
            }
            match (split_entry_key(&key), Entry::decode(&value)) {
                (Some((source, subject, latest)), Some(entry)) => {
                    found.push(invoice(source, subject, latest, entry));
                    from = past_timeline(&timeline_prefix(source, subject));
                }
                // Damaged (spool check reports it): step past this key.
                _ => {
                    from = key.to_vec();
                    from.push(0);
                }
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
        let prefix = timeline_prefix(source, subject);
        let mut timeline = Vec::new();
        let mut current = None;
        for item in store.tree.scan_prefix(&prefix) {
            let (key, value) = item.map_err(storage)?;
            let id = key.get(prefix.len()..).and_then(id_of_inverted);
            if let (Some(id), Some(entry)) = (id, Entry::decode(&value)) {
                current.get_or_insert_with(|| invoice(source, subject, id, entry));
                timeline.push(TimelineEntry {
                    id,
                    status: entry.status,
                    superseded: entry.superseded,
                    resends: entry.resends,
                });
            }
        }
        // Kept newest first; told oldest first.
        timeline.reverse();
        Ok(current.map(|invoice| (invoice, timeline)))
    }
}

impl SledSpool {
    /// Up to `max` queued notifications of `source` after `after`, received
    /// at or before `until_ms`, oldest first: (id, subject).
    pub fn waiting(
        &self,
        source: &str,
        after: Option<NotificationId>,
        until_ms: i64,
        max: usize,
    ) -> Result<Vec<(NotificationId, String)>, SpoolError> {
        let store = self.shared.store()?;
        let from = match after {
            Some(id) => {
                let mut key = waiting_key(source, id);
                key.push(0);
                key
            }
            None => waiting_key(source, NotificationId(ulid::Ulid(0))),
        };
        // The first id of the millisecond after `until_ms`.
        let next_ms = u64::try_from(until_ms.saturating_add(1)).unwrap_or(0);
        let end = waiting_key(source, NotificationId(ulid::Ulid::from_parts(next_ms, 0)));
        let mut found = Vec::new();
        for item in store.tree.range(from..end).take(max) {
            let (key, value) = item.map_err(storage)?;
            let id = key
                .len()
                .checked_sub(16)
                .and_then(|at| NotificationId::from_bytes(&key[at..]));
            // Damaged (spool check reports it): skipped.
            if let (Some(id), Ok(subject)) = (id, std::str::from_utf8(&value)) {
                found.push((id, subject.to_owned()));
            }
        }
        Ok(found)
    }

    /// One invoice as it stands now: one seek.
    pub fn invoice_now(&self, source: &str, subject: &str) -> Result<Option<Invoice>, SpoolError> {
        let store = self.shared.store()?;
        let prefix = timeline_prefix(source, subject);
        Ok(newest_entry(&store, &prefix)?.and_then(|(key, entry)| {
            let id = key.get(prefix.len()..).and_then(id_of_inverted)?;
            Some(invoice(source, subject, id, entry))
        }))
    }
}

impl SledSpool {
    /// The stuck check's marks (damaged ones are skipped: at worst an
    /// invoice is announced again).
    pub fn stuck_marks(&self) -> Result<StuckMarks, SpoolError> {
        let store = self.shared.store()?;
        let mut marks = StuckMarks::default();
        for item in store.tree.scan_prefix(STUCK) {
            let (key, value) = item.map_err(storage)?;
            marks.stuck.extend(decode_stuck(&key, &value));
        }
        for item in store.tree.scan_prefix(WALKED) {
            let (key, value) = item.map_err(storage)?;
            let source = std::str::from_utf8(&key[WALKED.len()..]).ok();
            if let (Some(source), Some(id)) = (source, NotificationId::from_bytes(&value)) {
                marks.walked.push((source.to_owned(), id));
            }
        }
        Ok(marks)
    }
}

/// An invoice as its newest entry tells it.
fn invoice(source: &str, subject: &str, latest: NotificationId, newest: Entry) -> Invoice {
    Invoice {
        source: source.to_owned(),
        subject: subject.to_owned(),
        status: newest.after,
        latest,
        latest_ms: latest.ms(),
    }
}

// === the upgrade ===

/// Records indexed per batch by the upgrade: bounded memory on any spool.
const UPGRADE_BATCH: u64 = 4096;

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
        pending.stored(store, &mut batch, &invoice, id)?;
        indexed += 1;
        if indexed % UPGRADE_BATCH == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        for status in ALL_STATUSES {
            let entry = Entry {
                status,
                superseded: true,
                resends: 7,
                after: InvoiceStatus::Accepted,
            };
            assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        }
        assert_eq!(Entry::decode(&[0, 1]), None);
    }

    #[test]
    fn keys_keep_invoices_apart_and_timelines_in_time_order() {
        let a = NotificationId::new(1_000);
        let b = NotificationId::new(2_000);
        // Newest first within an invoice.
        assert!(entry_key("tus", "0001", b) < entry_key("tus", "0001", a));
        assert!(entry_key("tus", "0001", b).starts_with(&timeline_prefix("tus", "0001")));
        // "0001" is not a prefix of "00011"'s timeline, and every entry of
        // an invoice sorts before the end of its timeline.
        let end = past_timeline(&timeline_prefix("tus", "0001"));
        assert!(!entry_key("tus", "00011", a).starts_with(&timeline_prefix("tus", "0001")));
        assert!(entry_key("tus", "0001", b) < end);
        assert!(entry_key("tus", "00011", a) > end);
        assert_eq!(
            split_entry_key(&entry_key("tus", "0001-2", b)),
            Some(("tus", "0001-2", b))
        );
        assert_eq!(split_entry_key(b"i"), None);
        assert!(entry_key("tus", "x", a).starts_with(&source_prefix("tus")));
        assert!(!entry_key("tusf", "x", a).starts_with(&source_prefix("tus")));
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
