//! Self-service subscriptions on a running relay: created through the
//! admin API, they get the next notification signed with the secret the
//! creation answered, and survive a restart; `allowed_targets` and the
//! roles decide who may create what where; a backfill delivers a time
//! range in order; a test event arrives; a rotated secret signs beside the
//! new one until its overlap ends; the built CLI adds and removes one.

use std::time::Duration;

use serde_json::{json, Value};
use standardwebhooks::Webhook;
use webhook_relay::app::Relay;
use webhook_relay::config::Config;

use crate::admin::{cli, cli_config, post_tus, Admin, ADMIN_TOKEN, VIEWER_TOKEN};
use crate::helpers::*;

/// The longest an awaited condition may take: generous, since a loaded
/// machine is slow and a condition met returns at once.
const WAIT: Duration = Duration::from_secs(30);
const ERP_TOKEN: &str = "erp-team-token-0123456789";
const SHOP_TOKEN: &str = "shop-team-token-0123456789";

/// Loopback targets allowed; an admin, a viewer and two subscriber teams.
fn admin_section() -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
allowed_targets = ["127.0.0.1"]
tokens = [
  {{ name = "ops", token = "{ADMIN_TOKEN}", role = "admin" }},
  {{ name = "grafana", token = "{VIEWER_TOKEN}", role = "viewer" }},
  {{ name = "erp-team", token = "{ERP_TOKEN}", role = "subscriber" }},
  {{ name = "shop-team", token = "{SHOP_TOKEN}", role = "subscriber" }},
]
"#
    )
}

/// The relay.toml the tests run: `billing` from the file, to `billing_url`.
fn config_text(dir: &std::path::Path, billing_url: &str) -> String {
    format!(
        "{}{}{}",
        base_config(dir),
        subscription("billing", billing_url, ""),
        admin_section()
    )
}

async fn start(billing_url: &str) -> (TestRelay, Admin) {
    let relay = TestRelay::start_edited(|base| {
        format!(
            "{base}{}{}",
            subscription("billing", billing_url, ""),
            admin_section()
        )
    })
    .await;
    let admin = Admin::of(&relay);
    (relay, admin)
}

