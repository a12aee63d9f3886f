//! The rules the types alone cannot express: ranges (a duration that parses
//! but is absurd for its key, such as a retry wait of a year), rules across
//! fields, a config with nothing to receive, secrets left as the packaged
//! placeholder; and [`Config::example_secrets`], which `serve` uses to
//! refuse example secrets (known by their `example-` marker) on a public
//! address.

use std::time::Duration;

use super::load::SetAside;
use super::locate::KeyPath;
use super::{
    Config, HumanDuration, ProviderName, ServerConfig, SourceConfig, SpoolBackend,
    SubscriptionConfig,
};
use crate::signing::SigningKey;

/// A problem found by the rules: where, and what.
type Found = Vec<(KeyPath, String)>;

/// What the packaged `relay.toml` holds in place of each secret: the relay
/// refuses it, naming each key, until the operator writes a real one.
pub const PLACEHOLDER: &str = "CHANGE-ME";

const HOUR: Duration = Duration::from_secs(3600);

// The ranges of durations: the lower bound is "longer than zero" where zero
// would disable what the key is for; the upper bounds are far past any sane
// value, there to catch a slip ("72d" for "72h", a wait of a year).
/// Timeouts of a connection or request (headers, body, handshake, idle).
const MAX_TIMEOUT: Duration = HOUR;
/// Timeouts of one forwarding attempt.
const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// One wait of a retry schedule: the providers' own retries end within a day.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(7 * 86_400);
/// `forwarder.shutdown_grace` and `server.shutdown_grace` (which run side
/// by side): must fit in the unit's TimeoutStopSec (60 s) with room for the
/// admin listener's drain (5 s) and the last flush.
const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(50);
const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(365 * 86_400);
const MAX_RETENTION: Duration = Duration::from_secs(10 * 365 * 86_400);
/// `server.max_body`: provider notifications are a few KiB.
const MAX_BODY: u64 = 64 << 20;
/// `server.max_inflight_body`: the memory all bodies in flight may hold.
const MAX_INFLIGHT_BODY: u64 = 4 << 30;

impl Config {
    /// Every rule across fields that the types alone cannot express.
    pub fn problems(&self) -> Vec<(KeyPath, String)> {
        self.problems_besides(&SetAside::default())
    }

    /// The same, knowing which sections could not be read (and so are not
    /// here): a subscription naming such a source is not another problem.
    pub(super) fn problems_besides(&self, aside: &SetAside) -> Vec<(KeyPath, String)> {
        let mut found = Found::new();
        let top = KeyPath::default();
        self.server.check(&top.key("server"), &mut found);
        self.check_spool(&top.key("spool"), &mut found);
        let forwarder = top.key("forwarder");
        if self.forwarder.max_in_flight == 0 {
            found.push((forwarder.key("max_in_flight"), "must be at least 1".into()));
        }
        if self.forwarder.failing_after == 0 {
            found.push((forwarder.key("failing_after"), "must be at least 1".into()));
        }
        in_range(
            &mut found,
            forwarder.key("shutdown_grace"),
            self.forwarder.shutdown_grace,
            Duration::ZERO,
            MAX_SHUTDOWN_GRACE,
        );
        let sources = top.key("sources");
        if self.sources.is_empty() && aside.sources.is_empty() {
            found.push((
                sources,
                "no source is configured, so the relay would receive nothing: add a [sources.<name>] table (docs/configuration.md)".into(),
            ));
        }
        for (name, source) in &self.sources {
            let at = top.key("sources").key(name);
            if !is_name(name) {
                found.push((
                    at.clone(),
                    format!("source name {name:?} may use only a-z, 0-9, '-' and '_'"),
                ));
            }
            if name == super::RELAY_SOURCE {
                found.push((
                    at.clone(),
                    format!(
                        "source name {name:?} is reserved for the relay's own operational events"
                    ),
                ));
            }
            source.check(&at, &mut found);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, sub) in self.subscriptions.iter().enumerate() {
            let at = top.key("subscriptions").index(i);
            if !seen.insert(sub.name.as_str()) {
                found.push((
                    at.key("name"),
                    format!("subscription name {:?} is used twice", sub.name),
                ));
            }
            sub.check(&at, self, aside, &mut found);
        }
        self.admin.check(&top.key("admin"), &mut found);
        for (key, secret) in self.secrets() {
            if secret.starts_with(PLACEHOLDER) {
                let what = if key.to_string().ends_with(".token") {
                    "a token of your own here (16 or more of A-Z a-z 0-9 - _ . ~)"
                } else {
                    "a secret of your own here (`webhook-relay gen-secret` prints one)"
                };
                found.push((
                    key,
                    format!("is still the packaged placeholder: write {what}"),
                ));
            }
        }
        found
    }

