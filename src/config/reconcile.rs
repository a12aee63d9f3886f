//! `[sources.NAME.reconcile]`: the provider's query API a source's late
//! invoices are checked against (the address, the credentials, and how
//! often and how long to ask). The asking lives in `crate::reconcile`.
//!
//! The section is read in two steps. Deserializing takes it as written
//! ([`ReconcileKeys`]: every key optional, since which ones a source needs
//! depends on its provider, known only beside the section); the rules
//! ([`ReconcileKeys::check`], in the config's validation) then name each key
//! of another provider, each missing credential and each bad value, at its
//! line. Last, [`read_sections`] reads the secret files (at every load, so a
//! reload picks up a rotated secret) and builds the [`ReconcileConfig`] the
//! relay uses. Secrets are [`Secret`]s: their `Debug` never shows them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::locate::KeyPath;
use super::{Config, HumanDuration, ProviderName, Rate, SourceConfig};

/// TusFacturas' documented API base.
pub const TUSFACTURAS_API: &str = "https://www.tusfacturas.app/app/api/v2";
/// Dátil's documented API base.
pub const DATIL_API: &str = "https://link.datil.co";

/// A provider's query API for one source, ready to use: defaults applied,
/// secrets read from their files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// The API's base (NubeFact: the account's RUTA itself).
    pub url: String,
    pub credentials: ReconcileAuth,
    /// Requests to the provider's API, across all of the source's invoices.
    pub rate: Rate,
    /// As written; the effective delay is [`SourceConfig::reconcile_after`].
    pub after: Option<Duration>,
    /// Waits between checks of an invoice still pending; the last repeats.
    pub every: Vec<Duration>,
    /// Counted from the invoice's first `queued`: no automatic check after it.
    pub give_up_after: Duration,
    /// Of one request to the provider.
    pub timeout: Duration,
    /// Waits after failed requests in a row (per source); the last repeats.
    pub failure_backoff: Vec<Duration>,
    /// PEM file of extra CA certificates to trust for the provider's API.
    pub tls_ca: Option<PathBuf>,
}

/// The credentials of a provider's query API, read from their files (the
/// config's side of `providers::query::QueryCredentials`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconcileAuth {
    NubeFact {
        token: Secret,
        header: NubefactHeaderForm,
    },
    TusFacturas {
        apikey: Secret,
        apitoken: Secret,
        usertoken: Secret,
    },
    Datil {
        api_key: Secret,
    },
}

/// How NubeFact's token goes in the `Authorization` header (`header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NubefactHeaderForm {
    /// `Token token="…"`, as NubeFact's documentation writes it.
    #[default]
    Token,
    /// The token alone, as some accounts' RUTAs take it.
    Bare,
}

/// A credential: its `Debug` and `Display` print `***`, so no log or error
/// shows it; [`Secret::expose`] is the one way to its text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        String::deserialize(de).map(Secret)
    }
}

/// `[sources.NAME.reconcile]` as written: each key optional, checked
/// against the source's provider by [`ReconcileKeys::check`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileKeys {
    pub url: Option<String>,
    // NubeFact
    pub token_file: Option<PathBuf>,
    pub header: Option<NubefactHeaderForm>,
    // TusFacturas
    pub apikey: Option<Secret>,
    pub apitoken_file: Option<PathBuf>,
    pub usertoken_file: Option<PathBuf>,
    // Dátil
    pub api_key_file: Option<PathBuf>,
    // Every provider
    pub rate: Option<Rate>,
    pub after: Option<HumanDuration>,
    pub every: Option<Vec<HumanDuration>>,
    pub give_up_after: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub failure_backoff: Option<Vec<HumanDuration>>,
    pub tls_ca: Option<PathBuf>,
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Bounds past any sane value, there to catch a slip ("72d" for "72h").
const MAX_WAIT: Duration = Duration::from_secs(30 * 86_400);
const MAX_GIVE_UP: Duration = Duration::from_secs(365 * 86_400);
const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 60);

fn default_every() -> Vec<Duration> {
    vec![HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, 24 * HOUR]
}

fn default_failure_backoff() -> Vec<Duration> {
    vec![MINUTE, 5 * MINUTE, 30 * MINUTE, HOUR]
}

/// Which keys hold a provider's credentials (file keys end in `_file`).
fn credential_keys(provider: ProviderName) -> &'static [&'static str] {
    match provider {
        ProviderName::Nubefact => &["token_file", "header"],
        ProviderName::Tusfacturas => &["apikey", "apitoken_file", "usertoken_file"],
        ProviderName::Datil => &["api_key_file"],
        ProviderName::Generic => &[],
    }
}

