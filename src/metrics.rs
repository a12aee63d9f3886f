//! The relay's Prometheus metrics: counters and histograms that ingress and
//! the forwarder update as they work, and gauges the admin listener sets
//! from in-memory state just before it renders a scrape (the oldest waiting
//! age costs two index seeks per subscription). Nothing here reads the
//! spool: a scrape costs the same whatever the backlog.
//!
//! [`history`] keeps the last hour a minute at a time for the admin
//! page's chart, fed from the same calls that count.
//!
//! Label values are only names from the config (sources, subscriptions) and
//! fixed words (outcomes, classes): never ids, subjects or anything a client
//! sent, so the number of series stays bounded.

pub mod history;

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::clock::Clock;
use crate::delivery::Outcome;
use crate::spool::StuckInvoice;

/// Label for requests whose path names no configured source.
pub const UNKNOWN_SOURCE: &str = "";

/// What became of one request to the ingress.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Received {
    accepted,
    duplicate,
    unauthorized,
    /// Authenticated, but not a notification of its provider (quarantined).
    invalid,
    rate_limited,
    spool_unavailable,
    /// The memory budget for bodies in flight was spent (503).
    busy,
    /// Any other refusal (unknown path, method, size, framing, timeout).
    refused,
}

impl Received {
    /// Every outcome; its `Debug` name is its label value.
    pub const ALL: [Received; 8] = [
        Received::accepted,
        Received::duplicate,
        Received::unauthorized,
        Received::invalid,
        Received::rate_limited,
        Received::spool_unavailable,
        Received::busy,
        Received::refused,
    ];
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum AttemptClass {
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    Timeout,
    Connect,
    Tls,
    Io,
}

impl EncodeLabelValue for AttemptClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            AttemptClass::Status2xx => "2xx",
            AttemptClass::Status3xx => "3xx",
            AttemptClass::Status4xx => "4xx",
            AttemptClass::Status5xx => "5xx",
            AttemptClass::Timeout => "timeout",
            AttemptClass::Connect => "connect",
            AttemptClass::Tls => "tls",
            AttemptClass::Io => "io",
        })
    }
}

impl AttemptClass {
    pub fn of(outcome: &Outcome) -> AttemptClass {
        match outcome {
            Outcome::Status { code, .. } => match code {
                200..=299 => AttemptClass::Status2xx,
                300..=399 => AttemptClass::Status3xx,
                400..=499 => AttemptClass::Status4xx,
                _ => AttemptClass::Status5xx,
            },
            Outcome::Timeout => AttemptClass::Timeout,
            Outcome::Connect => AttemptClass::Connect,
            Outcome::Tls => AttemptClass::Tls,
            Outcome::Io { .. } => AttemptClass::Io,
        }
    }
}

/// Where a delivery ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Ended {
    delivered,
    dead,
}

/// What became of one request to a provider's query API (`reconcile`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Reconciled {
    /// The provider said the invoice is final: a notification was made.
    Final,
    Pending,
    NotFound,
    Unauthorized,
    ProviderError,
    Unreadable,
    Timeout,
    Unreachable,
}

impl Reconciled {
    pub const ALL: [Reconciled; 8] = [
        Reconciled::Final,
        Reconciled::Pending,
        Reconciled::NotFound,
        Reconciled::Unauthorized,
        Reconciled::ProviderError,
        Reconciled::Unreadable,
        Reconciled::Timeout,
        Reconciled::Unreachable,
    ];

    /// The outcome of a failure of this kind (`AnswerError::kind`,
    /// `timeout`, `unreachable`); an unknown kind counts as unreadable.
    pub fn of_failure(kind: &str) -> Reconciled {
        match kind {
            "not_found" => Reconciled::NotFound,
            "unauthorized" => Reconciled::Unauthorized,
            "provider_error" => Reconciled::ProviderError,
            "timeout" => Reconciled::Timeout,
            "unreachable" => Reconciled::Unreachable,
            _ => Reconciled::Unreadable,
        }
    }

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reconciled::Final => "final",
            Reconciled::Pending => "pending",
            Reconciled::NotFound => "not_found",
            Reconciled::Unauthorized => "unauthorized",
            Reconciled::ProviderError => "provider_error",
            Reconciled::Unreadable => "unreadable",
            Reconciled::Timeout => "timeout",
            Reconciled::Unreachable => "unreachable",
        }
    }
}

