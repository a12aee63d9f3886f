//! The notifications: `GET /api/notifications` (a filtered page, newest
//! first; `state=quarantined` lists the quarantine instead) and
//! `GET /api/notifications/{id}` (one with its body and every delivery's
//! attempts). The page shows the same reads.

use serde_json::{json, Value};

use super::listing::{page, put_body};
use super::quarantine::list_quarantine;
use super::query::{DeliveryState, Filter, StateFilter};
use super::respond::{no_parameters, ok, parse_id, Answer, ApiError, Call};
use crate::clock::format_ms;
use crate::delivery::{Delivery, State};
use crate::spool::{NotificationId, NotificationRecord, Spool};

// === routes ===

/// `GET /api/notifications`
pub(super) async fn get_list(call: Call) -> Answer {
    let filter = Filter::parse(&call.query, call.admin.clock.now_ms(), false)?;
    let spool = &call.admin.spool;
    if filter.state == Some(StateFilter::Quarantined) {
        return ok(list_quarantine(spool, &filter).await?);
    }
    ok(list_notifications(spool, &filter).await?)
}

/// `GET /api/notifications/{id}`
pub(super) async fn get_one(call: Call) -> Answer {
    no_parameters(&call.query)?;
    let id = parse_id(call.param(0))?;
    ok(show_notification(&call.admin.spool, id).await?)
}

// === reads ===

pub(super) async fn list_notifications(spool: &Spool, filter: &Filter) -> Result<Value, ApiError> {
    page(
        spool.notifications_newest_first(filter.cursor),
        filter,
        |meta| (&meta.id, meta.received_ms),
        |record, id| async move {
            if !filter.matches_meta(&record.meta) {
                return Ok(None);
            }
            let deliveries = spool.deliveries_of(id).await?;
            Ok(filter
                .matches_deliveries(&deliveries)
                .then(|| notification_summary(&record, &deliveries)))
        },
    )
    .await
}

fn notification_summary(record: &NotificationRecord, deliveries: &[Delivery]) -> Value {
    let meta = &record.meta;
    json!({
        "id": meta.id,
        "source": meta.source,
        "event": meta.event_type,
        "subject": meta.subject,
        "status": meta.status,
        "received_at": format_ms(meta.received_ms),
        "flags": meta.flags,
        "deliveries": deliveries.iter().map(|d| json!({
            "subscription": d.subscription,
            "state": DeliveryState::of(&d.state).name(),
            "attempts": d.attempts.len(),
            "next_try_at": next_try_ms(d).map(format_ms),
        })).collect::<Vec<_>>(),
    })
}

fn next_try_ms(delivery: &Delivery) -> Option<i64> {
    match delivery.state {
        State::Pending => Some(delivery.created_ms),
        State::Waiting { until_ms } => Some(until_ms),
        _ => None,
    }
}

pub(super) async fn show_notification(
    spool: &Spool,
    id: NotificationId,
) -> Result<Value, ApiError> {
    let Some(record) = spool.notification(id).await? else {
        if spool.is_quarantined(id).await? {
            return Err(ApiError::NotFound(format!(
                "{id} is a quarantined body, not a notification: GET /api/quarantine/{id}"
            )));
        }
        return Err(ApiError::NotFound(format!("no notification {id}")));
    };
    let deliveries = spool.deliveries_of(id).await?;
    let meta = &record.meta;
    let mut out = json!({
        "id": meta.id,
        "source": meta.source,
        "event": meta.event_type,
        "subject": meta.subject,
        "status": meta.status,
        "received_at": format_ms(meta.received_ms),
        "provider_time": meta.provider_time,
        "dedup_key": meta.dedup_key,
        "content_type": meta.content_type,
        "headers": meta.headers,
        "peer": meta.peer,
        "subscriptions": meta.subscriptions,
        // What the provider check accepted though not as documented.
        "flags": meta.flags,
        "deliveries": deliveries.iter().map(delivery_detail).collect::<Vec<_>>(),
    });
    put_body(&mut out, &record.body);
    Ok(out)
}

pub(super) fn delivery_detail(delivery: &Delivery) -> Value {
    let (state_at, in_flight_attempt) = match delivery.state {
        State::Delivered { at_ms } | State::Dead { at_ms } | State::Purged { at_ms } => {
            (Some(at_ms), None)
        }
        State::InFlight { attempt, since_ms } => (Some(since_ms), Some(attempt)),
        State::Pending | State::Waiting { .. } => (None, None),
    };
    json!({
        "subscription": delivery.subscription,
        "state": DeliveryState::of(&delivery.state).name(),
        "state_at": state_at.map(format_ms),
        "in_flight_attempt": in_flight_attempt,
        "next_try_at": next_try_ms(delivery).map(format_ms),
        "created_at": format_ms(delivery.created_ms),
        "replayed_at": delivery.replayed_ms.iter().copied().map(format_ms).collect::<Vec<_>>(),
        "attempts": delivery.attempts.iter().map(|a| json!({
            "number": a.number,
            "started_at": format_ms(a.started_ms),
            "duration_ms": a.duration_ms,
            "outcome": outcome_json(&a.outcome),
            // The start of the target's answer body, if it sent one.
            "answer": a.answer,
        })).collect::<Vec<_>>(),
    })
}

/// An attempt's outcome with any target URL in its error detail redacted
/// (a viewer reads it; attempts kept before the forwarder redacted it).
fn outcome_json(outcome: &crate::delivery::Outcome) -> Value {
    let mut shown = json!(outcome);
    if let Some(detail) = shown.get_mut("detail") {
        if let Some(text) = detail.as_str() {
            *detail = crate::redact::urls_in(text).into_owned().into();
        }
    }
    shown
}
