//! The admin routes: each request authenticated (but `/healthz`, `/readyz`
//! and `/metrics`), routed, and answered in JSON; every failure an
//! [`ApiError`] with its status. Spool reads run on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::auth::{AuthError, Caller};
use super::jobs::BulkKind;
use super::query::{DeliveryState, Filter, QueryError, StateFilter};
use super::Admin;
use crate::clock::format_ms;
use crate::config::Role;
use crate::delivery::{Delivery, State};
use crate::metrics::Snapshot;
use crate::providers::{GenericRules, Provider};
use crate::spool::{
    AuditEntry, AuditId, NotificationId, NotificationRecord, QuarantineRecord, Received, Record,
    RecordStream, Spool, SpoolError, Stored,
};

/// Every route, as `doc/openapi.json` documents it (a test holds the two
/// and the live listener to each other).
pub const ROUTES: [(&str, &str); 32] = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/notifications"),
    ("GET", "/api/notifications/{id}"),
    ("POST", "/api/notifications/{id}/replay"),
    ("POST", "/api/replay"),
    ("POST", "/api/purge"),
    ("GET", "/api/jobs/{id}"),
    ("POST", "/api/spool/backup"),
    ("GET", "/api/quarantine"),
    ("GET", "/api/quarantine/{id}"),
    ("POST", "/api/quarantine/{id}/release"),
    ("POST", "/api/quarantine/{id}/discard"),
    ("GET", "/api/stats"),
    ("GET", "/api/subscriptions"),
    ("POST", "/api/subscriptions"),
    ("DELETE", "/api/subscriptions/{name}"),
    ("POST", "/api/subscriptions/{name}/pause"),
    ("POST", "/api/subscriptions/{name}/resume"),
    ("POST", "/api/subscriptions/{name}/retry"),
    ("POST", "/api/subscriptions/{name}/backfill"),
    ("POST", "/api/subscriptions/{name}/test"),
    ("POST", "/api/subscriptions/{name}/rotate-secret"),
    ("POST", "/api/reload"),
    ("GET", "/api/audit"),
    ("GET", "/api/invoices"),
    ("GET", "/api/invoices/{source}/{subject}"),
    ("GET", "/"),
    ("GET", "/n/{id}"),
    ("GET", "/i"),
    ("GET", "/i/{source}/{subject}"),
];

/// Most notifications one page request reads before it answers with what
/// it found and a cursor: a filter that matches little must not turn one
/// request into a walk of the whole spool.
const SCAN_LIMIT: usize = 20_000;
/// How long `/readyz` waits for the spool's writer.
const WRITER_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("no such endpoint")]
    NoRoute,
    #[error("{0} is not allowed here")]
    Method(Method),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A request that is well formed but cannot be done as asked (a
    /// subscription whose target is not allowed, a setting out of range).
    #[error("{0}")]
    Unprocessable(String),
    /// A config that did not load: the old one stays.
    #[error("{0}")]
    Invalid(String),
    #[error("the spool cannot answer now: {0}")]
    Spool(SpoolError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<SpoolError> for ApiError {
    fn from(err: SpoolError) -> Self {
        match err {
            SpoolError::NotFound(what) => ApiError::NotFound(what),
            SpoolError::NotReplayable(why) => ApiError::Conflict(why),
            other => ApiError::Spool(other),
        }
    }
}

impl ApiError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(err) => err.status(),
            ApiError::NoRoute | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Query(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid(_) | ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Spool(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::Auth(AuthError::Forbidden { .. }) => "forbidden",
            ApiError::Auth(_) => "unauthorized",
            ApiError::NoRoute | ApiError::NotFound(_) => "not_found",
            ApiError::Method(_) => "method_not_allowed",
            ApiError::Query(_) => "bad_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::Invalid(_) => "invalid_config",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Spool(_) => "spool_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(
            self.status(),
            &json!({ "error": self.kind(), "detail": self.to_string() }),
        );
        if matches!(
            self,
            ApiError::Auth(AuthError::Missing | AuthError::Unknown)
        ) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"webhook-relay admin\""),
            );
        }
        response
    }
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn ok(body: Value) -> Result<Response<Full<Bytes>>, ApiError> {
    Ok(json_response(StatusCode::OK, &body))
}

