//! The sled backend of the spool: the only code that knows the store is
//! sled (0.34). `keys.rs` is the layout, `open/` opening (with upgrade,
//! repair and loss detection) and the offline check, `writer/` the single
//! writer thread (group commit, applying changes, retention, the
//! free-space guard), `shared.rs` the state its handles share, `lease.rs`
//! what each subscription has handed out, `counts.rs` the counts the
//! writer keeps, `query.rs` the reads, `codec.rs` how a delivery is kept,
//! `checks.rs` the invoices' reconcile checks.
//! Reads run on the caller's thread, which is never an async worker: the
//! async methods move them to the blocking pool.

mod backfill;
mod backup;
mod checks;
mod codec;
#[cfg(test)]
pub(crate) mod contract_tests;
mod counts;
mod invoices;
mod keys;
mod lease;
mod mark;
mod open;
mod orphans;
mod purge;
mod query;
mod quiet_panic;
mod retry_now;
mod shared;
mod sub_state;
#[cfg(test)]
mod test_hooks;
#[cfg(test)]
pub(crate) mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{mpsc, oneshot, watch};

use super::record::{NotificationMeta, QuarantineMeta, Record};
use super::subscriptions::ApiSubscription;
use super::{
    audit, AuditEntry, AuditId, Counts, Health, Maintained, NotificationId, Purged, Received,
    Routes, SpoolError, Stored,
};
use crate::clock::Clock;
use crate::config::SpoolConfig;
use crate::delivery::Delivery;
use crate::providers::{Flag, Notification};
use crate::spool::reconcile::reconciled_key;
pub use backup::restore;
pub use codec::decode_any;
use codec::{decode_delivery, delivery_of, encode_delivery};
pub use lease::SledLease;
pub use open::{check, ensure_not_locked, is_new, stopped_cleanly};
use shared::{lock, newest_notification, storage, Shared, Store};

/// Which records a walk reads.
pub const NOTIFICATIONS: u8 = keys::NOTIFICATION;
pub const QUARANTINED: u8 = keys::QUARANTINE;
use writer::{Applied, Change, Op};

/// sled's tree that holds everything (format 2).
const TREE: &str = "spool";
/// Most records a first-attempt walk examines per call, so one blocking
/// read stays short even past many notifications for other subscriptions.
const EXAMINE_PER_LEASE: usize = 4096;
/// Deliveries one write of a bulk purge gives up: one slice holds the
/// writer about as long as one group of stores.
const PURGE_SLICE: usize = 256;
/// Bytes free, above the floor of `min_free`, for an open to go ahead
/// (sled starts a new segment of 512 KiB, the writer its first groups).
const ROOM_TO_OPEN: u64 = 2 << 20;
/// Room to open the spool: its filesystem has the floor of `min_free` free
/// (what outcomes and upkeep may not go below, see `writer/space.rs`) and
/// [`ROOM_TO_OPEN`] more; else why not.
pub fn room_to_open(config: &SpoolConfig) -> Result<(), String> {
    // A spool not created yet lives in a directory not made yet.
    let mut path = config.sled.path.as_path();
    while !path.exists() {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => path = parent,
            _ => return Ok(()),
        }
    }
    let Ok(stat) = rustix::fs::statvfs(path) else {
        // Cannot tell: let the open try.
        return Ok(());
    };
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let needed = (config.sled.min_free.0 / 2).saturating_add(ROOM_TO_OPEN);
    if free >= needed {
        Ok(())
    } else {
        Err(format!(
            "disk full: {free} bytes free on the spool's filesystem, {needed} needed to open it (half of spool.sled.min_free, and {ROOM_TO_OPEN} for the open)"
        ))
    }
}

#[derive(Clone)]
pub struct SledSpool {
    shared: Arc<Shared>,
    writer: mpsc::Sender<Op>,
}