fn provider_label(provider: ProviderName) -> &'static str {
    match provider {
        ProviderName::Nubefact => "nubefact",
        ProviderName::Tusfacturas => "tusfacturas",
        ProviderName::Datil => "datil",
        ProviderName::Generic => "generic",
    }
}

type Found = Vec<(KeyPath, String)>;

// === impl ReconcileKeys ===

impl ReconcileKeys {
    /// The keys written, by name, with whether each holds a value.
    fn credentials_written(&self) -> [(&'static str, bool); 6] {
        [
            ("token_file", self.token_file.is_some()),
            ("header", self.header.is_some()),
            ("apikey", self.apikey.is_some()),
            ("apitoken_file", self.apitoken_file.is_some()),
            ("usertoken_file", self.usertoken_file.is_some()),
            ("api_key_file", self.api_key_file.is_some()),
        ]
    }

    /// The rules of the section (`at` is `sources.NAME.reconcile`) for
    /// `source`'s provider; secret files are read later, by
    /// [`read_sections`].
    pub(super) fn check(&self, source: &SourceConfig, at: &KeyPath, found: &mut Found) {
        let provider = source.provider;
        if provider == ProviderName::Generic {
            found.push((
                at.clone(),
                "a generic source has no query API to reconcile with: remove [reconcile] (it is for nubefact, tusfacturas and datil sources)".into(),
            ));
            return;
        }
        let own = credential_keys(provider);
        for (key, written) in self.credentials_written() {
            if written && !own.contains(&key) {
                found.push((
                    at.key(key),
                    format!(
                        "is not a {} key: a {} source's reconcile takes url, {}",
                        owner_of(key),
                        provider_label(provider),
                        own.join(", ")
                    ),
                ));
            } else if !written && own.contains(&key) && key != "header" {
                let what = if key.ends_with("_file") {
                    "a file holding the"
                } else {
                    "the"
                };
                found.push((
                    at.key(key),
                    format!(
                        "is missing: a {} source's reconcile needs {what} {} (docs/configuration.md, \"Reconciliation\")",
                        provider_label(provider),
                        key.trim_end_matches("_file")
                    ),
                ));
            }
        }
        match (&self.url, provider) {
            (None, ProviderName::Nubefact) => found.push((
                at.key("url"),
                "is missing: a nubefact source's reconcile needs url, the account's RUTA (from NubeFact's panel)".into(),
            )),
            (Some(url), _) => {
                if let Err(err) = super::target_url(url) {
                    found.push((at.key("url"), err.to_string()));
                }
            }
            (None, _) => {}
        }
        self.check_times(source, at, found);
    }

    fn check_times(&self, source: &SourceConfig, at: &KeyPath, found: &mut Found) {
        for (key, list) in [
            ("every", &self.every),
            ("failure_backoff", &self.failure_backoff),
        ] {
            let Some(list) = list else { continue };
            if list.is_empty() {
                found.push((
                    at.key(key),
                    "names no wait: leave it out for the default".into(),
                ));
            }
            for (i, wait) in list.iter().enumerate() {
                between(found, at.key(key).index(i), *wait, MAX_WAIT);
            }
        }
        if let Some(timeout) = self.timeout {
            between(found, at.key("timeout"), timeout, MAX_TIMEOUT);
        }
        if let Some(give_up) = self.give_up_after {
            between(found, at.key("give_up_after"), give_up, MAX_GIVE_UP);
        }
        let stuck_after = source.stuck_after().unwrap_or_default();
        if let Some(after) = self.after.filter(|after| after.0 < stuck_after) {
            found.push((
                at.key("after"),
                format!(
                    "{after} is shorter than the source's stuck_after ({}): only a stuck invoice is checked",
                    HumanDuration(stuck_after)
                ),
            ));
        }
        let after = self.after.map_or(stuck_after, |a| a.0);
        let give_up = self.give_up_after.map_or(7 * DAY, |g| g.0);
        if !give_up.is_zero() && give_up <= after {
            found.push((
                at.key("give_up_after"),
                format!(
                    "{} is not longer than after ({}): no invoice would ever be checked",
                    HumanDuration(give_up),
                    HumanDuration(after)
                ),
            ));
        }
    }

    /// The section with its defaults and its secrets read (relative paths
    /// from `base`). `None` with the problems met when a secret cannot be
    /// had; a key the rules already reported missing is not reported again.
    fn read(
        &self,
        provider: ProviderName,
        at: &KeyPath,
        base: &Path,
        found: &mut Found,
    ) -> Option<ReconcileConfig> {
        let mut read = |key: &str, path: &Option<PathBuf>| -> Option<Secret> {
            read_secret(&resolve(base, path.as_ref()?), &at.key(key), found)
        };
        let credentials = match provider {
            ProviderName::Nubefact => {
                let token = read("token_file", &self.token_file);
                ReconcileAuth::NubeFact {
                    token: token?,
                    header: self.header.unwrap_or_default(),
                }
            }
            ProviderName::Tusfacturas => {
                let apitoken = read("apitoken_file", &self.apitoken_file);
                let usertoken = read("usertoken_file", &self.usertoken_file);
                ReconcileAuth::TusFacturas {
                    apikey: self.apikey.clone()?,
                    apitoken: apitoken?,
                    usertoken: usertoken?,
                }
            }
            ProviderName::Datil => ReconcileAuth::Datil {
                api_key: read("api_key_file", &self.api_key_file)?,
            },
            ProviderName::Generic => return None,
        };
        let url = match (&self.url, provider) {
            (Some(url), _) => url.clone(),
            (None, ProviderName::Tusfacturas) => TUSFACTURAS_API.to_owned(),
            (None, ProviderName::Datil) => DATIL_API.to_owned(),
            (None, _) => return None,
        };
        let durations = |list: &Option<Vec<HumanDuration>>, default: fn() -> Vec<Duration>| {
            list.as_ref()
                .map_or_else(default, |l| l.iter().map(|d| d.0).collect())
        };
        Some(ReconcileConfig {
            url,
            credentials,
            rate: self.rate.unwrap_or(Rate {
                count: 1,
                per: SECOND,
            }),
            after: self.after.map(|a| a.0),
            every: durations(&self.every, default_every),
            give_up_after: self.give_up_after.map_or(7 * DAY, |g| g.0),
            timeout: self.timeout.map_or(10 * SECOND, |t| t.0),
            failure_backoff: durations(&self.failure_backoff, default_failure_backoff),
            tls_ca: self.tls_ca.as_ref().map(|p| resolve(base, p)),
        })
    }
}

/// The provider whose key `key` is (for "another provider's key").
fn owner_of(key: &str) -> &'static str {
    [
        ProviderName::Nubefact,
        ProviderName::Tusfacturas,
        ProviderName::Datil,
    ]
    .into_iter()
    .find(|p| credential_keys(*p).contains(&key))
    .map_or("known", provider_label)
}

