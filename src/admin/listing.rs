//! What the notification and quarantine lists share: one page of a walk
//! of the spool newest first, with its cursor, and a record's body as
//! JSON.

use base64::Engine as _;
use serde_json::{json, Value};

use super::query::Filter;
use super::respond::ApiError;
use crate::spool::{NotificationId, Record, RecordStream, SpoolError};

/// Most notifications one page request reads before it answers with what
/// it found and a cursor: a filter that matches little must not turn one
/// request into a walk of the whole spool.
const SCAN_LIMIT: usize = 20_000;

/// One page of a walk newest first: `row` makes a record a row of the page,
/// or skips it. The walk stops past `since`, at `limit` rows, or after
/// [`SCAN_LIMIT`] records, with the cursor to go on from.
pub(super) async fn page<M, Row>(
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

/// The body as text when it is UTF-8, else base64.
pub(super) fn put_body(out: &mut Value, body: &[u8]) {
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
