//! Self-service subscriptions: create and delete them, give one the stored
//! notifications of a time range (backfill), send one a test event, and
//! rotate its secret with an overlap.
//!
//! Who may do what: an `admin` token everything; a `subscriber` token
//! creates subscriptions and manages only those it created (the spool
//! records the creating token's name); a `viewer` none of it. Subscriptions
//! of `relay.toml` are the file's: the API pauses and resumes them, but
//! neither deletes them nor rotates their secret (409; change the file and
//! reload). A created subscription's URL must name a host of
//! `[admin] allowed_targets` (422 otherwise; none is allowed by default).
//!
//! Every change is kept in the spool first, then applied (fan-out and the
//! forwarder take it) before the answer, then written to the audit log.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{audit, json_response, ok, ApiError};
use super::auth::{AuthError, Caller};
use super::query::{parse_time, QueryError};
use super::Admin;
use crate::clock::format_ms;
use crate::config::{parse_duration, HumanDuration, Role};
use crate::providers::Notification;
use crate::signing::SigningKey;
use crate::spool::{
    ApiSubscription, AuditEntry, NotificationId, Received, Replaced, Settings, Stored,
};

/// Largest create request body: a name, a URL and a few settings.
const MAX_REQUEST: usize = 64 << 10;
/// A rotation's overlap when none is given: a day lets every receiver
/// take the new secret in its own deploy cycle.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The longest overlap: past it, an old secret is a second live secret.
const MAX_OVERLAP: Duration = Duration::from_secs(30 * 86_400);
/// Most notifications one backfill gives: a larger range is split by time.
const MAX_BACKFILL: usize = 100_000;
/// The source and event type of the relay's own test events.
const TEST_SOURCE: &str = "relay";
const TEST_EVENT: &str = "relay.test";

/// What `POST /api/subscriptions` takes: the keys of a `[[subscriptions]]`
/// table of `relay.toml`, but the secret (the relay makes it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    url: String,
    sources: Option<Vec<String>>,
    events: Option<Vec<String>>,
    rate: Option<String>,
    timeout_first: Option<String>,
    timeout_retry: Option<String>,
    max_in_flight: Option<usize>,
    schedule: Option<Vec<String>>,
    jitter: Option<f64>,
    statuses: Option<Vec<String>>,
    on_superseded: Option<String>,
}

impl CreateRequest {
    fn settings(&self) -> Settings {
        Settings {
            rate: self.rate.clone(),
            timeout_first: self.timeout_first.clone(),
            timeout_retry: self.timeout_retry.clone(),
            max_in_flight: self.max_in_flight,
            schedule: self.schedule.clone(),
            jitter: self.jitter,
            statuses: self.statuses.clone(),
            on_superseded: self.on_superseded.clone(),
        }
    }
}

/// Where a subscription comes from, as far as the caller may touch it.
enum Owned {
    File,
    Api(Box<ApiSubscription>),
}

// === create and delete ===

