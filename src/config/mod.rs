//! The `relay.toml` schema, its defaults, and its validation.
//!
//! Loading is two steps: the TOML deserializer checks types and unknown keys,
//! section by section (each source and subscription on its own, so one bad
//! section does not hide the next; its errors carry a span), then
//! [`Config::problems`] checks the rules across fields. Both kinds of error
//! are reported with the file, line, column and key; every problem is listed,
//! not just the first.

mod locate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::delivery::Schedule;
use crate::providers::{GenericRules, Provider};
use crate::signing::SigningKey;
pub use locate::KeyPath;
pub use values::{parse_duration, parse_rate, parse_size, ByteSize, HumanDuration, Rate};

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
    /// Balancers (addresses or CIDR networks) whose `X-Forwarded-For` is
    /// believed: behind them, allowlists and rate limits see the client.
    pub trusted_proxies: Vec<String>,
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
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub path: PathBuf,
    /// How long a provider's resend of the same notification is recognised.
    pub dedup_window: HumanDuration,
    /// Bound of sled's page cache.
    pub cache_capacity: ByteSize,
    /// Follow each group flush with an fdatasync of the database file, so an
    /// acknowledged notification survives a power cut, not only a crash.
    pub sync_data: bool,
    /// Delivered notifications (with their deliveries) and quarantined
    /// bodies older than this are removed.
    pub retention: HumanDuration,
    /// Dead deliveries are kept until replayed or purged; with this set,
    /// a notification whose deliveries are all delivered or dead for this
    /// long is removed too.
    pub dead_retention: Option<HumanDuration>,
    /// Space kept free on the spool's filesystem: below it, new
    /// notifications get 503 until there is room again (0: no guard).
    pub min_free: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: PathBuf::from("data/spool"),
            dedup_window: HumanDuration(Duration::from_secs(72 * 3600)),
            cache_capacity: ByteSize(16 << 20),
            sync_data: true,
            retention: HumanDuration(Duration::from_secs(30 * 24 * 3600)),
            dead_retention: None,
            min_free: ByteSize(64 << 20),
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
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            max_in_flight: 256,
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
        }
    }
}

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
    pub allow_ips: Vec<String>,
    /// Requests per peer IP (IPv6 by its /64).
    pub rate: Option<Rate>,
    pub burst: Option<u32>,
    #[serde(default)]
    pub on_invalid: OnInvalid,
    // Rules of the `generic` provider.
    pub dedup_pointer: Option<String>,
    pub dedup_header: Option<String>,
    pub event_pointer: Option<String>,
    pub subject_pointer: Option<String>,
    pub event_type: Option<String>,
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
    pub header: String,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub name: String,
    pub url: String,
    /// Source names; all sources when absent.
    pub sources: Option<Vec<String>>,
    /// Event-type patterns with `*`; all events when absent.
    pub events: Option<Vec<String>>,
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

/// One thing wrong with the configuration, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