    fn check_spool(&self, at: &KeyPath, found: &mut Found) {
        let spool = &self.spool;
        in_range(
            found,
            at.key("dedup_window"),
            spool.dedup_window,
            Duration::from_millis(1),
            MAX_DEDUP_WINDOW,
        );
        if spool.retention.0 < spool.dedup_window.0 {
            found.push((
                at.key("retention"),
                format!(
                    "must be at least dedup_window ({}): a provider's resend must find the notification it repeats",
                    spool.dedup_window
                ),
            ));
        } else {
            in_range(
                found,
                at.key("retention"),
                spool.retention,
                Duration::from_millis(1),
                MAX_RETENTION,
            );
        }
        if let Some(dead) = spool.dead_retention {
            in_range(
                found,
                at.key("dead_retention"),
                dead,
                Duration::from_millis(1),
                MAX_RETENTION,
            );
        }
        if spool.backend == SpoolBackend::Jetstream {
            spool.jetstream.check(&at.key("jetstream"), found);
        }
    }

    /// Every secret of the config, with its key: source tokens, basic
    /// passwords, HMAC secrets, TusFacturas' reconcile `apikey` and
    /// subscription secrets.
    pub fn secrets(&self) -> Vec<(KeyPath, &str)> {
        let mut secrets = Vec::new();
        for (name, source) in &self.sources {
            let at = KeyPath::default().key("sources").key(name);
            if let Some(token) = &source.token {
                secrets.push((at.key("token"), token.as_str()));
            }
            if let Some(basic) = &source.basic {
                secrets.push((at.key("basic").key("password"), basic.password.as_str()));
            }
            if let Some(hmac) = &source.hmac {
                secrets.push((at.key("hmac").key("secret"), hmac.secret.as_str()));
            }
            if let Some(apikey) = source
                .reconcile_keys
                .as_ref()
                .and_then(|r| r.apikey.as_ref())
            {
                secrets.push((at.key("reconcile").key("apikey"), apikey.expose()));
            }
        }
        for (i, sub) in self.subscriptions.iter().enumerate() {
            let at = KeyPath::default().key("subscriptions").index(i);
            secrets.push((at.key("secret"), sub.secret.as_str()));
        }
        for (i, token) in self.admin.tokens.iter().enumerate() {
            let at = KeyPath::default().key("admin").key("tokens").index(i);
            if let (Some(secret), None) = (&token.token, &token.token_file) {
                secrets.push((at.key("token"), secret.as_str()));
            }
        }
        secrets
    }

    /// The keys whose secret is an example (see [`is_example_secret`]):
    /// fine on loopback for a try, never on an address others can reach
    /// (`serve` refuses that).
    pub fn example_secrets(&self) -> Vec<KeyPath> {
        self.secrets()
            .into_iter()
            .filter(|(_, secret)| is_example_secret(secret))
            .map(|(key, _)| key)
            .collect()
    }
}

/// What every example secret begins with (the shipped `relay.toml`'s, the
/// README's Quick start's), and no secret of an operator's: `gen-secret` and
/// `openssl rand` never print it.
pub const EXAMPLE_MARKER: &str = "example-";

/// Whether `secret` is an example: a token beginning with
/// [`EXAMPLE_MARKER`], or a `whsec_` secret whose key bytes do. Known by
/// its marker, not by a copy of `relay.toml` built into the binary, so
/// editing that file neither needs a rebuild nor makes a fresh secret of
/// one's own look published.
pub fn is_example_secret(secret: &str) -> bool {
    secret.starts_with(EXAMPLE_MARKER)
        || SigningKey::key_bytes(secret).is_ok_and(|key| key.starts_with(EXAMPLE_MARKER.as_bytes()))
}

pub(super) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// `value` within `min..=max`, said in the config's own grammar.
pub(super) fn in_range(
    found: &mut Found,
    at: KeyPath,
    value: HumanDuration,
    min: Duration,
    max: Duration,
) {
    if let Some(problem) = value.outside(min, max) {
        found.push((at, problem));
    }
}

