//! An admin's "retry now" of one subscription: every delivery of it
//! waiting for a later retry becomes due now, its attempts and schedule
//! unchanged; applied by the writer one bounded slice at a time, so the
//! stores queued meanwhile go between two slices.
//!
//! It walks the subscription's retry index (`r` keys, in due order) past
//! `now`, and moves each entry to `now`: the forwarder's retry walk then
//! finds them due. Left alone: a delivery in flight (its outcome is about
//! to be recorded), a dead or delivered one (a replay is for those), and
//! one never attempted (due already). Each entry is moved under the
//! subscription's lease lock, its batch applied before the lock is let go,
//! so no lease walk hands it out between the check and the write.

use ::sled::Batch;

use super::counts::Tally;
use super::{decode_delivery, encode_delivery, keys, lock, storage, Shared, Store};
use crate::spool::{NotificationId, SpoolError};

/// Retry entries one slice examines at most.
pub(super) const RETRY_NOW_SLICE: usize = 1000;

/// What one slice did, and where the next one starts (None: done).
#[derive(Debug, Default)]
pub(super) struct RetriedSlice {
    pub moved: u64,
    pub next: Option<Vec<u8>>,
}

/// Brings forward the entries of `subscription` due after `now_ms`, from
/// `after` (exclusive) on, at most [`RETRY_NOW_SLICE`] of them.
pub(super) fn slice(
    shared: &Shared,
    store: &Store,
    tally: &mut Tally,
    subscription: &str,
    now_ms: i64,
    after: Option<Vec<u8>>,
) -> Result<RetriedSlice, SpoolError> {
    use std::ops::Bound;
    let prefix = keys::retry_prefix(subscription);
    let start = match after {
        Some(after) => Bound::Excluded(after),
        None => Bound::Included(keys::retry(
            subscription,
            now_ms.saturating_add(1),
            NotificationId(ulid::Ulid::nil()),
        )),
    };
    let mut entries = Vec::new();
    for item in store.tree.range((start, Bound::Unbounded)) {
        let (key, _) = item.map_err(storage)?;
        if !key.starts_with(&prefix) {
            break;
        }
        entries.push(key.to_vec());
        if entries.len() >= RETRY_NOW_SLICE {
            break;
        }
    }
    let mut done = RetriedSlice {
        moved: 0,
        next: (entries.len() >= RETRY_NOW_SLICE)
            .then(|| entries.last().cloned())
            .flatten(),
    };
    let handle = shared.sub(subscription);
    for key in entries {
        let Some((_, due_ms, id)) = keys::split_retry(&key) else {
            continue;
        };
        let mut held = lock(&handle);
        if held.holds(id) {
            continue;
        }
        let delivery_key = keys::delivery(id, subscription);
        let Some(bytes) = store.get(&delivery_key)? else {
            continue;
        };
        let Ok(mut delivery) = decode_delivery(&bytes) else {
            continue;
        };
        // An entry whose record says otherwise is stale: left as it is.
        if delivery.due_at() != Some(due_ms) || !delivery.bring_forward(now_ms) {
            continue;
        }
        let mut batch = Batch::default();
        batch.remove(key.as_slice());
        batch.insert(keys::retry(subscription, now_ms, id), &[]);
        batch.insert(delivery_key, encode_delivery(&delivery)?);
        tally.apply(&store.tree, batch, &shared.counts)?;
        // The retry walk starts again from the first entry, now due.
        held.forget_retry_position();
        drop(held);
        done.moved += 1;
    }
    Ok(done)
}