pub(super) async fn create(
    admin: &Admin,
    caller: &Caller,
    body: Incoming,
) -> Result<Response<Full<Bytes>>, ApiError> {
    may_create(caller)?;
    let bytes = Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| bad_body(format!("cannot read the request body: {e}")))?
        .to_bytes();
    let request: CreateRequest =
        serde_json::from_slice(&bytes).map_err(|e| bad_body(format!("not a subscription: {e}")))?;
    let _one_at_a_time = admin.subscription_changes.lock().await;
    let config = admin.config.load();
    let subscription = ApiSubscription {
        settings: request.settings(),
        name: request.name,
        url: request.url,
        sources: request.sources,
        events: request.events,
        secret: new_secret(),
        previous: None,
        created_by: caller.name.clone(),
        created_ms: admin.clock.now_ms(),
    };
    let as_config = subscription.to_config().map_err(ApiError::Unprocessable)?;
    let problems = as_config.problems_in(&config);
    if !problems.is_empty() {
        return Err(ApiError::Unprocessable(problems.join("; ")));
    }
    let url = reqwest::Url::parse(&subscription.url)
        .map_err(|e| ApiError::Unprocessable(format!("url: {e}")))?;
    if !config.admin.allows_target(&url) {
        let allowed: Vec<String> = config
            .admin
            .allowed_targets
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(ApiError::Unprocessable(match allowed.is_empty() {
            true => "url: this relay allows no target for subscriptions created through the API \
                     ([admin] allowed_targets in relay.toml is empty)"
                .into(),
            false => format!(
                "url: host {:?} is not among [admin] allowed_targets ({})",
                url.host_str().unwrap_or_default(),
                allowed.join(", ")
            ),
        }));
    }
    // Last, so that a request otherwise refused is refused alike whether
    // its name is taken or not.
    name_is_free(admin, caller, &config, &subscription.name)?;
    let shown = describe(&subscription);
    // The subscription and its audit record in one batch: a crash keeps
    // both or neither. A caller that lost the answer rotates the secret.
    admin
        .spool
        .put_subscription(
            subscription.clone(),
            entry(
                caller,
                "subscription.create",
                &subscription.name,
                shown.clone(),
            ),
        )
        .await?;
    let shown_url = crate::redact::target_url(&subscription.url);
    tracing::info!(subscription = %subscription.name, url = %shown_url, by = %caller.name, "subscription created");
    if let Err(err) = apply(admin).await {
        // Not in effect: not kept either, and the audit log says so.
        let undone = json!({ "reason": err.to_string() });
        admin
            .spool
            .remove_subscription(
                &subscription.name,
                entry(
                    caller,
                    "subscription.create_undone",
                    &subscription.name,
                    undone,
                ),
            )
            .await?;
        apply(admin).await?;
        tracing::warn!(subscription = %subscription.name, error = %err, "subscription created, then removed: it could not be put in effect");
        return Err(err);
    }
    let mut shown = shown;
    // Shown once, here; never listed.
    shown["secret"] = json!(subscription.secret);
    if caller.role == Role::Admin {
        shown["url"] = json!(subscription.url);
    }
    Ok(json_response(StatusCode::CREATED, &shown))
}

/// Refuses a name in use, by a subscription (of `relay.toml` or the API)
/// or by the waiting deliveries of a removed one. An admin learns which;
/// a subscriber gets one answer for all, so a refused create tells it no
/// more about other teams than managing the name does (404).
fn name_is_free(
    admin: &Admin,
    caller: &Caller,
    config: &crate::config::Config,
    name: &str,
) -> Result<(), ApiError> {
    let taken = if config.subscriptions.iter().any(|s| s.name == name) {
        let from_file = !admin
            .spool
            .api_subscriptions()
            .iter()
            .any(|s| s.name == name);
        Some(match from_file {
            true => format!("subscription {name:?} is defined in relay.toml"),
            false => format!("subscription {name:?} exists already"),
        })
    } else {
        // A removed subscription's waiting deliveries would go to the new one.
        admin
            .spool
            .counts()
            .subscriptions
            .get(name)
            .filter(|c| c.waiting > 0)
            .map(|left| {
                format!(
                    "{} deliveries of a removed subscription named {name:?} still wait: choose \
                     another name, or move or purge them first (spool move-orphans / purge-orphans)",
                    left.waiting
                )
            })
    };
    match (taken, caller.role) {
        (None, _) => Ok(()),
        (Some(precise), Role::Admin) => Err(ApiError::Conflict(precise)),
        (Some(_), _) => Err(ApiError::Conflict(format!(
            "the name {name:?} is not available: choose another"
        ))),
    }
}

/// An audit entry of `caller`'s change.
fn entry(caller: &Caller, action: &str, target: &str, detail: Value) -> AuditEntry {
    AuditEntry {
        actor: caller.name.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
    }
}

