//! Reconciliation: asks a provider's query API where an invoice stands
//! when its final webhook is late or lost (it is stuck, see
//! `events::stuck`), and stores a final answer as a notification of its
//! source flagged `reconciled`, delivered like any other (with
//! `x-relay-origin: reconcile`).
//!
//! - `schedule`: when an invoice's next automatic check is due, or when
//!   to give up, pure.
//! - `source_state`: a source's back-off after failed requests and its
//!   failing/recovered turns, pure.
//! - `client`: the HTTP call (the request is built and the answer read by
//!   `providers::query`, pure).
//! - `sources`: each source's engine (config, credentials, client, rate,
//!   health), rebuilt on a reload.
//! - `check`: one check of one invoice, asked, stored and recorded.
//! - `wait`: what the stored checks say of a stuck invoice's wait.
//! - `task`: the automatic checks of the stuck invoices of the sources
//!   with `[reconcile]`, as their schedules fall due.
//! - `error`: a check that cannot be made, a source that cannot be set up.
//! - here: the [`Reconciler`] handle (a check on demand, for the admin;
//!   a reload's `prepare`/`install`; `start` for the task).
//!
//! Every check is recorded on its invoice (`Spool::record_check`): final,
//! pending, failed (with the first 16 KiB of an answer the provider module
//! could not read, for the admin: never a notification) or given up. The
//! task never loops hot: an invoice is asked again only per its `every`,
//! a source rests along its `failure_backoff` after a failed request, and
//! each request waits for the source's `rate`. The candidates are the
//! stuck marks the events task keeps in the spool; what each invoice's
//! schedule says is kept in memory between looks (bounded by the stuck
//! invoices), read back from its stored checks after a restart; so is
//! each source's back-off (the checks of all its stuck invoices replayed,
//! see `source_state`), before its first automatic request.

mod check;
pub mod client;
mod error;
pub mod schedule;
pub mod source_state;
mod sources;
mod task;
mod wait;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Config;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::spool::{ReconcileCheck, Spool};
pub use error::{ReconcileError, SetupError};
use sources::SourceEngine;
pub use sources::Sources;
use wait::Tracked;

/// The reconciliation of every source with `[reconcile]`: a check on
/// demand, and (with [`Reconciler::start`]) the automatic ones.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

struct Inner {
    /// The sources of the config, and the engine of those with `[reconcile]`.
    sources: ArcSwap<Sources>,
    spool: Spool,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
    clock: Clock,
    /// What the stored checks say of each stuck invoice's wait.
    tracked: Mutex<HashMap<(String, String), Tracked>>,
    /// The sources whose back-off was rebuilt from their stored checks.
    restored: Mutex<HashSet<String>>,
}

impl Reconciler {
    /// The handle, without the automatic checks (see [`Reconciler::start`]).
    pub fn new(
        config: &Config,
        spool: Spool,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
        clock: Clock,
    ) -> Result<Reconciler, SetupError> {
        let sources = Sources::build(config, None)?;
        let names: Vec<String> = sources.engines.keys().cloned().collect();
        metrics.set_reconcile_sources(&names);
        Ok(Reconciler {
            inner: Arc::new(Inner {
                sources: ArcSwap::from_pointee(sources),
                spool,
                metrics,
                events,
                clock,
                tracked: Mutex::new(HashMap::new()),
                restored: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// Starts the automatic checks, until `stop` turns true.
    pub fn start(&self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(task::run(self.inner.clone(), stop))
    }

    /// Builds what a new config asks for, without applying it: a reload
    /// that fails changes nothing.
    pub fn prepare(&self, config: &Config) -> Result<Sources, SetupError> {
        Sources::build(config, Some(&self.inner.sources.load()))
    }

    /// Applies what [`Reconciler::prepare`] built.
    pub fn install(&self, sources: Sources) {
        let names: Vec<String> = sources.engines.keys().cloned().collect();
        self.inner.metrics.set_reconcile_sources(&names);
        self.inner.sources.store(Arc::new(sources));
    }

    pub fn is_configured(&self, source: &str) -> bool {
        self.inner.sources.load().engines.contains_key(source)
    }

    /// One check now (on demand), recorded with `by`; waits for the
    /// source's rate limiter, not for its back-off.
    pub async fn check_now(
        &self,
        source: &str,
        subject: &str,
        by: Option<&str>,
    ) -> Result<ReconcileCheck, ReconcileError> {
        let engine = self.inner.engine(source)?;
        engine.limiter.until_ready().await;
        self.inner.check(&engine, source, subject, by).await
    }
}

impl Inner {
    fn engine(&self, source: &str) -> Result<Arc<SourceEngine>, ReconcileError> {
        let sources = self.sources.load();
        if let Some(engine) = sources.engines.get(source) {
            return Ok(engine.clone());
        }
        match sources.names.iter().any(|name| name == source) {
            true => Err(ReconcileError::NotConfigured(source.to_owned())),
            false => Err(ReconcileError::UnknownSource(source.to_owned())),
        }
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Tracked>> {
        self.tracked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