impl EncodeLabelValue for Reconciled {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceReconciled {
    source: String,
    outcome: Reconciled,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceOutcome {
    source: String,
    outcome: Received,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabel {
    domain: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabel {
    subscription: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionClass {
    subscription: String,
    class: AttemptClass,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionEnded {
    subscription: String,
    outcome: Ended,
}

/// The state of the spool and the deliveries, read from memory at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub spool_bytes: u64,
    pub spool_writable: bool,
    pub flush_groups: u64,
    pub flushed_changes: u64,
    /// What the spool reported to the operational events and the events
    /// task could not take in time (its channel was full): events lost.
    pub event_reports_dropped: u64,
    /// Per subscription: (waiting, dead).
    pub deliveries: Vec<(String, u64, u64)>,
    /// Per subscription with something waiting: the oldest waiting
    /// delivery's age in seconds.
    pub oldest_waiting: Vec<(String, f64)>,
    pub quarantined: u64,
    pub notifications: u64,
    /// The configured sources: each has its received series from the first
    /// scrape, at zero, so `increase()` sees the first request after a
    /// start.
    pub sources: Vec<String>,
}

pub struct Metrics {
    registry: Registry,
    received: Family<SourceOutcome, Counter>,
    ingest_seconds: Family<SourceLabel, Histogram>,
    last_received: Family<SourceLabel, Gauge>,
    invoices_stuck: Family<SourceLabel, Gauge>,
    reconcile_requests: Family<SourceReconciled, Counter>,
    reconcile_waiting: Family<SourceLabel, Gauge>,
    /// The sources with `[reconcile]` the families have series for.
    reconcile_sources: std::sync::Mutex<Vec<String>>,
    /// Expiry of the ACME certificate served, per domain it names.
    certificate_expiry: Family<DomainLabel, Gauge>,
    /// The stuck invoices as the events task last found them.
    stuck: std::sync::Mutex<Vec<StuckInvoice>>,
    /// The sources `invoices_stuck` has a series for.
    stuck_watched: std::sync::Mutex<Vec<String>>,
    attempts: Family<SubscriptionClass, Counter>,
    attempt_seconds: Family<SubscriptionLabel, Histogram>,
    ended: Family<SubscriptionEnded, Counter>,
    end_to_end_seconds: Family<SubscriptionLabel, Histogram>,
    waiting: Family<SubscriptionLabel, Gauge>,
    dead: Family<SubscriptionLabel, Gauge>,
    oldest_waiting: Family<SubscriptionLabel, Gauge<f64, AtomicU64>>,
    quarantined: Gauge,
    notifications: Gauge,
    spool_bytes: Gauge,
    spool_writable: Gauge,
    flush_groups: Counter<u64, AtomicU64>,
    flushed_changes: Counter<u64, AtomicU64>,
    event_reports_dropped: Counter<u64, AtomicU64>,
    /// The last hour, a minute a bucket, timed by `clock`.
    history: std::sync::Mutex<history::History>,
    clock: Clock,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Seconds from 0.5 ms to about 65 s: an ingest is a flush (ms), an
/// attempt up to its timeout.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// Seconds from 10 ms to about 2 days: retries run for 22 h by default.
fn end_to_end_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 13))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics timed by the system clock.
    pub fn new() -> Metrics {
        Metrics::with_clock(Clock::system())
    }

    /// Metrics whose hour of history is timed by `clock`.
    pub fn with_clock(clock: Clock) -> Metrics {
        let mut registry = Registry::with_prefix("webhook_relay");
        let metrics = Metrics {
            received: Family::default(),
            ingest_seconds: Family::new_with_constructor(latency_histogram),
            last_received: Family::default(),
            invoices_stuck: Family::default(),
            reconcile_requests: Family::default(),
            reconcile_waiting: Family::default(),
            reconcile_sources: std::sync::Mutex::new(Vec::new()),
            certificate_expiry: Family::default(),
            stuck: std::sync::Mutex::new(Vec::new()),
            stuck_watched: std::sync::Mutex::new(Vec::new()),
            attempts: Family::default(),
            attempt_seconds: Family::new_with_constructor(latency_histogram),
            ended: Family::default(),
            end_to_end_seconds: Family::new_with_constructor(end_to_end_histogram),
            waiting: Family::default(),
            dead: Family::default(),
            oldest_waiting: Family::default(),
            quarantined: Gauge::default(),
            notifications: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_writable: Gauge::default(),
            flush_groups: Counter::default(),
            flushed_changes: Counter::default(),
            event_reports_dropped: Counter::default(),
            history: std::sync::Mutex::new(history::History::default()),
            clock,
            registry: Registry::default(),
        };
        registry.register(
            "notifications_received",
            "Requests to the ingress by source and what became of them",
            metrics.received.clone(),
        );
        registry.register(
            "ingest_duration_seconds",
            "From request to durable answer, for stored notifications",
            metrics.ingest_seconds.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the ACME certificate served for each domain expires (Unix time)",
            metrics.certificate_expiry.clone(),
        );
        registry.register(
            "last_received_timestamp_seconds",
            "When the last notification of each source was stored (Unix time)",
            metrics.last_received.clone(),
        );
        registry.register(
            "invoices_stuck",
            "Invoices left queued past their source's stuck_after",
            metrics.invoices_stuck.clone(),
        );
        registry.register(
            "reconcile_requests",
            "Requests to the providers' query APIs by source and what became of them",
            metrics.reconcile_requests.clone(),
        );
        registry.register(
            "reconcile_waiting",
            "Stuck invoices waiting for an automatic check with their provider (not given up)",
            metrics.reconcile_waiting.clone(),
        );
        registry.register(
            "attempts",
            "Delivery attempts by subscription and how they ended",
            metrics.attempts.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Duration of one delivery attempt",
            metrics.attempt_seconds.clone(),
        );
        registry.register(
            "deliveries",
            "Deliveries that ended, delivered or dead",
            metrics.ended.clone(),
        );
        registry.register(
            "delivery_end_to_end_seconds",
            "From the notification's receipt to its delivery",
            metrics.end_to_end_seconds.clone(),
        );
        registry.register(
            "deliveries_waiting",
            "Deliveries not yet final (first attempt or retry to come)",
            metrics.waiting.clone(),
        );
        registry.register(
            "deliveries_dead",
            "Dead deliveries, waiting for an admin",
            metrics.dead.clone(),
        );
        registry.register(
            "oldest_waiting_age_seconds",
            "Age of the oldest delivery not yet final (0 when none waits)",
            metrics.oldest_waiting.clone(),
        );
        registry.register(
            "quarantined",
            "Quarantined bodies kept",
            metrics.quarantined.clone(),
        );
        registry.register(
            "notifications_stored",
            "Notifications kept in the spool",
            metrics.notifications.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes the spool takes on disk",
            metrics.spool_bytes.clone(),
        );
        registry.register(
            "spool_writable",
            "1 while the spool takes new notifications, 0 while it refuses them (503)",
            metrics.spool_writable.clone(),
        );
        registry.register(
            "flush_groups",
            "Group commits flushed to disk",
            metrics.flush_groups.clone(),
        );
        registry.register(
            "flushed_changes",
            "Changes covered by group commits (divided by flush_groups: the mean group size)",
            metrics.flushed_changes.clone(),
        );
        registry.register(
            "event_reports_dropped",
            "Spool reports the operational events task could not take in time (its queue was full): relay.* events that were not raised",
            metrics.event_reports_dropped.clone(),
        );
        // A gauge set to 1 rather than an OpenMetrics `info`: the classic
        // text parser (promtool, older Prometheus) knows no `info` type.
        let build = Family::<BuildLabel, Gauge>::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "The relay's version", build);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// One request to the ingress ended. `source` must be a configured
    /// source's name, or [`UNKNOWN_SOURCE`].
    pub fn received(&self, source: &str, outcome: Received) {
        if outcome == Received::accepted {
            self.record(|history, now_ms| history.received(now_ms));
        }
        self.received
            .get_or_create(&SourceOutcome {
                source: source.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A notification was stored (or recognised as a duplicate) after `seconds`.
    pub fn stored(&self, source: &str, seconds: f64, now_ms: i64) {
        let label = SourceLabel {
            source: source.to_owned(),
        };
        self.ingest_seconds.get_or_create(&label).observe(seconds);
        self.last_received
            .get_or_create(&label)
            .set(now_ms.div_euclid(1000));
    }

    /// Requests from `source` since the relay started, by what became of
    /// them (outcomes that never happened left out).
    pub fn received_by_outcome(&self, source: &str) -> Vec<(String, u64)> {
        Received::ALL
            .into_iter()
            .filter_map(|outcome| {
                let label = SourceOutcome {
                    source: source.to_owned(),
                    outcome,
                };
                let count = self.received.get(&label)?.get();
                Some((format!("{outcome:?}"), count))
            })
            .collect()
    }

    /// When the last notification of `source` was stored (Unix ms, to the second).
    pub fn last_received_ms(&self, source: &str) -> Option<i64> {
        let label = SourceLabel {
            source: source.to_owned(),
        };
        self.last_received
            .get(&label)
            .map(|gauge| gauge.get().saturating_mul(1000))
    }

    /// The stuck invoices now, of the `watched` sources (each gets its
    /// count, 0 when none is stuck, so the gauge goes down as they clear;
    /// a source no longer watched loses its series).
    /// The ACME certificate now served: its domains' expiry.
    pub fn set_certificate_expiry(&self, domains: &[String], not_after_ms: i64) {
        self.certificate_expiry.clear();
        for domain in domains {
            self.certificate_expiry
                .get_or_create(&DomainLabel {
                    domain: domain.clone(),
                })
                .set(not_after_ms / 1000);
        }
    }

    pub fn set_stuck(&self, stuck: Vec<StuckInvoice>, watched: &[String]) {
        if let Ok(mut before) = self.stuck_watched.lock() {
            for source in before.iter().filter(|s| !watched.contains(s)) {
                self.invoices_stuck.remove(&SourceLabel {
                    source: source.clone(),
                });
            }
            *before = watched.to_vec();
        }
        for source in watched {
            let count = stuck.iter().filter(|s| s.source == *source).count();
            self.invoices_stuck
                .get_or_create(&SourceLabel {
                    source: source.clone(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        if let Ok(mut list) = self.stuck.lock() {
            *list = stuck;
        }
    }

    /// The sources with `[reconcile]` now: each has its series from the
    /// first scrape, at zero; a source no longer reconciled loses them.
    pub fn set_reconcile_sources(&self, sources: &[String]) {
        let Ok(mut before) = self.reconcile_sources.lock() else {
            return;
        };
        for source in before.iter().filter(|s| !sources.contains(s)) {
            for outcome in Reconciled::ALL {
                self.reconcile_requests.remove(&SourceReconciled {
                    source: source.clone(),
                    outcome,
                });
            }
            self.reconcile_waiting.remove(&SourceLabel {
                source: source.clone(),
            });
        }
        for source in sources {
            for outcome in Reconciled::ALL {
                drop(self.reconcile_requests.get_or_create(&SourceReconciled {
                    source: source.clone(),
                    outcome,
                }));
            }
            drop(self.reconcile_waiting.get_or_create(&SourceLabel {
                source: source.clone(),
            }));
        }
        *before = sources.to_vec();
    }

    /// One request to `source`'s query API ended.
    pub fn reconcile_request(&self, source: &str, outcome: Reconciled) {
        self.reconcile_requests
            .get_or_create(&SourceReconciled {
                source: source.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Requests to `source`'s query API so far that ended so.
    pub fn reconcile_requests(&self, source: &str, outcome: Reconciled) -> u64 {
        self.reconcile_requests
            .get(&SourceReconciled {
                source: source.to_owned(),
                outcome,
            })
            .map_or(0, |counter| counter.get())
    }

    /// Stuck invoices of `source` waiting for an automatic check.
    pub fn set_reconcile_waiting(&self, source: &str, waiting: usize) {
        self.reconcile_waiting
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// The stuck invoices, by (source, subject).
    pub fn stuck_invoices(&self) -> Vec<StuckInvoice> {
        self.stuck
            .lock()
            .map(|list| list.clone())
            .unwrap_or_default()
    }

    pub fn attempt(&self, subscription: &str, outcome: &Outcome, seconds: f64) {
        self.attempts
            .get_or_create(&SubscriptionClass {
                subscription: subscription.to_owned(),
                class: AttemptClass::of(outcome),
            })
            .inc();
        self.attempt_seconds
            .get_or_create(&SubscriptionLabel {
                subscription: subscription.to_owned(),
            })
            .observe(seconds);
    }

    /// A delivery ended; `since_receipt` for a delivered one.
    pub fn ended(&self, subscription: &str, outcome: Ended, since_receipt: Option<f64>) {
        if outcome == Ended::delivered {
            self.record(|history, now_ms| history.delivered(now_ms));
        }
        self.ended
            .get_or_create(&SubscriptionEnded {
                subscription: subscription.to_owned(),
                outcome,
            })
            .inc();
        if let Some(seconds) = since_receipt {
            self.end_to_end_seconds
                .get_or_create(&SubscriptionLabel {
                    subscription: subscription.to_owned(),
                })
                .observe(seconds);
        }
    }

    fn record(&self, change: impl FnOnce(&mut history::History, i64)) {
        let now_ms = self.clock.now_ms();
        if let Ok(mut history) = self.history.lock() {
            change(&mut history, now_ms);
        }
    }

    /// The age of the oldest waiting delivery of all subscriptions, now
    /// (0 when none waits), for the hour's chart.
    pub fn sample_oldest_waiting(&self, age_seconds: f64) {
        self.record(|history, now_ms| history.sample_oldest_waiting(now_ms, age_seconds));
    }

    /// The last hour, a minute each, oldest first.
    pub fn last_hour(&self) -> Vec<history::Minute> {
        let now_ms = self.clock.now_ms();
        self.history
            .lock()
            .map(|history| history.last_hour(now_ms))
            .unwrap_or_default()
    }

    /// The text exposition, with the gauges set from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let oldest = snapshot
            .oldest_waiting
            .iter()
            .map(|(_, age)| *age)
            .fold(0.0, f64::max);
        self.sample_oldest_waiting(oldest);
        let to_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.spool_bytes.set(to_gauge(snapshot.spool_bytes));
        self.spool_writable.set(i64::from(snapshot.spool_writable));
        self.quarantined.set(to_gauge(snapshot.quarantined));
        self.notifications.set(to_gauge(snapshot.notifications));
        // Counters that mirror the spool's own running totals.
        let catch_up = |counter: &Counter<u64, AtomicU64>, total: u64| {
            let behind = total.saturating_sub(counter.get());
            if behind > 0 {
                counter.inc_by(behind);
            }
        };
        catch_up(&self.flush_groups, snapshot.flush_groups);
        catch_up(&self.flushed_changes, snapshot.flushed_changes);
        catch_up(&self.event_reports_dropped, snapshot.event_reports_dropped);
        // Subscriptions that went away (a reload) leave no stale series.
        self.waiting.clear();
        self.dead.clear();
        self.oldest_waiting.clear();
        for source in &snapshot.sources {
            for outcome in Received::ALL {
                drop(self.received.get_or_create(&SourceOutcome {
                    source: source.clone(),
                    outcome,
                }));
            }
        }
        for (subscription, waiting, dead) in &snapshot.deliveries {
            // At zero from the first scrape: the first dead delivery after
            // a start is an increase, not a new series.
            for outcome in [Ended::delivered, Ended::dead] {
                drop(self.ended.get_or_create(&SubscriptionEnded {
                    subscription: subscription.clone(),
                    outcome,
                }));
            }
            let label = SubscriptionLabel {
                subscription: subscription.clone(),
            };
            self.waiting.get_or_create(&label).set(to_gauge(*waiting));
            self.dead.get_or_create(&label).set(to_gauge(*dead));
            self.oldest_waiting.get_or_create(&label).set(0.0);
        }
        for (subscription, age) in &snapshot.oldest_waiting {
            let label = SubscriptionLabel {
                subscription: subscription.clone(),
            };
            self.oldest_waiting.get_or_create(&label).set(*age);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for
/// scrapers that do not ask for OpenMetrics (and `promtool check
/// metrics`): there a counter's HELP and TYPE name its `_total` samples,
/// and there is no `# EOF`.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 256);
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match meta {
            Some((prefix, rest)) => {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(name) {
                    let _ = writeln!(out, "{prefix}{name}_total{}", &rest[name.len()..]);
                } else {
                    let _ = writeln!(out, "{line}");
                }
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_has_the_families_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.received("tf", Received::accepted);
        metrics.received(UNKNOWN_SOURCE, Received::refused);
        metrics.stored("tf", 0.002, 1_700_000_000_500);
        metrics.attempt(
            "billing",
            &Outcome::Status {
                code: 503,
                retry_after_ms: None,
            },
            0.01,
        );
        metrics.ended("billing", Ended::dead, None);
        let text = metrics.render(&Snapshot {
            spool_bytes: 4096,
            spool_writable: true,
            flush_groups: 3,
            flushed_changes: 7,
            event_reports_dropped: 2,
            deliveries: vec![("billing".into(), 2, 1)],
            oldest_waiting: vec![("billing".into(), 1.5)],
            quarantined: 0,
            notifications: 3,
            sources: vec!["tf".into()],
        });
        for line in [
            "webhook_relay_notifications_received_total{source=\"tf\",outcome=\"accepted\"} 1",
            "webhook_relay_oldest_waiting_age_seconds{subscription=\"billing\"} 1.5",
            "webhook_relay_notifications_received_total{source=\"\",outcome=\"refused\"} 1",
            "webhook_relay_attempts_total{subscription=\"billing\",class=\"5xx\"} 1",
            "webhook_relay_deliveries_total{subscription=\"billing\",outcome=\"dead\"} 1",
            "webhook_relay_deliveries_waiting{subscription=\"billing\"} 2",
            "webhook_relay_last_received_timestamp_seconds{source=\"tf\"} 1700000000",
            "webhook_relay_flushed_changes_total 7",
            "webhook_relay_event_reports_dropped_total 2",
            "webhook_relay_spool_writable 1",
            "webhook_relay_build_info{version=",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        // A second render does not count the spool's totals twice.
        let again = metrics.render(&Snapshot {
            flush_groups: 3,
            flushed_changes: 7,
            ..Snapshot::default()
        });
        assert!(again.contains("webhook_relay_flushed_changes_total 7"));
        assert!(!again.contains("deliveries_waiting{"));
    }

    #[test]
    fn configured_sources_and_subscriptions_have_their_series_at_zero_before_any_traffic() {
        let metrics = Metrics::new();
        let text = metrics.render(&Snapshot {
            sources: vec!["tf".into()],
            deliveries: vec![("billing".into(), 0, 0)],
            ..Snapshot::default()
        });
        for outcome in Received::ALL {
            let line = format!(
                "webhook_relay_notifications_received_total{{source=\"tf\",outcome=\"{outcome:?}\"}} 0"
            );
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        for outcome in ["delivered", "dead"] {
            let line = format!(
                "webhook_relay_deliveries_total{{subscription=\"billing\",outcome=\"{outcome}\"}} 0"
            );
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
    }

    /// The chart's hour on a paused clock: stored notifications (not the
    /// refused or duplicate ones) and delivered deliveries (not the dead)
    /// land in the minute the clock says, and a scrape samples the oldest
    /// waiting age.
    #[tokio::test(start_paused = true)]
    async fn the_hour_is_counted_by_the_injected_clock_a_minute_a_bucket() {
        let clock = Clock::following_tokio();
        let metrics = Metrics::with_clock(clock);
        // To the start of the next minute, so what follows cannot straddle one.
        let into_minute = u64::try_from(clock.now_ms().rem_euclid(60_000)).unwrap();
        tokio::time::advance(std::time::Duration::from_millis(60_000 - into_minute)).await;
        metrics.received("tf", Received::accepted);
        metrics.received("tf", Received::accepted);
        metrics.received("tf", Received::duplicate);
        metrics.received("tf", Received::unauthorized);
        metrics.ended("billing", Ended::delivered, Some(0.1));
        metrics.ended("billing", Ended::dead, None);
        metrics.render(&Snapshot {
            oldest_waiting: vec![("billing".into(), 7.5), ("erp".into(), 90.0)],
            ..Snapshot::default()
        });
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        metrics.ended("billing", Ended::delivered, Some(0.1));
        let hour = metrics.last_hour();
        assert_eq!(hour.len(), history::MINUTES);
        let (before, now) = (hour[history::MINUTES - 2], hour[history::MINUTES - 1]);
        assert_eq!((before.received, before.delivered), (2, 1));
        assert_eq!(before.oldest_waiting_seconds, Some(90.0));
        assert_eq!((now.received, now.delivered), (0, 1));
        assert_eq!(now.start_ms - before.start_ms, 60_000);
        // An hour later, all of it has left the chart.
        tokio::time::advance(std::time::Duration::from_secs(3600)).await;
        assert!(metrics
            .last_hour()
            .iter()
            .all(|m| m.received == 0 && m.delivered == 0));
    }

    #[test]
    fn reconciled_sources_have_their_series_from_the_start_and_lose_them_when_gone() {
        let metrics = Metrics::new();
        metrics.set_reconcile_sources(&["nube".into(), "tus".into()]);
        metrics.reconcile_request("nube", Reconciled::Final);
        metrics.reconcile_request("nube", Reconciled::of_failure("unauthorized"));
        metrics.set_reconcile_waiting("nube", 3);
        let text = metrics.render(&Snapshot::default());
        for line in [
            "webhook_relay_reconcile_requests_total{source=\"nube\",outcome=\"final\"} 1",
            "webhook_relay_reconcile_requests_total{source=\"nube\",outcome=\"unauthorized\"} 1",
            "webhook_relay_reconcile_requests_total{source=\"tus\",outcome=\"timeout\"} 0",
            "webhook_relay_reconcile_waiting{source=\"nube\"} 3",
            "webhook_relay_reconcile_waiting{source=\"tus\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert_eq!(metrics.reconcile_requests("nube", Reconciled::Final), 1);
        metrics.set_reconcile_sources(&["nube".into()]);
        let text = metrics.render(&Snapshot::default());
        assert!(!text.contains("source=\"tus\""), "{text}");
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples() {
        let metrics = Metrics::new();
        metrics.received("tf", Received::accepted);
        let classic = classic_text(&metrics.render(&Snapshot::default()));
        assert!(classic.contains("# TYPE webhook_relay_notifications_received_total counter\n"));
        assert!(classic.contains("# HELP webhook_relay_notifications_received_total Requests"));
        assert!(classic.contains("# TYPE webhook_relay_spool_bytes gauge\n"));
        assert!(!classic.contains("# EOF"));
    }
}