/// Deletes an API-created subscription. Its deliveries still waiting make
/// it a 409 unless `purge=true`, which purges them (kept, purged, with
/// their history); delivered and dead ones stay in the spool as they are.
pub(super) async fn delete(
    admin: &Admin,
    caller: &Caller,
    name: &str,
    query: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let purge = match super::api::single_parameter(query, "purge")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(QueryError::Invalid {
                name: "purge",
                value: other.to_owned(),
                reason: "true or false".into(),
            }
            .into())
        }
    };
    let _one_at_a_time = admin.subscription_changes.lock().await;
    let Owned::Api(subscription) = owned(admin, caller, name)? else {
        return Err(ApiError::Conflict(format!(
            "subscription {name:?} is defined in relay.toml: remove it there and reload"
        )));
    };
    let waiting = admin
        .spool
        .counts()
        .subscriptions
        .get(name)
        .map_or(0, |c| c.waiting);
    if waiting > 0 && !purge {
        return Err(ApiError::Conflict(format!(
            "subscription {name:?} has {waiting} deliveries waiting: let them drain, or delete with \
             ?purge=true to give them up"
        )));
    }
    let mut detail = describe(&subscription);
    detail["purge"] = json!(purge);
    admin
        .spool
        .remove_subscription(name, entry(caller, "subscription.delete", name, detail))
        .await?;
    apply(admin).await?;
    let purged = match purge {
        true => {
            admin
                .spool
                .reassign_orphans(name, None, admin.clock.now_ms())
                .await?
        }
        false => 0,
    };
    tracing::info!(subscription = %name, by = %caller.name, purged, "subscription deleted");
    if purged > 0 {
        let detail = json!({ "purged": purged });
        audit(admin, caller, "subscription.delete_purged", name, detail).await?;
    }
    ok(json!({ "name": name, "deleted": true, "purged": purged }))
}

// === secrets ===

/// Gives an API-created subscription a new secret; the old one signs too
/// until now + `overlap` (default a day), then only the new one.
pub(super) async fn rotate_secret(
    admin: &Admin,
    caller: &Caller,
    name: &str,
    query: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let overlap = match super::api::single_parameter(query, "overlap")? {
        None => DEFAULT_OVERLAP,
        Some(text) => parse_duration(&text)
            .ok()
            .filter(|d| *d <= MAX_OVERLAP)
            .ok_or_else(|| QueryError::Invalid {
                name: "overlap",
                value: text,
                reason: format!(
                    "a duration such as 24h or 30m, at most {}",
                    HumanDuration(MAX_OVERLAP)
                ),
            })?,
    };
    let _one_at_a_time = admin.subscription_changes.lock().await;
    let Owned::Api(mut subscription) = owned(admin, caller, name)? else {
        return Err(ApiError::Conflict(format!(
            "subscription {name:?} is defined in relay.toml: put a new secret there \
             (`webhook-relay gen-secret`) and reload; the API rotates only the subscriptions it created"
        )));
    };
    let until_ms = admin
        .clock
        .now_ms()
        .saturating_add(i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX));
    let new = new_secret();
    subscription.previous = Some(Replaced {
        secret: std::mem::replace(&mut subscription.secret, new.clone()),
        until_ms,
    });
    let detail = json!({ "previous_valid_until": format_ms(until_ms) });
    admin
        .spool
        .put_subscription(
            *subscription,
            entry(caller, "subscription.rotate_secret", name, detail),
        )
        .await?;
    tracing::info!(subscription = %name, by = %caller.name, overlap = %HumanDuration(overlap), "subscription secret rotated");
    apply(admin).await?;
    ok(json!({
        "name": name,
        "secret": new,
        "previous_valid_until": format_ms(until_ms),
    }))
}

fn new_secret() -> String {
    // rand's thread generator is a CSPRNG seeded from the OS.
    SigningKey::generate_secret(rand::random())
}

// === backfill and test events ===

