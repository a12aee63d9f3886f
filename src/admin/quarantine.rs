//! The quarantine: bodies a provider check refused, kept with why.
//! `GET /api/quarantine` lists them (by source and time), `GET
//! /api/quarantine/{id}` shows one with its body, and an admin releases
//! one (its check again, or as a generic notification) or discards it,
//! both audited. The page shows and releases through the same functions.

use serde_json::{json, Value};

use super::auth::Caller;
use super::listing::{page, put_body};
use super::query::{Filter, QueryError};
use super::respond::{
    audit, no_parameters, ok, parse_id, single_parameter, Answer, ApiError, Call,
};
use super::Admin;
use crate::clock::format_ms;
use crate::providers::{GenericRules, Provider};
use crate::spool::{NotificationId, QuarantineRecord, Received, Spool, Stored};

// === routes ===

/// `GET /api/quarantine`
pub(super) async fn get_list(call: Call) -> Answer {
    let filter = Filter::parse(&call.query, call.admin.clock.now_ms(), false)?;
    ok(list_quarantine(&call.admin.spool, &filter).await?)
}

/// `GET /api/quarantine/{id}`
pub(super) async fn get_one(call: Call) -> Answer {
    no_parameters(&call.query)?;
    let id = parse_id(call.param(0))?;
    ok(show_quarantined(&call.admin.spool, id).await?)
}

/// `POST /api/quarantine/{id}/release`
pub(super) async fn post_release(call: Call) -> Answer {
    let id = parse_id(call.param(0))?;
    let as_generic = release_as_generic(&call.query)?;
    ok(release(&call.admin, &call.caller, id, as_generic).await?)
}

/// `POST /api/quarantine/{id}/discard`
pub(super) async fn post_discard(call: Call) -> Answer {
    let (admin, caller) = (&call.admin, &call.caller);
    let id = parse_id(call.param(0))?;
    no_parameters(&call.query)?;
    admin.spool.discard(id).await?;
    tracing::info!(%id, by = %caller.name, "quarantined body discarded");
    audit(
        admin,
        caller,
        "quarantine.discard",
        &id.to_string(),
        Value::Null,
    )
    .await?;
    ok(json!({ "id": id.to_string(), "discarded": true }))
}

// === reads and release ===

pub(super) async fn list_quarantine(spool: &Spool, filter: &Filter) -> Result<Value, ApiError> {
    if filter.event.is_some() || filter.subject.is_some() || filter.subscription.is_some() {
        return Err(QueryError::Invalid {
            name: "state",
            value: "quarantined".into(),
            reason: "a quarantined body has no event, subject or subscription; filter it by source and time".into(),
        }
        .into());
    }
    page(
        spool.quarantined_newest_first(filter.cursor),
        filter,
        |meta| (&meta.id, meta.received_ms),
        |record, _| async move {
            let meta = &record.meta;
            let in_range = filter.until_ms.is_none_or(|until| meta.received_ms < until);
            let of_source = filter.source.as_ref().is_none_or(|s| *s == meta.source);
            Ok((in_range && of_source).then(|| quarantine_summary(&record)))
        },
    )
    .await
}

fn quarantine_summary(record: &QuarantineRecord) -> Value {
    let meta = &record.meta;
    json!({
        "id": meta.id,
        "source": meta.source,
        "received_at": format_ms(meta.received_ms),
        "reason_kind": meta.reason_kind,
        "reason": meta.reason,
        "bytes": record.body.len(),
    })
}

pub(super) async fn show_quarantined(spool: &Spool, id: NotificationId) -> Result<Value, ApiError> {
    let Some(record) = spool.quarantined_body(id).await? else {
        return Err(ApiError::NotFound(format!("no quarantined body {id}")));
    };
    let mut out = quarantine_summary(&record);
    out["content_type"] = json!(record.meta.content_type);
    out["headers"] = json!(record.meta.headers);
    out["peer"] = json!(record.meta.peer);
    put_body(&mut out, &record.body);
    Ok(out)
}

/// A release's only parameter: `as=generic`, or none.
pub(super) fn release_as_generic(query: &str) -> Result<bool, ApiError> {
    match single_parameter(query, "as")?.as_deref() {
        None => Ok(false),
        Some("generic") => Ok(true),
        Some(other) => Err(QueryError::Invalid {
            name: "as",
            value: other.to_owned(),
            reason: "only `generic` (accept it as a generic notification)".into(),
        }
        .into()),
    }
}

/// Makes a quarantined body a notification: its source's provider check
/// runs again (a config change, or a more tolerant relay, may now take it),
/// or it is taken as a generic notification (any JSON object; event
/// `generic`, deduplicated by its bytes). Then it is stored and fanned out
/// as if just received, keeping its original receipt time. Answers the
/// notification it became.
pub(super) async fn release(
    admin: &Admin,
    caller: &Caller,
    id: NotificationId,
    as_generic: bool,
) -> Result<Value, ApiError> {
    let record = admin
        .spool
        .quarantined_body(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no quarantined body {id}")))?;
    let provider = if as_generic {
        Provider::Generic(GenericRules {
            dedup_pointer: None,
            dedup_header: None,
            event_pointer: None,
            subject_pointer: None,
            default_event: "generic".into(),
        })
    } else {
        let config = admin.config.load();
        let source = config.sources.get(&record.meta.source).ok_or_else(|| {
            ApiError::Conflict(format!(
                "source {:?} is no longer configured; release it as generic (?as=generic) or discard it",
                record.meta.source
            ))
        })?;
        source.provider()
    };
    let mut headers = http::HeaderMap::new();
    for (name, value) in &record.meta.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let notification = provider.check(&record.body, &headers).map_err(|rejection| {
        ApiError::Invalid(format!(
            "the check still refuses it: {rejection}; release it as generic (?as=generic) or discard it"
        ))
    })?;
    let received = Received {
        source: record.meta.source.clone(),
        body: record.body.clone(),
        content_type: record.meta.content_type.clone(),
        headers: record.meta.headers.clone(),
        peer: record.meta.peer.clone(),
        received_ms: record.meta.received_ms,
    };
    let stored = admin.spool.release(id, received, notification).await?;
    let (notification_id, duplicate) = match stored {
        Stored::New(new) => (new, false),
        Stored::Duplicate(first) => (first, true),
    };
    tracing::info!(%id, notification = %notification_id, duplicate, by = %caller.name, "quarantined body released");
    let detail = json!({
        "notification": notification_id.to_string(),
        "duplicate": duplicate,
        "as_generic": as_generic,
    });
    audit(
        admin,
        caller,
        "quarantine.release",
        &id.to_string(),
        detail.clone(),
    )
    .await?;
    Ok(detail)
}
