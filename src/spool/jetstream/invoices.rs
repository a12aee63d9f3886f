//! The invoice index on JetStream, kept by the fold (`fold.rs`) from each
//! notification's source, subject and status, and from each resend
//! `P.e.{id}.*`; the reads on it are `invoice_reads.rs`.
//!
//! | prefix | key                                   | value                                                        |
//! |--------|---------------------------------------|--------------------------------------------------------------|
//! | `I`    | source 0x00 subject 0x00 !id (16)     | status told (1), superseded (1), resends (u32 BE), after (1) |
//! | `V`    | source 0x00 id (16)                   | subject                                                      |
//!
//! As sled keeps them (`sled/invoices.rs`): one `I` entry per notification,
//! newest first under its invoice (the id's bytes inverted), so the
//! invoice's status is its first entry's `after`; one `V` entry per
//! `queued` notification that left its invoice queued, in time order per
//! source, for the stuck check. `superseded` is decided here, in stream
//! order, from what the index held before the notification: every relay
//! folds the same messages in the same order, so every relay decides the
//! same (the storing relay's own index may lag, so the store cannot).

use super::staged::{Reads, Writes};
use crate::providers::{InvoiceStatus, ALL_STATUSES};
use crate::spool::invoices::InvoiceRef;
use crate::spool::{NotificationId, NotificationMeta, SpoolError};

/// An invoice's timeline entry.
pub(super) const ENTRY: u8 = b'I';
/// A queued notification waiting for its invoice's final status.
pub(super) const QUEUED: u8 = b'V';

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

/// `I` source 0x00: every invoice of a source.
pub(super) fn source_prefix(source: &str) -> Vec<u8> {
    [&[ENTRY], source.as_bytes(), &[0]].concat()
}

/// `I` source 0x00 subject 0x00: an invoice's timeline.
pub(super) fn timeline_prefix(source: &str, subject: &str) -> Vec<u8> {
    [source_prefix(source).as_slice(), subject.as_bytes(), &[0]].concat()
}

/// The first key after every entry of the timeline under `prefix`.
pub(super) fn past_timeline(prefix: &[u8]) -> Vec<u8> {
    let mut key = prefix.to_vec();
    if let Some(last) = key.last_mut() {
        *last = 1;
    }
    key
}

pub(super) fn id_of_inverted(bytes: &[u8]) -> Option<NotificationId> {
    let inverted: [u8; 16] = bytes.try_into().ok()?;
    NotificationId::from_bytes(&inverted.map(|b| !b))
}

pub(super) fn entry_key(source: &str, subject: &str, id: NotificationId) -> Vec<u8> {
    let mut key = timeline_prefix(source, subject);
    key.extend_from_slice(&id.to_bytes().map(|b| !b));
    key
}

/// Whether the fold found `id` older than a state its invoice already
/// reached (false for a notification with no invoice entry).
pub(super) fn is_superseded(
    db: &impl Reads,
    source: &str,
    subject: &str,
    id: NotificationId,
) -> Result<bool, SpoolError> {
    let entry = db.read(&entry_key(source, subject, id))?;
    Ok(entry
        .as_deref()
        .and_then(Entry::decode)
        .is_some_and(|entry| entry.superseded))
}

/// The source, subject and id of an entry's key.
pub(super) fn split_entry_key(key: &[u8]) -> Option<(&str, &str, NotificationId)> {
    let id_at = key.len().checked_sub(16)?;
    let names = key.get(1..id_at)?.strip_suffix(&[0])?;
    let zero = names.iter().position(|&b| b == 0)?;
    let source = std::str::from_utf8(&names[..zero]).ok()?;
    let subject = std::str::from_utf8(&names[zero + 1..]).ok()?;
    Some((source, subject, id_of_inverted(&key[id_at..])?))
}

/// `V` source 0x00 id: a queued notification, in time order per source.
pub(super) fn queued_key(source: &str, id: NotificationId) -> Vec<u8> {
    [&[QUEUED], source.as_bytes(), &[0], &id.to_bytes()].concat()
}

/// One notification in an invoice's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub status: InvoiceStatus,
    pub superseded: bool,
    pub resends: u32,
    /// The invoice's status after this notification.
    pub after: InvoiceStatus,
}

