//! Views of a running relay through its admin API: `spool ls`, `show`,
//! `stats`, `audit`, `quarantine ls`/`show`, as tables for people or JSON
//! lines (`--json`).

use std::path::Path;

use base64::Engine;

use super::remote::{self, cell, table, AdminClient, RemoteArgs};
use super::{encode_segment, one_line, FilterArgs, PrintError};

pub(super) fn list(
    config: &Path,
    remote: &RemoteArgs,
    filter: &FilterArgs,
    limit: usize,
    all: bool,
) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let quarantine = filter.state.as_deref() == Some("quarantined");
    let mut cursor: Option<String> = None;
    let mut rows = Vec::new();
    loop {
        let mut pairs = filter.pairs();
        pairs.push(("limit", Some(limit.to_string())));
        pairs.push(("cursor", cursor.take()));
        let page = client.get(&format!("/api/notifications{}", remote::query(&pairs)))?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if remote.json {
            for item in &items {
                outln!("{item}")?;
            }
        }
        for item in items {
            rows.push(if quarantine {
                vec![
                    cell(&item["id"]),
                    cell(&item["received_at"]),
                    cell(&item["source"]),
                    cell(&item["reason_kind"]),
                    cell(&item["reason"]),
                ]
            } else {
                vec![
                    cell(&item["id"]),
                    cell(&item["received_at"]),
                    cell(&item["source"]),
                    cell(&item["event"]),
                    cell(&item["subject"]),
                    cell(&item["status"]),
                    flag_list(&item["flags"]),
                    delivery_summary(&item["deliveries"]),
                ]
            });
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if !all || cursor.is_none() {
            break;
        }
    }
    if !remote.json {
        let headers: &[&str] = if quarantine {
            &["ID", "RECEIVED", "SOURCE", "KIND", "REASON"]
        } else {
            &[
                "ID",
                "RECEIVED",
                "SOURCE",
                "EVENT",
                "SUBJECT",
                "STATUS",
                "FLAGS",
                "DELIVERIES",
            ]
        };
        // The deliveries' summary is never cut: a cut one hid `dead`.
        out!("{}", remote::table_keeping_last(headers, &rows))?;
        if let Some(cursor) = cursor {
            outln!("(more: --all, or the API with cursor={cursor})")?;
        }
    }
    Ok(())
}

pub(super) fn show(config: &Path, remote: &RemoteArgs, id: &str) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let shown = client.get(&format!("/api/notifications/{}", encode_segment(id)))?;
    if remote.json {
        outln!("{shown}")?;
        return Ok(());
    }
    print_fields(&shown, &crate::admin::NOTIFICATION_FIELDS)?;
    outln!("{:<14} {}", "flags", flag_list(&shown["flags"]))?;
    let mut rows = Vec::new();
    for delivery in shown["deliveries"].as_array().into_iter().flatten() {
        let attempts = delivery["attempts"].as_array().cloned().unwrap_or_default();
        rows.push(vec![
            cell(&delivery["subscription"]),
            cell(&delivery["state"]),
            "-".into(),
            cell(&delivery["next_try_at"]),
            String::new(),
            String::new(),
        ]);
        for attempt in attempts {
            let outcome = &attempt["outcome"];
            let what = match outcome["code"].as_u64() {
                Some(code) => format!("HTTP {code}"),
                None => cell(&outcome["kind"]),
            };
            rows.push(vec![
                String::new(),
                format!("attempt {}", cell(&attempt["number"])),
                cell(&attempt["started_at"]),
                format!("{} ms", cell(&attempt["duration_ms"])),
                what,
                one_line(&cell(&attempt["answer"])),
            ]);
        }
    }
    outln!()?;
    out!(
        "{}",
        table(
            &[
                "SUBSCRIPTION",
                "STATE",
                "STARTED",
                "NEXT/TOOK",
                "OUTCOME",
                "ANSWER"
            ],
            &rows
        )
    )?;
    outln!("\n{}", body_shown(&shown))?;
    Ok(())
}

