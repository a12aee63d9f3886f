//! Stuck invoices, pure: an invoice whose current status is `queued`
//! `stuck_after` after a `queued` notification of it is stuck (the final
//! `emitido` or acceptance was lost, or never came). Each invoice turns
//! stuck once and is cleared once, when a final status arrives; one that
//! retention removed meanwhile is forgotten without a turn.
//!
//! The candidates come from the spool's time-ordered index of queued
//! notifications, walked per source from the last one looked at (kept
//! here), each with the invoice as it stands now; the I/O is the task's.
//!
//! The state outlives the process: it starts from the marks the spool
//! kept ([`Stuck::seeded`]) and gives back what changed since the last
//! save ([`Stuck::take_changes`]), so an invoice announced stuck before a
//! restart is not announced again, and its clearing after it is.

use std::collections::BTreeMap;

use crate::providers::InvoiceStatus;
use crate::spool::{Invoice, NotificationId, StuckChanges, StuckInvoice, StuckMarks};

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
    /// Changed since the last save: marked (`Some`) or unmarked.
    unsaved_stuck: BTreeMap<(String, String), Option<StuckInvoice>>,
    /// Walk positions changed since the last save (`None`: dropped).
    unsaved_walked: BTreeMap<String, Option<NotificationId>>,
}

impl Stuck {
    /// Starts from the marks a previous run saved: nothing to save yet.
    pub fn seeded(marks: StuckMarks) -> Stuck {
        Stuck {
            stuck: marks
                .stuck
                .into_iter()
                .map(|s| ((s.source.clone(), s.subject.clone()), s))
                .collect(),
            walked: marks.walked.into_iter().collect(),
            ..Stuck::default()
        }
    }

    /// What changed since the last call, for the spool to keep.
    pub fn take_changes(&mut self) -> StuckChanges {
        let mut changes = StuckChanges::default();
        for (key, marked) in std::mem::take(&mut self.unsaved_stuck) {
            match marked {
                Some(stuck) => changes.marked.push(stuck),
                None => changes.unmarked.push(key),
            }
        }
        changes.walked = std::mem::take(&mut self.unsaved_walked)
            .into_iter()
            .collect();
        changes
    }

    /// Changes whose save failed: kept to be saved with the next ones
    /// (where nothing newer replaced them meanwhile).
    pub fn unsaved(&mut self, changes: StuckChanges) {
        for stuck in changes.marked {
            let key = (stuck.source.clone(), stuck.subject.clone());
            self.unsaved_stuck.entry(key).or_insert(Some(stuck));
        }
        for key in changes.unmarked {
            self.unsaved_stuck.entry(key).or_insert(None);
        }
        for (source, walked) in changes.walked {
            self.unsaved_walked.entry(source).or_insert(walked);
        }
    }

    fn walk(&mut self, source: &str, to: Option<NotificationId>) {
        match to {
            Some(id) => self.walked.insert(source.to_owned(), id),
            None => self.walked.remove(source),
        };
        self.unsaved_walked.insert(source.to_owned(), to);
    }

    fn mark(&mut self, stuck: StuckInvoice) {
        let key = (stuck.source.clone(), stuck.subject.clone());
        self.stuck.insert(key.clone(), stuck.clone());
        self.unsaved_stuck.insert(key, Some(stuck));
    }