// === impl ServerConfig ===

impl ServerConfig {
    fn check(&self, at: &KeyPath, found: &mut Found) {
        let has_files = self.tls_cert.is_some() || self.tls_key.is_some();
        if !self.tls && (has_files || self.self_signed) {
            found.push((
                at.key("tls"),
                "tls = false cannot be combined with tls_cert, tls_key or self_signed".into(),
            ));
        }
        if self.tls && self.self_signed && has_files {
            found.push((
                at.key("self_signed"),
                "choose either self_signed = true or tls_cert + tls_key".into(),
            ));
        }
        if let Some(acme) = &self.acme {
            let acme_at = at.key("acme");
            acme.check(&acme_at, found);
            if !self.tls || has_files || self.self_signed {
                found.push((
                    acme_at,
                    "[server.acme] brings its own certificate: remove tls = false, tls_cert, tls_key and self_signed".into(),
                ));
            }
        } else if self.tls
            && !self.self_signed
            && (self.tls_cert.is_none() || self.tls_key.is_none())
        {
            let missing = if self.tls_cert.is_none() {
                "tls_cert"
            } else {
                "tls_key"
            };
            found.push((
                at.key(missing),
                "TLS needs tls_cert and tls_key, or self_signed = true, or [server.acme], or tls = false behind a TLS-terminating balancer".into(),
            ));
        }
        if self.max_body.0 == 0 || self.max_body.0 > MAX_BODY {
            found.push((
                at.key("max_body"),
                format!(
                    "must be between 1B and {} (it is {})",
                    super::ByteSize(MAX_BODY),
                    self.max_body
                ),
            ));
        }
        // (Below a max_body that is itself refused is no second problem.)
        let below_body = self.max_body.0 <= MAX_BODY && self.max_inflight_body.0 < self.max_body.0;
        if below_body || self.max_inflight_body.0 > MAX_INFLIGHT_BODY {
            found.push((
                at.key("max_inflight_body"),
                format!(
                    "must be between max_body ({}) and {} (it is {})",
                    self.max_body,
                    super::ByteSize(MAX_INFLIGHT_BODY),
                    self.max_inflight_body
                ),
            ));
        }
        for (key, value) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            in_range(
                found,
                at.key(key),
                value,
                Duration::from_millis(1),
                MAX_TIMEOUT,
            );
        }
        if self.max_connections == 0 {
            found.push((at.key("max_connections"), "must be at least 1".into()));
        }
        in_range(
            found,
            at.key("shutdown_grace"),
            self.shutdown_grace,
            Duration::ZERO,
            MAX_SHUTDOWN_GRACE,
        );
    }
}

// === impl SourceConfig ===

