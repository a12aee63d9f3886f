//! Opening the sled spool: the lock, repairs sled can make (a damaged
//! snapshot is rebuilt from the log, a damaged `conf` is rewritten), the
//! upgrade from format 1, the check that no acknowledged notification went
//! missing, cursors for new subscriptions, orphans, and the counts (read
//! back, or made by one walk for a spool that has none). Also the offline
//! check of a whole spool (which recounts) and the record walks `spool
//! dump` uses.
//!
//! Here: opening for serving. `repair.rs` is sled's open itself, with the
//! lock and the repairs; `upgrade.rs` the format and its upgrade;
//! `clean_stop.rs` the mark of a clean stop; `walk.rs` reading a spool of
//! unknown health; `check.rs` the offline check.
//!
//! sled can panic on a damaged file; every call that reads a spool of
//! unknown health runs under `catch_quietly` (`catch_unwind` without Rust's
//! panic text on stderr), so damage is an error with a message, never a
//! crash.
//!
//! A truncated log looks to sled like a torn write: it opens with what is
//! before the cut, silently; on open, the notification the acknowledged
//! mark (`mark.rs`) names must be there.

mod check;
mod clean_stop;
mod repair;
mod upgrade;
mod walk;

use std::collections::BTreeMap;
use std::path::Path;

use super::super::subscriptions::ApiSubscription;
use super::counts::{self, Kept};
use super::mark::Acknowledged;
use super::{db_file, keys, newest_notification, storage, Store};
use crate::clock::Clock;
use crate::config::SpoolConfig;
use crate::spool::{AuditId, Counts, NotificationId, Routes, SpoolError};
use clean_stop::forget_clean_stop;
use repair::{check_not_locked, damaged_advice, open_store};

pub use check::check;
pub use clean_stop::{mark_clean_stop, stopped_cleanly};
pub use upgrade::FORMAT;
pub use walk::{audit_records_of, records_of};

/// A spool opened for serving.
pub struct Opened {
    pub store: Store,
    pub newest: Option<NotificationId>,
    /// The newest id of any record: new ids come after it.
    pub last_id: Option<NotificationId>,
    pub orphans: BTreeMap<String, u64>,
    pub repaired: Vec<String>,
    pub acknowledged: Acknowledged,
    pub counts: Counts,
    /// The newest audit record: new ones come after it.
    pub last_audit: Option<AuditId>,
    /// Subscriptions an admin paused.
    pub paused: std::collections::BTreeSet<String>,
    /// Subscriptions created through the admin API.
    pub api_subscriptions: BTreeMap<String, ApiSubscription>,
}

pub fn open(config: &SpoolConfig, routes: &Routes, clock: Clock) -> Result<Opened, SpoolError> {
    let (store, repaired) = open_store(config)?;
    // From now on the files change: the mark of a clean stop no longer holds.
    forget_clean_stop(&config.sled.path);
    // sled opened; a read that fails from here on (any of them: the cursors'
    // too) is damage it met past its first reads.
    prepare(config, routes, store, repaired, clock).map_err(|err| match err {
        SpoolError::Storage(detail) => SpoolError::Damaged {
            path: config.sled.path.clone(),
            detail: damaged_advice(&format!("sled cannot read it: {detail}")),
        },
        other => other,
    })
}

