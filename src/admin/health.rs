//! The probes, open to anyone who reaches the admin listener (nothing in
//! them is private): `/healthz` (the process answers), `/readyz` (it
//! serves and its spool takes notifications) and `/metrics` (Prometheus).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use super::respond::{json_response, ok, Answer, ApiError};
use super::stats::{age_seconds, oldest_waiting};
use super::Admin;
use crate::metrics::Snapshot;

/// How long `/readyz` waits for the spool's writer.
const WRITER_WAIT: Duration = Duration::from_secs(1);

/// `GET /healthz`
pub(super) async fn healthz() -> Answer {
    ok(json!({ "status": "ok" }))
}

/// `GET /metrics`
pub(super) async fn get_metrics(admin: Arc<Admin>, request: Request<Incoming>) -> Answer {
    let openmetrics = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    metrics(&admin, openmetrics).await
}

pub(super) async fn readyz(admin: &Admin) -> Result<Response<Full<Bytes>>, ApiError> {
    let health = admin.spool.health();
    let mut reasons = Vec::new();
    if !admin.serving.load(std::sync::atomic::Ordering::Acquire) {
        reasons.push("the listeners are not serving yet".to_owned());
    }
    reasons.extend(
        admin
            .readiness_checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|check| check()),
    );
    if health.fatal {
        reasons.push(format!(
            "the spool's store failed or is not open; the relay reopens it by itself once there is room: {}",
            health.condition.clone().unwrap_or_default()
        ));
    } else if !health.writable {
        reasons.push(format!(
            "the spool refuses new notifications: {}",
            health.condition.clone().unwrap_or_default()
        ));
    }
    if !admin.spool.alive(WRITER_WAIT).await {
        reasons.push(format!(
            "the spool's writer did not answer within {WRITER_WAIT:?}"
        ));
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json_response(
        status,
        &json!({ "ready": reasons.is_empty(), "reasons": reasons }),
    ))
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the
/// classic text format.
async fn metrics(admin: &Admin, openmetrics: bool) -> Result<Response<Full<Bytes>>, ApiError> {
    let health = admin.spool.health();
    let stats = admin.spool.stats().await;
    let counts = admin.spool.counts();
    let config = admin.config.load();
    // Configured subscriptions show even at zero; removed ones while they
    // still have deliveries.
    let mut deliveries: Vec<(String, u64, u64)> = config
        .subscriptions
        .iter()
        .map(|s| {
            let of = counts
                .subscriptions
                .get(&s.name)
                .cloned()
                .unwrap_or_default();
            (s.name.clone(), of.waiting, of.dead)
        })
        .collect();
    for (name, of) in &counts.subscriptions {
        if !config.subscriptions.iter().any(|s| &s.name == name) {
            deliveries.push((name.clone(), of.waiting, of.dead));
        }
    }
    let now_ms = admin.clock.now_ms();
    let oldest_waiting = oldest_waiting(admin)
        .await
        .into_iter()
        .filter_map(|(name, at)| Some((name, age_seconds(now_ms, at?))))
        .collect();
    let snapshot = Snapshot {
        spool_bytes: stats.bytes.unwrap_or(0),
        spool_writable: health.writable,
        flush_groups: stats.flush_starts.unwrap_or(0),
        flushed_changes: stats.flushed_changes.unwrap_or(0),
        event_reports_dropped: admin.spool.observed_dropped(),
        deliveries,
        oldest_waiting,
        quarantined: counts.quarantined,
        notifications: counts.notifications,
        sources: config.sources.keys().cloned().collect(),
    };
    let text = admin.metrics.render(&snapshot);
    let (text, content_type) = if openmetrics {
        (
            text,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            crate::metrics::classic_text(&text),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}
