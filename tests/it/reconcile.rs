//! Reconciliation end to end (issue 20): a real relay, a real target and
//! the providers' query API simulators (`provider_sim`), on millisecond
//! schedules. An invoice left pending becomes stuck, is checked with its
//! provider, and a final answer reaches the target once, signed, with
//! `x-relay-origin: reconcile`; a later webhook of the same state changes
//! nothing; a source with wrong credentials is told failing once and
//! rests along its back-off, and after a restart (the built binary,
//! SIGKILLed) goes on resting; a pending answer is retried, then given up;
//! a `relay.*` subscriber hears a reconciled invoice stuck, then unstuck,
//! once each.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use webhook_relay::spool::CheckOutcome;

use crate::forwarding::verify_with_standardwebhooks;
use crate::helpers::{eventually, provider_client, subscription, Received, Target, TestRelay};
use crate::process::{write_config, RelayProcess};
use crate::progress::while_progressing;
use crate::provider_sim::{HeaderForm, InvoiceState, ProviderSim};

const WAIT: Duration = Duration::from_secs(20);
const HOOK_TOKEN: &str = "reconcile-hook-token-0123";

/// A source `name` of `provider`, stuck after 50 ms, whose `[reconcile]`
/// asks `sim` with `credentials` (keys written for its provider) and
/// `schedule` (every, give_up_after, failure_backoff...).
fn source(
    name: &str,
    provider: &str,
    sim: &ProviderSim,
    credentials: &str,
    schedule: &str,
) -> String {
    format!(
        "\n[sources.{name}]\nprovider = \"{provider}\"\ntoken = \"{HOOK_TOKEN}\"\nstuck_after = \"50ms\"\n\n\
         [sources.{name}.reconcile]\nurl = \"{}\"\nrate = \"100/s\"\ntimeout = \"2s\"\n{credentials}\n{schedule}\n",
        sim.url()
    )
}

fn secret_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// NubeFact accepting `good`, the source holding `given`.
async fn nubefact(dir: &Path, good: &str, given: &str, schedule: &str) -> (ProviderSim, String) {
    let sim = ProviderSim::nubefact(good, HeaderForm::TokenQuoted).await;
    let token = secret_file(dir, "nubefact.token", given);
    let section = source(
        "nf",
        "nubefact",
        &sim,
        &format!("token_file = \"{token}\""),
        schedule,
    );
    (sim, section)
}

pub async fn tusfacturas(dir: &Path, schedule: &str) -> (ProviderSim, String) {
    let sim = ProviderSim::tusfacturas("tf-apikey", "tf-apitoken", "tf-usertoken").await;
    let credentials = format!(
        "apikey = \"tf-apikey\"\napitoken_file = \"{}\"\nusertoken_file = \"{}\"",
        secret_file(dir, "tf.apitoken", "tf-apitoken"),
        secret_file(dir, "tf.usertoken", "tf-usertoken"),
    );
    let section = source("tf", "tusfacturas", &sim, &credentials, schedule);
    (sim, section)
}

async fn datil(dir: &Path, schedule: &str) -> (ProviderSim, String) {
    let sim = ProviderSim::datil("dt-key").await;
    let credentials = format!(
        "api_key_file = \"{}\"",
        secret_file(dir, "dt.key", "dt-key")
    );
    let section = source("dt", "datil", &sim, &credentials, schedule);
    (sim, section)
}

/// A relay with `sections`, an `erp` subscription to invoices and an
/// `alerts` one to the reconcile events.
async fn relay_with(sections: &str, erp: &Target, alerts: &Target) -> TestRelay {
    let extra = format!(
        "{sections}{}{}",
        subscription("erp", &erp.url(), ""),
        subscription("alerts", &alerts.url(), "events = [\"relay.reconcile.*\"]"),
    );
    TestRelay::start(&extra).await
}

