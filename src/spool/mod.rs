//! The spool: what ingress, the forwarder and admins see of the store.
//!
//! It owns the durable state of the relay and speaks the callers' words:
//! [`Spool::store`] a notification (fan-out to the subscriptions happens
//! inside), [`Spool::quarantine`] a body, [`Spool::lease`] due deliveries of
//! one subscription and [`Spool::complete`] them with their new state,
//! [`Spool::replay`], queries, retention ([`Spool::maintain`]) and
//! [`Spool::health`]; it keeps [`Spool::counts`] of deliveries by state in
//! memory (and persisted with the changes they count) and an audit log of
//! admins' changes ([`Spool::audit`]). No backend type, key or error
//! crosses this boundary. It reports what it recorded that the relay's
//! operational events are made of ([`Spool::observe`]).
//!
//! The promises every backend keeps:
//! - `store` answers only after a flush (that began after the write) made the
//!   notification durable, and nothing is leased before that flush;
//! - a lease that is dropped without being completed is leased again;
//! - an outcome that cannot be recorded is refused, and the lease stays with
//!   its holder, which must not send it again until it is recorded.
//!
//! The boundary is an enum over backends (`Backend::Sled`, and
//! `Backend::Jetstream`, which `open` refuses while it is built), as
//! svix's cache and queue are: one `dispatch!` arm per backend, no trait
//! objects or boxed futures. Everything here is async; a backend that
//! blocks (sled) does so off the runtime itself, and whole-spool walks come
//! as a [`RecordStream`] read a few records ahead. A new backend (NATS
//! JetStream next) adds a variant to `Backend` and `LeaseOf`, an arm to
//! each dispatch, and a module with: open/unopened, store/store_to (with a
//! release id), quarantine, lease/complete, pause, replay, retry_now,
//! purge, backfill, reassign_orphans, set_routes, maintain, the audit log,
//! API subscriptions, stuck marks, reconcile checks (`reconcile.rs`) and
//! the two store rules of reconciliation, health/counts (in memory), the
//! reads below, stats, check and backup/restore. Ingress holds a [`Producer`],
//! the forwarder a [`Consumer`]; admins and the relay's upkeep the whole
//! [`Spool`].

mod audit;
pub mod backup;
mod dedup;
mod delivery_codec;
mod error;
mod invoices;
mod jetstream;
pub mod migrate;
mod observe;
pub mod record;
mod report;
mod roles;
mod routes;
mod sled;
mod standing;
mod stream;
mod subscriptions;
mod tally;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use crate::clock::Clock;
use crate::config::{SpoolBackend, SpoolConfig};
use crate::delivery::Delivery;
use crate::providers::Notification;
pub use audit::{AuditEntry, AuditId, AuditIdError, AuditRecord};
pub(crate) use error::cause;
pub use error::{Cause, SpoolError};
pub use invoices::{Invoice, InvoiceCursor, StuckChanges, StuckInvoice, StuckMarks, TimelineEntry};
pub use observe::{Observe, Observed, ObservedNotification};
use reads::blocking;
pub use reconcile::{reconciled_key, CheckOutcome, ReconcileCheck};
pub use record::{
    parse_ulid, IdError, NotificationId, NotificationMeta, NotificationRecord, QuarantineMeta,
    QuarantineRecord, Record,
};
pub use report::{
    BackendStats, CheckProblem, CheckReport, Counts, Health, Maintained, Purged, SourceCounts,
    SubscriptionCounts,
};
pub use roles::{Consumer, Producer};
pub use routes::{Route, Routes};
pub use stream::RecordStream;
pub use subscriptions::{ApiSubscription, Replaced, Settings};

/// For the fuzz targets (`fuzz/`): every decoder of stored bytes.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) -> usize {
    sled::decode_any(bytes)
}

/// A nats-server cluster on loopback, for relay-bench and the JetStream
/// backend's tests.
#[doc(hidden)]
pub use jetstream::loopback_cluster::NatsCluster;
pub use jetstream::shared_state::{SharedChange, SharedState};

