//! `spool migrate --to jetstream`: a stopped sled spool copied into
//! JetStream (`docs/design/jetstream.md` §2 step 12), resumable and
//! verified by counts.
//!
//! The sled spool is read by its backup walk (the same items an archive
//! holds: notifications with their delivery records and invoice entries,
//! quarantined bodies, the audit log, API subscriptions, pauses, the stuck
//! check's marks, reconcile checks), on a blocking thread, handed through
//! a bounded channel to the JetStream side, which writes each record on
//! its exact subject expecting nothing there (`jetstream/import.rs`):
//! what an earlier, interrupted run copied is found "already there", so
//! running it again goes on where it stopped and copies nothing twice.
//! Notifications go a few at a time (each with its states after it); API
//! subscriptions and pauses, which come first, one by one, so each
//! subscription's consumer exists before any notification for it.
//!
//! At the end the JetStream index catches up with the stream and its
//! counts (kept by the fold) are compared with sled's: by subscription
//! and state, by source, notifications, quarantine, audit records, API
//! subscriptions and pauses. Any difference is an error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::backup::{ArchiveCounts, BackupError, Item, ItemSink};
use super::jetstream::{Imported, JetStreamSpool};
use super::{Backend, Counts, Routes, Spool, SpoolError, StuckInvoice};
use crate::clock::Clock;
use crate::config::{SpoolBackend, SpoolConfig};
use crate::spool::NotificationId;

/// Records written at once (each notification with its states is one).
const IN_FLIGHT: usize = 64;
/// Items the walk reads ahead of the writes.
const AHEAD: usize = 256;
/// Tries of one write that goes unanswered, and the wait before the
/// next (times the tries so far).
const TRIES: u32 = 5;
const AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// How far a migration is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationProgress {
    /// Records written by this run.
    pub copied: u64,
    /// Records found written (by an earlier run).
    pub already_there: u64,
    /// Notifications read from the sled spool so far, and in all.
    pub notifications: u64,
    pub notifications_total: u64,
}

/// A finished, verified migration.
#[derive(Debug, Clone)]
pub struct Migrated {
    pub progress: MigrationProgress,
    /// The counts both spools agree on.
    pub counts: Counts,
    pub audit_records: u64,
    pub api_subscriptions: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "[spool.jetstream] servers names no NATS server to copy into \
         (e.g. servers = [\"nats://10.0.0.1:4222\"])"
    )]
    NoServers,
    #[error("no sled spool at {0} (nothing to migrate)")]
    NoSpool(std::path::PathBuf),
    #[error("the sled spool: {0}")]
    Sled(#[source] SpoolError),
    #[error("the JetStream spool: {0}")]
    Jetstream(#[source] SpoolError),
    #[error("reading the sled spool: {0}")]
    Walk(#[source] BackupError),
    #[error(
        "stopped after {} records copied ({} already there): run it again to go on",
        .0.copied, .0.already_there
    )]
    Stopped(MigrationProgress),
    #[error("the copy does not match the sled spool: {}", .0.join("; "))]
    Mismatch(Vec<String>),
}

impl MigrateError {
    /// The sled spool is held by a running relay.
    pub fn is_locked(&self) -> bool {
        matches!(self, MigrateError::Sled(SpoolError::Locked { .. }))
    }
}

/// Copies the stopped sled spool of `config` (`[spool.sled]`, whatever
/// `[spool] backend` says) into the JetStream spool of `config`
/// (`[spool.jetstream]`), then compares their counts. `progress` hears how
/// far it is after each record; `Break` stops the copy there
/// ([`MigrateError::Stopped`]), as an interruption would.
pub async fn migrate_to_jetstream(
    config: &SpoolConfig,
    routes: Routes,
    clock: Clock,
    mut progress: impl FnMut(&MigrationProgress) -> ControlFlow<()>,
) -> Result<Migrated, MigrateError> {
    let sled_config = SpoolConfig {
        backend: SpoolBackend::Sled,
        ..config.clone()
    };
    if config.jetstream.servers.is_empty() {
        return Err(MigrateError::NoServers);
    }
    if Spool::is_new(&sled_config) {
        return Err(MigrateError::NoSpool(sled_config.sled.path.clone()));
    }
    Spool::ensure_not_locked(&sled_config)
        .await
        .map_err(MigrateError::Sled)?;
    let sled = Spool::open(&sled_config, routes.clone(), clock)
        .await
        .map_err(MigrateError::Sled)?;
    let jetstream_config = SpoolConfig {
        backend: SpoolBackend::Jetstream,
        ..config.clone()
    };
    let target = match JetStreamSpool::open(&jetstream_config, routes, clock).await {
        Ok(target) => target,
        Err(err) => {
            let _ = sled.close().await;
            return Err(MigrateError::Jetstream(err));
        }
    };
    let copied = copy(&sled, &target, &mut progress).await;
    let verified = match copied {
        Ok((done, walked)) => verify(&sled, &target, done, &walked).await,
        Err(err) => Err(err),
    };
    let closed_sled = sled.close().await.map_err(MigrateError::Sled);
    let closed_target = target.close().await.map_err(MigrateError::Jetstream);
    let migrated = verified?;
    closed_sled?;
    closed_target?;
    Ok(migrated)
}

