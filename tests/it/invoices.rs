//! Issue 12, knowing each invoice, on a running relay with real targets:
//! the status in one vocabulary (sent as `x-relay-status`, picked by a
//! subscription's `statuses` and the API's `status=`); the invoices and an
//! invoice's timeline through the API, the built CLI and the page in a
//! headless browser.

use std::time::Duration;

use serde_json::Value;

use crate::admin::{
    admin_section, cli, cli_config, headless_browser, log_in, relay_to, shown, Admin, ADMIN_TOKEN,
    VIEWER_TOKEN,
};
use crate::helpers::*;

/// The longest an awaited condition may take: generous, since a loaded
/// machine is slow and a condition met returns at once.
const WAIT: Duration = Duration::from_secs(30);

async fn post_tus(relay: &TestRelay, hook: &str, evento: &str) -> String {
    let (status, json) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            tusfacturas(hook, evento, 1),
        )
        .await;
    assert_eq!(status, 200, "{json}");
    json["id"].as_str().expect("an id").to_owned()
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_status_is_sent_picked_by_subscriptions_and_filtered_by_the_api() {
    let everything = Target::start(vec![]).await;
    let decided = Target::start(vec![]).await;
    let subs = [
        subscription("everything", &everything.url(), ""),
        subscription(
            "decided",
            &decided.url(),
            r#"statuses = ["accepted", "rejected"]"#,
        ),
    ]
    .concat();
    let relay = TestRelay::start(&format!("{}{subs}", admin_section())).await;
    let queued = post_tus(&relay, "h-st", "encolado").await;
    let issued = post_tus(&relay, "h-st", "emitido").await;

    let got = everything.wait_for(2, WAIT).await;
    let mut statuses: Vec<(&str, &str)> = got
        .iter()
        .map(|r| (header(r, "webhook-id"), header(r, "x-relay-status")))
        .collect();
    statuses.sort();
    let mut wanted = vec![(queued.as_str(), "queued"), (issued.as_str(), "accepted")];
    wanted.sort();
    assert_eq!(statuses, wanted);

    let got = decided.wait_for(1, WAIT).await;
    assert_eq!(header(&got[0], "webhook-id"), issued);
    assert_eq!(header(&got[0], "x-relay-status"), "accepted");
    // Fan-out decides at spool time: the queued one has no delivery to it.
    let admin = Admin::of(&relay);
    let shown = admin.get(&format!("/api/notifications/{queued}")).await;
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["deliveries"].as_array().unwrap().len(), 1);

    let page = admin.get("/api/notifications?status=accepted").await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [issued.as_str()]);
    let (status, _) = admin
        .call(
            "GET",
            "/api/notifications?status=emitido",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(decided.count(), 1);
    relay.stop().await;
}

/// A TusFacturas notification about invoice `reference`.
pub async fn post_about(relay: &TestRelay, hook: &str, evento: &str, reference: &str) -> Value {
    let body = tusfacturas(hook, evento, 1).replace("\"17032\"", &format!("\"{reference}\""));
    let (status, json) = relay
        .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), body)
        .await;
    assert_eq!(status, 200, "{json}");
    json
}

/// An invoice queued, resent twice by the provider, accepted, then a late
/// queued resend past the dedup key (a new hook): its timeline through the
/// API, with the resends counted and each delivery with its attempts.
async fn a_known_invoice(relay: &TestRelay, target: &Target) -> (String, String, String) {
    let queued = post_about(relay, "t-q", "encolado", "0007-0001").await;
    for _ in 0..2 {
        let again = post_about(relay, "t-q", "encolado", "0007-0001").await;
        assert_eq!(again["duplicate"], true);
    }
    let accepted = post_about(relay, "t-a", "emitido", "0007-0001").await;
    let late = post_about(relay, "t-late", "encolado", "0007-0001").await;
    post_about(relay, "t-other", "encolado", "0007-0002").await;
    target.wait_for(4, WAIT).await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    (id(&queued), id(&accepted), id(&late))
}