    fn unmark(&mut self, key: &(String, String)) -> Option<StuckInvoice> {
        let was = self.stuck.remove(key)?;
        self.unsaved_stuck.insert(key.clone(), None);
        Some(was)
    }

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
        self.walk(source, Some(queued));
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
        self.mark(stuck.clone());
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
            Some(now) => self.unmark(&key).map(|was| Turn::Cleared {
                was,
                status: now.status,
                latest: now.latest,
            }),
            None => self.unmark(&key).map(Turn::Forgotten),
        }
    }

    /// Forgets the sources no longer watched (a reload dropped them or
    /// their `stuck_after`).
    pub fn keep_sources(&mut self, watched: &[String]) -> Vec<Turn> {
        let unwatched: Vec<String> = self
            .walked
            .keys()
            .filter(|source| !watched.contains(source))
            .cloned()
            .collect();
        for source in unwatched {
            self.walk(&source, None);
        }
        let gone: Vec<_> = self
            .stuck
            .keys()
            .filter(|(source, _)| !watched.contains(source))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|key| self.unmark(&key).map(Turn::Forgotten))
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

    fn marked(subject: &str, since: NotificationId) -> StuckInvoice {
        StuckInvoice {
            source: "tus".into(),
            subject: subject.into(),
            since_ms: since.ms(),
            latest: since,
        }
    }

    #[test]
    fn a_seeded_invoice_is_not_announced_again_and_is_cleared_once() {
        let queued = NotificationId::new(1_000);
        let later = NotificationId::new(1_500);
        let mut stuck = Stuck::seeded(StuckMarks {
            stuck: vec![marked("0001", queued)],
            walked: vec![("tus".into(), queued)],
        });
        assert_eq!(stuck.listed(), vec![marked("0001", queued)]);
        assert_eq!(stuck.walked_to("tus"), Some(queued));
        assert_eq!(
            stuck.take_changes(),
            StuckChanges::default(),
            "nothing new to save"
        );
        // Another queued notification of it waited too: still told once.
        let now = invoice(InvoiceStatus::Queued, later);
        assert_eq!(stuck.waited("tus", "0001", later, Some(&now)), None);
        assert_eq!(stuck.recheck("tus", "0001", Some(&now)), None);
        let accepted = NotificationId::new(2_000);
        let cleared = stuck.recheck(
            "tus",
            "0001",
            Some(&invoice(InvoiceStatus::Accepted, accepted)),
        );
        assert!(
            matches!(cleared, Some(Turn::Cleared { was, .. }) if was == marked("0001", queued))
        );
        assert_eq!(
            stuck.recheck(
                "tus",
                "0001",
                Some(&invoice(InvoiceStatus::Accepted, accepted))
            ),
            None
        );
        assert_eq!(
            stuck.take_changes(),
            StuckChanges {
                marked: vec![],
                unmarked: vec![("tus".into(), "0001".into())],
                walked: vec![("tus".into(), Some(later))],
            }
        );
    }

    #[test]
    fn changes_are_given_once_and_a_failed_save_is_given_again() {
        let mut stuck = Stuck::default();
        let queued = NotificationId::new(1_000);
        let now = invoice(InvoiceStatus::Queued, queued);
        assert!(stuck.waited("tus", "0001", queued, Some(&now)).is_some());
        let changes = stuck.take_changes();
        assert_eq!(changes.marked, vec![marked("0001", queued)]);
        assert_eq!(changes.walked, vec![("tus".into(), Some(queued))]);
        assert!(stuck.take_changes().is_empty());
        // The save failed; meanwhile the invoice was cleared: the newer
        // word (unmarked) wins over the one put back.
        let accepted = invoice(InvoiceStatus::Accepted, NotificationId::new(2_000));
        assert!(stuck.recheck("tus", "0001", Some(&accepted)).is_some());
        stuck.unsaved(changes);
        let again = stuck.take_changes();
        assert!(again.marked.is_empty(), "{again:?}");
        assert_eq!(again.unmarked, vec![("tus".into(), "0001".into())]);
        assert_eq!(again.walked, vec![("tus".into(), Some(queued))]);
    }

    #[test]
    fn a_seeded_source_no_longer_watched_drops_its_marks() {
        let queued = NotificationId::new(1_000);
        let mut stuck = Stuck::seeded(StuckMarks {
            stuck: vec![marked("0001", queued)],
            walked: vec![("tus".into(), queued)],
        });
        let turns = stuck.keep_sources(&["datil".into()]);
        assert!(matches!(turns.as_slice(), [Turn::Forgotten(_)]));
        assert!(stuck.listed().is_empty());
        assert_eq!(
            stuck.take_changes(),
            StuckChanges {
                marked: vec![],
                unmarked: vec![("tus".into(), "0001".into())],
                walked: vec![("tus".into(), None)],
            }
        );
    }
}
