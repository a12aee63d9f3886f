//! `webhook-relay subscriptions ls|pause|resume|retry|add|rm|backfill|test|rotate-secret`:
//! each one call (`ls` two) to the running relay's admin API. A secret is printed once, as the API shows it once.

use std::path::Path;

use serde_json::{json, Value};

use super::remote::{cell, query, table, AdminClient, RemoteArgs, RemoteError};
use super::{encode_segment, post_and_print, SubscriptionsCommand};

/// The subscription `add` creates: the keys of a `[[subscriptions]]` table
/// of `relay.toml`, but the secret, which the relay makes.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// a-z, 0-9, '-' and '_'.
    name: String,
    #[arg(long)]
    url: String,
    /// A source it takes (repeat for more); all sources when absent.
    #[arg(long = "source")]
    sources: Vec<String>,
    /// An event-type pattern it takes, `*` matches anything (repeat for
    /// more); all events when absent.
    #[arg(long = "event")]
    events: Vec<String>,
    /// At most this many requests per period: `20/s`, `600/m`.
    #[arg(long)]
    rate: Option<String>,
    /// Timeout of a first attempt (`20s`).
    #[arg(long)]
    timeout_first: Option<String>,
    /// Timeout of a retry (`5s`).
    #[arg(long)]
    timeout_retry: Option<String>,
    /// Attempts in flight at once.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// The waits before each retry, as in relay.toml: `--schedule
    /// 30s,5m,1h` (or repeated); the relay's default when absent.
    #[arg(long, value_delimiter = ',')]
    schedule: Vec<String>,
    /// Random spread of each wait, a fraction of it from 0.0 to 1.0
    /// (relay.toml's `jitter`).
    #[arg(long)]
    jitter: Option<f64>,
    /// An invoice status it takes: queued, accepted, rejected, deleted,
    /// unknown (repeat for more); all when absent.
    #[arg(long = "status")]
    statuses: Vec<String>,
    /// What it gets of a notification that would move its invoice back
    /// from a final status: deliver, mark (the default) or skip.
    #[arg(long)]
    on_superseded: Option<String>,
}

impl AddArgs {
    fn request(&self) -> Value {
        let mut request = json!({ "name": self.name, "url": self.url });
        let list = |items: &[String]| (!items.is_empty()).then(|| json!(items));
        for (key, value) in [
            ("sources", list(&self.sources)),
            ("events", list(&self.events)),
            ("rate", self.rate.as_ref().map(|v| json!(v))),
            (
                "timeout_first",
                self.timeout_first.as_ref().map(|v| json!(v)),
            ),
            (
                "timeout_retry",
                self.timeout_retry.as_ref().map(|v| json!(v)),
            ),
            ("max_in_flight", self.max_in_flight.map(|v| json!(v))),
            ("schedule", list(&self.schedule)),
            ("jitter", self.jitter.map(|v| json!(v))),
            ("statuses", list(&self.statuses)),
            (
                "on_superseded",
                self.on_superseded.as_ref().map(|v| json!(v)),
            ),
        ] {
            if let Some(value) = value {
                request[key] = value;
            }
        }
        request
    }
}