/// Sends `body` as JSON with `token`; the status and the answer.
async fn send(
    admin: &Admin,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = admin
        .client
        .request(method, format!("{}{path}", admin.base))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("admin listener answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Creates a subscription as `token`; its secret.
async fn create(admin: &Admin, token: &str, request: Value) -> String {
    let (status, created) = send(
        admin,
        reqwest::Method::POST,
        "/api/subscriptions",
        token,
        Some(request),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("the secret, once");
    assert!(secret.starts_with("whsec_"), "{secret}");
    secret.to_owned()
}

/// A subscription to `url` that retries within milliseconds, one attempt
/// at a time (so arrival order is sending order).
fn erp_request(name: &str, url: &str) -> Value {
    json!({
        "name": name,
        "url": url,
        "events": ["facturacion.*"],
        "schedule": ["50ms", "100ms"],
        "jitter": 0.0,
        "max_in_flight": 1,
    })
}

fn verifies(secret: &str, request: &Received) -> bool {
    Webhook::new(secret)
        .expect("a valid whsec_ secret")
        .verify(&request.body, &request.headers)
        .is_ok()
}

fn webhook_id(request: &Received) -> String {
    request.headers["webhook-id"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_created_subscription_gets_the_next_notification_signed_with_its_secret_and_survives_a_restart(
) {
    let billing = Target::start(Vec::new()).await;
    let erp = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let secret = create(&admin, ERP_TOKEN, erp_request("erp", &erp.url())).await;

    let listed = admin.get("/api/subscriptions").await;
    let item = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "erp")
        .expect("listed beside relay.toml's")
        .clone();
    assert_eq!(
        (&item["origin"], &item["created_by"]),
        (&json!("api"), &json!("erp-team"))
    );
    assert!(
        !listed.to_string().contains(&secret) && item.get("secret").is_none(),
        "never listed: {listed}"
    );

    let id = post_tus(&relay, "s-1", "0101-0001").await;
    let received = erp.wait_for(1, WAIT).await;
    assert_eq!(webhook_id(&received[0]), id);
    assert!(
        verifies(&secret, &received[0]),
        "signed with the new secret"
    );
    assert!(!verifies(SECRET, &received[0]), "not with relay.toml's");
    billing.wait_for(1, WAIT).await;

    let audit = admin.get("/api/audit").await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "subscription.create"
                && r["actor"] == "erp-team"
                && r["target"] == "erp"),
        "{audit}"
    );

    // Stopped and started on the same spool, it is still there and served.
    let dir = relay.stop().await;
    let config = Config::parse(&config_text(dir.path(), &billing.url())).unwrap();
    let relay = TestRelay {
        relay: Some(Relay::start(config).await.expect("relay starts again")),
        client: provider_client(&dir.path().join("tls/self-signed.crt")),
        dir,
    };
    let admin = Admin::of(&relay);
    let listed = admin.get("/api/subscriptions").await;
    assert!(listed.to_string().contains("\"erp-team\""), "{listed}");
    let id = post_tus(&relay, "s-2", "0101-0002").await;
    let received = erp.wait_for(2, WAIT).await;
    assert_eq!(webhook_id(&received[1]), id);
    assert!(verifies(&secret, &received[1]));
    relay.stop().await;
}

#[tokio::test]
async fn allowed_targets_and_roles_decide_who_creates_what_where() {
    let billing = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    use reqwest::Method;
    let subs = "/api/subscriptions";

    // Outside allowed_targets: 422, naming the list.
    let (status, body) = send(
        &admin,
        Method::POST,
        subs,
        ADMIN_TOKEN,
        Some(erp_request("out", "https://invoices.example.com/in")),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("allowed_targets"),
        "{body}"
    );
    // A bad setting: 422 in the config's words; a viewer: 403.
    let mut bad = erp_request("bad", &billing.url());
    bad["rate"] = json!("fast");
    let (status, body) = send(&admin, Method::POST, subs, ERP_TOKEN, Some(bad)).await;
    assert_eq!(status, 422, "{body}");
    // A URL taken only after a repair (spaces trimmed, a newline dropped)
    // or with an empty label in its host: 422 saying which, not stored.
    for (url, said) in [
        (
            format!(" {}", billing.url()),
            "spaces or control characters",
        ),
        (
            format!("{}\n", billing.url()),
            "spaces or control characters",
        ),
        ("http://x..apps.test/in".to_owned(), "empty label"),
    ] {
        let (status, body) = send(
            &admin,
            Method::POST,
            subs,
            ADMIN_TOKEN,
            Some(erp_request("spaced", &url)),
        )
        .await;
        assert_eq!(status, 422, "{url:?}: {body}");
        assert!(
            body["detail"].as_str().unwrap_or("").contains(said),
            "{url:?}: {body}"
        );
    }
    let (status, _) = send(
        &admin,
        Method::POST,
        subs,
        VIEWER_TOKEN,
        Some(erp_request("v", &billing.url())),
    )
    .await;
    assert_eq!(status, 403, "a viewer creates nothing");

    // relay.toml's subscription is the file's.
    let (status, body) = send(
        &admin,
        Method::POST,
        subs,
        ADMIN_TOKEN,
        Some(erp_request("billing", &billing.url())),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("relay.toml"),
        "{body}"
    );
    for (method, path) in [
        (Method::DELETE, "/api/subscriptions/billing"),
        (Method::POST, "/api/subscriptions/billing/rotate-secret"),
    ] {
        let (status, body) = send(&admin, method, path, ADMIN_TOKEN, None).await;
        assert_eq!(status, 409, "{path}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("relay.toml"),
            "{body}"
        );
    }

    // A subscriber manages its own, not the other team's nor the file's.
    // Its target refuses connections, and it retries only after an hour.
    let dead_end = format!("http://127.0.0.1:{}/in", closed_port().await);
    let mut waits = erp_request("erp", &dead_end);
    waits["schedule"] = json!(["1h"]);
    create(&admin, ERP_TOKEN, waits).await;
    // Each team lists only what it created; a viewer sees them all.
    for (token, expected) in [
        (ERP_TOKEN, vec!["erp"]),
        (SHOP_TOKEN, vec![]),
        (VIEWER_TOKEN, vec!["billing", "erp"]),
        (ADMIN_TOKEN, vec!["billing", "erp"]),
    ] {
        let (status, listed) = send(&admin, Method::GET, subs, token, None).await;
        assert_eq!(status, 200, "{listed}");
        let mut names: Vec<&str> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        assert_eq!(names, expected, "listed for {token}: {listed}");
    }
    let (status, _) = send(
        &admin,
        Method::POST,
        subs,
        SHOP_TOKEN,
        Some(erp_request("erp", &billing.url())),
    )
    .await;
    assert_eq!(status, 409, "the name is taken");
    for (method, path) in [
        (Method::DELETE, "/api/subscriptions/erp"),
        (Method::POST, "/api/subscriptions/erp/pause"),
        (Method::POST, "/api/subscriptions/erp/test"),
        (Method::POST, "/api/subscriptions/erp/rotate-secret"),
        (Method::POST, "/api/subscriptions/erp/backfill?since=1h"),
        (Method::POST, "/api/subscriptions/billing/pause"),
    ] {
        let (status, body) = send(&admin, method.clone(), path, SHOP_TOKEN, None).await;
        assert_eq!(status, 404, "{method} {path} by another team: {body}");
    }
    let (status, body) = send(
        &admin,
        Method::POST,
        "/api/subscriptions/erp/pause",
        ERP_TOKEN,
        None,
    )
    .await;
    assert_eq!((status, &body["paused"]), (200, &json!(true)), "{body}");
    send(
        &admin,
        Method::POST,
        "/api/subscriptions/erp/resume",
        ERP_TOKEN,
        None,
    )
    .await;

    // A delivery waits for its retry: deleting it needs purge.
    let id = post_tus(&relay, "r-1", "0102-0001").await;
    let erp_attempts = |shown: &Value| {
        shown["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["subscription"] == "erp")
            .map_or(0, |d| d["attempts"].as_array().map_or(0, Vec::len))
    };
    let shown = format!("/api/notifications/{id}");
    admin
        .wait_for(&shown, "the first attempt recorded", |b| {
            erp_attempts(b) > 0
        })
        .await;
    let (status, body) = send(
        &admin,
        Method::DELETE,
        "/api/subscriptions/erp",
        ERP_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("purge"), "{body}");
    let (status, body) = send(
        &admin,
        Method::DELETE,
        "/api/subscriptions/erp?purge=true",
        ERP_TOKEN,
        None,
    )
    .await;
    assert_eq!((status, &body["purged"]), (200, &json!(1)), "{body}");
    let listed = admin.get(subs).await;
    assert!(!listed.to_string().contains("\"erp\""), "{listed}");
    let audit = admin.get("/api/audit").await.to_string();
    for action in [
        "subscription.create",
        "subscription.pause",
        "subscription.delete",
        "subscription.delete_purged",
    ] {
        assert!(audit.contains(action), "{action} in {audit}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_backfill_delivers_its_range_in_order_and_a_test_event_arrives() {
    let billing = Target::start(Vec::new()).await;
    let late = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(post_tus(&relay, &format!("b-{i}"), &format!("0103-000{i}")).await);
        // Each in its own millisecond, so the range has a boundary between them.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let received_at = |body: &Value| body["received_at"].as_str().unwrap().to_owned();
    let first = received_at(&admin.get(&format!("/api/notifications/{}", ids[0])).await);
    let third = received_at(&admin.get(&format!("/api/notifications/{}", ids[2])).await);
    let secret = create(&admin, ERP_TOKEN, erp_request("late", &late.url())).await;

    // The range is [first, third): the first two, counted, then given.
    let range = format!("since={}&until={}", urlencode(&first), urlencode(&third));
    let path = format!("/api/subscriptions/late/backfill?{range}&dry_run=true");
    let (status, counted) = send(&admin, reqwest::Method::POST, &path, ERP_TOKEN, None).await;
    assert_eq!(
        (status, &counted["notifications"]),
        (200, &json!(2)),
        "{counted}"
    );
    assert_eq!(late.count(), 0, "a dry run changes nothing");
    let path = format!("/api/subscriptions/late/backfill?{range}");
    let (status, done) = send(&admin, reqwest::Method::POST, &path, ERP_TOKEN, None).await;
    assert_eq!((status, &done["added"]), (200, &json!(2)), "{done}");
    let received = late.wait_for(2, WAIT).await;
    let order: Vec<String> = received.iter().map(webhook_id).collect();
    assert_eq!(order, ids[..2], "in the order they were received");
    assert!(received.iter().all(|r| verifies(&secret, r)));
    // Given once: the same range again adds nothing.
    let (_, again) = send(&admin, reqwest::Method::POST, &path, ERP_TOKEN, None).await;
    assert_eq!(again["added"], 0, "{again}");

    // A test event goes through the spool to this subscription only.
    let (status, test) = send(
        &admin,
        reqwest::Method::POST,
        "/api/subscriptions/late/test",
        ERP_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{test}");
    let test_id = test["id"].as_str().unwrap().to_owned();
    let received = late.wait_for(3, WAIT).await;
    let arrived = &received[2];
    assert_eq!(webhook_id(arrived), test_id);
    assert_eq!(arrived.headers["x-relay-event"], "relay.test");
    assert!(verifies(&secret, arrived));
    let shown = admin.get(&format!("/api/notifications/{test_id}")).await;
    let went_to: Vec<&str> = shown["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["subscription"].as_str().unwrap())
        .collect();
    assert_eq!(went_to, ["late"], "{shown}");
    let audit = admin.get("/api/audit").await.to_string();
    assert!(audit.contains("subscription.backfill") && audit.contains("subscription.test"));
    relay.stop().await;
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_until_its_overlap_ends() {
    let billing = Target::start(Vec::new()).await;
    let erp = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let first = create(&admin, ERP_TOKEN, erp_request("erp", &erp.url())).await;
    let rotate = |overlap: &'static str| {
        let admin = &admin;
        async move {
            let path = format!("/api/subscriptions/erp/rotate-secret?overlap={overlap}");
            let (status, rotated) =
                send(admin, reqwest::Method::POST, &path, ERP_TOKEN, None).await;
            assert_eq!(status, 200, "{rotated}");
            rotated["secret"].as_str().unwrap().to_owned()
        }
    };

    // During the overlap: signed with both, either verifies.
    let second = rotate("1h").await;
    post_tus(&relay, "k-1", "0104-0001").await;
    let received = erp.wait_for(1, WAIT).await;
    assert!(verifies(&second, &received[0]), "the new secret");
    assert!(
        verifies(&first, &received[0]),
        "the old one, during the overlap"
    );
    let signatures = received[0].headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");

    // A millisecond overlap is over before the next delivery: only the new.
    let third = rotate("1ms").await;
    post_tus(&relay, "k-2", "0104-0002").await;
    let received = erp.wait_for(2, WAIT).await;
    assert!(verifies(&third, &received[1]));
    assert!(!verifies(&second, &received[1]), "the overlap has ended");
    assert!(!verifies(&first, &received[1]));
    let listed = admin.get("/api/subscriptions").await.to_string();
    assert!(
        !listed.contains(&third) && !listed.contains(&second),
        "{listed}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_cli_adds_and_removes_a_subscription() {
    let billing = Target::start(Vec::new()).await;
    let erp = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let listen = relay.relay().admin_listen.clone().unwrap();
    let config = relay.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        config_text(relay.dir.path(), &billing.url())
            .replace("127.0.0.1:0\"\nallowed", &format!("{listen}\"\nallowed")),
    )
    .unwrap();
    let run =
        |args: &[&str], token: &str| tokio::task::block_in_place(|| cli(&config, args, token));

    let url = erp.url();
    let add = [
        "subscriptions",
        "add",
        "erp",
        "--url",
        &url,
        "--event",
        "facturacion.*",
        "--max-in-flight",
        "1",
    ];
    let (code, out, err) = run(&add, ERP_TOKEN);
    assert_eq!(code, 0, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("the secret is printed: {out}"))
        .to_owned();
    let id = post_tus(&relay, "c-1", "0105-0001").await;
    let received = erp.wait_for(1, WAIT).await;
    assert_eq!(webhook_id(&received[0]), id);
    assert!(
        verifies(&secret, &received[0]),
        "the printed secret verifies"
    );

    let (code, out, _) = run(&["subscriptions", "ls"], ADMIN_TOKEN);
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with("erp "))
        .unwrap_or_default();
    assert!(
        row.contains("api (erp-team)") && row.contains("active"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("billing ") && l.contains("relay.toml")),
        "{out}"
    );
    // A team's listing shows its own, not the file's target.
    let (code, out, err) = run(&["subscriptions", "ls", "--json"], ERP_TOKEN);
    assert_eq!(code, 0, "{err}");
    let own: Vec<Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let names: Vec<&str> = own.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["erp"], "{out}");
    // Its counts come with it (a subscriber may not read /api/stats).
    assert!(own[0]["deliveries"]["waiting"].is_u64(), "{out}");
    let (code, out, err) = run(&["subscriptions", "ls"], ERP_TOKEN);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("erp ")), "{out}");
    assert!(!out.contains("billing"), "{out}");
    assert!(!out.contains(&billing.url()), "{out}");
    let (code, out, err) = run(&["subscriptions", "test", "erp", "--json"], ERP_TOKEN);
    assert_eq!(code, 0, "{err}");
    let test: Value = serde_json::from_str(out.trim()).unwrap();
    erp.wait_for(2, WAIT).await;
    assert_eq!(webhook_id(&erp.received()[1]), test["id"].as_str().unwrap());

    let (code, _, err) = run(&["subscriptions", "rm", "erp", "--purge"], ERP_TOKEN);
    assert_eq!(code, 64, "--purge needs --yes: {err}");
    let (code, _, err) = run(&["subscriptions", "rm", "erp"], SHOP_TOKEN);
    assert_eq!(code, 1, "another team's, like a name nobody holds: {err}");
    assert!(err.contains("no subscription \"erp\""), "{err}");
    let (code, out, err) = run(&["subscriptions", "rm", "erp", "--json"], ERP_TOKEN);
    assert_eq!(code, 0, "{err}");
    let removed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(removed["deleted"], true);
    let listed = admin.get("/api/subscriptions").await;
    assert!(!listed.to_string().contains("\"erp\""), "{listed}");
    relay.stop().await;
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A reload (what SIGHUP runs) keeps the API's subscriptions in effect,
/// and a relay.toml that takes one of their names is refused, changing
/// nothing.
#[tokio::test]
async fn a_reload_keeps_api_subscriptions_and_refuses_a_file_that_takes_their_name() {
    let billing = Target::start(Vec::new()).await;
    let erp = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let secret = create(&admin, ERP_TOKEN, erp_request("erp", &erp.url())).await;
    let same = Config::parse(&config_text(relay.dir.path(), &billing.url())).unwrap();
    relay
        .relay()
        .reload(same)
        .await
        .expect("an unchanged file reloads");
    let id = post_tus(&relay, "l-1", "0106-0001").await;
    let received = erp.wait_for(1, WAIT).await;
    assert_eq!(webhook_id(&received[0]), id);
    assert!(
        verifies(&secret, &received[0]),
        "the same subscription, same secret"
    );

    let clash = format!(
        "{}{}",
        config_text(relay.dir.path(), &billing.url()),
        subscription("erp", &billing.url(), "")
    );
    let err = relay
        .relay()
        .reload(Config::parse(&clash).unwrap())
        .await
        .expect_err("a file taking an API name is refused");
    assert!(err.to_string().contains("\"erp\""), "{err}");
    let id = post_tus(&relay, "l-2", "0106-0002").await;
    let received = erp.wait_for(2, WAIT).await;
    assert_eq!(webhook_id(&received[1]), id, "still the API's erp");
    relay.stop().await;
}

/// A stopped relay's spool commands know the API's subscriptions: their
/// waiting deliveries are no orphans to `spool check`, and cannot be
/// purged as orphans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_spool_takes_api_subscriptions_for_subscriptions_not_orphans() {
    let billing = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let dead_end = format!("http://127.0.0.1:{}/in", closed_port().await);
    let mut waits = erp_request("erp", &dead_end);
    waits["schedule"] = json!(["1h"]);
    create(&admin, ERP_TOKEN, waits).await;
    post_tus(&relay, "o-1", "0107-0001").await;
    let stats = admin
        .wait_for("/api/stats", "a delivery waiting for erp", |s| {
            s["subscriptions"]["erp"]["waiting"] == 1
        })
        .await;
    assert_eq!(stats["spool"]["orphans"], json!({}), "{stats}");
    let dir = relay.stop().await;
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, config_text(dir.path(), &billing.url())).unwrap();

    let out = tokio::task::block_in_place(|| relay_cli(&["spool", "check"], &config, &[]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("orphans:"), "{text}");
    let out =
        tokio::task::block_in_place(|| relay_cli(&["spool", "purge-orphans"], &config, &["erp"]));
    assert!(!out.status.success(), "erp's deliveries are not orphans");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("configured"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `backfill?current=true`: of each invoice, the newest notification that
/// tells where it stands (not a superseded late resend), once, in receipt
/// order, for an app that joins late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_backfill_gives_each_invoice_its_current_notification_once() {
    let billing = Target::start(Vec::new()).await;
    let late = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let post = |hook: &'static str, evento: &'static str, reference: &'static str| {
        let body = tusfacturas(hook, evento, 1).replace("\"17032\"", &format!("\"{reference}\""));
        let relay = &relay;
        async move {
            let (status, json) = relay
                .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), body)
                .await;
            assert_eq!(status, 200, "{json}");
            json["id"].as_str().unwrap().to_owned()
        }
    };
    post("cur-1", "encolado", "0104-0001").await;
    let issued = post("cur-2", "emitido", "0104-0001").await;
    // A late resend of the queued state: superseded, never the current one.
    post("cur-3", "encolado", "0104-0001").await;
    let other = post("cur-4", "encolado", "0104-0002").await;
    create(&admin, ERP_TOKEN, erp_request("late", &late.url())).await;

    let path = "/api/subscriptions/late/backfill?current=true&dry_run=true";
    let (status, counted) = send(&admin, reqwest::Method::POST, path, ERP_TOKEN, None).await;
    assert_eq!(
        (status, &counted["notifications"]),
        (200, &json!(2)),
        "{counted}"
    );
    assert_eq!(late.count(), 0, "a dry run changes nothing");
    let path = "/api/subscriptions/late/backfill?current=true";
    let (status, done) = send(&admin, reqwest::Method::POST, path, ERP_TOKEN, None).await;
    assert_eq!((status, &done["added"]), (200, &json!(2)), "{done}");
    let received = late.wait_for(2, WAIT).await;
    let order: Vec<String> = received.iter().map(webhook_id).collect();
    assert_eq!(order, [issued, other], "one each, in receipt order");
    let (_, again) = send(&admin, reqwest::Method::POST, path, ERP_TOKEN, None).await;
    assert_eq!(again["added"], 0, "given once: {again}");
    let audit = admin.get("/api/audit").await;
    let backfill = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "subscription.backfill")
        .expect("the backfill audited");
    assert_eq!(backfill["detail"]["range"]["current"], true, "{backfill}");
    let (status, _) = send(
        &admin,
        reqwest::Method::POST,
        "/api/subscriptions/late/backfill",
        ERP_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 400, "neither since nor current");

    // The built CLI: --current in place of --since, and still a dry run or --yes.
    let config_file = crate::admin::cli_config(&relay);
    let config = config_file.as_path();
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            config,
            &[
                "subscriptions",
                "backfill",
                "late",
                "--current",
                "--dry-run",
            ],
            ADMIN_TOKEN,
        )
    });
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("would give late 0 notifications (each invoice's current one)"),
        "{out}"
    );
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["subscriptions", "backfill", "late", "--yes"],
            ADMIN_TOKEN,
        )
    });
    assert_ne!(code, 0, "neither --since nor --current: {err}");
    relay.stop().await;
}

