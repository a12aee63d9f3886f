//! Reconciliation on demand: `POST /api/invoices/{source}/{subject}/reconcile`
//! asks the invoice's provider now, through the engine's [`Reconciler`]
//! (the page's "Check with the provider" button too), audited with the
//! token's name. `POST /api/invoices/reconcile` picks, by a
//! filter (a source, a current status, `queued` unless told, and a time
//! range of the invoice's latest notification), the invoices whose
//! provider is to be asked where each stands; a dry run answers their
//! count, a real run is a job (`jobs`) that checks them one by one through
//! the engine's handle, which waits for the source's rate limit. The
//! filter and the walk over the spool's invoice listing are here; the
//! selection is pure and tested on its own.

use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::jobs::{self, BulkKind, Counted, Pick};
use super::query::{parse_status, parse_time, QueryError};
use super::respond::{
    audit, decode_segment, json_response, no_parameters, ok, Answer, ApiError, Call,
};
use super::Admin;
use crate::clock::format_ms;
use crate::providers::InvoiceStatus;
use crate::reconcile::{ReconcileError, Reconciler};
use crate::spool::{CheckOutcome, Invoice, InvoiceCursor, ReconcileCheck, Spool};

/// Invoices one slice of the walk picks at most (each is a request to the
/// provider, so a slice is long enough).
pub const SLICE: usize = 1000;
/// Invoices one slice reads at most, matching or not, so a filter that
/// matches little still shows progress.
const SCAN_PER_SLICE: usize = 20_000;
/// Invoices read from the index at a time.
const CHUNK: usize = 512;
/// The largest request body: a few short fields.
pub const MAX_REQUEST: usize = 4 << 10;

/// `POST /api/invoices/{source}/{subject}/reconcile`
pub(super) async fn post_one(call: Call) -> Answer {
    no_parameters(&call.query)?;
    let (source, subject) = (decode_segment(call.param(0)), decode_segment(call.param(1)));
    let check = check_now(&call.admin, &call.caller, &source, &subject).await?;
    let mut shown = check_json(&check);
    shown["source"] = json!(source);
    shown["subject"] = json!(subject);
    match &check.outcome {
        CheckOutcome::Failed {
            kind,
            message,
            http_status,
            ..
        } => {
            let status = http_status
                .map(|s| format!(", HTTP {s}"))
                .unwrap_or_default();
            Ok(json_response(
                StatusCode::BAD_GATEWAY,
                &json!({
                    "error": "provider_failed",
                    "detail": format!(
                        "the provider's query API failed ({kind}{status}): {message}; the check is on the invoice's timeline"
                    ),
                    "check": shown,
                }),
            ))
        }
        _ => ok(shown),
    }
}

/// Asks the provider about one invoice now, as `caller`; the check (also
/// a failed one: it is recorded all the same), audited.
pub(super) async fn check_now(
    admin: &Admin,
    caller: &Caller,
    source: &str,
    subject: &str,
) -> Result<ReconcileCheck, ApiError> {
    may_reconcile(admin, source)?;
    let check = reconciler(admin)?
        .check_now(source, subject, Some(&caller.name))
        .await
        .map_err(refusal)?;
    tracing::info!(source, subject, by = %caller.name, outcome = outcome_name(&check.outcome), "invoice checked with its provider");
    audit(
        admin,
        caller,
        "reconcile",
        &format!("{source}/{subject}"),
        check_json(&check),
    )
    .await?;
    Ok(check)
}

/// The engine's handle, once the relay has handed it over.
fn reconciler(admin: &Admin) -> Result<&Reconciler, ApiError> {
    admin
        .reconciler
        .get()
        .ok_or_else(|| ApiError::Conflict("the relay's reconciliation is not running".into()))
}