impl SledSpool {
    pub fn open(
        config: &SpoolConfig,
        routes: Routes,
        clock: Clock,
    ) -> Result<SledSpool, SpoolError> {
        let opened = open::open(config, &routes, clock)?;
        // Until the caller hands over the full routes, the API-created
        // subscriptions are known by name (a stopped relay's commands must
        // not take their deliveries for orphans).
        let routes = routes.with_names(opened.api_subscriptions.keys());
        let shared = Arc::new(Shared {
            config: config.clone(),
            clock,
            durable: Mutex::new(opened.newest),
            sync_failed: Mutex::new(None),
            short_of_room: watch::Sender::new(false),
            recheck_upto: Mutex::new(opened.newest),
            store: ArcSwapOption::from_pointee(opened.store),
            routes: ArcSwap::from_pointee(routes),
            work: Mutex::default(),
            subs: Mutex::default(),
            health: Mutex::new(Health {
                writable: true,
                orphans: opened.orphans,
                repaired: opened.repaired,
                ..Health::default()
            }),
            flush_starts: AtomicU64::new(0),
            flushed_changes: AtomicU64::new(0),
            counts: Mutex::new(opened.counts.clone()),
            paused: Mutex::new(opened.paused.clone()),
            api_subscriptions: Mutex::new(opened.api_subscriptions.clone()),
            #[cfg(test)]
            fail_next_batch: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            crash_at_stop: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            free_space: Mutex::new(None),
        });
        let start = writer::Start {
            acknowledged: opened.acknowledged,
            last_id: opened.last_id,
            last_audit: opened.last_audit,
            counts: opened.counts,
            unopened: None,
        };
        let writer = writer::start(shared.clone(), start).map_err(|e| SpoolError::Open {
            path: config.sled.path.clone(),
            detail: format!("cannot start the writer thread: {e}"),
        })?;
        Ok(SledSpool { shared, writer })
    }

    /// A spool whose store is not opened (no room on its filesystem): every
    /// write is refused with `reason`, nothing is leased, health says it is
    /// fatal, and the relay replaces its process once there is room
    /// (`crate::reexec`). Its files are not touched.
    pub fn unopened(
        config: &SpoolConfig,
        routes: Routes,
        clock: Clock,
        reason: String,
    ) -> Result<SledSpool, SpoolError> {
        let shared = Arc::new(Shared {
            config: config.clone(),
            clock,
            durable: Mutex::new(None),
            sync_failed: Mutex::new(None),
            short_of_room: watch::Sender::new(true),
            recheck_upto: Mutex::new(None),
            store: ArcSwapOption::empty(),
            routes: ArcSwap::from_pointee(routes),
            work: Mutex::default(),
            subs: Mutex::default(),
            health: Mutex::new(Health {
                writable: false,
                fatal: true,
                condition: Some(reason.clone()),
                since_ms: Some(clock.now_ms()),
                ..Health::default()
            }),
            flush_starts: AtomicU64::new(0),
            flushed_changes: AtomicU64::new(0),
            counts: Mutex::default(),
            paused: Mutex::default(),
            api_subscriptions: Mutex::default(),
            #[cfg(test)]
            fail_next_batch: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            crash_at_stop: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            free_space: Mutex::new(None),
        });
        let start = writer::Start {
            acknowledged: mark::Acknowledged::read(&config.sled.path, None),
            last_id: None,
            last_audit: None,
            counts: Counts::default(),
            unopened: Some(reason),
        };
        let writer = writer::start(shared.clone(), start).map_err(|e| SpoolError::Open {
            path: config.sled.path.clone(),
            detail: format!("cannot start the writer thread: {e}"),
        })?;
        Ok(SledSpool { shared, writer })
    }

    pub fn path(&self) -> &Path {
        &self.shared.config.sled.path
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.shared.config
    }

    /// Holds (or, with `paused` false, releases) a subscription's
    /// deliveries; kept across restarts.
    pub async fn pause(&self, subscription: &str, paused: bool) -> Result<(), SpoolError> {
        let change = Change::Pause {
            subscription: subscription.to_owned(),
            paused,
        };
        self.write(change, true).await?;
        if !paused {
            self.shared.wake([subscription]);
        }
        Ok(())
    }

    /// Saves changes to the stuck check's marks; answered once applied,
    /// made durable by the next group flush.
    pub async fn save_stuck(&self, changes: super::StuckChanges) -> Result<(), SpoolError> {
        self.write(Change::Stuck(changes), false).await.map(|_| ())
    }

    pub fn paused(&self) -> std::collections::BTreeSet<String> {
        lock(&self.shared.paused).clone()
    }

    pub fn is_paused(&self, subscription: &str) -> bool {
        lock(&self.shared.paused).contains(subscription)
    }

    pub fn api_subscriptions(&self) -> Vec<ApiSubscription> {
        lock(&self.shared.api_subscriptions)
            .values()
            .cloned()
            .collect()
    }

