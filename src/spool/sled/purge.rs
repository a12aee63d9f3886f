//! An admin's bulk purge, applied by the writer one bounded slice at a
//! time: each picked delivery that is dead, or waiting between two
//! attempts, becomes purged (kept with its history, replayable, counted as
//! purged); retention then removes the notification like a delivered one.
//!
//! What it leaves alone, and why: a delivery in flight (its outcome is
//! about to be recorded, and would overwrite the purge); one never
//! attempted (the first-attempt walk does not read delivery records, so a
//! purge would not stop it; it is seconds from its first attempt anyway,
//! or its subscription is paused); and one delivered or purged since the
//! admin's walk. Those are answered as skipped.
//!
//! A waiting delivery is purged under its subscription's lease lock, with
//! its own batch applied before the lock is let go, so no lease walk can
//! hand it out between the check and the write.

use ::sled::Batch;

use super::counts::{Standing, Tally};
use super::{decode_delivery, encode_delivery, keys, lock, Shared, Store};
use crate::delivery::State;
use crate::spool::{NotificationId, Purged, SpoolError};

/// Gives up the deliveries `targets` names, as one slice.
pub(super) fn slice(
    shared: &Shared,
    store: &Store,
    tally: &mut Tally,
    targets: &[(NotificationId, String)],
    now_ms: i64,
) -> Result<Purged, SpoolError> {
    let mut done = Purged::default();
    for (id, subscription) in targets {
        let handle = shared.sub(subscription);
        let held = lock(&handle);
        let key = keys::delivery(*id, subscription);
        // No record: never attempted (see above).
        let Some(bytes) = store.get(&key)? else {
            done.skipped += 1;
            continue;
        };
        let Ok(mut delivery) = decode_delivery(&bytes) else {
            done.skipped += 1;
            continue;
        };
        let waiting_since = match delivery.state {
            State::Waiting { until_ms } if !held.holds(*id) => Some(until_ms),
            State::Dead { .. } => None,
            State::Pending
            | State::Waiting { .. }
            | State::InFlight { .. }
            | State::Delivered { .. }
            | State::Purged { .. } => {
                done.skipped += 1;
                continue;
            }
        };
        let was = Standing::of(&delivery.state);
        if delivery.give_up(now_ms).is_err() {
            done.skipped += 1;
            continue;
        }
        let mut batch = Batch::default();
        if let Some(due_ms) = waiting_since {
            batch.remove(keys::retry(subscription, due_ms, *id));
        }
        batch.insert(key, encode_delivery(&delivery)?);
        tally.moved(subscription, was, Standing::Purged);
        tally.apply(&store.tree, batch, &shared.counts)?;
        drop(held);
        done.purged += 1;
    }
    Ok(done)
}
