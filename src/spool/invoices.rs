//! Invoices as the spool knows them, whatever the backend: notifications
//! grouped by (source, subject), each invoice with its current status (a
//! final one never regresses) and its timeline. The index is kept by the
//! backend as it stores (see `sled/invoices.rs`); these are the words it
//! answers in.

use super::NotificationId;
use crate::providers::InvoiceStatus;

/// Which invoice a notification is about, as a backend's invoice index
/// keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceRef {
    pub source: String,
    pub subject: String,
    pub status: InvoiceStatus,
}

impl InvoiceRef {
    /// The invoice of a notification, if it names one that fits a key
    /// (no 0x00, which separates the parts; the provider checks refuse
    /// control characters anyway).
    pub fn of(source: &str, subject: Option<&str>, status: InvoiceStatus) -> Option<InvoiceRef> {
        let subject = subject.filter(|s| !s.is_empty() && !s.contains('\0'))?;
        (!source.contains('\0')).then(|| InvoiceRef {
            source: source.to_owned(),
            subject: subject.to_owned(),
            status,
        })
    }
}

/// One invoice: where it stands and its latest notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub source: String,
    pub subject: String,
    /// Its status after every notification so far, a final one kept
    /// against later ones that would move it back.
    pub status: InvoiceStatus,
    pub latest: NotificationId,
    /// When the latest notification was received (Unix ms).
    pub latest_ms: i64,
}

/// One notification in an invoice's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineEntry {
    pub id: NotificationId,
    /// The status this notification told.
    pub status: InvoiceStatus,
    /// It would have moved the invoice back from a final status.
    pub superseded: bool,
    /// How often the provider sent it again inside the dedup window.
    pub resends: u32,
}

/// An invoice left `queued` past its source's `stuck_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckInvoice {
    pub source: String,
    pub subject: String,
    /// When its wait began: its first `queued` notification not followed
    /// by a final status (Unix ms).
    pub since_ms: i64,
    /// Its latest notification when it was found stuck.
    pub latest: NotificationId,
}

/// What the stuck check keeps in the spool, so that a restart neither
/// announces a stuck invoice again nor misses its clearing: the stuck
/// invoices, and how far each source's queued notifications were walked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StuckMarks {
    pub stuck: Vec<StuckInvoice>,
    /// (source, the last queued notification of it looked at).
    pub walked: Vec<(String, NotificationId)>,
}

/// Changes to the [`StuckMarks`], written together (one batch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StuckChanges {
    /// Invoices found stuck.
    pub marked: Vec<StuckInvoice>,
    /// (source, subject) of invoices cleared or forgotten.
    pub unmarked: Vec<(String, String)>,
    /// (source, walked to), `None` for a source no longer watched.
    pub walked: Vec<(String, Option<NotificationId>)>,
}

impl StuckChanges {
    pub fn is_empty(&self) -> bool {
        self.marked.is_empty() && self.unmarked.is_empty() && self.walked.is_empty()
    }
}

/// Where a listing of invoices goes on from: after this one, in the
/// order of (source, subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceCursor {
    pub source: String,
    pub subject: String,
}

impl InvoiceCursor {
    /// As the API hands it out: `source:subject` (a source name has no
    /// `:`; a subject may).
    pub fn parse(text: &str) -> Option<InvoiceCursor> {
        let (source, subject) = text.split_once(':')?;
        (!source.is_empty() && !subject.is_empty()).then(|| InvoiceCursor {
            source: source.to_owned(),
            subject: subject.to_owned(),
        })
    }

    pub fn after(invoice: &Invoice) -> InvoiceCursor {
        InvoiceCursor {
            source: invoice.source.clone(),
            subject: invoice.subject.clone(),
        }
    }
}

impl std::fmt::Display for InvoiceCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.source, self.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_with_a_colon_in_the_subject() {
        let cursor = InvoiceCursor::parse("tus:A:0001").unwrap();
        assert_eq!(
            (cursor.source.as_str(), cursor.subject.as_str()),
            ("tus", "A:0001")
        );
        assert_eq!(InvoiceCursor::parse(&cursor.to_string()), Some(cursor));
        assert_eq!(InvoiceCursor::parse("tus"), None);
        assert_eq!(InvoiceCursor::parse(":x"), None);
    }
}
