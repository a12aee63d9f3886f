//! Bulk replays and purges (`POST /api/replay`, `POST /api/purge`) and
//! bulk reconciliations (`POST /api/invoices/reconcile`) as jobs.
//! A bulk action may pick hundreds of thousands of deliveries: holding the
//! pick in memory cost 100 MB for 200,000, and doing it in one request kept
//! the caller waiting minutes. So the pick is walked in slices (at most
//! [`SLICE`] deliveries, resuming after the last notification read), each
//! slice is done before the next is read, and the request answers 202 with
//! a job at once; `GET /api/jobs/{id}` tells how far it is. A dry run only
//! counts, slice by slice, and still answers at once.
//!
//! At most [`RUNNING_AT_ONCE`] job runs at a time (another is 409); the
//! table keeps finished jobs for [`KEPT_FOR`] and at most [`KEPT`] of them.
//! Jobs live in memory: a restart ends them (what a slice did is done; the
//! audit record of a job is written when it ends).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

use super::auth::Caller;
use super::query::Filter;
use super::respond::{audit, no_parameters, ok, Answer, ApiError, Call};
use super::Admin;
use crate::clock::format_ms;
use crate::spool::{NotificationId, Spool, SpoolError};

/// Most deliveries one slice picks (the notification that passes it is
/// taken whole, so a slice may hold a few more).
pub const SLICE: usize = 1000;
/// Most notifications one slice reads, matching or not, so a filter that
/// matches little still reports progress and yields between slices.
const SCAN_PER_SLICE: usize = 20_000;
/// Replays sent to the spool's writer at once (they share its flushes).
const REPLAYS_AT_ONCE: usize = 256;
const RUNNING_AT_ONCE: usize = 1;
/// Finished jobs kept for `GET /api/jobs/{id}`.
const KEPT: usize = 32;
const KEPT_FOR: Duration = Duration::from_secs(3600);

/// Which bulk action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkKind {
    Replay,
    Purge,
    /// Asks the provider about each invoice picked (`reconcile`).
    Reconcile,
}

/// What a job walks: deliveries (a replay, a purge), or what its own
/// runner walks (a reconciliation's invoices, in `reconcile.rs`, which
/// this module does not name so that imports point one way).
pub(super) enum Pick {
    Deliveries(Filter),
    Runner(JobRunner),
}

/// Runs a job given its admin and id, counting through [`Jobs`].
pub(super) type JobRunner = Box<
    dyn FnOnce(
            Arc<Admin>,
            ulid::Ulid,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send>>
        + Send,
>;

/// One count of a reconciliation job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counted {
    /// Invoices picked by a slice of the walk.
    Picked(u64),
    Final,
    Pending,
    Failed,
    Skipped,
}

/// How a reconciliation job's checks came out, so far.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CheckTally {
    /// Invoices picked so far (the total once done).
    pub invoices: u64,
    /// The provider's answer was final (stored as a notification, or the
    /// invoice already stood there).
    pub finals: u64,
    pub pending: u64,
    /// The request or the answer failed (the check is recorded).
    pub failed: u64,
    /// Left unasked: gone meanwhile, or no keys to ask with.
    pub skipped: u64,
}

impl BulkKind {
    fn name(self) -> &'static str {
        match self {
            BulkKind::Replay => "replay",
            BulkKind::Purge => "purge",
            BulkKind::Reconcile => "reconcile",
        }
    }

    /// The count of what was done, under the name the answers always used.
    fn done_key(self) -> &'static str {
        match self {
            BulkKind::Replay => "replayed",
            BulkKind::Purge => "purged",
            BulkKind::Reconcile => "checked",
        }
    }

    fn action(self) -> &'static str {
        match self {
            BulkKind::Replay => "replay.bulk",
            BulkKind::Purge => "purge.bulk",
            BulkKind::Reconcile => "reconcile.bulk",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Running,
    Done,
    Failed,
}

/// One job as `GET /api/jobs/{id}` shows it.
#[derive(Debug, Clone)]
struct Job {
    id: ulid::Ulid,
    kind: BulkKind,
    filter: String,
    by: String,
    state: JobState,
    /// Notifications with a picked delivery, so far.
    notifications: u64,
    /// Deliveries picked so far (the total once done).
    deliveries: u64,
    /// Replayed or purged.
    done: u64,
    /// Picked but left as they were (changed meanwhile, in flight...).
    skipped: u64,
    started_ms: i64,
    finished_ms: Option<i64>,
    error: Option<String>,
    /// A reconciliation's counts (its `done` is the invoices checked).
    checks: CheckTally,
}

