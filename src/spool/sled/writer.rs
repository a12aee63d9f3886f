//! The spool's single writer thread: group commit, ids, retention, and the
//! free-space guard.
//!
//! Every change goes through one channel to one thread. It takes whatever
//! has queued up, applies it as one sled batch (atomic, one tree), then
//! flushes sled; its syncer thread fdatasyncs sled's log, and only then
//! answers the changes that wait for durability and publishes the newest
//! notification the sync covered: the first-attempt walks never go past
//! it, so nothing is forwarded before it is durable. While it flushes, the
//! next group queues; while a small group syncs, the writer goes on with
//! the next (a large one it waits for, so that the next grows).
//! So one flush covers many requests, no request is answered before a flush
//! that began after its write, and sled never sees concurrent flushes
//! (which can deadlock, see CRATES.md). A group that holds only changes
//! nobody waits on (delivery outcomes) is left for the next flush, made at
//! the latest 10 ms later.
//!
//! Ids are handed out here, in commit order, so "newest durable id" is a
//! watermark: every id below it was in an earlier (flushed) group. Audit
//! record ids too, so the log's order is the order of commits.
//!
//! The writer also keeps the counts (`counts.rs`): every change stages its
//! effect, and each batch carries the count keys it touched.
//!
//! A full disk must never reach sled: after an I/O error inside a write,
//! sled 0.34's `flush` can wait forever for a buffer that will never be
//! written, and dropping a tree flushes, so a failed store can be neither
//! flushed, closed nor reopened in the process. So the writer keeps room
//! on the spool's filesystem, in two steps (statvfs before each group):
//! - below `spool.min_free` (plus what the group needs), stores and
//!   quarantines are refused (503); everything else still goes through;
//! - the lower half of `min_free` is the budget of what must be written
//!   (outcomes, replays, retention, audit records, marks): below that
//!   floor every write is refused, retention pauses, and the spool is
//!   *short of room*: its leases hand out nothing, so the forwarder makes
//!   no attempt whose outcome could not be written. Outcomes already in
//!   flight (at most one per slot) are held by the forwarder in memory and
//!   recorded once there is room, never sent again meanwhile.
//!
//! sled is log-structured (an overwrite grows the log too), so the floor
//! is what keeps it from ENOSPC: nothing the writer does goes below it.
//! The change of state is logged once, and writes resume by themselves as
//! soon as there is room (checked at every upkeep tick). If sled fails all
//! the same (something else filled the disk between two checks), the
//! store is failed in this process: every write is refused, leases stop,
//! health says it is fatal, and the relay replaces its process once there
//! is room again (`crate::reexec`); nothing acknowledged is lost, since an
//! answer waited for an fdatasync, and outcomes not yet flushed are sent
//! again (at-least-once).
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ::sled::Batch;
use tokio::sync::{mpsc, oneshot};

use super::counts::{quarantined_source, Standing, Tally};
use super::invoices::{self, InvoiceRef};
use super::mark::{Acknowledged, MarkKeeper};
use super::{decode_delivery, encode_delivery, keys, lock, storage, Shared, Store};
use crate::delivery::{Delivery, State};
use crate::spool::record::{stamp_id, NotificationMeta, Record};
use crate::spool::{
    ApiSubscription, AuditId, Maintained, NotificationId, Purged, Routes, SpoolError, Stored,
};

/// Most changes applied in one batch and covered by one flush.
const MAX_GROUP: usize = 512;
/// A group of at most this many changes is handed to the syncer and the
/// writer goes on to apply and flush the next (then waits for the first's
/// sync before handing that one over): at a light load the next
/// notification need not wait for this one's fdatasync (end-to-end p99 at
/// 1,000/s 2.6 → 1.85 ms). The writer waits for a larger group's sync:
/// under load the next group grows meanwhile, and fewer, larger groups
/// cost less than many small ones (each sled flush wakes its whole I/O
/// pool).
const SYNCED_BEHIND_MAX: usize = 4;
/// Changes waiting for the writer before senders have to wait too.
const QUEUE: usize = 4096;
/// A group nobody waits on for durability (delivery outcomes) is not
/// flushed on its own: the next flush covers it, at the latest after this
/// long or this many such changes. A flush per outcome group kept the
/// writer busy, so a notification arriving behind one waited for two
/// flushes; a crash in the window re-sends those deliveries (at-least-once,
/// same `webhook-id`), it loses no notification.
const OUTCOMES_FLUSHED_WITHIN: Duration = Duration::from_millis(10);
const OUTCOMES_FLUSHED_AFTER: u64 = 1024;
/// Entries one retention slice may examine: small, so a slice between two
/// groups keeps ingest latency flat.
const RETENTION_SLICE: usize = 256;
/// A finished retention walk over old notifications starts again after a
/// quarter of the retention, within these bounds: soon enough that the
/// spool levels off, seldom enough that what must stay (dead, waiting) is
/// not read over and over.
const RETENTION_CYCLE_MIN_MS: i64 = 100;
const RETENTION_CYCLE_MAX_MS: i64 = 60_000;
/// Bytes a group is expected to take on disk per byte of record (sled
/// writes about twice what it is given), plus a constant.
const SPACE_PER_BYTE: u64 = 2;
const SPACE_PER_GROUP: u64 = 64 << 10;
/// What a change other than a store takes, besides its own value: keys,
/// index entries, the counts it moves.
const SPACE_PER_CHANGE: u64 = 512;

/// What one write did.
pub(super) enum Applied {
    Stored(Stored),
    Quarantined(NotificationId),
    Replayed(bool),
    Recorded,
    Reassigned(u64),
    Audited(AuditId),
    /// Deliveries a backfill added.
    Added(u64),
    Purged(Purged),
    /// One slice of a "retry now".
    RetriedNow(super::retry_now::RetriedSlice),
}

pub(super) type Reply = oneshot::Sender<Result<Applied, SpoolError>>;