/// `subscriptions add --status`: the built CLI creates a subscription
/// that carries the statuses, and a notification of another status is
/// not fanned out to it (the file's subscription gets both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_cli_adds_a_subscription_that_takes_only_some_statuses() {
    let billing = Target::start(Vec::new()).await;
    let decided = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let config = cli_config(&relay);
    let url = decided.url();
    let add = [
        "subscriptions",
        "add",
        "decided",
        "--url",
        &url,
        "--status",
        "accepted",
        "--status",
        "rejected",
        "--json",
    ];
    let (code, out, err) = tokio::task::block_in_place(|| cli(&config, &add, ERP_TOKEN));
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(
        created["settings"]["statuses"],
        json!(["accepted", "rejected"]),
        "{created}"
    );
    let listed = admin.get("/api/subscriptions").await;
    let kept = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "decided")
        .unwrap_or_else(|| panic!("listed: {listed}"));
    assert_eq!(
        kept["settings"]["statuses"],
        json!(["accepted", "rejected"])
    );

    let (status, json) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            tusfacturas("st-q", "encolado", 1),
        )
        .await;
    assert_eq!(status, 200, "{json}");
    let queued = json["id"].as_str().unwrap().to_owned();
    let accepted = post_tus(&relay, "st-a", "17032").await;
    let got = decided.wait_for(1, WAIT).await;
    assert_eq!(webhook_id(&got[0]), accepted);
    assert_eq!(got[0].headers["x-relay-status"], "accepted");
    // Both reached the file's subscription; the queued one has no
    // delivery to "decided" at all (fan-out decides at spool time).
    billing.wait_for(2, WAIT).await;
    let shown = admin.get(&format!("/api/notifications/{queued}")).await;
    let to: Vec<&str> = shown["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["subscription"].as_str())
        .collect();
    assert_eq!(to, ["billing"], "{shown}");
    assert_eq!(decided.count(), 1);
    relay.stop().await;
}