/// Longer than zero and at most `max`.
fn between(found: &mut Found, at: KeyPath, value: HumanDuration, max: Duration) {
    // Durations are whole milliseconds: under 1 ms is zero.
    if let Some(problem) = value.outside(Duration::from_millis(1), max) {
        found.push((at, problem));
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_relative() {
        base.join(path)
    } else {
        path.to_owned()
    }
}

/// A secret file's text without its trailing newline; it must be one line
/// a header can carry (NubeFact's and Dátil's go in one).
fn read_secret(path: &Path, at: &KeyPath, found: &mut Found) -> Option<Secret> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            found.push((at.clone(), format!("cannot read {}: {err}", path.display())));
            return None;
        }
    };
    let secret = text.trim_end_matches(['\n', '\r']);
    let problem = if secret.trim().is_empty() {
        Some("is empty")
    } else if http::HeaderValue::from_str(secret).is_err() || secret.contains(['\n', '\r']) {
        Some("holds more than one line of printable ASCII")
    } else {
        None
    };
    match problem {
        // The problem, never the text: it may be most of a secret.
        Some(problem) => {
            found.push((at.clone(), format!("{} {problem}", path.display())));
            None
        }
        None => Some(Secret(secret.to_owned())),
    }
}

/// Reads every source's reconcile section whose rules hold (relative
/// paths from `base`) into its [`SourceConfig::reconcile`]; the problems
/// are unreadable, empty or malformed secret files, by key.
pub(super) fn read_sections(config: &mut Config, base: &Path) -> Found {
    let mut found = Found::new();
    for (name, source) in &mut config.sources {
        let Some(keys) = &source.reconcile_keys else {
            continue;
        };
        let at = KeyPath::default().key("sources").key(name).key("reconcile");
        let mut rules = Found::new();
        keys.check(source, &at, &mut rules);
        source.reconcile = if rules.is_empty() {
            keys.read(source.provider, &at, base, &mut found)
        } else {
            None
        };
    }
    found
}

// === impl SourceConfig ===

impl SourceConfig {
    /// How long after its first `queued` an invoice of this source is first
    /// checked with the provider: `reconcile.after`, or the source's
    /// [`SourceConfig::stuck_after`]. `None` without a reconcile section.
    pub fn reconcile_after(&self) -> Option<Duration> {
        let reconcile = self.reconcile.as_ref()?;
        reconcile.after.or_else(|| self.stuck_after())
    }
}
