//! Reconciliation as the spool keeps it: the checks made of an invoice
//! with its provider's query API ([`Spool::record_check`],
//! [`Spool::checks`]), at most [`CHECKS_KEPT`] per invoice, removed with
//! the invoice; and the dedup key that ties a notification the relay made
//! from such an answer to the provider's own webhook of the same state
//! ([`reconciled_key`], used by `store`, see `sled/writer/apply.rs`).
//!
//! The stored form ([`StoredCheck`]) is the spool's own words, shared by
//! every backend and by the backup archive.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{cause, Backend, NotificationId, Spool, SpoolError};
use crate::providers::InvoiceStatus;

/// Checks kept per invoice: the oldest go first.
pub const CHECKS_KEPT: usize = 100;
/// Bytes of a failed check's answer kept for the admin.
pub const ANSWER_KEPT: usize = 16 * 1024;

/// One check of an invoice with its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileCheck {
    /// When it was made (Unix ms).
    pub at_ms: i64,
    /// The admin token's name for a check on demand; `None`: automatic.
    pub by: Option<String>,
    pub outcome: CheckOutcome,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The provider says the invoice is final; `notification` is the one
    /// made of its answer, or (`stored: false`) the invoice's latest, when
    /// it already stood there.
    Final {
        status: InvoiceStatus,
        notification: NotificationId,
        stored: bool,
    },
    /// Still undecided; what the provider said, in short.
    Pending { said: String },
    /// No answer to act on: `kind` is `AnswerError::kind`, or `timeout` /
    /// `unreachable`; `answer` is the first [`ANSWER_KEPT`] bytes.
    Failed {
        kind: String,
        message: String,
        http_status: Option<u16>,
        answer: Option<Bytes>,
    },
    /// No more automatic checks: `give_up_after` has passed.
    GaveUp,
}

/// The dedup key of a notification made from a provider's answer (the
/// provider module names it); `store` looks it up for a webhook of the
/// same state.
pub use crate::providers::query::reconciled_key;

impl Spool {
    /// Records a check on the invoice's timeline; answers once durable.
    /// `NotFound` when the spool holds no notification of that invoice.
    /// A failed check's answer is cut to [`ANSWER_KEPT`] bytes.
    pub async fn record_check(
        &self,
        source: &str,
        subject: &str,
        mut check: ReconcileCheck,
    ) -> Result<(), SpoolError> {
        if let CheckOutcome::Failed {
            answer: Some(answer),
            ..
        } = &mut check.outcome
        {
            answer.truncate(ANSWER_KEPT);
        }
        dispatch!(&self.backend, b => await b.record_check(source, subject, &check))
    }

    /// The checks of an invoice, oldest first; at most the last
    /// [`CHECKS_KEPT`] are kept.
    pub async fn checks(
        &self,
        source: &str,
        subject: &str,
    ) -> Result<Vec<ReconcileCheck>, SpoolError> {
        let (source, subject) = (source.to_owned(), subject.to_owned());
        if let Backend::Jetstream(b) = &self.backend {
            return b.checks(source, subject).await;
        }
        self.read("read reconcile checks", move |b| {
            b.checks(&source, &subject)
        })
        .await
    }
}

// === the stored form ===

/// A check as the spool and the backup archive keep it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredCheck {
    at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    #[serde(flatten)]
    outcome: StoredOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum StoredOutcome {
    Final {
        status: InvoiceStatus,
        notification: String,
        stored: bool,
    },
    Pending {
        said: String,
    },
    Failed {
        kind: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
        /// Base64.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<String>,
    },
    GaveUp,
}

impl From<&ReconcileCheck> for StoredCheck {
    fn from(check: &ReconcileCheck) -> StoredCheck {
        let outcome = match &check.outcome {
            CheckOutcome::Final {
                status,
                notification,
                stored,
            } => StoredOutcome::Final {
                status: *status,
                notification: notification.to_string(),
                stored: *stored,
            },
            CheckOutcome::Pending { said } => StoredOutcome::Pending { said: said.clone() },
            CheckOutcome::Failed {
                kind,
                message,
                http_status,
                answer,
            } => StoredOutcome::Failed {
                kind: kind.clone(),
                message: message.clone(),
                http_status: *http_status,
                answer: answer
                    .as_ref()
                    .map(|a| base64::engine::general_purpose::STANDARD.encode(a)),
            },
            CheckOutcome::GaveUp => StoredOutcome::GaveUp,
        };
        StoredCheck {
            at_ms: check.at_ms,
            by: check.by.clone(),
            outcome,
        }
    }
}