pub async fn post_webhook(relay: &TestRelay, source: &str, body: Vec<u8>) -> Value {
    let (status, json) = relay
        .post(&format!("/hooks/{source}/{HOOK_TOKEN}"), body)
        .await;
    assert_eq!(status, 200, "{json}");
    json
}

fn header<'a>(request: &'a Received, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn events_of(alerts: &Target, event_type: &str) -> Vec<Value> {
    alerts
        .received()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter(|body| body["type"] == event_type)
        .collect()
}

/// The checks recorded on an invoice.
pub async fn checks(relay: &TestRelay, source: &str, subject: &str) -> Vec<CheckOutcome> {
    let spool = &relay.relay().spool;
    spool
        .checks(source, subject)
        .await
        .unwrap()
        .into_iter()
        .map(|check| check.outcome)
        .collect()
}

/// The checks recorded on an invoice once there are `count` (or all there
/// are after [`WAIT`]): a check is recorded after the notification it
/// made is stored, so it can trail that notification's delivery.
async fn checks_once(
    relay: &TestRelay,
    source: &str,
    subject: &str,
    count: usize,
) -> Vec<CheckOutcome> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = checks(relay, source, subject).await;
        if found.len() >= count || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The whole path for one provider: the pending webhook delivered, the
/// invoice stuck, checked once, the provider's accepted answer stored and
/// delivered once with its origin and a valid signature, byte for byte;
/// then the provider's own late webhook of that state: a resend on the
/// reconciled notification's timeline entry, no second delivery.
async fn reconciled_once(source: &str, sim: ProviderSim, section: String, key: &str) {
    let (erp, alerts) = (Target::start(vec![]).await, Target::start(vec![]).await);
    sim.set(key, InvoiceState::Accepted);
    let relay = relay_with(&section, &erp, &alerts).await;
    post_webhook(&relay, source, sim.webhook(key, InvoiceState::Pending)).await;

    let delivered = erp.wait_for(2, WAIT).await;
    let reconciled = &delivered[1];
    assert_eq!(header(reconciled, "x-relay-origin"), "reconcile");
    assert_eq!(header(reconciled, "x-relay-status"), "accepted");
    assert_eq!(header(reconciled, "x-relay-subject"), key);
    assert_eq!(
        header(&delivered[0], "x-relay-origin"),
        "",
        "the webhook's own"
    );
    verify_with_standardwebhooks(reconciled);
    let asked = sim.requests();
    assert_eq!(asked.len(), 1, "one question: {asked:?}");
    let (status, answer) = asked[0].answer.clone().expect("answered");
    assert_eq!(status, 200);
    assert_eq!(
        reconciled.body, answer,
        "the provider's answer, byte for byte"
    );

    let spool = &relay.relay().spool;
    let invoice = spool.invoice_now(source, key).await.unwrap().unwrap();
    assert_eq!(invoice.status.as_str(), "accepted");
    let recorded = checks_once(&relay, source, key, 1).await;
    assert!(
        matches!(
            recorded.as_slice(),
            [CheckOutcome::Final { stored: true, .. }]
        ),
        "{recorded:?}"
    );

    // The provider's own webhook of the same state, late.
    post_webhook(&relay, source, sim.webhook(key, InvoiceState::Accepted)).await;
    let (invoice, timeline) = spool.invoice(source, key).await.unwrap().unwrap();
    assert_eq!(invoice.status.as_str(), "accepted");
    assert_eq!(
        timeline.len(),
        2,
        "pending and reconciled only: {timeline:?}"
    );
    assert_eq!(
        timeline[1].resends, 1,
        "the late webhook counted as a resend"
    );
    // Every delivery of the invoice ended: nothing more goes to erp.
    for entry in &timeline {
        let deliveries = spool.deliveries_of(entry.id).await.unwrap();
        assert_eq!(deliveries.len(), 1);
    }
    assert_eq!(erp.count(), 2, "no second delivery");
    assert_eq!(sim.count(), 1, "no question after the final answer");
    assert!(events_of(&alerts, "relay.reconcile.failing").is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_nubefact_boleta_is_reconciled_to_accepted_and_delivered_once() {
    let secrets = tempfile::tempdir().unwrap();
    let (sim, section) =
        nubefact(secrets.path(), "nf-token", "nf-token", "every = [\"50ms\"]").await;
    reconciled_once("nf", sim, section, "BBB1-105").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_tusfacturas_invoice_is_reconciled_to_emitido_and_delivered_once() {
    let secrets = tempfile::tempdir().unwrap();
    let (sim, section) = tusfacturas(secrets.path(), "every = [\"50ms\"]").await;
    reconciled_once("tf", sim, section, "17032").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_datil_invoice_is_reconciled_to_autorizado_and_delivered_once() {
    let secrets = tempfile::tempdir().unwrap();
    let (sim, section) = datil(secrets.path(), "every = [\"50ms\"]").await;
    reconciled_once("dt", sim, section, "7a8b9c0d-1e2f-4a5b-8c6d-7e8f9a0b1c2d").await;
}

/// Wrong credentials: every answer a refusal, never a notification. The
/// source is told failing once, and with three invoices stuck it asks no
/// more than its back-off allows: one request, then one per step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_told_once_and_the_source_rests_along_its_backoff() {
    let secrets = tempfile::tempdir().unwrap();
    let (sim, section) = nubefact(
        secrets.path(),
        "nf-token",
        "not-the-token",
        "every = [\"50ms\"]\nfailure_backoff = [\"800ms\", \"1600ms\"]",
    )
    .await;
    let (erp, alerts) = (Target::start(vec![]).await, Target::start(vec![]).await);
    let relay = relay_with(&section, &erp, &alerts).await;
    for numero in 1..=3 {
        let key = format!("BBB1-{numero}");
        sim.set(&key, InvoiceState::Accepted);
        post_webhook(&relay, "nf", sim.webhook(&key, InvoiceState::Pending)).await;
    }
    let first = sim.wait_requests(1, WAIT).await;
    let started = tokio::time::Instant::now();
    assert_eq!(first[0].answer.as_ref().map(|a| a.0), Some(401));
    let failing = alerts.wait_for(1, WAIT).await;
    let event: Value = serde_json::from_slice(&failing[0].body).unwrap();
    assert_eq!(event["type"], "relay.reconcile.failing", "{event}");
    assert_eq!(event["source"], "nf");
    assert_eq!(event["kind"], "unauthorized");
    sim.wait_requests(2, WAIT).await;
    let second_after = started.elapsed();
    sim.wait_requests(3, WAIT).await;
    let third_after = started.elapsed();
    assert!(
        second_after >= Duration::from_millis(700),
        "{second_after:?}"
    );
    assert!(
        third_after >= second_after + Duration::from_millis(1400),
        "{second_after:?} then {third_after:?}"
    );
    assert_eq!(
        events_of(&alerts, "relay.reconcile.failing").len(),
        1,
        "told once"
    );
    // Each refusal recorded on the invoice asked, with the provider's answer.
    let key = first[0]
        .key
        .clone()
        .expect("the simulator read the invoice");
    let recorded = checks_once(&relay, "nf", &key, 1).await;
    let Some(CheckOutcome::Failed {
        kind,
        http_status,
        answer,
        ..
    }) = recorded.first()
    else {
        panic!("{recorded:?}")
    };
    assert_eq!((kind.as_str(), *http_status), ("unauthorized", Some(401)));
    assert!(answer.as_ref().is_some_and(|a| !a.is_empty()));
    assert_eq!(
        erp.count(),
        3,
        "the three webhooks, no reconciled notification"
    );
    relay.stop().await;
}

/// A provider that keeps saying pending: each answer recorded, asked again
/// per `every`, then given up once `give_up_after` has passed, and no
/// question after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_answer_is_recorded_retried_per_every_then_given_up() {
    let secrets = tempfile::tempdir().unwrap();
    let (sim, section) = tusfacturas(
        secrets.path(),
        "every = [\"100ms\", \"200ms\"]\ngive_up_after = \"1500ms\"",
    )
    .await;
    let (erp, alerts) = (Target::start(vec![]).await, Target::start(vec![]).await);
    sim.set("555", InvoiceState::Pending);
    let relay = relay_with(&section, &erp, &alerts).await;
    post_webhook(&relay, "tf", sim.webhook("555", InvoiceState::Pending)).await;
    let recorded = while_progressing("the invoice given up", async || {
        let recorded = checks(&relay, "tf", "555").await;
        match recorded.last() {
            Some(CheckOutcome::GaveUp) => Ok(recorded),
            _ => Err(recorded.len() as u64),
        }
    })
    .await;
    let (pending, rest) = recorded.split_at(recorded.len() - 1);
    assert!(pending.len() >= 3, "asked again per every: {recorded:?}");
    assert!(pending
        .iter()
        .all(|c| matches!(c, CheckOutcome::Pending { said } if !said.is_empty())));
    assert_eq!(rest, [CheckOutcome::GaveUp]);
    // 100 ms, then 200 ms repeating, over about 1.45 s: at most 9 questions.
    assert!(sim.count() <= 9, "{} questions", sim.count());
    assert_eq!(sim.count(), pending.len());
    let spool = &relay.relay().spool;
    let invoice = spool.invoice_now("tf", "555").await.unwrap().unwrap();
    assert_eq!(invoice.status.as_str(), "queued", "still stuck");
    assert_eq!(erp.count(), 1);
    relay.stop().await;
}

fn told<'a>(events: &'a [Value], event_type: &str, subject: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == event_type && e["subject"] == subject)
        .collect()
}

