//! `GET /api/stats`: what the spool holds (per subscription and per
//! source), whether it takes notifications, and what each source sent
//! since the relay started. The page's dashboard is drawn from the same
//! value.

use serde_json::{json, Value};

use super::respond::{no_parameters, ok, Answer, ApiError, Call};
use super::Admin;
use crate::clock::format_ms;
use crate::spool::SpoolError;

/// `GET /api/stats`
pub(super) async fn get_stats(call: Call) -> Answer {
    no_parameters(&call.query)?;
    ok(stats_value(&call.admin).await?)
}

pub(super) async fn stats_value(admin: &Admin) -> Result<Value, ApiError> {
    let health = admin.spool.health();
    // A store that is not open has no size to tell; JetStream's servers
    // may not answer now (null then).
    let stats = admin.spool.stats().await;
    if stats.bytes.is_none() && stats.promise.is_none() {
        return Err(SpoolError::Closed.into());
    }
    let config = admin.config.load();
    let counts = admin.spool.counts();
    let now_ms = admin.clock.now_ms();
    let oldest: std::collections::HashMap<String, i64> = oldest_waiting(admin)
        .await
        .into_iter()
        .filter_map(|(name, at)| Some((name, at?)))
        .collect();
    let deliveries: serde_json::Map<String, Value> = config
        .subscriptions
        .iter()
        .map(|s| s.name.clone())
        .chain(counts.subscriptions.keys().cloned())
        .map(|name| {
            let of = counts.subscriptions.get(&name).cloned().unwrap_or_default();
            let configured = config.subscriptions.iter().any(|s| s.name == name);
            let oldest = oldest.get(&name).copied();
            (
                name,
                json!({
                    "waiting": of.waiting,
                    "dead": of.dead,
                    "delivered": of.delivered,
                    "purged": of.purged,
                    "configured": configured,
                    "oldest_waiting_received_at": oldest.map(format_ms),
                    "oldest_waiting_age_seconds": oldest.map(|at| age_seconds(now_ms, at)),
                }),
            )
        })
        .collect();
    // The configured sources, and any other the spool still holds (one
    // removed from the config, or the relay's own events).
    let sources: serde_json::Map<String, Value> = config
        .sources
        .keys()
        .chain(counts.sources.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|name| {
            let held = counts.sources.get(name).cloned().unwrap_or_default();
            let configured = config.sources.contains_key(name);
            let last_ms = admin.metrics.last_received_ms(name);
            let last = last_ms.map(format_ms);
            // With `expect_every`: silent when nothing came for that long
            // (as `relay.source.silent` tells, by the same rule).
            let expect_every_ms = config
                .sources
                .get(name)
                .and_then(|source| source.expect_every)
                .map(|every| i64::try_from(every.0.as_millis()).unwrap_or(i64::MAX));
            let silent = expect_every_ms.map(|every| {
                crate::events::silence::is_silent(now_ms, admin.started_ms, every, last_ms)
            });
            // Since the relay started, from the metrics (memory, no scan).
            let received: serde_json::Map<String, Value> = admin
                .metrics
                .received_by_outcome(name)
                .into_iter()
                .map(|(outcome, count)| (outcome, count.into()))
                .collect();
            (
                name.clone(),
                json!({
                    "stored": held.stored,
                    "quarantined": held.quarantined,
                    "configured": configured,
                    "last_received_at": last,
                    "received_since_start": received,
                    "expect_every_seconds": expect_every_ms.map(|ms| ms / 1000),
                    "silent": silent,
                }),
            )
        })
        .collect();
    // Every delivery in the spool by where it stands, whatever its subscription.
    let mut by_state = crate::spool::SubscriptionCounts::default();
    for of in counts.subscriptions.values() {
        by_state.waiting += of.waiting;
        by_state.dead += of.dead;
        by_state.delivered += of.delivered;
        by_state.purged += of.purged;
    }
    Ok(json!({
        "spool": {
            "path": admin.spool.location(),
            "bytes": stats.bytes,
            "promise": stats.promise,
            "writable": health.writable,
            "fatal": health.fatal,
            "condition": health.condition,
            "refused_writes": health.refused_writes,
            "orphans": health.orphans,
        },
        "notifications": counts.notifications,
        "quarantined": counts.quarantined,
        "deliveries": by_state,
        "subscriptions": deliveries,
        "sources": sources,
    }))
}

/// When each configured subscription's oldest waiting delivery was
/// received (None when nothing waits, or the spool cannot say now): two
/// index seeks each.
pub(super) async fn oldest_waiting(admin: &Admin) -> Vec<(String, Option<i64>)> {
    let names: Vec<String> = admin
        .config
        .load()
        .subscriptions
        .iter()
        .map(|s| s.name.clone())
        .collect();
    admin.spool.oldest_waiting_ms(names).await
}

pub(super) fn age_seconds(now_ms: i64, at_ms: i64) -> f64 {
    now_ms.saturating_sub(at_ms).max(0) as f64 / 1000.0
}