/// Hands the walk's items to the writes, counting them.
struct Channel {
    items: mpsc::Sender<Item>,
    counts: ArchiveCounts,
}

impl ItemSink for Channel {
    fn put(&mut self, item: &Item) -> std::io::Result<()> {
        self.counts.add(item);
        self.items
            .blocking_send(item.clone())
            .map_err(|_| std::io::Error::other("the copy stopped"))
    }

    fn counts(&self) -> &ArchiveCounts {
        &self.counts
    }
}

/// The walk of the sled spool into `target`; how far it got, and what
/// the walk read.
async fn copy(
    sled: &Spool,
    target: &Arc<JetStreamSpool>,
    progress: &mut impl FnMut(&MigrationProgress) -> ControlFlow<()>,
) -> Result<(MigrationProgress, ArchiveCounts), MigrateError> {
    let Backend::Sled(source) = &sled.backend else {
        return Err(MigrateError::Sled(SpoolError::Unsupported(
            "migrate from a spool that is not sled",
        )));
    };
    let (items, mut received) = mpsc::channel(AHEAD);
    let source = source.clone();
    let walking = tokio::task::spawn_blocking(move || {
        let mut channel = Channel {
            items,
            counts: ArchiveCounts::default(),
        };
        source
            .backup(&mut channel, &mut |_| {})
            .map(|_| channel.counts)
    });
    let mut done = MigrationProgress {
        notifications_total: sled.counts().notifications,
        ..MigrationProgress::default()
    };
    let written = write_all(&mut received, target, &mut done, progress).await;
    // Whatever came of it, the walk ends (it stops once nobody reads).
    drop(received);
    let walk = walking.await;
    let (stuck, walked) = written?;
    let walked_counts = walk
        .map_err(|e| MigrateError::Sled(SpoolError::Task(e.to_string())))?
        .map_err(MigrateError::Walk)?;
    if !stuck.is_empty() || !walked.is_empty() {
        let imported = target
            .import_stuck(stuck, walked)
            .await
            .map_err(MigrateError::Jetstream)?;
        let _ = tally(&mut done, imported, progress);
    }
    Ok((done, walked_counts))
}

/// The stuck check's marks, gathered by the walk for its end.
type Marks = (Vec<StuckInvoice>, Vec<(String, NotificationId)>);

/// Writes what the walk hands over, [`IN_FLIGHT`] records at a time;
/// `Stopped` when `progress` says so (what is in flight then may land or
/// not, as in a crash).
async fn write_all(
    received: &mut mpsc::Receiver<Item>,
    target: &JetStreamSpool,
    done: &mut MigrationProgress,
    progress: &mut impl FnMut(&MigrationProgress) -> ControlFlow<()>,
) -> Result<Marks, MigrateError> {
    let mut in_flight = FuturesUnordered::new();
    let mut checks: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut marks: Marks = (Vec::new(), Vec::new());
    while let Some(item) = received.recv().await {
        let one_by_one = matches!(item, Item::Subscription(_) | Item::Paused(_));
        if matches!(item, Item::Notification(_)) {
            done.notifications += 1;
        }
        let work = match item {
            Item::Stuck(mark) => {
                marks.0.push(mark);
                continue;
            }
            Item::Walked { source, upto } => {
                marks.1.push((source, upto));
                continue;
            }
            Item::Check {
                source,
                subject,
                check,
            } => {
                let n = checks.entry((source.clone(), subject.clone())).or_insert(0);
                let work = Work::Check(source, subject, *n, check);
                *n += 1;
                work
            }
            other => Work::Item(other),
        };
        in_flight.push(work.run(target));
        while in_flight.len() >= IN_FLIGHT || (one_by_one && !in_flight.is_empty()) {
            let Some(imported) = in_flight.next().await else {
                break;
            };
            if tally(done, imported?, progress).is_break() {
                return Err(MigrateError::Stopped(done.clone()));
            }
        }
    }
    while let Some(imported) = in_flight.next().await {
        if tally(done, imported?, progress).is_break() {
            return Err(MigrateError::Stopped(done.clone()));
        }
    }
    Ok(marks)
}

