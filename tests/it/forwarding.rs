//! Forwarding: subscriptions, the retry schedule against a scripted target,
//! dead letters, replay, restarts, and signatures checked by an independent
//! Standard Webhooks implementation.

use std::time::Duration;

use standardwebhooks::{Webhook, WebhookError};
use webhook_relay::delivery::{Outcome, State};
use webhook_relay::signing::SigningKey;
use webhook_relay::spool::NotificationId;

use crate::helpers::*;

/// The longest an awaited condition may take: generous, since a loaded
/// machine is slow and a condition met returns at once.
const WAIT: Duration = Duration::from_secs(30);

async fn post_tus(relay: &TestRelay, hook: &str, evento: &str) -> NotificationId {
    let (status, json) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            tusfacturas(hook, evento, 1),
        )
        .await;
    assert_eq!(status, 200, "{json}");
    NotificationId::parse(json["id"].as_str().unwrap()).unwrap()
}

/// Waits until the delivery of `id` to `subscription` is final and returns it.
async fn final_delivery(
    relay: &TestRelay,
    id: NotificationId,
    subscription: &str,
) -> webhook_relay::delivery::Delivery {
    let spool = &relay.relay().spool;
    let mut found = None;
    eventually_async(WAIT, "the delivery to end", async || {
        found = spool
            .deliveries_of(id)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.subscription == subscription && d.is_final());
        found.is_some()
    })
    .await;
    found.unwrap()
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn failures_are_retried_at_the_configured_spacing_until_success() {
    let target = Target::start(vec![
        Reply::Status(500),
        Reply::Status(410),
        Reply::Status(200),
    ])
    .await;
    let relay = TestRelay::start(&subscription("erp", &target.url(), "")).await;
    let id = post_tus(&relay, "h1", "emitido").await;
    let got = target.wait_for(3, WAIT).await;

    let attempts: Vec<&str> = got.iter().map(|r| header(r, "x-relay-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(50) && gaps[0] < Duration::from_millis(400),
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(100) && gaps[1] < Duration::from_millis(450),
        "{gaps:?}"
    );
    assert!(
        got.iter()
            .all(|r| header(r, "webhook-id") == id.to_string()),
        "webhook-id is stable"
    );

    let delivery = final_delivery(&relay, id, "erp").await;
    assert!(matches!(delivery.state, State::Delivered { .. }));
    let codes: Vec<Outcome> = delivery
        .attempts
        .iter()
        .map(|a| a.outcome.clone())
        .collect();
    let status = |code| Outcome::Status {
        code,
        retry_after_ms: None,
    };
    assert_eq!(codes, [status(500), status(410), status(200)]);
    assert_eq!(target.count(), 3, "nothing more after success");
    relay.stop().await;
}

#[tokio::test]
async fn the_last_failure_makes_the_delivery_dead_and_a_replay_revives_it() {
    let script = vec![Reply::Status(503); 4];
    let target = Target::start(script).await;
    let relay = TestRelay::start(&subscription("erp", &target.url(), "")).await;
    let id = post_tus(&relay, "h-dead", "emitido").await;
    let delivery = final_delivery(&relay, id, "erp").await;
    assert!(
        matches!(delivery.state, State::Dead { .. }),
        "{:?}",
        delivery.state
    );
    assert_eq!(
        delivery.attempts.len(),
        4,
        "1 attempt + one per wait of the schedule"
    );
    assert_eq!(target.count(), 4);
    assert_eq!(
        relay.relay().spool.next_due_ms("erp").await.unwrap(),
        None,
        "a dead delivery is not due"
    );

    // The script is used up: the target now answers 200.
    let now = webhook_relay::clock::Clock::system().now_ms();
    assert!(relay.relay().spool.replay(id, "erp", now).await.unwrap());
    target.wait_for(5, WAIT).await;
    let delivery = final_delivery(&relay, id, "erp").await;
    assert!(
        matches!(delivery.state, State::Delivered { .. }),
        "{:?}",
        delivery.state
    );
    assert_eq!(delivery.attempts.len(), 5, "history kept across the replay");
    relay.stop().await;
}

#[tokio::test]
async fn timeouts_refusals_resets_and_retry_after_are_recorded_as_such() {
    let target = Target::start(vec![
        Reply::Hang(Duration::from_secs(2)),
        Reply::CloseMidResponse,
        Reply::StatusRetryAfter(429, 1),
        Reply::Status(200),
    ])
    .await;
    // Its first answer is a 429 asking for 5 s where the schedule says 50 ms.
    let limited = Target::start(vec![Reply::StatusRetryAfter(429, 5)]).await;
    let refused = format!("http://127.0.0.1:{}/hook", closed_port().await);
    let subs = format!(
        "{}{}{}",
        subscription("erp", &target.url(), ""),
        subscription("down", &refused, ""),
        subscription("limited", &limited.url(), "")
    );
    let relay = TestRelay::start(&subs).await;
    let id = post_tus(&relay, "h-kinds", "emitido").await;

    let delivery = final_delivery(&relay, id, "erp").await;
    let kinds: Vec<Outcome> = delivery
        .attempts
        .iter()
        .map(|a| a.outcome.clone())
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    assert_eq!(kinds[0], Outcome::Timeout);
    assert!(matches!(kinds[1], Outcome::Io { .. }), "{:?}", kinds[1]);
    assert_eq!(
        kinds[2],
        Outcome::Status {
            code: 429,
            retry_after_ms: Some(1000)
        }
    );
    assert_eq!(
        kinds[3],
        Outcome::Status {
            code: 200,
            retry_after_ms: None
        }
    );
    let got = target.received();
    // Retry-After: 1 s is later than the 150 ms wait, so the wait is capped at the longest (150 ms).
    assert!(
        got[3].at - got[2].at >= Duration::from_millis(150),
        "{:?}",
        got[3].at - got[2].at
    );
    assert!(
        delivery.attempts[0].duration_ms >= 500,
        "first attempt runs to timeout_first"
    );

    // Retry-After beats the schedule's 50 ms, capped at its longest wait
    // (150 ms, give or take the clock's whole milliseconds), far below 5 s.
    let got = limited.wait_for(2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(145) && gap < Duration::from_secs(3),
        "Retry-After honoured up to the cap: {gap:?}"
    );

    let down = final_delivery(&relay, id, "down").await;
    assert!(matches!(down.state, State::Dead { .. }));
    assert!(
        down.attempts.iter().all(|a| a.outcome == Outcome::Connect),
        "{:?}",
        down.attempts
    );
    relay.stop().await;
}

#[tokio::test]
async fn subscriptions_are_independent_and_filters_skip_what_they_should() {
    let ok = Target::start(vec![]).await;
    let flaky = Target::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let issued_only = Target::start(vec![]).await;
    let datil_only = Target::start(vec![]).await;
    let subs = [
        subscription("ok", &ok.url(), ""),
        subscription("flaky", &flaky.url(), ""),
        subscription("issued", &issued_only.url(), "events = [\"*.emitido\"]"),
        subscription("datil", &datil_only.url(), "sources = [\"datil\"]"),
    ]
    .concat();
    let relay = TestRelay::start(&subs).await;
    let queued = post_tus(&relay, "h-f", "encolado").await;
    let issued = post_tus(&relay, "h-f", "emitido").await;
    for id in [queued, issued] {
        assert!(matches!(
            final_delivery(&relay, id, "ok").await.state,
            State::Delivered { .. }
        ));
        let flaky_delivery = final_delivery(&relay, id, "flaky").await;
        assert!(matches!(flaky_delivery.state, State::Delivered { .. }));
    }
    assert_eq!(ok.count(), 2, "one attempt each");
    assert_eq!(flaky.count(), 4, "two failures then one success each");
    let issued_got = issued_only.wait_for(1, WAIT).await;
    assert_eq!(
        header(&issued_got[0], "x-relay-event"),
        "facturacion.emitido"
    );
    let names = async |id| -> Vec<String> {
        let mut names: Vec<String> = relay
            .relay()
            .spool
            .deliveries_of(id)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.subscription)
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(queued).await,
        ["flaky", "ok"],
        "filters decide at spool time"
    );
    assert_eq!(names(issued).await, ["flaky", "issued", "ok"]);
    assert_eq!(datil_only.count(), 0);
    assert_eq!(issued_only.count(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn a_target_receives_the_original_body_signed_with_relay_headers() {
    let target = Target::start(vec![]).await;
    let relay = TestRelay::start(&subscription(
        "erp",
        &target.url(),
        "headers = { x-tenant = \"acme\" }",
    ))
    .await;
    let body = tusfacturas("h-sig", "emitido", 1).replace(": ", ":   ");
    let (_, json) = relay
        .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), body.clone())
        .await;
    let got = target.wait_for(1, WAIT).await;
    let request = &got[0];
    assert_eq!(request.body.as_ref(), body.as_bytes(), "byte for byte");
    assert_eq!(header(request, "webhook-id"), json["id"].as_str().unwrap());
    assert_eq!(header(request, "x-relay-source"), "tusfacturas");
    assert_eq!(header(request, "x-relay-event"), "facturacion.emitido");
    assert_eq!(header(request, "x-relay-subject"), "17032");
    assert_eq!(header(request, "x-relay-attempt"), "1");
    assert_eq!(header(request, "x-tenant"), "acme");
    assert_eq!(header(request, "content-type"), "application/json");
    assert!(header(request, "x-relay-received-at").ends_with('Z'));
    let timestamp: i64 = header(request, "webhook-timestamp").parse().unwrap();
    let key = SigningKey::from_secret(SECRET).unwrap();
    assert!(key.verify(
        header(request, "webhook-id"),
        timestamp,
        &request.body,
        header(request, "webhook-signature")
    ));
    verify_with_standardwebhooks(request);
    relay.stop().await;
}

/// Checks the signature with the Standard Webhooks project's own library
/// (the `standardwebhooks` crate): the headers and body as received verify,
/// and the same headers over a tampered body do not.
pub fn verify_with_standardwebhooks(request: &Received) {
    let webhook = Webhook::new(SECRET).expect("a valid whsec_ secret");
    if let Err(error) = webhook.verify(&request.body, &request.headers) {
        panic!("standardwebhooks rejected the signature: {error}");
    }
    let mut tampered = request.body.to_vec();
    let last = tampered
        .iter()
        .rposition(u8::is_ascii_digit)
        .expect("a digit");
    tampered[last] = b'0' + (tampered[last] - b'0' + 1) % 10;
    assert!(
        matches!(
            webhook.verify(&tampered, &request.headers),
            Err(WebhookError::InvalidSignature)
        ),
        "a tampered body must fail verification"
    );
}

#[tokio::test]
async fn waiting_deliveries_resume_after_a_restart() {
    let target = Target::start(vec![]).await;
    let refused = format!("http://127.0.0.1:{}/hook", closed_port().await);
    // First run: the target is down and the schedule long, so the delivery waits.
    let slow = |url: &str| {
        format!("\n[[subscriptions]]\nname = \"erp\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nschedule = [\"1s\", \"1h\"]\njitter = 0.0\n")
    };
    let relay = TestRelay::start(&slow(&refused)).await;
    let id = post_tus(&relay, "h-restart", "emitido").await;
    let spool = relay.relay().spool.clone();
    eventually_async(WAIT, "the first attempt to fail", async || {
        spool.deliveries_of(id).await.unwrap()[0].attempts.len() == 1
    })
    .await;
    drop(spool);
    let dir = relay.stop().await;

    // Second run on the same spool, target up: the waiting delivery goes out.
    let text = format!("{}{}", base_config(dir.path()), slow(&target.url()));
    let config = webhook_relay::config::Config::parse(&text).unwrap();
    let relay = webhook_relay::app::Relay::start(config).await.unwrap();
    let got = target.wait_for(1, WAIT).await;
    assert_eq!(header(&got[0], "webhook-id"), id.to_string());
    assert_eq!(header(&got[0], "x-relay-attempt"), "2");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn the_cli_replays_a_dead_delivery_of_a_stopped_relay() {
    let target = Target::start(vec![Reply::Status(503); 4]).await;
    let subs = subscription("erp", &target.url(), "");
    let relay = TestRelay::start(&subs).await;
    let id = post_tus(&relay, "h-cli-replay", "emitido").await;
    let delivery = final_delivery(&relay, id, "erp").await;
    assert!(matches!(delivery.state, State::Dead { .. }));
    let dir = relay.stop().await;
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, format!("{}{subs}", base_config(dir.path()))).unwrap();

    let cli = |args: &[&str]| relay_cli(&["spool", "replay"], &config, args);
    let unknown = cli(&["01ARZ3NDEKTSV4RRFFQ69G5FAV"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no notification"));
    let replayed = cli(&[&id.to_string()]);
    assert!(replayed.status.success(), "{replayed:?}");
    let line: serde_json::Value = serde_json::from_slice(&replayed.stdout).unwrap();
    assert_eq!(line["subscription"], "erp");
    assert_eq!(line["replayed"], true);
    let again = cli(&[&id.to_string()]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "nothing dead is left to replay"
    );

    // The next start sends it; the script is used up, so the target says 200.
    let text = format!("{}{subs}", base_config(dir.path()));
    let relay =
        webhook_relay::app::Relay::start(webhook_relay::config::Config::parse(&text).unwrap())
            .await
            .unwrap();
    let got = target.wait_for(5, WAIT).await;
    assert_eq!(header(&got[4], "webhook-id"), id.to_string());
    assert_eq!(header(&got[4], "x-relay-attempt"), "5");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_graceful_stop_lets_attempts_in_flight_finish_within_the_grace() {
    // "quick" answers 200 after 600 ms, inside the 1.5 s grace; "stuck" would
    // answer after 30 s, so the stop waits out the grace, then cuts it off
    // and it stays due.
    let quick = Target::start(vec![Reply::Hang(Duration::from_millis(600))]).await;
    let stuck = Target::start(vec![Reply::Hang(Duration::from_secs(30))]).await;
    let long_timeout =
        |sub: String| sub.replace("timeout_first = \"500ms\"", "timeout_first = \"60s\"");
    let subs = [
        long_timeout(subscription("quick", &quick.url(), "")),
        long_timeout(subscription("stuck", &stuck.url(), "")),
    ]
    .concat();
    assert_eq!(subs.matches("\"60s\"").count(), 2, "{subs}");
    let relay = TestRelay::start_edited(|base| {
        format!(
            "{}{subs}",
            base.replace("shutdown_grace = \"2s\"", "shutdown_grace = \"1500ms\"")
        )
    })
    .await;
    let id = post_tus(&relay, "h-grace", "emitido").await;
    quick.wait_for(1, WAIT).await;
    stuck.wait_for(1, WAIT).await;

    // Both attempts are in flight now: "quick" hangs for 600 ms from here.
    let stop_began_ms = webhook_relay::clock::Clock::system().now_ms();
    let stopping = tokio::time::Instant::now();
    let spool_path = relay.relay().spool.config().sled.path.clone();
    let dir = relay.stop().await;
    let took = stopping.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(8),
        "the stop waits out the grace for the stuck attempt, and no longer: {took:?}"
    );

    let config = webhook_relay::config::Config::parse(&base_config(dir.path())).unwrap();
    assert_eq!(config.spool.sled.path, spool_path);
    let spool = webhook_relay::spool::Spool::open(
        &config.spool,
        webhook_relay::spool::Routes::from_config(&config),
        webhook_relay::clock::Clock::system(),
    )
    .await
    .unwrap();
    let deliveries = spool.deliveries_of(id).await.unwrap();
    let quick_delivery = deliveries
        .iter()
        .find(|d| d.subscription == "quick")
        .unwrap();
    assert!(
        matches!(quick_delivery.state, State::Delivered { .. }),
        "finished during the stop and recorded: {:?}",
        quick_delivery.state
    );
    let attempt = &quick_delivery.attempts[..];
    assert_eq!(attempt.len(), 1);
    let finished_ms = attempt[0].started_ms + attempt[0].duration_ms as i64;
    assert!(
        finished_ms >= stop_began_ms,
        "the attempt ended after the stop began ({finished_ms} < {stop_began_ms})"
    );
    assert_eq!(spool.next_due_ms("quick").await.unwrap(), None);
    // The cut-off attempt is not recorded as an outcome; it is still due,
    // so the next start makes it again (at-least-once).
    let stuck_delivery = deliveries
        .iter()
        .find(|d| d.subscription == "stuck")
        .unwrap();
    assert!(!stuck_delivery.is_final(), "{:?}", stuck_delivery.state);
    assert!(
        stuck_delivery.attempts.is_empty(),
        "{:?}",
        stuck_delivery.attempts
    );
    assert!(spool.next_due_ms("stuck").await.unwrap().is_some());
    spool.close().await.unwrap();
}

#[tokio::test]
async fn an_idle_forwarder_sends_a_new_notification_within_100_ms() {
    let target = Target::start(vec![]).await;
    let relay = TestRelay::start(&subscription("erp", &target.url(), "")).await;
    // Warm up (TLS session, the target's connection); each time the outcome
    // is on record the forwarder has nothing left and waits for work.
    let warm = post_tus(&relay, "h-warm", "emitido").await;
    final_delivery(&relay, warm, "erp").await;
    let mut worst = Duration::ZERO;
    for n in 0..5 {
        let id = post_tus(&relay, &format!("h-idle-{n}"), "emitido").await;
        // From the 200 (stored, and the store's wake-up sent), so a slow
        // fdatasync on a loaded machine is not counted against the forwarder.
        let stored = tokio::time::Instant::now();
        let arrived = target.wait_for(n + 2, WAIT).await;
        let latency = arrived.last().unwrap().at.saturating_duration_since(stored);
        worst = worst.max(latency);
        final_delivery(&relay, id, "erp").await;
    }
    eprintln!("idle forwarder: worst stored-to-target latency {worst:?}");
    assert!(
        worst < Duration::from_millis(100),
        "a store did not wake the forwarder: {worst:?} from the 200 to the target"
    );
    relay.stop().await;
}

#[tokio::test]
async fn the_cli_gives_a_removed_subscription_s_deliveries_to_another() {
    let closed = format!("http://127.0.0.1:{}/hook", closed_port().await);
    let old = subscription("old", &closed, "");
    let relay = TestRelay::start(&old).await;
    let first = post_tus(&relay, "h-orphan-1", "emitido").await;
    let second = post_tus(&relay, "h-orphan-2", "emitido").await;
    let dir = relay.stop().await;

    // `old` is gone from the config; `billing` takes its place.
    let target = Target::start(vec![]).await;
    let billing = subscription("billing", &target.url(), "");
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, format!("{}{billing}", base_config(dir.path()))).unwrap();
    let check = relay_cli(&["spool", "check"], &config, &[]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains("deliveries wait for subscription \"old\""),
        "{report}"
    );
    let wrong = relay_cli(&["spool", "move-orphans"], &config, &["billing", "old"]);
    assert_eq!(wrong.status.code(), Some(1), "billing is no orphan");
    let moved = relay_cli(&["spool", "move-orphans"], &config, &["old", "billing"]);
    assert!(moved.status.success(), "{moved:?}");
    let line: serde_json::Value = serde_json::from_slice(&moved.stdout).unwrap();
    assert_eq!(line["moved"], 2);

    let text = format!("{}{billing}", base_config(dir.path()));
    let relay =
        webhook_relay::app::Relay::start(webhook_relay::config::Config::parse(&text).unwrap())
            .await
            .unwrap();
    let got = target.wait_for(2, WAIT).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| header(r, "webhook-id").to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![first.to_string(), second.to_string()];
    expected.sort();
    assert_eq!(ids, expected);
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_bom_body_and_a_non_ascii_subject_reach_the_target_in_a_form_it_can_take() {
    let target = Target::start(vec![]).await;
    let relay = TestRelay::start(&subscription("erp", &target.url(), "")).await;
    let json = tusfacturas("h-bom", "emitido", 1).replace("\"17032\"", "\"Factura Nº 12\"");
    let raw = format!("\u{FEFF}{json}");
    // No Content-Type, as some provider clients send.
    let response = relay
        .client
        .post(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    let (status, answer) = answer(response).await;
    assert_eq!(status, 200, "{answer}");
    let got = target.wait_for(1, WAIT).await;
    let request = &got[0];
    assert_eq!(
        request.body.as_ref(),
        json.as_bytes(),
        "sent without the BOM"
    );
    verify_with_standardwebhooks(request);
    assert_eq!(
        header(request, "x-relay-subject"),
        "UTF-8''Factura%20N%C2%BA%2012"
    );
    assert!(
        request.headers.get("content-type").is_none(),
        "no Content-Type came, none is sent"
    );
    let id = NotificationId::parse(answer["id"].as_str().unwrap()).unwrap();
    let kept = relay.relay().spool.notification(id).await.unwrap().unwrap();
    assert_eq!(
        kept.body.as_ref(),
        raw.as_bytes(),
        "the spool keeps the raw bytes"
    );
    assert_eq!(kept.meta.subject.as_deref(), Some("Factura Nº 12"));
    relay.stop().await;
}

#[tokio::test]
async fn a_latin1_body_is_forwarded_as_utf8_with_its_flag_and_kept_raw() {
    let target = Target::start(vec![]).await;
    let relay = TestRelay::start(&subscription("erp", &target.url(), "")).await;
    // external_reference "Nº 17032" and evento "ANULADO" (not in the doc),
    // in ISO-8859-1: º is 0xBA.
    let raw = b"{\"creado\":\"18/03/2022 15:58:11\",\"evento\":\"ANULADO\",\"recurso\":\"facturacion\",\"external_reference\":\"N\xba 17032\",\"intento\":\"2\",\"msg\":\"x\",\"hook_id\":\"h-latin1\"}".to_vec();
    let response = relay
        .client
        .post(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
        .header("content-type", "application/json; charset=ISO-8859-1")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    let (status, answer) = answer(response).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["flags"],
        serde_json::json!(["latin1_body", "unknown_event"])
    );
    let got = target.wait_for(1, WAIT).await;
    let request = &got[0];
    let utf8 = String::from_utf8_lossy(&raw).replace('\u{FFFD}', "º");
    assert_eq!(request.body.as_ref(), utf8.as_bytes(), "sent as UTF-8");
    assert_eq!(
        header(request, "content-type"),
        "application/json; charset=utf-8"
    );
    assert_eq!(
        header(request, "x-relay-flags"),
        "latin1_body, unknown_event"
    );
    assert_eq!(header(request, "x-relay-event"), "facturacion.anulado");
    assert_eq!(header(request, "x-relay-subject"), "UTF-8''N%C2%BA%2017032");
    verify_with_standardwebhooks(request);
    let id = NotificationId::parse(answer["id"].as_str().unwrap()).unwrap();
    let kept = relay.relay().spool.notification(id).await.unwrap().unwrap();
    assert_eq!(kept.meta.flags, ["latin1_body", "unknown_event"]);
    assert_eq!(
        kept.body.as_ref(),
        &raw[..],
        "the spool keeps the raw bytes"
    );
    relay.stop().await;
}