/// One change, encoded and ready to apply.
pub(super) enum Change {
    /// A notification and its dedup entries, unless the dedup key is
    /// already there and fresh. Its deliveries need no entry of their own.
    Store {
        record: Vec<u8>,
        dedup_key: Vec<u8>,
        received_ms: i64,
        /// For the per-source counts.
        source: String,
        subscriptions: Vec<String>,
        /// A quarantined body this notification is made from: it leaves
        /// the quarantine in the same batch (a duplicate too).
        released: Option<NotificationId>,
        /// The invoice it is about, for the invoice index (`invoices.rs`).
        invoice: Option<InvoiceRef>,
    },
    Quarantine {
        record: Vec<u8>,
        received_ms: i64,
        /// For the per-source counts.
        source: String,
    },
    /// A leased delivery's new state: its record, its retry entry moved,
    /// and (for a first attempt) the subscription's cursor.
    Complete {
        id: NotificationId,
        subscription: String,
        value: Vec<u8>,
        old_retry: Option<Vec<u8>>,
        new_retry: Option<Vec<u8>>,
        cursor: Option<u128>,
        /// Where the delivery stood when leased, and stands now (counts).
        was: Standing,
        now: Standing,
    },
    Replay {
        id: NotificationId,
        subscription: String,
        now_ms: i64,
    },
    /// Every waiting delivery of an orphan subscription, purged and given
    /// to `to` (or only purged).
    Orphans {
        from: String,
        to: Option<String>,
        now_ms: i64,
    },
    /// A reloaded config's subscriptions: a new one starts its walk after
    /// the newest id handed out so far (it gets what is stored from now on).
    Routes { routes: Routes },
    /// A quarantined body an admin gave up.
    Discard { id: NotificationId },
    /// An admin holds (or releases) a subscription's deliveries.
    Pause { subscription: String, paused: bool },
    /// An API-created subscription kept (`Some`, encoded) or removed
    /// (with its pause mark), with the audit record of that change (encoded,
    /// made at `audited_ms`) in the same batch: a crash keeps both or neither.
    Subscription {
        name: String,
        kept: Option<(Vec<u8>, Box<ApiSubscription>)>,
        audit: Vec<u8>,
        audited_ms: i64,
    },
    /// New deliveries to `subscription`, due at `now_ms`, of these
    /// notifications (skipped where it has one already).
    Backfill {
        subscription: String,
        ids: Vec<NotificationId>,
        now_ms: i64,
    },
    /// An audit entry (encoded), made at `at_ms`.
    Audit { entry: Vec<u8>, at_ms: i64 },
    /// One slice of an admin's bulk purge (see `purge.rs`).
    Purge {
        targets: Vec<(NotificationId, String)>,
        now_ms: i64,
    },
    /// One slice of an admin's "retry now" (see `retry_now.rs`).
    RetryNow {
        subscription: String,
        now_ms: i64,
        after: Option<Vec<u8>>,
    },
    /// The stuck check's marks changed (see `invoices.rs`).
    Stuck(crate::spool::StuckChanges),
}

pub(super) enum Op {
    Write {
        change: Change,
        /// Answer only once flushed; else as soon as applied (the change
        /// still rides on this group's flush).
        durable: bool,
        reply: Reply,
    },
    /// A slice of upkeep: retention, recovery, the acknowledged mark.
    Maintain {
        now_ms: i64,
        reply: oneshot::Sender<Result<Maintained, SpoolError>>,
    },
    /// Answered once the writes queued before it are done: the writer is
    /// alive and not wedged (for the service watchdog).
    Probe { alive: oneshot::Sender<()> },
    /// Finish what is queued, flush, and stop.
    Close {
        done: oneshot::Sender<Result<(), SpoolError>>,
    },
}

struct Write {
    change: Change,
    durable: bool,
    reply: Reply,
}

/// A group sled has flushed, waiting for the fdatasync that makes it
/// survive a power cut before it is answered and published.
struct Flushed {
    replies: Vec<(Reply, Result<Applied, SpoolError>)>,
    newest: Option<NotificationId>,
    woken: HashSet<String>,
    changes: u64,
    /// Told (or dropped) once the group is answered.
    synced: std::sync::mpsc::SyncSender<()>,
}

/// The fdatasync after sled's flush, on a thread of its own: while it
/// syncs one group the writer applies and flushes the next, and one
/// fdatasync covers every group flushed before it began. A group is
/// answered, and its notifications leased, only after an fdatasync that
/// began after its sled flush returned.
struct Syncer {
    tx: std::sync::mpsc::Sender<Flushed>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    fn start(shared: Arc<Shared>) -> std::io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::channel::<Flushed>();
        let thread = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || {
                // Sticky: after a failed fdatasync Linux may report the
                // next one clean although the failed pages are lost.
                let mut failed: Option<SpoolError> = None;
                while let Ok(first) = rx.recv() {
                    let groups: Vec<Flushed> =
                        std::iter::once(first).chain(rx.try_iter()).collect();
                    let synced = match &failed {
                        Some(err) => Err(err.clone()),
                        None => shared.store().and_then(|store| sync_log(&store)),
                    };
                    if let (Err(err), None) = (&synced, &failed) {
                        // Before any answer: a client retrying at once
                        // must find the store failed.
                        *lock(&shared.sync_failed) = Some(err.clone());
                        failed = Some(err.clone());
                    }
                    for group in groups {
                        publish(&shared, group, &synced);
                    }
                }
            })?;
        Ok(Syncer { tx, thread })
    }
}

/// Answers a flushed group and publishes what it made durable, or answers
/// it with the error that kept it from being durable.
fn publish(shared: &Shared, group: Flushed, synced: &Result<(), SpoolError>) {
    if let Err(err) = synced {
        return answer_all(group.replies.into_iter().map(|(reply, _)| reply), err);
    }
    shared
        .flushed_changes
        .fetch_add(group.changes, Ordering::Relaxed);
    if let Some(newest) = group.newest {
        let mut durable = lock(&shared.durable);
        *durable = (*durable).max(Some(newest));
        drop(durable);
        shared.wake(group.woken.iter().map(String::as_str));
    }
    for (reply, result) in group.replies {
        let _ = reply.send(result);
    }
    let _ = group.synced.try_send(());
}

/// What the writer starts from, as opening found it.
pub(super) struct Start {
    pub acknowledged: Acknowledged,
    pub last_id: Option<NotificationId>,
    pub last_audit: Option<AuditId>,
    /// The counts, as published in `Shared::counts` too.
    pub counts: crate::spool::Counts,
    /// Why the store was not opened, if it was not (see
    /// `SledSpool::unopened`): every write is refused with it.
    pub unopened: Option<String>,
}