/// One request as ingress received it; shared by what is stored and what
/// is quarantined.
#[derive(Debug, Clone)]
pub struct Received {
    pub source: String,
    pub body: Bytes,
    pub content_type: Option<String>,
    /// Selected request headers worth keeping (user agent, forwarding hints).
    pub headers: Vec<(String, String)>,
    pub peer: String,
    pub received_ms: i64,
}

/// The work that runs on one relay of those sharing a spool
/// ([`Spool::holds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// The operational events made of the spool's reports, and the
    /// silent-source and stuck-invoice checks.
    Events,
    /// The reconciler's automatic checks with the providers.
    Reconcile,
}

/// What [`Spool::store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New(NotificationId),
    /// The same source and dedup key arrived within the window: nothing new was stored.
    Duplicate(NotificationId),
}

/// A due delivery handed to one holder until [`Spool::complete`] records its
/// new state. Dropped without completion, it is due again.
pub struct Lease(LeaseOf);

impl Lease {
    pub fn id(&self) -> NotificationId {
        match &self.0 {
            LeaseOf::Sled(l) => l.id,
            LeaseOf::Jetstream(l) => l.id(),
        }
    }

    pub fn subscription(&self) -> &str {
        match &self.0 {
            LeaseOf::Sled(l) => &l.subscription,
            LeaseOf::Jetstream(l) => l.subscription(),
        }
    }

    /// The delivery as it stands (pending or waiting); its attempts so far.
    pub fn delivery(&self) -> &Delivery {
        match &self.0 {
            LeaseOf::Sled(l) => &l.delivery,
            LeaseOf::Jetstream(l) => l.delivery(),
        }
    }

    pub fn notification(&self) -> &NotificationRecord {
        match &self.0 {
            LeaseOf::Sled(l) => &l.notification,
            LeaseOf::Jetstream(l) => l.notification(),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id())
            .field("subscription", &self.subscription())
            .finish_non_exhaustive()
    }
}

/// The backends a spool can run on. A new backend is one more variant
/// here (and in [`LeaseOf`]), an arm in [`dispatch!`], and a module that
/// implements the calls below; the contract suite (`spool/contract/`) then
/// proves it keeps the promises.
#[derive(Clone)]
enum Backend {
    Sled(sled::SledSpool),
    /// Built step by step (`docs/design/jetstream.md`); `open` refuses it
    /// until it is complete, so only its tests make one.
    #[allow(dead_code)]
    Jetstream(std::sync::Arc<jetstream::JetStreamSpool>),
}

/// Runs `$call` on whichever backend the spool has, as `$b`.
macro_rules! dispatch {
    // An async call. A network backend's futures are large (a client's
    // request states): boxed, they do not grow the future of every caller
    // on the other backends, an ingress request's included (without the
    // box, sled's HTTP/2 flood test took 18 MiB more).
    ($backend:expr, $b:ident => await $call:expr) => {
        match $backend {
            Backend::Sled($b) => $call.await,
            Backend::Jetstream($b) => Box::pin($call).await,
        }
    };
    ($backend:expr, $b:ident => $call:expr) => {
        match $backend {
            Backend::Sled($b) => $call,
            Backend::Jetstream($b) => $call,
        }
    };
}

// After `dispatch!`, which the reads use.
mod reads;
pub mod reconcile;

/// A lease as its backend keeps it. Held by value: a lease lives as long
/// as one attempt, and every backend's is about as big (JetStream's from
/// step 3 of its plan).
#[allow(clippy::large_enum_variant)]
enum LeaseOf {
    Sled(sled::SledLease),
    Jetstream(jetstream::JetStreamLease),
}

/// The spool, over its backend. Cheap to clone. This is the whole
/// interface, as admins use it; ingress gets a [`Producer`] of it and the
/// forwarder a [`Consumer`].
#[derive(Clone)]
pub struct Spool {
    backend: Backend,
    observer: std::sync::Arc<observe::Observer>,
}

