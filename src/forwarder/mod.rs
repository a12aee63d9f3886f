//! The forwarder: one worker per subscription leases due deliveries from
//! the spool in batches, sends them within the subscription's concurrency
//! and rate limits and a global cap, and completes each lease with the
//! delivery's new state. It knows no index, key or store: it asks the spool
//! for work and reports outcomes.
//!
//! A lease whose outcome cannot be recorded (a full disk) is held and its
//! recording retried, with a growing pause, until it succeeds or the relay
//! stops: the delivery is never sent again meanwhile, so a broken disk does
//! not turn into a resend storm; and while the spool is short of room for
//! outcomes its lease hands out nothing, so no attempt starts whose outcome
//! could not be written. A crash mid-attempt leaves the delivery due: it is
//! retried after restart, at-least-once.

mod outgoing;
mod target;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::{Decision, Delivery};
use crate::metrics::{Ended, Metrics};
use crate::spool::{Consumer, Lease};
pub use target::{parse_retry_after, Target, TargetError};

/// Most deliveries one worker leases at once.
const LEASE_BATCH: usize = 32;
/// First and longest pause before recording an outcome again.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(250);
const RECORD_RETRY_LONGEST: Duration = Duration::from_secs(10);
/// Pause after the spool could not be read.
const LEASE_ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct Forwarder {
    spool: Consumer,
    clock: Clock,
    /// The subscriptions to serve; a reload sends a new list.
    targets: watch::Receiver<Targets>,
    global: Arc<Semaphore>,
    grace: Duration,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    pub fn new(
        config: &Config,
        spool: Consumer,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, watch::Sender<Targets>), TargetError> {
        let (targets_tx, targets) = watch::channel(Targets::build(config, None)?);
        let forwarder = Forwarder {
            spool,
            clock,
            targets,
            global: Arc::new(Semaphore::new(config.forwarder.max_in_flight)),
            grace: config.forwarder.shutdown_grace.0,
            metrics,
        };
        Ok((forwarder, targets_tx))
    }

    /// Runs a worker per subscription until `shutdown` resolves; then waits
    /// up to the grace period for attempts in flight and records them. A new
    /// list of targets (a reload) stops the workers of subscriptions removed
    /// or changed (each finishing its attempts in flight) and starts those
    /// of subscriptions added or changed.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut running: HashMap<String, (Arc<Target>, watch::Sender<bool>)> = HashMap::new();
        let mut workers = JoinSet::new();
        let mut reloadable = true;
        tokio::pin!(shutdown);
        loop {
            let wanted = self.targets.borrow_and_update().clone();
            running.retain(|name, (target, stop)| {
                let keep = wanted.0.iter().any(|t| Arc::ptr_eq(t, target));
                if !keep {
                    tracing::info!(subscription = %name, "subscription worker stopping (reload)");
                    let _ = stop.send(true);
                }
                keep
            });
            for target in &wanted.0 {
                if running.contains_key(&target.name) {
                    continue;
                }
                let (stop_tx, stop_rx) = watch::channel(false);
                let worker = Worker {
                    target: target.clone(),
                    spool: self.spool.clone(),
                    clock: self.clock,
                    global: self.global.clone(),
                    metrics: self.metrics.clone(),
                };
                workers.spawn(worker.run(stop_rx, self.grace));
                running.insert(target.name.clone(), (target.clone(), stop_tx));
            }
            tokio::select! {
                _ = &mut shutdown => break,
                // Once the sender is gone there is no reload to wait for.
                changed = self.targets.changed(), if reloadable => reloadable = changed.is_ok(),
                // Reap workers that stopped after a reload.
                Some(_) = workers.join_next(), if !workers.is_empty() => {}
            }
        }
        for (_, (_, stop)) in running {
            let _ = stop.send(true);
        }
        while workers.join_next().await.is_some() {}
    }
}

/// The targets of the configured subscriptions.
#[derive(Clone)]
pub struct Targets(Vec<Arc<Target>>);