/// Gives a subscription the stored notifications received in
/// `since..until` that match its sources and events and that it has no
/// delivery of yet, as new deliveries in receipt order; `dry_run=true`
/// answers the count and changes nothing.
pub(super) async fn backfill(
    admin: &Admin,
    caller: &Caller,
    name: &str,
    query: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
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

/// Stores a synthetic event (`relay.test`) for this one subscription; it
/// is delivered, signed, like any notification. Answers its id.
pub(super) async fn test_event(
    admin: &Admin,
    caller: &Caller,
    name: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
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

// === who may ===

fn may_create(caller: &Caller) -> Result<(), ApiError> {
    match caller.role {
        Role::Admin | Role::Subscriber => Ok(()),
        Role::Viewer => Err(forbidden(caller)),
    }
}

/// Whether the caller may manage this subscription: an admin any, a
/// subscriber those it created. A subscriber asking for any other name
/// gets the answer of a name nobody holds (404), whether another team's
/// subscription or `relay.toml`'s holds it or none does.
pub(super) fn may_manage(admin: &Admin, caller: &Caller, name: &str) -> Result<(), ApiError> {
    owned(admin, caller, name).map(|_| ())
}

fn owned(admin: &Admin, caller: &Caller, name: &str) -> Result<Owned, ApiError> {
    may_create(caller)?;
    let api = admin
        .spool
        .api_subscriptions()
        .into_iter()
        .find(|s| s.name == name);
    let in_file = api.is_none() && admin.has_subscription(name);
    match (api, caller.role) {
        (Some(api), Role::Admin) => Ok(Owned::Api(Box::new(api))),
        (Some(api), _) if api.created_by == caller.name => Ok(Owned::Api(Box::new(api))),
        (None, Role::Admin) if in_file => Ok(Owned::File),
        // A subscriber learns nothing of the others' subscriptions.
        _ => Err(ApiError::NotFound(format!("no subscription {name:?}"))),
    }
}

/// Refuses to resume an API-created subscription whose target `[admin]
/// allowed_targets` no longer allows (409): a reload paused it for that.
pub(super) fn may_resume(admin: &Admin, name: &str) -> Result<(), ApiError> {
    let config = admin.config.load();
    match admin
        .spool
        .api_subscriptions()
        .into_iter()
        .find(|s| s.name == name)
    {
        Some(subscription) if !subscription.target_allowed(&config.admin) => {
            Err(ApiError::Conflict(format!(
                "subscription {name:?} stays paused: its target {} is not among [admin] \
                 allowed_targets; allow the host in relay.toml and reload, or delete the \
                 subscription",
                subscription.redacted_target()
            )))
        }
        _ => Ok(()),
    }
}

fn forbidden(caller: &Caller) -> ApiError {
    ApiError::Auth(AuthError::Forbidden {
        name: caller.name.clone(),
        role: caller.role,
        needed: Role::Subscriber,
    })
}

fn bad_body(reason: String) -> ApiError {
    ApiError::Query(QueryError::Invalid {
        name: "body",
        value: String::new(),
        reason,
    })
}

/// Hands the subscriptions kept in the spool to fan-out and the forwarder.
async fn apply(admin: &Admin) -> Result<(), ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    admin
        .changes
        .send(reply)
        .await
        .map_err(|_| ApiError::Internal("the relay is stopping".into()))?;
    answer
        .await
        .map_err(|_| ApiError::Internal("the relay is stopping".into()))?
        .map_err(ApiError::Internal)
}

/// An API subscription as listed and audited: everything but its secrets,
/// and its URL redacted (viewers read the audit; an admin's listing puts
/// the whole URL back).
pub(super) fn describe(subscription: &ApiSubscription) -> Value {
    json!({
        "name": subscription.name,
        "url": crate::redact::target_url(&subscription.url),
        "sources": subscription.sources,
        "events": subscription.events,
        "settings": subscription.settings,
        "origin": "api",
        "created_by": subscription.created_by,
        "created_at": format_ms(subscription.created_ms),
        "previous_secret_valid_until": subscription
            .previous
            .as_ref()
            .map(|p| format_ms(p.until_ms)),
    })
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

    #[test]
    fn a_create_request_takes_relay_toml_settings_and_refuses_unknown_keys() {
        let request: CreateRequest = serde_json::from_str(
            r#"{"name":"erp","url":"http://10.0.0.5/in","events":["*.emitido"],"rate":"20/s","max_in_flight":2}"#,
        )
        .unwrap();
        assert_eq!(request.settings().rate.as_deref(), Some("20/s"));
        assert_eq!(request.settings().max_in_flight, Some(2));
        assert!(serde_json::from_str::<CreateRequest>(
            r#"{"name":"erp","url":"http://10.0.0.5/in","secret":"whsec_x"}"#
        )
        .is_err());
    }
}
