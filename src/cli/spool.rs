//! The spool commands that work on a stopped relay's spool itself:
//! `spool dump`, `spool check`, `spool move-orphans`/`purge-orphans`, and
//! `spool replay ID` when the relay is not running.

use std::io::Write;

use anyhow::Context;
use base64::Engine;

use super::PrintError;
use crate::clock::format_ms;
use crate::clock::Clock;
use crate::config::{Config, SpoolBackend};
use crate::spool::{Routes, Spool, SpoolError};

/// What `spool check` or `spool dump` found unreadable (exit 65).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Damaged(String);

async fn open_spool(config: &Config) -> anyhow::Result<Spool> {
    Ok(Spool::open(&config.spool, Routes::from_config(config), Clock::system()).await?)
}

/// Runs an offline spool command on a small runtime of its own (the
/// spool's reads are async).
fn offline<T>(command: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(command)
}

/// What `spool dump` prints.
pub(super) enum Dumped {
    Notifications { deliveries: bool },
    Quarantined,
    Audit,
}

pub(super) fn dump(config: &Config, what: Dumped) -> anyhow::Result<()> {
    offline(dump_records(config, what))
}

async fn dump_records(config: &Config, what: Dumped) -> anyhow::Result<()> {
    let spool = open_spool(config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut unreadable = 0;
    let mut report = |err: SpoolError| {
        unreadable += 1;
        eprintln!("webhook-relay: skipped: {err}");
    };
    if let Dumped::Audit = what {
        let mut records = spool.audit_records();
        while let Some(record) = records.next().await {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    report(err);
                    continue;
                }
            };
            // Times for people (RFC 3339), as the CLI writes them everywhere.
            let line = serde_json::json!({
                "id": record.id,
                "at": format_ms(record.at_ms),
                "actor": record.entry.actor,
                "action": record.entry.action,
                "target": record.entry.target,
                "detail": record.entry.detail,
            });
            writeln!(out, "{line}").map_err(PrintError)?;
        }
    } else if let Dumped::Quarantined = what {
        let mut records = spool.quarantined();
        while let Some(record) = records.next().await {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    report(err);
                    continue;
                }
            };
            let mut line = serde_json::to_value(&record.meta)?;
            line["received_at"] = format_ms(record.meta.received_ms).into();
            put_body(&mut line, &record.body);
            writeln!(out, "{line}").map_err(PrintError)?;
        }
    } else {
        let mut records = spool.notifications();
        while let Some(record) = records.next().await {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    report(err);
                    continue;
                }
            };
            let mut line = serde_json::to_value(&record.meta)?;
            line["received_at"] = format_ms(record.meta.received_ms).into();
            put_body(&mut line, &record.body);
            if let Dumped::Notifications { deliveries: true } = what {
                let id = crate::spool::NotificationId::parse(&record.meta.id)
                    .ok_or_else(|| anyhow::anyhow!("malformed id {}", record.meta.id))?;
                match spool.deliveries_of(id).await {
                    Ok(list) => line["deliveries"] = serde_json::to_value(list)?,
                    Err(err) => report(err),
                }
            }
            writeln!(out, "{line}").map_err(PrintError)?;
        }
    }
    out.flush().map_err(PrintError)?;
    drop(out);
    spool.close().await?;
    if unreadable > 0 {
        return Err(Damaged(format!(
            "{unreadable} records (or ranges of records) of {} could not be read, each named \
             above; `webhook-relay spool check` tells more",
            config.spool.sled.path.display()
        ))
        .into());
    }
    Ok(())
}

/// Verifies a stopped spool and prints what it found: a summary line, then
/// one line per problem.
pub(super) fn check(config: &Config, accept_loss: bool) -> anyhow::Result<()> {
    let report = offline(async { Ok(Spool::check(&config.spool, accept_loss).await?) })?;
    let place = match config.spool.backend {
        SpoolBackend::Sled => config.spool.sled.path.display().to_string(),
        SpoolBackend::Jetstream => {
            format!("JetStream stream {}_spool", config.spool.jetstream.prefix)
        }
    };
    outln!(
        "{}: {} notifications, {} quarantined, {} delivery records, {} retries due, {} dedup entries, {} audit records",
        place,
        report.notifications,
        report.quarantined,
        report.deliveries,
        report.retries,
        report.dedup_entries,
        report.audit_records
    )?;
    print_counts(&report)?;
    for repair in &report.repaired {
        outln!("repaired: {repair}")?;
    }
    // The check counts every subscription's backlog; only those of
    // subscriptions no longer configured are orphans.
    let orphans = report
        .orphans
        .iter()
        .filter(|(name, _)| !config.subscriptions.iter().any(|s| &s.name == *name));
    for (subscription, waiting) in orphans {
        outln!("orphans: {waiting} deliveries wait for subscription {subscription:?}, which is not configured")?;
    }
    for problem in &report.problems {
        outln!("problem: {problem}")?;
    }
    if report.problems.is_empty() {
        outln!("ok")?;
        Ok(())
    } else {
        Err(Damaged(format!(
            "{} problems found in spool {place}",
            report.problems.len(),
        ))
        .into())
    }
}