/// A subscriber cannot tell another team's subscription, or relay.toml's,
/// from a name nobody holds: creating any taken name gets one answer, a
/// request refused for another reason is refused alike whatever its name,
/// and managing a name it does not hold is a 404 like a free name. An
/// admin still gets precise answers.
#[tokio::test]
async fn a_subscriber_gets_one_answer_for_every_name_it_does_not_hold() {
    use reqwest::Method;
    let billing = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let subs = "/api/subscriptions";
    create(&admin, ERP_TOKEN, erp_request("erp", &billing.url())).await;
    // An answer with the name it was about taken out.
    let unnamed =
        |name: &str, (status, body): (u16, Value)| (status, body.to_string().replace(name, "NAME"));

    let mut creates = Vec::new();
    for name in ["erp", "billing"] {
        let request = erp_request(name, &billing.url());
        let answer = send(&admin, Method::POST, subs, SHOP_TOKEN, Some(request)).await;
        creates.push(unnamed(name, answer));
    }
    assert_eq!(creates[0].0, 409, "{creates:?}");
    assert_eq!(
        creates[0], creates[1],
        "another team's name and relay.toml's"
    );
    assert!(
        !creates[0].1.contains("exists") && !creates[0].1.contains("relay.toml"),
        "{creates:?}"
    );
    let mut refused = Vec::new();
    for name in ["erp", "free-name"] {
        let request = erp_request(name, "https://invoices.example.com/in");
        let answer = send(&admin, Method::POST, subs, SHOP_TOKEN, Some(request)).await;
        refused.push(unnamed(name, answer));
    }
    assert_eq!(refused[0].0, 422, "{refused:?}");
    assert_eq!(refused[0], refused[1], "refused alike, taken name or free");

    for (method, action) in [
        (Method::DELETE, ""),
        (Method::POST, "/pause"),
        (Method::POST, "/resume"),
        (Method::POST, "/test"),
        (Method::POST, "/rotate-secret"),
        (Method::POST, "/backfill?since=1h"),
    ] {
        let mut answers = Vec::new();
        for name in ["erp", "billing", "nobody"] {
            let path = format!("{subs}/{name}{action}");
            let answer = send(&admin, method.clone(), &path, SHOP_TOKEN, None).await;
            answers.push(unnamed(name, answer));
        }
        assert_eq!(answers[0].0, 404, "{method} {action}: {answers:?}");
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "{method} {action}: {answers:?}"
        );
    }

    // An admin is told which.
    let (status, body) = send(
        &admin,
        Method::POST,
        subs,
        ADMIN_TOKEN,
        Some(erp_request("erp", &billing.url())),
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        body["detail"].as_str().unwrap().contains("exists already"),
        "{body}"
    );
    let (status, body) = send(
        &admin,
        Method::POST,
        subs,
        ADMIN_TOKEN,
        Some(erp_request("billing", &billing.url())),
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        body["detail"].as_str().unwrap().contains("relay.toml"),
        "{body}"
    );
    let (status, _) = send(
        &admin,
        Method::POST,
        "/api/subscriptions/nobody/pause",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 404);
    relay.stop().await;
}

