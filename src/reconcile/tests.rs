//! What the stored checks of an invoice say of its current wait.

use super::schedule::Checked;
use super::wait::checked_since;
use crate::providers::InvoiceStatus;
use crate::spool::{CheckOutcome, NotificationId, ReconcileCheck};

const SINCE: i64 = 1_764_000_000_000;

fn check(at_ms: i64, outcome: CheckOutcome) -> ReconcileCheck {
    ReconcileCheck {
        at_ms,
        by: None,
        outcome,
    }
}

fn pending(at_ms: i64) -> ReconcileCheck {
    check(
        at_ms,
        CheckOutcome::Pending {
            said: "EN COLA".into(),
        },
    )
}

fn failed(at_ms: i64, kind: &str) -> ReconcileCheck {
    check(
        at_ms,
        CheckOutcome::Failed {
            kind: kind.into(),
            message: "x".into(),
            http_status: Some(401),
            answer: None,
        },
    )
}

#[test]
fn answers_move_the_schedule_and_source_failures_do_not() {
    let checks = [
        pending(SINCE + 10),
        failed(SINCE + 20, "unauthorized"),
        failed(SINCE + 30, "not_found"),
        failed(SINCE + 40, "timeout"),
    ];
    let (checked, settled) = checked_since(&checks, SINCE);
    assert_eq!(
        checked,
        Checked {
            answered: 2,
            last_ms: Some(SINCE + 30),
            gave_up: false
        }
    );
    assert!(!settled);
}

#[test]
fn checks_of_an_earlier_wait_do_not_count() {
    let checks = [
        pending(SINCE - 100),
        check(SINCE - 50, CheckOutcome::GaveUp),
        pending(SINCE + 5),
    ];
    let (checked, _) = checked_since(&checks, SINCE);
    assert_eq!(checked.answered, 1);
    assert!(!checked.gave_up, "that give-up was another wait's");
    let (checked, _) = checked_since(&checks, SINCE - 1000);
    assert!(checked.gave_up);
}

#[test]
fn a_final_answer_settles_the_wait() {
    let checks = [check(
        SINCE + 1,
        CheckOutcome::Final {
            status: InvoiceStatus::Accepted,
            notification: NotificationId::new(SINCE + 1),
            stored: true,
        },
    )];
    let (checked, settled) = checked_since(&checks, SINCE);
    assert!(settled);
    assert_eq!(checked.answered, 1);
}
