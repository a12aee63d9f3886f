//! Operating a running relay beyond the basics of `admin.rs`: the bulk
//! purge, the target's answers in the attempt history, the stats and
//! gauges of the backlog, and the relay's own operational events.

use std::time::Duration;

use serde_json::Value;

use crate::admin::*;
use crate::helpers::*;

/// The longest an awaited condition may take: generous, since a loaded
/// machine is slow and a condition met returns at once.
const WAIT: Duration = Duration::from_secs(30);

/// A subscription like `helpers::subscription` but waiting ten minutes
/// after its first failure: its delivery stays waiting for the test.
fn slow_subscription(name: &str, url: &str) -> String {
    subscription(name, url, "").replace(
        "schedule = [\"50ms\", \"100ms\", \"150ms\"]",
        "schedule = [\"10m\"]",
    )
}

fn delivery<'a>(shown: &'a Value, subscription: &str) -> &'a Value {
    shown["deliveries"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["subscription"] == subscription))
        .unwrap_or_else(|| panic!("no delivery to {subscription}: {shown}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_gives_up_dead_and_waiting_deliveries_counts_them_and_is_audited() {
    // billing fails its four attempts (dead); slow fails its first and waits.
    let target = Target::start(vec![Reply::Status(500); 5]).await;
    let relay = TestRelay::start(&format!(
        "{}{}{}",
        subscription("billing", &target.url(), ""),
        slow_subscription("slow", &target.url()),
        admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);
    let id = post_tus(&relay, "p-1", "0009-0001").await;
    let path = format!("/api/notifications/{id}");
    admin
        .wait_for(&path, "billing dead and slow waiting", |shown| {
            let slow = delivery(shown, "slow");
            delivery(shown, "billing")["state"] == "dead"
                && slow["state"] == "waiting"
                && slow["attempts"].as_array().is_some_and(|a| a.len() == 1)
        })
        .await;

    // Only dead or waiting deliveries can be purged; a viewer cannot purge.
    let (status, body) = admin
        .call("POST", "/api/purge?state=delivered", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = admin
        .call("POST", "/api/purge?dry_run=true", Some(VIEWER_TOKEN))
        .await;
    assert_eq!(status, 403);

    // The waiting one, through the CLI: a dry run counts, --yes purges.
    let config = cli_config(&relay);
    let purge_slow = |extra: &'static str| {
        let config = config.clone();
        move || {
            cli(
                &config,
                &[
                    "spool",
                    "purge",
                    "--state",
                    "waiting",
                    "--subscription",
                    "slow",
                    extra,
                ],
                ADMIN_TOKEN,
            )
        }
    };
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(&config, &["spool", "purge", "--state", "dead"], ADMIN_TOKEN)
    });
    assert_eq!(code, 64, "a purge without --dry-run or --yes: {err}");
    let (code, out, err) = tokio::task::block_in_place(purge_slow("--dry-run"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would purge 1 deliveries of 1"), "{out}");
    let stats = admin.get("/api/stats").await;
    assert_eq!(stats["subscriptions"]["slow"]["waiting"], 1, "{stats}");
    let (code, out, err) = tokio::task::block_in_place(purge_slow("--yes"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("purged 1 deliveries"), "{out}");

    // The dead one, by the API's default state.
    let (status, dry) = admin
        .call("POST", "/api/purge?dry_run=true", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (status, dry["deliveries"].as_u64()),
        (200, Some(1)),
        "{dry}"
    );
    let (done, _) = bulk_job(&admin, "/api/purge").await;
    assert_eq!(
        (
            done["state"].as_str(),
            done["purged"].as_u64(),
            done["skipped"].as_u64()
        ),
        (Some("done"), Some(1), Some(0)),
        "{done}"
    );

    // Both kept with their history, counted as purged; nothing more sent.
    let shown = admin.get(&path).await;
    assert_eq!(delivery(&shown, "billing")["state"], "purged");
    assert_eq!(
        delivery(&shown, "billing")["attempts"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    assert_eq!(delivery(&shown, "slow")["state"], "purged");
    let stats = admin.get("/api/stats").await;
    for name in ["billing", "slow"] {
        let of = &stats["subscriptions"][name];
        assert_eq!(
            (
                of["waiting"].as_u64(),
                of["dead"].as_u64(),
                of["purged"].as_u64()
            ),
            (Some(0), Some(0), Some(1)),
            "{name}: {stats}"
        );
    }
    let audit = admin.get("/api/audit").await;
    let actions: Vec<(&str, u64)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default(),
                r["detail"]["purged"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("purge.bulk", 1), ("purge.bulk", 1)],
        "two purges, dry runs not: {audit}"
    );
    assert_eq!(target.count(), 5, "a purged delivery is not sent");

    // A purged delivery can still be replayed: the target has recovered.
    let (status, body) = admin
        .call(
            "POST",
            &format!("/api/notifications/{id}/replay?subscription=slow"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(target.wait_until(WAIT, |t| t.succeeded(&id)).await);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_keeps_the_start_of_the_targets_answer() {
    let mut refusal = br#"{"error":"unknown invoice 0009-0002","trace":""#.to_vec();
    refusal.resize(10_000, b'x');
    let target = Target::start(vec![
        Reply::StatusBody(422, refusal),
        Reply::StatusBody(503, b"down for maintenance\n\x1b[31mred\x1b[0m".to_vec()),
    ])
    .await;
    let (relay, admin) = relay_to(&target).await;
    let id = post_tus(&relay, "a-1", "0009-0002").await;
    let shown = admin
        .wait_for(&format!("/api/notifications/{id}"), "delivered", |shown| {
            delivery(shown, "billing")["state"] == "delivered"
        })
        .await;
    let attempts = delivery(&shown, "billing")["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{shown}");
    let first = attempts[0]["answer"].as_str().unwrap();
    assert!(
        first.starts_with(r#"{"error":"unknown invoice 0009-0002""#),
        "{first}"
    );
    assert_eq!(first.len(), 4096, "cut to 4 KiB");
    assert!(attempts[1]["answer"]
        .as_str()
        .unwrap()
        .starts_with("down for maintenance"));
    assert_eq!(attempts[2]["answer"], "{}");
    assert_eq!(attempts[2]["outcome"]["code"], 200);

    // `spool show` puts it on the attempt's line, control characters out.
    let config = cli_config(&relay);
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&config, &["spool", "show", &id], VIEWER_TOKEN));
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("attempt 2"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("HTTP 503") && line.contains("down for maintenance"),
        "{line}"
    );
    assert!(
        !out.contains('\x1b'),
        "no escape sequence reaches the terminal: {out:?}"
    );

    // The page shows it on the attempt's row, as text.
    let page = admin.page_as(&format!("/n/{id}"), VIEWER_TOKEN).await;
    assert!(page.contains("<td><code>down for maintenance"), "{page}");
    assert!(
        page.contains("{&quot;error&quot;:&quot;unknown invoice"),
        "escaped: {page}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_show_the_oldest_waiting_delivery_and_each_sources_requests() {
    // billing delivers; slow fails once and waits ten minutes.
    let down = Target::start(vec![Reply::Status(500)]).await;
    let up = Target::start(Vec::new()).await;
    let relay = TestRelay::start(&format!(
        "{}{}{}",
        slow_subscription("slow", &down.url()),
        subscription("billing", &up.url(), ""),
        admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);
    let id = post_tus(&relay, "s-1", "0009-0003").await;
    let (status, _) = relay
        .post("/hooks/tusfacturas/not-the-token-0123456789", "{}")
        .await;
    assert_eq!(status, 401);
    let (status, json) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            "{\"not\": \"tusfacturas\"}",
        )
        .await;
    assert_eq!(status, 422, "quarantined: {json}");
    let shown = admin
        .wait_for(
            &format!("/api/notifications/{id}"),
            "slow waiting, billing delivered",
            |shown| {
                delivery(shown, "slow")["attempts"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
                    && delivery(shown, "billing")["state"] == "delivered"
            },
        )
        .await;

    let stats = admin.get("/api/stats").await;
    // By state, over every subscription: slow's waits, billing's arrived.
    assert_eq!(
        stats["deliveries"],
        serde_json::json!({ "waiting": 1, "dead": 0, "delivered": 1, "purged": 0 }),
        "{stats}"
    );
    let slow = &stats["subscriptions"]["slow"];
    assert_eq!(
        slow["oldest_waiting_received_at"], shown["received_at"],
        "{stats}"
    );
    assert!(slow["oldest_waiting_age_seconds"]
        .as_f64()
        .is_some_and(|age| age >= 0.0));
    assert_eq!(
        stats["subscriptions"]["billing"]["oldest_waiting_received_at"],
        Value::Null
    );
    let tus = &stats["sources"]["tusfacturas"];
    // Kept by the spool: the one stored and the one quarantined; the
    // unauthorized request kept nothing.
    assert_eq!(tus["stored"], 1, "{stats}");
    assert_eq!(tus["quarantined"], 1, "{stats}");
    assert_eq!(tus["configured"], true, "{stats}");
    assert_eq!(tus["received_since_start"]["accepted"], 1, "{stats}");
    assert_eq!(tus["received_since_start"]["unauthorized"], 1, "{stats}");
    assert!(tus["last_received_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let (_, text) = admin.call("GET", "/metrics", None).await;
    let text = text.as_str().unwrap();
    let gauge = |name: &str| -> f64 {
        let prefix =
            format!("webhook_relay_oldest_waiting_age_seconds{{subscription=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no oldest waiting age for {name}:\n{text}"))
    };
    assert_eq!(gauge("billing"), 0.0, "nothing of billing waits");
    let slow_age = gauge("slow");
    // It grows while the delivery waits (the clock is real: await a later scrape).
    admin
        .wait_for("/api/stats", "the waiting delivery to age", |stats| {
            stats["subscriptions"]["slow"]["oldest_waiting_age_seconds"]
                .as_f64()
                .is_some_and(|age| age > slow_age)
        })
        .await;
    assert!(text.contains("webhook_relay_last_received_timestamp_seconds{source=\"tusfacturas\"}"));

    // `spool stats` names the oldest waiting delivery's time, RFC 3339.
    let config = cli_config(&relay);
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&config, &["spool", "stats"], VIEWER_TOKEN));
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("slow "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains(shown["received_at"].as_str().unwrap()),
        "{out}"
    );
    // Per source: what the spool holds (stored, quarantined), then the rest.
    let source_row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("tusfacturas "))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(source_row.get(1..3), Some(["1", "1"].as_slice()), "{out}");
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&config, &["spool", "stats", "--json"], VIEWER_TOKEN));
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["sources"]["tusfacturas"]["stored"], 1, "{out}");
    assert_eq!(json["sources"]["tusfacturas"]["quarantined"], 1, "{out}");

    // The page's sources table, each count a link to its list.
    let page = admin.page_as("/", VIEWER_TOKEN).await;
    assert!(
        page.contains(
            "<tr><td>tusfacturas</td><td><a href=\"/?source=tusfacturas\">1</a></td>\
             <td><a href=\"/?source=tusfacturas&amp;state=quarantined\">1</a></td>"
        ),
        "{page}"
    );
    relay.stop().await;
}

/// The relay's own events, as a `relay.*` subscriber received them: each
/// body's `type`, in order of arrival, every one signed and marked as from
/// the source `relay`.
fn relay_events(target: &Target) -> Vec<Value> {
    target
        .received()
        .iter()
        .map(|request| {
            crate::forwarding::verify_with_standardwebhooks(request);
            assert_eq!(request.headers["x-relay-source"], "relay");
            serde_json::from_slice::<Value>(&request.body).unwrap()
        })
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?"))
        .collect()
}

/// A relay whose `billing` goes to `failing` on a short schedule (three
/// attempts), `alerts` takes the relay's events, `plain` takes everything
/// (no filter), and a subscription is failing after two failures in a row.
async fn relay_with_alerts(
    failing: &Target,
    alerts: &Target,
    plain: &Target,
) -> (TestRelay, Admin) {
    let billing = subscription("billing", &failing.url(), "").replace(
        "schedule = [\"50ms\", \"100ms\", \"150ms\"]",
        "schedule = [\"50ms\", \"100ms\"]",
    );
    let relay = TestRelay::start_edited(|base| {
        format!(
            "{}{billing}{}{}{}",
            base.replace(
                "shutdown_grace = \"2s\"",
                "shutdown_grace = \"2s\"\nfailing_after = 2"
            ),
            subscription(
                "alerts",
                &alerts.url(),
                // One at a time: they arrive in the order they were stored.
                "events = [\"relay.*\"]\nmax_in_flight = 1",
            ),
            subscription("plain", &plain.url(), ""),
            admin_section()
        )
    })
    .await;
    let admin = Admin::of(&relay);
    (relay, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_raises_failing_once_then_dead_then_recovered() {
    let failing = Target::start(vec![Reply::Status(500); 3]).await;
    let alerts = Target::start(Vec::new()).await;
    let plain = Target::start(Vec::new()).await;
    let (relay, admin) = relay_with_alerts(&failing, &alerts, &plain).await;
    let id = post_tus(&relay, "e-1", "0009-0004").await;

    alerts.wait_for(2, WAIT).await;
    let events = relay_events(&alerts);
    assert_eq!(
        types(&events),
        ["relay.subscription.failing", "relay.delivery.dead"],
        "{events:?}"
    );
    let (failing_event, dead) = (&events[0], &events[1]);
    assert_eq!(failing_event["subscription"], "billing");
    assert_eq!(failing_event["consecutive_failures"], 2);
    assert_eq!(dead["subscription"], "billing");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["last_attempt"]["outcome"]["code"], 500);
    let invoice = &dead["notification"];
    assert_eq!(
        (
            invoice["id"].as_str(),
            invoice["source"].as_str(),
            invoice["subject"].as_str()
        ),
        (Some(id.as_str()), Some("tusfacturas"), Some("0009-0004"))
    );
    assert!(
        !dead.to_string().contains("hook_id"),
        "no invoice body in an event: {dead}"
    );

    // The target is back: a replay delivers, and billing has recovered.
    let (status, body) = admin
        .call(
            "POST",
            &format!("/api/notifications/{id}/replay"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    alerts.wait_for(3, WAIT).await;
    let events = relay_events(&alerts);
    assert_eq!(
        events[2]["type"], "relay.subscription.recovered",
        "{events:?}"
    );
    assert_eq!(events[2]["subscription"], "billing");
    assert_eq!(events[2]["failures_before"], 3);

    // A subscription with no `events` filter got the invoice, not the
    // relay's events; the events are in the spool as source `relay`.
    assert!(plain.wait_until(WAIT, |t| t.succeeded(&id)).await);
    assert!(
        plain
            .received()
            .iter()
            .all(|r| r.headers["x-relay-source"] == "tusfacturas"),
        "relay events reached a subscription that did not ask for them"
    );
    let stored = admin.get("/api/notifications?source=relay").await;
    assert_eq!(items(&stored), 3, "{stored}");
    // The stats name the `relay` source too, which no config defines.
    let stats = admin.get("/api/stats").await;
    let own = &stats["sources"]["relay"];
    assert_eq!(own["stored"], 3, "{stats}");
    assert_eq!(own["configured"], false, "{stats}");
    assert!(own["silent"].is_null(), "{stats}");
    relay.stop().await;
    assert_eq!(alerts.count(), 3, "nothing more after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_body_raises_quarantine_added() {
    let failing = Target::start(Vec::new()).await;
    let alerts = Target::start(Vec::new()).await;
    let plain = Target::start(Vec::new()).await;
    let (relay, _admin) = relay_with_alerts(&failing, &alerts, &plain).await;
    let (status, json) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            "{\"not\": \"tusfacturas\"}",
        )
        .await;
    assert_eq!(status, 422, "{json}");
    alerts.wait_for(1, WAIT).await;
    let events = relay_events(&alerts);
    assert_eq!(types(&events), ["relay.quarantine.added"]);
    assert_eq!(events[0]["quarantine_id"], json["quarantine_id"]);
    assert_eq!(events[0]["source"], "tusfacturas");
    assert!(events[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(
        !events[0].to_string().contains("\"not\""),
        "no body: {}",
        events[0]
    );
    relay.stop().await;
    assert_eq!(
        plain.count(),
        0,
        "a quarantined body goes nowhere, nor its event"
    );
}
