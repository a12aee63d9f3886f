//! `POST /api/purge`: an admin gives up, by filter, deliveries that would
//! otherwise stay forever (dead ones: `spool.dead_retention` has no
//! default) or that should not go out at all (waiting ones). The same
//! filters as a bulk replay, the same dry run that answers the count
//! first. The spool purges them in bounded slices through its writer (see
//! `Spool::purge`); a purged delivery keeps its history and can still be
//! replayed until retention removes its notification.

use serde_json::{json, Value};

use super::api::{audit, picked, ApiError};
use super::auth::Caller;
use super::query::{DeliveryState, Filter, QueryError, StateFilter};
use super::Admin;

/// Purges what `filter` picks (its `state` defaults to dead; only dead or
/// waiting deliveries can be purged), or with `dry_run` only counts them.
pub(super) async fn purge_bulk(
    admin: &Admin,
    caller: &Caller,
    mut filter: Filter,
    filter_text: &str,
) -> Result<Value, ApiError> {
    match filter.state {
        None => filter.state = Some(StateFilter::Delivery(DeliveryState::Dead)),
        Some(StateFilter::Delivery(DeliveryState::Dead | DeliveryState::Waiting)) => {}
        Some(other) => {
            let value = match other {
                StateFilter::Delivery(state) => state.name(),
                StateFilter::Quarantined => "quarantined",
            };
            return Err(QueryError::Invalid {
                name: "state",
                value: value.into(),
                reason: "only dead or waiting deliveries can be purged (a quarantined body is discarded one by one)".into(),
            }
            .into());
        }
    }
    let (targets, notifications) = picked(admin, &filter).await?;
    let deliveries = targets.len();
    if filter.dry_run {
        return Ok(json!({
            "dry_run": true,
            "notifications": notifications,
            "deliveries": deliveries,
        }));
    }
    let done = admin.spool.purge(targets, admin.clock.now_ms()).await?;
    tracing::info!(
        by = %caller.name,
        notifications,
        purged = done.purged,
        skipped = done.skipped,
        "bulk purge"
    );
    let answer = json!({
        "dry_run": false,
        "notifications": notifications,
        "deliveries": deliveries,
        "purged": done.purged,
        "skipped": done.skipped,
    });
    audit(admin, caller, "purge.bulk", filter_text, answer.clone()).await?;
    Ok(answer)
}
