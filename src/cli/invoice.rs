//! `webhook-relay invoice ls|show|reconcile`: the invoices a running relay
//! knows (notifications grouped by source and invoice number, each with its
//! current status), one invoice's timeline, and asking the provider where
//! one invoice, or every one a filter picks, stands; through the admin API.

use serde_json::Value;

use super::bulk::wait_for_job;
use super::remote::{cell, query, table, AdminClient, RemoteArgs, RemoteError};
use super::{encode_segment, one_line, ConfigArg};

#[derive(Debug, clap::Subcommand)]
pub enum InvoiceCommand {
    /// List invoices with their current status, in source and number order.
    Ls {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        source: Option<String>,
        /// The invoice number, a pattern with `*` (`0001-*`).
        #[arg(long)]
        subject: Option<String>,
        /// Its current status: queued, accepted, rejected, deleted, unknown.
        #[arg(long)]
        status: Option<String>,
        /// Its latest notification at or after: RFC 3339, or a duration
        /// back from now (`24h`).
        #[arg(long)]
        since: Option<String>,
        /// Only stuck invoices: left queued past their source's
        /// `stuck_after`, with the time their wait began.
        #[arg(long)]
        stuck: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One invoice: every notification of it in order, the status each
    /// told, the provider's resends, and every delivery with its attempts.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        source: String,
        subject: String,
    },
    /// Ask the provider's query API where an invoice stands (its source
    /// needs `[sources.NAME.reconcile]`): one invoice (SOURCE SUBJECT), or
    /// every invoice a filter picks (--source, with --dry-run to count them
    /// first, or --yes), one request at a time within the source's rate.
    /// A final answer becomes a notification like a webhook's.
    Reconcile {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        /// The invoice's source (with SUBJECT: one invoice).
        #[arg(
            value_name = "SOURCE",
            requires = "subject",
            conflicts_with_all = ["source", "status", "since", "until", "dry_run", "yes"]
        )]
        invoice_source: Option<String>,
        /// The invoice number.
        subject: Option<String>,
        /// Every invoice of this source the other filters pick.
        #[arg(long, required_unless_present = "invoice_source")]
        source: Option<String>,
        /// Their current status (default queued).
        #[arg(long)]
        status: Option<String>,
        /// Their latest notification at or after: RFC 3339, or a duration
        /// back from now (`30d`).
        #[arg(long)]
        since: Option<String>,
        /// Their latest notification before.
        #[arg(long)]
        until: Option<String>,
        /// Count the invoices the filter picks; ask nothing.
        #[arg(long)]
        dry_run: bool,
        /// Ask about every one of them.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs one `invoice` command.
