//! Giving a subscription notifications after the fact: the stored ones of
//! a time range it has no delivery of yet (`POST
//! /api/subscriptions/{name}/backfill`, or each invoice's current one),
//! and a synthetic test event (`POST /api/subscriptions/{name}/test`).
//! Who may is `subscriptions`' rule: an admin any, a subscriber its own.

use bytes::Bytes;
use serde_json::json;

use super::auth::Caller;
use super::query::{parse_time, QueryError};
use super::respond::{audit, decode_segment, no_parameters, ok, Answer, ApiError, Call};
use super::subscriptions::owned;
use super::Admin;
use crate::clock::format_ms;
use crate::providers::Notification;
use crate::spool::{NotificationId, Received, Stored};

/// Most notifications one backfill gives: a larger range is split by time.
const MAX_BACKFILL: usize = 100_000;
/// The source and event type of the relay's own test events.
const TEST_SOURCE: &str = "relay";
const TEST_EVENT: &str = "relay.test";

// === routes ===

/// `POST /api/subscriptions/{name}/backfill`
pub(super) async fn post_backfill(call: Call) -> Answer {
    let name = decode_segment(call.param(0));
    backfill(&call.admin, &call.caller, &name, &call.query).await
}

/// `POST /api/subscriptions/{name}/test`
pub(super) async fn post_test(call: Call) -> Answer {
    let name = decode_segment(call.param(0));
    no_parameters(&call.query)?;
    test_event(&call.admin, &call.caller, &name).await
}

// === backfill ===

/// Gives a subscription the stored notifications received in
/// `since..until` that match its sources and events and that it has no
/// delivery of yet, as new deliveries in receipt order; `dry_run=true`
/// answers the count and changes nothing.
pub(super) async fn backfill(admin: &Admin, caller: &Caller, name: &str, query: &str) -> Answer {
    let range = BackfillRange::parse(query, admin.clock.now_ms())?;
    owned(admin, caller, name)?;
    let config = admin.config.load();
    let Some(subscription) = config
        .subscriptions
        .iter()
        .find(|s| s.name == name)
        .cloned()
    else {
        return Err(ApiError::NotFound(format!("no subscription {name:?}")));
    };
    let spool = &admin.spool;
    let since_ms = range.since_ms.unwrap_or(0);
    let (current, until_ms) = (range.current, range.until_ms);
    let chosen = async {
        if current {
            return current_of_each_invoice(spool, &subscription, since_ms, until_ms).await;
        }
        let mut chosen = Vec::new();
        let mut records = spool.notifications_newest_first(None);
        while let Some(record) = records.next().await {
            let meta = record?.meta;
            if meta.received_ms < since_ms {
                break;
            }
            let in_range = range.until_ms.is_none_or(|until| meta.received_ms < until);
            let fanned_out = meta.subscriptions.contains(&subscription.name);
            if !in_range
                || fanned_out
                || !subscription.matches(&meta.source, &meta.event_type, meta.status)
            {
                continue;
            }
            let Some(id) = NotificationId::parse(&meta.id) else {
                continue;
            };
            let has_one = spool
                .deliveries_of(id)
                .await?
                .iter()
                .any(|d| d.subscription == subscription.name);
            if !has_one {
                chosen.push(id);
            }
            if chosen.len() > MAX_BACKFILL {
                return Err(ApiError::Unprocessable(format!(
                    "more than {MAX_BACKFILL} notifications in this range: backfill it in parts"
                )));
            }
        }
        chosen.reverse();
        Ok::<_, ApiError>(chosen)
    }
    .await?;
    let range_json = json!({
        "since": range.since_ms.map(format_ms),
        "until": range.until_ms.map(format_ms),
        "current": range.current,
    });
    if range.dry_run {
        return ok(
            json!({ "name": name, "dry_run": true, "notifications": chosen.len(), "range": range_json }),
        );
    }
    let found = chosen.len();
    let added = admin
        .spool
        .backfill(name, chosen, admin.clock.now_ms())
        .await?;
    tracing::info!(subscription = %name, by = %caller.name, added, "subscription backfilled");
    let detail = json!({ "range": range_json, "notifications": found, "added": added });
    audit(admin, caller, "subscription.backfill", name, detail).await?;
    ok(
        json!({ "name": name, "dry_run": false, "notifications": found, "added": added, "range": range_json }),
    )
}

/// For `current=true`: of each invoice (from the spool's invoice index),
/// the newest notification that tells its current status (never a
/// superseded one), if it was received in `since..until`, matches the
/// subscription and the subscription has no delivery of it; in receipt
/// order.
async fn current_of_each_invoice(
    spool: &crate::spool::Spool,
    subscription: &crate::config::SubscriptionConfig,
    since_ms: i64,
    until_ms: Option<i64>,
) -> Result<Vec<NotificationId>, ApiError> {
    const CHUNK: usize = 512;
    let mut chosen = Vec::new();
    let sources: Vec<Option<String>> = match &subscription.sources {
        Some(sources) => sources.iter().cloned().map(Some).collect(),
        None => vec![None],
    };
    for source in sources {
        let mut after = None;
        loop {
            let invoices = spool
                .invoices(source.as_deref(), after.as_ref(), CHUNK)
                .await?;
            let last_chunk = invoices.len() < CHUNK;
            for invoice in &invoices {
                after = Some(crate::spool::InvoiceCursor::after(invoice));
                let Some((invoice, timeline)) =
                    spool.invoice(&invoice.source, &invoice.subject).await?
                else {
                    continue;
                };
                let telling = timeline
                    .iter()
                    .rev()
                    .filter(|e| !e.superseded)
                    .find(|e| e.status == invoice.status)
                    .or_else(|| timeline.iter().rev().find(|e| !e.superseded));
                let Some(entry) = telling else {
                    continue;
                };
                let Some(record) = spool.notification(entry.id).await? else {
                    continue;
                };
                let meta = &record.meta;
                let in_range = meta.received_ms >= since_ms
                    && until_ms.is_none_or(|until| meta.received_ms < until);
                if !in_range
                    || meta.subscriptions.contains(&subscription.name)
                    || !subscription.matches(&meta.source, &meta.event_type, meta.status)
                    || spool
                        .deliveries_of(entry.id)
                        .await?
                        .iter()
                        .any(|d| d.subscription == subscription.name)
                {
                    continue;
                }
                chosen.push(entry.id);
                if chosen.len() > MAX_BACKFILL {
                    return Err(ApiError::Unprocessable(format!(
                        "more than {MAX_BACKFILL} invoices: backfill them in parts (since, until)"
                    )));
                }
            }
            if last_chunk {
                break;
            }
        }
    }
    chosen.sort();
    Ok(chosen)
}