fn bodies(target: &Target) -> Vec<Value> {
    target
        .received()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

/// A `relay.*` subscriber hears a reconciled invoice stuck once, then
/// unstuck once by the reconciled notification; the provider's late
/// webhook of the same state tells nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciled_invoice_is_told_stuck_once_then_unstuck_once() {
    let secrets = tempfile::tempdir().unwrap();
    let (sim, section) =
        nubefact(secrets.path(), "nf-token", "nf-token", "every = [\"50ms\"]").await;
    let (erp, alerts) = (Target::start(vec![]).await, Target::start(vec![]).await);
    let extra = format!(
        "{section}{}{}",
        subscription("erp", &erp.url(), ""),
        subscription("alerts", &alerts.url(), "events = [\"relay.*\"]"),
    );
    let relay = TestRelay::start(&extra).await;
    let (key, later) = ("BBB1-7", "BBB1-8");
    sim.set(key, InvoiceState::Accepted);
    post_webhook(&relay, "nf", sim.webhook(key, InvoiceState::Pending)).await;
    let unstuck = |t: &Target| !told(&bodies(t), "relay.invoice.unstuck", key).is_empty();
    assert!(alerts.wait_until(WAIT, unstuck).await, "told unstuck");
    erp.wait_for(2, WAIT).await;
    post_webhook(&relay, "nf", sim.webhook(key, InvoiceState::Accepted)).await;
    // Another invoice told stuck: the events task looked again since.
    sim.set(later, InvoiceState::Pending);
    post_webhook(&relay, "nf", sim.webhook(later, InvoiceState::Pending)).await;
    let later_stuck = |t: &Target| !told(&bodies(t), "relay.invoice.stuck", later).is_empty();
    assert!(
        alerts.wait_until(WAIT, later_stuck).await,
        "later told stuck"
    );

    let events = bodies(&alerts);
    assert_eq!(told(&events, "relay.invoice.stuck", key).len(), 1);
    let unstuck = told(&events, "relay.invoice.unstuck", key);
    assert_eq!(unstuck.len(), 1, "{events:?}");
    assert_eq!(unstuck[0]["source"], "nf");
    assert_eq!(unstuck[0]["status"], "accepted");
    let recorded = checks_once(&relay, "nf", key, 1).await;
    let [CheckOutcome::Final { notification, .. }] = recorded.as_slice() else {
        panic!("{recorded:?}")
    };
    assert_eq!(
        unstuck[0]["notification"],
        notification.to_string(),
        "cleared by the reconciled notification"
    );
    relay.stop().await;
}

