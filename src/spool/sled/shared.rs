//! State shared by the spool's handles, its writer thread and its leases:
//! the open store, the durable watermark, health, counts and the wake-ups
//! of each subscription's lease.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use super::keys;
use super::sub_state::SubState;
use crate::clock::Clock;
use crate::config::SpoolConfig;
use crate::spool::subscriptions::ApiSubscription;
use crate::spool::{Counts, Health, NotificationId, Routes, SpoolError};

/// How many unreadable ids health keeps.
const UNREADABLE_IDS_KEPT: usize = 100;

/// An open sled database and the handles the spool uses.
pub(super) struct Store {
    pub db: ::sled::Db,
    pub tree: ::sled::Tree,
    /// sled's log file, for the fdatasync after each flush (None: not asked for).
    pub log: Option<std::fs::File>,
}

impl Store {
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<::sled::IVec>, SpoolError> {
        self.tree.get(key).map_err(storage)
    }
}

pub(super) fn storage(err: ::sled::Error) -> SpoolError {
    SpoolError::Storage(crate::spool::cause(err))
}

/// The newest notification in the tree (what open checks against the
/// acknowledged mark, and what a new mark names).
pub(super) fn newest_notification(
    tree: &::sled::Tree,
) -> Result<Option<NotificationId>, SpoolError> {
    let last = tree
        .scan_prefix([keys::NOTIFICATION])
        .next_back()
        .transpose()
        .map_err(storage)?;
    Ok(last.and_then(|(key, _)| keys::id_of(&key)))
}

/// State shared by the handles, the writer thread and the leases.
pub(super) struct Shared {
    pub config: SpoolConfig,
    pub clock: Clock,
    /// None once closed.
    pub store: ArcSwapOption<Store>,
    pub routes: ArcSwap<Routes>,
    /// The newest notification covered by a completed flush: nothing newer
    /// is leased.
    pub durable: Mutex<Option<NotificationId>>,
    /// An fdatasync the writer's syncer saw fail, for the writer to take up.
    pub sync_failed: Mutex<Option<SpoolError>>,
    /// True while the writer takes no write at all (the disk is below the
    /// floor of `min_free`, or the store failed or is not open): leases
    /// hand out nothing meanwhile (see `writer/space.rs`).
    pub short_of_room: watch::Sender<bool>,
    /// Per subscription: bumped when it may have new due work.
    pub(super) work: Mutex<HashMap<String, watch::Sender<u64>>>,
    pub(super) subs: Mutex<HashMap<String, Arc<Mutex<SubState>>>>,
    pub health: Mutex<Health>,
    pub flush_starts: AtomicU64,
    /// Changes covered by completed group flushes.
    pub flushed_changes: AtomicU64,
    /// Ids at or below this may already have a delivery record from before
    /// the store was (re)opened: first-attempt walks check for one.
    pub recheck_upto: Mutex<Option<NotificationId>>,
    /// The counts as of the last applied batch (the writer publishes them).
    pub counts: Mutex<Counts>,
    /// Subscriptions an admin paused: nothing of theirs is leased.
    pub paused: Mutex<std::collections::BTreeSet<String>>,
    /// Subscriptions created through the admin API, by name.
    pub api_subscriptions: Mutex<std::collections::BTreeMap<String, ApiSubscription>>,
    /// Tests: the writer's next group fails before its batch is applied.
    #[cfg(test)]
    pub fail_next_batch: std::sync::atomic::AtomicBool,
    /// Tests: the writer stops as a crash would (see `test_hooks.rs`).
    #[cfg(test)]
    pub crash_at_stop: std::sync::atomic::AtomicBool,
    /// Tests: the bytes free that the free-space guard reads instead of
    /// its filesystem's.
    #[cfg(test)]
    pub free_space: Mutex<Option<u64>>,
}

impl Shared {
    pub fn store(&self) -> Result<Arc<Store>, SpoolError> {
        self.store.load_full().ok_or_else(|| {
            SpoolError::Unavailable(
                self.health()
                    .condition
                    .unwrap_or_else(|| "the store is being reopened".into()),
            )
        })
    }

    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// Wakes the lease of each named subscription.
    pub fn wake<'a>(&self, subscriptions: impl IntoIterator<Item = &'a str>) {
        let work = lock(&self.work);
        for name in subscriptions {
            if let Some(tx) = work.get(name) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    pub(super) fn work(&self, subscription: &str) -> watch::Receiver<u64> {
        lock(&self.work)
            .entry(subscription.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    pub fn sub(&self, subscription: &str) -> Arc<Mutex<SubState>> {
        lock(&self.subs)
            .entry(subscription.to_owned())
            .or_default()
            .clone()
    }

    pub fn note_unreadable(&self, what: String) {
        tracing::error!(record = %what, "unreadable record in the spool; skipped");
        let mut health = lock(&self.health);
        health.unreadable += 1;
        if health.unreadable_ids.len() < UNREADABLE_IDS_KEPT {
            health.unreadable_ids.push(what);
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
