//! The forwarder: one worker per subscription takes due deliveries from the
//! spool's due index (never from an in-memory copy of the backlog), sends
//! them within the subscription's concurrency and rate limits and a global
//! cap, and records each outcome in the spool.
//!
//! A delivery's due entry stays in the index while its attempt is in flight
//! (the worker remembers it in a small in-memory set), so a crash mid-attempt
//! leaves it due: it is retried after restart, at-least-once.

mod target;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::Decision;
use crate::spool::{DueDelivery, NotificationId, Spool};
pub use target::{parse_retry_after, Target, TargetError};

/// Longest nap of an idle worker: a backstop, wake-ups normally come first.
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// How long a delivery whose outcome could not be recorded (spool full or
/// failing) is held back before it is tried again, so a broken disk does
/// not turn into a busy loop.
const RECORD_FAILURE_BACKOFF: Duration = Duration::from_secs(1);

pub struct Forwarder {
    spool: Spool,
    clock: Clock,
    targets: Vec<Arc<Target>>,
    global: Arc<Semaphore>,
    grace: Duration,
}

impl Forwarder {
    pub fn new(config: &Config, spool: Spool, clock: Clock) -> Result<Self, TargetError> {
        let targets = config
            .subscriptions
            .iter()
            .map(|s| Target::new(s).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Forwarder {
            spool,
            clock,
            targets,
            global: Arc::new(Semaphore::new(config.forwarder.max_in_flight)),
            grace: config.forwarder.shutdown_grace.0,
        })
    }

    /// Runs every subscription's worker until `shutdown` resolves; then waits
    /// up to the grace period for attempts in flight and records them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = JoinSet::new();
        for target in &self.targets {
            let worker = Worker {
                target: target.clone(),
                spool: self.spool.clone(),
                clock: self.clock,
                global: self.global.clone(),
                in_flight: Arc::new(Mutex::new(HashSet::new())),
                finished: Arc::new(Notify::new()),
            };
            workers.spawn(worker.run(stop_rx.clone(), self.grace));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        while workers.join_next().await.is_some() {}
    }
}

struct Worker {
    target: Arc<Target>,
    spool: Spool,
    clock: Clock,
    global: Arc<Semaphore>,
    /// Deliveries of this subscription with an attempt under way.
    in_flight: Arc<Mutex<HashSet<NotificationId>>>,
    /// Signalled when an attempt ends, so a due entry it held is seen again.
    finished: Arc<Notify>,
}

