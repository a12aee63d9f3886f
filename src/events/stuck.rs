//! Stuck invoices, pure: an invoice whose current status is `queued`
//! `stuck_after` after a `queued` notification of it is stuck (the final
//! `emitido` or acceptance was lost, or never came). Each invoice turns
//! stuck once and is cleared once, when a final status arrives; one that
//! retention removed meanwhile is forgotten without a turn.
//!
//! The candidates come from the spool's time-ordered index of queued
//! notifications, walked per source from the last one looked at (kept
//! here), each with the invoice as it stands now; the I/O is the task's.

use std::collections::BTreeMap;

use crate::providers::InvoiceStatus;
use crate::spool::{Invoice, NotificationId, StuckInvoice};

/// An invoice's turn, to be told once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    Stuck(StuckInvoice),
    /// A final status arrived: `status`, told by `latest`.
    Cleared {
        was: StuckInvoice,
        status: InvoiceStatus,
        latest: NotificationId,
    },
    /// Removed by retention (or a reload dropped its source): no event.
    Forgotten(StuckInvoice),
}

/// The stuck invoices, and how far each source's queued notifications
/// were walked.
#[derive(Debug, Default)]
pub struct Stuck {
    stuck: BTreeMap<(String, String), StuckInvoice>,
    walked: BTreeMap<String, NotificationId>,
}

impl Stuck {
    /// The last queued notification of `source` looked at.
    pub fn walked_to(&self, source: &str) -> Option<NotificationId> {
        self.walked.get(source).copied()
    }

    /// Queued notification `queued` of (`source`, `subject`) waited its
    /// `stuck_after`; `current` is the invoice as it stands now.
    pub fn waited(
        &mut self,
        source: &str,
        subject: &str,
        queued: NotificationId,
        current: Option<&Invoice>,
    ) -> Option<Turn> {
        self.walked.insert(source.to_owned(), queued);
        let current = current.filter(|c| c.status == InvoiceStatus::Queued)?;
        let key = (source.to_owned(), subject.to_owned());
        if self.stuck.contains_key(&key) {
            return None;
        }
        let stuck = StuckInvoice {
            source: key.0.clone(),
            subject: key.1.clone(),
            since_ms: queued.ms(),
            latest: current.latest,
        };
        self.stuck.insert(key, stuck.clone());
        Some(Turn::Stuck(stuck))
    }

    /// Looks at a stuck invoice again, as it stands now.
    pub fn recheck(
        &mut self,
        source: &str,
        subject: &str,
        current: Option<&Invoice>,
    ) -> Option<Turn> {
        let key = (source.to_owned(), subject.to_owned());
        match current {
            Some(now) if now.status == InvoiceStatus::Queued => None,
            Some(now) => self.stuck.remove(&key).map(|was| Turn::Cleared {
                was,
                status: now.status,
                latest: now.latest,
            }),
            None => self.stuck.remove(&key).map(Turn::Forgotten),
        }
    }

    /// Forgets the sources no longer watched (a reload dropped them or
    /// their `stuck_after`).
    pub fn keep_sources(&mut self, watched: &[String]) -> Vec<Turn> {
        self.walked.retain(|source, _| watched.contains(source));
        let gone: Vec<_> = self
            .stuck
            .keys()
            .filter(|(source, _)| !watched.contains(source))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|key| self.stuck.remove(&key).map(Turn::Forgotten))
            .collect()
    }

    /// Each stuck invoice's (source, subject).
    pub fn keys(&self) -> Vec<(String, String)> {
        self.stuck.keys().cloned().collect()
    }

    /// The stuck invoices, by (source, subject).
    pub fn listed(&self) -> Vec<StuckInvoice> {
        self.stuck.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice(status: InvoiceStatus, latest: NotificationId) -> Invoice {
        Invoice {
            source: "tus".into(),
            subject: "0001".into(),
            status,
            latest,
            latest_ms: latest.ms(),
        }
    }

    #[test]
    fn an_invoice_is_stuck_once_and_cleared_once() {
        let mut stuck = Stuck::default();
        let queued = NotificationId::new(1_000);
        let resend = NotificationId::new(2_000);
        let now = invoice(InvoiceStatus::Queued, resend);
        let turn = stuck.waited("tus", "0001", queued, Some(&now));
        assert!(matches!(turn, Some(Turn::Stuck(s)) if s.since_ms == 1_000 && s.latest == resend));
        // The second queued notification of it: already stuck, told once.
        assert_eq!(stuck.waited("tus", "0001", resend, Some(&now)), None);
        assert_eq!(stuck.walked_to("tus"), Some(resend));
        assert_eq!(stuck.recheck("tus", "0001", Some(&now)), None);
        let accepted = NotificationId::new(3_000);
        let turn = stuck.recheck(
            "tus",
            "0001",
            Some(&invoice(InvoiceStatus::Accepted, accepted)),
        );
        assert!(matches!(
            turn,
            Some(Turn::Cleared { status: InvoiceStatus::Accepted, latest, .. }) if latest == accepted
        ));
        assert!(stuck.listed().is_empty());
    }

    #[test]
    fn a_final_status_in_time_is_never_stuck() {
        let mut stuck = Stuck::default();
        let queued = NotificationId::new(1_000);
        let accepted = invoice(InvoiceStatus::Accepted, NotificationId::new(1_500));
        assert_eq!(stuck.waited("tus", "0001", queued, Some(&accepted)), None);
        // Removed by retention before it was looked at.
        assert_eq!(stuck.waited("tus", "0002", queued, None), None);
        assert!(stuck.listed().is_empty());
    }

    #[test]
    fn removed_or_unwatched_invoices_are_forgotten_quietly() {
        let mut stuck = Stuck::default();
        let queued = NotificationId::new(1_000);
        let now = invoice(InvoiceStatus::Queued, queued);
        assert!(stuck.waited("tus", "0001", queued, Some(&now)).is_some());
        assert!(matches!(
            stuck.recheck("tus", "0001", None),
            Some(Turn::Forgotten(_))
        ));
        assert!(stuck.waited("tus", "0002", queued, Some(&now)).is_some());
        assert_eq!(stuck.keep_sources(&[]).len(), 1);
        assert_eq!(stuck.walked_to("tus"), None);
    }
}
