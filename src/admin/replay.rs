//! Replays: `POST /api/notifications/{id}/replay` gives one notification's
//! dead deliveries (or a named subscription's) another try at once;
//! `POST /api/replay` does it by filter, as a job (`jobs`). Both audited.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::auth::Caller;
use super::jobs::BulkKind;
use super::query::{DeliveryState, Filter, QueryError, StateFilter};
use super::respond::{
    audit, json_response, ok, parse_id, single_parameter, Answer, ApiError, Call,
};
use super::Admin;
use crate::delivery::State;
use crate::spool::NotificationId;

/// `POST /api/notifications/{id}/replay`
pub(super) async fn post_one(call: Call) -> Answer {
    let id = parse_id(call.param(0))?;
    let subscription = single_parameter(&call.query, "subscription")?;
    let replayed = replay_one(&call.admin, &call.caller, id, subscription).await?;
    ok(json!({ "id": id.to_string(), "replayed": replayed }))
}

/// `POST /api/replay`
pub(super) async fn post_bulk(call: Call) -> Answer {
    let filter = Filter::parse(&call.query, call.admin.clock.now_ms(), true)?;
    replay_bulk(&call.admin, &call.caller, filter, &call.query).await
}

/// Replays one notification's dead deliveries, or the named
/// subscription's whatever its state (unless it is still waiting); the
/// subscriptions replayed.
pub(super) async fn replay_one(
    admin: &Admin,
    caller: &Caller,
    id: NotificationId,
    subscription: Option<String>,
) -> Result<Vec<String>, ApiError> {
    let spool = &admin.spool;
    let chosen = async {
        let Some(record) = spool.notification(id).await? else {
            if spool.is_quarantined(id).await? {
                return Err(ApiError::NotFound(format!(
                    "{id} is a quarantined body, not a notification: it has no deliveries to replay"
                )));
            }
            return Err(ApiError::NotFound(format!("no notification {id}")));
        };
        let deliveries = spool.deliveries_of(id).await?;
        match subscription {
            Some(name) => {
                let Some(delivery) = deliveries.iter().find(|d| d.subscription == name) else {
                    return Err(ApiError::NotFound(format!(
                        "notification {id} has no delivery for subscription {name:?} (it went to {:?})",
                        record.meta.subscriptions
                    )));
                };
                if DeliveryState::of(&delivery.state) == DeliveryState::Waiting {
                    return Err(ApiError::Conflict(format!(
                        "the delivery of {id} to {name:?} is still waiting for its next attempt"
                    )));
                }
                Ok(vec![name])
            }
            None => Ok(deliveries
                .into_iter()
                .filter(|d| matches!(d.state, State::Dead { .. }))
                .map(|d| d.subscription)
                .collect()),
        }
    }
    .await?;
    if chosen.is_empty() {
        return Err(ApiError::Conflict(format!(
            "notification {id} has no dead delivery; name one with ?subscription= to replay it anyway"
        )));
    }
    let now_ms = admin.clock.now_ms();
    for name in &chosen {
        admin.spool.replay(id, name, now_ms).await?;
        tracing::info!(%id, subscription = %name, by = %caller.name, "delivery replayed");
    }
    audit(
        admin,
        caller,
        "replay",
        &id.to_string(),
        json!({ "subscriptions": chosen }),
    )
    .await?;
    Ok(chosen)
}

/// Replays every delivery a filter picks (its `state` defaults to dead;
/// waiting ones are never picked: they are due anyway).
async fn replay_bulk(
    admin: &Arc<Admin>,
    caller: &Caller,
    mut filter: Filter,
    filter_text: &str,
) -> Answer {
    match filter.state {
        None => filter.state = Some(StateFilter::Delivery(DeliveryState::Dead)),
        Some(StateFilter::Delivery(DeliveryState::Waiting)) | Some(StateFilter::Quarantined) => {
            return Err(QueryError::Invalid {
                name: "state",
                value: "waiting or quarantined".into(),
                reason: "only dead, delivered or purged deliveries can be replayed".into(),
            }
            .into())
        }
        Some(StateFilter::Delivery(_)) => {}
    }
    if filter.dry_run {
        return ok(super::jobs::count(admin, &filter).await?);
    }
    let started = super::jobs::start(
        admin,
        caller,
        BulkKind::Replay,
        super::jobs::Pick::Deliveries(filter),
        filter_text,
    )?;
    Ok(json_response(StatusCode::ACCEPTED, &started))
}
