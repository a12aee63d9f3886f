//! Group commit: the writer's loop takes whatever has queued up, applies it
//! as one batch, flushes sled and hands the group to the syncer; a group
//! nobody waits on for durability is left for the next flush, made at the
//! latest [`OUTCOMES_FLUSHED_WITHIN`] later on the spool's clock. Also the
//! last flush at shut-down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::super::shared::Store;
use super::lock;
use super::syncer::{flush, flush_sled, publish, sync_log, Flushed, Syncer};
use super::{answer_all, Blocked, Change, Op, Reply, Write, Writer};
use crate::clock::Clock;
use crate::spool::SpoolError;

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
/// A group nobody waits on for durability (delivery outcomes) is not
/// flushed on its own: the next flush covers it, at the latest after this
/// long or this many such changes. A flush per outcome group kept the
/// writer busy, so a notification arriving behind one waited for two
/// flushes; a crash in the window re-sends those deliveries (at-least-once,
/// same `webhook-id`), it loses no notification.
const OUTCOMES_FLUSHED_WITHIN: Duration = Duration::from_millis(10);
const OUTCOMES_FLUSHED_AFTER: u64 = 1024;

impl Writer {
    /// Serves until closed; returns the closer's channel, if any.
    pub(super) fn run(
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
                // Alive means syncing too, and having made the flush that
                // is due by now (on the spool's clock).
                self.flush_if_due();
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
            let deadline = since + OUTCOMES_FLUSHED_WITHIN;
            let clock = self.shared.clock;
            // The timer is made inside the runtime it belongs to. A change
            // that is there is taken first, as before the deadline.
            let next = timer.block_on(async {
                tokio::select! {
                    biased;
                    op = rx.recv() => Some(op),
                    () = clock.sleep_until(deadline) => None,
                }
            });
            match next {
                Some(op) => return op,
                None => self.flush_unflushed(),
            }
        }
    }

    /// Flushes what earlier groups left unflushed if its deadline passed.
    fn flush_if_due(&mut self) {
        let due = self.unflushed.is_some_and(|(since, _)| {
            self.shared.clock.instant_now() >= since + OUTCOMES_FLUSHED_WITHIN
        });
        if due {
            self.flush_unflushed();
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
    pub(super) fn shut_down(&mut self) -> Result<(), SpoolError> {
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
        #[cfg(test)]
        if self.shared.crash_at_stop.load(Ordering::Relaxed) {
            // Tests: stop as a crash would, with no last flush, no
            // acknowledged mark and no clean-stop mark; sled is let go
            // (the lock too) so the test can reopen it in this process.
            if let Some(store) = self.shared.store.swap(None) {
                let_go(store);
            }
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
                if let_go(store) {
                    super::super::open::mark_clean_stop(&self.shared.config.sled.path);
                }
            }
            other => std::mem::forget(other),
        }
        result
    }

    /// A failed fdatasync fails the store, as one in the writer would.
    pub(super) fn take_sync_failure(&mut self) {
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
        let now = self.shared.clock.instant_now();
        let (unflushed_since, unflushed) = self.unflushed.unwrap_or((now, 0));
        if durable_replies.is_empty()
            && applied.newest.is_none()
            && unflushed + group_size < OUTCOMES_FLUSHED_AFTER
            && now < unflushed_since + OUTCOMES_FLUSHED_WITHIN
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
}

/// Lets go of the store, after waiting (up to two seconds) for every
/// other thread to let go of it; whether this was its last holder. Other threads let go in real time,
/// whatever clock the spool runs on (a manual one would never end the wait).
fn let_go(store: Arc<Store>) -> bool {
    let real = Clock::system();
    let deadline = real.instant_now() + Duration::from_secs(2);
    while Arc::strong_count(&store) > 1 && real.instant_now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    Arc::strong_count(&store) == 1
}
