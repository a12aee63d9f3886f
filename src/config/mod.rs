//! The `relay.toml` schema and its defaults (this file), loading
//! ([`load`]: the file, then each section on its own) and validation
//! ([`validate`]: ranges and the rules across fields).
//!
//! Loading is two steps: the TOML deserializer checks types, values and
//! unknown keys section by section (each source and subscription on its own;
//! a key whose value is wrong is reported and set aside, so the rest of its
//! section is still read and checked), then [`Config::problems`] checks the
//! rules across fields on what was read. Both kinds of problem are reported
//! together, in the order of the file, each with the file, line, column and
//! key: every problem at once, syntax errors aside (they stop the reading).

mod acme;
mod admin;
mod jetstream;
mod load;
mod locate;
mod problem;
mod reconcile;
mod spool;
mod target;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::delivery::Schedule;
use crate::providers::{GenericRules, InvoiceStatus, Provider};
pub use acme::{AcmeChallenge, AcmeConfig, LETS_ENCRYPT, LETS_ENCRYPT_STAGING};
pub use admin::{AdminConfig, AdminListen, AdminToken, AllowedTarget, Role};
pub use jetstream::{
    Durability, JetstreamConfig, JetstreamTls, LONGEST_ATTEMPT as JETSTREAM_LONGEST_ATTEMPT,
};
pub use load::ConfigError;
pub use locate::KeyPath;
pub use problem::Problem;
pub use reconcile::{
    NubefactHeaderForm, ReconcileAuth, ReconcileConfig, ReconcileKeys, Secret, DATIL_API,
    TUSFACTURAS_API,
};
pub use spool::{SledConfig, SpoolBackend, SpoolConfig, UnknownBackend};
pub use target::{host_name_problem, target_url, TargetUrlError};
pub use values::{
    parse_duration, parse_rate, parse_size, ByteSize, HeaderName, HumanDuration, Network, Rate,
};

/// The whole configuration, as read from `relay.toml`: each section is
/// deserialized on its own (see [`Config::parse`]); a missing one takes its
/// defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    pub forwarder: ForwarderConfig,
    pub sources: BTreeMap<String, SourceConfig>,
    pub subscriptions: Vec<SubscriptionConfig>,
    pub admin: AdminConfig,
    /// What was read but should be written otherwise (today: sled's keys
    /// spelt flat in `[spool]`), in the order of the file. They do not
    /// stop the load; [`Config::load`] logs each as a warning.
    pub warnings: Vec<Problem>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `false` serves plain HTTP, for use behind a TLS-terminating balancer.
    pub tls: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Generate (once, then reuse) a self-signed certificate under the spool's parent directory.
    pub self_signed: bool,
    pub max_body: ByteSize,
    /// Bound of the request body bytes held in memory by all requests
    /// together; past it new bodies wait briefly, then get 503.
    pub max_inflight_body: ByteSize,
    /// Time allowed for a request's headers to arrive (slowloris).
    pub header_timeout: HumanDuration,
    /// Time allowed for a request's body to arrive.
    pub body_timeout: HumanDuration,
    pub handshake_timeout: HumanDuration,
    /// A connection with no request under way for this long is closed.
    pub idle_timeout: HumanDuration,
    pub max_connections: usize,
    pub http2_max_streams: u32,
    /// On SIGTERM, how long requests under way may take to finish (then
    /// they are cut, unanswered): with `forwarder.shutdown_grace`, which
    /// runs alongside, it bounds a stop inside the unit's TimeoutStopSec.
    pub shutdown_grace: HumanDuration,
    /// Balancers (addresses or CIDR networks) whose `X-Forwarded-For` is
    /// believed: behind them, allowlists and rate limits see the client.
    pub trusted_proxies: Vec<Network>,
    /// `[server.acme]`: a certificate ordered and renewed by the relay.
    pub acme: Option<AcmeConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            tls: true,
            tls_cert: None,
            tls_key: None,
            self_signed: false,
            max_body: ByteSize(1 << 20),
            max_inflight_body: ByteSize(64 << 20),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            body_timeout: HumanDuration(Duration::from_secs(15)),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(30)),
            max_connections: 1024,
            http2_max_streams: 64,
            shutdown_grace: HumanDuration(Duration::from_secs(20)),
            trusted_proxies: Vec::new(),
            acme: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwarderConfig {
    /// Attempts in flight at once, across all subscriptions.
    pub max_in_flight: usize,
    /// On SIGTERM, how long attempts in flight may take to finish.
    pub shutdown_grace: HumanDuration,
    /// Failed attempts in a row after which a subscription is reported
    /// failing (the operational event `relay.subscription.failing`).
    pub failing_after: u32,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            max_in_flight: 256,
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
            failing_after: 5,
        }
    }
}