pub(super) fn start(shared: Arc<Shared>, from: Start) -> std::io::Result<mpsc::Sender<Op>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let mark = MarkKeeper::start(from.acknowledged, &shared.config.path);
    let syncer = Syncer::start(shared.clone())?;
    let mut writer = Writer {
        shared,
        mark,
        short: from.unopened.is_some(),
        blocked: from.unopened.map(|reason| Blocked::Failed { reason }),
        retention: Retention::default(),
        now_ms: 0,
        last_id: from.last_id,
        last_audit: from.last_audit,
        tally: Tally::new(from.counts),
        unflushed: None,
        syncer: Some(syncer),
        pending_sync: None,
    };
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || {
            let closed = writer.run(rx);
            // Let go of the database before saying so: whoever closed the
            // spool may reopen it at once, and sled's lock goes with the
            // last handle.
            let result = writer.shut_down();
            drop(writer);
            if let Some(done) = closed {
                let _ = done.send(result);
            }
        })?;
    Ok(tx)
}

/// Why the store cannot take new notifications now.
enum Blocked {
    /// Less than `min_free` on the filesystem: stores wait for room.
    Full { since_ms: i64 },
    /// sled failed a write: nothing more can be written in this process.
    Failed { reason: String },
}

#[derive(Default)]
struct Retention {
    /// The walk over old notifications resumes at this id.
    notifications_from: u128,
    /// It starts a new cycle at this time (Unix ms).
    next_cycle_ms: i64,
    /// The last slice stopped with work left: run another soon.
    behind: bool,
}

struct Writer {
    shared: Arc<Shared>,
    mark: MarkKeeper,
    blocked: Option<Blocked>,
    /// Below the floor of `min_free` (or failed): no write is taken and
    /// nothing is leased (published in `Shared::short_of_room`).
    short: bool,
    retention: Retention,
    /// The time of the latest maintenance tick: the writer reads no clock
    /// of its own (its thread is outside the async runtime, whose clock
    /// tests pause).
    now_ms: i64,
    /// The newest id handed out (or found in the store at open).
    last_id: Option<NotificationId>,
    /// The newest audit record id, likewise.
    last_audit: Option<AuditId>,
    tally: Tally,
    /// Applied changes no flush has covered yet: since when, how many.
    unflushed: Option<(std::time::Instant, u64)>,
    /// `None` once stopped (at shut-down).
    syncer: Option<Syncer>,
    /// Answered once the group handed to the syncer last is.
    pending_sync: Option<std::sync::mpsc::Receiver<()>>,
}