impl TryFrom<StoredCheck> for ReconcileCheck {
    type Error = SpoolError;

    fn try_from(stored: StoredCheck) -> Result<ReconcileCheck, SpoolError> {
        let corrupt = |what: &str| SpoolError::Corrupt(format!("reconcile check: {what}"));
        let outcome = match stored.outcome {
            StoredOutcome::Final {
                status,
                notification,
                stored,
            } => CheckOutcome::Final {
                status,
                notification: NotificationId::parse(&notification)
                    .ok_or_else(|| corrupt("its notification id"))?,
                stored,
            },
            StoredOutcome::Pending { said } => CheckOutcome::Pending { said },
            StoredOutcome::Failed {
                kind,
                message,
                http_status,
                answer,
            } => CheckOutcome::Failed {
                kind,
                message,
                http_status,
                answer: answer
                    .map(|a| base64::engine::general_purpose::STANDARD.decode(a))
                    .transpose()
                    .map_err(|_| corrupt("its answer"))?
                    .map(Bytes::from),
            },
            StoredOutcome::GaveUp => CheckOutcome::GaveUp,
        };
        Ok(ReconcileCheck {
            at_ms: stored.at_ms,
            by: stored.by,
            outcome,
        })
    }
}

const CHECK_V1: u8 = 1;

/// A check's stored bytes: a version, then JSON.
pub(crate) fn encode_check(check: &ReconcileCheck) -> Result<Vec<u8>, SpoolError> {
    let mut out = vec![CHECK_V1];
    serde_json::to_writer(&mut out, &StoredCheck::from(check))
        .map_err(|e| SpoolError::Encode(cause(e)))?;
    Ok(out)
}

pub(crate) fn decode_check(bytes: &[u8]) -> Result<ReconcileCheck, SpoolError> {
    match bytes.split_first() {
        Some((&CHECK_V1, json)) => serde_json::from_slice::<StoredCheck>(json)
            .map_err(|e| SpoolError::Corrupt(format!("reconcile check: {e}")))?
            .try_into(),
        Some((other, _)) => Err(SpoolError::Corrupt(format!(
            "unknown reconcile check version {other}"
        ))),
        None => Err(SpoolError::Corrupt("empty reconcile check".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_round_trips_through_its_stored_form() {
        let id = NotificationId::new(1_700_000_000_000);
        let outcomes = [
            CheckOutcome::Final {
                status: InvoiceStatus::Accepted,
                notification: id,
                stored: false,
            },
            CheckOutcome::Pending {
                said: "EN COLA".into(),
            },
            CheckOutcome::Failed {
                kind: "unreadable".into(),
                message: "not JSON".into(),
                http_status: Some(200),
                answer: Some(Bytes::from_static(b"\xff<html>")),
            },
            CheckOutcome::Failed {
                kind: "timeout".into(),
                message: "10s".into(),
                http_status: None,
                answer: None,
            },
            CheckOutcome::GaveUp,
        ];
        for outcome in outcomes {
            let check = ReconcileCheck {
                at_ms: 7,
                by: Some("ops".into()),
                outcome,
            };
            assert_eq!(decode_check(&encode_check(&check).unwrap()).unwrap(), check);
        }
        assert!(decode_check(b"").is_err());
        assert!(decode_check(b"\x02{}").is_err());
        assert!(decode_check(b"\x01{\"at_ms\":1,\"outcome\":\"nope\"}").is_err());
    }

    #[test]
    fn the_reconciled_key_names_subject_and_status() {
        assert_eq!(
            reconciled_key("B001-7", InvoiceStatus::Accepted),
            "reconciled:B001-7:accepted"
        );
    }
}