#[tokio::test]
async fn the_api_lists_invoices_and_shows_a_timeline_with_resends_and_deliveries() {
    let target = Target::start(vec![Reply::Status(500)]).await;
    let (relay, admin) = relay_to(&target).await;
    let (queued, accepted, late) = a_known_invoice(&relay, &target).await;

    let shown = admin
        .wait_for(
            "/api/invoices/tusfacturas/0007-0001",
            "every delivery delivered",
            |b| {
                b["notifications"]
                    .as_array()
                    .is_some_and(|n| n.iter().all(|n| n["deliveries"][0]["state"] == "delivered"))
            },
        )
        .await;
    assert_eq!(shown["status"], "accepted", "a final status is kept");
    let timeline: Vec<(&str, &str, bool, u64)> = shown["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap(),
                n["status"].as_str().unwrap(),
                n["superseded"].as_bool().unwrap(),
                n["resends"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        timeline,
        [
            (queued.as_str(), "queued", false, 2),
            (accepted.as_str(), "accepted", false, 0),
            (late.as_str(), "queued", true, 0),
        ]
    );
    // The first delivery met the target's one 500: two attempts.
    let attempts = &shown["notifications"][0]["deliveries"][0]["attempts"];
    assert_eq!(attempts.as_array().unwrap().len(), 2, "{attempts}");
    assert_eq!(attempts[0]["outcome"]["code"], 500);

    let list = admin.get("/api/invoices?source=tusfacturas").await;
    let rows: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["subject"].as_str().unwrap(),
                i["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("0007-0001", "accepted"), ("0007-0002", "queued")]);
    let queued_only = admin.get("/api/invoices?status=queued").await;
    assert_eq!(queued_only["items"][0]["subject"], "0007-0002");
    assert_eq!(queued_only["items"].as_array().unwrap().len(), 1);
    // Pages of one, with a cursor.
    let first = admin.get("/api/invoices?limit=1").await;
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();
    let next = admin
        .get(&format!(
            "/api/invoices?limit=1&cursor={}",
            form_urlencoded::byte_serialize(cursor.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(next["items"][0]["subject"], "0007-0002");
    // A full page hands out a cursor; the page after the last is empty.
    let cursor = next["next_cursor"].as_str().expect("a cursor").to_owned();
    let end = admin
        .get(&format!(
            "/api/invoices?limit=1&cursor={}",
            form_urlencoded::byte_serialize(cursor.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(end["items"].as_array().unwrap().len(), 0);
    assert!(end["next_cursor"].is_null());

    for (path, status) in [
        ("/api/invoices/tusfacturas/0007-0404", 404),
        ("/api/invoices?state=dead", 400),
        ("/api/invoices?status=pending", 400),
    ] {
        assert_eq!(
            admin.call("GET", path, Some(VIEWER_TOKEN)).await.0,
            status,
            "{path}"
        );
    }
    assert_eq!(admin.call("GET", "/api/invoices", None).await.0, 401);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_invoices_and_shows_a_timeline() {
    let target = Target::start(vec![]).await;
    let (relay, _admin) = relay_to(&target).await;
    let (queued, _, late) = a_known_invoice(&relay, &target).await;
    let config_file = cli_config(&relay);
    let config = config_file.as_path();

    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["invoice", "ls", "--status", "accepted"],
            VIEWER_TOKEN,
        )
    });
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SOURCE "), "a table: {out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].contains("0007-0001") && lines[1].contains("accepted") && lines[1].contains('T'),
        "{out}"
    );

    let (code, out, _) =
        tokio::task::block_in_place(|| cli(config, &["invoice", "ls", "--json"], VIEWER_TOKEN));
    assert_eq!(code, 0);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["status"], "queued");

    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["invoice", "show", "tusfacturas", "0007-0001"],
            VIEWER_TOKEN,
        )
    });
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("tusfacturas 0007-0001: accepted"), "{out}");
    let queued_row = out
        .lines()
        .find(|l| l.contains(&queued))
        .expect("the first one");
    let cells: Vec<&str> = queued_row.split_whitespace().collect();
    assert_eq!(cells[2..], ["facturacion.encolado", "queued", "2"], "{out}");
    let late_row = out
        .lines()
        .find(|l| l.contains(&late))
        .expect("the late one");
    assert!(late_row.contains("(superseded)"), "{out}");
    assert!(out.contains("-> billing"), "deliveries under each: {out}");

    let (code, out, _) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["invoice", "show", "tusfacturas", "0007-0001", "--json"],
            VIEWER_TOKEN,
        )
    });
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["notifications"].as_array().unwrap().len(), 3);

    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["invoice", "show", "tusfacturas", "0007-0404"],
            VIEWER_TOKEN,
        )
    });
    assert_ne!(code, 0);
    assert!(err.contains("0007-0404"), "{err}");
    relay.stop().await;
}

