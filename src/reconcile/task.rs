//! The automatic checks: a look at the stuck invoices of the sources
//! with `[reconcile]` every quarter second at most, checking those whose
//! schedule fell due (within their source's rate and back-off) and giving
//! up on those whose `give_up_after` is past.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::error::ReconcileError;
use super::schedule::Next;
use super::source_state::SourceState;
use super::wait::{asked, checked_since, Tracked, NO_KEYS};
use super::Inner;
use crate::spool::{CheckOutcome, Duty, ReconcileCheck, SpoolError};

/// Longest sleep between two looks at the stuck invoices (new ones appear
/// at the events task's pace, a quarter second).
const LOOK: Duration = Duration::from_millis(250);
/// Shortest sleep between two looks: never a hot loop, whatever is due.
const MIN_SLEEP: Duration = Duration::from_millis(10);
/// After the spool failed a read or a write: the next look.
const SPOOL_RETRY: Duration = Duration::from_secs(5);

impl Inner {
    /// One look if this relay holds the reconcile duty (always on sled;
    /// among relays sharing a JetStream spool, one holds it: each
    /// provider is asked once, not once per relay). A relay that takes
    /// it over reads each invoice's wait and each source's back-off back
    /// from the stored checks, as after a restart (`holding`: whether it
    /// held the duty at the last look).
    async fn look_if_held(&self, holding: &mut bool) -> i64 {
        if self.sources.load().engines.is_empty() {
            return self.look().await; // nothing to ask: no duty to hold
        }
        let held = self.spool.holds(Duty::Reconcile).await;
        if held && !*holding {
            tracing::info!("this relay runs the automatic reconciliation now");
            self.tracked().clear();
            self.restored
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
        *holding = held;
        match held {
            true => self.look().await,
            false => self.clock.now_ms().saturating_add(LOOK.as_millis() as i64),
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
        if let Err(err) = self.restore(&sources, &stuck).await {
            tracing::warn!(error = %err, "an invoice's checks not read");
            return retry;
        }
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
                    // A check runs only while the duty holds (it lapses
                    // when a look outlasts the lease).
                    if !self.spool.holds(Duty::Reconcile).await {
                        return wake;
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
                                    kind: NO_KEYS.into(),
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

    /// Before a source's first automatic request: its back-off as its
    /// stored checks tell it (those of all its stuck invoices, read once
    /// and kept as their waits), so a restart neither asks a failing
    /// source at once nor starts its back-off again.
    async fn restore(
        &self,
        sources: &super::Sources,
        stuck: &[crate::spool::StuckInvoice],
    ) -> Result<(), SpoolError> {
        let unrestored: Vec<&String> = {
            let restored = self.restored.lock().unwrap_or_else(PoisonError::into_inner);
            sources
                .engines
                .keys()
                .filter(|name| !restored.contains(*name))
                .collect()
        };
        if unrestored.is_empty() {
            return Ok(());
        }
        let mut told: BTreeMap<&str, Vec<_>> = unrestored
            .iter()
            .map(|name| (name.as_str(), Vec::new()))
            .collect();
        for invoice in stuck {
            let Some(asked_of) = told.get_mut(invoice.source.as_str()) else {
                continue;
            };
            let checks = self.spool.checks(&invoice.source, &invoice.subject).await?;
            asked_of.extend(
                checks
                    .iter()
                    .filter_map(|check| asked(check).map(|asked| (check.at_ms, asked))),
            );
            let (checked, settled) = checked_since(&checks, invoice.since_ms);
            self.tracked().insert(
                (invoice.source.clone(), invoice.subject.clone()),
                Tracked {
                    since_ms: invoice.since_ms,
                    checked,
                    settled,
                },
            );
        }
        let mut restored = self.restored.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, asked) in told {
            let Some(engine) = sources.engines.get(name) else {
                continue;
            };
            let state = SourceState::replayed(asked, &engine.config.failure_backoff);
            if state.is_failing() {
                tracing::info!(source = %name, failures = state.failures(), "the source's failed checks read back: its back-off goes on");
            }
            // Requests made since start (on demand) are stored too, and
            // what this process saw of them is newer: it stands.
            let mut current = engine.state();
            if *current == SourceState::default() {
                *current = state;
            }
            restored.insert(name.to_owned());
        }
        Ok(())
    }

    /// Whether the invoice is still undecided (a webhook may have come
    /// since its mark was read).
    async fn still_stuck(&self, source: &str, subject: &str) -> Result<bool, SpoolError> {
        let now = self.spool.invoice_now(source, subject).await?;
        Ok(now.is_some_and(|invoice| !invoice.status.is_final()))
    }
}

pub(super) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    // As if held before the first look: nothing read yet to read again.
    let mut holding = true;
    loop {
        let wake = tokio::select! {
            wake = inner.look_if_held(&mut holding) => wake,
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