/// The time range of a backfill, and whether it gives each invoice's
/// current notification only.
struct BackfillRange {
    /// Required but for `current`.
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    dry_run: bool,
    current: bool,
}

impl BackfillRange {
    fn parse(query: &str, now_ms: i64) -> Result<BackfillRange, QueryError> {
        let (mut since, mut until, mut dry_run, mut current) = (None, None, false, false);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "since" => &mut since,
                "until" => &mut until,
                flag @ ("dry_run" | "current") => {
                    let on = match value.as_ref() {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => {
                            return Err(QueryError::Invalid {
                                name: if flag == "dry_run" {
                                    "dry_run"
                                } else {
                                    "current"
                                },
                                value: value.into_owned(),
                                reason: "true or false".into(),
                            })
                        }
                    };
                    *(if flag == "dry_run" {
                        &mut dry_run
                    } else {
                        &mut current
                    }) = on;
                    continue;
                }
                other => return Err(QueryError::Unknown(other.to_owned())),
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(QueryError::Repeated(key.into_owned()));
            }
        }
        if since.is_none() && !current {
            return Err(QueryError::Invalid {
                name: "since",
                value: String::new(),
                reason: "a backfill needs since= (an RFC 3339 time, or a duration back from now such as 24h), or current=true".into(),
            });
        }
        let since_ms = since
            .map(|since| parse_time("since", &since, now_ms))
            .transpose()?;
        let until_ms = until
            .map(|until| parse_time("until", &until, now_ms))
            .transpose()?;
        if let Some(until_ms) = until_ms.filter(|until| since_ms.is_some_and(|s| *until <= s)) {
            return Err(QueryError::Invalid {
                name: "until",
                value: format_ms(until_ms),
                reason: "must be later than since".into(),
            });
        }
        Ok(BackfillRange {
            since_ms,
            until_ms,
            dry_run,
            current,
        })
    }
}
// === test events ===

/// Stores a synthetic event (`relay.test`) for this one subscription; it
/// is delivered, signed, like any notification. Answers its id.
pub(super) async fn test_event(admin: &Admin, caller: &Caller, name: &str) -> Answer {
    owned(admin, caller, name)?;
    if !admin.has_subscription(name) {
        return Err(ApiError::NotFound(format!("no subscription {name:?}")));
    }
    let now_ms = admin.clock.now_ms();
    let nonce: u128 = rand::random();
    let body = json!({
        "type": TEST_EVENT,
        "subscription": name,
        "requested_by": caller.name,
        "at": format_ms(now_ms),
    });
    let received = Received {
        source: TEST_SOURCE.into(),
        body: Bytes::from(body.to_string()),
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        peer: format!("admin:{}", caller.name),
        received_ms: now_ms,
    };
    let notification = Notification {
        event_type: TEST_EVENT.into(),
        subject: None,
        // Never a duplicate: each request is its own event.
        dedup_key: format!("test:{nonce:032x}"),
        provider_time: None,
        status: crate::providers::InvoiceStatus::Unknown,
        flags: Vec::new(),
    };
    let id = match admin
        .spool
        .store_to(received, notification, vec![name.to_owned()])
        .await?
    {
        Stored::New(id) | Stored::Duplicate(id) => id,
    };
    tracing::info!(subscription = %name, %id, by = %caller.name, "test event stored");
    audit(
        admin,
        caller,
        "subscription.test",
        name,
        json!({ "notification": id.to_string() }),
    )
    .await?;
    ok(json!({ "name": name, "id": id.to_string(), "event": TEST_EVENT }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backfill_needs_since_and_an_ordered_range() {
        let now = 1_800_000_000_000;
        let range = BackfillRange::parse("since=2h&until=1h&dry_run=true", now).unwrap();
        assert_eq!(range.since_ms, Some(now - 2 * 3_600_000));
        assert_eq!(range.until_ms, Some(now - 3_600_000));
        assert!(range.dry_run && !range.current);
        // Each invoice's current notification needs no range.
        let current = BackfillRange::parse("current=true", now).unwrap();
        assert!(current.current && current.since_ms.is_none());
        for bad in [
            "current=maybe",
            "current=false",
            "",
            "until=1h",
            "since=1h&until=2h",
            "since=1h&since=2h",
            "since=1h&to=x",
            "since=soon",
        ] {
            assert!(BackfillRange::parse(bad, now).is_err(), "{bad}");
        }
    }
}