impl Writer {
    /// Serves until closed; returns the closer's channel, if any.
    fn run(
        &mut self,
        mut rx: mpsc::Receiver<Op>,
    ) -> Option<oneshot::Sender<Result<(), SpoolError>>> {
        // Only a timer for the wait on the channel: the writer's thread
        // stays outside the relay's runtime (and its paused test clocks).
        let timer = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(timer) => timer,
            Err(err) => {
                self.enter_failure(&SpoolError::Storage(crate::spool::cause(err)));
                return None;
            }
        };
        while let Some(first) = self.next_op(&mut rx, &timer) {
            let mut group: Vec<Write> = Vec::new();
            let mut probes = Vec::new();
            let mut maintains = Vec::new();
            let mut closing = None;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Op::Write {
                        change,
                        durable,
                        reply,
                    } => group.push(Write {
                        change,
                        durable,
                        reply,
                    }),
                    Op::Probe { alive } => probes.push(alive),
                    Op::Maintain { now_ms, reply } => {
                        // The latest tick, not the highest: a clock stepped
                        // back must not leave retention running ahead.
                        self.now_ms = now_ms;
                        maintains.push(reply);
                    }
                    Op::Close { done } => {
                        closing = Some(done);
                        break;
                    }
                }
                if group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit(group);
            }
            for reply in maintains {
                let _ = reply.send(self.maintain());
            }
            if self.retention.behind && !self.is_failed() && !self.short && rx.is_empty() {
                let _ = self.retention_slice();
            }
            if !probes.is_empty() {
                // Alive means syncing too.
                self.await_sync();
            }
            for alive in probes {
                let _ = alive.send(());
            }
            if let Some(done) = closing {
                rx.close();
                // Whatever raced in before the close still gets an answer.
                let late: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
                    .filter_map(|op| match op {
                        Op::Write {
                            change,
                            durable,
                            reply,
                        } => Some(Write {
                            change,
                            durable,
                            reply,
                        }),
                        Op::Probe { .. } | Op::Maintain { .. } | Op::Close { .. } => None,
                    })
                    .collect();
                if !late.is_empty() {
                    self.commit(late);
                }
                return Some(done);
            }
        }
        None
    }

    /// The next change; while applied changes wait for a flush, the flush
    /// is made when none comes within [`OUTCOMES_FLUSHED_WITHIN`].
    fn next_op(
        &mut self,
        rx: &mut mpsc::Receiver<Op>,
        timer: &tokio::runtime::Runtime,
    ) -> Option<Op> {
        loop {
            let Some((since, _)) = self.unflushed else {
                return rx.blocking_recv();
            };
            let deadline = tokio::time::Instant::from_std(since + OUTCOMES_FLUSHED_WITHIN);
            // The timer is made inside the runtime it belongs to.
            match timer.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                Ok(op) => return op,
                Err(_elapsed) => self.flush_unflushed(),
            }
        }
    }

    /// Flushes what earlier groups left unflushed.
    fn flush_unflushed(&mut self) {
        let Some((_, changes)) = self.unflushed else {
            return;
        };
        if self.is_failed() {
            // A failed sled can hang in its flush (see above): what it did
            // not make durable is sent again after the restart.
            self.unflushed = None;
            return;
        }
        let result = self
            .shared
            .store()
            .and_then(|store| flush(&self.shared, &store));
        match result {
            Ok(()) => {
                self.unflushed = None;
                self.shared
                    .flushed_changes
                    .fetch_add(changes, Ordering::Relaxed);
            }
            Err(err) => {
                self.unflushed = None;
                self.enter_failure(&err);
            }
        }
    }

    /// The last flush and the acknowledged mark; then the store is let go.
    fn shut_down(&mut self) -> Result<(), SpoolError> {
        self.stop_syncer();
        self.take_sync_failure();
        if self.shared.store.load().is_none() {
            // Never opened (no room at the start): nothing to flush.
            return Ok(());
        }
        if let Some(Blocked::Failed { reason }) = &self.blocked {
            // A failed sled hangs in its flush, and dropping it flushes:
            // leave it to the end of the process. Every acknowledged
            // notification was synced before its answer; outcomes since
            // the last flush are made again (at-least-once).
            tracing::warn!(error = %reason, "the spool's store failed earlier: outcomes not yet flushed are not recorded; those deliveries will be made again");
            std::mem::forget(self.shared.store.swap(None));
            return Ok(());
        }
        let result = self.shared.store().and_then(|store| {
            flush(&self.shared, &store)?;
            if let Some(durable) = *lock(&self.shared.durable) {
                self.mark.note(durable);
            }
            self.mark.finish();
            Ok(())
        });
        match self.shared.store.swap(None) {
            Some(store) if result.is_ok() => {
                // Let sled go, then note how its files look: if nothing
                // touches them, the next start need not check them all.
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while Arc::strong_count(&store) > 1 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if Arc::strong_count(&store) == 1 {
                    drop(store);
                    super::open::mark_clean_stop(&self.shared.config.path);
                }
            }
            other => std::mem::forget(other),
        }
        result
    }

    /// A failed fdatasync fails the store, as one in the writer would.
    fn take_sync_failure(&mut self) {
        let failed = lock(&self.shared.sync_failed).take();
        if let Some(err) = failed {
            self.enter_failure(&err);
        }
    }

    /// Waits until the group handed to the syncer last is answered (a
    /// dropped sender says so too: the syncer is gone).
    fn await_sync(&mut self) {
        if let Some(answered) = self.pending_sync.take() {
            let _ = answered.recv();
        }
    }

    /// Waits until every group handed to the syncer is answered.
    fn stop_syncer(&mut self) {
        if let Some(Syncer { tx, thread }) = self.syncer.take() {
            drop(tx);
            let _ = thread.join();
        }
        self.pending_sync = None;
    }

    fn is_failed(&self) -> bool {
        matches!(self.blocked, Some(Blocked::Failed { .. }))
    }

    fn commit(&mut self, group: Vec<Write>) {
        self.take_sync_failure();
        let store = match (&self.blocked, self.shared.store()) {
            (Some(Blocked::Failed { reason }), _) => {
                let reason = reason.clone();
                return self.refuse(group, &reason);
            }
            (_, Ok(store)) => store,
            (_, Err(err)) => return self.refuse(group, &err.to_string()),
        };
        let group = self.guard_space(group);
        if group.is_empty() {
            return;
        }
        let (changes, waiting): (Vec<Change>, Vec<(bool, Reply)>) = group
            .into_iter()
            .map(|w| (w.change, (w.durable, w.reply)))
            .unzip();
        let applied = match self.apply(&store, changes) {
            Ok(applied) => applied,
            Err(err) => {
                // Only sled failing is the store failing; anything else
                // (a record that cannot be encoded) is this group's error.
                if matches!(err, SpoolError::Storage(_) | SpoolError::Flush { .. }) {
                    self.enter_failure(&err);
                }
                return answer_all(waiting.into_iter().map(|(_, reply)| reply), &err);
            }
        };
        let group_size = waiting.len() as u64;
        let mut durable_replies = Vec::new();
        for ((durable, reply), result) in waiting.into_iter().zip(applied.results) {
            if durable {
                durable_replies.push((reply, result));
            } else {
                let _ = reply.send(result);
            }
        }
        let (unflushed_since, unflushed) = self.unflushed.unwrap_or((std::time::Instant::now(), 0));
        if durable_replies.is_empty()
            && applied.newest.is_none()
            && unflushed + group_size < OUTCOMES_FLUSHED_AFTER
            && unflushed_since.elapsed() < OUTCOMES_FLUSHED_WITHIN
        {
            self.unflushed = Some((unflushed_since, unflushed + group_size));
            return;
        }
        self.unflushed = None;
        if let Err(err) = flush_sled(&self.shared, &store) {
            self.enter_failure(&err);
            return answer_all(durable_replies.into_iter().map(|(reply, _)| reply), &err);
        }
        // At most one group waits at the syncer: a hung fdatasync stalls
        // the writer (and so fails the watchdog's probe), and the queue
        // stays bounded.
        self.await_sync();
        let (synced, answered) = std::sync::mpsc::sync_channel(1);
        let flushed = Flushed {
            replies: durable_replies,
            newest: applied.newest,
            woken: applied.woken,
            changes: unflushed + group_size,
            synced,
        };
        match (&self.syncer, &store.log) {
            (Some(syncer), Some(_)) => match syncer.tx.send(flushed) {
                Ok(()) => {
                    self.pending_sync = Some(answered);
                    if group_size as usize > SYNCED_BEHIND_MAX {
                        self.await_sync();
                    }
                }
                Err(std::sync::mpsc::SendError(flushed)) => {
                    publish(&self.shared, flushed, &sync_log(&store));
                }
            },
            _ => publish(&self.shared, flushed, &Ok(())),
        }
    }

    /// Refuses the stores and quarantines of a group that would eat into
    /// `min_free`, and every write of a group that would go below its
    /// floor; returns what may still be written.
    fn guard_space(&mut self, group: Vec<Write>) -> Vec<Write> {
        let (stored, other) = group
            .iter()
            .fold((0, 0), |(stored, other), w| match &w.change {
                Change::Store { record, .. } | Change::Quarantine { record, .. } => {
                    (stored + record.len() as u64, other)
                }
                Change::Complete { value, .. } => {
                    (stored, other + value.len() as u64 + SPACE_PER_CHANGE)
                }
                Change::Audit { entry, .. } => {
                    (stored, other + entry.len() as u64 + SPACE_PER_CHANGE)
                }
                Change::Replay { .. }
                | Change::Orphans { .. }
                | Change::Routes { .. }
                | Change::Discard { .. }
                | Change::Pause { .. }
                | Change::Subscription { .. }
                | Change::Backfill { .. }
                | Change::Purge { .. }
                | Change::RetryNow { .. }
                | Change::Stuck(_) => (stored, other + SPACE_PER_CHANGE),
            });
        let mut group = group;
        if stored > 0 {
            let needed = (stored + other) * SPACE_PER_BYTE + SPACE_PER_GROUP;
            match self.check_space(self.min_free(), needed) {
                Ok(()) => {
                    self.leave_full();
                    return group;
                }
                Err(reason) => {
                    self.enter_full(reason.clone());
                    let (refused, kept): (Vec<Write>, Vec<Write>) =
                        group.into_iter().partition(|w| {
                            matches!(w.change, Change::Store { .. } | Change::Quarantine { .. })
                        });
                    self.refuse(refused, &reason);
                    group = kept;
                }
            }
        }
        if group.is_empty() {
            return group;
        }
        match self.check_space(self.floor(), other * SPACE_PER_BYTE + SPACE_PER_GROUP) {
            Ok(()) => group,
            Err(reason) => {
                self.enter_short(&reason);
                self.refuse(group, &reason);
                Vec::new()
            }
        }
    }

    fn min_free(&self) -> u64 {
        self.shared.config.min_free.0
    }

    /// Below this, nothing at all is written: the lower half of `min_free`
    /// is the budget of outcomes and upkeep.
    fn floor(&self) -> u64 {
        self.min_free() / 2
    }

    /// Whether `needed` bytes can be written and `keep` still be left free
    /// (`min_free` 0: no guard at all).
    fn check_space(&self, keep: u64, needed: u64) -> Result<(), String> {
        let min_free = self.min_free();
        if min_free == 0 {
            return Ok(());
        }
        let free = match rustix::fs::statvfs(&self.shared.config.path) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            // Cannot tell: let sled try.
            Err(_) => return Ok(()),
        };
        if free >= keep.saturating_add(needed) {
            Ok(())
        } else {
            Err(format!(
                "disk full: {free} bytes free on the spool's filesystem, {min_free} kept free (spool.min_free)"
            ))
        }
    }

    /// Below the floor: nothing more is written or leased until there is room.
    fn enter_short(&mut self, reason: &str) {
        if self.short {
            return;
        }
        tracing::error!(error = %reason, "spool short of room: holding outcomes and upkeep, leasing nothing, until there is room");
        self.enter_full(reason.to_owned());
        self.set_short(true);
    }

    fn set_short(&mut self, short: bool) {
        self.short = short;
        self.shared.short_of_room.send_replace(short);
    }

    fn enter_full(&mut self, reason: String) {
        if self.blocked.is_some() {
            return;
        }
        tracing::error!(error = %reason, "spool cannot take notifications; answering 503 until there is room");
        let now = self.now_ms;
        {
            let mut health = lock(&self.shared.health);
            health.writable = false;
            health.condition = Some(reason.clone());
            health.since_ms = Some(now);
        }
        self.blocked = Some(Blocked::Full { since_ms: now });
    }

    fn leave_full(&mut self) {
        let Some(Blocked::Full { since_ms, .. }) = self.blocked else {
            return;
        };
        self.blocked = None;
        let refused = {
            let mut health = lock(&self.shared.health);
            health.writable = true;
            health.condition = None;
            health.since_ms = None;
            health.refused_writes
        };
        tracing::info!(
            after_s = (self.now_ms - since_ms).max(0) / 1000,
            refused_writes_so_far = refused,
            "spool writable again"
        );
    }

    fn refuse(&mut self, group: Vec<Write>, reason: &str) {
        lock(&self.shared.health).refused_writes += group.len() as u64;
        let err = SpoolError::Unavailable(reason.to_owned());
        for write in group {
            let _ = write.reply.send(Err(err.clone()));
        }
    }

    /// Applies a group as one batch (or more, where a replay must read what
    /// came before it), each with the counts it changed. Counts staged for
    /// a batch that is not applied are taken back.
    fn apply(&mut self, store: &Store, changes: Vec<Change>) -> Result<GroupApplied, SpoolError> {
        let applied = self.apply_changes(store, changes);
        if applied.is_err() {
            self.tally.discard(&self.shared.counts);
        }
        applied
    }

    fn apply_changes(
        &mut self,
        store: &Store,
        changes: Vec<Change>,
    ) -> Result<GroupApplied, SpoolError> {
        let window =
            i64::try_from(self.shared.config.dedup_window.0.as_millis()).unwrap_or(i64::MAX);
        let mut batch = Batch::default();
        let mut fresh_in_group: HashMap<Vec<u8>, NotificationId> = HashMap::new();
        let mut invoices_in_group = invoices::Pending::default();
        let mut out = GroupApplied::default();
        for change in changes {
            let result = match change {
                Change::Store {
                    record,
                    dedup_key,
                    received_ms,
                    source,
                    subscriptions,
                    released,
                    invoice,
                } => {
                    if let Some(quarantined) = released {
                        let key = keys::quarantine(quarantined);
                        let Some(body) = store.get(&key)? else {
                            out.results.push(Err(SpoolError::NotFound(format!(
                                "quarantined body {quarantined} (released or discarded meanwhile)"
                            ))));
                            continue;
                        };
                        batch.remove(&key);
                        self.tally
                            .removed_quarantined(quarantined_source(&body).as_deref());
                    }
                    let earlier = match fresh_in_group.get(&dedup_key) {
                        Some(first) => Some(*first),
                        None => store
                            .get(&dedup_key)?
                            .and_then(|v| keys::split_dedup_value(&v))
                            .filter(|(_, at)| received_ms.saturating_sub(*at) < window)
                            .map(|(first, _)| first),
                    };
                    if let Some(first) = earlier {
                        if let Some(invoice) = &invoice {
                            invoices_in_group.resent(store, &mut batch, invoice, first)?;
                        }
                        Ok(Applied::Stored(Stored::Duplicate(first)))
                    } else {
                        let id = self.next_id(received_ms);
                        let superseded = match &invoice {
                            Some(invoice) => {
                                invoices_in_group.stored(store, &mut batch, invoice, id)?
                            }
                            None => false,
                        };
                        // Rare (a late resend after a final status): the
                        // record is re-encoded only then.
                        let (mut record, subscriptions) = if superseded {
                            self.superseded(&mut batch, &record, subscriptions, id, received_ms)?
                        } else {
                            (record, subscriptions)
                        };
                        stamp_id(&mut record, id);
                        batch.insert(&keys::notification(id), record);
                        // No expiry entry: the entry goes with its
                        // notification (retention), and past the window a
                        // store finds it stale and takes the key over.
                        batch.insert(dedup_key.as_slice(), &keys::dedup_value(id, received_ms));
                        fresh_in_group.insert(dedup_key, id);
                        self.tally.stored(&source, &subscriptions);
                        out.newest = Some(id);
                        out.woken.extend(subscriptions);
                        Ok(Applied::Stored(Stored::New(id)))
                    }
                }
                Change::Quarantine {
                    mut record,
                    received_ms,
                    source,
                } => {
                    let id = self.next_id(received_ms);
                    stamp_id(&mut record, id);
                    batch.insert(&keys::quarantine(id), record);
                    self.tally.quarantined(&source);
                    Ok(Applied::Quarantined(id))
                }
                Change::Complete {
                    id,
                    subscription,
                    value,
                    old_retry,
                    new_retry,
                    cursor,
                    was,
                    now,
                } => {
                    let was = if self.lease_may_be_stale(&subscription, was) {
                        // What the record holds now, this group's writes included.
                        self.tally
                            .apply(store, std::mem::take(&mut batch), &self.shared.counts)?;
                        stored_standing(store, id, &subscription)?
                    } else {
                        Some(was)
                    };
                    if let Some(old) = old_retry {
                        batch.remove(old);
                    }
                    if let Some(new) = new_retry {
                        batch.insert(new, &[]);
                    }
                    batch.insert(keys::delivery(id, &subscription), value);
                    if let Some(cursor) = cursor {
                        batch.insert(keys::cursor(&subscription), &cursor.to_be_bytes());
                    }
                    match was {
                        Some(was) => self.tally.moved(&subscription, was, now),
                        // An unreadable record was not counted; its new one is.
                        None => self.tally.added(&subscription, now),
                    }
                    Ok(Applied::Recorded)
                }
                Change::Replay {
                    id,
                    subscription,
                    now_ms,
                } => {
                    // It reads what this group wrote before it.
                    self.tally
                        .apply(store, std::mem::take(&mut batch), &self.shared.counts)?;
                    // A delivery that cannot be replayed is that change's
                    // answer, not a failure of the group.
                    replay(store, &mut batch, id, &subscription, now_ms)?.map(|replayed| {
                        if let Some(was) = replayed {
                            self.tally.moved(&subscription, was, Standing::Waiting);
                        }
                        Applied::Replayed(replayed.is_some())
                    })
                }
                Change::Pause {
                    subscription,
                    paused,
                } => {
                    let key = keys::paused(&subscription);
                    if paused {
                        batch.insert(key, &[]);
                        lock(&self.shared.paused).insert(subscription);
                    } else {
                        batch.remove(key);
                        lock(&self.shared.paused).remove(&subscription);
                    }
                    Ok(Applied::Recorded)
                }
                Change::Subscription {
                    name,
                    kept,
                    audit,
                    audited_ms,
                } => {
                    let key = keys::api_subscription(&name);
                    match kept {
                        Some((bytes, subscription)) => {
                            batch.insert(key, bytes);
                            lock(&self.shared.api_subscriptions).insert(name, *subscription);
                        }
                        None => {
                            batch.remove(key);
                            lock(&self.shared.api_subscriptions).remove(&name);
                            // A later subscription of that name starts unpaused.
                            batch.remove(keys::paused(&name));
                            lock(&self.shared.paused).remove(&name);
                        }
                    }
                    let id = AuditId::next_after(self.last_audit, audited_ms);
                    self.last_audit = Some(id);
                    batch.insert(&keys::audit(id), audit);
                    Ok(Applied::Audited(id))
                }
                Change::Backfill {
                    subscription,
                    ids,
                    now_ms,
                } => {
                    // It reads what this group wrote before it.
                    self.tally
                        .apply(store, std::mem::take(&mut batch), &self.shared.counts)?;
                    let added = super::backfill::give(
                        store,
                        &mut batch,
                        &mut self.tally,
                        &subscription,
                        &ids,
                        now_ms,
                    )?;
                    Ok(Applied::Added(added))
                }
                Change::Discard { id } => {
                    let key = keys::quarantine(id);
                    if let Some(body) = store.get(&key)? {
                        batch.remove(&key);
                        self.tally
                            .removed_quarantined(quarantined_source(&body).as_deref());
                        Ok(Applied::Recorded)
                    } else {
                        Err(SpoolError::NotFound(format!("no quarantined body {id}")))
                    }
                }
                Change::Routes { routes } => {
                    let first_new = self.last_id.map_or(0, |id| id.0 .0.saturating_add(1));
                    for name in routes.names() {
                        let key = keys::cursor(name);
                        if store.get(&key)?.is_none() {
                            batch.insert(key, &first_new.to_be_bytes());
                        }
                    }
                    // Stores stamped after this one fan out to the new set.
                    self.shared.routes.store(Arc::new(routes));
                    Ok(Applied::Recorded)
                }
                Change::Orphans { from, to, now_ms } => {
                    self.tally
                        .apply(store, std::mem::take(&mut batch), &self.shared.counts)?;
                    let moved = super::orphans::reassign(
                        store,
                        &mut self.tally,
                        &self.shared.counts,
                        &from,
                        to.as_deref(),
                        now_ms,
                    )?;
                    lock(&self.shared.health).orphans.remove(&from);
                    Ok(Applied::Reassigned(moved))
                }
                Change::Purge { targets, now_ms } => {
                    // It reads what this group wrote before it.
                    self.tally
                        .apply(store, std::mem::take(&mut batch), &self.shared.counts)?;
                    super::purge::slice(&self.shared, store, &mut self.tally, &targets, now_ms)
                        .map(Applied::Purged)
                }
                Change::RetryNow {
                    subscription,
                    now_ms,
                    after,
                } => {
                    // It reads what this group wrote before it.
                    self.tally
                        .apply(store, std::mem::take(&mut batch), &self.shared.counts)?;
                    super::retry_now::slice(
                        &self.shared,
                        store,
                        &mut self.tally,
                        &subscription,
                        now_ms,
                        after,
                    )
                    .map(Applied::RetriedNow)
                }
                Change::Stuck(changes) => {
                    invoices::save_stuck(&mut batch, &changes);
                    Ok(Applied::Recorded)
                }
                Change::Audit { entry, at_ms } => {
                    let id = AuditId::next_after(self.last_audit, at_ms);
                    self.last_audit = Some(id);
                    batch.insert(&keys::audit(id), entry);
                    Ok(Applied::Audited(id))
                }
            };
            out.results.push(result);
        }
        #[cfg(test)]
        if self
            .shared
            .fail_next_batch
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            // As if the batch could not be written: none of it is.
            return Err(SpoolError::Encode(crate::spool::cause(
                "a batch failed on purpose (test)",
            )));
        }
        self.tally.apply(store, batch, &self.shared.counts)?;
        Ok(out)
    }

    /// Whether the record a lease was made from may have changed since:
    /// a final one (leased through a stale retry entry) may have been
    /// replayed, and one of a subscription no longer configured may have
    /// been purged as an orphan. Then the writer reads what it replaces;
    /// otherwise nothing else writes a leased delivery, and the lease's
    /// word spares a read per outcome.
    /// A superseded notification: its record marked, and for each
    /// subscription that skips such notifications a delivery recorded as
    /// purged at once (never sent, counted as purged). Answers the record
    /// and the subscriptions that still take it.
    fn superseded(
        &mut self,
        batch: &mut Batch,
        record: &[u8],
        subscriptions: Vec<String>,
        id: NotificationId,
        received_ms: i64,
    ) -> Result<(Vec<u8>, Vec<String>), SpoolError> {
        let routes = self.shared.routes.load();
        let superseded =
            invoices::supersede(record, subscriptions, |name| routes.skips_superseded(name))?;
        for name in &superseded.skipped {
            let mut delivery = Delivery::new(name.as_str(), received_ms);
            delivery.state = State::Purged { at_ms: received_ms };
            batch.insert(keys::delivery(id, name), encode_delivery(&delivery)?);
            self.tally.added(name, Standing::Purged);
        }
        Ok((superseded.record, superseded.kept))
    }

    fn lease_may_be_stale(&self, subscription: &str, was: Standing) -> bool {
        was.is_final() || !self.shared.routes.load().contains(subscription)
    }

    fn next_id(&mut self, received_ms: i64) -> NotificationId {
        let id = NotificationId::next_after(self.last_id, received_ms);
        self.last_id = Some(id);
        id
    }

    /// sled failed a write: the store is done for in this process.
    fn enter_failure(&mut self, err: &SpoolError) {
        if self.is_failed() {
            return;
        }
        let reason = err.to_string();
        tracing::error!(error = %reason, "the spool's store failed; answering 503 and leasing nothing; the relay replaces its process once there is room");
        {
            let mut health = lock(&self.shared.health);
            health.writable = false;
            health.fatal = true;
            health.condition = Some(reason.clone());
            health.since_ms = Some(self.now_ms);
        }
        self.blocked = Some(Blocked::Failed { reason });
        self.set_short(true);
    }

    fn maintain(&mut self) -> Result<Maintained, SpoolError> {
        self.take_sync_failure();
        match &self.blocked {
            Some(Blocked::Failed { reason }) => {
                return Err(SpoolError::Unavailable(reason.clone()));
            }
            // Back once a typical group fits again.
            Some(Blocked::Full { .. }) | None => {
                if self.short && self.check_space(self.floor(), SPACE_PER_GROUP * 4).is_ok() {
                    self.set_short(false);
                    tracing::info!("spool has room for outcomes again: leasing again");
                }
                if matches!(self.blocked, Some(Blocked::Full { .. }))
                    && self
                        .check_space(self.min_free(), SPACE_PER_GROUP * 4)
                        .is_ok()
                {
                    self.leave_full();
                }
            }
        }
        if self.short {
            // Retention writes too (a removal grows sled's log).
            return Ok(Maintained::default());
        }
        if let Some(durable) = *lock(&self.shared.durable) {
            self.mark.note(durable);
        }
        self.mark.maintain();
        self.retention_slice()
    }

    /// One bounded slice of retention: delivered notifications with their
    /// dedup entries, quarantined bodies and audit records older than
    /// `retention` (and the dedup entries of an older spool's time index). Not flushed on its own: it rides on the next group
    /// flush, and a removal lost in a crash is simply made again (with the
    /// counts, which go in the same batch).
    fn retention_slice(&mut self) -> Result<Maintained, SpoolError> {
        let store = self.shared.store()?;
        let done = self.retention_changes(&store);
        if done.is_err() {
            self.tally.discard(&self.shared.counts);
        }
        done
    }

    fn retention_changes(&mut self, store: &Store) -> Result<Maintained, SpoolError> {
        let config = &self.shared.config;
        let now = self.now_ms;
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let dedup_cutoff = now.saturating_sub(ms(config.dedup_window.0));
        let cutoff = now.saturating_sub(ms(config.retention.0));
        let dead_cutoff = config.dead_retention.map(|d| now.saturating_sub(ms(d.0)));
        let mut batch = Batch::default();
        let mut done = Maintained::default();
        let mut behind = false;

        // Dedup entries by the time index that spools written before this
        // release still hold; new entries go with their notification.
        let start = keys::dedup_expiry(0, NotificationId(ulid::Ulid(0)));
        let end = keys::dedup_expiry(dedup_cutoff, NotificationId(ulid::Ulid(0)));
        for (seen, item) in store.tree.range(start..end).enumerate() {
            if seen == RETENTION_SLICE {
                behind = true;
                break;
            }
            let (key, dedup_key) = item.map_err(storage)?;
            batch.remove(key.clone());
            let Some((_, id)) = keys::split_dedup_expiry(&key) else {
                continue;
            };
            if dedup_points_to(store, &dedup_key, id)? {
                batch.remove(dedup_key);
            }
            done.dedup_entries += 1;
        }

        // Notifications whose every delivery is over.
        if now >= self.retention.next_cycle_ms {
            let from = keys::notification(NotificationId(ulid::Ulid(
                self.retention.notifications_from,
            )));
            let until = keys::notification(NotificationId(ulid::Ulid::from_parts(
                u64::try_from(cutoff.max(0)).unwrap_or(0),
                0,
            )));
            let mut finished = true;
            let mut removed_upto = None;
            for (seen, item) in store.tree.range(from..until).enumerate() {
                if seen == RETENTION_SLICE {
                    finished = false;
                    behind = true;
                    break;
                }
                let (key, value) = item.map_err(storage)?;
                let Some(id) = keys::id_of(&key) else {
                    continue;
                };
                self.retention.notifications_from = id.0 .0.saturating_add(1);
                let meta = match Record::<NotificationMeta>::decode(&value) {
                    Ok(record) => record.meta,
                    Err(err) => {
                        self.shared
                            .note_unreadable(format!("notification {id}: {err}"));
                        continue;
                    }
                };
                if let Some(records) = removable(&self.shared, store, id, &meta, dead_cutoff)? {
                    batch.remove(&key);
                    for item in store.tree.scan_prefix(keys::delivery_prefix(id)).keys() {
                        batch.remove(item.map_err(storage)?);
                    }
                    self.tally.removed_notification(
                        &meta.source,
                        records
                            .iter()
                            .map(|d| (d.subscription.as_str(), Standing::of(&d.state))),
                    );
                    let dedup_key = keys::dedup(&meta.source, &meta.dedup_key);
                    if dedup_points_to(store, &dedup_key, id)? {
                        batch.remove(dedup_key);
                        batch.remove(&keys::dedup_expiry(meta.received_ms, id));
                    }
                    invoices::removed(&mut batch, &meta, id);
                    done.notifications += 1;
                    removed_upto = Some(id);
                }
            }
            if let Some(id) = removed_upto {
                let before = store
                    .get(keys::REMOVED_UPTO)?
                    .and_then(|v| NotificationId::from_bytes(&v));
                if before.is_none_or(|before| before < id) {
                    batch.insert(keys::REMOVED_UPTO, &id.to_bytes());
                }
            }
            if finished {
                self.retention.notifications_from = 0;
                let cycle = (ms(config.retention.0) / 4)
                    .clamp(RETENTION_CYCLE_MIN_MS, RETENTION_CYCLE_MAX_MS);
                self.retention.next_cycle_ms = now + cycle;
            }
        }

        // Quarantined bodies, by age alone.
        let from = keys::quarantine(NotificationId(ulid::Ulid(0)));
        let until = keys::quarantine(NotificationId(ulid::Ulid::from_parts(
            u64::try_from(cutoff.max(0)).unwrap_or(0),
            0,
        )));
        for (seen, item) in store.tree.range(from..until).enumerate() {
            if seen == RETENTION_SLICE {
                behind = true;
                break;
            }
            let (key, body) = item.map_err(storage)?;
            batch.remove(key);
            self.tally
                .removed_quarantined(quarantined_source(&body).as_deref());
            done.quarantined += 1;
        }

        // Audit records, by age alone, like quarantined bodies.
        let from = [keys::AUDIT];
        let until = keys::audit(AuditId(ulid::Ulid::from_parts(
            u64::try_from(cutoff.max(0)).unwrap_or(0),
            0,
        )));
        for (seen, item) in store
            .tree
            .range(from.as_slice()..until.as_slice())
            .enumerate()
        {
            if seen == RETENTION_SLICE {
                behind = true;
                break;
            }
            let (key, _) = item.map_err(storage)?;
            batch.remove(key);
            done.audit_records += 1;
        }

        self.retention.behind = behind;
        self.tally.apply(store, batch, &self.shared.counts)?;
        if done != Maintained::default() {
            tracing::debug!(?done, "retention slice");
        }
        Ok(done)
    }
}