/// What the engine's refusal means to the caller.
fn refusal(err: ReconcileError) -> ApiError {
    match err {
        ReconcileError::UnknownSource(_) | ReconcileError::UnknownInvoice { .. } => {
            ApiError::NotFound(err.to_string())
        }
        ReconcileError::NotConfigured(_) | ReconcileError::NoKeys { .. } => {
            ApiError::Conflict(err.to_string())
        }
        ReconcileError::Spool(err) => err.into(),
    }
}

fn outcome_name(outcome: &CheckOutcome) -> &'static str {
    match outcome {
        CheckOutcome::Final { .. } => "final",
        CheckOutcome::Pending { .. } => "pending",
        CheckOutcome::Failed { .. } => "failed",
        CheckOutcome::GaveUp => "gave_up",
    }
}

/// What a given-up check says on the API: the invoice stays stuck.
pub const GAVE_UP_SAID: &str = "provider still says pending";

/// A check as the API shows it (`ReconcileCheck` in `doc/openapi.json`).
pub fn check_json(check: &ReconcileCheck) -> Value {
    let mut shown = json!({
        "at": format_ms(check.at_ms),
        "by": check.by,
        "outcome": outcome_name(&check.outcome),
    });
    match &check.outcome {
        CheckOutcome::Final {
            status,
            notification,
            stored,
        } => {
            shown["status"] = json!(status);
            shown["notification"] = json!(notification.to_string());
            shown["stored"] = json!(stored);
        }
        CheckOutcome::Pending { said } => shown["said"] = json!(said),
        CheckOutcome::Failed {
            kind,
            message,
            http_status,
            answer,
        } => {
            shown["kind"] = json!(kind);
            shown["message"] = json!(message);
            shown["http_status"] = json!(http_status);
            shown["answer"] = json!(answer
                .as_ref()
                .map(|a| String::from_utf8_lossy(a).into_owned()));
        }
        // The issue's words, as the page and the CLI show them.
        CheckOutcome::GaveUp => shown["said"] = json!(GAVE_UP_SAID),
    }
    shown
}

/// `POST /api/invoices/reconcile`
pub(super) async fn post_bulk(call: Call) -> Answer {
    let Call {
        admin,
        caller,
        query,
        request,
        ..
    } = call;
    no_parameters(&query)?;
    let body = Limited::new(request.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| QueryError::Invalid {
            name: "body",
            value: String::new(),
            reason: format!("cannot read the request body: {e}"),
        })?
        .to_bytes();
    let (filter, dry_run) = ReconcileFilter::parse(&body, admin.clock.now_ms())?;
    may_reconcile(&admin, &filter.source)?;
    if dry_run {
        return ok(count(&admin.spool, &filter).await?);
    }
    let text = filter.describe();
    let by = caller.name.clone();
    let started = jobs::start(
        &admin,
        &caller,
        BulkKind::Reconcile,
        Pick::Runner(Box::new(move |admin, id| {
            Box::pin(async move { run_job(&admin, id, &filter, &by).await })
        })),
        &text,
    )?;
    Ok(json_response(StatusCode::ACCEPTED, &started))
}

/// Refuses a source the relay does not know (404) or whose provider it
/// does not ask (409: no `[sources.NAME.reconcile]`).
fn may_reconcile(admin: &Admin, source: &str) -> Result<(), ApiError> {
    let config = admin.config.load();
    let Some(settings) = config.sources.get(source) else {
        return Err(ApiError::NotFound(format!("no source {source:?}")));
    };
    match settings.reconcile {
        Some(_) => Ok(()),
        None => Err(ApiError::Conflict(format!(
            "source {source:?} has no [sources.{source}.reconcile]: the relay does not ask its provider"
        ))),
    }
}

/// Whether the page offers to check invoices of this source.
pub(super) fn offered(admin: &Admin, source: &str) -> bool {
    may_reconcile(admin, source).is_ok()
}

