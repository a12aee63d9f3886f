//! What each subscription has handed out, and the walks that find its due
//! work in batches.
//!
//! Two sources of work per subscription:
//! - first attempts: the notifications themselves, in id order, walked from
//!   the subscription's cursor up to the newest *durable* notification (so
//!   nothing is leased before the flush that made it durable);
//! - retries and replays: the `r` index, in due-time order, walked from
//!   where the last walk stopped (and from the start when that finds
//!   nothing), so a busy subscription does not rescan what it holds.
//!
//! Leases in flight are remembered here, in memory (bounded by the
//! forwarder's concurrency), and skipped by the walks. The persisted cursor
//! only moves past a notification once its first attempt is recorded.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::counts::Standing;
use super::sub_state::SubState;
use super::writer::{Change, Completion};
use super::{delivery_of, encode_delivery, keys, lock, storage, Shared, Store, EXAMINE_PER_LEASE};
use crate::delivery::Delivery;
use crate::spool::record::Record;
use crate::spool::{NotificationId, NotificationRecord, SpoolError};

/// A leased delivery (see [`crate::spool::Lease`]).
pub struct SledLease {
    pub id: NotificationId,
    pub subscription: String,
    pub delivery: Delivery,
    pub notification: NotificationRecord,
    /// The `r` entry that made it due; `None` for a first attempt.
    retry_key: Option<Vec<u8>>,
    state: Arc<Mutex<SubState>>,
    /// To wake the subscription's lease when this one is let go of.
    shared: Arc<Shared>,
    done: AtomicBool,
}

impl SledLease {
    /// The write that records `delivery` as this lease's outcome.
    pub(super) fn completion(&self, delivery: &Delivery) -> Result<Change, SpoolError> {
        let cursor = match self.retry_key {
            None => Some(lock(&self.state).cursor_without(self.id)),
            Some(_) => None,
        };
        Ok(Change::Complete(Completion {
            id: self.id,
            subscription: self.subscription.clone(),
            value: encode_delivery(delivery)?,
            old_retry: self.retry_key.clone(),
            new_retry: delivery
                .due_at()
                .map(|at| keys::retry(&self.subscription, at, self.id)),
            cursor,
            was: Standing::of(&self.delivery.state),
            now: Standing::of(&delivery.state),
        }))
    }

    /// The outcome is recorded: let go of it.
    pub(super) fn completed(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            lock(&self.state).release(self.id, self.retry_key.is_none(), false);
        }
    }
}

impl Drop for SledLease {
    fn drop(&mut self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            // Never recorded: it is due again, and a lease waiting for work
            // must hear of it.
            lock(&self.state).release(self.id, self.retry_key.is_none(), true);
            self.shared.wake([self.subscription.as_str()]);
        }
    }
}

/// What a walk found.
pub enum Found {
    Leases(Vec<SledLease>),
    /// Nothing due now; the earliest due time known, if any.
    NothingUntil(Option<i64>),
}

/// One walk over one subscription's due work.
struct Walk<'a> {
    shared: &'a Arc<Shared>,
    store: &'a Store,
    name: &'a str,
    handle: &'a Arc<Mutex<SubState>>,
}

/// Finds up to `max` due deliveries of `name` and leases them.
pub fn walk(shared: &Arc<Shared>, name: &str, max: usize, now: i64) -> Result<Found, SpoolError> {
    let store = shared.store()?;
    let handle = shared.sub(name);
    // Declared before the lock is taken, so that on an early return the
    // leases are dropped (and take the lock to let go) after it is released.
    let mut out = Vec::new();
    let mut state = lock(&handle);
    if !state.loaded {
        state.scan_from = read_cursor(&store, name)?;
        state.loaded = true;
    }
    let walk = Walk {
        shared,
        store: &store,
        name,
        handle: &handle,
    };
    walk.retries(now, max, &mut state, &mut out)?;
    let more_now = walk.first_attempts(max, &mut state, &mut out)?;
    if !out.is_empty() {
        drop(state);
        return Ok(Found::Leases(out));
    }
    if more_now {
        return Ok(Found::NothingUntil(Some(now)));
    }
    let next = earliest_retry(&store, name, |key, id| {
        state.retry_in_flight.contains(&id) || state.unusable.contains(key)
    })?;
    Ok(Found::NothingUntil(next))
}

fn read_cursor(store: &Store, name: &str) -> Result<u128, SpoolError> {
    Ok(store
        .get(&keys::cursor(name))?
        .and_then(|v| NotificationId::from_bytes(&v))
        .map_or(0, |id| id.0 .0))
}