impl Job {
    fn to_json(&self) -> Value {
        if self.kind == BulkKind::Reconcile {
            return self.reconcile_json();
        }
        let mut shown = json!({
            "id": self.id.to_string(),
            "kind": self.kind.name(),
            "state": self.state.name(),
            "filter": self.filter,
            "by": self.by,
            "dry_run": false,
            "notifications": self.notifications,
            "deliveries": self.deliveries,
            "skipped": self.skipped,
            "started_at": format_ms(self.started_ms),
            "finished_at": self.finished_ms.map(format_ms),
            "error": self.error,
        });
        shown[self.kind.done_key()] = json!(self.done);
        shown
    }

    fn reconcile_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "kind": self.kind.name(),
            "state": self.state.name(),
            "filter": self.filter,
            "by": self.by,
            "dry_run": false,
            "invoices": self.checks.invoices,
            "checked": self.done,
            "final": self.checks.finals,
            "pending": self.checks.pending,
            "failed": self.checks.failed,
            "skipped": self.checks.skipped,
            "started_at": format_ms(self.started_ms),
            "finished_at": self.finished_ms.map(format_ms),
            "error": self.error,
        })
    }

    /// What the audit record of the ended job says.
    fn audit_detail(&self) -> Value {
        let mut detail = json!({
            "job": self.id.to_string(),
            "state": self.state.name(),
            "skipped": self.skipped + self.checks.skipped,
        });
        if self.kind == BulkKind::Reconcile {
            detail["invoices"] = json!(self.checks.invoices);
            detail["final"] = json!(self.checks.finals);
            detail["pending"] = json!(self.checks.pending);
            detail["failed"] = json!(self.checks.failed);
        } else {
            detail["notifications"] = json!(self.notifications);
            detail["deliveries"] = json!(self.deliveries);
        }
        detail[self.kind.done_key()] = json!(self.done);
        if let Some(error) = &self.error {
            detail["error"] = json!(error);
        }
        detail
    }
}

impl JobState {
    fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

/// The bounded table of jobs, oldest first.
#[derive(Default)]
pub struct Jobs {
    table: Mutex<VecDeque<Job>>,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a running job, unless [`RUNNING_AT_ONCE`] run already; drops
    /// finished ones past their time or beyond [`KEPT`].
    fn begin(&self, job: Job) -> Result<(), ApiError> {
        let mut table = self.lock();
        let now_ms = job.started_ms;
        let kept_for = i64::try_from(KEPT_FOR.as_millis()).unwrap_or(i64::MAX);
        table.retain(|j| j.finished_ms.is_none_or(|at| now_ms - at < kept_for));
        let running: Vec<&Job> = table
            .iter()
            .filter(|j| j.state == JobState::Running)
            .collect();
        if running.len() >= RUNNING_AT_ONCE {
            return Err(ApiError::Conflict(format!(
                "a bulk {} is running (job {}, GET /api/jobs/{}): one at a time",
                running[0].kind.name(),
                running[0].id,
                running[0].id
            )));
        }
        while table.iter().filter(|j| j.finished_ms.is_some()).count() >= KEPT {
            if let Some(oldest) = table.iter().position(|j| j.finished_ms.is_some()) {
                table.remove(oldest);
            }
        }
        table.push_back(job);
        Ok(())
    }

    fn update(&self, id: ulid::Ulid, change: impl FnOnce(&mut Job)) {
        if let Some(job) = self.lock().iter_mut().find(|j| j.id == id) {
            change(job);
        }
    }

    /// Counts what a reconciliation job picked or how one check came out.
    pub(super) fn tally(&self, id: ulid::Ulid, counted: Counted) {
        self.update(id, |job| {
            let checks = &mut job.checks;
            match counted {
                Counted::Picked(n) => checks.invoices += n,
                Counted::Final => checks.finals += 1,
                Counted::Pending => checks.pending += 1,
                Counted::Failed => checks.failed += 1,
                Counted::Skipped => checks.skipped += 1,
            }
            if matches!(counted, Counted::Final | Counted::Pending | Counted::Failed) {
                job.done += 1;
            }
        });
    }

    fn get(&self, id: ulid::Ulid) -> Option<Job> {
        self.lock().iter().find(|j| j.id == id).cloned()
    }
}

/// `GET /api/jobs/{id}`
pub(super) async fn get_one(call: Call) -> Answer {
    no_parameters(&call.query)?;
    ok(show(&call.admin, call.param(0))?)
}

/// `GET /api/jobs/{id}`'s job.
pub(super) fn show(admin: &Admin, id: &str) -> Result<Value, ApiError> {
    let id = crate::spool::parse_ulid(id).map_err(|why| {
        ApiError::Query(super::query::QueryError::Invalid {
            name: "id",
            value: id.to_owned(),
            reason: format!("not a job id: {why}"),
        })
    })?;
    admin.jobs.get(id).map(|job| job.to_json()).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no job {id} (finished jobs are kept {} minutes; a restart forgets them)",
            KEPT_FOR.as_secs() / 60
        ))
    })
}