    /// Keeps (creates or replaces) an API-created subscription with the
    /// audit record of that change, in one batch, durably.
    pub async fn put_subscription(
        &self,
        subscription: ApiSubscription,
        audit: AuditEntry,
    ) -> Result<AuditId, SpoolError> {
        let change = Change::Subscription {
            name: subscription.name.clone(),
            kept: Some((
                super::subscriptions::encode(&subscription)?,
                Box::new(subscription),
            )),
            audit: audit::encode_entry(&audit)?,
            audited_ms: self.shared.clock.now_ms(),
        };
        self.audited(change).await
    }

    /// Forgets an API-created subscription with the audit record of that
    /// change, in one batch, durably.
    pub async fn remove_subscription(
        &self,
        name: &str,
        audit: AuditEntry,
    ) -> Result<AuditId, SpoolError> {
        let change = Change::Subscription {
            name: name.to_owned(),
            kept: None,
            audit: audit::encode_entry(&audit)?,
            audited_ms: self.shared.clock.now_ms(),
        };
        self.audited(change).await
    }

    async fn audited(&self, change: Change) -> Result<AuditId, SpoolError> {
        match self.write(change, true).await? {
            Applied::Audited(id) => Ok(id),
            _ => Err(out_of_turn()),
        }
    }

    pub async fn backfill(
        &self,
        subscription: &str,
        ids: Vec<NotificationId>,
        now_ms: i64,
    ) -> Result<u64, SpoolError> {
        let change = Change::Backfill {
            subscription: subscription.to_owned(),
            ids,
            now_ms,
        };
        match self.write(change, true).await? {
            Applied::Added(added) => {
                self.shared.wake([subscription]);
                Ok(added)
            }
            _ => Err(out_of_turn()),
        }
    }

    pub async fn discard(&self, id: NotificationId) -> Result<(), SpoolError> {
        self.write(Change::Discard { id }, true).await.map(|_| ())
    }

    /// Takes a reloaded config's subscriptions (see `Change::Routes`).
    pub async fn set_routes(&self, routes: Routes) -> Result<(), SpoolError> {
        if self.shared.store.load().is_none() {
            // Not opened (or closed): nothing is stored, fan-out is moot.
            self.shared.routes.store(Arc::new(routes));
            return Ok(());
        }
        self.write(Change::Routes { routes }, true)
            .await
            .map(|_| ())
    }