fn tally(
    done: &mut MigrationProgress,
    imported: Imported,
    progress: &mut impl FnMut(&MigrationProgress) -> ControlFlow<()>,
) -> ControlFlow<()> {
    done.copied += imported.copied;
    done.already_there += imported.already_there;
    progress(done)
}

/// One write of the copy.
enum Work {
    Item(Item),
    /// An invoice's `n`-th check (in the order the walk gives them).
    Check(String, String, u64, crate::spool::ReconcileCheck),
}

impl Work {
    /// Written, again after a write that went unanswered (the servers
    /// slow under the copy's load): each record expects nothing on its
    /// subject, so one that landed all the same is found already there.
    async fn run(self, target: &JetStreamSpool) -> Result<Imported, MigrateError> {
        let mut tries = 1;
        loop {
            match self.once(target).await {
                Err(SpoolError::Unavailable(why)) if tries < TRIES => {
                    tracing::warn!(%why, tries, "a write of the copy went unanswered; again");
                    tokio::time::sleep(AGAIN_AFTER * tries).await;
                    tries += 1;
                }
                other => return other.map_err(MigrateError::Jetstream),
            }
        }
    }

    async fn once(&self, target: &JetStreamSpool) -> Result<Imported, SpoolError> {
        match self {
            Work::Item(Item::Notification(item)) => target.import_notification(item).await,
            Work::Item(Item::Quarantined { id, record }) => {
                target.import_quarantined(*id, record).await
            }
            Work::Item(Item::Audit { id, entry }) => target.import_audit(*id, entry).await,
            Work::Item(Item::Subscription(bytes)) => target.import_subscription(bytes).await,
            Work::Item(Item::Paused(name)) => target.import_paused(name).await,
            // Taken apart by the walk (checks numbered, marks written
            // at its end): never here.
            Work::Item(Item::Stuck(_) | Item::Walked { .. } | Item::Check { .. }) => {
                Ok(Imported::default())
            }
            Work::Check(source, subject, n, check) => {
                target.import_check(source, subject, *n, check).await
            }
        }
    }
}

/// The counts of both spools compared, once the JetStream index holds
/// everything the stream holds.
async fn verify(
    sled: &Spool,
    target: &Arc<JetStreamSpool>,
    done: MigrationProgress,
    walked: &ArchiveCounts,
) -> Result<Migrated, MigrateError> {
    target.settle().await.map_err(MigrateError::Jetstream)?;
    let (want, got) = (sled.counts(), target.counts());
    let mut differ = want.differences(&got, ["sled", "JetStream"]);
    let audit = target
        .audit_count()
        .await
        .map_err(MigrateError::Jetstream)?;
    if audit != walked.audit_records {
        differ.push(format!(
            "audit records: sled {}, JetStream {audit}",
            walked.audit_records
        ));
    }
    let names = |subscriptions: Vec<super::ApiSubscription>| -> BTreeSet<String> {
        subscriptions.into_iter().map(|s| s.name).collect()
    };
    let (sled_api, jetstream_api) = (
        names(sled.api_subscriptions()),
        names(target.api_subscriptions()),
    );
    if sled_api != jetstream_api {
        differ.push(format!(
            "API subscriptions: sled {sled_api:?}, JetStream {jetstream_api:?}"
        ));
    }
    let (sled_paused, jetstream_paused) = (sled.paused(), target.paused());
    if sled_paused != jetstream_paused {
        differ.push(format!(
            "paused subscriptions: sled {sled_paused:?}, JetStream {jetstream_paused:?}"
        ));
    }
    if !differ.is_empty() {
        return Err(MigrateError::Mismatch(differ));
    }
    Ok(Migrated {
        progress: done,
        counts: got,
        audit_records: audit,
        api_subscriptions: u64::try_from(jetstream_api.len()).unwrap_or(u64::MAX),
    })
}
