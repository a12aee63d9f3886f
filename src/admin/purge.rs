//! `POST /api/purge`: an admin gives up, by filter, deliveries that would
//! otherwise stay forever (dead ones: `spool.dead_retention` has no
//! default) or that should not go out at all (waiting ones). The same
//! filters as a bulk replay, the same dry run that answers the count
//! first. It runs as a job (`jobs.rs`): the pick is walked in slices and
//! the spool purges each in bounded slices through its writer (see
//! `Spool::purge`); a purged delivery keeps its history and can still be
//! replayed until retention removes its notification.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::auth::Caller;
use super::jobs::{self, BulkKind};
use super::query::{DeliveryState, Filter, QueryError, StateFilter};
use super::respond::{json_response, Answer, ApiError, Call};
use super::Admin;

/// `POST /api/purge`
pub(super) async fn post_purge(call: Call) -> Answer {
    let filter = Filter::parse(&call.query, call.admin.clock.now_ms(), true)?;
    purge_bulk(&call.admin, &call.caller, filter, &call.query).await
}

/// Starts a job that purges what `filter` picks (its `state` defaults to
/// dead; only dead or waiting deliveries can be purged), or with `dry_run`
/// only counts them.
pub(super) async fn purge_bulk(
    admin: &Arc<Admin>,
    caller: &Caller,
    mut filter: Filter,
    filter_text: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
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
    if filter.dry_run {
        return Ok(json_response(
            StatusCode::OK,
            &jobs::count(admin, &filter).await?,
        ));
    }
    let started = jobs::start(
        admin,
        caller,
        BulkKind::Purge,
        jobs::Pick::Deliveries(filter),
        filter_text,
    )?;
    Ok(json_response(StatusCode::ACCEPTED, &started))
}