struct Problems<'a>(&'a Path, &'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.0.display())?;
            if let Some(line) = problem.line {
                write!(f, ":{line}:{}", problem.column.unwrap_or(1))?;
            }
            if problem.key.is_empty() {
                write!(f, ": {}", problem.message)?;
            } else {
                write!(f, ": `{}`: {}", problem.key, problem.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it
    /// are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let config = Config::deserialize_sections(text)?;
        let problems: Vec<Problem> = config
            .problems()
            .into_iter()
            .map(|(key, message)| {
                let at = locate::locate(text, &key);
                Problem {
                    key: key.to_string(),
                    line: at.map(|p| p.line),
                    column: at.map(|p| p.column),
                    message,
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.spool.path);
        self.server.tls_cert.as_mut().map(resolve);
        self.server.tls_key.as_mut().map(resolve);
        for sub in &mut self.subscriptions {
            sub.tls_ca.as_mut().map(resolve);
        }
    }

    /// Where the self-signed certificate and its key are kept.
    pub fn self_signed_paths(&self) -> (PathBuf, PathBuf) {
        let dir = self
            .spool
            .path
            .parent()
            .map_or_else(|| PathBuf::from("tls"), |p| p.join("tls"));
        (dir.join("self-signed.crt"), dir.join("self-signed.key"))
    }

    /// Every rule across fields that the types alone cannot express.
    pub fn problems(&self) -> Vec<(KeyPath, String)> {
        let mut problems = Vec::new();
        self.server
            .check(&KeyPath::default().key("server"), &mut problems);
        check_positive(
            &mut problems,
            KeyPath::default().key("spool").key("dedup_window"),
            self.spool.dedup_window,
        );
        if self.spool.retention.0 < self.spool.dedup_window.0 {
            problems.push((
                KeyPath::default().key("spool").key("retention"),
                format!(
                    "must be at least dedup_window ({}): a provider's resend must find the notification it repeats",
                    humantime::format_duration(self.spool.dedup_window.0)
                ),
            ));
        }
        if let Some(dead) = self.spool.dead_retention {
            check_positive(
                &mut problems,
                KeyPath::default().key("spool").key("dead_retention"),
                dead,
            );
        }
        if self.forwarder.max_in_flight == 0 {
            problems.push((
                KeyPath::default().key("forwarder").key("max_in_flight"),
                "must be at least 1".into(),
            ));
        }
        let sources = KeyPath::default().key("sources");
        for (name, source) in &self.sources {
            let at = sources.key(name);
            if !is_name(name) {
                problems.push((
                    at.clone(),
                    format!("source name {name:?} may use only a-z, 0-9, '-' and '_'"),
                ));
            }
            source.check(&at, &mut problems);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, sub) in self.subscriptions.iter().enumerate() {
            let at = KeyPath::default().key("subscriptions").index(i);
            if !seen.insert(sub.name.as_str()) {
                problems.push((
                    at.key("name"),
                    format!("subscription name {:?} is used twice", sub.name),
                ));
            }
            sub.check(&at, self, &mut problems);
        }
        problems
    }
}

impl Config {
    /// Deserializes each section on its own (each source and subscription
    /// too), so that a type error or an unknown key in one does not hide
    /// those in the others: every such problem is listed.
    fn deserialize_sections(text: &str) -> Result<Config, Vec<Problem>> {
        use toml::de::{DeTable, DeValue};

        let (root, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            return Err(syntax.iter().map(|e| parse_problem(text, e)).collect());
        }
        let mut problems = Vec::new();
        let mut config = Config {
            server: ServerConfig::default(),
            spool: SpoolConfig::default(),
            forwarder: ForwarderConfig::default(),
            sources: BTreeMap::new(),
            subscriptions: Vec::new(),
        };
        for (key, value) in root.into_inner() {
            match key.get_ref().as_ref() {
                "server" => config.server = section(text, value, &mut problems).unwrap_or_default(),
                "spool" => config.spool = section(text, value, &mut problems).unwrap_or_default(),
                "forwarder" => {
                    config.forwarder = section(text, value, &mut problems).unwrap_or_default()
                }
                "sources" => match value.into_inner() {
                    DeValue::Table(sources) => {
                        for (name, source) in sources {
                            if let Some(source) = section(text, source, &mut problems) {
                                config.sources.insert(name.into_inner().into_owned(), source);
                            }
                        }
                    }
                    _ => problems.push(problem_at(text, key.span(), "must be a table of sources")),
                },
                "subscriptions" => match value.into_inner() {
                    DeValue::Array(subscriptions) => {
                        for subscription in subscriptions {
                            if let Some(subscription) = section(text, subscription, &mut problems) {
                                config.subscriptions.push(subscription);
                            }
                        }
                    }
                    _ => problems.push(problem_at(
                        text,
                        key.span(),
                        "must be an array of tables ([[subscriptions]])",
                    )),
                },
                other => problems.push(problem_at(
                    text,
                    key.span(),
                    &format!(
                        "unknown key `{other}`, expected one of the sections `server`, `spool`, `forwarder`, `sources`, `subscriptions`"
                    ),
                )),
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            // In the order of the file, whatever order the sections came in.
            problems.sort_by_key(|p| (p.line, p.column));
            Err(problems)
        }
    }
}

/// One section deserialized from its spanned value; its error, located, goes to `problems`.
fn section<T: serde::de::DeserializeOwned>(
    text: &str,
    value: toml::Spanned<toml::de::DeValue<'_>>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match T::deserialize(toml::de::ValueDeserializer::from(value)) {
        Ok(section) => Some(section),
        Err(err) => {
            problems.push(parse_problem(text, &err));
            None
        }
    }
}

/// A problem found by hand at `span` of the text (not by the deserializer).
fn problem_at(text: &str, span: std::ops::Range<usize>, message: &str) -> Problem {
    let at = locate::position_of(text, span.start);
    Problem {
        key: locate::key_at(text, span.start).to_string(),
        line: Some(at.line),
        column: Some(at.column),
        message: message.to_owned(),
    }
}

fn parse_problem(text: &str, err: &toml::de::Error) -> Problem {
    let span = err.span();
    let at = span.as_ref().map(|s| locate::position_of(text, s.start));
    let key = span
        .map(|s| locate::key_at(text, s.start).to_string())
        .unwrap_or_default();
    Problem {
        key,
        line: at.map(|p| p.line),
        column: at.map(|p| p.column),
        message: err.message().trim().to_owned(),
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_positive(problems: &mut Vec<(KeyPath, String)>, at: KeyPath, value: HumanDuration) {
    if value.0.is_zero() {
        problems.push((at, "must be longer than zero".into()));
    }
}

// === impl ServerConfig ===

impl ServerConfig {
    fn check(&self, at: &KeyPath, problems: &mut Vec<(KeyPath, String)>) {
        let has_files = self.tls_cert.is_some() || self.tls_key.is_some();
        if !self.tls && (has_files || self.self_signed) {
            problems.push((
                at.key("tls"),
                "tls = false cannot be combined with tls_cert, tls_key or self_signed".into(),
            ));
        }
        if self.tls && self.self_signed && has_files {
            problems.push((
                at.key("self_signed"),
                "choose either self_signed = true or tls_cert + tls_key".into(),
            ));
        }
        if self.tls && !self.self_signed && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            let missing = if self.tls_cert.is_none() {
                "tls_cert"
            } else {
                "tls_key"
            };
            problems.push((
                at.key(missing),
                "TLS needs tls_cert and tls_key, or self_signed = true, or tls = false behind a TLS-terminating balancer".into(),
            ));
        }
        if self.max_body.0 == 0 {
            problems.push((at.key("max_body"), "must be at least 1 byte".into()));
        }
        if self.max_inflight_body.0 < self.max_body.0 {
            problems.push((
                at.key("max_inflight_body"),
                "must be at least max_body".into(),
            ));
        }
        if self.max_inflight_body.0 > u64::from(u32::MAX) {
            problems.push((at.key("max_inflight_body"), "must be below 4GiB".into()));
        }
        for (key, value) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            check_positive(problems, at.key(key), value);
        }
        if self.max_connections == 0 {
            problems.push((at.key("max_connections"), "must be at least 1".into()));
        }
        check_networks(problems, at.key("trusted_proxies"), &self.trusted_proxies);
    }

    /// The trusted proxies as networks (validated by [`Config::problems`]).
    pub fn trusted_proxy_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|s| parse_net(s))
            .collect()
    }
}

