//! What the reconciler keeps of each stuck invoice's wait between looks:
//! how many answers its checks got, when the last came, whether it gave
//! up or was settled, as its stored checks tell it.

use super::schedule::Checked;
use super::source_state::Asked;
use super::Inner;
use crate::spool::{CheckOutcome, ReconcileCheck};

/// A check's kind when no notification of the invoice carries its keys.
pub(super) const NO_KEYS: &str = "no_keys";

/// One stuck invoice's wait as its checks tell it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tracked {
    pub(super) since_ms: i64,
    pub(super) checked: Checked,
    /// A final answer was stored: nothing more to ask (the stuck mark
    /// goes at the events task's next look).
    pub(super) settled: bool,
}

/// What the stored checks of a wait that began at `since_ms` say.
pub(super) fn checked_since(checks: &[ReconcileCheck], since_ms: i64) -> (Checked, bool) {
    let mut checked = Checked::default();
    let mut settled = false;
    for check in checks.iter().filter(|c| c.at_ms >= since_ms) {
        let answered = match &check.outcome {
            CheckOutcome::Final { .. } => {
                settled = true;
                true
            }
            CheckOutcome::Pending { .. } => true,
            // Nothing to ask with: the task stops asking (see `task`), and
            // so it stays after a restart.
            CheckOutcome::Failed { kind, .. } if kind == NO_KEYS => {
                checked.gave_up = true;
                false
            }
            CheckOutcome::Failed { kind, .. } => kind == "not_found",
            CheckOutcome::GaveUp => {
                checked.gave_up = true;
                false
            }
        };
        if answered {
            checked.answered += 1;
            checked.last_ms = Some(check.at_ms);
        }
    }
    (checked, settled)
}

/// What a stored check says of its source's query API, as `check` told
/// the source's state when it was made: `None` if the source was not asked
/// (nothing to ask with, or giving up).
pub(super) fn asked(check: &ReconcileCheck) -> Option<Asked> {
    match &check.outcome {
        CheckOutcome::Final { .. } | CheckOutcome::Pending { .. } => Some(Asked::Answered),
        CheckOutcome::Failed { kind, .. } if kind == NO_KEYS => None,
        CheckOutcome::Failed { kind, .. } if kind == "not_found" => Some(Asked::Answered),
        CheckOutcome::Failed { .. } => Some(Asked::Failed),
        CheckOutcome::GaveUp => None,
    }
}

impl Inner {
    /// A check made (here or on demand) moves the invoice's tracked wait.
    pub(super) fn note(&self, source: &str, subject: &str, check: &ReconcileCheck) {
        let mut tracked = self.tracked();
        let Some(wait) = tracked.get_mut(&(source.to_owned(), subject.to_owned())) else {
            return;
        };
        let (checked, settled) = checked_since(std::slice::from_ref(check), wait.since_ms);
        if checked.answered > 0 {
            wait.checked.answered += checked.answered;
            wait.checked.last_ms = checked.last_ms;
        }
        wait.checked.gave_up |= checked.gave_up;
        wait.settled |= settled;
    }
}