impl Spool {
    fn over(backend: Backend) -> Spool {
        let observer = std::sync::Arc::<observe::Observer>::default();
        // JetStream reports from its fold, on the events' holder only.
        if let Backend::Jetstream(b) = &backend {
            b.report_to(observer.clone());
        }
        Spool { backend, observer }
    }

    /// Opens (or creates, or upgrades) the spool and starts its writer.
    /// Fails clearly if another process holds it, if it is damaged beyond
    /// repair, or if it lost acknowledged notifications; it never silently
    /// starts empty over old data.
    pub async fn open(
        config: &SpoolConfig,
        routes: Routes,
        clock: Clock,
    ) -> Result<Spool, SpoolError> {
        match config.backend {
            SpoolBackend::Sled => {
                let config = config.clone();
                let opened =
                    blocking(move || sled::SledSpool::open(&config, routes, clock)).await?;
                Ok(Spool::over(Backend::Sled(opened)))
            }
            SpoolBackend::Jetstream => {
                let opened = jetstream::JetStreamSpool::open(config, routes, clock).await?;
                Ok(Spool::over(Backend::Jetstream(opened)))
            }
        }
    }

    /// A spool whose store is not opened for lack of room (`reason`): it
    /// refuses every write and leases nothing; the relay replaces its
    /// process once [`Spool::room_to_open`] holds (`crate::reexec`).
    pub async fn unopened(
        config: &SpoolConfig,
        routes: Routes,
        clock: Clock,
        reason: String,
    ) -> Result<Spool, SpoolError> {
        let config = config.clone();
        let unopened =
            blocking(move || sled::SledSpool::unopened(&config, routes, clock, reason)).await?;
        Ok(Spool::over(Backend::Sled(unopened)))
    }

    /// Whether the spool's store has the room an open needs; else why not.
    /// Only sled's store is on this machine's disk: JetStream's servers
    /// answer for their own (a full one refuses writes, seen as 503s).
    pub async fn room_to_open(config: &SpoolConfig) -> Result<(), String> {
        if config.backend == SpoolBackend::Jetstream {
            return Ok(());
        }
        let config = config.clone();
        tokio::task::spawn_blocking(move || sled::room_to_open(&config))
            .await
            .unwrap_or_else(|e| Err(format!("the room check failed: {e}")))
    }

    pub fn config(&self) -> &SpoolConfig {
        dispatch!(&self.backend, b => b.config())
    }

