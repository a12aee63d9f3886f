//! The spool's single writer thread: group commit (`commit.rs`, with the
//! fdatasync on its own thread in `syncer.rs`), applying changes and
//! handing out ids (`apply.rs`), retention (`retention.rs`), and the
//! free-space guard (`space.rs`).
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
//! - below `spool.sled.min_free` (plus what the group needs), stores and
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

mod apply;
mod commit;
mod retention;
mod space;
mod syncer;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::counts::{Standing, Tally};
use super::invoices::InvoiceRef;
use super::mark::{Acknowledged, MarkKeeper};
use super::{lock, Shared};
use crate::spool::{
    ApiSubscription, AuditId, Maintained, NotificationId, Purged, Routes, SpoolError, Stored,
};
use retention::Retention;
use syncer::Syncer;

/// Changes waiting for the writer before senders have to wait too.
const QUEUE: usize = 4096;

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
    /// Boxed: the other changes are small, and every change is an `Op` in
    /// the writer's queue.
    Store(Box<NewNotification>),
    Quarantine {
        record: Vec<u8>,
        received_ms: i64,
        /// For the per-source counts.
        source: String,
    },
    /// A leased delivery's new state: its record, its retry entry moved,
    /// and (for a first attempt) the subscription's cursor.
    Complete(Completion),
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
    /// A reconcile check of an invoice (encoded; see `checks.rs`).
    Check {
        source: String,
        subject: String,
        value: Vec<u8>,
    },
}

/// A notification to store (see [`Change::Store`]).
pub(super) struct NewNotification {
    pub record: Vec<u8>,
    pub dedup_key: Vec<u8>,
    pub received_ms: i64,
    /// For the per-source counts.
    pub source: String,
    pub subscriptions: Vec<String>,
    /// A quarantined body this notification is made from: it leaves
    /// the quarantine in the same batch (a duplicate too).
    pub released: Option<NotificationId>,
    /// The invoice it is about, for the invoice index (`invoices.rs`).
    pub invoice: Option<InvoiceRef>,
    /// Made from the provider's query answer (flagged `reconciled`): not
    /// stored when its invoice already stands at its status.
    pub reconciled: bool,
    /// For a webhook of a final status about an invoice: the dedup entry
    /// (`reconciled_key`) of a notification the relay made of the same
    /// state, which makes it a resend of that one.
    pub reconciled_dedup: Option<Vec<u8>>,
}

/// A lease's outcome (see [`Change::Complete`]).
pub(super) struct Completion {
    pub id: NotificationId,
    pub subscription: String,
    pub value: Vec<u8>,
    pub old_retry: Option<Vec<u8>>,
    pub new_retry: Option<Vec<u8>>,
    pub cursor: Option<u128>,
    /// Where the delivery stood when leased, and stands now (counts).
    pub was: Standing,
    pub now: Standing,
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
    let mark = MarkKeeper::start(from.acknowledged, &shared.config.sled.path, shared.clock);
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
        tally: super::counts::tally(from.counts),
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
    unflushed: Option<(tokio::time::Instant, u64)>,
    /// `None` once stopped (at shut-down).
    syncer: Option<Syncer>,
    /// Answered once the group handed to the syncer last is.
    pending_sync: Option<std::sync::mpsc::Receiver<()>>,
}

impl Writer {
    fn is_failed(&self) -> bool {
        matches!(self.blocked, Some(Blocked::Failed { .. }))
    }

    fn maintain(&mut self) -> Result<Maintained, SpoolError> {
        self.take_sync_failure();
        match &self.blocked {
            Some(Blocked::Failed { reason }) => {
                return Err(SpoolError::Unavailable(reason.clone()));
            }
            // Back once a few typical groups fit again.
            Some(Blocked::Full { .. }) | None => {
                if self.short
                    && self
                        .check_space(self.floor(), space::ROOM_TO_RESUME)
                        .is_ok()
                {
                    self.set_short(false);
                    tracing::info!("spool has room for outcomes again: leasing again");
                }
                if matches!(self.blocked, Some(Blocked::Full { .. }))
                    && self
                        .check_space(self.min_free(), space::ROOM_TO_RESUME)
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
}

fn answer_all(replies: impl IntoIterator<Item = Reply>, err: &SpoolError) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}
