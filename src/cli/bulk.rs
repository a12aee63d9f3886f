//! Changes by filter on a running relay (`spool replay`, `spool purge`,
//! and `invoice reconcile` follows its job here too):
//! counted first (`--dry-run`) or done (`--yes`) as a job the relay runs,
//! followed here to its end. A replay by id goes to the spool itself when
//! the relay is not running.

use std::path::Path;

use super::remote::{self, cell, AdminClient, RemoteArgs, RemoteError};
use super::{encode_segment, load, FilterArgs};

/// `spool replay`: by id or by filter through the running relay; by id on
/// the spool itself when the relay is not running.
pub(super) fn replay_command(
    config_path: &Path,
    remote: &RemoteArgs,
    id: Option<String>,
    filter: FilterArgs,
    dry_run: bool,
    yes: bool,
) -> anyhow::Result<()> {
    let Some(id) = id else {
        let bulk = Bulk {
            what: "a replay by filter",
            route: "/api/replay",
        };
        let Some(done) = bulk.run(config_path, remote, &filter, dry_run, yes)? else {
            return Ok(());
        };
        if dry_run {
            outln!(
                "would replay {} deliveries of {} notifications (run again with --yes)",
                cell(&done["deliveries"]),
                cell(&done["notifications"])
            )?;
        } else {
            outln!(
                "replayed {} deliveries of {} notifications",
                cell(&done["replayed"]),
                cell(&done["notifications"])
            )?;
        }
        return Ok(());
    };
    let other_filters = FilterArgs {
        subscription: None,
        ..filter.clone()
    };
    if !other_filters.is_empty() || dry_run {
        return Err(RemoteError::Usage(
            "a replay by id takes only --subscription; filters and --dry-run are for a replay without an id".into(),
        )
        .into());
    }
    let client = match AdminClient::locate(remote, config_path) {
        Ok(client) => Some(client),
        Err(err)
            if matches!(
                err.downcast_ref::<RemoteError>(),
                Some(RemoteError::NoAddress(_))
            ) =>
        {
            None
        }
        Err(err) => return Err(err),
    };
    if let Some(client) = client {
        let path = format!(
            "/api/notifications/{}/replay{}",
            encode_segment(&id),
            remote::query(&[("subscription", filter.subscription.clone())])
        );
        match client.post(&path) {
            Ok(done) => {
                for name in done["replayed"].as_array().into_iter().flatten() {
                    let line =
                        serde_json::json!({"id": id, "subscription": name, "replayed": true});
                    outln!("{line}")?;
                }
                return Ok(());
            }
            // Not running: the spool itself, below.
            Err(err) if err.is_unreachable() => {
                eprintln!(
                    "webhook-relay: the relay is not running; replaying on its spool directly"
                );
            }
            Err(err) => return Err(err.into()),
        }
    }
    let config = load(config_path)?;
    super::spool::replay(&config, &id, filter.subscription)
}

/// A bulk action by filter on the running relay: counted first
/// (`--dry-run`) or done (`--yes`), one of the two required.
struct Bulk {
    what: &'static str,
    route: &'static str,
}

impl Bulk {
    /// The relay's answer, or `None` once printed as JSON.
    fn run(
        &self,
        config_path: &Path,
        remote: &RemoteArgs,
        filter: &FilterArgs,
        dry_run: bool,
        yes: bool,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        if !dry_run && !yes {
            return Err(RemoteError::Usage(format!(
                "{} needs --dry-run (to count) or --yes (to do it)",
                self.what
            ))
            .into());
        }
        let client = AdminClient::locate(remote, config_path)?;
        let mut pairs = filter.pairs();
        pairs.push(("dry_run", dry_run.then(|| "true".to_owned())));
        let mut done = client.post(&format!("{}{}", self.route, remote::query(&pairs)))?;
        if !dry_run {
            done = wait_for_job(&client, done)?;
        }
        if remote.json {
            outln!("{done}")?;
            return Ok(None);
        }
        Ok(Some(done))
    }
}

/// How often the CLI asks how far a bulk job is.
const JOB_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Follows a bulk job the relay started (`started` is its 202 answer) to
/// its end, printing progress on stderr; its last state, or an error if it
/// failed or the relay forgot it (a restart).
pub(super) fn wait_for_job(
    client: &AdminClient,
    started: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let Some(id) = started["id"].as_str().map(str::to_owned) else {
        // An answer without a job: a relay that still answers at once.
        return Ok(started);
    };
    let kind = started["kind"].as_str().unwrap_or("bulk").to_owned();
    let (done_key, picked_key, unit) = match kind.as_str() {
        "purge" => ("purged", "deliveries", "deliveries"),
        "reconcile" => ("checked", "invoices", "invoices"),
        _ => ("replayed", "deliveries", "deliveries"),
    };
    let mut job = started;
    let mut shown = String::new();
    loop {
        let progress = if kind == "reconcile" {
            format!(
                "{kind} job {id}: {} checked of {} invoices picked so far ({} final, {} pending, {} failed), {} skipped",
                cell(&job["checked"]),
                cell(&job["invoices"]),
                cell(&job["final"]),
                cell(&job["pending"]),
                cell(&job["failed"]),
                cell(&job["skipped"]),
            )
        } else {
            format!(
                "{kind} job {id}: {} {done_key} of {} deliveries picked so far ({} notifications), {} skipped",
                cell(&job[done_key]),
                cell(&job["deliveries"]),
                cell(&job["notifications"]),
                cell(&job["skipped"]),
            )
        };
        if progress != shown {
            eprintln!("{progress}");
            shown = progress;
        }
        match job["state"].as_str() {
            Some("running") => {}
            Some("failed") => anyhow::bail!(
                "the {kind} job {id} failed after {} of {} {unit}: {}",
                cell(&job[done_key]),
                cell(&job[picked_key]),
                cell(&job["error"])
            ),
            _ => return Ok(job),
        }
        std::thread::sleep(JOB_POLL);
        job = client.get(&format!("/api/jobs/{id}"))?;
    }
}

/// `spool purge`: by filter, through the running relay.
pub(super) fn purge_command(
    config_path: &Path,
    remote: &RemoteArgs,
    filter: &FilterArgs,
    dry_run: bool,
    yes: bool,
) -> anyhow::Result<()> {
    let bulk = Bulk {
        what: "a purge",
        route: "/api/purge",
    };
    let Some(done) = bulk.run(config_path, remote, filter, dry_run, yes)? else {
        return Ok(());
    };
    if dry_run {
        outln!(
            "would purge {} deliveries of {} notifications (run again with --yes)",
            cell(&done["deliveries"]),
            cell(&done["notifications"])
        )?;
    } else {
        outln!(
            "purged {} deliveries of {} notifications ({} skipped: in flight, never attempted, or changed meanwhile)",
            cell(&done["purged"]),
            cell(&done["notifications"]),
            cell(&done["skipped"])
        )?;
    }
    Ok(())
}
