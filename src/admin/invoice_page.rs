//! The page's invoices: a search by invoice number (`/i?number=`) and an
//! invoice's timeline (`/i/{source}/{subject}`), server-rendered over the
//! same reads as `GET /api/invoices` and `GET /api/invoices/{source}/{subject}`;
//! the timeline shows the checks made with the provider among the
//! notifications, and for a source with `reconcile` a "Check with the
//! provider" button (a form with the session's CSRF token, for an admin).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::html::{csrf_input, escape, html, page, text, LoggedIn};
use super::humane;
use super::invoices::{self, InvoiceFilter};
use super::respond::ApiError;
use super::style;
use super::Admin;
use crate::config::Role;

/// What the search box takes, said where it is empty or misused.
const HOW_TO_SEARCH: &str = "Type an invoice number, or part of one, in the box \
    (for example <code>0001-00000042</code> or <code>42</code>; <code>*</code> stands for any characters) \
    and press find.";

/// The search box, on the dashboard and above the results.
pub(super) fn search_form(number: &str) -> String {
    format!(
        "<form method=get action=/i><label>invoice number <input name=number value=\"{}\"></label> <button>find</button></form>",
        escape(number)
    )
}

/// The invoices whose number contains what was typed (`*` as anywhere).
pub(super) async fn search(
    admin: &Arc<Admin>,
    user: &LoggedIn,
    query: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    user.caller.require(Role::Viewer)?;
    let mut number = None;
    let mut unknown = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "number" {
            number = Some(value.trim().to_owned());
        } else {
            unknown.push(key.into_owned());
        }
    }
    let number = number.unwrap_or_default();
    let mut body = search_form(&number);
    if !unknown.is_empty() {
        let names: Vec<String> = unknown
            .iter()
            .map(|k| format!("<code>{}</code>", escape(k)))
            .collect();
        let _ = write!(
            body,
            "<p class=problem id=problem>This search takes <code>number</code>, not {}. {HOW_TO_SEARCH}</p>",
            names.join(", ")
        );
        return Ok(html(
            StatusCode::BAD_REQUEST,
            &page("invoices", Some(user), &body),
        ));
    }
    if number.is_empty() {
        let _ = write!(body, "<p class=note id=problem>{HOW_TO_SEARCH}</p>");
        return Ok(html(StatusCode::OK, &page("invoices", Some(user), &body)));
    }
    let filter = InvoiceFilter {
        subject: Some(format!("*{number}*")),
        limit: super::query::MAX_LIMIT,
        ..InvoiceFilter::default()
    };
    let found = invoices::list(&admin.spool, &filter).await?;
    let items = found["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        let _ = write!(
            body,
            "<p class=note>No invoice numbered like {}. Try part of the number.</p>",
            escape(&number)
        );
    } else {
        let now_ms = admin.clock.now_ms();
        let _ = write!(
            body,
            "<p>{} numbered like {}.</p>",
            humane::count(items.len() as u64, "invoice"),
            escape(&number)
        );
        body.push_str(&style::INVOICES.head(Some("found")));
        for item in &items {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><span class={status}>{status}</span></td><td>{}</td></tr>",
                text(&item["source"]),
                invoice_link(item),
                humane::when(now_ms, &item["latest_at"]),
                status = text(&item["status"]),
            );
        }
        body.push_str("</table>");
    }
    Ok(html(StatusCode::OK, &page("invoices", Some(user), &body)))
}

/// The stuck invoices, for the dashboard (nothing when none is).
pub(super) fn stuck_table(admin: &Admin) -> String {
    let stuck = admin.metrics.stuck_invoices();
    if stuck.is_empty() {
        return String::new();
    }
    let now_ms = admin.clock.now_ms();
    let mut out = format!(
        "<h2 id=stuck>Stuck invoices ({})</h2>{}",
        stuck.len(),
        style::STUCK.head(None)
    );
    for invoice in &stuck {
        let item = serde_json::json!({ "source": invoice.source, "subject": invoice.subject });
        let _ = write!(
            out,
            "<tr class=dead><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&invoice.source),
            invoice_link(&item),
            humane::when_ms(now_ms, invoice.since_ms),
        );
    }
    out.push_str("</table>");
    out
}

