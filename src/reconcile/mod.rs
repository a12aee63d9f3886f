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
//! - here: the [`Reconciler`] handle (a check on demand, for the admin)
//!   and the task that checks the stuck invoices of the sources with
//!   `[reconcile]` as their schedules fall due.
//!
//! Every check is recorded on its invoice (`Spool::record_check`): final,
//! pending, failed (with the first 16 KiB of an answer the provider module
//! could not read, for the admin: never a notification) or given up. The
//! task never loops hot: an invoice is asked again only per its `every`,
//! a source rests along its `failure_backoff` after a failed request, and
//! each request waits for the source's `rate`. The candidates are the
//! stuck marks the events task keeps in the spool; what each invoice's
//! schedule says is kept in memory between looks (bounded by the stuck
//! invoices), read back from its stored checks after a restart.

pub mod client;
pub mod schedule;
pub mod source_state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{Config, ReconcileAuth, ReconcileConfig};
use crate::events::{Events, RelayEvent};
use crate::metrics::{Metrics, Reconciled};
use crate::providers::query::{Answer, AnswerError, QueryBuildError, QueryCredentials, QueryKeys};
use crate::providers::Provider;
use crate::spool::{CheckOutcome, Received, ReconcileCheck, Spool, SpoolError, Stored};
use client::ProviderClient;
use schedule::{Checked, Next, Plan};
use source_state::{SourceState, Turn};

/// Longest sleep between two looks at the stuck invoices (new ones appear
/// at the events task's pace, a quarter second).
const LOOK: Duration = Duration::from_millis(250);
/// Shortest sleep between two looks: never a hot loop, whatever is due.
const MIN_SLEEP: Duration = Duration::from_millis(10);
/// After the spool failed a read or a write: the next look.
const SPOOL_RETRY: Duration = Duration::from_secs(5);
/// What a failed check keeps of an answer, for the admin.
pub const ANSWER_KEPT: usize = 16 << 10;

// Written out rather than derived: thiserror would take the fields named
// `source` (the relay's source, a name) for the error's cause.
#[derive(Debug)]
pub enum ReconcileError {
    UnknownSource(String),
    NotConfigured(String),
    UnknownInvoice { source: String, subject: String },
    NoKeys { source: String, subject: String },
    Spool(SpoolError),
}

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReconcileError::UnknownSource(name) => write!(f, "no source {name:?}"),
            ReconcileError::NotConfigured(name) => {
                write!(f, "source {name:?} has no [sources.{name}.reconcile]")
            }
            ReconcileError::UnknownInvoice { source, subject } => {
                write!(f, "no invoice {subject:?} of source {source:?}")
            }
            ReconcileError::NoKeys { source, subject } => write!(
                f,
                "no notification of invoice {subject:?} of source {source:?} carries what its provider's query needs"
            ),
            ReconcileError::Spool(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ReconcileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReconcileError::Spool(err) => Some(err),
            _ => None,
        }
    }
}

impl From<SpoolError> for ReconcileError {
    fn from(err: SpoolError) -> Self {
        ReconcileError::Spool(err)
    }
}

/// A source's `[reconcile]` that cannot be set up (its `tls_ca`).
#[derive(Debug)]
pub struct SetupError {
    name: String,
    error: client::ClientError,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sources.{}.reconcile: {}", self.name, self.error)
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

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
}

/// The config's sources, for a reload to swap at once.
#[derive(Default)]
pub struct Sources {
    names: Vec<String>,
    engines: BTreeMap<String, Arc<SourceEngine>>,
}

/// One source's query API: its config, client, rate and health.
struct SourceEngine {
    config: ReconcileConfig,
    provider: Provider,
    credentials: QueryCredentials,
    client: ProviderClient,
    limiter: governor::DefaultDirectRateLimiter,
    plan: Plan,
    state: Mutex<SourceState>,
}

impl SourceEngine {
    fn state(&self) -> std::sync::MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One stuck invoice's wait as its checks tell it.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    since_ms: i64,
    checked: Checked,
    /// A final answer was stored: nothing more to ask (the stuck mark
    /// goes at the events task's next look).
    settled: bool,
}

