//! An invoice's checks with its provider (`spool/reconcile.rs`), in the
//! spool's one tree:
//!
//! | prefix | key                                  | value                          |
//! |--------|--------------------------------------|--------------------------------|
//! | `k`    | source 0x00 subject 0x00 seq (u64 BE) | the check (`encode_check`)     |
//!
//! `seq` counts up per invoice, so an invoice's checks are one prefix scan
//! in the order they were made. The writer records one in its own batch
//! (after applying what its group wrote before, as a backfill does: two
//! checks of one invoice in one group see each other), and drops the
//! oldest beyond [`CHECKS_KEPT`] in the same batch. A check is refused for
//! an invoice the index does not hold, so none is left without its
//! invoice; retention removes an invoice's checks in the batch that
//! removes its last notification ([`Gone`]). Checks are rare (a few per
//! stuck invoice), so this costs the ingest path nothing.

use std::collections::{BTreeSet, HashSet};

use ::sled::Batch;

use super::invoices::{self, InvoiceRef};
use super::{keys, storage, Store};
use crate::providers::InvoiceStatus;
use crate::spool::reconcile::{decode_check, CHECKS_KEPT};
use crate::spool::{NotificationId, NotificationMeta, SpoolError};

/// `k` source 0x00 subject 0x00: an invoice's checks.
pub fn prefix(source: &str, subject: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + source.len() + subject.len());
    key.push(keys::CHECK);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(subject.as_bytes());
    key.push(0);
    key
}

pub fn key(source: &str, subject: &str, seq: u64) -> Vec<u8> {
    let mut key = prefix(source, subject);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The source, subject and sequence number of a check's key.
pub fn split_key(key: &[u8]) -> Option<(&str, &str, u64)> {
    let seq_at = key.len().checked_sub(8)?;
    let names = key.get(1..seq_at)?.strip_suffix(&[0])?;
    let zero = names.iter().position(|&b| b == 0)?;
    let source = std::str::from_utf8(&names[..zero]).ok()?;
    let subject = std::str::from_utf8(&names[zero + 1..]).ok()?;
    let seq: [u8; 8] = key[seq_at..].try_into().ok()?;
    (key.first() == Some(&keys::CHECK)).then_some((source, subject, u64::from_be_bytes(seq)))
}

/// What `spool check` finds wrong with a check entry, if anything.
pub fn check_entry(key: &[u8], value: &[u8]) -> Option<String> {
    if split_key(key).is_none() {
        return Some(format!("malformed reconcile check key {key:?}"));
    }
    decode_check(value)
        .err()
        .map(|err| format!("reconcile check {key:?}: {err}"))
}

// === the writer's step ===

/// Records a check of (source, subject) in `batch`, the oldest beyond
/// [`CHECKS_KEPT`] removed. The tree must show what the group wrote
/// before. The inner error refuses this change alone (no such invoice).
pub(super) fn record(
    store: &Store,
    batch: &mut Batch,
    source: &str,
    subject: &str,
    value: Vec<u8>,
) -> Result<Result<(), SpoolError>, SpoolError> {
    let unknown = || {
        SpoolError::NotFound(format!(
            "of invoice {source}/{subject} (a check needs its invoice)"
        ))
    };
    if InvoiceRef::of(source, Some(subject), InvoiceStatus::Unknown).is_none() {
        return Ok(Err(unknown()));
    }
    let timeline = invoices::timeline_prefix(source, subject);
    if store
        .tree
        .scan_prefix(&timeline)
        .next()
        .transpose()
        .map_err(storage)?
        .is_none()
    {
        return Ok(Err(unknown()));
    }
    let mut kept = Vec::new();
    for item in store.tree.scan_prefix(prefix(source, subject)).keys() {
        kept.push(item.map_err(storage)?);
    }
    let next = kept
        .last()
        .and_then(|last| split_key(last))
        .map_or(0, |(_, _, seq)| seq.saturating_add(1));
    batch.insert(key(source, subject, next), value);
    let over = (kept.len() + 1).saturating_sub(CHECKS_KEPT);
    for old in kept.into_iter().take(over) {
        batch.remove(old);
    }
    Ok(Ok(()))
}

// === retention ===

/// What a retention slice removes of the invoice index, so that an
/// invoice whose last notification goes loses its checks in that batch.
#[derive(Default)]
pub(super) struct Gone {
    entries: HashSet<Vec<u8>>,
    invoices: BTreeSet<(String, String)>,
}

impl Gone {
    /// Retention removes notification `id` (and its index entry).
    pub fn note(&mut self, meta: &NotificationMeta, id: NotificationId) {
        if let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status) {
            self.entries
                .insert(invoices::entry_key(&invoice.source, &invoice.subject, id));
            self.invoices.insert((invoice.source, invoice.subject));
        }
    }

    /// Removes the checks of each invoice left with no entry: one seek per
    /// invoice touched, and a look at its timeline only when it has checks.
    pub fn remove_checks(self, store: &Store, batch: &mut Batch) -> Result<(), SpoolError> {
        for (source, subject) in &self.invoices {
            let checks = prefix(source, subject);
            let has_checks = store
                .tree
                .scan_prefix(&checks)
                .next()
                .transpose()
                .map_err(storage)?
                .is_some();
            if !has_checks {
                continue;
            }
            let mut left = false;
            for key in store
                .tree
                .scan_prefix(invoices::timeline_prefix(source, subject))
                .keys()
            {
                if !self.entries.contains(key.map_err(storage)?.as_ref()) {
                    left = true;
                    break;
                }
            }
            if left {
                continue;
            }
            for key in store.tree.scan_prefix(&checks).keys() {
                batch.remove(key.map_err(storage)?);
            }
        }
        Ok(())
    }
}

/// Every check in the tree, by invoice and in order: (source, subject,
/// stored bytes). For the backup.
pub(super) fn all(
    store: &Store,
) -> impl Iterator<Item = Result<(String, String, Vec<u8>), SpoolError>> + '_ {
    store.tree.scan_prefix([keys::CHECK]).filter_map(|item| {
        let (key, value) = match item {
            Ok(kv) => kv,
            Err(err) => return Some(Err(storage(err))),
        };
        // A malformed key (spool check names it) is left out.
        let (source, subject, _) = split_key(&key)?;
        Some(Ok((source.to_owned(), subject.to_owned(), value.to_vec())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_invoices_apart_in_order_and_split_back() {
        assert!(key("tus", "0001", 1) < key("tus", "0001", 2));
        assert!(key("tus", "0001", 255) < key("tus", "0001", 256));
        assert!(!key("tus", "00011", 0).starts_with(&prefix("tus", "0001")));
        assert!(!key("tusf", "0001", 0).starts_with(&prefix("tus", "0001")));
        assert_eq!(split_key(&key("tus", "A:1", 7)), Some(("tus", "A:1", 7)));
        assert_eq!(split_key(b"k"), None);
        assert_eq!(split_key(&key("tus", "A", 7)[1..]), None);
    }
}
