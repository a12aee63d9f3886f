//! The `[spool]` section, keyed by backend: `backend` names the store
//! (`"sled"`, the default), the settings every backend shares stay in
//! `[spool]` (`dedup_window`, `retention`, `dead_retention`), and each
//! backend's own settings live in a table of its name (`[spool.sled]`,
//! `[spool.jetstream]`), so a backend adds a variant and a table.
//!
//! Files written before the backend had a table spell sled's keys flat in
//! `[spool]` (`path = ...`). [`fold_flat_sled_keys`] still reads them, into
//! the sled table, with a deprecation note at each; the same key written
//! both ways is an error naming both places.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::jetstream::JetstreamConfig;
use super::locate::position_of;
use super::problem::Problem;
use super::{ByteSize, HumanDuration};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// The store that keeps the spool; its own settings are in the table
    /// of its name (`[spool.sled]`).
    pub backend: SpoolBackend,
    /// How long a provider's resend of the same notification is recognised.
    pub dedup_window: HumanDuration,
    /// Delivered notifications (with their deliveries) and quarantined
    /// bodies older than this are removed.
    pub retention: HumanDuration,
    /// Dead deliveries are kept until replayed or purged; with this set,
    /// a notification whose deliveries are all delivered or dead for this
    /// long is removed too.
    pub dead_retention: Option<HumanDuration>,
    /// `[spool.sled]`: the sled backend's settings.
    pub sled: SledConfig,
    /// `[spool.jetstream]`: the JetStream backend's settings.
    pub jetstream: JetstreamConfig,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            backend: SpoolBackend::default(),
            dedup_window: HumanDuration(Duration::from_secs(72 * 3600)),
            retention: HumanDuration(Duration::from_secs(30 * 24 * 3600)),
            dead_retention: None,
            sled: SledConfig::default(),
            jetstream: JetstreamConfig::default(),
        }
    }
}

/// `[spool.sled]`: a sled database on a local disk.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SledConfig {
    /// The database's directory.
    pub path: PathBuf,
    /// Bound of sled's page cache.
    pub cache_capacity: ByteSize,
    /// Follow each group flush with an fdatasync of the database file, so an
    /// acknowledged notification survives a power cut, not only a crash.
    pub sync_data: bool,
    /// Space kept free on the spool's filesystem: below it, new
    /// notifications get 503 until there is room again (0: no guard).
    pub min_free: ByteSize,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            path: PathBuf::from("data/spool"),
            cache_capacity: ByteSize(16 << 20),
            sync_data: true,
            min_free: ByteSize(64 << 20),
        }
    }
}

/// The store that keeps the spool (`spool.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpoolBackend {
    /// A sled database on a local disk, settings in `[spool.sled]`.
    #[default]
    Sled,
    /// A NATS JetStream stream that several relays can share, settings in
    /// `[spool.jetstream]`. Not complete in this version: the relay
    /// refuses to serve on it (docs/design/jetstream.md).
    Jetstream,
}

impl SpoolBackend {
    /// Every backend this build knows.
    pub const ALL: &'static [SpoolBackend] = &[SpoolBackend::Sled, SpoolBackend::Jetstream];

    /// Its name in `relay.toml`, which is also the name of its table.
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolBackend::Sled => "sled",
            SpoolBackend::Jetstream => "jetstream",
        }
    }
}

impl fmt::Display for SpoolBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `spool.backend` this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown spool backend {0:?}: the backends known are {known}", known = known_backends())]
pub struct UnknownBackend(pub String);

fn known_backends() -> String {
    let names: Vec<String> = SpoolBackend::ALL
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect();
    names.join(", ")
}

impl std::str::FromStr for SpoolBackend {
    type Err = UnknownBackend;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        SpoolBackend::ALL
            .iter()
            .copied()
            .find(|b| b.as_str() == name)
            .ok_or_else(|| UnknownBackend(name.to_owned()))
    }
}

impl<'de> Deserialize<'de> for SpoolBackend {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        String::deserialize(de)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

// === the flat spelling ===

/// The sled keys that files written before `[spool.sled]` put in `[spool]`.
const FLAT_SLED_KEYS: [&str; 4] = ["path", "cache_capacity", "sync_data", "min_free"];

/// What [`fold_flat_sled_keys`] found: errors, and notes that do not stop
/// the load.
#[derive(Debug, Default)]
pub(super) struct Folded {
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// Moves sled keys written flat in the `[spool]` table (`spool`, as read
/// from `text`) into its `sled` table, each with a deprecation note; a key
/// set both flat and in `[spool.sled]` is an error at the flat one, naming
/// the other, and the flat one is dropped. Spans are kept, so a bad value
/// moved is still reported at its own line and key (`spool.path`).
pub(super) fn fold_flat_sled_keys(text: &str, spool: &mut Spanned<DeValue<'_>>) -> Folded {
    let mut folded = Folded::default();
    let sled_name = SpoolBackend::Sled.as_str();
    let DeValue::Table(table) = spool.get_mut() else {
        // Not a table: the deserializer says so.
        return folded;
    };
    if table
        .get(sled_name)
        .is_some_and(|sled| !sled.get_ref().is_table())
    {
        // `sled = 5`: the deserializer says so; the flat keys stay where
        // they are, and are reported unknown.
        return folded;
    }
    let flat: Vec<_> = FLAT_SLED_KEYS
        .into_iter()
        .filter_map(|key| table.remove_entry(key).map(|entry| (key, entry)))
        .collect();
    if flat.is_empty() {
        return folded;
    }
    let sled = table
        .entry(Spanned::new(0..0, Cow::Borrowed(sled_name)))
        .or_insert_with(|| Spanned::new(0..0, DeValue::Table(DeTable::new())));
    let DeValue::Table(sled) = sled.get_mut() else {
        return folded;
    };
    for (key, (flat_key, value)) in flat {
        let here = position_of(text, flat_key.span().start);
        let problem = |message: String| Problem {
            key: format!("spool.{key}"),
            line: Some(here.line),
            column: Some(here.column),
            message,
        };
        match sled.get_key_value(key) {
            Some((other, _)) => folded.problems.push(problem(format!(
                "set twice: here and as `spool.{sled_name}.{key}` at line {}; keep only the one in [spool.{sled_name}]",
                position_of(text, other.span().start).line
            ))),
            None => {
                folded.warnings.push(problem(format!(
                    "deprecated spelling: write `{key}` in a [spool.{sled_name}] table (read as `spool.{sled_name}.{key}`)"
                )));
                sled.insert(flat_key, value);
            }
        }
    }
    folded
}