/// What the stored checks of a wait that began at `since_ms` say.
fn checked_since(checks: &[ReconcileCheck], since_ms: i64) -> (Checked, bool) {
    let mut checked = Checked::default();
    let mut settled = false;
    for check in checks.iter().filter(|c| c.at_ms >= since_ms) {
        let answered = match &check.outcome {
            CheckOutcome::Final { .. } => {
                settled = true;
                true
            }
            CheckOutcome::Pending { .. } => true,
            CheckOutcome::Failed { kind, .. } => kind == "not_found",
            CheckOutcome::GaveUp => {
                checked.gave_up = true;
                false
            }
        };
        if answered {
            checked.answered += 1;
            checked.last_ms = Some(check.at_ms);
        }
    }
    (checked, settled)
}

fn credentials(auth: &ReconcileAuth) -> QueryCredentials {
    match auth {
        ReconcileAuth::NubeFact { token, header } => QueryCredentials::NubeFact {
            token: token.expose().to_owned(),
            header: match header {
                crate::config::NubefactHeaderForm::Token => {
                    crate::providers::query::NubefactHeader::TokenQuoted
                }
                crate::config::NubefactHeaderForm::Bare => {
                    crate::providers::query::NubefactHeader::Bare
                }
            },
        },
        ReconcileAuth::TusFacturas {
            apikey,
            apitoken,
            usertoken,
        } => QueryCredentials::TusFacturas {
            apikey: apikey.expose().to_owned(),
            apitoken: apitoken.expose().to_owned(),
            usertoken: usertoken.expose().to_owned(),
        },
        ReconcileAuth::Datil { api_key } => QueryCredentials::Datil {
            api_key: api_key.expose().to_owned(),
        },
    }
}