/// What one slice of the walk picked.
struct Slice {
    targets: Vec<(NotificationId, String)>,
    notifications: u64,
    /// Where the next slice starts (before this id); `None` at the end.
    resume: Option<NotificationId>,
}

/// The next slice of what `filter` picks, newest first, before `before`.
async fn pick_slice(
    spool: &Spool,
    filter: &Filter,
    before: Option<NotificationId>,
) -> Result<Slice, ApiError> {
    let mut slice = Slice {
        targets: Vec::new(),
        notifications: 0,
        resume: None,
    };
    let mut records = spool.notifications_newest_first(before);
    let mut read = 0;
    while let Some(record) = records.next().await {
        let record = record?;
        if filter.past_since(record.meta.received_ms) {
            return Ok(slice);
        }
        let id = NotificationId::parse(&record.meta.id).ok_or_else(|| {
            ApiError::Spool(SpoolError::Corrupt(format!(
                "malformed id {:?}",
                record.meta.id
            )))
        })?;
        if filter.matches_meta(&record.meta) {
            let deliveries = spool.deliveries_of(id).await?;
            let chosen = filter.chosen(&deliveries);
            if !chosen.is_empty() {
                slice.notifications += 1;
            }
            slice
                .targets
                .extend(chosen.into_iter().map(|d| (id, d.subscription.clone())));
        }
        read += 1;
        if slice.targets.len() >= SLICE || read >= SCAN_PER_SLICE {
            slice.resume = Some(id);
            return Ok(slice);
        }
    }
    Ok(slice)
}

async fn next_slice(
    admin: &Admin,
    filter: &Filter,
    before: Option<NotificationId>,
) -> Result<Slice, ApiError> {
    pick_slice(&admin.spool, filter, before).await
}

/// A dry run: what `filter` picks, counted slice by slice.
pub(super) async fn count(admin: &Admin, filter: &Filter) -> Result<Value, ApiError> {
    let (mut notifications, mut deliveries) = (0u64, 0u64);
    let mut before = None;
    loop {
        let slice = next_slice(admin, filter, before).await?;
        notifications += slice.notifications;
        deliveries += slice.targets.len() as u64;
        match slice.resume {
            Some(resume) => before = Some(resume),
            None => break,
        }
    }
    Ok(json!({
        "dry_run": true,
        "notifications": notifications,
        "deliveries": deliveries,
    }))
}

/// Starts a bulk job; its state as the 202 answer shows it.
pub(super) fn start(
    admin: &Arc<Admin>,
    caller: &Caller,
    kind: BulkKind,
    pick: Pick,
    filter_text: &str,
) -> Result<Value, ApiError> {
    let now_ms = admin.clock.now_ms();
    let job = Job {
        id: ulid::Ulid::from_parts(u64::try_from(now_ms).unwrap_or(0), rand::random()),
        kind,
        filter: filter_text.to_owned(),
        by: caller.name.clone(),
        state: JobState::Running,
        notifications: 0,
        deliveries: 0,
        done: 0,
        skipped: 0,
        started_ms: now_ms,
        finished_ms: None,
        error: None,
        checks: CheckTally::default(),
    };
    let shown = job.to_json();
    let id = job.id;
    admin.jobs.begin(job)?;
    tracing::info!(job = %id, kind = kind.name(), filter = filter_text, by = %caller.name, "bulk job started");
    let admin = Arc::clone(admin);
    let caller = caller.clone();
    tokio::spawn(async move {
        let ran = match pick {
            Pick::Deliveries(filter) => run(&admin, id, kind, &filter).await,
            Pick::Runner(runner) => runner(Arc::clone(&admin), id).await,
        };
        let finished_ms = admin.clock.now_ms();
        let Some(mut job) = admin.jobs.get(id) else {
            return;
        };
        job.finished_ms = Some(finished_ms);
        match ran {
            Ok(()) => job.state = JobState::Done,
            Err(err) => {
                job.state = JobState::Failed;
                job.error = Some(err.to_string());
            }
        }
        let detail = job.audit_detail();
        if let Some(error) = &job.error {
            tracing::warn!(job = %id, kind = kind.name(), done = job.done, error = %error, "bulk job failed");
        } else {
            tracing::info!(job = %id, kind = kind.name(), notifications = job.notifications, done = job.done, skipped = job.skipped, "bulk job done");
        }
        // Audited before it shows as ended, so whoever saw it end finds
        // its audit record.
        if let Err(err) = audit(&admin, &caller, kind.action(), &job.filter, detail).await {
            tracing::error!(job = %id, error = %err, "the audit record of a bulk job cannot be written");
        }
        admin.jobs.update(id, |kept| *kept = job);
    });
    Ok(shown)
}