impl SourceConfig {
    fn check(&self, at: &KeyPath, found: &mut Found) {
        if self
            .expect_every
            .is_some_and(|every| every.0 < Duration::from_secs(1))
        {
            // The last receipt is kept to the second.
            found.push((
                at.key("expect_every"),
                "must be at least 1s (the last receipt is kept to the second)".into(),
            ));
        }
        if self.stuck_after_set.is_some_and(|after| after.0.is_zero()) {
            found.push((at.key("stuck_after"), "must be more than 0".into()));
        }
        if let Some(token) = self.token.as_ref().filter(|t| !t.starts_with(PLACEHOLDER)) {
            if token.len() < 16
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
            {
                found.push((
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
            found.push((
                at.clone(),
                "source has no authentication: set token, basic, hmac or allow_ips".into(),
            ));
        }
        if let Some(hmac) = &self.hmac {
            if hmac.secret.len() < 16 && !hmac.secret.starts_with(PLACEHOLDER) {
                found.push((
                    at.key("hmac").key("secret"),
                    "must be at least 16 characters".into(),
                ));
            }
        }
        if self.burst == Some(0) {
            found.push((at.key("burst"), "must be at least 1".into()));
        }
        if self.burst.is_some() && self.rate.is_none() {
            found.push((at.key("burst"), "burst needs a rate".into()));
        }
        let generic_keys = [
            ("dedup_pointer", self.dedup_pointer.as_deref()),
            (
                "dedup_header",
                self.dedup_header.as_ref().map(|h| h.0.as_str()),
            ),
            ("event_pointer", self.event_pointer.as_deref()),
            ("subject_pointer", self.subject_pointer.as_deref()),
            ("event_type", self.event_type.as_deref()),
        ];
        for (key, value) in generic_keys {
            let Some(value) = value else { continue };
            if self.provider != ProviderName::Generic {
                found.push((at.key(key), "only a generic source takes this key".into()));
            } else if key.ends_with("pointer") && !value.starts_with('/') {
                found.push((
                    at.key(key),
                    format!("{value:?} is not a JSON pointer (it starts with '/')"),
                ));
            }
        }
        if let Some(reconcile) = &self.reconcile_keys {
            reconcile.check(self, &at.key("reconcile"), found);
        }
    }
}

// === impl SubscriptionConfig ===

impl SubscriptionConfig {
    /// The problems of a subscription made outside `relay.toml` (through
    /// the admin API), checked against `config` by the same rules, each as
    /// "key: what".
    pub fn problems_in(&self, config: &Config) -> Vec<String> {
        let mut found = Found::new();
        self.check(
            &KeyPath::default(),
            config,
            &SetAside::default(),
            &mut found,
        );
        found
            .into_iter()
            .map(|(key, message)| format!("{key}: {message}"))
            .collect()
    }

    fn check(&self, at: &KeyPath, config: &Config, aside: &SetAside, found: &mut Found) {
        if !is_name(&self.name) {
            found.push((
                at.key("name"),
                format!("{:?} may use only a-z, 0-9, '-' and '_'", self.name),
            ));
        }
        if let Err(err) = super::target_url(&self.url) {
            found.push((at.key("url"), err.to_string()));
        }
        for (i, source) in self.sources.iter().flatten().enumerate() {
            if !config.sources.contains_key(source) && !aside.sources.contains(source) {
                found.push((
                    at.key("sources").index(i),
                    format!("no source is named {source:?}"),
                ));
            }
        }
        for (i, pattern) in self.events.iter().flatten().enumerate() {
            if pattern.is_empty() {
                found.push((
                    at.key("events").index(i),
                    "an event pattern cannot be empty".into(),
                ));
            }
        }
        if self.statuses.as_ref().is_some_and(Vec::is_empty) {
            // Surely a mistake: it would take no invoice at all.
            found.push((
                at.key("statuses"),
                "takes no status: leave it out to take them all".into(),
            ));
        }
        if !self.secret.starts_with(PLACEHOLDER) {
            if let Err(err) = SigningKey::from_secret(&self.secret) {
                found.push((
                    at.key("secret"),
                    format!("{err} (webhook-relay gen-secret prints a new one)"),
                ));
            }
        }
        for (name, value) in &self.headers {
            let valid_name = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
            if !valid_name || http::HeaderValue::from_str(value).is_err() {
                found.push((
                    at.key("headers").key(name),
                    "not a valid header name and value".into(),
                ));
            }
        }
        for (i, wait) in self.schedule.iter().enumerate() {
            in_range(
                found,
                at.key("schedule").index(i),
                *wait,
                Duration::from_millis(1),
                MAX_RETRY_WAIT,
            );
        }
        // Its own checks: the count of waits and the jitter.
        if let Err(err) = self.retry_schedule() {
            use crate::delivery::ScheduleError;
            match err {
                ScheduleError::TooShort { .. } | ScheduleError::TooLong { .. } => {}
                ScheduleError::JitterOutOfRange(_) => {
                    found.push((at.key("jitter"), err.to_string()))
                }
                _ => found.push((at.key("schedule"), err.to_string())),
            }
        }
        for (key, value) in [
            ("timeout_first", self.timeout_first),
            ("timeout_retry", self.timeout_retry),
        ] {
            in_range(
                found,
                at.key(key),
                value,
                Duration::from_millis(1),
                MAX_ATTEMPT_TIMEOUT,
            );
            let longest = super::jetstream::LONGEST_ATTEMPT;
            if config.spool.backend == SpoolBackend::Jetstream && value.0 > longest {
                found.push((
                    at.key(key),
                    format!(
                        "must be at most {} with the jetstream spool: a lease is held for that \
                         plus ack_margin, and an attempt that outlasts it may be sent twice",
                        HumanDuration(longest)
                    ),
                ));
            }
        }
        if self.max_in_flight == 0 {
            found.push((at.key("max_in_flight"), "must be at least 1".into()));
        }
    }
}