/// Runs one `subscriptions` command.
pub fn run(command: SubscriptionsCommand) -> anyhow::Result<()> {
    match command {
        SubscriptionsCommand::Add {
            config,
            remote,
            new,
        } => {
            let client = AdminClient::locate(&remote, &config.config)?;
            let created = client.post_json("/api/subscriptions", &new.request())?;
            if remote.json {
                outln!("{created}")?;
            } else {
                outln!(
                    "created {} -> {}\nsecret: {}\n(shown only now: give it to the receiving app, which verifies the webhook-signature header with it)",
                    cell(&created["name"]),
                    cell(&created["url"]),
                    cell(&created["secret"]),
                )?;
            }
            Ok(())
        }
        SubscriptionsCommand::Rm {
            config,
            remote,
            name,
            purge,
            yes,
        } => {
            if purge && !yes {
                return Err(RemoteError::Usage(
                    "--purge gives up every delivery still waiting: add --yes to do it".into(),
                )
                .into());
            }
            let client = AdminClient::locate(&remote, &config.config)?;
            let path = format!(
                "/api/subscriptions/{}{}",
                encode_segment(&name),
                query(&[("purge", purge.then(|| "true".to_owned()))])
            );
            let done = client.delete(&path)?;
            if remote.json {
                outln!("{done}")?;
            } else {
                outln!(
                    "deleted {name} ({} waiting deliveries purged)",
                    cell(&done["purged"])
                )?;
            }
            Ok(())
        }
        SubscriptionsCommand::Backfill {
            config,
            remote,
            name,
            since,
            until,
            current,
            dry_run,
            yes,
        } => {
            if !dry_run && !yes {
                return Err(RemoteError::Usage(
                    "a backfill needs --dry-run (to count) or --yes (to do it)".into(),
                )
                .into());
            }
            let path = format!(
                "/api/subscriptions/{}/backfill{}",
                encode_segment(&name),
                query(&[
                    ("since", since),
                    ("until", until),
                    ("current", current.then(|| "true".to_owned())),
                    ("dry_run", dry_run.then(|| "true".to_owned())),
                ])
            );
            post_and_print(&config.config, &remote, &path, |done| {
                let range = format!(
                    "{}received from {} until {}",
                    if current {
                        "(each invoice's current one) "
                    } else {
                        ""
                    },
                    match &done["range"]["since"] {
                        Value::Null => "the first".to_owned(),
                        since => cell(since),
                    },
                    match &done["range"]["until"] {
                        Value::Null => "now".to_owned(),
                        until => cell(until),
                    }
                );
                if dry_run {
                    format!(
                        "would give {name} {} notifications {range} (run again with --yes)",
                        cell(&done["notifications"])
                    )
                } else {
                    format!(
                        "gave {name} {} notifications {range}, in order",
                        cell(&done["added"])
                    )
                }
            })
        }
        SubscriptionsCommand::Test {
            config,
            remote,
            name,
        } => {
            let path = format!("/api/subscriptions/{}/test", encode_segment(&name));
            post_and_print(&config.config, &remote, &path, |done| {
                let id = cell(&done["id"]);
                format!(
                    "test event {id} ({}) stored for {name}; follow it with `webhook-relay spool show {id}`",
                    cell(&done["event"])
                )
            })
        }
        SubscriptionsCommand::RotateSecret {
            config,
            remote,
            name,
            overlap,
        } => {
            let path = format!(
                "/api/subscriptions/{}/rotate-secret{}",
                encode_segment(&name),
                query(&[("overlap", Some(overlap))])
            );
            post_and_print(&config.config, &remote, &path, |done| {
                format!(
                    "new secret for {name}: {}\n(shown only now; the old secret signs too until {})",
                    cell(&done["secret"]),
                    cell(&done["previous_valid_until"])
                )
            })
        }
        SubscriptionsCommand::Ls { config, remote } => list_subscriptions(&config.config, &remote),
        SubscriptionsCommand::Pause {
            config,
            remote,
            name,
        } => {
            let path = format!("/api/subscriptions/{}/pause", encode_segment(&name));
            post_and_print(&config.config, &remote, &path, |_| format!("paused {name}"))
        }
        SubscriptionsCommand::Retry {
            config,
            remote,
            name,
        } => {
            let path = format!("/api/subscriptions/{}/retry", encode_segment(&name));
            post_and_print(&config.config, &remote, &path, |done| {
                format!(
                    "{} waiting deliveries of {name} are due now",
                    cell(&done["retried"])
                )
            })
        }
        SubscriptionsCommand::Resume {
            config,
            remote,
            name,
        } => {
            let path = format!("/api/subscriptions/{}/resume", encode_segment(&name));
            post_and_print(&config.config, &remote, &path, |_| {
                format!("resumed {name}")
            })
        }
    }
}

fn list_subscriptions(config: &Path, remote: &RemoteArgs) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    // Each item carries its delivery counts: a subscriber may not read the stats.
    let subscriptions = client.get("/api/subscriptions")?;
    let items = subscriptions["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if remote.json {
        for item in &items {
            outln!("{item}")?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let of = &s["deliveries"];
            // Who created it, for those made through the API.
            let origin = match &s["created_by"] {
                serde_json::Value::String(by) => format!("api ({by})"),
                _ => cell(&s["origin"]),
            };
            vec![
                cell(&s["name"]),
                cell(&s["url"]),
                origin,
                if s["paused"] == true {
                    "paused"
                } else {
                    "active"
                }
                .to_owned(),
                cell(&of["waiting"]),
                cell(&of["dead"]),
                cell(&of["delivered"]),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "NAME",
                "URL",
                "ORIGIN",
                "STATE",
                "WAITING",
                "DEAD",
                "DELIVERED"
            ],
            &rows
        )
    )?;
    Ok(())
}