fn timeline_link(item: &Value) -> String {
    let segment = |v: &Value| {
        percent_encoding::utf8_percent_encode(
            v.as_str().unwrap_or(""),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string()
    };
    format!(
        "/i/{}/{}",
        segment(&item["source"]),
        segment(&item["subject"])
    )
}

/// A record's invoice number (`subject`) as a link to its timeline (of
/// its `source`); "–" when it names none.
pub(super) fn invoice_link(item: &Value) -> String {
    match item["subject"].as_str() {
        Some(subject) => format!(
            "<a href=\"{}\">{}</a>",
            escape(&timeline_link(item)),
            escape(subject)
        ),
        None => "–".into(),
    }
}

/// One invoice: its status, and each notification with its deliveries.
pub(super) async fn timeline(
    admin: &Arc<Admin>,
    user: &LoggedIn,
    source: &str,
    subject: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    user.caller.require(Role::Viewer)?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (source, subject) = (decode(source), decode(subject));
    let shown = invoices::show(&admin.spool, &source, &subject).await?;
    let now_ms = admin.clock.now_ms();
    let mut body = search_form("");
    let _ = write!(
        body,
        "<h2>Invoice {} of {}: <span class={status} id=invoice-status>{status}</span></h2>",
        escape(&subject),
        escape(&source),
        status = text(&shown["status"]),
    );
    if user.caller.role >= Role::Admin && super::reconcile::offered(admin, &source) {
        let _ = write!(
            body,
            "<form method=post action=\"{}/reconcile\">{}<button id=reconcile>Check with the provider</button></form>",
            escape(&timeline_link(&shown)),
            csrf_input(user),
        );
    }
    body.push_str(&style::TIMELINE.head(Some("timeline")));
    // Notifications and checks in time order (both times are RFC 3339 of
    // one fixed width, so their text sorts as they do).
    let mut rows: Vec<(String, String)> = shown["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (text(&c["at"]), check_row(now_ms, c)))
        .collect();
    for n in shown["notifications"].as_array().into_iter().flatten() {
        let superseded = if n["superseded"] == Value::Bool(true) {
            " <span class=muted>(superseded)</span>"
        } else {
            ""
        };
        let deliveries: Vec<String> = n["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                format!(
                    "{} <span class={state}>{state}</span> ({})",
                    text(&d["subscription"]),
                    humane::count(
                        d["attempts"].as_array().map_or(0, Vec::len) as u64,
                        "attempt"
                    ),
                    state = text(&d["state"]),
                )
            })
            .collect();
        let row = format!(
            "<tr><td>{}</td><td><a href=\"/n/{id}\">{id}</a></td><td>{}</td><td>{}{superseded}</td><td>{}</td><td>{}</td></tr>",
            humane::when(now_ms, &n["received_at"]),
            text(&n["event"]),
            text(&n["status"]),
            text(&n["resends"]),
            deliveries.join("<br>"),
            id = text(&n["id"]),
        );
        rows.push((text(&n["received_at"]), row));
    }
    // Stable: a check made in the same millisecond as the notification it
    // stored comes first, as it happened.
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, row) in rows {
        body.push_str(&row);
    }
    body.push_str("</table>");
    Ok(html(
        StatusCode::OK,
        &page(&format!("invoice {subject}"), Some(user), &body),
    ))
}

/// A check with the provider as a row of the timeline: when, who asked
/// (or "automatic"), and what the provider said.
fn check_row(now_ms: i64, check: &Value) -> String {
    let who = match check["by"].as_str() {
        Some(name) => format!("asked by {}", escape(name)),
        None => "automatic".into(),
    };
    let (status, said) = match check["outcome"].as_str() {
        Some("final") => {
            let id = text(&check["notification"]);
            let said = if check["stored"] == Value::Bool(true) {
                format!("final: stored as <a href=\"/n/{id}\">{id}</a>")
            } else {
                "final: the invoice already stood there".into()
            };
            (text(&check["status"]), said)
        }
        Some("pending") => (
            "pending".into(),
            format!("still pending: {}", text(&check["said"])),
        ),
        Some("failed") => {
            let http = check["http_status"]
                .as_u64()
                .map(|s| format!(", HTTP {s}"))
                .unwrap_or_default();
            (
                "failed".into(),
                format!(
                    "{}{http}: {}",
                    text(&check["kind"]),
                    text(&check["message"])
                ),
            )
        }
        _ => (
            "gave up".into(),
            "provider still says pending; no more automatic checks".into(),
        ),
    };
    format!(
        "<tr class=check><td>{}</td><td>check with the provider</td><td>{who}</td><td>{}</td><td></td><td>{said}</td></tr>",
        humane::when(now_ms, &check["at"]),
        status,
    )
}