/// A reconciliation job: the walk, slice after slice, and one check per
/// invoice picked, each waiting for the source's rate limit.
pub(super) async fn run_job(
    admin: &Admin,
    id: ulid::Ulid,
    filter: &ReconcileFilter,
    by: &str,
) -> Result<(), ApiError> {
    let reconciler = reconciler(admin)?;
    let mut after = None;
    loop {
        let slice = next_slice(&admin.spool, filter, after).await?;
        admin
            .jobs
            .tally(id, Counted::Picked(slice.subjects.len() as u64));
        for subject in &slice.subjects {
            let counted = match reconciler
                .check_now(&filter.source, subject, Some(by))
                .await
            {
                Ok(check) => match check.outcome {
                    CheckOutcome::Final { .. } => Counted::Final,
                    CheckOutcome::Pending { .. } | CheckOutcome::GaveUp => Counted::Pending,
                    CheckOutcome::Failed { kind, .. } if kind == "not_found" => Counted::Failed,
                    // The source's failure (credentials, 5xx, timeout...):
                    // every invoice left would cost a request refused the
                    // same way, at the source's rate. The job stops; the
                    // automatic checks rest along `failure_backoff`.
                    CheckOutcome::Failed { kind, message, .. } => {
                        admin.jobs.tally(id, Counted::Failed);
                        return Err(ApiError::Conflict(format!(
                            "the provider's query API failed ({kind}): {message}; the job stops, the invoices left are not asked: run it again once the provider answers"
                        )));
                    }
                },
                // Gone meanwhile (retention), or nothing to ask with.
                Err(ReconcileError::UnknownInvoice { .. } | ReconcileError::NoKeys { .. }) => {
                    Counted::Skipped
                }
                // The source lost its `reconcile` (a reload), or the spool failed.
                Err(err) => return Err(refusal(err)),
            };
            admin.jobs.tally(id, counted);
        }
        match slice.resume {
            Some(resume) => after = Some(resume),
            None => return Ok(()),
        }
    }
}

/// Which invoices a bulk reconciliation asks about: those of `source`
/// standing at `status`, whose latest notification came in
/// `[since_ms, until_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileFilter {
    pub source: String,
    pub status: InvoiceStatus,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// The body of `POST /api/invoices/reconcile`, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    source: String,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

impl ReconcileFilter {
    /// Reads the request body (`{source, status?, since?, until?,
    /// dry_run?}`); `now_ms` anchors `since: "30d"`. The filter, and
    /// whether it is a dry run.
    pub fn parse(body: &[u8], now_ms: i64) -> Result<(ReconcileFilter, bool), QueryError> {
        let request: BulkRequest =
            serde_json::from_slice(body).map_err(|e| QueryError::Invalid {
                name: "body",
                value: String::new(),
                reason: format!(
                    "not a reconciliation filter ({{\"source\", \"status\", \"since\", \"until\", \"dry_run\"}}): {e}"
                ),
            })?;
        if request.source.is_empty() {
            return Err(QueryError::Invalid {
                name: "source",
                value: request.source,
                reason: "cannot be empty".into(),
            });
        }
        let time = |name, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| parse_time(name, v, now_ms))
                .transpose()
        };
        let filter = ReconcileFilter {
            status: match request.status {
                Some(status) => parse_status(status)?,
                None => InvoiceStatus::Queued,
            },
            since_ms: time("since", &request.since)?,
            until_ms: time("until", &request.until)?,
            source: request.source,
        };
        if let (Some(since), Some(until)) = (filter.since_ms, filter.until_ms) {
            if since >= until {
                return Err(QueryError::Invalid {
                    name: "until",
                    value: request.until.unwrap_or_default(),
                    reason: "must be later than since".into(),
                });
            }
        }
        Ok((filter, request.dry_run))
    }

    /// Whether the filter picks this invoice (of its source, as read).
    pub fn matches(&self, invoice: &Invoice) -> bool {
        invoice.source == self.source
            && invoice.status == self.status
            && self.since_ms.is_none_or(|since| invoice.latest_ms >= since)
            && self.until_ms.is_none_or(|until| invoice.latest_ms < until)
    }

    /// The filter as a job and its audit record show it.
    pub fn describe(&self) -> String {
        let mut text = format!("source={}&status={}", self.source, self.status.as_str());
        if let Some(since) = self.since_ms {
            text.push_str(&format!("&since={}", crate::clock::format_ms(since)));
        }
        if let Some(until) = self.until_ms {
            text.push_str(&format!("&until={}", crate::clock::format_ms(until)));
        }
        text
    }
}

