//! The page's records: a notification (`/n/{id}`, its fields, each
//! delivery's attempts, a replay button for an admin, its body) and a
//! quarantined body (`/q/{id}`, with release buttons), over the API's
//! reads.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::html::{csrf_input, escape, flags, html, page, text, LoggedIn};
use super::humane;
use super::notifications::show_notification;
use super::quarantine::show_quarantined;
use super::respond::{parse_id, ApiError};
use super::style;
use super::Admin;
use crate::config::Role;
use crate::spool::NotificationId;

pub(super) async fn notification(
    admin: &Arc<Admin>,
    user: &LoggedIn,
    id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let caller = &user.caller;
    caller.require(Role::Viewer)?;
    let id: NotificationId = parse_id(id)?;
    let shown = show_notification(&admin.spool, id).await?;
    let now_ms = admin.clock.now_ms();
    let mut body = format!(
        "<h2>Notification {}{}</h2>",
        text(&shown["event"]),
        match shown["subject"].as_str() {
            Some(subject) => format!(" of invoice {}", escape(subject)),
            None => String::new(),
        }
    );
    body.push_str(&fields_table(&shown, &super::NOTIFICATION_FIELDS, now_ms));
    // The table's last row: its flags.
    body.truncate(body.len() - "</table>".len());
    let _ = write!(
        body,
        "<tr><th>flags</th><td id=flags>{}</td></tr></table>",
        match flags(&shown["flags"]) {
            none if none.is_empty() => "none".to_owned(),
            some => some,
        }
    );
    body.push_str("<h2>Deliveries</h2>");
    let may_replay = caller.role >= Role::Admin;
    for delivery in shown["deliveries"].as_array().into_iter().flatten() {
        let subscription = delivery["subscription"].as_str().unwrap_or("");
        let state = text(&delivery["state"]);
        let attempts = delivery["attempts"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let _ = write!(
            body,
            "<h3>{} <span class={state}>{state}</span> <span class=muted>({})</span></h3>",
            escape(subscription),
            humane::count(attempts.len() as u64, "attempt"),
        );
        if may_replay && state != "waiting" {
            let target: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("subscription", subscription)
                .finish();
            let _ = write!(
                body,
                "<form method=post action=\"/n/{id}/replay?{}\">{}<button>replay to {}</button></form>",
                escape(&target),
                csrf_input(user),
                escape(subscription)
            );
        }
        if !attempts.is_empty() {
            body.push_str(&style::ATTEMPTS.head(None));
        }
        for attempt in attempts {
            let outcome = &attempt["outcome"];
            let what = match outcome["code"].as_u64() {
                Some(code) => format!("HTTP {code}"),
                None => text(&outcome["kind"]),
            };
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{} ms</td><td>{what}</td><td><code>{}</code></td></tr>",
                text(&attempt["number"]),
                humane::when(now_ms, &attempt["started_at"]),
                text(&attempt["duration_ms"]),
                text(&attempt["answer"]),
            );
        }
        if !attempts.is_empty() {
            body.push_str("</table>");
        }
        if !delivery["next_try_at"].is_null() {
            let _ = write!(
                body,
                "<p class=muted>next try: {}</p>",
                humane::when(now_ms, &delivery["next_try_at"])
            );
        }
    }
    body.push_str("<h2>Body</h2>");
    body.push_str(&body_shown(&shown));
    Ok(html(
        StatusCode::OK,
        &page(&format!("notification {id}"), Some(user), &body),
    ))
}

pub(super) async fn quarantined(
    admin: &Arc<Admin>,
    user: &LoggedIn,
    id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let caller = &user.caller;
    caller.require(Role::Viewer)?;
    let id: NotificationId = parse_id(id)?;
    let shown = show_quarantined(&admin.spool, id).await?;
    let mut body = fields_table(&shown, &super::QUARANTINE_FIELDS, admin.clock.now_ms());
    if caller.role >= Role::Admin {
        // The check again (it may take it now), or as a generic notification.
        let _ = write!(
            body,
            "<form class=inline method=post action=\"/q/{id}/release\">{csrf}<button>release</button></form> \
             <form class=inline method=post action=\"/q/{id}/release?as=generic\">{csrf}<button>release as generic</button></form>",
            csrf = csrf_input(user)
        );
    }
    body.push_str("<h2>Body</h2>");
    body.push_str(&body_shown(&shown));
    Ok(html(
        StatusCode::OK,
        &page(&format!("quarantined {id}"), Some(user), &body),
    ))
}

/// A record's body: as text, a Latin-1 one decoded (and said so), any
/// other that is not UTF-8 as base64 (and said so).
fn body_shown(shown: &Value) -> String {
    let body = shown["body"].as_str().unwrap_or("");
    if shown["body_encoding"] != "base64" {
        return format!("<pre>{}</pre>", escape(body));
    }
    let latin1 = shown["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "latin1_body"));
    let raw = base64::engine::general_purpose::STANDARD.decode(body);
    match raw {
        Ok(raw) if latin1 => format!(
            "<p class=note id=body-encoding>Sent in Latin-1: decoded from Windows-1252 \
             (the spool keeps the bytes as they came; the targets get this text as UTF-8).</p><pre>{}</pre>",
            escape(&humane::latin1(&raw))
        ),
        _ => format!(
            "<p class=note id=body-encoding>Not UTF-8 text: shown as base64.</p><pre>{}</pre>",
            escape(body)
        ),
    }
}

/// A table of a record's fields, a row each: times as "… ago", the
/// invoice a link to its timeline.
fn fields_table(shown: &Value, fields: &[(&str, &str)], now_ms: i64) -> String {
    let mut out = String::from("<table class=fields>");
    for (label, key) in fields {
        let value = &shown[*key];
        let cell = match *key {
            "received_at" => humane::when(now_ms, value),
            "subject" => super::invoice_page::invoice_link(shown),
            _ => text(value),
        };
        let _ = write!(out, "<tr><th>{label}</th><td>{cell}</td></tr>");
    }
    out.push_str("</table>");
    out
}