fn check_networks(problems: &mut Vec<(KeyPath, String)>, at: KeyPath, entries: &[String]) {
    for (i, entry) in entries.iter().enumerate() {
        if parse_net(entry).is_none() {
            problems.push((
                at.index(i),
                format!("{entry:?} is not an IP address or CIDR network"),
            ));
        }
    }
}

// === impl SourceConfig ===

impl SourceConfig {
    fn check(&self, at: &KeyPath, problems: &mut Vec<(KeyPath, String)>) {
        if let Some(token) = &self.token {
            if token.len() < 16
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
            {
                problems.push((
                    at.key("token"),
                    "token must be at least 16 characters of A-Z, a-z, 0-9, '-', '_', '.', '~'"
                        .into(),
                ));
            }
        }
        if self.token.is_none()
            && self.basic.is_none()
            && self.hmac.is_none()
            && self.allow_ips.is_empty()
        {
            problems.push((
                at.clone(),
                "source has no authentication: set token, basic, hmac or allow_ips".into(),
            ));
        }
        if let Some(hmac) = &self.hmac {
            if hmac.secret.len() < 16 {
                problems.push((
                    at.key("hmac").key("secret"),
                    "must be at least 16 characters".into(),
                ));
            }
            if http::HeaderName::from_bytes(hmac.header.as_bytes()).is_err() {
                problems.push((
                    at.key("hmac").key("header"),
                    format!("{:?} is not a valid header name", hmac.header),
                ));
            }
        }
        check_networks(problems, at.key("allow_ips"), &self.allow_ips);
        if self.burst == Some(0) {
            problems.push((at.key("burst"), "must be at least 1".into()));
        }
        if self.burst.is_some() && self.rate.is_none() {
            problems.push((at.key("burst"), "burst needs a rate".into()));
        }
        let generic_keys = [
            ("dedup_pointer", &self.dedup_pointer),
            ("dedup_header", &self.dedup_header),
            ("event_pointer", &self.event_pointer),
            ("subject_pointer", &self.subject_pointer),
            ("event_type", &self.event_type),
        ];
        for (key, value) in generic_keys {
            let Some(value) = value else { continue };
            if self.provider != ProviderName::Generic {
                problems.push((at.key(key), "only a generic source takes this key".into()));
            } else if key.ends_with("pointer") && !value.starts_with('/') {
                problems.push((
                    at.key(key),
                    format!("{value:?} is not a JSON pointer (it starts with '/')"),
                ));
            }
        }
        if let Some(header) = &self.dedup_header {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                problems.push((
                    at.key("dedup_header"),
                    format!("{header:?} is not a valid header name"),
                ));
            }
        }
    }

    /// The allowlist as networks (validated by [`Config::problems`]).
    pub fn allowed_networks(&self) -> Vec<ipnet::IpNet> {
        self.allow_ips.iter().filter_map(|s| parse_net(s)).collect()
    }

    pub fn provider(&self) -> Provider {
        match self.provider {
            ProviderName::Tusfacturas => Provider::TusFacturas,
            ProviderName::Datil => Provider::Datil,
            ProviderName::Nubefact => Provider::NubeFact,
            ProviderName::Generic => Provider::Generic(GenericRules {
                dedup_pointer: self.dedup_pointer.clone(),
                dedup_header: self.dedup_header.clone(),
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

fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

// === impl SubscriptionConfig ===

impl SubscriptionConfig {
    fn check(&self, at: &KeyPath, config: &Config, problems: &mut Vec<(KeyPath, String)>) {
        if !is_name(&self.name) {
            problems.push((
                at.key("name"),
                format!("{:?} may use only a-z, 0-9, '-' and '_'", self.name),
            ));
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => problems.push((
                at.key("url"),
                format!("{:?} is not an http or https URL", self.url),
            )),
            Err(err) => {
                problems.push((at.key("url"), format!("{:?} is not a URL: {err}", self.url)))
            }
        }
        for (i, source) in self.sources.iter().flatten().enumerate() {
            if !config.sources.contains_key(source) {
                problems.push((
                    at.key("sources").index(i),
                    format!("no source is named {source:?}"),
                ));
            }
        }
        for (i, pattern) in self.events.iter().flatten().enumerate() {
            if pattern.is_empty() {
                problems.push((
                    at.key("events").index(i),
                    "an event pattern cannot be empty".into(),
                ));
            }
        }
        if let Err(err) = SigningKey::from_secret(&self.secret) {
            problems.push((
                at.key("secret"),
                format!("{err} (webhook-relay gen-secret prints a new one)"),
            ));
        }
        for (name, value) in &self.headers {
            let valid_name = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            if !valid_name || http::HeaderValue::from_str(value).is_err() {
                problems.push((
                    at.key("headers").key(name),
                    "not a valid header name and value".into(),
                ));
            }
        }
        if let Err(err) = self.retry_schedule() {
            problems.push((at.key("schedule"), err.to_string()));
        }
        check_positive(problems, at.key("timeout_first"), self.timeout_first);
        check_positive(problems, at.key("timeout_retry"), self.timeout_retry);
        if self.max_in_flight == 0 {
            problems.push((at.key("max_in_flight"), "must be at least 1".into()));
        }
    }

    pub fn retry_schedule(&self) -> Result<Schedule, crate::delivery::ScheduleError> {
        Schedule::try_new(self.schedule.iter().map(|d| d.0).collect(), self.jitter)
    }

    /// Whether a notification from `source` with `event_type` goes to this subscription.
    pub fn matches(&self, source: &str, event_type: &str) -> bool {
        filters_match(
            self.sources.as_deref(),
            self.events.as_deref(),
            source,
            event_type,
        )
    }
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
mod tests;