impl Targets {
    /// Builds a target per subscription; one whose config is unchanged
    /// since `previous` is kept as it is (its worker goes on undisturbed).
    pub fn build(config: &Config, previous: Option<&Targets>) -> Result<Targets, TargetError> {
        config
            .subscriptions
            .iter()
            .map(|s| {
                let same = previous
                    .into_iter()
                    .flat_map(|p| p.0.iter())
                    .find(|t| t.config == *s);
                match same {
                    Some(target) => Ok(target.clone()),
                    None => Target::new(s).map(Arc::new),
                }
            })
            .collect::<Result<_, _>>()
            .map(Targets)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| t.name.as_str())
    }
}

struct Worker {
    target: Arc<Target>,
    spool: Consumer,
    clock: Clock,
    global: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn run(self, mut stop: watch::Receiver<bool>, grace: Duration) {
        let local = Arc::new(Semaphore::new(self.target.max_in_flight));
        let mut attempts = JoinSet::new();
        let mut lease_failing = false;
        loop {
            // One free slot before asking; as many as are free, in one batch.
            let first = tokio::select! {
                permit = local.clone().acquire_owned() => permit,
                _ = stop.wait_for(|s| *s) => break,
            };
            let Ok(first) = first else { break };
            let mut slots = vec![first];
            while slots.len() < LEASE_BATCH {
                match local.clone().try_acquire_owned() {
                    Ok(permit) => slots.push(permit),
                    Err(_) => break,
                }
            }
            let leases = tokio::select! {
                leases = self.spool.lease(&self.target.name, slots.len()) => leases,
                _ = stop.wait_for(|s| *s) => break,
            };
            let leases = match leases {
                Ok(leases) => {
                    if lease_failing {
                        tracing::info!(subscription = %self.target.name, "reading due deliveries again");
                        lease_failing = false;
                    }
                    leases
                }
                Err(err) => {
                    if !lease_failing {
                        tracing::warn!(subscription = %self.target.name, error = %err, "cannot read due deliveries; retrying");
                        lease_failing = true;
                    }
                    drop(slots);
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE_ERROR_PAUSE) => continue,
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            };
            slots.truncate(leases.len());
            let mut stopping = false;
            for (lease, slot) in leases.into_iter().zip(slots.drain(..)) {
                let global = tokio::select! {
                    permit = self.global.clone().acquire_owned() => permit,
                    _ = stop.wait_for(|s| *s) => { stopping = true; break }
                };
                let Ok(global) = global else {
                    stopping = true;
                    break;
                };
                if let Some(limiter) = &self.target.limiter {
                    tokio::select! {
                        _ = limiter.until_ready() => {}
                        _ = stop.wait_for(|s| *s) => { stopping = true; break }
                    }
                }
                // A pause holds what this batch has not sent yet too (behind
                // a rate limit, that can be many seconds of sending): the
                // rest of the leases are dropped, so due again on a resume.
                if self.spool.is_paused(&self.target.name) {
                    break;
                }
                let attempt = Attempt {
                    target: self.target.clone(),
                    spool: self.spool.clone(),
                    clock: self.clock,
                    stop: stop.clone(),
                    metrics: self.metrics.clone(),
                };
                attempts.spawn(attempt.run(lease, [slot, global]));
            }
            // Reap finished attempts without waiting.
            while attempts.try_join_next().is_some() {}
            if stopping {
                break;
            }
        }
        self.drain(attempts, grace).await;
    }