/// The counts by a recount (or, when the spool could not be recounted, as
/// kept): one line for the totals, one per subscription.
fn print_counts(report: &crate::spool::CheckReport) -> Result<(), PrintError> {
    let (counts, how) = match (&report.counts, &report.kept_counts) {
        (Some(counts), _) => (counts, "counted"),
        (None, Some(kept)) => (kept, "kept (not recounted)"),
        (None, None) => return Ok(()),
    };
    outln!(
        "counts ({how}): {} notifications, {} quarantined",
        counts.notifications,
        counts.quarantined
    )?;
    for (name, sub) in &counts.subscriptions {
        outln!(
            "counts of {name:?}: {} waiting, {} dead, {} delivered, {} purged",
            sub.waiting,
            sub.dead,
            sub.delivered,
            sub.purged
        )?;
    }
    Ok(())
}

/// Moves or purges an orphan subscription's deliveries and prints a JSON
/// line with how many.
pub(super) fn reassign_orphans(
    config: &Config,
    from: &str,
    to: Option<&str>,
) -> anyhow::Result<()> {
    offline(async {
        let spool = open_spool(config).await?;
        let now_ms = Clock::system().now_ms();
        let result = spool.reassign_orphans(from, to, now_ms).await;
        spool.close().await?;
        let moved = result?;
        let line = match to {
            Some(to) => serde_json::json!({"from": from, "to": to, "moved": moved}),
            None => serde_json::json!({"subscription": from, "purged": moved}),
        };
        outln!("{line}")?;
        anyhow::Ok(())
    })
}

/// Replays the dead deliveries of one notification (or the named
/// subscription's, whatever its state) and prints one JSON line each.
pub(super) fn replay(
    config: &Config,
    id: &str,
    subscription: Option<String>,
) -> anyhow::Result<()> {
    let id: crate::spool::NotificationId = id
        .parse()
        .map_err(|why| anyhow::anyhow!("not a notification id: {why}"))?;
    offline(async {
        let spool = open_spool(config).await?;
        let Some(notification) = spool.notification(id).await? else {
            if spool.is_quarantined(id).await? {
                anyhow::bail!("{id} is a quarantined body, not a notification: it has no deliveries to replay (`spool dump --quarantine` shows it)");
            }
            anyhow::bail!("no notification {id} in {}", spool.location());
        };
        let chosen: Vec<String> = match subscription {
            Some(name) if notification.meta.subscriptions.contains(&name) => vec![name],
            Some(name) => {
                anyhow::bail!("notification {id} has no delivery for subscription {name:?}")
            }
            None => spool
                .deliveries_of(id)
                .await?
                .into_iter()
                .filter(|d| matches!(d.state, crate::delivery::State::Dead { .. }))
                .map(|d| d.subscription)
                .collect(),
        };
        if chosen.is_empty() {
            anyhow::bail!("notification {id} has no dead delivery to replay");
        }
        let now_ms = crate::clock::Clock::system().now_ms();
        for name in &chosen {
            // `false`: never attempted yet, so already due; nothing to do.
            let replayed = spool.replay(id, name, now_ms).await?;
            let line = serde_json::json!({"id": id.to_string(), "subscription": name, "replayed": replayed});
            outln!("{line}")?;
        }
        let entry = crate::spool::AuditEntry {
            actor: "cli".into(),
            action: "replay".into(),
            target: id.to_string(),
            detail: serde_json::json!({ "subscriptions": chosen }),
        };
        spool.audit(entry).await?;
        spool.close().await?;
        anyhow::Ok(())
    })
}

/// The body as text when it is UTF-8, else as base64 (`body_base64`).
fn put_body(line: &mut serde_json::Value, body: &[u8]) {
    match std::str::from_utf8(body) {
        Ok(text) => line["body"] = text.into(),
        Err(_) => {
            line["body_base64"] = base64::engine::general_purpose::STANDARD
                .encode(body)
                .into()
        }
    }
}