impl Walk<'_> {
    fn retries(
        &self,
        now: i64,
        max: usize,
        state: &mut SubState,
        out: &mut Vec<SledLease>,
    ) -> Result<(), SpoolError> {
        let prefix = keys::retry_prefix(self.name);
        let mut end = prefix.clone();
        end.extend_from_slice(&now.max(0).saturating_add(1).to_be_bytes());
        for from_start in [false, true] {
            let start = match (&state.retry_after, from_start) {
                (Some(after), false) => Bound::Excluded(after.clone()),
                (None, false) => continue,
                (_, true) => Bound::Included(prefix.clone()),
            };
            let before = out.len();
            for item in self.store.tree.range((start, Bound::Excluded(end.clone()))) {
                if out.len() >= max {
                    break;
                }
                let (key, _) = item.map_err(storage)?;
                if state.unusable.contains(key.as_ref()) {
                    continue;
                }
                let Some((_, _, id)) = keys::split_retry(&key) else {
                    self.unusable(state, &key, format!("retry entry {key:?}"));
                    continue;
                };
                // Held as a retry, or as a first attempt whose failure was
                // just recorded (its entry is visible before it is let go).
                if state.holds(id) {
                    continue;
                }
                let Some(notification) = self.notification(id)? else {
                    self.unusable(
                        state,
                        &key,
                        format!("retry of {id} for {}: no readable notification", self.name),
                    );
                    continue;
                };
                let delivery =
                    match delivery_of(self.store, id, self.name, notification.meta.received_ms) {
                        Ok((delivery, _)) => delivery,
                        Err(SpoolError::Corrupt(err)) => {
                            self.unusable(
                                state,
                                &key,
                                format!("delivery of {id} to {}: {err}", self.name),
                            );
                            continue;
                        }
                        Err(err) => return Err(err),
                    };
                state.retry_after = Some(key.to_vec());
                state.retry_in_flight.insert(id);
                out.push(self.lease(id, delivery, notification, Some(key.to_vec())));
            }
            if out.len() > before || out.len() >= max {
                break;
            }
        }
        Ok(())
    }

    /// Returns whether the walk stopped early with more to examine.
    fn first_attempts(
        &self,
        max: usize,
        state: &mut SubState,
        out: &mut Vec<SledLease>,
    ) -> Result<bool, SpoolError> {
        let Some(durable) = *lock(&self.shared.durable) else {
            return Ok(false);
        };
        let recheck_upto = *lock(&self.shared.recheck_upto);
        // Let go of earlier without an outcome: first in line. Removed from
        // the set only once handled, so an error leaves it there.
        while out.len() < max {
            let Some(&id) = state.redo_first.first() else {
                break;
            };
            let attempted = self.store.get(&keys::delivery(id, self.name))?.is_some();
            let notification = if attempted {
                None
            } else {
                self.notification(id)?
            };
            state.redo_first.remove(&id);
            if let Some(notification) = notification {
                state.first_in_flight.insert(id);
                out.push(self.first_attempt(id, notification));
            }
        }
        if out.len() >= max || state.scan_from > durable.0 .0 {
            return Ok(false);
        }
        let start = keys::notification(NotificationId(ulid::Ulid(state.scan_from)));
        let end = keys::notification(durable);
        for (examined, item) in self.store.tree.range(start..=end).enumerate() {
            if out.len() >= max || examined >= EXAMINE_PER_LEASE {
                return Ok(true);
            }
            let (key, value) = item.map_err(storage)?;
            let Some(id) = keys::id_of(&key) else {
                continue;
            };
            // The cursor moves past an id only once it is decided here.
            let lease = self.first_attempt_of(id, &value, recheck_upto, state)?;
            state.scan_from = id.0 .0.saturating_add(1);
            if let Some(notification) = lease {
                state.first_in_flight.insert(id);
                out.push(self.first_attempt(id, notification));
            }
        }
        Ok(false)
    }

    /// Whether notification `id` (its record `value`) is a first attempt for
    /// this subscription to lease now.
    fn first_attempt_of(
        &self,
        id: NotificationId,
        value: &[u8],
        recheck_upto: Option<NotificationId>,
        state: &SubState,
    ) -> Result<Option<NotificationRecord>, SpoolError> {
        if state.holds(id) {
            return Ok(None);
        }
        let notification: NotificationRecord = match Record::decode(value) {
            Ok(record) => record,
            Err(err) => {
                self.shared
                    .note_unreadable(format!("notification {id}: {err}"));
                return Ok(None);
            }
        };
        if !notification
            .meta
            .subscriptions
            .iter()
            .any(|s| s == self.name)
        {
            return Ok(None);
        }
        let attempted_before_a_restart = recheck_upto.is_some_and(|upto| id <= upto)
            && self.store.get(&keys::delivery(id, self.name))?.is_some();
        Ok((!attempted_before_a_restart).then_some(notification))
    }

    fn unusable(&self, state: &mut SubState, key: &[u8], what: String) {
        if state.unusable.insert(key.to_vec()) {
            self.shared.note_unreadable(what);
        }
    }

    fn notification(&self, id: NotificationId) -> Result<Option<NotificationRecord>, SpoolError> {
        let Some(bytes) = self.store.get(&keys::notification(id))? else {
            return Ok(None);
        };
        match Record::decode(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(err) => {
                self.shared
                    .note_unreadable(format!("notification {id}: {err}"));
                Ok(None)
            }
        }
    }

    fn first_attempt(&self, id: NotificationId, notification: NotificationRecord) -> SledLease {
        let delivery = Delivery::new(self.name, notification.meta.received_ms);
        self.lease(id, delivery, notification, None)
    }

    fn lease(
        &self,
        id: NotificationId,
        delivery: Delivery,
        notification: NotificationRecord,
        retry_key: Option<Vec<u8>>,
    ) -> SledLease {
        SledLease {
            id,
            subscription: self.name.to_owned(),
            delivery,
            notification,
            retry_key,
            state: self.handle.clone(),
            shared: self.shared.clone(),
            done: AtomicBool::new(false),
        }
    }
}

