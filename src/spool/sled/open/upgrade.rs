//! The spool's format, and the upgrade from format 1 (one tree per kind)
//! to format 2 (one tree, kinds by key prefix).

use std::collections::BTreeSet;

use ::sled::{Batch, Db, Tree};

use super::super::{keys, storage};
use crate::spool::record::{NotificationMeta, Record};
use crate::spool::{NotificationId, SpoolError};

pub const FORMAT: &[u8] = b"2";
pub(super) const FORMAT_V1: &[u8] = b"1";
const V1_TREES: [&str; 5] = ["notifications", "dedup", "deliveries", "due", "quarantine"];
/// Batches of the format-1 upgrade.
const MIGRATE_BATCH: usize = 1000;

/// Copies a format-1 spool (one tree per kind) into the format-2 tree. A
/// crash midway leaves format 1 in place and the upgrade runs again.
pub(super) fn migrate_v1(db: &Db, tree: &Tree, meta: &Tree) -> Result<(), SpoolError> {
    tracing::info!("upgrading the spool from format 1 to format 2");
    let mut batch = Batch::default();
    let mut pending = 0;
    let mut put = |batch: &mut Batch, key: Vec<u8>, value: &[u8]| -> Result<(), SpoolError> {
        batch.insert(key, value);
        pending += 1;
        if pending >= MIGRATE_BATCH {
            tree.apply_batch(std::mem::take(batch)).map_err(storage)?;
            pending = 0;
        }
        Ok(())
    };
    let prefixed = |prefix: u8, key: &[u8]| {
        let mut out = Vec::with_capacity(1 + key.len());
        out.push(prefix);
        out.extend_from_slice(key);
        out
    };
    let mut counts = [0u64; 5];
    let mut subscriptions = BTreeSet::new();
    let mut newest: Option<NotificationId> = None;
    for item in db.open_tree("notifications").map_err(storage)?.iter() {
        let (key, value) = item.map_err(storage)?;
        if let Ok(record) = Record::<NotificationMeta>::decode(&value) {
            subscriptions.extend(record.meta.subscriptions);
        }
        newest = keys::id_of(&prefixed(keys::NOTIFICATION, &key)).max(newest);
        put(&mut batch, prefixed(keys::NOTIFICATION, &key), &value)?;
        counts[0] += 1;
    }
    for item in db.open_tree("dedup").map_err(storage)?.iter() {
        let (key, value) = item.map_err(storage)?;
        let dedup_key = prefixed(keys::DEDUP, &key);
        put(&mut batch, dedup_key, &value)?;
        counts[1] += 1;
    }
    for item in db.open_tree("deliveries").map_err(storage)?.iter() {
        let (key, value) = item.map_err(storage)?;
        put(&mut batch, prefixed(keys::DELIVERY, &key), &value)?;
        counts[2] += 1;
    }
    // Format 1 kept every pending delivery as a due entry: they become
    // retries, due when they were, and the cursors start after them.
    for item in db.open_tree("due").map_err(storage)?.iter() {
        let (key, _) = item.map_err(storage)?;
        put(&mut batch, prefixed(keys::RETRY, &key), &[])?;
        counts[3] += 1;
    }
    for item in db.open_tree("quarantine").map_err(storage)?.iter() {
        let (key, value) = item.map_err(storage)?;
        put(&mut batch, prefixed(keys::QUARANTINE, &key), &value)?;
        counts[4] += 1;
    }
    let after_newest = newest.map_or(0, |id| id.0 .0.saturating_add(1));
    for name in &subscriptions {
        put(&mut batch, keys::cursor(name), &after_newest.to_be_bytes())?;
    }
    tree.apply_batch(batch).map_err(storage)?;
    db.flush().map_err(storage)?;
    meta.insert("format", FORMAT).map_err(storage)?;
    db.flush().map_err(storage)?;
    drop_v1_trees(db)?;
    tracing::info!(
        notifications = counts[0],
        dedup_entries = counts[1],
        delivery_records = counts[2],
        due_entries = counts[3],
        quarantined = counts[4],
        "spool upgraded to format 2"
    );
    Ok(())
}

pub(super) fn drop_v1_trees(db: &Db) -> Result<(), SpoolError> {
    let names = db.tree_names();
    let mut dropped = false;
    for name in V1_TREES {
        if names.iter().any(|n| n.as_ref() == name.as_bytes()) {
            db.drop_tree(name).map_err(storage)?;
            dropped = true;
        }
    }
    if dropped {
        db.flush().map_err(storage)?;
    }
    Ok(())
}
