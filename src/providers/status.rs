//! The invoice's status in one vocabulary across providers: what a
//! notification says about the document it is about, whatever words its
//! provider uses (`encolado`, `AUTORIZADO`, `aceptada_por_sunat`). Each
//! provider check names it; the spool keeps it with the notification, the
//! forwarder sends it as `x-relay-status`, and subscriptions and the API
//! filter on it. Pure: the rules of which status may follow which live
//! here too.

use serde::{Deserialize, Serialize};

/// Where an invoice stands, as one notification tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvoiceStatus {
    /// Taken by the provider or the tax authority, not decided yet.
    Queued,
    /// Issued: authorised or accepted by the tax authority.
    Accepted,
    /// Refused by the provider or the tax authority.
    Rejected,
    /// Removed at the provider.
    Deleted,
    /// The notification does not say (a generic source, an undocumented
    /// state), and records stored before statuses were kept.
    #[default]
    Unknown,
}

/// Every status, in the order the API and docs/receiving-and-forwarding.md list them.
pub const ALL_STATUSES: [InvoiceStatus; 5] = [
    InvoiceStatus::Queued,
    InvoiceStatus::Accepted,
    InvoiceStatus::Rejected,
    InvoiceStatus::Deleted,
    InvoiceStatus::Unknown,
];

impl InvoiceStatus {
    /// The name kept in the spool, sent in `x-relay-status` and used in
    /// filters.
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Queued => "queued",
            InvoiceStatus::Accepted => "accepted",
            InvoiceStatus::Rejected => "rejected",
            InvoiceStatus::Deleted => "deleted",
            InvoiceStatus::Unknown => "unknown",
        }
    }

    pub fn parse(name: &str) -> Option<InvoiceStatus> {
        ALL_STATUSES.into_iter().find(|s| s.as_str() == name)
    }

    /// A decision was made about the invoice: nothing the provider sends
    /// later should make it look undecided again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            InvoiceStatus::Accepted | InvoiceStatus::Rejected | InvoiceStatus::Deleted
        )
    }

    /// What an invoice's status becomes when a notification saying `self`
    /// arrives while it stands at `current`, and whether that notification
    /// is superseded (it would move the invoice back from a final status).
    /// A final status may follow another (a rejected invoice issued again);
    /// `unknown` says nothing, so it changes nothing.
    pub fn apply_to(self, current: Option<InvoiceStatus>) -> Transition {
        match (current, self) {
            (Some(now), InvoiceStatus::Queued) if now.is_final() => Transition {
                status: now,
                superseded: true,
            },
            (Some(now), InvoiceStatus::Unknown) => Transition {
                status: now,
                superseded: false,
            },
            _ => Transition {
                status: self,
                superseded: false,
            },
        }
    }
}

/// The outcome of [`InvoiceStatus::apply_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The invoice's status after the notification.
    pub status: InvoiceStatus,
    /// The notification would have moved the invoice back from a final
    /// status; the invoice kept it.
    pub superseded: bool,
}

impl std::fmt::Display for InvoiceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::InvoiceStatus::*;
    use super::*;

    #[test]
    fn names_round_trip_and_serde_uses_them() {
        for status in ALL_STATUSES {
            assert_eq!(InvoiceStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        assert_eq!(InvoiceStatus::parse("Accepted"), None);
    }

    #[test]
    fn a_queued_notification_after_a_final_status_is_superseded() {
        for last in [Accepted, Rejected, Deleted] {
            let t = Queued.apply_to(Some(last));
            assert_eq!((t.status, t.superseded), (last, true), "{last}");
        }
    }

    /// The spool's index leans on it: a final status needs no look at
    /// where the invoice stood.
    #[test]
    fn a_final_status_does_not_depend_on_the_one_before() {
        for told in ALL_STATUSES.into_iter().filter(|s| s.is_final()) {
            for before in ALL_STATUSES.map(Some).into_iter().chain([None]) {
                let t = told.apply_to(before);
                assert_eq!((t.status, t.superseded), (told, false), "{before:?}");
            }
        }
    }

    #[test]
    fn final_statuses_follow_anything_and_unknown_changes_nothing() {
        assert_eq!(Accepted.apply_to(Some(Rejected)).status, Accepted);
        assert_eq!(Deleted.apply_to(Some(Accepted)).status, Deleted);
        assert_eq!(Accepted.apply_to(Some(Queued)).status, Accepted);
        assert_eq!(Queued.apply_to(Some(Queued)).status, Queued);
        assert_eq!(Queued.apply_to(None).status, Queued);
        let t = Unknown.apply_to(Some(Accepted));
        assert_eq!((t.status, t.superseded), (Accepted, false));
        assert_eq!(Unknown.apply_to(None).status, Unknown);
        assert_eq!(Queued.apply_to(Some(Unknown)).status, Queued);
    }
}
