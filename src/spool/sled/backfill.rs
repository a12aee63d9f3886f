//! Backfill: a subscription is given stored notifications it was never
//! fanned out to (made before it existed, or filtered out then), each as a
//! new delivery due now. They wait in the retry index, keyed by due time
//! and then id, so they go out in the order they were received.

use std::collections::BTreeSet;

use ::sled::Batch;

use super::counts::{Standing, Tally};
use super::{encode_delivery, keys, Store};
use crate::delivery::Delivery;
use crate::spool::record::{NotificationMeta, Record};
use crate::spool::{NotificationId, SpoolError};

/// Adds a delivery to `subscription` for each of `ids` that is still
/// stored and has none for it yet; returns how many were added.
pub fn give(
    store: &Store,
    batch: &mut Batch,
    tally: &mut Tally,
    subscription: &str,
    ids: &[NotificationId],
    now_ms: i64,
) -> Result<u64, SpoolError> {
    let mut added = 0;
    let ids: BTreeSet<NotificationId> = ids.iter().copied().collect();
    for id in ids {
        let Some(bytes) = store.get(&keys::notification(id))? else {
            // Removed by retention since the caller chose it.
            continue;
        };
        // An unreadable one stays where it is, for `spool check` to name.
        let Ok(meta) = Record::<NotificationMeta>::decode(&bytes).map(|r| r.meta) else {
            continue;
        };
        let fanned_out = meta.subscriptions.iter().any(|s| s == subscription);
        if fanned_out || store.get(&keys::delivery(id, subscription))?.is_some() {
            continue;
        }
        batch.insert(
            keys::delivery(id, subscription),
            encode_delivery(&Delivery::new(subscription, now_ms))?,
        );
        batch.insert(keys::retry(subscription, now_ms, id), &[]);
        tally.added(subscription, Standing::Waiting);
        added += 1;
    }
    Ok(added)
}