    /// Where the spool is, for logs and the admin's status (a path for sled).
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sled(b) => b.path().display().to_string(),
            Backend::Jetstream(b) => b.location(),
        }
    }

    /// Whether the spool was last closed cleanly and is exactly as that
    /// close left it (so a full check before serving adds nothing).
    pub fn stopped_cleanly(config: &SpoolConfig) -> bool {
        sled::stopped_cleanly(&config.sled.path)
    }

    /// Whether no spool exists at the configured place yet.
    pub fn is_new(config: &SpoolConfig) -> bool {
        sled::is_new(&config.sled.path)
    }

    /// An error at once when another process holds the spool.
    pub async fn ensure_not_locked(config: &SpoolConfig) -> Result<(), SpoolError> {
        let path = config.sled.path.clone();
        blocking(move || sled::ensure_not_locked(&path)).await
    }

    /// Verifies a stopped spool record by record; never panics on damage.
    /// `accept_loss` records a detected loss as known so `serve` can start.
    /// The walk keeps only the problems and the counts, not the records.
    /// On JetStream the stream is walked (`jetstream/check.rs`), with
    /// relays running or not, and `accept_loss` has nothing to record.
    pub async fn check(config: &SpoolConfig, accept_loss: bool) -> Result<CheckReport, SpoolError> {
        if config.backend == SpoolBackend::Jetstream {
            return jetstream::JetStreamSpool::check(config, Clock::system()).await;
        }
        let config = config.clone();
        blocking(move || sled::check(&config, accept_loss)).await
    }

    /// Writes a backup archive of the live spool into `out` (see
    /// [`backup`]): every notification up to the newest one durable when
    /// it began, with its deliveries as they stand when the walk reads
    /// them, and the rest a restored relay needs (on JetStream, what every
    /// relay wrote before it began, and what comes during the walk may be
    /// in it too). Long on a big spool; the writer goes on meanwhile. `progress` hears the counts so far now
    /// and then.
    pub async fn backup<W: std::io::Write + Send + 'static>(
        &self,
        out: W,
        created_ms: i64,
        mut progress: impl FnMut(&backup::ArchiveCounts) + Send + 'static,
    ) -> Result<(backup::Manifest, W), backup::BackupError> {
        let backend = self.backend.clone();
        let walk = move || {
            let mut archive = backup::ArchiveWriter::new(out, created_ms)?;
            let newest = dispatch!(&backend, b => b.backup(&mut archive, &mut progress))?;
            Ok(archive.finish(newest)?)
        };
        tokio::task::spawn_blocking(walk)
            .await
            .map_err(|e| backup::BackupError::from(SpoolError::Task(e.to_string())))?
    }

    /// Restores a backup archive into a new spool at `target` (absent or
    /// an empty directory), with no relay running on it. Nothing appears
    /// at `target` unless the whole archive checked out (its checksum and
    /// counts) and was written. Blocking: for the offline CLI.
    pub fn restore(
        archive: impl std::io::Read,
        target: &Path,
        progress: &mut dyn FnMut(&backup::ArchiveCounts),
    ) -> Result<backup::Manifest, backup::BackupError> {
        sled::restore(archive, target, progress)
    }

    /// The store-only side of this spool, for ingress.
    pub fn producer(&self) -> Producer {
        Producer(self.clone())
    }

    /// The lease/complete side of this spool, for the forwarder.
    pub fn consumer(&self) -> Consumer {
        Consumer(self.clone())
    }

    /// Stores a notification with one delivery per matching subscription,
    /// unless it is a duplicate. Returns once durable (a duplicate too,
    /// since its first copy may have been in the same group).
    pub async fn store(
        &self,
        received: Received,
        notification: Notification,
    ) -> Result<Stored, SpoolError> {
        dispatch!(&self.backend, b => await b.store(received, notification, None))
    }

    /// Makes a quarantined body a notification after all (an admin's
    /// release, its provider check passed again, or accepted as generic):
    /// stored and fanned out like one just received, and gone from the
    /// quarantine in the same write. `NotFound` when it is no longer there.
    pub async fn release(
        &self,
        id: NotificationId,
        received: Received,
        notification: Notification,
    ) -> Result<Stored, SpoolError> {
        dispatch!(&self.backend, b => await b.store(received, notification, Some(id)))
    }

    /// Holds a subscription's deliveries (`paused`), or lets them go again
    /// in their order. Nothing of a paused subscription is leased; the
    /// state is kept across restarts.
    pub async fn pause(&self, subscription: &str, paused: bool) -> Result<(), SpoolError> {
        dispatch!(&self.backend, b => await b.pause(subscription, paused))
    }

    /// The subscriptions paused now (kept in memory).
    pub fn paused(&self) -> std::collections::BTreeSet<String> {
        dispatch!(&self.backend, b => b.paused())
    }

    /// Whether `subscription` is paused now (kept in memory).
    pub fn is_paused(&self, subscription: &str) -> bool {
        dispatch!(&self.backend, b => b.is_paused(subscription))
    }

    /// The subscriptions created through the admin API (kept in memory).
    pub fn api_subscriptions(&self) -> Vec<ApiSubscription> {
        dispatch!(&self.backend, b => b.api_subscriptions())
    }

    /// Keeps an API-created subscription (new, or with a rotated secret)
    /// and the audit record of that change, both or neither (one batch);
    /// answers once durable, with the record's id. Fan-out and forwarding
    /// take it only when the caller hands the new routes and targets over
    /// ([`Spool::set_routes`]).
    /// Hears the API subscriptions change when another relay sharing the
    /// spool changes them (JetStream); `None` where only this relay can
    /// (sled: its admin API applies its own changes).
    pub fn subscription_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Jetstream(b) => Some(b.subscription_changes()),
        }
    }

    pub async fn put_subscription(
        &self,
        subscription: ApiSubscription,
        audit: AuditEntry,
    ) -> Result<AuditId, SpoolError> {
        dispatch!(&self.backend, b => await b.put_subscription(subscription, audit))
    }

    /// Forgets an API-created subscription, with the audit record of that
    /// change (both or neither); answers once durable.
    pub async fn remove_subscription(
        &self,
        name: &str,
        audit: AuditEntry,
    ) -> Result<AuditId, SpoolError> {
        dispatch!(&self.backend, b => await b.remove_subscription(name, audit))
    }

    /// Gives `subscription` a new delivery, due now, of each of these
    /// stored notifications that it has none of yet; they go out in id
    /// (receipt) order. Returns how many were added.
    pub async fn backfill(
        &self,
        subscription: &str,
        ids: Vec<NotificationId>,
        now_ms: i64,
    ) -> Result<u64, SpoolError> {
        dispatch!(&self.backend, b => await b.backfill(subscription, ids, now_ms))
    }

    /// Stores a notification of the relay's own (a test event) fanned out
    /// to these subscriptions only, through the same durable path.
    pub async fn store_to(
        &self,
        received: Received,
        notification: Notification,
        subscriptions: Vec<String>,
    ) -> Result<Stored, SpoolError> {
        dispatch!(&self.backend, b => await b.store_to(received, notification, None, subscriptions))
    }

    /// Removes a quarantined body for good; `NotFound` when it is not there.
    pub async fn discard(&self, id: NotificationId) -> Result<(), SpoolError> {
        dispatch!(&self.backend, b => await b.discard(id))
    }

    /// Keeps a rejected body durably, with the reason, for admins.
    pub async fn quarantine(
        &self,
        received: Received,
        reason_kind: &str,
        reason: String,
    ) -> Result<NotificationId, SpoolError> {
        // Sled reports here; JetStream from its fold (`jetstream/reports.rs`).
        let in_process = matches!(self.backend, Backend::Sled(_));
        let noted = (in_process && self.observer.is_on())
            .then(|| (received.source.clone(), received.body.len(), reason.clone()));
        let id = dispatch!(&self.backend, b => await b.quarantine(received, reason_kind, reason))?;
        if let Some((source, bytes, reason)) = noted {
            self.observer.send(Observed::Quarantined {
                id,
                source,
                reason_kind: reason_kind.to_owned(),
                reason,
                bytes,
            });
        }
        Ok(id)
    }

    /// Up to `max` deliveries of `subscription` that are due, waiting until
    /// at least one is. Cancel by dropping the future.
    pub async fn lease(&self, subscription: &str, max: usize) -> Result<Vec<Lease>, SpoolError> {
        let max = max.max(1);
        Ok(match &self.backend {
            Backend::Sled(b) => b
                .lease(subscription, max)
                .await?
                .into_iter()
                .map(LeaseOf::Sled),
            Backend::Jetstream(b) => {
                let leases = Box::pin(b.lease(subscription, max)).await?;
                return Ok(leases
                    .into_iter()
                    .map(|l| Lease(LeaseOf::Jetstream(l)))
                    .collect());
            }
        }
        .map(Lease)
        .collect())
    }

    /// Records a leased delivery's new state (after an attempt). Answers
    /// once applied: the outcome rides on the next group flush, since a lost
    /// outcome only means the delivery is made again. On error the lease
    /// stays held; retry later, do not send it again.
    pub async fn complete(&self, lease: &Lease, delivery: &Delivery) -> Result<(), SpoolError> {
        match (&self.backend, &lease.0) {
            (Backend::Sled(b), LeaseOf::Sled(l)) => {
                b.complete(l, delivery).await?;
                self.observer.attempted(lease, delivery);
            }
            // Reported from the fold, by the relay that holds the events duty.
            (Backend::Jetstream(b), LeaseOf::Jetstream(l)) => {
                Box::pin(b.complete(l, delivery)).await?
            }
            _ => return Err(SpoolError::Unsupported("complete a lease of another spool")),
        }
        Ok(())
    }

    /// Starts reporting what the spool records that operational events are
    /// made of (attempts recorded, bodies quarantined) to `observer`, while
    /// [`Spool::set_observing`] is on; false if someone already observes.
    /// Each report is handed over as it is recorded, never queued, so a
    /// burst loses none: the observer aggregates (and must never wait).
    pub fn observe(&self, observer: std::sync::Arc<dyn Observe>) -> bool {
        self.observer.start(observer)
    }

    /// Whether to report at all: off, nothing is cloned or sent.
    pub fn set_observing(&self, on: bool) {
        self.observer.set_on(on);
    }

    /// The key-value bucket `name` that every relay on this spool shares
    /// (made if it is not there); `None` on sled, whose one relay keeps
    /// such state in files of its own.
    pub async fn shared_state(&self, name: &str) -> Result<Option<SharedState>, SpoolError> {
        match &self.backend {
            Backend::Sled(_) => Ok(None),
            Backend::Jetstream(b) => b.shared_state(name).await.map(Some),
        }
    }

    /// Whether this relay holds `duty` now, taking it if no relay does
    /// (`docs/design/jetstream.md` §1.5); the work it stands for runs only
    /// while it does, and the caller asks again at each tick (a duty not
    /// asked again lapses, and another relay takes it over). Always true
    /// on sled, whose spool one relay alone opens. On JetStream, holding
    /// [`Duty::Events`] is also what makes the spool report (see
    /// [`Spool::observe`]): every relay's attempts and quarantined bodies,
    /// from the stream, to the holder alone.
    pub async fn holds(&self, duty: Duty) -> bool {
        match &self.backend {
            Backend::Sled(_) => true,
            Backend::Jetstream(b) => Box::pin(b.holds(duty)).await,
        }
    }

    /// The newest receipt of `source` that the spool saw stored by any
    /// relay since it opened (Unix ms); `None` on sled, where the relay's
    /// own metrics know it.
    pub fn last_received_ms(&self, source: &str) -> Option<i64> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Jetstream(b) => b.last_received_ms(source),
        }
    }

    /// Reports the observer took but could not keep.
    pub fn observed_dropped(&self) -> u64 {
        self.observer.dropped()
    }

    /// Puts a dead (or delivered) delivery back in the queue with a fresh
    /// schedule; false if that delivery was never attempted (so it is
    /// already due).
    pub async fn replay(
        &self,
        id: NotificationId,
        subscription: &str,
        now_ms: i64,
    ) -> Result<bool, SpoolError> {
        dispatch!(&self.backend, b => await b.replay(id, subscription, now_ms))
    }

    /// Makes every delivery of `subscription` waiting for a later retry
    /// due now (an admin's "retry now", when its target is back): neither
    /// its attempts nor its schedule change. Dead, delivered and in-flight
    /// deliveries are left alone. Applied in bounded slices between other
    /// writes; how many were brought forward.
    pub async fn retry_now(&self, subscription: &str, now_ms: i64) -> Result<u64, SpoolError> {
        dispatch!(&self.backend, b => await b.retry_now(subscription, now_ms))
    }

    /// Gives up the named deliveries (notification, subscription): the
    /// dead ones, and the waiting ones between two attempts, become purged,
    /// with their history; the rest are skipped (see [`Purged`]). Applied
    /// in bounded slices between other writes; answers once durable.
    /// Retention removes a notification once all its deliveries are
    /// delivered or purged, as it does delivered ones.
    pub async fn purge(
        &self,
        targets: Vec<(NotificationId, String)>,
        now_ms: i64,
    ) -> Result<Purged, SpoolError> {
        dispatch!(&self.backend, b => await b.purge(targets, now_ms))
    }

    /// Gives every delivery waiting for `from`, a subscription no longer
    /// configured, to the configured subscription `to` (due now), or purges
    /// them when `to` is `None`; `from`'s deliveries are kept, purged, with
    /// their history. Returns how many. A long walk: for a stopped relay.
    pub async fn reassign_orphans(
        &self,
        from: &str,
        to: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, SpoolError> {
        dispatch!(&self.backend, b => await b.reassign_orphans(from, to, now_ms))
    }

    /// Takes the subscriptions of a reloaded config: notifications stored
    /// from now on fan out to them, and a new subscription gets those only
    /// (what was stored before is for a backfill). Deliveries of a removed
    /// subscription wait as orphans.
    pub async fn set_routes(&self, routes: Routes) -> Result<(), SpoolError> {
        dispatch!(&self.backend, b => await b.set_routes(routes))
    }

    /// One bounded slice of upkeep: retention, dedup expiry, recovery from a
    /// failed store, the acknowledged mark. The app calls it on a timer.
    pub async fn maintain(&self) -> Result<Maintained, SpoolError> {
        dispatch!(&self.backend, b => await b.maintain())
    }

    /// How the spool is doing (kept in memory; no I/O).
    pub fn health(&self) -> Health {
        dispatch!(&self.backend, b => b.health())
    }

    /// What the spool holds by state and subscription: kept in memory by
    /// the writer, exact as of the last applied group; no I/O.
    pub fn counts(&self) -> Counts {
        dispatch!(&self.backend, b => b.counts())
    }

    /// Appends one record to the audit log, stamped with the spool's clock;
    /// answers once it is durable.
    pub async fn audit(&self, entry: AuditEntry) -> Result<AuditId, SpoolError> {
        dispatch!(&self.backend, b => await b.audit(entry))
    }

    /// Whether the backend answers within `within`, after finishing the
    /// writes queued before the question: false when it is gone or stuck
    /// (the watchdog and `/readyz` ask).
    pub async fn alive(&self, within: Duration) -> bool {
        dispatch!(&self.backend, b => await b.writer_alive(within))
    }

    /// Lets the backend finish and make durable what is queued, then stops
    /// it. An error means the last writes may not be durable.
    pub async fn close(&self) -> Result<(), SpoolError> {
        dispatch!(&self.backend, b => await b.close())
    }

    /// What the backend can tell of itself beyond [`Spool::health`]: bytes
    /// it takes, and for a group-committing backend its groups (metrics,
    /// the benchmark and tests read it).
    pub async fn stats(&self) -> BackendStats {
        match &self.backend {
            Backend::Sled(b) => BackendStats {
                // The size asks the filesystem: a blocking read like the others.
                bytes: self
                    .read("measure its size", |b| b.size_on_disk())
                    .await
                    .ok(),
                flush_starts: Some(b.flush_starts()),
                flushed_changes: Some(b.flushed_changes()),
                promise: None,
            },
            // No groups of its own: JetStream commits each publish.
            Backend::Jetstream(b) => BackendStats {
                bytes: b.size().await.ok(),
                flush_starts: None,
                flushed_changes: None,
                promise: Some(b.promise()),
            },
        }
    }

    /// Tests: the writer's next group fails before its batch is applied.
    #[cfg(test)]
    pub fn fail_next_batch(&self) {
        dispatch!(&self.backend, b => b.fail_next_batch())
    }
}

#[cfg(test)]
pub(crate) mod contract;
/// A JetStream spool of a test's own, for tests outside the spool.
#[cfg(test)]
pub(crate) use jetstream::contract_tests::{skip_without_nats, JetStreamFixture};