impl Worker {
    async fn run(self, mut stop: watch::Receiver<bool>, grace: Duration) {
        let local = Arc::new(Semaphore::new(self.target.max_in_flight));
        let mut new_work = self.spool.new_work();
        let mut attempts = JoinSet::new();
        loop {
            // Hold a slot before looking, so what we find can be sent at once.
            let permits = tokio::select! {
                permits = acquire_both(&local, &self.global) => permits,
                _ = stop.wait_for(|s| *s) => break,
            };
            let now = self.clock.now_ms();
            let due = match self
                .spool
                .due(&self.target.name, now, 1, |id| self.is_in_flight(id))
            {
                Ok(due) => due,
                Err(err) => {
                    tracing::error!(subscription = %self.target.name, error = %err, "cannot read due deliveries");
                    Vec::new()
                }
            };
            let Some(due) = due.into_iter().next() else {
                drop(permits);
                new_work.mark_unchanged();
                let wake_at = self.next_wake(now);
                tokio::select! {
                    _ = new_work.changed() => {}
                    _ = self.finished.notified() => {}
                    _ = tokio::time::sleep_until(wake_at) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                continue;
            };
            if let Some(limiter) = &self.target.limiter {
                tokio::select! {
                    _ = limiter.until_ready() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            self.mark_in_flight(due.id);
            let attempt = Attempt {
                target: self.target.clone(),
                spool: self.spool.clone(),
                clock: self.clock,
            };
            let (in_flight, finished) = (self.in_flight.clone(), self.finished.clone());
            attempts.spawn(async move {
                let id = due.id;
                if !attempt.run(due).await {
                    tokio::time::sleep(RECORD_FAILURE_BACKOFF).await;
                }
                drop(permits);
                lock(&in_flight).remove(&id);
                finished.notify_one();
            });
            // Reap finished attempts without waiting.
            while attempts.try_join_next().is_some() {}
        }
        self.drain(attempts, grace).await;
    }

    /// The earliest due time not in flight, or a backstop recheck.
    fn next_wake(&self, now: i64) -> tokio::time::Instant {
        let backstop = tokio::time::Instant::now() + IDLE_RECHECK;
        match self
            .spool
            .next_due_ms(&self.target.name, |id| self.is_in_flight(id))
        {
            Ok(Some(at)) if at > now => self.clock.instant_at(at).min(backstop),
            // Due now but held by an attempt: its end wakes us.
            _ => backstop,
        }
    }

    async fn drain(&self, mut attempts: JoinSet<()>, grace: Duration) {
        let waiting = attempts.len();
        if waiting > 0 {
            tracing::info!(subscription = %self.target.name, waiting, "waiting for attempts in flight");
        }
        let all_done = async { while attempts.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            // Their due entries are still in the index: they run again after restart.
            tracing::warn!(subscription = %self.target.name, left = attempts.len(), "attempts still in flight at the end of the grace period; they will be retried");
            attempts.abort_all();
        }
    }

    fn is_in_flight(&self, id: NotificationId) -> bool {
        lock(&self.in_flight).contains(&id)
    }

    fn mark_in_flight(&self, id: NotificationId) {
        lock(&self.in_flight).insert(id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn acquire_both(
    local: &Arc<Semaphore>,
    global: &Arc<Semaphore>,
) -> (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
) {
    // Neither semaphore is ever closed, so acquiring cannot fail.
    loop {
        if let (Ok(a), Ok(b)) = (
            local.clone().acquire_owned().await,
            global.clone().acquire_owned().await,
        ) {
            return (a, b);
        }
    }
}

/// One attempt at one delivery, from start to recorded outcome.
struct Attempt {
    target: Arc<Target>,
    spool: Spool,
    clock: Clock,
}

impl Attempt {
    /// Returns whether the outcome was recorded.
    async fn run(self, due: DueDelivery) -> bool {
        let mut delivery = due.delivery.clone();
        let started = self.clock.now_ms();
        let number = match delivery.start(started) {
            Ok(number) => number,
            Err(err) => {
                // A final delivery with a stale due entry: recording drops the entry.
                tracing::warn!(id = %due.id, subscription = %due.subscription, error = %err, "due entry of a finished delivery");
                return self.record(&due, &delivery).await;
            }
        };
        let outcome = self.target.send(&due.notification, number, started).await;
        let now = self.clock.now_ms();
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let decision = match delivery.finish(&self.target.schedule, outcome.clone(), now, jitter) {
            Ok(decision) => decision,
            Err(err) => {
                tracing::error!(id = %due.id, error = %err, "delivery state machine refused an outcome");
                return false;
            }
        };
        let fields = (due.id, due.subscription.as_str(), number, now - started);
        match decision {
            Decision::Delivered => {
                tracing::debug!(id = %fields.0, subscription = fields.1, attempt = fields.2, ms = fields.3, "delivered")
            }
            Decision::RetryAt(at) => tracing::info!(
                id = %fields.0, subscription = fields.1, attempt = fields.2, ?outcome,
                retry_in_ms = at - now, "attempt failed; will retry"
            ),
            Decision::Dead => tracing::warn!(
                id = %fields.0, subscription = fields.1, attempt = fields.2, ?outcome,
                "delivery is dead after its last attempt; an admin can replay it"
            ),
        }
        self.record(&due, &delivery).await
    }

    async fn record(&self, due: &DueDelivery, delivery: &crate::delivery::Delivery) -> bool {
        match self.spool.record(due, delivery).await {
            Ok(()) => true,
            Err(err) => {
                // The due entry is unchanged, so the delivery is made again: at-least-once.
                tracing::error!(id = %due.id, subscription = %due.subscription, error = %err, "cannot record an outcome");
                false
            }
        }
    }
}
