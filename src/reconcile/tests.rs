//! What the stored checks of an invoice say of its current wait.

use super::schedule::Checked;
use super::wait::checked_since;
use crate::providers::InvoiceStatus;
use std::time::Duration;

use super::Sources;
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

/// A NubeFact source with the token in `token_file` and `extra` keys.
fn nubefact_config(token_file: &std::path::Path, extra: &str) -> crate::config::Config {
    let text = format!(
        "[server]\nself_signed = true\n\n[sources.nf]\nprovider = \"nubefact\"\ntoken = \"0123456789abcdef\"\n[sources.nf.reconcile]\nurl = \"https://api.nubefact.com/api/v1/ruta\"\ntoken_file = \"{}\"\nfailure_backoff = [\"1h\"]\n{extra}",
        token_file.display()
    );
    crate::config::Config::parse(&text).unwrap()
}

#[test]
fn a_reload_with_other_credentials_ends_the_rest_and_one_with_the_same_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("nf.token");
    std::fs::write(&token, "wrong-token").unwrap();
    let before = Sources::build(&nubefact_config(&token, ""), None).unwrap();
    let turn = before.engines["nf"]
        .state()
        .failed(SINCE, &[Duration::from_secs(3600)]);
    assert_eq!(turn, Some(super::source_state::Turn::Failing));
    assert!(!before.engines["nf"].state().may_ask(SINCE + 1));

    // Only the schedule changed: the failure was not about it.
    let rescheduled =
        Sources::build(&nubefact_config(&token, "every = [\"2h\"]"), Some(&before)).unwrap();
    assert!(!rescheduled.engines["nf"].state().may_ask(SINCE + 1));

    std::fs::write(&token, "right-token").unwrap();
    let fixed = Sources::build(&nubefact_config(&token, ""), Some(&before)).unwrap();
    let state = fixed.engines["nf"].state().clone();
    assert!(state.may_ask(SINCE + 1), "the new token is tried at once");
    assert!(state.is_failing(), "the spell goes on until it answers");
}

#[test]
fn an_invoice_with_nothing_to_ask_with_stays_given_up_after_a_restart() {
    // The task records it once and stops asking; read back, so it stays.
    let (checked, settled) = checked_since(&[failed(SINCE + 10, "no_keys")], SINCE);
    assert!(checked.gave_up, "{checked:?}");
    assert_eq!(checked.answered, 0);
    assert!(!settled);
}