/// A caller that lost the answer to its create (the one time the secret
/// is shown: a crash, a timeout) rotates the secret at once (overlap 0s)
/// and verifies the next delivery with it; both changes are audited.
#[tokio::test]
async fn a_caller_that_lost_its_secret_rotates_it_and_the_new_one_verifies_deliveries() {
    let billing = Target::start(Vec::new()).await;
    let erp = Target::start(Vec::new()).await;
    let (relay, admin) = start(&billing.url()).await;
    let lost = create(&admin, ERP_TOKEN, erp_request("erp", &erp.url())).await;
    let (status, rotated) = send(
        &admin,
        reqwest::Method::POST,
        "/api/subscriptions/erp/rotate-secret?overlap=0s",
        ERP_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let secret = rotated["secret"].as_str().unwrap();
    post_tus(&relay, "lost-1", "0107-0001").await;
    let received = erp.wait_for(1, WAIT).await;
    assert!(verifies(secret, &received[0]), "the rotated secret");
    assert!(!verifies(&lost, &received[0]), "the lost one signs no more");
    let audit = admin.get("/api/audit").await;
    let actions: Vec<(&str, &str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("erp-team", "subscription.rotate_secret", "erp"),
            ("erp-team", "subscription.create", "erp"),
        ],
        "{audit}"
    );
    relay.stop().await;
}