pub(super) async fn handle(admin: Arc<Admin>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if super::page::is_page(&path) {
        return match super::page::handle(&admin, request).await {
            Ok(response) => response,
            Err(err) => super::page::error_page(&err),
        };
    }
    match route(&admin, request).await {
        Ok(response) => response,
        Err(err) => {
            if err.status().is_server_error() {
                tracing::warn!(%method, path, error = %err, "admin request failed");
            } else {
                tracing::debug!(%method, path, error = %err, "admin request refused");
            }
            err.into_response()
        }
    }
}

async fn route(
    admin: &Arc<Admin>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let method = request.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    // Open to anyone who can reach the listener: nothing in them is private.
    match segments.as_slice() {
        ["healthz"] if get => return ok(json!({ "status": "ok" })),
        ["readyz"] if get => return readyz(admin).await,
        ["metrics"] if get => {
            let openmetrics = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.contains("application/openmetrics-text"));
            return metrics(admin, openmetrics).await;
        }
        ["healthz" | "readyz" | "metrics"] => return Err(ApiError::Method(method)),
        _ => {}
    }
    let caller = admin.tokens.load().authenticate(request.headers())?;
    let spool = admin.spool.clone();
    let now_ms = admin.clock.now_ms();
    match segments.as_slice() {
        ["api", "notifications"] if get => {
            caller.require(Role::Viewer)?;
            let filter = Filter::parse(&query, now_ms, false)?;
            if filter.state == Some(StateFilter::Quarantined) {
                return ok(list_quarantine(&spool, &filter).await?);
            }
            ok(list_notifications(&spool, &filter).await?)
        }
        ["api", "notifications", id] if get => {
            caller.require(Role::Viewer)?;
            no_parameters(&query)?;
            let id = parse_id(id)?;
            ok(show_notification(&spool, id).await?)
        }
        ["api", "notifications", id, "replay"] if post => {
            caller.require(Role::Admin)?;
            let id = parse_id(id)?;
            let subscription = single_parameter(&query, "subscription")?;
            let replayed = replay_one(admin, &caller, id, subscription).await?;
            ok(json!({ "id": id.to_string(), "replayed": replayed }))
        }
        ["api", "replay"] if post => {
            caller.require(Role::Admin)?;
            let filter = Filter::parse(&query, now_ms, true)?;
            replay_bulk(admin, &caller, filter, &query).await
        }
        ["api", "purge"] if post => {
            caller.require(Role::Admin)?;
            let filter = Filter::parse(&query, now_ms, true)?;
            super::purge::purge_bulk(admin, &caller, filter, &query).await
        }
        ["api", "jobs", id] if get => {
            caller.require(Role::Viewer)?;
            no_parameters(&query)?;
            ok(super::jobs::show(admin, id)?)
        }
        ["api", "quarantine"] if get => {
            caller.require(Role::Viewer)?;
            let filter = Filter::parse(&query, now_ms, false)?;
            ok(list_quarantine(&spool, &filter).await?)
        }
        ["api", "quarantine", id] if get => {
            caller.require(Role::Viewer)?;
            no_parameters(&query)?;
            let id = parse_id(id)?;
            ok(show_quarantined(&spool, id).await?)
        }
        ["api", "quarantine", id, "release"] if post => {
            caller.require(Role::Admin)?;
            let id = parse_id(id)?;
            let as_generic = release_as_generic(&query)?;
            ok(release(admin, &caller, id, as_generic).await?)
        }
        ["api", "quarantine", id, "discard"] if post => {
            caller.require(Role::Admin)?;
            let id = parse_id(id)?;
            if let Some((name, _)) = form_urlencoded::parse(query.as_bytes()).next() {
                return Err(QueryError::Unknown(name.into_owned()).into());
            }
            admin.spool.discard(id).await?;
            tracing::info!(%id, by = %caller.name, "quarantined body discarded");
            audit(
                admin,
                &caller,
                "quarantine.discard",
                &id.to_string(),
                Value::Null,
            )
            .await?;
            ok(json!({ "id": id.to_string(), "discarded": true }))
        }
        ["api", "stats"] if get => {
            caller.require(Role::Viewer)?;
            no_parameters(&query)?;
            stats(admin).await
        }
        ["api", "reload"] if post => {
            caller.require(Role::Admin)?;
            if let Some((name, _)) = form_urlencoded::parse(query.as_bytes()).next() {
                return Err(QueryError::Unknown(name.into_owned()).into());
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            admin
                .reloads
                .send(reply)
                .await
                .map_err(|_| ApiError::Conflict("this relay cannot reload its config".into()))?;
            // Nobody may be listening (a relay embedded without `serve`).
            let answer = tokio::time::timeout(Duration::from_secs(30), answer)
                .await
                .map_err(|_| ApiError::Conflict("no answer to the reload request".into()))?;
            match answer {
                Ok(Ok(report)) => {
                    tracing::info!(by = %caller.name, "config reloaded through the admin API");
                    audit(
                        admin,
                        &caller,
                        "config.reload",
                        "relay.toml",
                        report.clone(),
                    )
                    .await?;
                    ok(report)
                }
                Ok(Err(problems)) => Err(ApiError::Invalid(problems)),
                Err(_) => Err(ApiError::Conflict("the relay is stopping".into())),
            }
        }
        ["api", "audit"] if get => {
            caller.require(Role::Viewer)?;
            let (before, limit) = audit_page(&query)?;
            let records = spool.audit_log(before, limit).await?;
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
        ["api", "invoices"] if get => {
            caller.require(Role::Viewer)?;
            let filter = super::invoices::InvoiceFilter::parse(&query, now_ms)?;
            if filter.stuck {
                let stuck = admin.metrics.stuck_invoices();
                return ok(super::invoices::list_stuck(&stuck, &filter));
            }
            ok(super::invoices::list(&spool, &filter).await?)
        }
        ["api", "invoices", source, subject] if get => {
            caller.require(Role::Viewer)?;
            if let Some((key, _)) = form_urlencoded::parse(query.as_bytes()).next() {
                return Err(QueryError::Unknown(key.into_owned()).into());
            }
            let (source, subject) = (decode_segment(source), decode_segment(subject));
            ok(super::invoices::show(&spool, &source, &subject).await?)
        }
        ["api", "subscriptions"] if get => {
            caller.require(Role::Subscriber)?;
            no_parameters(&query)?;
            ok(subscriptions(admin, &caller))
        }
        ["api", "subscriptions"] if post => {
            if let Some((key, _)) = form_urlencoded::parse(query.as_bytes()).next() {
                return Err(QueryError::Unknown(key.into_owned()).into());
            }
            super::subscriptions::create(admin, &caller, request.into_body()).await
        }
        ["api", "subscriptions", name] if method == Method::DELETE => {
            let name = decode_segment(name);
            super::subscriptions::delete(admin, &caller, &name, &query).await
        }
        ["api", "subscriptions", name, action @ ("pause" | "resume")] if post => {
            let name = decode_segment(name);
            if let Some((key, _)) = form_urlencoded::parse(query.as_bytes()).next() {
                return Err(QueryError::Unknown(key.into_owned()).into());
            }
            // An admin any, a subscriber the ones it created.
            super::subscriptions::may_manage(admin, &caller, &name)?;
            pause(admin, &caller, &name, *action == "pause").await
        }
        ["api", "subscriptions", name, "retry"] if post => {
            let name = decode_segment(name);
            if let Some((key, _)) = form_urlencoded::parse(query.as_bytes()).next() {
                return Err(QueryError::Unknown(key.into_owned()).into());
            }
            // As pause and resume: an admin any, a subscriber the ones it created.
            super::subscriptions::may_manage(admin, &caller, &name)?;
            retry_now(admin, &caller, &name).await
        }
        ["api", "subscriptions", name, "backfill"] if post => {
            let name = decode_segment(name);
            super::subscriptions::backfill(admin, &caller, &name, &query).await
        }
        ["api", "subscriptions", name, "test"] if post => {
            let name = decode_segment(name);
            if let Some((key, _)) = form_urlencoded::parse(query.as_bytes()).next() {
                return Err(QueryError::Unknown(key.into_owned()).into());
            }
            super::subscriptions::test_event(admin, &caller, &name).await
        }
        ["api", "subscriptions", name, "rotate-secret"] if post => {
            let name = decode_segment(name);
            super::subscriptions::rotate_secret(admin, &caller, &name, &query).await
        }
        ["api", "notifications"]
        | ["api", "notifications", _]
        | ["api", "notifications", _, "replay"]
        | ["api", "replay"]
        | ["api", "purge"]
        | ["api", "quarantine"]
        | ["api", "quarantine", _]
        | ["api", "quarantine", _, "release" | "discard"]
        | ["api", "stats"]
        | ["api", "reload"]
        | ["api", "audit"]
        | ["api", "invoices"]
        | ["api", "invoices", _, _]
        | ["api", "subscriptions"]
        | ["api", "subscriptions", _]
        | ["api", "subscriptions", _, "pause" | "resume" | "retry" | "backfill" | "test" | "rotate-secret"] => {
            Err(ApiError::Method(method))
        }
        _ => Err(ApiError::NoRoute),
    }
}

/// A path segment as the client meant it (`%2F` and the like decoded).
fn decode_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

pub(super) fn parse_id(text: &str) -> Result<NotificationId, ApiError> {
    text.parse().map_err(|why: crate::spool::IdError| {
        ApiError::Query(QueryError::Invalid {
            name: "id",
            value: text.to_owned(),
            reason: format!("not a notification id: {why}"),
        })
    })
}

/// For an endpoint that takes no parameter: a misspelt filter is refused
/// rather than silently ignored.
fn no_parameters(query: &str) -> Result<(), ApiError> {
    match form_urlencoded::parse(query.as_bytes()).next() {
        Some((name, _)) => Err(QueryError::Unknown(name.into_owned()).into()),
        None => Ok(()),
    }
}

/// The one parameter an endpoint takes, if given; any other is an error.
pub(super) fn single_parameter(
    query: &str,
    name: &'static str,
) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != name {
            return Err(QueryError::Unknown(key.into_owned()).into());
        }
        if found.replace(value.into_owned()).is_some() {
            return Err(QueryError::Repeated(name.into()).into());
        }
    }
    Ok(found)
}