/// The walk and the changes, slice after slice; progress into the table.
async fn run(
    admin: &Admin,
    id: ulid::Ulid,
    kind: BulkKind,
    filter: &Filter,
) -> Result<(), ApiError> {
    let mut before = None;
    loop {
        let slice = next_slice(admin, filter, before).await?;
        let picked = slice.targets.len() as u64;
        admin.jobs.update(id, |job| {
            job.notifications += slice.notifications;
            job.deliveries += picked;
        });
        let now_ms = admin.clock.now_ms();
        let (done, skipped) = match kind {
            BulkKind::Replay => replay_slice(admin, id, slice.targets, now_ms).await?,
            BulkKind::Reconcile => {
                return Err(ApiError::Internal(
                    "a reconciliation walks invoices, not deliveries".into(),
                ))
            }
            BulkKind::Purge => {
                let purged = admin.spool.purge(slice.targets, now_ms).await?;
                admin.jobs.update(id, |job| {
                    job.done += purged.purged;
                    job.skipped += purged.skipped;
                });
                (purged.purged, purged.skipped)
            }
        };
        tracing::debug!(job = %id, picked, done, skipped, "bulk job slice done");
        match slice.resume {
            Some(resume) => before = Some(resume),
            None => return Ok(()),
        }
    }
}

/// Replays a slice, [`REPLAYS_AT_ONCE`] at a time so they share the
/// writer's group flushes; what changed since the walk is skipped.
async fn replay_slice(
    admin: &Admin,
    id: ulid::Ulid,
    targets: Vec<(NotificationId, String)>,
    now_ms: i64,
) -> Result<(u64, u64), ApiError> {
    let (mut done, mut skipped) = (0u64, 0u64);
    for chunk in targets.chunks(REPLAYS_AT_ONCE) {
        let mut replays = tokio::task::JoinSet::new();
        for (notification, subscription) in chunk.iter().cloned() {
            let spool = admin.spool.clone();
            replays.spawn(async move { spool.replay(notification, &subscription, now_ms).await });
        }
        let (mut chunk_done, mut chunk_skipped) = (0u64, 0u64);
        let mut failed = None;
        while let Some(replayed) = replays.join_next().await {
            match replayed.map_err(|e| ApiError::Internal(format!("a replay failed: {e}")))? {
                Ok(_) => chunk_done += 1,
                // Changed since the walk (e.g. retention removed it).
                Err(SpoolError::NotFound(_) | SpoolError::NotReplayable(_)) => chunk_skipped += 1,
                Err(err) => failed = Some(err),
            }
        }
        admin.jobs.update(id, |job| {
            job.done += chunk_done;
            job.skipped += chunk_skipped;
        });
        done += chunk_done;
        skipped += chunk_skipped;
        if let Some(err) = failed {
            return Err(err.into());
        }
    }
    Ok((done, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u64, state: JobState, finished_ms: Option<i64>) -> Job {
        Job {
            id: ulid::Ulid::from_parts(n, 0),
            kind: BulkKind::Replay,
            filter: String::new(),
            by: "ops".into(),
            state,
            notifications: 0,
            deliveries: 0,
            done: 0,
            skipped: 0,
            started_ms: 1_000_000 + n as i64,
            finished_ms,
            error: None,
            checks: CheckTally::default(),
        }
    }

    #[test]
    fn one_job_runs_at_a_time_and_finished_ones_are_kept_within_bounds() {
        let jobs = Jobs::default();
        jobs.begin(job(1, JobState::Running, None)).unwrap();
        let refused = jobs.begin(job(2, JobState::Running, None)).unwrap_err();
        assert!(matches!(refused, ApiError::Conflict(_)), "{refused}");
        jobs.update(ulid::Ulid::from_parts(1, 0), |j| {
            j.state = JobState::Done;
            j.finished_ms = Some(1_000_001);
        });
        for n in 2..(KEPT as u64 + 10) {
            jobs.begin(job(n, JobState::Done, Some(1_000_000 + n as i64)))
                .unwrap();
        }
        assert!(jobs.lock().len() <= KEPT + 1, "{}", jobs.lock().len());
        assert!(
            jobs.get(ulid::Ulid::from_parts(1, 0)).is_none(),
            "the oldest went first"
        );
        // Past their time, finished jobs go at the next start.
        let late = 1_000_000 + i64::try_from(KEPT_FOR.as_millis()).unwrap() + 100;
        let mut next = job(99, JobState::Running, None);
        next.started_ms = late;
        jobs.begin(next).unwrap();
        assert_eq!(jobs.lock().len(), 1);
    }
}
