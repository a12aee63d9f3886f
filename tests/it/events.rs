//! The relay's operational events under attack: a burst of thousands of
//! dead deliveries reaches an alert subscription as a few events whose
//! counts add up to every one of them (none dropped), and a subscriber's
//! `relay.*` subscription hears only of its own team's subscriptions,
//! with no target URL's query in anything a non-admin reads.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::admin::{post_tus, Admin, ADMIN_TOKEN, SUBSCRIBER_TOKEN, VIEWER_TOKEN};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

/// A loopback target that accepts each connection and closes it at once:
/// every attempt fails with a transport error that names the URL.
async fn hanging_up_target() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    port
}

/// The admin section: loopback targets allowed for the API, an admin, a
/// viewer and one subscriber team (`erp-team`).
fn admin_section() -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
allowed_targets = ["127.0.0.1"]
tokens = [
  {{ name = "ops", token = "{ADMIN_TOKEN}", role = "admin" }},
  {{ name = "grafana", token = "{VIEWER_TOKEN}", role = "viewer" }},
  {{ name = "erp-team", token = "{SUBSCRIBER_TOKEN}", role = "subscriber" }},
]
"#
    )
}

/// The relay events a target received, as JSON bodies.
fn bodies(target: &Target) -> Vec<Value> {
    target
        .received()
        .iter()
        .map(|request| serde_json::from_slice(&request.body).unwrap())
        .collect()
}

fn of_type<'a>(events: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == event_type).collect()
}