    async fn drain(&self, mut attempts: JoinSet<()>, grace: Duration) {
        while attempts.try_join_next().is_some() {}
        if attempts.is_empty() {
            return;
        }
        // An attempt that is ending (a refused connection, an outcome being
        // recorded) is done in moments: only those still going after that
        // are worth a line, with their true count.
        let quiet = DRAIN_QUIET.min(grace);
        let all_done = async { while attempts.join_next().await.is_some() {} };
        if tokio::time::timeout(quiet, all_done).await.is_ok() {
            return;
        }
        tracing::info!(subscription = %self.target.name, waiting = attempts.len(), "waiting for attempts in flight");
        let all_done = async { while attempts.join_next().await.is_some() {} };
        if tokio::time::timeout(grace - quiet, all_done).await.is_err() {
            // Never recorded: they are due again after restart.
            tracing::warn!(subscription = %self.target.name, left = attempts.len(), "attempts still in flight at the end of the grace period; they will be retried");
            attempts.abort_all();
        }
    }
}

/// How long attempts may take to end on a stop before the log says it waits.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// One attempt at one delivery, from start to recorded outcome.
struct Attempt {
    target: Arc<Target>,
    spool: Consumer,
    clock: Clock,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl Attempt {
    /// `_slots` are held until the outcome is recorded.
    async fn run(mut self, lease: Lease, _slots: [OwnedSemaphorePermit; 2]) {
        let mut delivery = lease.delivery().clone();
        let started = self.clock.now_ms();
        let number = match delivery.start(started) {
            Ok(number) => number,
            Err(err) => {
                // A final delivery with a stale retry entry: recording drops the entry.
                tracing::warn!(id = %lease.id(), subscription = %lease.subscription(), error = %err, "retry entry of a finished delivery");
                return self.record(&lease, &delivery).await;
            }
        };
        let (outcome, answer) = self
            .target
            .send(lease.notification(), number, started, &self.clock)
            .await;
        let now = self.clock.now_ms();
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let decision = match delivery.finish(&self.target.schedule, outcome.clone(), now, jitter) {
            Ok(decision) => decision,
            Err(err) => {
                tracing::error!(id = %lease.id(), error = %err, "delivery state machine refused an outcome");
                return;
            }
        };
        delivery.keep_answer(answer);
        let (id, subscription, ms) = (lease.id(), lease.subscription(), now - started);
        let seconds = |ms: i64| ms.max(0) as f64 / 1000.0;
        self.metrics.attempt(subscription, &outcome, seconds(ms));
        match decision {
            Decision::Delivered => {
                let since_receipt = now - lease.notification().meta.received_ms;
                self.metrics
                    .ended(subscription, Ended::delivered, Some(seconds(since_receipt)));
                tracing::info!(%id, subscription, attempt = number, ms, ?outcome, "delivered")
            }
            Decision::RetryAt(at) => tracing::info!(
                %id, subscription, attempt = number, ms, ?outcome,
                next_try = %crate::clock::format_ms(at), "attempt failed; will retry"
            ),
            Decision::Dead => {
                self.metrics.ended(subscription, Ended::dead, None);
                tracing::warn!(
                    %id, subscription, attempt = number, ms, ?outcome,
                    "delivery is dead after its last attempt; an admin can replay it"
                )
            }
        }
        self.record(&lease, &delivery).await;
    }

    /// Records the outcome, retrying until it is on record or the relay
    /// stops; the lease stays held all along, so nothing is sent twice.
    async fn record(&mut self, lease: &Lease, delivery: &Delivery) {
        let mut pause = RECORD_RETRY_FIRST;
        let mut warned = false;
        loop {
            match self.spool.complete(lease, delivery).await {
                Ok(()) => {
                    if warned {
                        tracing::info!(id = %lease.id(), subscription = %lease.subscription(), "outcome recorded after all");
                    }
                    return;
                }
                Err(err) if !warned => {
                    tracing::warn!(id = %lease.id(), subscription = %lease.subscription(), error = %err,
                        "cannot record an outcome; holding the delivery until it can be recorded");
                    warned = true;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                // Unrecorded at the stop: the delivery stays due (at-least-once).
                _ = self.stop.wait_for(|s| *s) => return,
            }
            pause = (pause * 2).min(RECORD_RETRY_LONGEST);
        }
    }
}

#[cfg(test)]
mod tests;
