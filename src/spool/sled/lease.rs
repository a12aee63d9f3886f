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

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::writer::Change;
use super::{delivery_of, encode_delivery, keys, lock, storage, Shared, Store, EXAMINE_PER_LEASE};
use crate::delivery::Delivery;
use crate::spool::record::Record;
use crate::spool::{NotificationId, NotificationRecord, SpoolError};

/// One subscription's walks and what it holds.
#[derive(Debug, Default)]
pub struct SubState {
    /// The cursor was read from the store since it was (re)opened.
    loaded: bool,
    /// The first-attempt walk examines notification ids from here on.
    scan_from: u128,
    first_in_flight: BTreeSet<NotificationId>,
    /// First attempts let go of without an outcome: leased again first.
    redo_first: BTreeSet<NotificationId>,
    retry_in_flight: HashSet<NotificationId>,
    /// The retry walk resumes after this `r` key.
    retry_after: Option<Vec<u8>>,
}

impl SubState {
    /// The cursor that may be persisted once `id`'s first attempt is
    /// recorded: every notification below it is done with.
    fn cursor_without(&self, id: NotificationId) -> u128 {
        let lowest_held = self.first_in_flight.iter().find(|other| **other != id);
        let lowest_redo = self.redo_first.first();
        [lowest_held, lowest_redo]
            .into_iter()
            .flatten()
            .map(|other| other.0 .0)
            .fold(self.scan_from, u128::min)
    }

    fn release(&mut self, id: NotificationId, first_attempt: bool, again: bool) {
        if first_attempt {
            self.first_in_flight.remove(&id);
            if again {
                self.redo_first.insert(id);
            }
        } else {
            self.retry_in_flight.remove(&id);
            if again {
                self.retry_after = None;
            }
        }
    }
}

/// A leased delivery (see [`crate::spool::Lease`]).
pub struct SledLease {
    pub id: NotificationId,
    pub subscription: String,
    pub delivery: Delivery,
    pub notification: NotificationRecord,
    /// The `r` entry that made it due; `None` for a first attempt.
    retry_key: Option<Vec<u8>>,
    state: Arc<Mutex<SubState>>,
    done: AtomicBool,
}

impl SledLease {
    /// The write that records `delivery` as this lease's outcome.
    pub(super) fn completion(&self, delivery: &Delivery) -> Result<Change, SpoolError> {
        let cursor = match self.retry_key {
            None => Some(lock(&self.state).cursor_without(self.id)),
            Some(_) => None,
        };
        Ok(Change::Complete {
            id: self.id,
            subscription: self.subscription.clone(),
            value: encode_delivery(delivery)?,
            old_retry: self.retry_key.clone(),
            new_retry: delivery
                .due_at()
                .map(|at| keys::retry(&self.subscription, at, self.id)),
            cursor,
        })
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
            // Never recorded: it is due again.
            lock(&self.state).release(self.id, self.retry_key.is_none(), true);
        }
    }
}

/// What a walk found.
pub enum Found {
    Leases(Vec<SledLease>),
    /// Nothing due now; the earliest due time known, if any.
    NothingUntil(Option<i64>),
}

/// Finds up to `max` due deliveries of `name` and leases them.
pub fn walk(shared: &Shared, name: &str, max: usize, now: i64) -> Result<Found, SpoolError> {
    let store = shared.store()?;
    let state_handle = shared.sub(name);
    let mut state = lock(&state_handle);
    if !state.loaded {
        state.scan_from = read_cursor(&store, name)?;
        state.loaded = true;
    }
    let mut out = Vec::new();
    walk_retries(
        shared,
        &store,
        name,
        now,
        max,
        &mut state,
        &state_handle,
        &mut out,
    )?;
    let more_now = walk_first_attempts(
        shared,
        &store,
        name,
        max,
        &mut state,
        &state_handle,
        &mut out,
    )?;
    if !out.is_empty() {
        return Ok(Found::Leases(out));
    }
    if more_now {
        return Ok(Found::NothingUntil(Some(now)));
    }
    Ok(Found::NothingUntil(earliest_retry(&store, name, |id| {
        state.retry_in_flight.contains(&id)
    })?))
}

fn read_cursor(store: &Store, name: &str) -> Result<u128, SpoolError> {
    Ok(store
        .get(&keys::cursor(name))?
        .and_then(|v| NotificationId::from_bytes(&v))
        .map_or(0, |id| id.0 .0))
}

#[allow(clippy::too_many_arguments)]
fn walk_retries(
    shared: &Shared,
    store: &Store,
    name: &str,
    now: i64,
    max: usize,
    state: &mut SubState,
    handle: &Arc<Mutex<SubState>>,
    out: &mut Vec<SledLease>,
) -> Result<(), SpoolError> {
    let prefix = keys::retry_prefix(name);
    let mut end = prefix.clone();
    end.extend_from_slice(&now.max(0).saturating_add(1).to_be_bytes());
    for from_start in [false, true] {
        let start = match (&state.retry_after, from_start) {
            (Some(after), false) => Bound::Excluded(after.clone()),
            (None, false) => continue,
            (_, true) => Bound::Included(prefix.clone()),
        };
        let before = out.len();
        for item in store.tree.range((start, Bound::Excluded(end.clone()))) {
            if out.len() >= max {
                break;
            }
            let (key, _) = item.map_err(storage)?;
            state.retry_after = Some(key.to_vec());
            let Some((_, _, id)) = keys::split_retry(&key) else {
                shared.note_unreadable(format!("retry entry {key:?}"));
                continue;
            };
            if state.retry_in_flight.contains(&id) {
                continue;
            }
            let Some(notification) = load_notification(shared, store, id)? else {
                shared.note_unreadable(format!("retry of {id} for {name}: no notification"));
                continue;
            };
            let (delivery, _) = delivery_of(store, id, name, notification.meta.received_ms)?;
            state.retry_in_flight.insert(id);
            out.push(SledLease {
                id,
                subscription: name.to_owned(),
                delivery,
                notification,
                retry_key: Some(key.to_vec()),
                state: handle.clone(),
                done: AtomicBool::new(false),
            });
        }
        if out.len() > before || out.len() >= max {
            break;
        }
    }
    Ok(())
}

