//! Relays on a JetStream spool (issue 19): when NATS is gone, providers
//! get 503 with `Retry-After` and `/readyz` says why, and all of it comes
//! back by itself; two relays on one spool share their changes (an API
//! subscription, a pause, a rotated secret made through one apply on the
//! other).
//!
//! The first test runs a nats-server of its own (skipped with a notice
//! where there is none, required in CI); the second runs on the shared
//! one of a JetStream pass (`RELAY_TEST_BACKEND=jetstream`).

use std::time::Duration;

use serde_json::{json, Value};
use standardwebhooks::Webhook;
use webhook_relay::spool::NatsCluster;

use crate::admin::{post_tus, Admin, ADMIN_TOKEN};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);

/// Loopback targets allowed for API subscriptions; one admin.
fn admin_section() -> String {
    format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\nallowed_targets = [\"127.0.0.1\"]\ntokens = [{{ name = \"ops\", token = \"{ADMIN_TOKEN}\", role = \"admin\" }}]\n"
    )
}

/// A tusfacturas notification's body for `hook`.
fn tus_body(hook: &str) -> String {
    tusfacturas(hook, "emitido", 1).replace("\"17032\"", &format!("\"{hook}\""))
}

/// Posts `hook` to `relay`: the status, its `Retry-After`, the answer.
async fn post_hook(relay: &TestRelay, hook: &str) -> (u16, Option<String>, Value) {
    let response = relay
        .client
        .post(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
        .header("content-type", "application/json")
        .body(tus_body(hook))
        .send()
        .await
        .expect("the relay answers");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = answer(response).await;
    (status, retry_after, body)
}

/// `/readyz` until `done` holds (bounded); its last answer.
async fn readyz_until(admin: &Admin, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = admin.call("GET", "/readyz", None).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn without_nats_providers_get_503_with_retry_after_and_it_all_comes_back_by_itself() {
    let test = "without_nats_providers_get_503_with_retry_after_and_it_all_comes_back_by_itself";
    let Some(binary) = nats_server_or_skip(test) else {
        return;
    };
    init();
    let mut nats = NatsCluster::start(&binary, 1).await;
    let target = Target::start(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}{}",
        base_config_on_nats(dir.path(), &nats).replace(
            "\n[spool.jetstream]\n",
            "\n[spool.jetstream]\nstore_timeout = \"1s\"\nrequest_timeout = \"1s\"\n"
        ),
        subscription("erp", &target.url(), ""),
        admin_section()
    );
    let relay = TestRelay::start_again(dir, |_| text).await;
    let admin = Admin::of(&relay);
    let (status, _, before) = post_hook(&relay, "before").await;
    assert_eq!(status, 200, "{before}");
    target.wait_for(1, WAIT).await;

    nats.kill(0);
    // Each try is refused, never acknowledged: 503 and when to come back.
    let (status, retry_after, refused) = post_hook(&relay, "during").await;
    assert_eq!(status, 503, "{refused}");
    assert!(retry_after.is_some(), "Retry-After on a 503");
    assert_eq!(refused["error"], "spool_unavailable", "{refused}");
    let (_, ready) = readyz_until(&admin, |status, _| status == 503).await;
    let reasons = ready["reasons"].to_string();
    assert!(reasons.contains("JetStream"), "{ready}");

    nats.restart(0);
    // The provider's next try lands by itself: no restart of the relay.
    let deadline = tokio::time::Instant::now() + WAIT;
    let during = loop {
        let (status, _, answer) = post_hook(&relay, "during").await;
        if status == 200 {
            break answer["id"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 503, "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    readyz_until(&admin, |status, _| status == 200).await;
    // A resend of what was acknowledged is the same notification.
    let (status, _, again) = post_hook(&relay, "during").await;
    assert_eq!((status, again["id"].as_str()), (200, Some(during.as_str())));

    let (status, _, after) = post_hook(&relay, "after").await;
    assert_eq!(status, 200, "{after}");
    let received = target.wait_for(3, WAIT).await;
    let mut ids: Vec<String> = received
        .iter()
        .map(|r| header(r, "webhook-id").to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), received.len(), "each notification sent once");
    assert!(ids.contains(&during), "{ids:?}");
    let health = admin.get("/api/stats").await;
    assert_eq!(health["spool"]["writable"], true, "{health}");
    relay.stop().await;
}

/// Creates `erp` through `admin`; its secret.
async fn create_erp(admin: &Admin, url: &str) -> String {
    let request = json!({ "name": "erp", "url": url, "schedule": ["50ms"], "jitter": 0.0 });
    let response = admin
        .client
        .post(format!("{}/api/subscriptions", admin.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await
        .expect("the admin listener answers");
    let (status, created) = answer(response).await;
    assert_eq!(status, 201, "{created}");
    created["secret"].as_str().unwrap().to_owned()
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received.headers[name].to_str().unwrap()
}

fn verifies(secret: &str, request: &Received) -> bool {
    Webhook::new(secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .is_ok()
}

#[tokio::test]
async fn a_subscription_a_pause_and_a_secret_changed_through_one_relay_apply_on_the_other() {
    if !on_jetstream() {
        eprintln!("two relays on one spool: a JetStream pass only (RELAY_TEST_BACKEND=jetstream)");
        return;
    }
    let target = Target::start(vec![]).await;
    let with_admin = |base: String| format!("{base}{}", admin_section());
    let first = TestRelay::start_edited(with_admin).await;
    let second = TestRelay::start_sharing(&first, with_admin).await;
    let (admin_1, admin_2) = (Admin::of(&first), Admin::of(&second));

    // Made and paused through the first relay...
    let secret = create_erp(&admin_1, &target.url()).await;
    let (status, paused) = admin_1
        .call("POST", "/api/subscriptions/erp/pause", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{paused}");
    admin_2
        .wait_for(
            "/api/subscriptions",
            "erp paused on the second relay",
            |list| {
                list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"] == "erp" && s["paused"] == true)
            },
        )
        .await;
    // ...with the first one gone, the second fans out to it and holds it.
    let first_dir = first.stop().await;
    let held = post_tus(&second, "s-1", "0301-0001").await;
    admin_2
        .wait_for("/api/stats", "erp's delivery waiting", |stats| {
            stats["subscriptions"]["erp"]["waiting"] == 1
        })
        .await;
    assert_eq!(target.count(), 0, "paused through the first relay");
    let (status, resumed) = admin_2
        .call("POST", "/api/subscriptions/erp/resume", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{resumed}");
    let received = target.wait_for(1, WAIT).await;
    assert_eq!(header(&received[0], "webhook-id"), held);
    assert!(verifies(&secret, &received[0]), "signed with erp's secret");

    // A secret rotated through the second relay signs on the first.
    let first = TestRelay::start_again(first_dir, with_admin).await;
    let (status, rotated) = admin_2
        .call(
            "POST",
            "/api/subscriptions/erp/rotate-secret?overlap=0s",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let rotated = rotated["secret"].as_str().unwrap().to_owned();
    second.stop().await;
    let admin_1 = Admin::of(&first);
    admin_1
        .wait_for("/api/stats", "the first relay caught up", |stats| {
            stats["subscriptions"]["erp"]["delivered"] == 1
        })
        .await;
    let after = post_tus(&first, "s-2", "0301-0002").await;
    let received = target.wait_for(2, WAIT).await;
    assert_eq!(header(&received[1], "webhook-id"), after);
    assert!(
        verifies(&rotated, &received[1]),
        "signed with the new secret"
    );
    assert!(!verifies(&secret, &received[1]), "the old one is over");
    first.stop().await;
}