    async fn write(&self, change: Change, durable: bool) -> Result<Applied, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Op::Write {
                change,
                durable,
                reply,
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    pub async fn store(
        &self,
        received: Received,
        notification: Notification,
        released: Option<NotificationId>,
    ) -> Result<Stored, SpoolError> {
        let subscriptions = self.shared.routes.load().matching(
            &received.source,
            &notification.event_type,
            notification.status,
        );
        self.store_to(received, notification, released, subscriptions)
            .await
    }

    /// Stores a notification fanned out to these subscriptions only.
    pub async fn store_to(
        &self,
        received: Received,
        notification: Notification,
        released: Option<NotificationId>,
        subscriptions: Vec<String>,
    ) -> Result<Stored, SpoolError> {
        let dedup_key = keys::dedup(&received.source, &notification.dedup_key);
        let invoice = invoices::InvoiceRef::of(
            &received.source,
            notification.subject.as_deref(),
            notification.status,
        );
        let reconciled = notification.flags.contains(&Flag::Reconciled);
        // Made here, off the writer's thread; only for a final status.
        let reconciled_dedup = invoice
            .as_ref()
            .filter(|invoice| !reconciled && invoice.status.is_final())
            .map(|invoice| {
                let key = reconciled_key(&invoice.subject, invoice.status);
                keys::dedup(&invoice.source, &key)
            });
        let record = Record {
            meta: NotificationMeta {
                id: String::new(),
                source: received.source,
                received_ms: received.received_ms,
                event_type: notification.event_type,
                subject: notification.subject,
                dedup_key: notification.dedup_key,
                provider_time: notification.provider_time.and_then(rfc3339),
                status: notification.status,
                // The writer knows, from the invoice index.
                superseded: false,
                content_type: received.content_type,
                headers: received.headers,
                peer: received.peer,
                subscriptions,
                flags: notification
                    .flags
                    .iter()
                    .map(|flag| flag.as_str().to_owned())
                    .collect(),
            },
            body: received.body,
        };
        let change = Change::Store(Box::new(writer::NewNotification {
            record: record.encode()?,
            dedup_key,
            received_ms: received.received_ms,
            source: record.meta.source,
            subscriptions: record.meta.subscriptions,
            released,
            invoice,
            reconciled,
            reconciled_dedup,
        }));
        match self.write(change, true).await? {
            Applied::Stored(stored) => Ok(stored),
            _ => Err(out_of_turn()),
        }
    }

    pub async fn quarantine(
        &self,
        received: Received,
        reason_kind: &str,
        reason: String,
    ) -> Result<NotificationId, SpoolError> {
        let record = Record {
            meta: QuarantineMeta {
                id: String::new(),
                source: received.source,
                received_ms: received.received_ms,
                reason_kind: reason_kind.to_owned(),
                reason,
                content_type: received.content_type,
                headers: received.headers,
                peer: received.peer,
            },
            body: received.body,
        };
        let change = Change::Quarantine {
            record: record.encode()?,
            received_ms: received.received_ms,
            source: record.meta.source,
        };
        match self.write(change, true).await? {
            Applied::Quarantined(id) => Ok(id),
            _ => Err(out_of_turn()),
        }
    }

    pub async fn lease(
        &self,
        subscription: &str,
        max: usize,
    ) -> Result<Vec<SledLease>, SpoolError> {
        let mut work = self.shared.work(subscription);
        loop {
            // Seen before the walk: whatever lands during it wakes the wait below.
            work.borrow_and_update();
            if *self.shared.short_of_room.borrow() {
                // No attempt whose outcome could not be written: wait for room.
                let mut short = self.shared.short_of_room.subscribe();
                if short.wait_for(|short| !short).await.is_err() {
                    return Err(SpoolError::Closed);
                }
                continue;
            }
            if lock(&self.shared.paused).contains(subscription) {
                // A resume wakes it.
                if work.changed().await.is_err() {
                    return Err(SpoolError::Closed);
                }
                continue;
            }
            let shared = self.shared.clone();
            let name = subscription.to_owned();
            let now = self.shared.clock.now_ms();
            let found = tokio::task::spawn_blocking(move || lease::walk(&shared, &name, max, now))
                .await
                .map_err(|e| SpoolError::Storage(crate::spool::cause(e)))??;
            let wake_at = match found {
                lease::Found::Leases(leases) => return Ok(leases),
                lease::Found::NothingUntil(at) => at,
            };
            // No due time known: only a wake-up (a store, an outcome, a
            // replay) can bring work, and the watch never misses one.
            let due = async {
                match wake_at {
                    Some(at) => {
                        let clock = self.shared.clock;
                        clock.sleep_until(clock.instant_at(at)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = work.changed() => {
                    if changed.is_err() {
                        return Err(SpoolError::Closed);
                    }
                }
                _ = due => {}
            }
        }
    }

    pub async fn complete(&self, lease: &SledLease, delivery: &Delivery) -> Result<(), SpoolError> {
        let change = lease.completion(delivery)?;
        let wakes = matches!(&change, Change::Complete(done) if done.new_retry.is_some());
        self.write(change, false).await?;
        lease.completed();
        if wakes {
            self.shared.wake([lease.subscription.as_str()]);
        }
        Ok(())
    }

    pub async fn replay(
        &self,
        id: NotificationId,
        subscription: &str,
        now_ms: i64,
    ) -> Result<bool, SpoolError> {
        let change = Change::Replay {
            id,
            subscription: subscription.to_owned(),
            now_ms,
        };
        match self.write(change, true).await? {
            Applied::Replayed(replayed) => {
                self.shared.wake([subscription]);
                Ok(replayed)
            }
            _ => Err(out_of_turn()),
        }
    }

    /// Makes every delivery of `subscription` waiting for a later retry
    /// due now, one slice per write (see `retry_now.rs`); how many.
    pub async fn retry_now(&self, subscription: &str, now_ms: i64) -> Result<u64, SpoolError> {
        let mut total = 0;
        let mut after = None;
        loop {
            let change = Change::RetryNow {
                subscription: subscription.to_owned(),
                now_ms,
                after: after.take(),
            };
            // Not durable: a crash that loses it loses only an earlier try.
            match self.write(change, false).await? {
                Applied::RetriedNow(done) => {
                    total += done.moved;
                    if done.moved > 0 {
                        self.shared.wake([subscription]);
                    }
                    match done.next {
                        Some(next) => after = Some(next),
                        None => return Ok(total),
                    }
                }
                _ => return Err(out_of_turn()),
            }
        }
    }

    /// Gives up the named deliveries, [`PURGE_SLICE`] per write, so the
    /// stores queued meanwhile go between two slices; the last slice is
    /// answered once flushed.
    pub async fn purge(
        &self,
        targets: Vec<(NotificationId, String)>,
        now_ms: i64,
    ) -> Result<Purged, SpoolError> {
        let mut total = Purged::default();
        let slices = targets.chunks(PURGE_SLICE).count();
        for (n, slice) in targets.chunks(PURGE_SLICE).enumerate() {
            let change = Change::Purge {
                targets: slice.to_vec(),
                now_ms,
            };
            match self.write(change, n + 1 == slices).await? {
                Applied::Purged(done) => {
                    total.purged += done.purged;
                    total.skipped += done.skipped;
                }
                _ => return Err(out_of_turn()),
            }
        }
        Ok(total)
    }

    pub async fn reassign_orphans(
        &self,
        from: &str,
        to: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, SpoolError> {
        let routes = self.shared.routes.load();
        routes.check_reassign(from, to)?;
        let change = Change::Orphans {
            from: from.to_owned(),
            to: to.map(str::to_owned),
            now_ms,
        };
        match self.write(change, true).await? {
            Applied::Reassigned(moved) => {
                if let Some(to) = to {
                    self.shared.wake([to]);
                }
                Ok(moved)
            }
            _ => Err(out_of_turn()),
        }
    }

    pub async fn maintain(&self) -> Result<Maintained, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Op::Maintain {
                now_ms: self.shared.clock.now_ms(),
                reply,
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    pub fn health(&self) -> Health {
        self.shared.health()
    }

    pub fn counts(&self) -> Counts {
        lock(&self.shared.counts).clone()
    }

    pub async fn audit(&self, entry: AuditEntry) -> Result<AuditId, SpoolError> {
        let change = Change::Audit {
            entry: audit::encode_entry(&entry)?,
            at_ms: self.shared.clock.now_ms(),
        };
        match self.write(change, true).await? {
            Applied::Audited(id) => Ok(id),
            _ => Err(out_of_turn()),
        }
    }

    /// Records a reconcile check in the writer's order (see `checks.rs`).
    pub async fn record_check(
        &self,
        source: &str,
        subject: &str,
        check: &crate::spool::ReconcileCheck,
    ) -> Result<(), SpoolError> {
        let change = Change::Check {
            source: source.to_owned(),
            subject: subject.to_owned(),
            value: crate::spool::reconcile::encode_check(check)?,
        };
        self.write(change, true).await.map(|_| ())
    }

    /// An invoice's checks, oldest first; a damaged one is skipped and
    /// counted in health (`spool check` names it).
    pub fn checks(
        &self,
        source: &str,
        subject: &str,
    ) -> Result<Vec<crate::spool::ReconcileCheck>, SpoolError> {
        let store = self.shared.store()?;
        let mut found = Vec::new();
        for item in store.tree.scan_prefix(checks::prefix(source, subject)) {
            let (key, value) = item.map_err(storage)?;
            match crate::spool::reconcile::decode_check(&value) {
                Ok(check) => found.push(check),
                Err(err) => self.shared.note_unreadable(format!("{key:?}: {err}")),
            }
        }
        Ok(found)
    }

    pub async fn writer_alive(&self, within: Duration) -> bool {
        let (alive, answer) = oneshot::channel();
        let asked =
            async { self.writer.send(Op::Probe { alive }).await.is_ok() && answer.await.is_ok() };
        tokio::time::timeout(within, asked).await.unwrap_or(false)
    }

    pub async fn close(&self) -> Result<(), SpoolError> {
        let (done, finished) = oneshot::channel();
        if self.writer.send(Op::Close { done }).await.is_err() {
            return Ok(()); // already closed
        }
        finished.await.unwrap_or(Err(SpoolError::Closed))
    }

    pub fn flush_starts(&self) -> u64 {
        self.shared.flush_starts.load(Ordering::Relaxed)
    }

    pub fn flushed_changes(&self) -> u64 {
        self.shared.flushed_changes.load(Ordering::Relaxed)
    }

    pub fn size_on_disk(&self) -> Result<u64, SpoolError> {
        self.shared.store()?.db.size_on_disk().map_err(storage)
    }
}

/// The writer answers each change with the kind of `Applied` it asked for;
/// anything else is a bug, reported rather than unwrapped.
fn out_of_turn() -> SpoolError {
    SpoolError::Storage(crate::spool::cause("the writer answered out of turn"))
}

fn rfc3339(time: time::OffsetDateTime) -> Option<String> {
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The path of sled's files inside the spool directory.
pub(super) fn db_file(path: &Path) -> PathBuf {
    path.join("db")
}