/// Returns whether the walk stopped early with more to examine.
fn walk_first_attempts(
    shared: &Shared,
    store: &Store,
    name: &str,
    max: usize,
    state: &mut SubState,
    handle: &Arc<Mutex<SubState>>,
    out: &mut Vec<SledLease>,
) -> Result<bool, SpoolError> {
    let Some(durable) = *lock(&shared.durable) else {
        return Ok(false);
    };
    if out.len() >= max || (state.scan_from > durable.0 .0 && state.redo_first.is_empty()) {
        return Ok(false);
    }
    let recheck_upto = *lock(&shared.recheck_upto);
    while out.len() < max {
        let Some(id) = state.redo_first.pop_first() else {
            break;
        };
        if store.get(&keys::delivery(id, name))?.is_some() {
            continue;
        }
        if let Some(notification) = load_notification(shared, store, id)? {
            state.first_in_flight.insert(id);
            out.push(first_attempt(id, name, notification, handle));
        }
    }
    let start = keys::notification(NotificationId(ulid::Ulid(state.scan_from)));
    let end = keys::notification(durable);
    for (examined, item) in store.tree.range(start..=end).enumerate() {
        if out.len() >= max || examined >= EXAMINE_PER_LEASE {
            return Ok(true);
        }
        let (key, value) = item.map_err(storage)?;
        let Some(id) = keys::id_of(&key) else {
            continue;
        };
        state.scan_from = id.0 .0.saturating_add(1);
        if state.first_in_flight.contains(&id) || state.retry_in_flight.contains(&id) {
            continue;
        }
        let notification: NotificationRecord = match Record::decode(&value) {
            Ok(record) => record,
            Err(err) => {
                shared.note_unreadable(format!("notification {id}: {err}"));
                continue;
            }
        };
        if !notification.meta.subscriptions.iter().any(|s| s == name) {
            continue;
        }
        if recheck_upto.is_some_and(|upto| id <= upto)
            && store.get(&keys::delivery(id, name))?.is_some()
        {
            continue; // attempted before a restart; its record decides
        }
        state.first_in_flight.insert(id);
        out.push(first_attempt(id, name, notification, handle));
    }
    Ok(false)
}

fn first_attempt(
    id: NotificationId,
    name: &str,
    notification: NotificationRecord,
    handle: &Arc<Mutex<SubState>>,
) -> SledLease {
    SledLease {
        id,
        subscription: name.to_owned(),
        delivery: Delivery::new(name, notification.meta.received_ms),
        notification,
        retry_key: None,
        state: handle.clone(),
        done: AtomicBool::new(false),
    }
}

fn load_notification(
    shared: &Shared,
    store: &Store,
    id: NotificationId,
) -> Result<Option<NotificationRecord>, SpoolError> {
    let Some(bytes) = store.get(&keys::notification(id))? else {
        return Ok(None);
    };
    match Record::decode(&bytes) {
        Ok(record) => Ok(Some(record)),
        Err(err) => {
            shared.note_unreadable(format!("notification {id}: {err}"));
            Ok(None)
        }
    }
}

/// The earliest due time in `name`'s retry index that `skip` lets through.
fn earliest_retry(
    store: &Store,
    name: &str,
    skip: impl Fn(NotificationId) -> bool,
) -> Result<Option<i64>, SpoolError> {
    for item in store.tree.scan_prefix(keys::retry_prefix(name)) {
        let (key, _) = item.map_err(storage)?;
        match keys::split_retry(&key) {
            Some((_, _, id)) if skip(id) => continue,
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
    let retry = earliest_retry(&store, name, |_| false)?;
    let cursor = {
        let handle = shared.sub(name);
        let state = lock(&handle);
        let lowest_held = state.first_in_flight.iter().next().map(|id| id.0 .0);
        match (state.loaded, lowest_held) {
            (true, Some(held)) => held.min(state.scan_from),
            (true, None) => state.scan_from,
            (false, _) => read_cursor(&store, name)?,
        }
    };
    let start = keys::notification(NotificationId(ulid::Ulid(cursor)));
    let mut first = None;
    for item in store
        .tree
        .range(start..)
        .take_while(|item| {
            item.as_ref()
                .map_or(true, |(k, _)| k.first() == Some(&keys::NOTIFICATION))
        })
        .take(EXAMINE_PER_LEASE)
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
            first = Some(record.meta.received_ms);
            break;
        }
    }
    Ok(match (retry, first) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}
