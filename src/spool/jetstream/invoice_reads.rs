//! The reads on the invoice index the fold keeps (`invoices.rs`): the
//! listing by (source, subject), one invoice with its timeline, one as it
//! stands now, and the queued notifications waiting in time order; each
//! answered from this relay's index as of what it folded (after this
//! handle's own writes: read-your-writes), as sled answers them.

use std::sync::Arc;

use super::index::{storage, Index};
use super::invoices::{
    id_of_inverted, newest_entry, past_timeline, queued_key, source_prefix, split_entry_key,
    timeline_prefix, Entry, ENTRY,
};
use super::JetStreamSpool;
use crate::spool::{Invoice, InvoiceCursor, NotificationId, SpoolError, TimelineEntry};

/// An invoice as its newest entry tells it.
fn invoice(source: &str, subject: &str, latest: NotificationId, newest: Entry) -> Invoice {
    Invoice {
        source: source.to_owned(),
        subject: subject.to_owned(),
        status: newest.after,
        latest,
        latest_ms: latest.ms(),
    }
}

impl Index {
    fn invoices(
        &self,
        source: Option<&str>,
        after: Option<&InvoiceCursor>,
        max: usize,
    ) -> Result<Vec<Invoice>, SpoolError> {
        let db = self.db()?;
        let prefix = match source {
            Some(source) => source_prefix(source),
            None => vec![ENTRY],
        };
        let mut from = match after {
            Some(cursor) => {
                past_timeline(&timeline_prefix(&cursor.source, &cursor.subject)).max(prefix.clone())
            }
            None => prefix.clone(),
        };
        let mut found = Vec::new();
        while found.len() < max {
            let Some(item) = db.range(from.clone()..).next() else {
                break;
            };
            let (key, value) = item.map_err(storage)?;
            if !key.starts_with(&prefix) {
                break;
            }
            match (split_entry_key(&key), Entry::decode(&value)) {
                (Some((source, subject, latest)), Some(entry)) => {
                    found.push(invoice(source, subject, latest, entry));
                    from = past_timeline(&timeline_prefix(source, subject));
                }
                // Damaged: step past this key.
                _ => {
                    from = key.to_vec();
                    from.push(0);
                }
            }
        }
        Ok(found)
    }

    fn invoice(
        &self,
        source: &str,
        subject: &str,
    ) -> Result<Option<(Invoice, Vec<TimelineEntry>)>, SpoolError> {
        let db = self.db()?;
        let prefix = timeline_prefix(source, subject);
        let mut timeline = Vec::new();
        let mut current = None;
        for item in db.scan_prefix(&prefix) {
            let (key, value) = item.map_err(storage)?;
            let id = key.get(prefix.len()..).and_then(id_of_inverted);
            if let (Some(id), Some(entry)) = (id, Entry::decode(&value)) {
                current.get_or_insert_with(|| invoice(source, subject, id, entry));
                timeline.push(TimelineEntry {
                    id,
                    status: entry.status,
                    superseded: entry.superseded,
                    resends: entry.resends,
                });
            }
        }
        // Kept newest first; told oldest first.
        timeline.reverse();
        Ok(current.map(|invoice| (invoice, timeline)))
    }

    fn waiting(
        &self,
        source: &str,
        after: Option<NotificationId>,
        until_ms: i64,
        max: usize,
    ) -> Result<Vec<(NotificationId, String)>, SpoolError> {
        let db = self.db()?;
        let from = match after {
            Some(id) => {
                let mut key = queued_key(source, id);
                key.push(0);
                key
            }
            None => queued_key(source, NotificationId(ulid::Ulid(0))),
        };
        // The first id of the millisecond after `until_ms`.
        let next_ms = u64::try_from(until_ms.saturating_add(1)).unwrap_or(0);
        let end = queued_key(source, NotificationId(ulid::Ulid::from_parts(next_ms, 0)));
        let mut found = Vec::new();
        if from >= end {
            return Ok(found);
        }
        for item in db.range(from..end).take(max) {
            let (key, value) = item.map_err(storage)?;
            let id = key
                .len()
                .checked_sub(16)
                .and_then(|at| NotificationId::from_bytes(&key[at..]));
            if let (Some(id), Ok(subject)) = (id, std::str::from_utf8(&value)) {
                found.push((id, subject.to_owned()));
            }
        }
        Ok(found)
    }

    pub(super) fn invoice_now(
        &self,
        source: &str,
        subject: &str,
    ) -> Result<Option<Invoice>, SpoolError> {
        let db = self.db()?;
        let prefix = timeline_prefix(source, subject);
        Ok(newest_entry(&db, &prefix)?.map(|(id, entry)| invoice(source, subject, id, entry)))
    }
}

impl JetStreamSpool {
    /// Runs a read of the index off the async runtime.
    pub(super) async fn read_index<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Index) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let index: Arc<Index> = self.index.clone();
        tokio::task::spawn_blocking(move || read(&index))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    pub(crate) async fn invoices(
        &self,
        source: Option<String>,
        after: Option<InvoiceCursor>,
        max: usize,
    ) -> Result<Vec<Invoice>, SpoolError> {
        self.read_index(move |index| index.invoices(source.as_deref(), after.as_ref(), max))
            .await
    }

    pub(crate) async fn invoice(
        &self,
        source: String,
        subject: String,
    ) -> Result<Option<(Invoice, Vec<TimelineEntry>)>, SpoolError> {
        self.read_index(move |index| index.invoice(&source, &subject))
            .await
    }

    pub(crate) async fn waiting(
        &self,
        source: String,
        after: Option<NotificationId>,
        until_ms: i64,
        max: usize,
    ) -> Result<Vec<(NotificationId, String)>, SpoolError> {
        self.read_index(move |index| index.waiting(&source, after, until_ms, max))
            .await
    }

    pub(crate) async fn invoice_now(
        &self,
        source: String,
        subject: String,
    ) -> Result<Option<Invoice>, SpoolError> {
        self.read_index(move |index| index.invoice_now(&source, &subject))
            .await
    }
}