/// Headless Chromium: the search box finds the invoice by its number and
/// its page shows the timeline (as the admin page's own browser test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_finds_an_invoice_by_number_and_sees_its_timeline() {
    use fantoccini::Locator;

    let Some((browser, mut driver)) = headless_browser().await else {
        return;
    };
    let target = Target::start(vec![]).await;
    let (relay, admin) = relay_to(&target).await;
    let (queued, accepted, late) = a_known_invoice(&relay, &target).await;

    browser.goto(&admin.base).await.unwrap();
    log_in(&browser, VIEWER_TOKEN).await;
    shown(&browser, Locator::Css("input[name=number]"))
        .await
        .send_keys("7-0001")
        .await
        .unwrap();
    shown(&browser, Locator::Css("form[action='/i'] button"))
        .await
        .click()
        .await
        .unwrap();
    // The dashboard lists recent invoices too: wait for the results table,
    // or the link found may be the dashboard's, gone once the search loads.
    shown(
        &browser,
        Locator::XPath("//table[@id='found']//a[.='0007-0001']"),
    )
    .await
    .click()
    .await
    .unwrap();
    let status = shown(&browser, Locator::Id("invoice-status"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(status, "accepted");
    let timeline = browser
        .find(Locator::Id("timeline"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = |id: &str| {
        timeline
            .find(id)
            .unwrap_or_else(|| panic!("{id} in {timeline}"))
    };
    assert!(
        at(&queued) < at(&accepted) && at(&accepted) < at(&late),
        "{timeline}"
    );
    assert!(timeline.contains("superseded"), "{timeline}");
    assert!(timeline.contains("billing delivered"), "{timeline}");
    // The other invoice is not in this one's timeline.
    assert!(!timeline.contains("0007-0002"), "{timeline}");
    browser.close().await.unwrap();
    let _ = driver.kill().await;
    relay.stop().await;
}

/// `on_superseded`: a queued notification after the invoice was accepted
/// goes to `deliver` as any other, to `mark` with `x-relay-superseded`,
/// and not to `skip`, whose delivery is recorded as purged.
#[tokio::test]
async fn a_superseded_notification_is_delivered_marked_or_skipped_per_subscription() {
    let delivers = Target::start(vec![]).await;
    let marks = Target::start(vec![]).await;
    let skips = Target::start(vec![]).await;
    let subs = [
        subscription("delivers", &delivers.url(), r#"on_superseded = "deliver""#),
        // `mark` is the default.
        subscription("marks", &marks.url(), ""),
        subscription("skips", &skips.url(), r#"on_superseded = "skip""#),
    ]
    .concat();
    let relay = TestRelay::start(&format!("{}{subs}", admin_section())).await;
    let admin = Admin::of(&relay);
    post_about(&relay, "s-q", "encolado", "0008-0001").await;
    post_about(&relay, "s-a", "emitido", "0008-0001").await;
    let late = post_about(&relay, "s-late", "encolado", "0008-0001").await;
    let late = late["id"].as_str().unwrap().to_owned();

    let superseded_header = |target: &Target| -> Vec<(String, String)> {
        target
            .received()
            .iter()
            .map(|r| {
                (
                    header(r, "webhook-id").to_owned(),
                    header(r, "x-relay-superseded").to_owned(),
                )
            })
            .collect()
    };
    delivers.wait_for(3, WAIT).await;
    marks.wait_for(3, WAIT).await;
    skips.wait_for(2, WAIT).await;
    for (id, mark) in superseded_header(&delivers) {
        assert_eq!(mark, "", "deliver sends {id} as it is");
    }
    let marked: Vec<String> = superseded_header(&marks)
        .into_iter()
        .filter(|(_, mark)| mark == "true")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(marked, [late.as_str()], "only the late one is marked");
    assert!(
        !superseded_header(&skips).iter().any(|(id, _)| *id == late),
        "skip never sends it"
    );

    let shown = admin.get(&format!("/api/notifications/{late}")).await;
    let states: Vec<(&str, &str)> = shown["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["subscription"].as_str().unwrap(),
                d["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(states.contains(&("skips", "purged")), "{states:?}");
    let stats = admin
        .wait_for("/api/stats", "the counts settled", |s| {
            s["subscriptions"]["skips"]["delivered"] == 2
        })
        .await;
    let skips_counts = &stats["subscriptions"]["skips"];
    assert_eq!(skips_counts["purged"], 1, "{skips_counts}");
    assert_eq!(skips_counts["waiting"], 0, "{skips_counts}");
    // Nothing more comes to skip however long one waits for the forwarder.
    assert_eq!(skips.count(), 2);
    relay.stop().await;
}

/// `expect_every`: a source that sends nothing for that long raises
/// `relay.source.silent` once and shows as silent in `/api/stats` and in a banner on the page; a
/// notification from it raises `relay.source.recovered`. (The last
/// receipt is kept to the second, so the setting is in seconds here.)
#[tokio::test]
async fn a_silent_source_is_announced_once_and_its_recovery_too() {
    let alerts = Target::start(vec![]).await;
    let relay = TestRelay::start_edited(|base| {
        alerts_config(base, "expect_every = \"2s\"", "relay.source.*", &alerts)
    })
    .await;
    let admin = Admin::of(&relay);
    let types = |target: &Target| -> Vec<(String, String)> {
        target
            .received()
            .iter()
            .map(|r| {
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                (
                    body["type"].as_str().unwrap_or("").to_owned(),
                    body["source"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    alerts.wait_for(1, WAIT).await;
    assert_eq!(
        types(&alerts),
        [("relay.source.silent".into(), "tusfacturas".into())],
        "only the source that expects notifications"
    );
    let stats = admin.get("/api/stats").await;
    assert_eq!(stats["sources"]["tusfacturas"]["silent"], true, "{stats}");
    assert_eq!(stats["sources"]["tusfacturas"]["expect_every_seconds"], 2);
    assert!(
        stats["sources"]["datil"]["silent"].is_null(),
        "not expected"
    );
    // The page's dashboard names it in a banner, and only it.
    let page = admin.page_as("/", VIEWER_TOKEN).await;
    assert!(
        page.contains("id=silent-tusfacturas")
            && page.contains("Source tusfacturas is silent: nothing received for 2 s"),
        "{page}"
    );
    assert!(!page.contains("id=silent-datil"), "{page}");

    post_about(&relay, "silence-1", "emitido", "0009-0001").await;
    let stats = admin.get("/api/stats").await;
    assert_eq!(stats["sources"]["tusfacturas"]["silent"], false, "{stats}");
    let page = admin.page_as("/", VIEWER_TOKEN).await;
    assert!(
        !page.contains("is silent"),
        "heard again: no banner: {page}"
    );
    alerts.wait_for(2, WAIT).await;
    let seen = types(&alerts);
    assert_eq!(
        seen[..2],
        [
            ("relay.source.silent".to_owned(), "tusfacturas".to_owned()),
            (
                "relay.source.recovered".to_owned(),
                "tusfacturas".to_owned()
            ),
        ],
        "silent once, then recovered"
    );
    relay.stop().await;
}

/// `stuck_after` (300 ms here): an invoice left `encolado` that long is
/// stuck: `relay.invoice.stuck` reaches a real target once, the API's
/// `stuck=true` and `webhook_relay_invoices_stuck` show it, and its
/// `emitido` clears it (`relay.invoice.unstuck`, the gauge back to 0). An
/// invoice emitted in time is never stuck. The built CLI lists it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_invoice_gets_stuck_once_and_clears_with_its_final_status() {
    let alerts = Target::start(vec![]).await;
    let relay = TestRelay::start_edited(|base| stuck_config(base, &alerts)).await;
    let admin = Admin::of(&relay);
    let queued = post_about(&relay, "s-q", "encolado", "0008-0001").await;
    let queued_id = queued["id"].as_str().expect("an id").to_owned();
    post_about(&relay, "s-q2", "encolado", "0008-0002").await;
    post_about(&relay, "s-e2", "emitido", "0008-0002").await;

    let first = alerts.wait_for(1, WAIT).await;
    let stuck: Value = serde_json::from_slice(&first[0].body).unwrap();
    assert_eq!(stuck["type"], "relay.invoice.stuck", "{stuck}");
    assert_eq!(stuck["source"], "tusfacturas");
    assert_eq!(stuck["subject"], "0008-0001");
    assert_eq!(stuck["latest_notification"], queued_id.as_str());
    assert_eq!(stuck["stuck_after_ms"], 300);
    assert!(stuck["queued_since"].as_str().is_some(), "{stuck}");

    let listed = admin.get("/api/invoices?stuck=true").await;
    let subjects: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["subject"].as_str())
        .collect();
    assert_eq!(subjects, ["0008-0001"], "emitted in time: never stuck");
    assert_eq!(listed["items"][0]["latest_id"], queued_id.as_str());
    assert_eq!(tus_stuck_gauge(&admin).await.as_deref(), Some("1"));
    let config_file = cli_config(&relay);
    let config = config_file.as_path();
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(config, &["invoice", "ls", "--stuck"], VIEWER_TOKEN));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("QUEUED SINCE"), "a table: {out}");
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].contains("0008-0001") && lines[1].contains('T'),
        "{out}"
    );
    let (code, out, _) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["invoice", "ls", "--stuck", "--json"],
            VIEWER_TOKEN,
        )
    });
    assert_eq!(code, 0);
    let row: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(row["subject"], "0008-0001");
    assert_eq!(row["stuck"], true);
    // The page names it, in the same headless browser as the admin page
    // (skipped where there is none, as that test is).
    if let Some((browser, mut driver)) = headless_browser().await {
        use fantoccini::Locator;
        browser.goto(&admin.base).await.unwrap();
        log_in(&browser, VIEWER_TOKEN).await;
        shown(&browser, Locator::Id("stuck")).await;
        let heading = browser
            .find(Locator::Id("stuck"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(heading, "Stuck invoices (1)");
        let table = browser
            .find(Locator::Css("#stuck + table"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            table.contains("0008-0001") && !table.contains("0008-0002"),
            "{table}"
        );
        browser.close().await.unwrap();
        let _ = driver.kill().await;
    }

    post_about(&relay, "s-e1", "emitido", "0008-0001").await;
    let both = alerts.wait_for(2, WAIT).await;
    let cleared: Value = serde_json::from_slice(&both[1].body).unwrap();
    assert_eq!(cleared["type"], "relay.invoice.unstuck", "{cleared}");
    assert_eq!(cleared["subject"], "0008-0001");
    assert_eq!(cleared["status"], "accepted");
    admin
        .wait_for("/api/invoices?stuck=true", "the stuck list emptied", |l| {
            l["items"].as_array().is_some_and(Vec::is_empty)
        })
        .await;
    assert_eq!(tus_stuck_gauge(&admin).await.as_deref(), Some("0"));
    // Several more looks of the events task later: still told once each.
    let events = admin
        .wait_for(
            "/api/invoices/relay/0008-0001",
            "the relay's own events indexed",
            |i| i["notifications"].as_array().is_some_and(|n| n.len() == 2),
        )
        .await;
    assert_eq!(events["notifications"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        alerts.count(),
        2,
        "stuck once, cleared once, nothing for 0008-0002"
    );
    relay.stop().await;
}

/// The base config with TusFacturas invoices stuck after 300 ms, an
/// alerts subscription for the invoice events (one at a time, so they
/// arrive in order) and the admin listener.
pub fn stuck_config(base: String, alerts: &Target) -> String {
    alerts_config(base, "stuck_after = \"300ms\"", "relay.invoice.*", alerts)
}

/// The base config with `setting` on the TusFacturas source, an `alerts`
/// subscription to the relay's `events` (one at a time, so that they
/// arrive in the order they were stored), and the admin API.
pub fn alerts_config(base: String, setting: &str, events: &str, alerts: &Target) -> String {
    format!(
        "{}{}{}",
        base.replace(
            "[sources.tusfacturas]\n",
            &format!("[sources.tusfacturas]\n{setting}\n")
        ),
        subscription(
            "alerts",
            &alerts.url(),
            &format!("events = [\"{events}\"]\nmax_in_flight = 1")
        ),
        admin_section()
    )
}

/// `webhook_relay_invoices_stuck{source="tusfacturas"}` as scraped, if
/// the series is there.
async fn tus_stuck_gauge(admin: &Admin) -> Option<String> {
    let (_, text) = admin.call("GET", "/metrics", None).await;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("webhook_relay_invoices_stuck{source=\"tusfacturas\"} "))
        .map(str::to_owned)
}

fn stuck_subjects(listed: &Value) -> Vec<String> {
    listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["subject"].as_str().map(str::to_owned))
        .collect()
}

/// (type, subject) of each event the alerts target received, in order.
pub fn told(alerts: &Target) -> Vec<(String, String)> {
    alerts
        .received()
        .iter()
        .map(|r| {
            let event: Value = serde_json::from_slice(&r.body).unwrap();
            (
                event["type"].as_str().unwrap_or_default().to_owned(),
                event["subject"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The stuck check's state is kept in the spool: across a restart an
/// invoice announced stuck is listed and counted at once, not announced
/// again, and its final status after the restart clears it once; the
/// cleared one's mark is gone at the next start, the other's is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_invoice_is_announced_once_across_a_restart_and_cleared_after_it() {
    let alerts = Target::start(vec![]).await;
    let relay = TestRelay::start_edited(|base| stuck_config(base, &alerts)).await;
    post_about(&relay, "r-q1", "encolado", "0009-0001").await;
    alerts.wait_for(1, WAIT).await;
    assert_eq!(
        told(&alerts),
        [("relay.invoice.stuck".to_owned(), "0009-0001".to_owned())]
    );
    let dir = relay.stop().await;

    let relay = TestRelay::start_again(dir, |base| stuck_config(base, &alerts)).await;
    let admin = Admin::of(&relay);
    // Right after the start, before the events task looked at anything.
    let listed = admin.get("/api/invoices?stuck=true").await;
    assert_eq!(stuck_subjects(&listed), ["0009-0001"], "{listed}");
    assert_eq!(tus_stuck_gauge(&admin).await.as_deref(), Some("1"));
    // Another invoice queued after the restart gets stuck too: by then the
    // walk went past the first one's queued notification.
    post_about(&relay, "r-q2", "encolado", "0009-0002").await;
    alerts.wait_for(2, WAIT).await;
    post_about(&relay, "r-e1", "emitido", "0009-0001").await;
    alerts.wait_for(3, WAIT).await;
    admin
        .wait_for("/api/invoices?stuck=true", "the first one cleared", |l| {
            stuck_subjects(l) == ["0009-0002"]
        })
        .await;
    let told_so_far = told(&alerts);
    assert_eq!(
        told_so_far,
        [
            ("relay.invoice.stuck".to_owned(), "0009-0001".to_owned()),
            ("relay.invoice.stuck".to_owned(), "0009-0002".to_owned()),
            ("relay.invoice.unstuck".to_owned(), "0009-0001".to_owned()),
        ],
        "stuck once across the restart, cleared once after it"
    );
    let dir = relay.stop().await;

    let relay = TestRelay::start_again(dir, |base| stuck_config(base, &alerts)).await;
    let admin = Admin::of(&relay);
    let listed = admin.get("/api/invoices?stuck=true").await;
    assert_eq!(stuck_subjects(&listed), ["0009-0002"], "{listed}");
    assert_eq!(tus_stuck_gauge(&admin).await.as_deref(), Some("1"));
    relay.stop().await;
    assert_eq!(told(&alerts), told_so_far, "nothing told again");
}

/// A reload that stops watching a source (here it removes the source)
/// drops its series of `webhook_relay_invoices_stuck`, its stuck invoices
/// from the list, and their marks in the spool, without an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_stops_watching_a_source_drops_its_stuck_invoices() {
    let alerts = Target::start(vec![]).await;
    let relay = TestRelay::start_edited(|base| stuck_config(base, &alerts)).await;
    let admin = Admin::of(&relay);
    post_about(&relay, "u-q1", "encolado", "0010-0001").await;
    alerts.wait_for(1, WAIT).await;
    assert_eq!(tus_stuck_gauge(&admin).await.as_deref(), Some("1"));
    let spool = relay.relay().spool.clone();
    eventually_async(WAIT, "the stuck invoice saved in the spool", async || {
        spool.stuck_marks().await.is_ok_and(|m| m.stuck.len() == 1)
    })
    .await;

    let text = stuck_config(base_config(relay.dir.path()), &alerts);
    let (before, tus_block) = text
        .split_once("[sources.tusfacturas]\n")
        .expect("the base config has the source");
    let (_, after) = tus_block
        .split_once("\n\n")
        .expect("a blank line ends the block");
    let without_tus = webhook_relay::config::Config::parse(&format!("{before}{after}")).unwrap();
    relay.relay().reload(without_tus).await.expect("reloaded");

    admin
        .wait_for("/api/invoices?stuck=true", "the stuck list emptied", |l| {
            stuck_subjects(l).is_empty()
        })
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tus_stuck_gauge(&admin).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the series of a source no longer watched is dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually_async(WAIT, "its marks dropped from the spool", async || {
        spool
            .stuck_marks()
            .await
            .is_ok_and(|m| m.stuck.is_empty() && m.walked.iter().all(|(s, _)| s != "tusfacturas"))
    })
    .await;
    assert_eq!(alerts.count(), 1, "dropped quietly: no unstuck");
    relay.stop().await;
}

/// Retention that removes a stuck invoice removes its mark too (at the
/// stuck check's next look), quietly: the list, the gauge and the spool's
/// marks empty, no `relay.invoice.unstuck`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_that_removes_a_stuck_invoice_removes_its_mark() {
    let alerts = Target::start(vec![]).await;
    let relay = TestRelay::start_edited(|base| {
        stuck_config(base, &alerts).replace(
            "dedup_window = \"72h\"\n",
            "dedup_window = \"2s\"\nretention = \"2s\"\n",
        )
    })
    .await;
    let admin = Admin::of(&relay);
    post_about(&relay, "k-q1", "encolado", "0011-0001").await;
    alerts.wait_for(1, WAIT).await;
    let spool = relay.relay().spool.clone();
    eventually_async(WAIT, "the stuck invoice saved in the spool", async || {
        spool.stuck_marks().await.is_ok_and(|m| m.stuck.len() == 1)
    })
    .await;

    eventually_async(WAIT, "retention to remove the invoice", async || {
        spool
            .invoice_now("tusfacturas", "0011-0001")
            .await
            .is_ok_and(|i| i.is_none())
    })
    .await;
    eventually_async(WAIT, "its mark removed from the spool", async || {
        spool.stuck_marks().await.is_ok_and(|m| m.stuck.is_empty())
    })
    .await;
    let listed = admin.get("/api/invoices?stuck=true").await;
    assert!(stuck_subjects(&listed).is_empty(), "{listed}");
    assert_eq!(tus_stuck_gauge(&admin).await.as_deref(), Some("0"));
    assert_eq!(
        told(&alerts).len(),
        1,
        "forgotten quietly: {:?}",
        told(&alerts)
    );
    relay.stop().await;
}