/// The dead deliveries the `relay.delivery.dead` events told of (an event
/// without a `count` tells of one).
fn dead_told(events: &[Value]) -> u64 {
    of_type(events, "relay.delivery.dead")
        .iter()
        .map(|e| e["count"].as_u64().unwrap_or(1))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_dead_deliveries_reach_an_alert_target_all_counted() {
    const DEAD: u64 = 3000;
    let refusing = closed_port().await;
    let alerts = Target::start(Vec::new()).await;
    let billing = subscription(
        "billing",
        &format!("http://127.0.0.1:{refusing}/drop?apikey=s3cret"),
        "",
    )
    .replace(
        "schedule = [\"50ms\", \"100ms\", \"150ms\"]",
        "schedule = [\"10ms\"]\nmax_in_flight = 64",
    );
    let relay = TestRelay::start(&format!(
        "{billing}{}{}",
        subscription("alerts", &alerts.url(), "events = [\"relay.*\"]"),
        admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);

    let started = tokio::time::Instant::now();
    let posted: Vec<String> = futures_util::stream::iter(0..DEAD)
        .map(|n| {
            let relay = &relay;
            async move { post_tus(relay, &format!("burst-{n}"), &format!("0001-{n}")).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(posted.len() as u64, DEAD);
    // On JetStream each store and each outcome is a round trip to its
    // server (20 s for the lot alone in a debug build, more beside other tests).
    let wait = if on_jetstream() { WAIT * 4 } else { WAIT };
    let stats = tokio::time::timeout(wait, async {
        loop {
            let stats = admin.get("/api/stats").await;
            if stats["subscriptions"]["billing"]["dead"] == DEAD {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let stats = match stats {
        Ok(stats) => stats,
        Err(_) => panic!("every delivery dead: {}", admin.get("/api/stats").await),
    };
    let spell = started.elapsed();
    assert_eq!(stats["subscriptions"]["billing"]["waiting"], 0, "{stats}");

    let all_told = alerts
        .wait_until(WAIT, |target| dead_told(&bodies(target)) >= DEAD)
        .await;
    let events = bodies(&alerts);
    let dead = of_type(&events, "relay.delivery.dead");
    assert!(
        all_told,
        "{} dead deliveries told of {DEAD}, in {} events",
        dead_told(&events),
        dead.len()
    );
    assert_eq!(dead_told(&events), DEAD, "each told once");
    // One per second (and the first at once), not one per delivery.
    let most = spell.as_secs() + 3;
    assert!(
        dead.len() as u64 <= most,
        "{} events in {spell:?}",
        dead.len()
    );
    let ids: std::collections::HashSet<&str> = dead
        .iter()
        .flat_map(|e| e["ids"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(ids.iter().all(|id| posted.iter().any(|p| p == id)));
    let (_, metrics) = admin.call("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("webhook_relay_event_reports_dropped_total 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("dropped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "{DEAD} dead deliveries in {spell:?}: {} relay.delivery.dead events",
        dead.len()
    );
    relay.stop().await;
}

/// Sends `body` as JSON with `token`; the status and the answer.
async fn send(admin: &Admin, path: &str, token: &str, body: Value) -> (u16, Value) {
    let response = admin
        .client
        .post(format!("{}{path}", admin.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("admin listener answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribers_relay_subscription_hears_only_of_its_own_and_sees_no_url_query() {
    let hanging_up = hanging_up_target().await;
    let alerts = Target::start(Vec::new()).await;
    let erp_alerts = Target::start(Vec::new()).await;
    // relay.toml's billing, whose target's URL carries a key.
    let billing = subscription(
        "billing",
        &format!("http://127.0.0.1:{hanging_up}/drop?apikey=s3cret"),
        "",
    )
    .replace(
        "schedule = [\"50ms\", \"100ms\", \"150ms\"]",
        "schedule = [\"10ms\"]",
    );
    let relay = TestRelay::start_edited(|base| {
        format!(
            "{}{billing}{}{}",
            base.replace(
                "shutdown_grace = \"2s\"",
                "shutdown_grace = \"2s\"\nfailing_after = 1"
            ),
            subscription("alerts", &alerts.url(), "events = [\"relay.*\"]"),
            admin_section()
        )
    })
    .await;
    let admin = Admin::of(&relay);

    // erp-team's own: its alerts, and its billing that fails too.
    for request in [
        json!({ "name": "erp-alerts", "url": erp_alerts.url(), "events": ["relay.*"] }),
        json!({
            "name": "erp-billing",
            "url": format!("http://127.0.0.1:{hanging_up}/erp?token=erp-s3cret"),
            "events": ["facturacion.*"],
            "schedule": ["10ms"],
            "jitter": 0.0,
        }),
    ] {
        let (status, created) = send(&admin, "/api/subscriptions", SUBSCRIBER_TOKEN, request).await;
        assert_eq!(status, 201, "{created}");
        assert!(!created.to_string().contains("s3cret"), "{created}");
    }
    let id = post_tus(&relay, "team-1", "0009-0001").await;

    // The admins' alerts hear of both; erp-team's of its own only.
    let told_of = |target: &Target, subscription: &str, event_type: &str| {
        bodies(target)
            .iter()
            .any(|e| e["type"] == event_type && e["subscription"] == subscription)
    };
    assert!(
        alerts
            .wait_until(WAIT, |t| ["billing", "erp-billing"]
                .iter()
                .all(|s| told_of(t, s, "relay.delivery.dead")))
            .await,
        "{:?}",
        bodies(&alerts)
    );
    assert!(
        erp_alerts
            .wait_until(WAIT, |t| told_of(t, "erp-billing", "relay.delivery.dead"))
            .await,
        "{:?}",
        bodies(&erp_alerts)
    );
    // Every relay event stored names who gets it.
    let stored = admin.get("/api/notifications?source=relay&limit=500").await;
    for item in stored["items"].as_array().unwrap() {
        let shown = admin
            .get(&format!(
                "/api/notifications/{}",
                item["id"].as_str().unwrap()
            ))
            .await;
        let event: Value = serde_json::from_str(shown["body"].as_str().unwrap()).unwrap();
        let to_erp = shown["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "erp-alerts");
        if to_erp {
            assert!(
                event["subscription"].is_null() || event["subscription"] == "erp-billing",
                "erp-team's alerts got an event about another's: {event}"
            );
        }
    }
    let erp_heard = bodies(&erp_alerts);
    assert!(
        erp_heard
            .iter()
            .all(|e| e["subscription"].is_null() || e["subscription"] == "erp-billing"),
        "{erp_heard:?}"
    );
    assert!(
        !erp_heard.iter().any(|e| e.to_string().contains("drop")),
        "nothing of billing's target: {erp_heard:?}"
    );

    // Nothing a non-admin reads carries a URL's query: the events, the
    // subscriptions, a notification's attempts, the audit, the page.
    let no_query = |what: &str, text: &str| {
        assert!(
            !text.contains("s3cret") && !text.contains("apikey") && !text.contains("token="),
            "{what}: {text}"
        );
    };
    for event in erp_heard.iter().chain(bodies(&alerts).iter()) {
        no_query("an event", &event.to_string());
    }
    let (_, detail) = admin
        .call(
            "GET",
            &format!("/api/notifications/{id}"),
            Some(VIEWER_TOKEN),
        )
        .await;
    assert!(detail.to_string().contains("/drop"), "{detail}");
    no_query("a notification's attempts", &detail.to_string());
    for token in [VIEWER_TOKEN, SUBSCRIBER_TOKEN] {
        let (status, listed) = admin.call("GET", "/api/subscriptions", Some(token)).await;
        assert_eq!(status, 200);
        no_query("the subscriptions", &listed.to_string());
    }
    let (_, audit) = admin.call("GET", "/api/audit", Some(VIEWER_TOKEN)).await;
    no_query("the audit", &audit.to_string());
    no_query("the page", &admin.page_as("/", VIEWER_TOKEN).await);
    no_query(
        "the page of the notification",
        &admin.page_as(&format!("/n/{id}"), VIEWER_TOKEN).await,
    );
    // An admin still reads the whole URL it configured.
    let listed = admin.get("/api/subscriptions").await;
    assert!(listed.to_string().contains("apikey=s3cret"), "{listed}");
    relay.stop().await;
}