/// The source name of the relay's own operational events: no configured
/// source may take it, and only a subscription whose `events` name
/// `relay.` patterns receives what it sends (see `spool::routes`).
pub const RELAY_SOURCE: &str = "relay";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    Tusfacturas,
    Datil,
    Nubefact,
    Generic,
}

/// What a source answers for an authenticated body it cannot accept as a
/// notification (it is kept in quarantine either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// 422: the provider sees the rejection (and retries).
    #[default]
    Reject,
    /// 200: for a provider whose payload changed, so its retries do not run out.
    Accept,
}

/// What a subscription gets of a superseded notification: one that
/// arrived after a final status of its invoice and would move it back (an
/// `encolado` resend after `emitido`), so that an app that keeps the last
/// write does not regress the invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSuperseded {
    /// Sent as any other.
    Deliver,
    /// Sent with `x-relay-superseded: true`.
    #[default]
    Mark,
    /// Not sent: its delivery is recorded as purged at once.
    Skip,
}

impl OnSuperseded {
    pub fn as_str(self) -> &'static str {
        match self {
            OnSuperseded::Deliver => "deliver",
            OnSuperseded::Mark => "mark",
            OnSuperseded::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub provider: ProviderName,
    /// Secret last segment of the URL: `/hooks/{source}/{token}`.
    pub token: Option<String>,
    pub basic: Option<BasicAuth>,
    pub hmac: Option<HmacAuth>,
    /// Peer addresses or networks allowed to post (`"203.0.113.0/24"`, `"198.51.100.7"`).
    #[serde(default)]
    pub allow_ips: Vec<Network>,
    /// Requests per peer IP (IPv6 by its /64).
    pub rate: Option<Rate>,
    pub burst: Option<u32>,
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// Nothing from it for this long raises `relay.source.silent` (once,
    /// until it is heard again).
    pub expect_every: Option<HumanDuration>,
    /// An invoice left `queued` this long after its first queued
    /// notification, with no final status since, is stuck (raises
    /// `relay.invoice.stuck` once). Defaults per provider, see
    /// [`SourceConfig::stuck_after`].
    #[serde(rename = "stuck_after")]
    pub stuck_after_set: Option<HumanDuration>,
    // Rules of the `generic` provider.
    pub dedup_pointer: Option<String>,
    pub dedup_header: Option<HeaderName>,
    pub event_pointer: Option<String>,
    pub subject_pointer: Option<String>,
    pub event_type: Option<String>,
    /// `[sources.NAME.reconcile]` as written (see [`ReconcileKeys`]).
    #[serde(rename = "reconcile")]
    pub reconcile_keys: Option<ReconcileKeys>,
    /// The provider's query API, read from `reconcile_keys` with its
    /// secret files once the config's rules hold; `None` without one.
    #[serde(skip)]
    pub reconcile: Option<ReconcileConfig>,
}

impl SourceConfig {
    /// How long an invoice may stay `queued`: the configured value, or the
    /// provider's default (why each, in docs/admin.md, "Stuck invoices"):
    /// NubeFact boletas wait for the next daily summary and SUNAT's answer
    /// to it, so two days; a TusFacturas `encolado` and a Dátil receipt are
    /// decided within hours, and the providers retry for about 22 h, so a
    /// day. A generic source has no status to wait on: none.
    pub fn stuck_after(&self) -> Option<Duration> {
        const HOUR: u64 = 3600;
        self.stuck_after_set.map(|d| d.0).or(match self.provider {
            ProviderName::Nubefact => Some(Duration::from_secs(48 * HOUR)),
            ProviderName::Tusfacturas | ProviderName::Datil => Some(Duration::from_secs(24 * HOUR)),
            ProviderName::Generic => None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    pub header: HeaderName,
    pub secret: String,
    #[serde(default)]
    pub encoding: HmacEncoding,
    /// Text before the digest in the header value, e.g. `"sha256="`.
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacEncoding {
    #[default]
    Hex,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub name: String,
    pub url: String,
    /// Source names; all sources when absent.
    pub sources: Option<Vec<String>>,
    /// Event-type patterns with `*`; all events when absent.
    pub events: Option<Vec<String>>,
    /// The invoice statuses it takes (`["accepted", "rejected"]`); all
    /// when absent. The relay's own events are not held to it.
    pub statuses: Option<Vec<InvoiceStatus>>,
    /// What it gets of a notification that would move an invoice back
    /// from a final status.
    #[serde(default)]
    pub on_superseded: OnSuperseded,
    /// Standard Webhooks secret: `whsec_` + base64.
    pub secret: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_schedule")]
    pub schedule: Vec<HumanDuration>,
    #[serde(default = "default_timeout_first")]
    pub timeout_first: HumanDuration,
    #[serde(default = "default_timeout_retry")]
    pub timeout_retry: HumanDuration,
    #[serde(default = "default_sub_in_flight")]
    pub max_in_flight: usize,
    pub rate: Option<Rate>,
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// PEM file of extra CA certificates to trust for an https target.
    pub tls_ca: Option<PathBuf>,
    /// The secret a rotation replaced, still signed with until its time
    /// (Unix ms). Never in `relay.toml`: only API-created subscriptions
    /// rotate (the spool keeps it).
    #[serde(skip)]
    pub previous_secret: Option<PreviousSecret>,
}

/// A replaced secret and the end of its overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub secret: String,
    pub until_ms: i64,
}

fn default_schedule() -> Vec<HumanDuration> {
    [300, 1800, 3 * 3600, 6 * 3600, 12 * 3600]
        .into_iter()
        .map(|secs| HumanDuration(Duration::from_secs(secs)))
        .collect()
}
fn default_timeout_first() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}
fn default_timeout_retry() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_sub_in_flight() -> usize {
    8
}
fn default_jitter() -> f64 {
    0.1
}

impl Config {
    /// Where the self-signed certificate and its key are kept.
    pub fn self_signed_paths(&self) -> (PathBuf, PathBuf) {
        let dir = self
            .spool
            .sled
            .path
            .parent()
            .map_or_else(|| PathBuf::from("tls"), |p| p.join("tls"));
        (dir.join("self-signed.crt"), dir.join("self-signed.key"))
    }
}

// === impl ServerConfig ===

impl ServerConfig {
    /// The trusted proxies as networks.
    pub fn trusted_proxy_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies.iter().map(|n| n.0).collect()
    }
}

// === impl SourceConfig ===

impl SourceConfig {
    /// The allowlist as networks.
    pub fn allowed_networks(&self) -> Vec<ipnet::IpNet> {
        self.allow_ips.iter().map(|n| n.0).collect()
    }