/// The earliest due time in `name`'s retry index that `skip` lets through.
fn earliest_retry(
    store: &Store,
    name: &str,
    skip: impl Fn(&[u8], NotificationId) -> bool,
) -> Result<Option<i64>, SpoolError> {
    for item in store.tree.scan_prefix(keys::retry_prefix(name)) {
        let (key, _) = item.map_err(storage)?;
        match keys::split_retry(&key) {
            Some((_, _, id)) if skip(&key, id) => continue,
            Some((_, at, _)) => return Ok(Some(at)),
            None => continue,
        }
    }
    Ok(None)
}

/// When the earliest not-final delivery of `name` is due: its first retry
/// entry, or its first notification not yet attempted (within one walk's
/// reach of the cursor).
pub fn next_due_ms(shared: &Shared, name: &str) -> Result<Option<i64>, SpoolError> {
    let store = shared.store()?;
    let retry = earliest_retry(&store, name, |_, _| false)?;
    let first = first_unattempted_ms(shared, &store, name, EXAMINE_PER_LEASE)?;
    Ok(match (retry, first) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Records past the cursor [`oldest_waiting_ms`] examines for a first
/// attempt: it runs at every scrape, so it must stay a seek, not a walk.
const OLDEST_EXAMINE: usize = 1024;

/// When the oldest delivery still waiting for `name` was received, as far
/// as two short reads tell: the first notification not yet attempted (exact,
/// first attempts go in id order; found within [`OLDEST_EXAMINE`] records
/// of the cursor), and the retry due soonest (retries of one schedule come
/// due in about the order their notifications came; an old one replayed
/// counts once it is next). No scan of the backlog.
pub fn oldest_waiting_ms(shared: &Shared, name: &str) -> Result<Option<i64>, SpoolError> {
    let store = shared.store()?;
    let mut retry = None;
    for item in store.tree.scan_prefix(keys::retry_prefix(name)) {
        let (key, _) = item.map_err(storage)?;
        if let Some((_, _, id)) = keys::split_retry(&key) {
            retry = Some(id.ms());
            break;
        }
    }
    let first = first_unattempted_ms(shared, &store, name, OLDEST_EXAMINE)?;
    Ok(match (retry, first) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// When `name`'s first notification not yet attempted was received,
/// looking at most `examine` records past its cursor.
fn first_unattempted_ms(
    shared: &Shared,
    store: &Store,
    name: &str,
    examine: usize,
) -> Result<Option<i64>, SpoolError> {
    let cursor = {
        let handle = shared.sub(name);
        let state = lock(&handle);
        let lowest_held = state.first_in_flight.iter().next().map(|id| id.0 .0);
        match (state.loaded, lowest_held) {
            (true, Some(held)) => held.min(state.scan_from),
            (true, None) => state.scan_from,
            (false, _) => read_cursor(store, name)?,
        }
    };
    let start = keys::notification(NotificationId(ulid::Ulid(cursor)));
    for item in store
        .tree
        .range(start..)
        .take_while(|item| {
            item.as_ref()
                .map_or(true, |(k, _)| k.first() == Some(&keys::NOTIFICATION))
        })
        .take(examine)
    {
        let (key, value) = item.map_err(storage)?;
        let Some(id) = keys::id_of(&key) else {
            continue;
        };
        let Ok(record) = Record::<crate::spool::NotificationMeta>::decode(&value) else {
            continue;
        };
        if record.meta.subscriptions.iter().any(|s| s == name)
            && store.get(&keys::delivery(id, name))?.is_none()
        {
            return Ok(Some(record.meta.received_ms));
        }
    }
    Ok(None)
}
