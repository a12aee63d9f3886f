//! The invoice routes: `GET /api/invoices` (invoices with their current
//! status, from the spool's invoice index, in (source, subject) order with
//! a cursor) and `GET /api/invoices/{source}/{subject}` (the timeline:
//! every notification of the invoice in order, the status it told, whether
//! it was superseded, the provider's resends, and each delivery with its
//! attempts; and the checks made of it with its provider, oldest first). `stuck=true` lists the stuck invoices instead, from the
//! list the events task keeps in memory (no index read at all). The
//! filter is parsed here, purely; the reads are the spool's async reads.

use serde_json::{json, Value};

use super::notifications::delivery_detail;
use super::query::{parse_bool, parse_status, parse_time, QueryError, DEFAULT_LIMIT, MAX_LIMIT};
use super::respond::{decode_segment, no_parameters, ok, Answer, ApiError, Call};
use crate::clock::format_ms;
use crate::config::wildcard_match;
use crate::providers::InvoiceStatus;
use crate::spool::{Invoice, InvoiceCursor, Spool, StuckInvoice};

/// Invoices one page request reads from the index before it answers with
/// what it found and a cursor (as for notifications).
const SCAN_LIMIT: usize = 20_000;
/// Invoices read from the index at a time.
const CHUNK: usize = 512;

/// What `GET /api/invoices` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvoiceFilter {
    pub source: Option<String>,
    /// The invoice number, a pattern with `*`.
    pub subject: Option<String>,
    /// Its current status.
    pub status: Option<InvoiceStatus>,
    /// Its latest notification received at or after (Unix ms).
    pub since_ms: Option<i64>,
    pub limit: usize,
    pub cursor: Option<InvoiceCursor>,
    /// Only invoices left `queued` past their source's `stuck_after`.
    pub stuck: bool,
}

const PARAMETERS: [&str; 7] = [
    "source", "subject", "status", "since", "limit", "cursor", "stuck",
];

impl InvoiceFilter {
    /// Parses a query string; `now_ms` anchors `since=24h`.
    pub fn parse(query: &str, now_ms: i64) -> Result<InvoiceFilter, QueryError> {
        let mut filter = InvoiceFilter {
            limit: DEFAULT_LIMIT,
            ..InvoiceFilter::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if !PARAMETERS.contains(&name.as_ref()) {
                return Err(QueryError::Unknown(name.into_owned()));
            }
            if !seen.insert(name.to_string()) {
                return Err(QueryError::Repeated(name.into_owned()));
            }
            let value = value.into_owned();
            let invalid = |name: &'static str, value: String, reason: &str| QueryError::Invalid {
                name,
                value,
                reason: reason.into(),
            };
            match name.as_ref() {
                "source" if !value.is_empty() => filter.source = Some(value),
                "subject" if !value.is_empty() => filter.subject = Some(value),
                "source" | "subject" => {
                    let name = if name == "source" {
                        "source"
                    } else {
                        "subject"
                    };
                    return Err(invalid(name, value, "cannot be empty"));
                }
                "status" => filter.status = Some(parse_status(value)?),
                "since" => filter.since_ms = Some(parse_time("since", &value, now_ms)?),
                "stuck" => filter.stuck = parse_bool("stuck", value)?,
                "limit" => {
                    filter.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            invalid(
                                "limit",
                                value,
                                &format!("a whole number from 1 to {MAX_LIMIT}"),
                            )
                        })?
                }
                _ => {
                    filter.cursor =
                        Some(InvoiceCursor::parse(&value).ok_or_else(|| {
                            invalid("cursor", value, "take next_cursor of a page")
                        })?)
                }
            }
        }
        Ok(filter)
    }

    pub fn matches(&self, invoice: &Invoice) -> bool {
        self.subject
            .as_ref()
            .is_none_or(|p| wildcard_match(p, &invoice.subject))
            && self.status.is_none_or(|s| s == invoice.status)
            && self.since_ms.is_none_or(|since| invoice.latest_ms >= since)
    }
}