impl Sources {
    /// The engines `config` asks for; an unchanged source keeps its own
    /// (its rate and health), a changed one keeps its health.
    fn build(config: &Config, before: Option<&Sources>) -> Result<Sources, SetupError> {
        let mut engines = BTreeMap::new();
        for (name, source) in &config.sources {
            let Some(reconcile) = &source.reconcile else {
                continue;
            };
            let old = before.and_then(|b| b.engines.get(name));
            let after = source.reconcile_after().unwrap_or_default();
            if let Some(old) = old.filter(|old| old.config == *reconcile && old.plan.after == after)
            {
                engines.insert(name.clone(), old.clone());
                continue;
            }
            let client = ProviderClient::new(reconcile.timeout, reconcile.tls_ca.as_deref())
                .map_err(|error| SetupError {
                    name: name.clone(),
                    error,
                })?;
            let rate = reconcile.rate;
            let quota = governor::Quota::with_period(rate.replenish_interval())
                .unwrap_or_else(|| governor::Quota::per_second(std::num::NonZeroU32::MIN))
                .allow_burst(
                    std::num::NonZeroU32::new(rate.count).unwrap_or(std::num::NonZeroU32::MIN),
                );
            let state = old.map(|old| old.state().clone()).unwrap_or_default();
            engines.insert(
                name.clone(),
                Arc::new(SourceEngine {
                    config: reconcile.clone(),
                    provider: source.provider(),
                    credentials: credentials(&reconcile.credentials),
                    client,
                    limiter: governor::RateLimiter::direct(quota),
                    plan: Plan {
                        after,
                        every: reconcile.every.clone(),
                        give_up_after: reconcile.give_up_after,
                    },
                    state: Mutex::new(state),
                }),
            );
        }
        Ok(Sources {
            names: config.sources.keys().cloned().collect(),
            engines,
        })
    }
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
            }),
        })
    }

    /// Starts the automatic checks, until `stop` turns true.
    pub fn start(&self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(self.inner.clone(), stop))
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

    /// The query keys from the invoice's notifications, latest first: the
    /// first body its provider reads them from.
    async fn keys(
        &self,
        engine: &SourceEngine,
        source: &str,
        subject: &str,
    ) -> Result<QueryKeys, ReconcileError> {
        let unknown = || ReconcileError::UnknownInvoice {
            source: source.to_owned(),
            subject: subject.to_owned(),
        };
        let (_, timeline) = self
            .spool
            .invoice(source, subject)
            .await?
            .ok_or_else(unknown)?;
        for entry in timeline.iter().rev() {
            let Some(record) = self.spool.notification(entry.id).await? else {
                continue;
            };
            if let Some(keys) = engine.provider.query_keys(&record.body) {
                return Ok(keys);
            }
        }
        Err(ReconcileError::NoKeys {
            source: source.to_owned(),
            subject: subject.to_owned(),
        })
    }

    /// Asks the provider about one invoice, stores a final answer, records
    /// the check and counts it.
    async fn check(
        &self,
        engine: &SourceEngine,
        source: &str,
        subject: &str,
        by: Option<&str>,
    ) -> Result<ReconcileCheck, ReconcileError> {
        let keys = self.keys(engine, source, subject).await?;
        let request = match engine.provider.build_query(&keys, &engine.credentials) {
            Ok(request) => request,
            Err(QueryBuildError::BadKeys(_)) => {
                return Err(ReconcileError::NoKeys {
                    source: source.to_owned(),
                    subject: subject.to_owned(),
                })
            }
            // Credentials that cannot be sent: the source's, like a refusal.
            Err(error) => {
                let at_ms = self.clock.now_ms();
                let kind = match error {
                    QueryBuildError::BadCredential(_) => "unauthorized",
                    _ => "unreadable",
                };
                let message = error.to_string();
                self.failed(engine, source, at_ms, kind, &message, None);
                let outcome = CheckOutcome::Failed {
                    kind: kind.to_owned(),
                    message,
                    http_status: None,
                    answer: None,
                };
                return self.recorded(source, subject, by, at_ms, outcome).await;
            }
        };
        // NubeFact's path is empty: the RUTA itself.
        let url = format!(
            "{}{}",
            engine.config.url.trim_end_matches('/'),
            request.path
        );
        let url = match request.path.is_empty() {
            true => engine.config.url.clone(),
            false => url,
        };
        let sent = engine
            .client
            .send(request.method, &url, &request.headers, request.body)
            .await;
        let at_ms = self.clock.now_ms();
        let outcome = match sent {
            Ok((status, body)) => {
                match engine.provider.read_answer(&keys, subject, status, &body) {
                    Ok(Answer::Final(notification)) => {
                        let status_told = notification.status;
                        let received = Received {
                            source: source.to_owned(),
                            body,
                            content_type: Some("application/json".into()),
                            headers: vec![("x-relay-origin".into(), "reconcile".into())],
                            peer: "reconcile".into(),
                            received_ms: at_ms,
                        };
                        let (notification, stored) =
                            match self.spool.store(received, notification).await? {
                                Stored::New(id) => (id, true),
                                Stored::Duplicate(id) => (id, false),
                            };
                        self.answered(engine, source, at_ms);
                        CheckOutcome::Final {
                            status: status_told,
                            notification,
                            stored,
                        }
                    }
                    Ok(Answer::Pending { said }) => {
                        self.answered(engine, source, at_ms);
                        CheckOutcome::Pending { said }
                    }
                    Err(error) => {
                        let kind = error.kind();
                        let message = error.to_string();
                        match error {
                            // The provider answered: the source is well.
                            AnswerError::NotFound(_) => self.answered(engine, source, at_ms),
                            _ => self.failed(engine, source, at_ms, kind, &message, Some(status)),
                        }
                        CheckOutcome::Failed {
                            kind: kind.to_owned(),
                            message,
                            http_status: Some(status),
                            answer: Some(body.slice(..body.len().min(ANSWER_KEPT))),
                        }
                    }
                }
            }
            Err(error) => {
                let http_status = match error {
                    client::SendError::TooLarge { status } => Some(status),
                    _ => None,
                };
                let message = error.to_string();
                self.failed(engine, source, at_ms, error.kind(), &message, http_status);
                CheckOutcome::Failed {
                    kind: error.kind().to_owned(),
                    message,
                    http_status,
                    answer: None,
                }
            }
        };
        self.recorded(source, subject, by, at_ms, outcome).await
    }

    /// Counts a check, records it on its invoice, and notes it.
    async fn recorded(
        &self,
        source: &str,
        subject: &str,
        by: Option<&str>,
        at_ms: i64,
        outcome: CheckOutcome,
    ) -> Result<ReconcileCheck, ReconcileError> {
        let counted = match &outcome {
            CheckOutcome::Final { .. } => Reconciled::Final,
            CheckOutcome::Pending { .. } | CheckOutcome::GaveUp => Reconciled::Pending,
            CheckOutcome::Failed { kind, .. } => Reconciled::of_failure(kind),
        };
        self.metrics.reconcile_request(source, counted);
        tracing::info!(%source, %subject, outcome = counted.as_str(), by = by.unwrap_or("schedule"), "invoice checked with its provider");
        let check = ReconcileCheck {
            at_ms,
            by: by.map(str::to_owned),
            outcome,
        };
        self.spool
            .record_check(source, subject, check.clone())
            .await?;
        self.note(source, subject, &check);
        Ok(check)
    }

    /// A check made (here or on demand) moves the invoice's tracked wait.
    fn note(&self, source: &str, subject: &str, check: &ReconcileCheck) {
        let mut tracked = self.tracked();
        let Some(wait) = tracked.get_mut(&(source.to_owned(), subject.to_owned())) else {
            return;
        };
        let (checked, settled) = checked_since(std::slice::from_ref(check), wait.since_ms);
        if checked.answered > 0 {
            wait.checked.answered += checked.answered;
            wait.checked.last_ms = checked.last_ms;
        }
        wait.checked.gave_up |= checked.gave_up;
        wait.settled |= settled;
    }

    fn answered(&self, engine: &SourceEngine, source: &str, now_ms: i64) {
        let turn = engine.state().answered();
        if let Some(Turn::Recovered { since_ms, failures }) = turn {
            tracing::info!(%source, failures, "the provider's query API answers again");
            self.events.raise(
                RelayEvent::ReconcileRecovered {
                    source: source.to_owned(),
                    failing_since_ms: since_ms,
                    failures,
                },
                now_ms,
            );
        }
    }

    fn failed(
        &self,
        engine: &SourceEngine,
        source: &str,
        now_ms: i64,
        kind: &str,
        message: &str,
        http_status: Option<u16>,
    ) {
        let (turn, retry_at_ms) = {
            let mut state = engine.state();
            let turn = state.failed(now_ms, &engine.config.failure_backoff);
            (turn, state.resting_until_ms())
        };
        tracing::warn!(%source, kind, error = %crate::redact::urls_in(message), "a request to the provider's query API failed; the source's checks rest");
        if turn == Some(Turn::Failing) {
            self.events.raise(
                RelayEvent::ReconcileFailing {
                    source: source.to_owned(),
                    kind: kind.to_owned(),
                    error: message.to_owned(),
                    http_status,
                    retry_at_ms,
                },
                now_ms,
            );
        }
    }

    /// One look at the stuck invoices: checks those due (and gives up on
    /// those whose time is over); the time of the next look.
    async fn look(&self) -> i64 {
        let now_ms = self.clock.now_ms();
        let mut wake = now_ms.saturating_add(LOOK.as_millis() as i64);
        let retry = now_ms.saturating_add(SPOOL_RETRY.as_millis() as i64);
        let sources = self.sources.load_full();
        if sources.engines.is_empty() {
            return wake;
        }
        let marks = match self.spool.stuck_marks().await {
            Ok(marks) => marks,
            Err(err) => {
                tracing::warn!(error = %err, "stuck invoices not read for reconciliation");
                return retry;
            }
        };
        let mut waiting: BTreeMap<&str, usize> = sources
            .engines
            .keys()
            .map(|name| (name.as_str(), 0))
            .collect();
        let stuck: Vec<_> = marks
            .stuck
            .into_iter()
            .filter(|s| sources.engines.contains_key(&s.source))
            .collect();
        self.tracked().retain(|(source, subject), _| {
            stuck
                .iter()
                .any(|s| s.source == *source && s.subject == *subject)
        });
        for invoice in &stuck {
            let Some(engine) = sources.engines.get(&invoice.source) else {
                continue;
            };
            let key = (invoice.source.clone(), invoice.subject.clone());
            let known = self
                .tracked()
                .get(&key)
                .copied()
                .filter(|t| t.since_ms == invoice.since_ms);
            let wait = match known {
                Some(wait) => wait,
                None => match self.spool.checks(&invoice.source, &invoice.subject).await {
                    Ok(checks) => {
                        let (checked, settled) = checked_since(&checks, invoice.since_ms);
                        let wait = Tracked {
                            since_ms: invoice.since_ms,
                            checked,
                            settled,
                        };
                        self.tracked().insert(key.clone(), wait);
                        wait
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "an invoice's checks not read");
                        return retry;
                    }
                },
            };
            if wait.settled {
                continue;
            }
            let now_ms = self.clock.now_ms();
            match engine.plan.next(invoice.since_ms, wait.checked) {
                Next::Done => {}
                Next::GiveUpAt(at) if at <= now_ms => {
                    let check = ReconcileCheck {
                        at_ms: now_ms,
                        by: None,
                        outcome: CheckOutcome::GaveUp,
                    };
                    if let Err(err) = self
                        .spool
                        .record_check(&invoice.source, &invoice.subject, check.clone())
                        .await
                    {
                        tracing::warn!(error = %err, "giving up on an invoice not recorded");
                        return retry;
                    }
                    tracing::info!(source = %invoice.source, subject = %invoice.subject, "provider still says pending: no more automatic checks of this invoice");
                    self.note(&invoice.source, &invoice.subject, &check);
                }
                next => {
                    *waiting.entry(invoice.source.as_str()).or_default() += 1;
                    let due = next.at_ms().unwrap_or(i64::MAX);
                    let resting = {
                        let state = engine.state();
                        (!state.may_ask(now_ms))
                            .then(|| state.resting_until_ms())
                            .flatten()
                    };
                    if let Some(until) = resting {
                        wake = wake.min(until.max(due));
                        continue;
                    }
                    if due > now_ms {
                        wake = wake.min(due);
                        continue;
                    }
                    if matches!(next, Next::GiveUpAt(_)) {
                        continue;
                    }
                    if engine.limiter.check().is_err() {
                        // The source's rate: the next look takes it.
                        wake = now_ms;
                        continue;
                    }
                    match self.still_stuck(&invoice.source, &invoice.subject).await {
                        Ok(true) => {}
                        Ok(false) => {
                            if let Some(wait) = self.tracked().get_mut(&key) {
                                wait.settled = true;
                            }
                            continue;
                        }
                        Err(_) => return retry,
                    }
                    match self
                        .check(engine, &invoice.source, &invoice.subject, None)
                        .await
                    {
                        Ok(_) => {}
                        Err(ReconcileError::Spool(err)) => {
                            tracing::warn!(error = %err, "a reconciliation not kept");
                            return retry;
                        }
                        Err(err) => {
                            // No keys, or gone: a check that could not be
                            // made says so once, then waits for giving up.
                            tracing::warn!(error = %err, "invoice not checked with its provider");
                            let check = ReconcileCheck {
                                at_ms: now_ms,
                                by: None,
                                outcome: CheckOutcome::Failed {
                                    kind: "no_keys".into(),
                                    message: err.to_string(),
                                    http_status: None,
                                    answer: None,
                                },
                            };
                            let _ = self
                                .spool
                                .record_check(&invoice.source, &invoice.subject, check)
                                .await;
                            if let Some(wait) = self.tracked().get_mut(&key) {
                                wait.checked.gave_up = true;
                            }
                        }
                    }
                }
            }
        }
        for (source, count) in waiting {
            self.metrics.set_reconcile_waiting(source, count);
        }
        wake
    }

    /// Whether the invoice is still undecided (a webhook may have come
    /// since its mark was read).
    async fn still_stuck(&self, source: &str, subject: &str) -> Result<bool, SpoolError> {
        let now = self.spool.invoice_now(source, subject).await?;
        Ok(now.is_some_and(|invoice| !invoice.status.is_final()))
    }
}

async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let wake = tokio::select! {
            wake = inner.look() => wake,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let now_ms = inner.clock.now_ms();
        let sleep = Duration::from_millis(u64::try_from(wake.saturating_sub(now_ms)).unwrap_or(0))
            .clamp(MIN_SLEEP, SPOOL_RETRY);
        tokio::select! {
            _ = inner.clock.sleep_until(inner.clock.instant_now() + sleep) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

#[cfg(test)]
mod tests;