/// What one slice of the walk picked.
#[derive(Debug, Default)]
pub struct InvoiceSlice {
    /// The picked invoices' subjects, in subject order.
    pub subjects: Vec<String>,
    /// Where the next slice starts (after this invoice); `None` at the end.
    pub resume: Option<InvoiceCursor>,
}

/// Picks from `invoices` (one chunk of the index, in order) what the
/// filter takes, until the slice is full; whether it is.
fn pick(
    filter: &ReconcileFilter,
    invoices: &[Invoice],
    slice: &mut InvoiceSlice,
    scanned: &mut usize,
) -> bool {
    for invoice in invoices {
        *scanned += 1;
        if filter.matches(invoice) {
            slice.subjects.push(invoice.subject.clone());
        }
        if slice.subjects.len() >= SLICE || *scanned >= SCAN_PER_SLICE {
            slice.resume = Some(InvoiceCursor::after(invoice));
            return true;
        }
    }
    false
}

/// The next slice of the invoices the filter picks, after `after`.
pub async fn next_slice(
    spool: &Spool,
    filter: &ReconcileFilter,
    after: Option<InvoiceCursor>,
) -> Result<InvoiceSlice, ApiError> {
    let mut slice = InvoiceSlice::default();
    let mut cursor = after;
    let mut scanned = 0;
    loop {
        let chunk = spool
            .invoices(Some(&filter.source), cursor.as_ref(), CHUNK)
            .await?;
        if pick(filter, &chunk, &mut slice, &mut scanned) {
            return Ok(slice);
        }
        match chunk.last() {
            Some(last) if chunk.len() == CHUNK => cursor = Some(InvoiceCursor::after(last)),
            _ => return Ok(slice),
        }
    }
}