/// The loss check, cursors for new subscriptions, orphans and the newest ids
/// of an opened store.
fn prepare(
    config: &SpoolConfig,
    routes: &Routes,
    store: Store,
    repaired: Vec<String>,
    clock: Clock,
) -> Result<Opened, SpoolError> {
    let newest = newest_notification(&store.tree)?;
    let acknowledged = Acknowledged::read(&config.sled.path, newest);
    if let Some(missing) = acknowledged.missing(&store.tree)? {
        // A repair made on this open (a snapshot rebuilt from the log) tells
        // where the files as they were are kept.
        let repairs: String = repaired.iter().map(|r| format!(" On open: {r}.")).collect();
        return Err(SpoolError::Lost {
            path: config.sled.path.clone(),
            detail: format!(
                "{missing}. sled's log was probably truncated or damaged (its files \
                 were changed while the relay was stopped, or the disk lost writes).{repairs} \
                 Restore the spool from a backup; or run `webhook-relay spool check \
                 --accept-loss` to see what is intact and start with it"
            ),
        });
    }
    let first_new = newest.map_or(0, |id| id.0 .0.saturating_add(1));
    for name in routes.names() {
        let key = keys::cursor(name);
        if store.get(&key)?.is_none() {
            store
                .tree
                .insert(key, &first_new.to_be_bytes())
                .map_err(storage)?;
        }
    }
    store.db.flush().map_err(storage)?;
    let api_subscriptions = read_api_subscriptions(&store)?;
    // What the API created is no orphan, though the config does not name it.
    let routes = routes.with_names(api_subscriptions.keys());
    let orphans = super::orphans::count(&store.tree, &routes)?;
    for (name, waiting) in &orphans {
        tracing::warn!(
            subscription = %name, waiting,
            "deliveries wait for a subscription that is not configured; configure it again to deliver them"
        );
    }
    for repair in &repaired {
        tracing::warn!(repair = %repair, "spool repaired on open");
    }
    let last_quarantined = store
        .tree
        .scan_prefix([keys::QUARANTINE])
        .next_back()
        .transpose()
        .map_err(storage)?
        .and_then(|(key, _)| keys::id_of(&key));
    let last_audit = store
        .tree
        .scan_prefix([keys::AUDIT])
        .next_back()
        .transpose()
        .map_err(storage)?
        .and_then(|(key, _)| keys::audit_id_of(&key));
    let counts = counts_on_open(&store, clock)?;
    if let Some(indexed) = super::invoices::build_on_open(&store)? {
        if indexed > 0 {
            tracing::info!(
                notifications = indexed,
                "indexed the spool's notifications by invoice (once: the index is kept from now on)"
            );
        }
    }
    let mut paused = std::collections::BTreeSet::new();
    for entry in store.tree.scan_prefix(keys::PAUSED) {
        let (key, _) = entry.map_err(storage)?;
        if let Ok(name) = std::str::from_utf8(&key[keys::PAUSED.len()..]) {
            paused.insert(name.to_owned());
        }
    }
    for name in &paused {
        tracing::warn!(subscription = %name, "subscription paused by an admin: its deliveries wait until it is resumed");
    }
    Ok(Opened {
        store,
        newest,
        last_id: newest.max(last_quarantined),
        orphans,
        repaired,
        acknowledged,
        counts,
        last_audit,
        paused,
        api_subscriptions,
    })
}

/// The API-created subscriptions; a damaged one is logged and left out
/// (its deliveries then wait as orphans, where an admin sees them).
fn read_api_subscriptions(store: &Store) -> Result<BTreeMap<String, ApiSubscription>, SpoolError> {
    let mut found = BTreeMap::new();
    for entry in store.tree.scan_prefix(keys::API_SUBSCRIPTION) {
        let (key, value) = entry.map_err(storage)?;
        match super::super::subscriptions::decode(&value) {
            Ok(subscription) => {
                found.insert(subscription.name.clone(), subscription);
            }
            Err(err) => {
                tracing::error!(key = ?key, error = %err, "an API-created subscription cannot be read; left out")
            }
        }
    }
    Ok(found)
}

/// The kept counts; for a spool that has none (made before they were
/// kept) or whose count keys are damaged, one walk makes and keeps them.
fn counts_on_open(store: &Store, clock: Clock) -> Result<Counts, SpoolError> {
    let why = match counts::load(&store.tree)? {
        Kept::Found(counts) => return Ok(counts),
        Kept::Missing | Kept::WithoutSources => None,
        Kept::Damaged(why) => Some(why),
    };
    if let Some(why) = &why {
        tracing::warn!(damage = %why, "the spool's kept counts are damaged; counting again");
    }
    let started = clock.instant_now();
    let recount = counts::recount(&store.tree)?;
    counts::write_all(&store.tree, &recount.counts)?;
    store.db.flush().map_err(storage)?;
    tracing::info!(
        notifications = recount.counts.notifications,
        quarantined = recount.counts.quarantined,
        subscriptions = recount.counts.subscriptions.len(),
        sources = recount.counts.sources.len(),
        unreadable_records = recount.unreadable,
        took_ms = u64::try_from((clock.instant_now() - started).as_millis()).unwrap_or(u64::MAX),
        "counted the spool's deliveries by a walk over every notification (once: they are kept from now on)"
    );
    Ok(recount.counts)
}

/// Whether there is no spool at `path` yet: the first start creates it.
pub fn is_new(path: &Path) -> bool {
    !db_file(path).exists()
}

/// Fails (after a short grace for a relay that is just stopping) when
/// another process holds the spool: checked before anything is said of a
/// check.
pub fn ensure_not_locked(path: &Path) -> Result<(), SpoolError> {
    check_not_locked(path)
}