pub fn run(command: InvoiceCommand) -> anyhow::Result<()> {
    match command {
        InvoiceCommand::Ls {
            config,
            remote,
            source,
            subject,
            status,
            since,
            stuck,
            limit,
        } => {
            let client = AdminClient::locate(&remote, &config.config)?;
            let pairs = vec![
                ("source", source),
                ("subject", subject),
                ("status", status),
                ("since", since),
                ("limit", Some(limit.to_string())),
                ("stuck", stuck.then(|| "true".to_owned())),
            ];
            let page = client.get(&format!("/api/invoices{}", query(&pairs)))?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if remote.json {
                for item in &items {
                    outln!("{item}")?;
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    let mut row = vec![cell(&i["source"]), cell(&i["subject"]), cell(&i["status"])];
                    if stuck {
                        row.push(cell(&i["queued_since"]));
                    }
                    row.extend([cell(&i["latest_at"]), cell(&i["latest_id"])]);
                    row
                })
                .collect();
            let headers: &[&str] = if stuck {
                &[
                    "SOURCE",
                    "INVOICE",
                    "STATUS",
                    "QUEUED SINCE",
                    "LATEST",
                    "LATEST ID",
                ]
            } else {
                &["SOURCE", "INVOICE", "STATUS", "LATEST", "LATEST ID"]
            };
            out!("{}", table(headers, &rows))?;
            if let Some(cursor) = page["next_cursor"].as_str() {
                outln!("(more: the API with cursor={cursor})")?;
            }
            Ok(())
        }
        InvoiceCommand::Show {
            config,
            remote,
            source,
            subject,
        } => {
            let client = AdminClient::locate(&remote, &config.config)?;
            let shown = client.get(&format!(
                "/api/invoices/{}/{}",
                encode_segment(&source),
                encode_segment(&subject)
            ))?;
            if remote.json {
                outln!("{shown}")?;
                return Ok(());
            }
            print_timeline(&shown)?;
            Ok(())
        }
        InvoiceCommand::Reconcile {
            config,
            remote,
            invoice_source,
            subject,
            source,
            status,
            since,
            until,
            dry_run,
            yes,
        } => {
            let client = AdminClient::locate(&remote, &config.config)?;
            if let (Some(source), Some(subject)) = (invoice_source, subject) {
                let check = client.post(&format!(
                    "/api/invoices/{}/{}/reconcile",
                    encode_segment(&source),
                    encode_segment(&subject)
                ))?;
                if remote.json {
                    outln!("{check}")?;
                } else {
                    outln!("{source} {subject}: {}", describe_check(&check))?;
                }
                return Ok(());
            }
            if !dry_run && !yes {
                return Err(RemoteError::Usage(
                    "a reconciliation by filter needs --dry-run (to count) or --yes (to ask the provider about each)".into(),
                )
                .into());
            }
            let mut filter = serde_json::json!({ "source": source, "dry_run": dry_run });
            for (name, value) in [("status", status), ("since", since), ("until", until)] {
                if let Some(value) = value {
                    filter[name] = value.into();
                }
            }
            let mut done = client.post_json("/api/invoices/reconcile", &filter)?;
            if !dry_run {
                done = wait_for_job(&client, done)?;
            }
            if remote.json {
                outln!("{done}")?;
            } else if dry_run {
                outln!(
                    "would ask the provider about {} invoices (run again with --yes)",
                    cell(&done["count"])
                )?;
            } else {
                outln!(
                    "asked the provider about {} of {} invoices: {} final, {} still pending, {} failed, {} skipped",
                    cell(&done["checked"]),
                    cell(&done["invoices"]),
                    cell(&done["final"]),
                    cell(&done["pending"]),
                    cell(&done["failed"]),
                    cell(&done["skipped"])
                )?;
            }
            Ok(())
        }
    }
}

/// A check's outcome in a line: what the provider said, and what the
/// relay did with it.
pub(super) fn describe_check(check: &Value) -> String {
    match check["outcome"].as_str() {
        Some("final") if check["stored"] == Value::Bool(true) => format!(
            "{} (stored as notification {})",
            cell(&check["status"]),
            cell(&check["notification"])
        ),
        Some("final") => format!(
            "{} (the invoice already stood there; notification {})",
            cell(&check["status"]),
            cell(&check["notification"])
        ),
        Some("pending") => format!("still pending: {}", one_line(&cell(&check["said"]))),
        Some("failed") => format!(
            "the check failed ({}): {}",
            cell(&check["kind"]),
            one_line(&cell(&check["message"]))
        ),
        Some("gave_up") => "given up: the provider still says pending".into(),
        _ => check.to_string(),
    }
}

/// The invoice's status, then one row per notification and one per
/// delivery under it.
fn print_timeline(shown: &Value) -> Result<(), super::PrintError> {
    outln!(
        "{} {}: {} (latest {})\n",
        cell(&shown["source"]),
        cell(&shown["subject"]),
        cell(&shown["status"]),
        cell(&shown["latest_at"])
    )?;
    let mut rows = Vec::new();
    for n in shown["notifications"].as_array().into_iter().flatten() {
        let mut status = cell(&n["status"]);
        if n["superseded"].as_bool() == Some(true) {
            status.push_str(" (superseded)");
        }
        rows.push(vec![
            cell(&n["received_at"]),
            cell(&n["id"]),
            cell(&n["event"]),
            status,
            cell(&n["resends"]),
            String::new(),
        ]);
        for d in n["deliveries"].as_array().into_iter().flatten() {
            let attempts = d["attempts"].as_array().map_or(0, Vec::len);
            let last = d["attempts"]
                .as_array()
                .and_then(|a| a.last())
                .map(|a| match a["outcome"]["code"].as_u64() {
                    Some(code) => format!("HTTP {code}"),
                    None => cell(&a["outcome"]["kind"]),
                })
                .unwrap_or_default();
            rows.push(vec![
                String::new(),
                format!("-> {}", cell(&d["subscription"])),
                cell(&d["state"]),
                format!("{attempts} attempts"),
                String::new(),
                one_line(&last),
            ]);
        }
    }
    out!(
        "{}",
        table(
            &[
                "RECEIVED",
                "NOTIFICATION",
                "EVENT",
                "STATUS",
                "RESENDS",
                "LAST"
            ],
            &rows
        )
    )?;
    Ok(())
}