async fn post_to_process(
    client: &reqwest::Client,
    relay: &RelayProcess,
    source: &str,
    body: Vec<u8>,
) {
    let url = format!(
        "https://localhost:{}/hooks/{source}/{HOOK_TOKEN}",
        relay.addr.port()
    );
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the webhook reaches the relay");
    assert_eq!(response.status(), 200);
}

/// The built binary, SIGKILLed after a failed check (wrong token) and
/// started again: the source's back-off goes on from its stored checks
/// (no request at start, the next one when the back-off says), and an
/// invoice given up before is not asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_continues_the_backoff_and_asks_no_given_up_invoice() {
    const BACKOFF: Duration = Duration::from_secs(8);
    crate::helpers::init();
    let dir = tempfile::tempdir().unwrap();
    let sim = ProviderSim::nubefact("nf-token", HeaderForm::TokenQuoted).await;
    let wrong = secret_file(dir.path(), "wrong.token", "not-the-token");
    let right = secret_file(dir.path(), "right.token", "nf-token");
    let sections = format!(
        "{}{}",
        source(
            "nf",
            "nubefact",
            &sim,
            &format!("token_file = \"{wrong}\""),
            &format!(
                "every = [\"50ms\"]\nfailure_backoff = [\"{}s\"]",
                BACKOFF.as_secs()
            ),
        ),
        source(
            "nf2",
            "nubefact",
            &sim,
            &format!("token_file = \"{right}\""),
            "every = [\"100ms\"]\ngive_up_after = \"1s\"",
        ),
    );
    let config = write_config(dir.path(), &sections);
    let relay = RelayProcess::spawn(&config).await;
    let client = provider_client(&dir.path().join("tls/self-signed.crt"));
    let (refused, given_up) = ("BBB1-1", "BBB1-2");
    sim.set(given_up, InvoiceState::Pending);
    post_to_process(
        &client,
        &relay,
        "nf",
        sim.webhook(refused, InvoiceState::Pending),
    )
    .await;
    post_to_process(
        &client,
        &relay,
        "nf2",
        sim.webhook(given_up, InvoiceState::Pending),
    )
    .await;
    eventually(WAIT, "the first refused check", || {
        sim.count_for(refused) >= 1
    })
    .await;
    let first = tokio::time::Instant::now();
    // Given up by the same task, after the refused check was recorded.
    eventually(WAIT, "nf2's invoice given up", || {
        !relay.logged("provider still says pending").is_empty()
    })
    .await;
    assert_eq!(sim.count_for(refused), 1, "resting");
    let asked_before = sim.count_for(given_up);
    assert!(asked_before >= 2, "{asked_before}");

    relay.sigkill().await;
    let relay = RelayProcess::spawn(&config).await;
    let restarted = first.elapsed();
    assert!(
        restarted + Duration::from_secs(2) < BACKOFF - Duration::from_secs(1),
        "the restart took {restarted:?}: too late to see a burst"
    );
    // At least a second of looks after the restart, inside the back-off:
    // one uninterrupted back-off allows no request there.
    tokio::time::sleep_until(first + BACKOFF - Duration::from_secs(1)).await;
    assert_eq!(sim.count_for(refused), 1, "no request at the restart");
    eventually(WAIT, "the next refused check", || {
        sim.count_for(refused) >= 2
    })
    .await;
    let second = first.elapsed();
    assert!(
        second >= BACKOFF - Duration::from_millis(100),
        "asked again {second:?} after the first, its back-off {BACKOFF:?}"
    );
    assert!(!relay.logged("its back-off goes on").is_empty());
    assert_eq!(sim.count_for(given_up), asked_before, "given up stays so");
    assert_eq!(sim.count_for(refused), 2);
    relay.sigterm().await;
}