/// Narrowing `[admin] allowed_targets` pauses the API subscriptions whose
/// target it no longer allows (never deletes them), on the built binary:
/// at start-up and on SIGHUP or `POST /api/reload`, each named in a WARN
/// (its target without the query) and in the reload's answer, marked on
/// the page, refused a resume; widened again, a resume delivers what
/// waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_allowed_targets_pauses_the_api_subscriptions_it_no_longer_allows() {
    use crate::process::{write_config, RelayProcess};
    use crate::reload::{hup, post};
    init();
    let dir = tempfile::tempdir().unwrap();
    let billing = Target::start(Vec::new()).await;
    let erp = Target::start(Vec::new()).await;
    let allowing = subscription("billing", &billing.url(), "") + &admin_section();
    let narrowed = allowing.replace(r#"allowed_targets = ["127.0.0.1"]"#, "allowed_targets = []");
    assert_ne!(allowing, narrowed);
    let config = write_config(dir.path(), &allowing);
    let relay = RelayProcess::spawn(&config).await;
    let provider = provider_client(&dir.path().join("tls/self-signed.crt"));
    let hooks = format!("/hooks/tusfacturas/{TUS_TOKEN}");
    let admin = Admin {
        base: relay.admin_url(),
        client: reqwest::Client::new(),
    };
    let erp_url = format!("{}?apikey=erp-key-0123", erp.url());
    create(&admin, ERP_TOKEN, erp_request("erp", &erp_url)).await;
    assert_eq!(post(&provider, &relay, &hooks, "n-1").await, 200);
    erp.wait_for(1, WAIT).await;
    relay.sigterm().await;

    // Narrowed while it was stopped: paused at start-up, and said so.
    write_config(dir.path(), &narrowed);
    let relay = RelayProcess::spawn(&config).await;
    let admin = Admin {
        base: relay.admin_url(),
        client: reqwest::Client::new(),
    };
    let warned = |relay: &RelayProcess| {
        relay
            .logged("subscription paused: its target is no longer among")
            .into_iter()
            .filter(|line| line.contains("\"WARN\"") && line.contains("\"erp\""))
            .map(|line| {
                assert!(
                    line.contains(&format!("http://{}/hook", erp.addr)) && !line.contains("apikey"),
                    "the target without its query: {line}"
                );
            })
            .count()
    };
    assert_eq!(warned(&relay), 1, "{}", relay.log_tail(20));
    let erp_item = |listed: Value| {
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "erp")
            .cloned()
            .expect("kept, not deleted")
    };
    let item = erp_item(admin.get("/api/subscriptions").await);
    assert_eq!(
        (&item["paused"], &item["target_allowed"]),
        (&json!(true), &json!(false)),
        "{item}"
    );
    assert_eq!(post(&provider, &relay, &hooks, "n-2").await, 200);
    billing.wait_for(2, WAIT).await;
    // Billing has its delivery: erp's was due as early, and stays held (a
    // wait for something that must not happen: time, not a condition).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(erp.count(), 1, "nothing sent to a target no longer allowed");
    let item = erp_item(admin.get("/api/subscriptions").await);
    assert_eq!(item["deliveries"]["waiting"], 1, "kept for later: {item}");
    let page = admin.page_as("/", ADMIN_TOKEN).await;
    assert!(page.contains("paused: target no longer allowed"), "{page}");
    for token in [ERP_TOKEN, ADMIN_TOKEN] {
        let (status, body) = send(
            &admin,
            reqwest::Method::POST,
            "/api/subscriptions/erp/resume",
            token,
            None,
        )
        .await;
        assert_eq!(status, 409, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("allowed_targets") && !detail.contains("apikey"),
            "{body}"
        );
    }
    let audit = admin.get("/api/audit").await.to_string();
    assert!(
        audit.contains(r#""action":"subscription.pause","actor":"relay""#)
            || audit.contains(r#""actor":"relay","action":"subscription.pause""#),
        "{audit}"
    );

    // Widened again (SIGHUP): resumed by a person, it delivers what waited.
    write_config(dir.path(), &allowing);
    hup(&relay);
    eventually(WAIT, "the reload", || {
        !relay.logged("config reloaded").is_empty()
    })
    .await;
    let (status, body) = send(
        &admin,
        reqwest::Method::POST,
        "/api/subscriptions/erp/resume",
        ERP_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    erp.wait_for(2, WAIT).await;

    // Narrowed by SIGHUP: paused at once, in the log and the reload's line.
    write_config(dir.path(), &narrowed);
    hup(&relay);
    eventually(WAIT, "the second reload", || {
        relay.logged("config reloaded").len() >= 2
    })
    .await;
    assert_eq!(warned(&relay), 2);
    let reloaded = relay.logged("config reloaded").pop().unwrap();
    assert!(reloaded.contains("erp"), "{reloaded}");
    assert_eq!(
        erp_item(admin.get("/api/subscriptions").await)["paused"],
        true
    );
    // And the admin API's reload answers their names.
    let (status, report) = send(
        &admin,
        reqwest::Method::POST,
        "/api/reload",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["subscriptions_paused_target_not_allowed"],
        json!(["erp"]),
        "{report}"
    );
    relay.sigterm().await;
}