/// A dry run: how many invoices the filter picks.
pub async fn count(spool: &Spool, filter: &ReconcileFilter) -> Result<Value, ApiError> {
    let mut invoices = 0u64;
    let mut after = None;
    loop {
        let slice = next_slice(spool, filter, after).await?;
        invoices += slice.subjects.len() as u64;
        match slice.resume {
            Some(resume) => after = Some(resume),
            None => break,
        }
    }
    Ok(json!({
        "dry_run": true,
        "source": filter.source,
        "filter": filter.describe(),
        "count": invoices,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::NotificationId;

    const NOW: i64 = 1_764_000_000_000;
    const DAY: i64 = 86_400_000;

    fn invoice(source: &str, subject: &str, status: InvoiceStatus, latest_ms: i64) -> Invoice {
        Invoice {
            source: source.into(),
            subject: subject.into(),
            status,
            latest: NotificationId::new(latest_ms),
            latest_ms,
        }
    }

    #[test]
    fn a_given_up_check_says_the_provider_still_says_pending() {
        let check = ReconcileCheck {
            at_ms: NOW,
            by: None,
            outcome: CheckOutcome::GaveUp,
        };
        let shown = check_json(&check);
        assert_eq!(shown["outcome"], "gave_up");
        assert_eq!(shown["said"], "provider still says pending", "{shown}");
    }

    #[test]
    fn the_status_defaults_to_queued_and_since_reaches_back_from_now() {
        let (filter, dry_run) =
            ReconcileFilter::parse(br#"{"source":"nube","since":"30d","dry_run":true}"#, NOW)
                .unwrap();
        assert!(dry_run);
        assert_eq!(
            filter,
            ReconcileFilter {
                source: "nube".into(),
                status: InvoiceStatus::Queued,
                since_ms: Some(NOW - 30 * DAY),
                until_ms: None,
            }
        );
        let queued = |subject, at| invoice("nube", subject, InvoiceStatus::Queued, at);
        assert!(filter.matches(&queued("B001-1", NOW - DAY)));
        assert!(filter.matches(&queued("B001-2", NOW - 30 * DAY)));
        assert!(
            !filter.matches(&queued("B001-3", NOW - 31 * DAY)),
            "too old"
        );
        assert!(!filter.matches(&invoice("nube", "B001-4", InvoiceStatus::Accepted, NOW)));
        assert!(!filter.matches(&invoice("tus", "B001-5", InvoiceStatus::Queued, NOW)));
        let (all, dry_run) = ReconcileFilter::parse(br#"{"source":"nube"}"#, NOW).unwrap();
        assert!(!dry_run);
        assert!(all.matches(&queued("B001-3", 0)));
    }

    #[test]
    fn until_ends_the_range_and_another_status_can_be_asked_for() {
        let (filter, _) = ReconcileFilter::parse(
            br#"{"source":"tus","status":"unknown","since":"2025-11-20T00:00:00Z","until":"2025-11-21T00:00:00Z"}"#,
            NOW,
        )
        .unwrap();
        let since = filter.since_ms.unwrap();
        let unknown = |at| invoice("tus", "x", InvoiceStatus::Unknown, at);
        assert!(filter.matches(&unknown(since)));
        assert!(filter.matches(&unknown(since + DAY - 1)));
        assert!(!filter.matches(&unknown(since + DAY)), "until is excluded");
        assert!(!filter.matches(&invoice("tus", "x", InvoiceStatus::Queued, since)));
        assert_eq!(
            filter.describe(),
            "source=tus&status=unknown&since=2025-11-20T00:00:00.000Z&until=2025-11-21T00:00:00.000Z"
        );
    }

    #[test]
    fn mistakes_are_errors_naming_the_field() {
        for (body, wanted) in [
            (r#"{"status":"queued"}"#, "missing field `source`"),
            (r#"{"source":""}"#, "source=\"\": cannot be empty"),
            (
                r#"{"source":"tus","status":"emitido"}"#,
                "status=\"emitido\"",
            ),
            (
                r#"{"source":"tus","since":"yesterday"}"#,
                "since=\"yesterday\"",
            ),
            (
                r#"{"source":"tus","since":"1d","until":"2d"}"#,
                "later than since",
            ),
            (
                r#"{"source":"tus","subject":"x"}"#,
                "unknown field `subject`",
            ),
            ("source=tus", "not a reconciliation filter"),
        ] {
            let err = ReconcileFilter::parse(body.as_bytes(), NOW)
                .unwrap_err()
                .to_string();
            assert!(err.contains(wanted), "{body}: {err}");
        }
    }

    #[test]
    fn a_slice_stops_when_full_and_resumes_after_its_last_invoice() {
        let (filter, _) = ReconcileFilter::parse(br#"{"source":"nube"}"#, NOW).unwrap();
        let invoices: Vec<Invoice> = (0..2 * SLICE + 10)
            .map(|n| {
                let status = if n % 2 == 0 {
                    InvoiceStatus::Queued
                } else {
                    InvoiceStatus::Accepted
                };
                invoice("nube", &format!("B{n:05}"), status, NOW)
            })
            .collect();
        let mut slice = InvoiceSlice::default();
        let mut scanned = 0;
        assert!(pick(&filter, &invoices, &mut slice, &mut scanned));
        assert_eq!(slice.subjects.len(), SLICE);
        assert_eq!(slice.subjects[1], "B00002", "the accepted one is left");
        let resume = slice.resume.unwrap();
        assert_eq!(resume.subject, format!("B{:05}", 2 * (SLICE - 1)));
        let mut rest = InvoiceSlice::default();
        assert!(!pick(&filter, &invoices[..4], &mut rest, &mut 0));
        assert_eq!(rest.subjects, ["B00000", "B00002"]);
        assert!(rest.resume.is_none());
    }
}
