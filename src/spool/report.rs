//! What the spool reports of itself, backend-neutral: [`Health`] (for
//! logs, the watchdog and `/readyz`), the [`Counts`] of deliveries by
//! state, what upkeep removed ([`Maintained`], [`Purged`]), the offline
//! check's [`CheckReport`] with typed [`CheckProblem`]s, and the
//! [`BackendStats`] a backend may add.

use std::collections::BTreeMap;

use serde::Serialize;

/// How the spool is doing, for logs, the watchdog and `/readyz`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// False while the store cannot take notifications (disk full, failed).
    pub writable: bool,
    /// The store failed in a way only a restart mends.
    pub fatal: bool,
    /// Why it cannot write, and since when (Unix ms).
    pub condition: Option<String>,
    pub since_ms: Option<i64>,
    /// Writes refused while not writable (each was answered 503).
    pub refused_writes: u64,
    /// Records that could not be read, and the ids of the first ones.
    pub unreadable: u64,
    pub unreadable_ids: Vec<String>,
    /// Deliveries waiting for a subscription that is not configured, by name.
    pub orphans: BTreeMap<String, u64>,
    /// What opening had to repair, if anything (e.g. a rebuilt snapshot).
    pub repaired: Vec<String>,
}

/// What one pass of [`Spool::maintain`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Maintained {
    pub notifications: u64,
    pub quarantined: u64,
    pub dedup_entries: u64,
    pub audit_records: u64,
}

/// What [`Spool::purge`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Deliveries now purged.
    pub purged: u64,
    /// Deliveries left as they were: in flight, never attempted, or no
    /// longer dead or waiting.
    pub skipped: u64,
}

/// One subscription's deliveries by where they stand.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SubscriptionCounts {
    /// Not yet final: never attempted, or waiting for a retry/replay (in
    /// flight counts here).
    pub waiting: u64,
    pub dead: u64,
    pub delivered: u64,
    /// Given up by an admin (a bulk purge, or orphans purged).
    pub purged: u64,
}

impl SubscriptionCounts {
    pub fn is_zero(&self) -> bool {
        *self == SubscriptionCounts::default()
    }
}

/// What the spool holds of one source.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SourceCounts {
    /// Notifications stored, not yet removed by retention.
    pub stored: u64,
    /// Bodies in quarantine (those whose record cannot be read are in the
    /// total only: their source is not known).
    pub quarantined: u64,
}

impl SourceCounts {
    pub fn is_zero(&self) -> bool {
        *self == SourceCounts::default()
    }
}

/// What the spool holds, counted as it changes (see [`Spool::counts`]).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Stored, not yet removed by retention.
    pub notifications: u64,
    pub quarantined: u64,
    /// By subscription name; a subscription with no delivery in the spool
    /// is absent.
    pub subscriptions: BTreeMap<String, SubscriptionCounts>,
    /// By source name (as received, configured or not); a source with
    /// nothing in the spool is absent.
    pub sources: BTreeMap<String, SourceCounts>,
}

impl Counts {
    /// Each count that differs from `other`'s, in words, `names` saying
    /// whose is whose (`["kept", "counted"]`, `["sled", "JetStream"]`).
    pub fn differences(&self, other: &Counts, names: [&str; 2]) -> Vec<String> {
        let [a_is, b_is] = names;
        let mut differ = Vec::new();
        for (what, a, b) in [
            ("notifications", self.notifications, other.notifications),
            ("quarantined", self.quarantined, other.quarantined),
        ] {
            if a != b {
                differ.push(format!("{what} {a_is} {a} {b_is} {b}"));
            }
        }
        let names: std::collections::BTreeSet<&String> = self
            .subscriptions
            .keys()
            .chain(other.subscriptions.keys())
            .collect();
        for name in names {
            let a = self.subscriptions.get(name).cloned().unwrap_or_default();
            let b = other.subscriptions.get(name).cloned().unwrap_or_default();
            if a != b {
                differ.push(format!(
                    "{name:?} {a_is} {}/{}/{}/{} {b_is} {}/{}/{}/{} (waiting/dead/delivered/purged)",
                    a.waiting, a.dead, a.delivered, a.purged, b.waiting, b.dead, b.delivered, b.purged
                ));
            }
        }
        let sources: std::collections::BTreeSet<&String> =
            self.sources.keys().chain(other.sources.keys()).collect();
        for name in sources {
            let a = self.sources.get(name).cloned().unwrap_or_default();
            let b = other.sources.get(name).cloned().unwrap_or_default();
            if a != b {
                differ.push(format!(
                    "source {name:?} {a_is} {}/{} {b_is} {}/{} (stored/quarantined)",
                    a.stored, a.quarantined, b.stored, b.quarantined
                ));
            }
        }
        differ
    }
}

/// One thing [`Spool::check`] found wrong. Its text (`Display`) is the
/// line `spool check` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckProblem {
    /// A part of the spool the backend cannot read at all: serving it
    /// would answer from holes, so `serve` refuses it.
    Unreadable(String),
    /// Acknowledged notifications are missing.
    Lost(String),
    /// One entry read but not understood, or not consistent with the rest
    /// (skipped when met).
    Record(String),
}

impl std::fmt::Display for CheckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckProblem::Unreadable(what) => write!(f, "unreadable: {what}"),
            CheckProblem::Lost(missing) => write!(f, "lost: {missing}"),
            CheckProblem::Record(what) => f.write_str(what),
        }
    }
}

impl Serialize for CheckProblem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What [`Spool::check`] found in a stopped spool.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub notifications: u64,
    pub quarantined: u64,
    pub deliveries: u64,
    pub retries: u64,
    pub dedup_entries: u64,
    /// What is wrong, each with the id or key where known.
    pub problems: Vec<CheckProblem>,
    pub repaired: Vec<String>,
    pub orphans: BTreeMap<String, u64>,
    pub audit_records: u64,
    /// The counts as a walk over every record makes them (None when the
    /// walk could not read them all), and as the spool kept them.
    pub counts: Option<Counts>,
    pub kept_counts: Option<Counts>,
}

/// What a backend can tell of itself (see [`Spool::stats`]); a field it
/// has no such thing for is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Bytes the spool takes in its store (on disk for sled).
    pub bytes: Option<u64>,
    /// Group flushes started so far (tests count them).
    pub flush_starts: Option<u64>,
    /// Changes (stores, outcomes, ...) covered by completed group flushes:
    /// divided by `flush_starts`, the mean group size.
    pub flushed_changes: Option<u64>,
    /// What a 200 means on this store, where it depends on its servers'
    /// settings (JetStream's replicas and sync interval).
    pub promise: Option<String>,
}