/// A notification's flags (what its provider check accepted though not
/// as documented), comma separated; "-" when none.
fn flag_list(flags: &serde_json::Value) -> String {
    let names: Vec<String> = flags.as_array().into_iter().flatten().map(cell).collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// A notification's deliveries counted by state, `dead` first: `2
/// delivered, 1 dead` reads whole however many subscriptions there are.
fn delivery_summary(deliveries: &serde_json::Value) -> String {
    let states: Vec<String> = deliveries
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| cell(&d["state"]))
        .collect();
    let mut order = vec!["dead", "waiting", "delivered", "purged"];
    // A state a newer relay names that this CLI does not know, still shown.
    for state in &states {
        if !order.contains(&state.as_str()) {
            order.push(state);
        }
    }
    let parts: Vec<String> = order
        .iter()
        .filter_map(|name| {
            let n = states.iter().filter(|s| s == name).count();
            (n > 0).then(|| format!("{n} {name}"))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// A record's body for a terminal: text as it is; a Latin-1 one (flag
/// `latin1_body`) decoded, and said so; any other non-UTF-8 one as base64,
/// and said so.
fn body_shown(shown: &serde_json::Value) -> String {
    let body = shown["body"].as_str().unwrap_or("");
    if shown["body_encoding"] != "base64" {
        return body.to_owned();
    }
    let latin1 = shown["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "latin1_body"));
    match base64::engine::general_purpose::STANDARD.decode(body) {
        Ok(raw) if latin1 => {
            let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(&raw);
            format!("(body sent in Latin-1, decoded from Windows-1252; the targets get it as UTF-8)\n{text}")
        }
        _ => format!("(body not UTF-8: shown as base64)\n{body}"),
    }
}

pub(super) fn show_quarantined(config: &Path, remote: &RemoteArgs, id: &str) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let shown = client.get(&format!("/api/quarantine/{}", encode_segment(id)))?;
    if remote.json {
        outln!("{shown}")?;
        return Ok(());
    }
    print_fields(&shown, &crate::admin::QUARANTINE_FIELDS)?;
    outln!("\n{}", body_shown(&shown))?;
    Ok(())
}

/// One line a field: its label, then its value.
fn print_fields(shown: &serde_json::Value, fields: &[(&str, &str)]) -> Result<(), PrintError> {
    for (label, key) in fields {
        outln!("{label:<14} {}", cell(&shown[*key]))?;
    }
    Ok(())
}

pub(super) fn stats(config: &Path, remote: &RemoteArgs) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let stats = client.get("/api/stats")?;
    if remote.json {
        outln!("{stats}")?;
        return Ok(());
    }
    let spool = &stats["spool"];
    outln!("spool          {}", cell(&spool["path"]))?;
    outln!("bytes on disk  {}", cell(&spool["bytes"]))?;
    outln!(
        "writable       {}{}",
        cell(&spool["writable"]),
        spool["condition"]
            .as_str()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default()
    )?;
    let all = &stats["deliveries"];
    outln!(
        "kept           {} notifications, {} quarantined; deliveries: {} waiting, {} dead, {} delivered, {} purged",
        cell(&stats["notifications"]),
        cell(&stats["quarantined"]),
        cell(&all["waiting"]),
        cell(&all["dead"]),
        cell(&all["delivered"]),
        cell(&all["purged"])
    )?;
    let rows: Vec<Vec<String>> = stats["sources"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, source)| {
            let received = &source["received_since_start"];
            let count = |outcome: &str| received[outcome].as_u64().unwrap_or(0).to_string();
            let refused: u64 = received
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(outcome, _)| !matches!(outcome.as_str(), "accepted" | "duplicate"))
                .filter_map(|(_, n)| n.as_u64())
                .sum();
            vec![
                name.clone(),
                cell(&source["stored"]),
                cell(&source["quarantined"]),
                cell(&source["last_received_at"]),
                count("accepted"),
                count("duplicate"),
                refused.to_string(),
            ]
        })
        .collect();
    outln!()?;
    out!(
        "{}",
        table(
            &[
                "SOURCE",
                "STORED",
                "QUARANTINED",
                "LAST RECEIVED",
                "ACCEPTED",
                "DUPLICATE",
                "REFUSED"
            ],
            &rows
        )
    )?;
    let rows: Vec<Vec<String>> = stats["subscriptions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, of)| {
            vec![
                name.clone(),
                cell(&of["waiting"]),
                cell(&of["dead"]),
                cell(&of["delivered"]),
                cell(&of["purged"]),
                cell(&of["oldest_waiting_received_at"]),
            ]
        })
        .collect();
    outln!()?;
    out!(
        "{}",
        table(
            &[
                "SUBSCRIPTION",
                "WAITING",
                "DEAD",
                "DELIVERED",
                "PURGED",
                "OLDEST WAITING"
            ],
            &rows
        )
    )?;
    outln!("\n(accepted, duplicate and refused count requests since the relay started)")?;
    Ok(())
}

pub(super) fn audit_log(config: &Path, remote: &RemoteArgs, limit: usize) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let page = client.get(&format!("/api/audit?limit={limit}"))?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if remote.json {
        for item in &items {
            outln!("{item}")?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            vec![
                cell(&r["at"]),
                cell(&r["actor"]),
                cell(&r["action"]),
                cell(&r["target"]),
                cell(&r["detail"]),
            ]
        })
        .collect();
    out!(
        "{}",
        table(&["AT", "WHO", "ACTION", "TARGET", "DETAIL"], &rows)
    )?;
    Ok(())
}