/// One page of invoices: at most `limit` rows, reading at most
/// [`SCAN_LIMIT`] invoices, with the cursor to go on from.
/// `GET /api/invoices`
pub(super) async fn get_list(call: Call) -> Answer {
    let filter = InvoiceFilter::parse(&call.query, call.admin.clock.now_ms())?;
    if filter.stuck {
        let stuck = call.admin.metrics.stuck_invoices();
        return ok(list_stuck(&stuck, &filter));
    }
    ok(list(&call.admin.spool, &filter).await?)
}

/// `GET /api/invoices/{source}/{subject}`
pub(super) async fn get_one(call: Call) -> Answer {
    no_parameters(&call.query)?;
    let (source, subject) = (decode_segment(call.param(0)), decode_segment(call.param(1)));
    ok(show(&call.admin.spool, &source, &subject).await?)
}

pub async fn list(spool: &Spool, filter: &InvoiceFilter) -> Result<Value, ApiError> {
    let mut items = Vec::new();
    let mut cursor = filter.cursor.clone();
    let mut scanned = 0;
    let mut next_cursor = None;
    'walk: loop {
        let chunk = spool
            .invoices(filter.source.as_deref(), cursor.as_ref(), CHUNK)
            .await?;
        let last_chunk = chunk.len() < CHUNK;
        for invoice in chunk {
            scanned += 1;
            cursor = Some(InvoiceCursor::after(&invoice));
            if filter.matches(&invoice) {
                items.push(summary(&invoice));
                if items.len() == filter.limit {
                    next_cursor = cursor.clone();
                    break 'walk;
                }
            }
            if scanned == SCAN_LIMIT {
                next_cursor = cursor.clone();
                break 'walk;
            }
        }
        if last_chunk {
            break;
        }
    }
    Ok(json!({
        "items": items,
        "next_cursor": next_cursor.map(|c| c.to_string()),
        "scanned": scanned,
    }))
}

/// One page of the stuck invoices (`stuck=true`), in (source, subject)
/// order: `since` picks those queued since then, a `status` other than
/// `queued` none.
pub fn list_stuck(stuck: &[StuckInvoice], filter: &InvoiceFilter) -> Value {
    let mut matching = stuck.iter().filter(|s| {
        filter
            .source
            .as_ref()
            .is_none_or(|source| *source == s.source)
            && filter
                .subject
                .as_ref()
                .is_none_or(|p| wildcard_match(p, &s.subject))
            && filter.status.is_none_or(|st| st == InvoiceStatus::Queued)
            && filter.since_ms.is_none_or(|since| s.since_ms >= since)
            && filter.cursor.as_ref().is_none_or(|c| {
                (s.source.as_str(), s.subject.as_str()) > (c.source.as_str(), c.subject.as_str())
            })
    });
    let items: Vec<Value> = matching
        .by_ref()
        .take(filter.limit)
        .map(|s| {
            json!({
                "source": s.source,
                "subject": s.subject,
                "status": InvoiceStatus::Queued,
                "stuck": true,
                "queued_since": format_ms(s.since_ms),
                "latest_id": s.latest.to_string(),
                "latest_at": format_ms(s.latest.ms()),
            })
        })
        .collect();
    let next_cursor = (matching.next().is_some())
        .then(|| items.last())
        .flatten()
        .map(|last| {
            format!(
                "{}:{}",
                last["source"].as_str().unwrap_or(""),
                last["subject"].as_str().unwrap_or("")
            )
        });
    json!({
        "items": items,
        "next_cursor": next_cursor,
        "scanned": stuck.len(),
    })
}

fn summary(invoice: &Invoice) -> Value {
    json!({
        "source": invoice.source,
        "subject": invoice.subject,
        "status": invoice.status,
        "latest_id": invoice.latest.to_string(),
        "latest_at": format_ms(invoice.latest_ms),
    })
}