// === health and metrics ===

async fn readyz(admin: &Admin) -> Result<Response<Full<Bytes>>, ApiError> {
    let health = admin.spool.health();
    let mut reasons = Vec::new();
    if !admin.serving.load(std::sync::atomic::Ordering::Acquire) {
        reasons.push("the listeners are not serving yet".to_owned());
    }
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

/// When each configured subscription's oldest waiting delivery was
/// received (None when nothing waits, or the spool cannot say now): two
/// index seeks each.
async fn oldest_waiting(admin: &Admin) -> Vec<(String, Option<i64>)> {
    let names: Vec<String> = admin
        .config
        .load()
        .subscriptions
        .iter()
        .map(|s| s.name.clone())
        .collect();
    admin.spool.oldest_waiting_ms(names).await
}

fn age_seconds(now_ms: i64, at_ms: i64) -> f64 {
    now_ms.saturating_sub(at_ms).max(0) as f64 / 1000.0
}

// === notifications ===

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

/// One page of a walk newest first: `row` makes a record a row of the page,
/// or skips it. The walk stops past `since`, at `limit` rows, or after
/// [`SCAN_LIMIT`] records, with the cursor to go on from.
async fn page<M, Row>(
    mut records: RecordStream<Record<M>>,
    filter: &Filter,
    id_and_time: impl Fn(&M) -> (&str, i64),
    row: impl Fn(Record<M>, NotificationId) -> Row,
) -> Result<Value, ApiError>
where
    M: Send + 'static,
    Row: std::future::Future<Output = Result<Option<Value>, ApiError>>,
{
    let mut items = Vec::new();
    let mut next_cursor = None;
    let mut scanned = 0;
    while let Some(record) = records.next().await {
        let record = record?;
        let (id, received_ms) = id_and_time(&record.meta);
        let id = record_id(id)?;
        scanned += 1;
        if filter.past_since(received_ms) {
            break;
        }
        if let Some(item) = row(record, id).await? {
            items.push(item);
            if items.len() == filter.limit {
                next_cursor = Some(id);
                break;
            }
        }
        if scanned == SCAN_LIMIT {
            next_cursor = Some(id);
            break;
        }
    }
    Ok(json!({
        "items": items,
        "next_cursor": next_cursor.map(|id| id.to_string()),
        "scanned": scanned,
    }))
}

fn record_id(text: &str) -> Result<NotificationId, ApiError> {
    NotificationId::parse(text)
        .ok_or_else(|| ApiError::Spool(SpoolError::Corrupt(format!("malformed id {text:?}"))))
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

/// The body as text when it is UTF-8, else base64.
fn put_body(out: &mut Value, body: &[u8]) {
    match std::str::from_utf8(body) {
        Ok(text) => {
            out["body"] = text.into();
            out["body_encoding"] = "utf-8".into();
        }
        Err(_) => {
            out["body"] = base64::engine::general_purpose::STANDARD
                .encode(body)
                .into();
            out["body_encoding"] = "base64".into();
        }
    }
}

// === replays ===

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

/// Records a change in the spool's audit log (durably, before answering).
pub(super) async fn audit(
    admin: &Admin,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<(), ApiError> {
    admin
        .spool
        .audit(AuditEntry {
            actor: caller.name.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        })
        .await?;
    Ok(())
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

/// Replays every delivery a filter picks (its `state` defaults to dead;
/// waiting ones are never picked: they are due anyway).
async fn replay_bulk(
    admin: &Arc<Admin>,
    caller: &Caller,
    mut filter: Filter,
    filter_text: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
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
    let started = super::jobs::start(admin, caller, BulkKind::Replay, filter, filter_text)?;
    Ok(json_response(StatusCode::ACCEPTED, &started))
}

// === quarantine ===

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

// === stats and subscriptions ===

async fn stats(admin: &Admin) -> Result<Response<Full<Bytes>>, ApiError> {
    ok(stats_value(admin).await?)
}

pub(super) async fn stats_value(admin: &Admin) -> Result<Value, ApiError> {
    let health = admin.spool.health();
    // Only a store that is not open has no size to tell.
    let bytes = (admin.spool.stats().await.bytes).ok_or(SpoolError::Closed)?;
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
            "bytes": bytes,
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

/// Holds or lets go a configured subscription's deliveries.
pub(super) async fn pause(
    admin: &Admin,
    caller: &Caller,
    name: &str,
    paused: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !admin.has_subscription(name) {
        return Err(ApiError::NotFound(format!(
            "no subscription {name:?} is configured"
        )));
    }
    if !paused {
        super::subscriptions::may_resume(admin, name)?;
    }
    admin.spool.pause(name, paused).await?;
    let action = if paused {
        "subscription.pause"
    } else {
        "subscription.resume"
    };
    tracing::info!(subscription = %name, by = %caller.name, paused, "subscription {}", if paused { "paused" } else { "resumed" });
    audit(admin, caller, action, name, Value::Null).await?;
    ok(json!({ "name": name, "paused": paused }))
}

/// Makes a configured subscription's deliveries waiting for a later retry
/// due now (its target is back): how many, audited.
pub(super) async fn retry_now(
    admin: &Admin,
    caller: &Caller,
    name: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if !admin.has_subscription(name) {
        return Err(ApiError::NotFound(format!(
            "no subscription {name:?} is configured"
        )));
    }
    let retried = admin.spool.retry_now(name, admin.clock.now_ms()).await?;
    tracing::info!(subscription = %name, by = %caller.name, retried, "subscription's waiting deliveries due now");
    audit(
        admin,
        caller,
        "subscription.retry",
        name,
        json!({ "retried": retried }),
    )
    .await?;
    ok(json!({ "name": name, "retried": retried }))
}

/// The subscriptions the caller may see: an admin or a viewer all of them,
/// a subscriber only those it created (another team's target URLs are not
/// its business). Only an admin reads a URL whole; the others see its
/// scheme, host and path (see `redact`).
pub(super) fn subscriptions(admin: &Admin, caller: &Caller) -> Value {
    let config = admin.config.load();
    let paused = admin.spool.paused();
    let api = admin.spool.api_subscriptions();
    let counts = admin.spool.counts();
    let visible = |name: &str| {
        caller.role >= Role::Viewer
            || api
                .iter()
                .any(|a| a.name == name && a.created_by == caller.name)
    };
    let items: Vec<Value> = config
        .subscriptions
        .iter()
        .filter(|s| visible(&s.name))
        .map(|s| {
            let mut item = match api.iter().find(|a| a.name == s.name) {
                Some(created) => {
                    let mut item = super::subscriptions::describe(created);
                    item["target_allowed"] = json!(created.target_allowed(&config.admin));
                    item
                }
                None => json!({
                    "name": s.name,
                    "sources": s.sources,
                    "events": s.events,
                    "origin": "relay.toml",
                }),
            };
            item["url"] = match caller.role {
                Role::Admin => json!(s.url),
                _ => json!(crate::redact::target_url(&s.url)),
            };
            item["paused"] = json!(paused.contains(&s.name));
            // From the spool's kept counts (memory), so a subscriber, who
            // may not read the stats, sees its own backlog too.
            let of = counts
                .subscriptions
                .get(&s.name)
                .cloned()
                .unwrap_or_default();
            item["deliveries"] = json!({
                "waiting": of.waiting,
                "dead": of.dead,
                "delivered": of.delivered,
                "purged": of.purged,
            });
            item
        })
        .collect();
    json!({ "items": items })
}