    pub fn provider(&self) -> Provider {
        match self.provider {
            ProviderName::Tusfacturas => Provider::TusFacturas,
            ProviderName::Datil => Provider::Datil,
            ProviderName::Nubefact => Provider::NubeFact,
            ProviderName::Generic => Provider::Generic(GenericRules {
                dedup_pointer: self.dedup_pointer.clone(),
                dedup_header: self.dedup_header.as_ref().map(|h| h.0.clone()),
                event_pointer: self.event_pointer.clone(),
                subject_pointer: self.subject_pointer.clone(),
                default_event: self
                    .event_type
                    .clone()
                    .unwrap_or_else(|| "generic".to_owned()),
            }),
        }
    }
}

// === impl SubscriptionConfig ===

impl SubscriptionConfig {
    pub fn retry_schedule(&self) -> Result<Schedule, crate::delivery::ScheduleError> {
        Schedule::try_new(self.schedule.iter().map(|d| d.0).collect(), self.jitter)
    }

    /// Whether a notification from `source` with `event_type` and
    /// `status` goes to this subscription.
    pub fn matches(&self, source: &str, event_type: &str, status: InvoiceStatus) -> bool {
        filters_match(
            self.sources.as_deref(),
            self.events.as_deref(),
            source,
            event_type,
        ) && status_matches(self.statuses.as_deref(), status)
    }
}

/// Whether a subscription with this `statuses` filter takes a notification
/// with `status` (everything when absent).
pub fn status_matches(statuses: Option<&[InvoiceStatus]>, status: InvoiceStatus) -> bool {
    statuses.is_none_or(|wanted| wanted.contains(&status))
}

/// Whether a subscription with these filters takes a notification: its
/// source among `sources` and its event type matching one of `events`
/// (each filter taking everything when absent).
pub fn filters_match(
    sources: Option<&[String]>,
    events: Option<&[String]>,
    source: &str,
    event_type: &str,
) -> bool {
    let source_ok = sources.is_none_or(|names| names.iter().any(|n| n == source));
    let event_ok =
        events.is_none_or(|patterns| patterns.iter().any(|p| wildcard_match(p, event_type)));
    source_ok && event_ok
}

/// `*` matches any run of characters (including none); everything else is literal.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod reconcile_tests;
#[cfg(test)]
mod tests;