impl Entry {
    fn encode(&self) -> [u8; 7] {
        let mut out = [0; 7];
        out[0] = status_byte(self.status);
        out[1] = u8::from(self.superseded);
        out[2..6].copy_from_slice(&self.resends.to_be_bytes());
        out[6] = status_byte(self.after);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Entry> {
        let resends: [u8; 4] = bytes.get(2..6)?.try_into().ok()?;
        Some(Entry {
            status: status_of_byte(*bytes.first()?),
            superseded: *bytes.get(1)? != 0,
            resends: u32::from_be_bytes(resends),
            after: status_of_byte(*bytes.get(6)?),
        })
    }
}

/// The newest entry under a timeline prefix (the first): its id and entry.
pub(super) fn newest_entry(
    db: &impl Reads,
    prefix: &[u8],
) -> Result<Option<(NotificationId, Entry)>, SpoolError> {
    let found = db.first_in(prefix, &past_timeline(prefix))?;
    Ok(found.and_then(|(key, value)| {
        let id = key.get(prefix.len()..).and_then(id_of_inverted)?;
        Some((id, Entry::decode(&value)?))
    }))
}

/// A notification new to the index: its invoice's timeline entry, the
/// invoice's status moved on from the entry before it (or kept, when it
/// would move a final one back: superseded), and its wait when it leaves
/// the invoice queued. The timeline is in id order; two stores racing
/// can reach the stream in the other order, so the entries after it
/// (rare) are decided again from it on: what every relay decides depends
/// on the notifications folded, not on which came first.
pub(super) fn fold_invoice(
    db: &impl Reads,
    batch: &mut Writes,
    id: NotificationId,
    meta: &NotificationMeta,
) -> Result<(), SpoolError> {
    let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status) else {
        return Ok(());
    };
    let (source, subject) = (invoice.source.as_str(), invoice.subject.as_str());
    let prefix = timeline_prefix(source, subject);
    let key = entry_key(source, subject, id);
    // Older entries sort after this one (ids inverted): the first is the
    // entry before it.
    let before = db
        .first_in(&key, &past_timeline(&prefix))?
        .and_then(|(_, value)| Entry::decode(&value))
        .map(|entry| entry.after);
    let mut entry = decide(invoice.status, before, 0);
    put(batch, source, subject, id, &entry);
    // The entries after it, oldest first.
    for (later_key, value) in db.all_in(&prefix, &key)?.into_iter().rev() {
        let later = later_key.get(prefix.len()..).and_then(id_of_inverted);
        let (Some(later), Some(held)) = (later, Entry::decode(&value)) else {
            continue; // damaged: left as it is
        };
        entry = decide(held.status, Some(entry.after), held.resends);
        if entry != held {
            batch.remove(queued_key(source, later));
            put(batch, source, subject, later, &entry);
        }
    }
    Ok(())
}

/// The entry of a notification telling `status` after `before`.
fn decide(status: InvoiceStatus, before: Option<InvoiceStatus>, resends: u32) -> Entry {
    let transition = status.apply_to(before);
    Entry {
        status,
        superseded: transition.superseded,
        resends,
        after: transition.status,
    }
}

/// Writes an entry, and its wait when it leaves its invoice queued.
fn put(batch: &mut Writes, source: &str, subject: &str, id: NotificationId, entry: &Entry) {
    batch.insert(entry_key(source, subject, id), &entry.encode());
    if entry.status == InvoiceStatus::Queued && entry.after == InvoiceStatus::Queued {
        batch.insert(queued_key(source, id), subject.as_bytes());
    }
}

/// A resend of notification `id` (`P.e.{id}.*`): counted on its entry;
/// one whose notification the index no longer holds counts nothing.
pub(super) fn fold_resend(
    db: &impl Reads,
    batch: &mut Writes,
    id: NotificationId,
    meta: Option<&[u8]>,
) -> Result<(), SpoolError> {
    let Some(meta) = meta else {
        return Ok(());
    };
    let meta: NotificationMeta = serde_json::from_slice(meta)
        .map_err(|e| SpoolError::Corrupt(format!("the metadata of {id}: {e}")))?;
    let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status) else {
        return Ok(());
    };
    let key = entry_key(&invoice.source, &invoice.subject, id);
    if let Some(mut entry) = db.read(&key)?.and_then(|v| Entry::decode(&v)) {
        entry.resends = entry.resends.saturating_add(1);
        batch.insert(key, &entry.encode());
    }
    Ok(())
}

/// Retention removes notification `id` (its removal marker folded in):
/// its timeline entry and its wait, as sled's retention removes them (the
/// entries after it keep what was decided with it). The invoice, when
/// this was its last notification: its checks go with it (`checks.rs`).
pub(super) fn unfold_invoice(
    db: &impl Reads,
    batch: &mut Writes,
    id: NotificationId,
    meta: &NotificationMeta,
) -> Result<Option<InvoiceRef>, SpoolError> {
    let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status) else {
        return Ok(None);
    };
    let (source, subject) = (invoice.source.as_str(), invoice.subject.as_str());
    let removed = entry_key(source, subject, id);
    batch.remove(removed.clone());
    batch.remove(queued_key(source, id));
    for (key, _) in db.all_with_prefix(&timeline_prefix(source, subject))? {
        if *key != *removed {
            return Ok(None);
        }
    }
    Ok(Some(invoice))
}

/// The ids in an invoice's timeline, newest first.
pub(super) fn timeline_ids(
    db: &impl Reads,
    source: &str,
    subject: &str,
) -> Result<Vec<NotificationId>, SpoolError> {
    let prefix = timeline_prefix(source, subject);
    let mut out = Vec::new();
    for (key, _) in db.all_with_prefix(&prefix)? {
        if let Some(id) = key.get(prefix.len()..).and_then(id_of_inverted) {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_keys_round_trip() {
        let a = NotificationId::new(1_000);
        let b = NotificationId::new(2_000);
        for status in ALL_STATUSES {
            let entry = Entry {
                status,
                superseded: true,
                resends: 7,
                after: InvoiceStatus::Accepted,
            };
            assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        }
        assert!(entry_key("tus", "0001", b) < entry_key("tus", "0001", a));
        let end = past_timeline(&timeline_prefix("tus", "0001"));
        assert!(entry_key("tus", "0001", b) < end);
        assert!(entry_key("tus", "00011", a) > end);
        assert_eq!(
            split_entry_key(&entry_key("tus", "A:1", b)),
            Some(("tus", "A:1", b))
        );
    }
}
