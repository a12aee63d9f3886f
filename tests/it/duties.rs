//! Issue 19: the checks behind the operational events run once across
//! relays that share one JetStream spool, not once per relay: two relays
//! in one process on one spool announce a stuck invoice once, tell a
//! failing subscription once while both deliver its notifications (the
//! holder of the events duty hears every relay's attempts from the
//! stream), announce a silent source once and its recovery once when
//! either relay hears from it (the holder hears every relay's receipts),
//! and ask a provider about a stuck invoice once per due check (one
//! reconciler runs). Sled has one relay per spool: skipped there.

use std::time::Duration;

use crate::admin::Admin;
use crate::helpers::*;
use crate::invoices::{alerts_config, post_about, stuck_config, told};
use crate::progress::while_progressing;
use crate::provider_sim::InvoiceState;
use crate::reconcile::{checks, post_webhook, tusfacturas as tusfacturas_sim};
use webhook_relay::spool::CheckOutcome;

const WAIT: Duration = Duration::from_secs(30);
/// How long nothing more may come: many looks of both events tasks.
const QUIET: Duration = Duration::from_secs(3);

fn skipped() -> bool {
    if !on_jetstream() {
        eprintln!("skipped: relays share a spool on JetStream only (RELAY_TEST_BACKEND=jetstream)");
    }
    !on_jetstream()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_spool_announce_a_stuck_invoice_once() {
    if skipped() {
        return;
    }
    let alerts = Target::start(vec![]).await;
    let a = TestRelay::start_edited(|base| stuck_config(base, &alerts)).await;
    let b = TestRelay::start_sharing(&a, |base| stuck_config(base, &alerts)).await;
    post_about(&a, "d-q1", "encolado", "0011-0001").await;
    post_about(&b, "d-q2", "encolado", "0011-0002").await;
    alerts.wait_for(2, WAIT).await;
    assert!(
        !alerts.wait_until(QUIET, |t| t.count() > 2).await,
        "told again: {:?}",
        told(&alerts)
    );
    let mut told = told(&alerts);
    told.sort();
    assert_eq!(
        told,
        [
            ("relay.invoice.stuck".to_owned(), "0011-0001".to_owned()),
            ("relay.invoice.stuck".to_owned(), "0011-0002".to_owned()),
        ],
        "each stuck invoice once, whichever relay received it"
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_spool_announce_a_silent_source_once_and_its_recovery_once() {
    if skipped() {
        return;
    }
    let alerts = Target::start(vec![]).await;
    let config =
        |base: String| alerts_config(base, "expect_every = \"2s\"", "relay.source.*", &alerts);
    let a = TestRelay::start_edited(config).await;
    let b = TestRelay::start_sharing(&a, config).await;
    let sources = |target: &Target| -> Vec<(String, String)> {
        target
            .received()
            .iter()
            .map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let field = |name: &str| body[name].as_str().unwrap_or("").to_owned();
                (field("type"), field("source"))
            })
            .collect()
    };
    alerts.wait_for(1, WAIT).await;
    assert!(
        !alerts.wait_until(QUIET, |t| t.count() > 1).await,
        "told again: {:?}",
        sources(&alerts)
    );
    // a, started first, took the duty at its start: it hears what only
    // b received, from the stream.
    post_about(&b, "silence-b", "emitido", "0012-0001").await;
    alerts.wait_for(2, WAIT).await;
    // (Silent again 2 s later: nothing more comes from it.)
    assert_eq!(
        sources(&alerts)[..2],
        [
            ("relay.source.silent".to_owned(), "tusfacturas".to_owned()),
            (
                "relay.source.recovered".to_owned(),
                "tusfacturas".to_owned()
            ),
        ]
    );
    b.stop().await;
    a.stop().await;
}

/// The attempts a relay made for `subscription`, from its `/metrics`.
async fn attempts_made(relay: &TestRelay, subscription: &str) -> u64 {
    let (_, text) = Admin::of(relay).call("GET", "/metrics", None).await;
    let series = format!("webhook_relay_attempts_total{{subscription=\"{subscription}\"");
    text.as_str()
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with(&series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscription_is_told_once_while_two_relays_deliver_it() {
    if skipped() {
        return;
    }
    let alerts = Target::start(vec![]).await;
    let down = closed_port().await;
    let config = |base: String| {
        let base = base.replace(
            "shutdown_grace = \"2s\"",
            "shutdown_grace = \"2s\"\nfailing_after = 1",
        );
        format!(
            "{}{}",
            alerts_config(base, "", "relay.subscription.*", &alerts),
            subscription("erp", &format!("http://127.0.0.1:{down}/hook"), "")
        )
    };
    let a = TestRelay::start_edited(config).await;
    let b = TestRelay::start_sharing(&a, config).await;
    const SENT: u64 = 12;
    for n in 0..SENT {
        let on = if n % 2 == 0 { &a } else { &b };
        let (status, json) = on
            .post(
                &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
                tusfacturas(&format!("f-{n}"), "emitido", 1),
            )
            .await;
        assert_eq!(status, 200, "{json}");
    }
    let spool = a.relay().spool.clone();
    eventually(WAIT, "every erp delivery dead", || {
        spool
            .counts()
            .subscriptions
            .get("erp")
            .is_some_and(|c| c.dead == SENT)
    })
    .await;
    let (on_a, on_b) = (
        attempts_made(&a, "erp").await,
        attempts_made(&b, "erp").await,
    );
    assert!(
        on_a > 0 && on_b > 0,
        "both relays delivered: {on_a} and {on_b}"
    );
    alerts.wait_for(1, WAIT).await;
    assert!(
        !alerts.wait_until(QUIET, |t| t.count() > 1).await,
        "told again: {:?}",
        told(&alerts)
    );
    let told = told(&alerts);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].0, "relay.subscription.failing");
    b.stop().await;
    a.stop().await;
}

/// As one relay does (`reconcile::a_pending_answer_is_recorded_retried_per_every_then_given_up`):
/// a pending invoice asked per its `every` until given up, at most nine
/// questions in its 1.5 s, each one recorded; not once per relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_spool_ask_a_provider_once_per_due_check() {
    if skipped() {
        return;
    }
    let secrets = tempfile::tempdir().unwrap();
    let (sim, section) = tusfacturas_sim(
        secrets.path(),
        "every = [\"100ms\", \"200ms\"]\ngive_up_after = \"1500ms\"",
    )
    .await;
    let erp = Target::start(vec![]).await;
    sim.set("556", InvoiceState::Pending);
    let extra = format!("{section}{}", subscription("erp", &erp.url(), ""));
    let a = TestRelay::start(&extra).await;
    let b = TestRelay::start_sharing(&a, |base| format!("{base}{extra}")).await;
    post_webhook(&b, "tf", sim.webhook("556", InvoiceState::Pending)).await;
    let recorded = while_progressing("the invoice given up", async || {
        let recorded = checks(&a, "tf", "556").await;
        match recorded.last() {
            Some(CheckOutcome::GaveUp) => Ok(recorded),
            _ => Err(recorded.len() as u64),
        }
    })
    .await;
    let pending = recorded.len() - 1;
    assert!(pending >= 3, "asked again per every: {recorded:?}");
    assert!(sim.count() <= 9, "{} questions: {recorded:?}", sim.count());
    assert_eq!(sim.count(), pending, "each question recorded once");
    assert_eq!(
        recorded
            .iter()
            .filter(|c| matches!(c, CheckOutcome::GaveUp))
            .count(),
        1,
        "given up once"
    );
    b.stop().await;
    a.stop().await;
}
