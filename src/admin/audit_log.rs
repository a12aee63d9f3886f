//! `GET /api/audit`: the audit log, newest first, a page at a time (what
//! each change through the API or the page was, who made it, and when).

use serde_json::{json, Value};

use super::query::QueryError;
use super::respond::{ok, Answer, ApiError, Call};
use crate::clock::format_ms;
use crate::spool::AuditId;

/// `GET /api/audit`
pub(super) async fn get_log(call: Call) -> Answer {
    let (before, limit) = audit_page(&call.query)?;
    let records = call.admin.spool.audit_log(before, limit).await?;
    let next_cursor = (records.len() == limit)
        .then(|| records.last().map(|r| r.id.to_string()))
        .flatten();
    let items: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "id": r.id.to_string(),
                "at": format_ms(r.at_ms),
                "actor": r.entry.actor,
                "action": r.entry.action,
                "target": r.entry.target,
                "detail": r.entry.detail,
            })
        })
        .collect();
    ok(json!({ "items": items, "next_cursor": next_cursor }))
}

/// `limit` (default 50, at most 500) and `cursor` (an audit id) of an audit page.
fn audit_page(query: &str) -> Result<(Option<AuditId>, usize), ApiError> {
    let mut before = None;
    let mut limit = super::query::DEFAULT_LIMIT;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "cursor" => {
                before = Some(value.parse::<AuditId>().map_err(|e| QueryError::Invalid {
                    name: "cursor",
                    value: value.to_string(),
                    reason: e.to_string(),
                })?)
            }
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=super::query::MAX_LIMIT).contains(n))
                    .ok_or_else(|| QueryError::Invalid {
                        name: "limit",
                        value: value.to_string(),
                        reason: format!("a whole number from 1 to {}", super::query::MAX_LIMIT),
                    })?
            }
            other => return Err(QueryError::Unknown(other.to_owned()).into()),
        }
    }
    Ok((before, limit))
}