/// The invoice and its timeline.
pub async fn show(spool: &Spool, source: &str, subject: &str) -> Result<Value, ApiError> {
    let Some((invoice, timeline)) = spool.invoice(source, subject).await? else {
        return Err(ApiError::NotFound(format!(
            "no invoice {subject:?} of source {source:?}"
        )));
    };
    let mut notifications = Vec::with_capacity(timeline.len());
    for entry in timeline {
        // Gone meanwhile (retention between the two reads): left out.
        let Some(record) = spool.notification(entry.id).await? else {
            continue;
        };
        let deliveries = spool.deliveries_of(entry.id).await?;
        notifications.push(json!({
            "id": entry.id.to_string(),
            "received_at": format_ms(record.meta.received_ms),
            "event": record.meta.event_type,
            "status": entry.status,
            "superseded": entry.superseded,
            "resends": entry.resends,
            "deliveries": deliveries.iter().map(delivery_detail).collect::<Vec<_>>(),
        }));
    }
    let checks = spool.checks(source, subject).await?;
    let mut out = summary(&invoice);
    out["notifications"] = notifications.into();
    out["checks"] = checks
        .iter()
        .map(super::reconcile::check_json)
        .collect::<Vec<_>>()
        .into();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::NotificationId;

    const NOW: i64 = 1_764_000_000_000;

    fn invoice(subject: &str, status: InvoiceStatus, latest_ms: i64) -> Invoice {
        Invoice {
            source: "tus".into(),
            subject: subject.into(),
            status,
            latest: NotificationId::new(latest_ms),
            latest_ms,
        }
    }

    #[test]
    fn a_full_query_parses_and_picks_invoices() {
        let filter = InvoiceFilter::parse(
            "source=tus&subject=0001-*&status=queued&since=1h&limit=5&cursor=tus:0001-1",
            NOW,
        )
        .unwrap();
        assert_eq!(filter.source.as_deref(), Some("tus"));
        assert_eq!(filter.limit, 5);
        assert_eq!(filter.cursor.unwrap().subject, "0001-1");
        let filter = InvoiceFilter::parse("subject=0001-*&status=queued&since=1h", NOW).unwrap();
        assert!(filter.matches(&invoice("0001-7", InvoiceStatus::Queued, NOW - 60_000)));
        assert!(!filter.matches(&invoice("0002-7", InvoiceStatus::Queued, NOW - 60_000)));
        assert!(!filter.matches(&invoice("0001-7", InvoiceStatus::Accepted, NOW - 60_000)));
        assert!(!filter.matches(&invoice("0001-7", InvoiceStatus::Queued, NOW - 7_200_000)));
    }

    #[test]
    fn stuck_invoices_page_in_order_with_the_filter() {
        let stuck = |subject: &str, since_ms: i64| StuckInvoice {
            source: "tus".into(),
            subject: subject.into(),
            since_ms,
            latest: NotificationId::new(since_ms),
        };
        let list = [
            stuck("0001-1", NOW - 7_200_000),
            stuck("0001-2", NOW),
            stuck("0002-1", NOW),
        ];
        let filter = InvoiceFilter::parse("stuck=true&subject=0001-*&limit=1", NOW).unwrap();
        assert!(filter.stuck);
        let page = list_stuck(&list, &filter);
        assert_eq!(page["items"][0]["subject"], "0001-1");
        assert_eq!(page["next_cursor"], "tus:0001-1");
        let next = InvoiceFilter::parse("stuck=1&subject=0001-*&cursor=tus:0001-1", NOW).unwrap();
        let page = list_stuck(&list, &next);
        assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(page["items"][0]["subject"], "0001-2");
        assert!(page["next_cursor"].is_null());
        let recent = InvoiceFilter::parse("stuck=true&since=1h", NOW).unwrap();
        assert_eq!(
            list_stuck(&list, &recent)["items"].as_array().map(Vec::len),
            Some(2)
        );
        let accepted = InvoiceFilter::parse("stuck=true&status=accepted", NOW).unwrap();
        assert_eq!(
            list_stuck(&list, &accepted)["items"]
                .as_array()
                .map(Vec::len),
            Some(0)
        );
        assert!(InvoiceFilter::parse("stuck=maybe", NOW).is_err());
    }

    #[test]
    fn mistakes_are_errors_naming_the_parameter() {
        for (query, wanted) in [
            ("state=dead", "unknown parameter \"state\""),
            ("status=emitido", "status=\"emitido\""),
            ("limit=0", "limit=\"0\""),
            ("cursor=nocolon", "cursor=\"nocolon\""),
            ("source=", "cannot be empty"),
            ("source=a&source=b", "given twice"),
            ("since=yesterday", "since=\"yesterday\""),
        ] {
            let err = InvoiceFilter::parse(query, NOW).unwrap_err().to_string();
            assert!(err.contains(wanted), "{query}: {err}");
        }
    }
}