#[derive(Default)]
struct GroupApplied {
    /// Each change's answer; an `Err` here refuses that change alone.
    results: Vec<Result<Applied, SpoolError>>,
    /// The newest notification stored by the group.
    newest: Option<NotificationId>,
    /// Subscriptions with new first attempts.
    woken: HashSet<String>,
}

/// Whether a dedup entry still names `id` (a later copy past the window
/// may have taken it over; then it is that one's to expire).
fn dedup_points_to(
    store: &Store,
    dedup_key: &[u8],
    id: NotificationId,
) -> Result<bool, SpoolError> {
    Ok(store
        .get(dedup_key)?
        .and_then(|v| keys::split_dedup_value(&v))
        .is_some_and(|(first, _)| first == id))
}

/// The delivery records of a notification, if every one is over:
/// delivered, purged, or dead past `dead_cutoff` (when dead deliveries
/// expire at all). A subscription it was fanned out to with no record yet
/// was never attempted.
fn removable(
    shared: &Shared,
    store: &Store,
    id: NotificationId,
    meta: &NotificationMeta,
    dead_cutoff: Option<i64>,
) -> Result<Option<Vec<Delivery>>, SpoolError> {
    let records = match super::orphans::records_of(store, id) {
        Ok(records) => records,
        Err(SpoolError::Corrupt(err)) => {
            shared.note_unreadable(format!("a delivery of {id}: {err}"));
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let all_attempted = meta
        .subscriptions
        .iter()
        .all(|name| records.iter().any(|d| &d.subscription == name));
    let all_over = records.iter().all(|d| match d.state {
        State::Delivered { .. } | State::Purged { .. } => true,
        State::Dead { at_ms } => dead_cutoff.is_some_and(|cutoff| at_ms < cutoff),
        State::Pending | State::InFlight { .. } | State::Waiting { .. } => false,
    });
    Ok((all_attempted && all_over).then_some(records))
}

/// Puts a final delivery back in the queue, due now, and tells where it
/// stood; None if it was never attempted. The outer error is the store's;
/// the inner one the request's.
fn replay(
    store: &Store,
    batch: &mut Batch,
    id: NotificationId,
    subscription: &str,
    now_ms: i64,
) -> Result<Result<Option<Standing>, SpoolError>, SpoolError> {
    if store.get(&keys::notification(id))?.is_none() {
        return Ok(Err(SpoolError::NotFound(id.to_string())));
    }
    let key = keys::delivery(id, subscription);
    let Some(bytes) = store.get(&key)? else {
        return Ok(Ok(None));
    };
    let mut delivery = match decode_delivery(&bytes) {
        Ok(delivery) => delivery,
        Err(err) => return Ok(Err(err)),
    };
    let was = Standing::of(&delivery.state);
    if let Err(err) = delivery.replay(now_ms) {
        return Ok(Err(SpoolError::NotReplayable(err.to_string())));
    }
    if let Some(at) = delivery.due_at() {
        batch.insert(keys::retry(subscription, at, id), &[]);
    }
    batch.insert(key, encode_delivery(&delivery)?);
    Ok(Ok(Some(was)))
}

/// Where a delivery stands in the store: its record's state, waiting when
/// it has none yet; None when the record cannot be read.
fn stored_standing(
    store: &Store,
    id: NotificationId,
    subscription: &str,
) -> Result<Option<Standing>, SpoolError> {
    match store.get(&keys::delivery(id, subscription))? {
        None => Ok(Some(Standing::Waiting)),
        Some(bytes) => Ok(decode_delivery(&bytes)
            .ok()
            .map(|delivery| Standing::of(&delivery.state))),
    }
}

fn answer_all(replies: impl IntoIterator<Item = Reply>, err: &SpoolError) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

/// sled's flush writes its log with `sync_file_range` on Linux, which
/// survives a crash but not a power cut: the fdatasync after it does.
pub(super) fn flush(shared: &Shared, store: &Store) -> Result<(), SpoolError> {
    flush_sled(shared, store)?;
    sync_log(store)
}

fn flush_sled(shared: &Shared, store: &Store) -> Result<(), SpoolError> {
    shared.flush_starts.fetch_add(1, Ordering::Relaxed);
    store.db.flush().map_err(|e| SpoolError::Flush {
        step: "sled flush",
        source: crate::spool::cause(e),
    })?;
    Ok(())
}

fn sync_log(store: &Store) -> Result<(), SpoolError> {
    if let Some(log) = &store.log {
        log.sync_data().map_err(|e| SpoolError::Flush {
            step: "fdatasync",
            source: crate::spool::cause(e),
        })?;
    }
    Ok(())
}
