//! The admin listener on a running relay: tokens and roles, health,
//! metrics, the notification list with its filters and pages, a
//! notification's history, replays one by one and by filter, the quarantine.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// The longest an awaited condition may take: generous, since a loaded
/// machine is slow and a condition met returns at once.
const WAIT: Duration = Duration::from_secs(30);
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
pub const VIEWER_TOKEN: &str = "viewer-token-0123456789";
pub const SUBSCRIBER_TOKEN: &str = "subscriber-token-0123456789";

/// The `[admin]` section the tests use: loopback, one admin, one viewer,
/// one subscriber.
pub fn admin_section() -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
tokens = [
  {{ name = "ops", token = "{ADMIN_TOKEN}", role = "admin" }},
  {{ name = "grafana", token = "{VIEWER_TOKEN}", role = "viewer" }},
  {{ name = "erp-team", token = "{SUBSCRIBER_TOKEN}", role = "subscriber" }},
]
"#
    )
}

pub struct Admin {
    pub base: String,
    pub client: reqwest::Client,
}

impl Admin {
    pub fn of(relay: &TestRelay) -> Admin {
        let listen = relay
            .relay()
            .admin_listen
            .clone()
            .expect("the admin listener is configured");
        Admin {
            base: format!("http://{listen}"),
            client: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("admin listener answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A page of the admin UI as a browser logged in with `token` gets it.
    pub async fn page_as(&self, path: &str, token: &str) -> String {
        let (status, page) = self.log_in_page(token).await.get(path).await;
        assert_eq!(status, 200, "GET {path} as a page: {page}");
        page
    }

    /// Logs in to the page as a browser would (the form, from the page's
    /// own origin) and keeps the session's cookie.
    pub async fn log_in_page(&self, token: &str) -> PageSession {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        let response = client
            .post(format!("{}/login", self.base))
            .header("origin", &self.base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .expect("admin listener answers");
        assert_eq!(response.status(), 303, "the login form is taken");
        let set_cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        PageSession {
            base: self.base.clone(),
            client,
            set_cookie,
            cookie,
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Polls `path` until its answer satisfies `done`; returns that answer.
    pub async fn wait_for(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = self.get(path).await;
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last answer: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A logged-in browser's session on the page, played with reqwest (no
/// redirects followed: the page's 303s are its answers).
pub struct PageSession {
    base: String,
    client: reqwest::Client,
    /// The login's `Set-Cookie`, attributes and all.
    pub set_cookie: String,
    /// `name=value`, as the browser sends it back.
    pub cookie: String,
}

impl PageSession {
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("admin listener answers");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The CSRF token of the session's forms, read from one of its pages.
    pub async fn csrf(&self) -> String {
        let (status, page) = self.get("/").await;
        assert_eq!(status, 200, "{page}");
        let (_, rest) = page
            .split_once("name=csrf value=\"")
            .unwrap_or_else(|| panic!("the page's forms carry a CSRF token: {page}"));
        rest.split('"').next().unwrap().to_owned()
    }

    /// A form's POST with the session's cookie, sent with `origin` (none
    /// when None) and the form field `csrf` (none when None).
    pub async fn post(&self, path: &str, origin: Option<&str>, csrf: Option<&str>) -> u16 {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let mut form = form_urlencoded::Serializer::new(String::new());
        if let Some(csrf) = csrf {
            form.append_pair("csrf", csrf);
        }
        let response = request
            .body(form.finish())
            .send()
            .await
            .expect("admin listener answers");
        response.status().as_u16()
    }

    /// The same, from the page itself with its token.
    pub async fn press(&self, path: &str) -> reqwest::Response {
        let csrf = self.csrf().await;
        self.client
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("origin", &self.base)
            .header("sec-fetch-site", "same-origin")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"))
            .send()
            .await
            .expect("admin listener answers")
    }
}

/// A relay with the admin section and one subscription, `billing`, to `target`.
pub async fn relay_to(target: &Target) -> (TestRelay, Admin) {
    let relay = TestRelay::start(&format!(
        "{}{}",
        subscription("billing", &target.url(), ""),
        admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);
    (relay, admin)
}

/// Posts a notification and waits until its only delivery is dead (the
/// target answers its four attempts with 500).
pub async fn dead_notification(
    relay: &TestRelay,
    admin: &Admin,
    hook: &str,
    reference: &str,
) -> String {
    let id = post_tus(relay, hook, reference).await;
    admin
        .wait_for("/api/notifications?state=dead", "the delivery dead", |b| {
            items(b) == 1
        })
        .await;
    id
}

pub fn items(body: &Value) -> usize {
    body["items"].as_array().map_or(0, Vec::len)
}

/// Posts a TusFacturas notification whose body is ISO-8859-1 (the
/// reference `Nº 17032`, º being 0xBA there, so not UTF-8); returns its id.
pub async fn post_latin1_tus(relay: &TestRelay, hook: &str, evento: &str) -> String {
    let mut raw = format!(
        r#"{{"creado":"18/03/2022 15:58:11","evento":"{evento}","recurso":"facturacion","external_reference":"N"#
    )
    .into_bytes();
    raw.push(0xBA);
    raw.extend_from_slice(
        format!(r#" 17032","intento":"1","msg":"x","hook_id":"{hook}"}}"#).as_bytes(),
    );
    let response = relay
        .client
        .post(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
        .header("content-type", "application/json; charset=ISO-8859-1")
        .body(raw)
        .send()
        .await
        .unwrap();
    let (status, answer) = answer(response).await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

pub async fn post_tus(relay: &TestRelay, hook: &str, reference: &str) -> String {
    let body = tusfacturas(hook, "emitido", 1).replace("\"17032\"", &format!("\"{reference}\""));
    let (status, json) = relay
        .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), body)
        .await;
    assert_eq!(status, 200, "{json}");
    json["id"].as_str().unwrap().to_owned()
}

/// Starts a bulk replay or purge (`path`, a POST): it answers 202 with a
/// running job at once; follows the job to its end and returns its last
/// state, and every state seen on the way.
pub async fn bulk_job(admin: &Admin, path: &str) -> (Value, Vec<Value>) {
    let (status, started) = admin.call("POST", path, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 202, "POST {path} starts a job: {started}");
    assert_eq!(started["state"], "running", "{started}");
    let id = started["id"].as_str().expect("a job id").to_owned();
    let mut seen = vec![started];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job = admin.get(&format!("/api/jobs/{id}")).await;
        seen.push(job.clone());
        if job["state"] != "running" {
            return (job, seen);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} still running: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tokens_and_roles_guard_every_endpoint_but_health_and_metrics() {
    let relay = TestRelay::start(&admin_section()).await;
    let admin = Admin::of(&relay);
    let id = post_tus(&relay, "h-1", "0001-0001").await;

    for open in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = admin.call("GET", open, None).await;
        assert_eq!(status, 200, "{open} needs no token: {body}");
    }
    let (status, ready) = admin.call("GET", "/readyz", None).await;
    assert_eq!((status, ready["ready"].as_bool()), (200, Some(true)));

    let list = "/api/notifications";
    assert_eq!(admin.call("GET", list, None).await.0, 401, "no token");
    let (status, body) = admin.call("GET", list, Some("not-a-token-at-all")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(admin.call("GET", list, Some(VIEWER_TOKEN)).await.0, 200);
    let replay = format!("/api/notifications/{id}/replay?subscription=none");
    let (status, body) = admin.call("POST", &replay, Some(VIEWER_TOKEN)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _) = admin
        .call("POST", "/api/replay?dry_run=true", Some(VIEWER_TOKEN))
        .await;
    assert_eq!(status, 403, "a viewer cannot replay in bulk");

    // Errors name what is wrong.
    let (status, body) = admin.call("GET", "/api/nothing", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = admin
        .call("GET", "/api/notifications?state=lost", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("state"), "{body}");
    let (status, body) = admin
        .call(
            "GET",
            "/api/notifications?sorce=tusfacturas",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 400, "a misspelt filter is refused: {body}");
    let unknown = "/api/notifications/01KAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(admin.call("GET", unknown, Some(ADMIN_TOKEN)).await.0, 404);
    let (status, _) = admin
        .call("GET", "/api/notifications/not-an-id", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 400);
    let (status, _) = admin.call("DELETE", list, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 405);

    // The request above counted, by source and outcome, with no id in sight.
    let (_, metrics) = admin.call("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains(
            "webhook_relay_notifications_received_total{source=\"tusfacturas\",outcome=\"accepted\"} 1"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(&id), "no id as a label value");
    relay.stop().await;
}

/// A notification id no spool holds.
const UNKNOWN_ID: &str = "01KAAAAAAAAAAAAAAAAAAAAAAA";
/// 26 characters of base32 beyond the largest ULID (`7ZZZ…`).
const OVERFLOWING_ID: &str = "ZZZZZZZZZZZZZZZZZZZZZZZZZZ";

/// Every `/api/` route of `admin::ROUTES`, walked: no token 401; a viewer
/// 403 on every change and no refusal on a read; a subscriber 403 but on
/// the subscriptions' list and creation, and 404 on a subscription not its
/// own (the answer to a name nobody holds); an id or name that is not
/// there 404; a parameter the route does not take 400. None of the
/// requests changes anything, so their order does not matter.
#[tokio::test]
async fn every_api_route_answers_401_403_404_and_400_as_it_should() {
    let target = Target::start(Vec::new()).await;
    let (relay, admin) = relay_to(&target).await;
    // The parameters a route needs to reach the answer looked for (the
    // role is checked first, from the route table; then a backfill without
    // `since` is a bad request).
    let needed = |path: &str| {
        if path.ends_with("/backfill") {
            "since=1h"
        } else {
            ""
        }
    };
    let with_query = |path: String, query: &str| match query {
        "" => path,
        query => format!("{path}?{query}"),
    };
    let api_routes: Vec<(&str, &str)> = webhook_relay::admin::ROUTES
        .iter()
        .copied()
        .filter(|(_, path)| path.starts_with("/api/"))
        .collect();
    assert!(api_routes.len() >= 20, "{api_routes:?}");
    let mut takes_an_id = 0;
    for (method, template) in api_routes {
        let query = needed(template);
        let existing = with_query(
            template
                .replace("{id}", UNKNOWN_ID)
                .replace("{name}", "billing"),
            query,
        );
        let route = format!("{method} {template}");

        let (status, body) = admin.call(method, &existing, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{route} without a token: {body}"
        );

        let (status, body) = admin.call(method, &existing, Some(VIEWER_TOKEN)).await;
        if method == "GET" {
            assert!(
                status == 200 || (status == 404 && template.contains('{')),
                "{route} reads, so a viewer may: {status} {body}"
            );
        } else {
            assert_eq!(
                (status, body["error"].as_str()),
                (403, Some("forbidden")),
                "{route} changes, so a viewer may not: {body}"
            );
        }

        // A subscriber lists and creates subscriptions, and manages only
        // those it created (not relay.toml's `billing`, which it is told
        // of as of a name nobody holds): nothing else.
        let (status, body) = admin.call(method, &existing, Some(SUBSCRIBER_TOKEN)).await;
        if template == "/api/subscriptions" {
            assert_ne!(status, 403, "{route} is open to a subscriber: {body}");
        } else if template.starts_with("/api/subscriptions/{name}") {
            assert_eq!(
                (status, body["error"].as_str()),
                (404, Some("not_found")),
                "{route} by a subscriber: {body}"
            );
        } else {
            assert_eq!(status, 403, "{route} by a subscriber: {body}");
        }

        if template.contains('{') {
            takes_an_id += 1;
            let missing = with_query(
                template
                    .replace("{id}", UNKNOWN_ID)
                    .replace("{name}", "no-such-subscription"),
                query,
            );
            let (status, body) = admin.call(method, &missing, Some(ADMIN_TOKEN)).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (404, Some("not_found")),
                "{route} of what is not there: {body}"
            );
            // Past the largest ULID: once read as `7ZZZ…` (a 404, or
            // another id's record), now refused as no id at all.
            if template.contains("{id}") {
                let overflowing = with_query(template.replace("{id}", OVERFLOWING_ID), query);
                let (status, body) = admin.call(method, &overflowing, Some(ADMIN_TOKEN)).await;
                assert_eq!(
                    (status, body["error"].as_str()),
                    (400, Some("bad_request")),
                    "{route} of an id past the largest: {body}"
                );
                assert!(
                    body["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains("begins with 0 to 7"),
                    "{route}: the error says why: {body}"
                );
            }
        }

        let misspelt = match query {
            "" => format!("{existing}?sorce=x"),
            _ => format!("{existing}&sorce=x"),
        };
        let (status, body) = admin.call(method, &misspelt, Some(ADMIN_TOKEN)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{route} with a parameter it does not take: {body}"
        );
        assert!(
            body["detail"].as_str().unwrap_or("").contains("sorce"),
            "{route}: the error names the parameter: {body}"
        );
    }
    assert!(
        takes_an_id >= 10,
        "the routes with an id or a name were walked"
    );
    let (status, body) = admin
        .call(
            "GET",
            &format!("/api/audit?cursor={OVERFLOWING_ID}"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 400, "an audit cursor past the largest id: {body}");
    // Nothing was changed: no audit record, no delivery.
    let audit = admin.get("/api/audit").await;
    assert_eq!(items(&audit), 0, "{audit}");
    assert!(target.received().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn the_list_pages_newest_first_and_filters_by_invoice_and_time() {
    let relay = TestRelay::start(&admin_section()).await;
    let admin = Admin::of(&relay);
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(post_tus(&relay, &format!("h-{i}"), &format!("0001-{i:04}")).await);
    }
    ids.reverse();

    let mut seen = Vec::new();
    let mut path = "/api/notifications?limit=3&source=tusfacturas".to_owned();
    for page in 0.. {
        assert!(page < 5, "pages never end");
        let body = admin.get(&path).await;
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        match body["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/notifications?limit=3&source=tusfacturas&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(seen, ids, "every notification once, newest first");

    let body = admin.get("/api/notifications?subject=0001-0003").await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["id"], ids[3]);
    assert_eq!(items[0]["event"], "facturacion.emitido");

    let body = admin
        .get("/api/notifications?subject=0001-000*&until=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 0, "{body}");
    let body = admin.get("/api/notifications?source=datil").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 0, "{body}");
    relay.stop().await;
}

#[tokio::test]
async fn dead_deliveries_are_shown_with_their_attempts_and_replayed_by_filter() {
    // Four failures per notification: the 50/100/150 ms schedule runs out.
    let target = Target::start(vec![Reply::Status(500); 8]).await;
    let (relay, admin) = relay_to(&target).await;
    let first = post_tus(&relay, "d-1", "0002-0001").await;
    let second = post_tus(&relay, "d-2", "0002-0002").await;
    target.wait_for(8, WAIT).await;
    admin
        .wait_for(
            "/api/notifications?state=dead",
            "both deliveries dead",
            |b| items(b) == 2,
        )
        .await;

    let shown = admin.get(&format!("/api/notifications/{first}")).await;
    assert_eq!(shown["subject"], "0002-0001");
    assert!(
        shown["body"]
            .as_str()
            .unwrap()
            .contains("\"hook_id\": \"d-1\""),
        "{shown}"
    );
    let delivery = &shown["deliveries"][0];
    assert_eq!(delivery["subscription"], "billing");
    assert_eq!(delivery["state"], "dead");
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{delivery}");
    assert_eq!(attempts[0]["outcome"]["code"], 500);
    assert!(attempts[3]["started_at"].as_str().unwrap().ends_with('Z'));

    let dry = admin
        .call(
            "POST",
            "/api/replay?state=dead&source=tusfacturas&dry_run=true",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(dry.0, 200, "{}", dry.1);
    assert_eq!(
        (dry.1["deliveries"].as_u64(), dry.1["dry_run"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(target.count(), 8, "a dry run sends nothing");

    // The target has recovered (its script is spent): the replay delivers.
    let (done, _) = bulk_job(&admin, "/api/replay?state=dead&source=tusfacturas").await;
    assert_eq!(
        (done["state"].as_str(), done["replayed"].as_u64()),
        (Some("done"), Some(2)),
        "{done}"
    );
    assert!(
        target
            .wait_until(WAIT, |t| t.succeeded(&first) && t.succeeded(&second))
            .await,
        "both replayed deliveries arrive"
    );
    admin
        .wait_for(
            "/api/notifications?state=delivered",
            "both delivered",
            |b| items(b) == 2,
        )
        .await;
    // The replay is in the audit log, with who did it; the dry run is not.
    let audit = admin.get("/api/audit").await;
    let records = audit["items"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{audit}");
    assert_eq!(records[0]["actor"], "ops");
    assert_eq!(records[0]["action"], "replay.bulk");
    assert_eq!(records[0]["detail"]["replayed"], 2);
    assert!(records[0]["at"].as_str().unwrap().ends_with('Z'));
    let stats = admin.get("/api/stats").await;
    assert_eq!(stats["subscriptions"]["billing"]["delivered"], 2, "{stats}");
    assert_eq!(stats["subscriptions"]["billing"]["dead"], 0, "{stats}");
    // A second replay of the one notification, by id, is refused: nothing is dead.
    let (status, body) = admin
        .call(
            "POST",
            &format!("/api/notifications/{first}/replay"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    relay.stop().await;
}

#[tokio::test]
async fn quarantined_bodies_are_listed_shown_released_and_discarded() {
    let target = Target::start(Vec::new()).await;
    let (relay, admin) = relay_to(&target).await;
    let mut quarantined = Vec::new();
    for body in ["{\"not\": \"tusfacturas\"}", "{\"also\": \"not\"}"] {
        let (status, json) = relay
            .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), body)
            .await;
        assert_eq!(status, 422, "{json}");
        quarantined.push(json["quarantine_id"].as_str().unwrap().to_owned());
    }
    let (first, second) = (&quarantined[0], &quarantined[1]);

    let list = admin.get("/api/notifications?state=quarantined").await;
    assert_eq!(list["items"][0]["id"], *second, "newest first: {list}");
    assert_eq!(items(&list), 2);
    let shown = admin.get(&format!("/api/quarantine/{first}")).await;
    assert_eq!(shown["body"], "{\"not\": \"tusfacturas\"}");
    assert_eq!(shown["source"], "tusfacturas");
    let (status, body) = admin
        .call(
            "GET",
            &format!("/api/notifications/{first}"),
            Some(VIEWER_TOKEN),
        )
        .await;
    assert_eq!(status, 404);
    assert!(
        body["detail"].as_str().unwrap().contains("quarantine"),
        "{body}"
    );

    // Its provider check still refuses it; a viewer may not release it.
    let release = format!("/api/quarantine/{first}/release");
    let (status, body) = admin.call("POST", &release, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("as=generic"),
        "{body}"
    );
    let generic = format!("{release}?as=generic");
    assert_eq!(
        admin.call("POST", &generic, Some(VIEWER_TOKEN)).await.0,
        403
    );
    // As generic it becomes a notification, delivered like any other.
    let (status, released) = admin.call("POST", &generic, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{released}");
    let id = released["notification"].as_str().unwrap().to_owned();
    assert!(
        target.wait_until(WAIT, |t| t.succeeded(&id)).await,
        "released and delivered"
    );
    let shown = admin.get(&format!("/api/notifications/{id}")).await;
    assert_eq!(
        (shown["event"].as_str(), shown["source"].as_str()),
        (Some("generic"), Some("tusfacturas"))
    );
    assert_eq!(
        admin
            .call(
                "GET",
                &format!("/api/quarantine/{first}"),
                Some(ADMIN_TOKEN)
            )
            .await
            .0,
        404
    );
    assert_eq!(
        admin.call("POST", &generic, Some(ADMIN_TOKEN)).await.0,
        404,
        "released once"
    );

    let discard = format!("/api/quarantine/{second}/discard");
    assert_eq!(admin.call("POST", &discard, Some(ADMIN_TOKEN)).await.0, 200);
    assert_eq!(admin.call("POST", &discard, Some(ADMIN_TOKEN)).await.0, 404);
    assert_eq!(
        items(&admin.get("/api/notifications?state=quarantined").await),
        0
    );
    let stats = admin.get("/api/stats").await;
    assert_eq!(
        (
            stats["quarantined"].as_u64(),
            stats["notifications"].as_u64()
        ),
        (Some(0), Some(1)),
        "{stats}"
    );
    let audit = admin.get("/api/audit").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["quarantine.discard", "quarantine.release"]);
    relay.stop().await;
}

/// `promtool check metrics` (Debian package `prometheus`) on the live
/// output. `.ci/run` installs it and sets `REQUIRE_PROMTOOL=1`; elsewhere
/// the test says it was skipped.
#[tokio::test]
async fn promtool_accepts_the_live_metrics() {
    let Some(promtool) = promtool() else { return };
    let target = Target::start(vec![Reply::Status(500)]).await;
    let (relay, admin) = relay_to(&target).await;
    post_tus(&relay, "m-1", "0003-0001").await;
    target.wait_for(2, WAIT).await;
    let (_, text) = admin.call("GET", "/metrics", None).await;
    let text = text.as_str().unwrap().to_owned();
    for family in [
        "webhook_relay_attempts_total{subscription=\"billing\",class=\"5xx\"} 1",
        "webhook_relay_deliveries_waiting{subscription=\"billing\"} ",
        "webhook_relay_notifications_stored 1",
        "webhook_relay_ingest_duration_seconds_bucket",
        "webhook_relay_build_info",
        "webhook_relay_event_reports_dropped_total 0",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    let flushed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("webhook_relay_flushed_changes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // sled's group flushes; JetStream commits each publish on its servers.
    assert!(
        flushed >= 1 || on_jetstream(),
        "the store and the outcome were flushed:\n{text}"
    );
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused the metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    relay.stop().await;
}

/// The shipped alert rules (`docs/prometheus/`): `promtool check rules`
/// accepts them and `promtool test rules` passes their cases (one that
/// fires and one that does not, per alert).
#[test]
fn promtool_checks_and_tests_the_shipped_alert_rules() {
    let Some(promtool) = promtool() else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus");
    for args in [
        ["check", "rules", RULES_FILE],
        ["test", "rules", "webhook-relay.rules.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

const RULES_FILE: &str = "webhook-relay.rules.yml";

/// Every `webhook_relay_*` name in the shipped alert rules is a family the
/// live relay serves (its `# TYPE` line), and every label a rule's selector
/// matches on is one its series carry: a renamed metric or label cannot
/// leave an alert that never fires. Needs no promtool.
#[tokio::test]
async fn the_shipped_alert_rules_name_live_metrics_and_labels() {
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs/prometheus")
            .join(RULES_FILE),
    )
    .unwrap();
    // A dead delivery, so the delivery and attempt families have series,
    // and a source with `[reconcile]`, so the reconcile families have
    // theirs (at zero; its API is never asked).
    let target = Target::start(vec![Reply::Status(500); 4]).await;
    let secrets = tempfile::tempdir().unwrap();
    let secret = |name: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, "not-asked\n").unwrap();
        path.display().to_string()
    };
    let reconcile = format!(
        "[sources.tusfacturas.reconcile]\nurl = \"http://127.0.0.1:9/\"\napikey = \"not-asked\"\napitoken_file = \"{}\"\nusertoken_file = \"{}\"\n",
        secret("apitoken"),
        secret("usertoken"),
    );
    let relay = TestRelay::start_edited(|base| {
        let source = "[sources.tusfacturas]\nprovider = \"tusfacturas\"\n";
        let at = base
            .find(source)
            .expect("the test config's tusfacturas source");
        let end = base[at + source.len()..]
            .find("\n[")
            .map_or(base.len(), |n| at + source.len() + n + 1);
        format!(
            "{}{reconcile}{}{}{}",
            &base[..end],
            &base[end..],
            subscription("billing", &target.url(), ""),
            admin_section()
        )
    })
    .await;
    let admin = Admin::of(&relay);
    dead_notification(&relay, &admin, "r-1", "0004-0001").await;
    let (_, text) = admin.call("GET", "/metrics", None).await;
    let text = text.as_str().unwrap().to_owned();
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    // (metric, the label names of its series)
    let series_labels = |metric: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(metric)?.strip_prefix('{'))
            .flat_map(|l| {
                l.split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|pair| pair.split_once('=').map(|(name, _)| name.trim().to_owned()))
            })
            .collect()
    };
    let mut checked = 0;
    let mut rest = rules.as_str();
    while let Some(at) = rest.find("webhook_relay_") {
        rest = &rest[at..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        rest = &rest[name_len..];
        if name == "webhook_relay_" {
            continue; // prose: "every webhook_relay_* name"
        }
        assert!(
            families.contains(name),
            "{RULES_FILE} names {name}, which the relay does not serve:\n{text}"
        );
        if let Some(selector) = rest.strip_prefix('{') {
            let selector = selector.split('}').next().unwrap_or("");
            let served = series_labels(name);
            for matcher in selector.split(',') {
                let label = matcher.split(['=', '!']).next().unwrap_or("").trim();
                assert!(
                    served.contains(label),
                    "{RULES_FILE} matches {name} on `{label}`, which its series do not carry \
                     ({served:?}):\n{text}"
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} metric names found in {RULES_FILE}"
    );
    relay.stop().await;
}

/// promtool (Debian package `prometheus`), or `None` and a note that the
/// test was skipped; `.ci/run` installs it and sets `REQUIRE_PROMTOOL=1`,
/// which makes its absence a failure.
fn promtool() -> Option<std::path::PathBuf> {
    let found = which("promtool").ok();
    if found.is_none() {
        assert!(
            std::env::var_os("REQUIRE_PROMTOOL").is_none(),
            "REQUIRE_PROMTOOL is set but promtool is not installed"
        );
        eprintln!("promtool is not installed (Debian package prometheus): skipped");
    }
    found
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(())
}

/// Runs the built binary against the relay's admin API, the token in the
/// environment; returns (exit code, stdout, stderr).
pub fn cli(config: &std::path::Path, args: &[&str], token: &str) -> (i32, String, String) {
    let out = std::process::Command::new(crate::process::BINARY)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("WEBHOOK_RELAY_TOKEN", token)
        .env_remove("WEBHOOK_RELAY_ADMIN_URL")
        .output()
        .expect("the relay binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `relay.toml` for the CLI, naming the running relay's admin address
/// (the port it bound), as an operator's copy would.
pub fn cli_config(relay: &TestRelay) -> std::path::PathBuf {
    let listen = relay.relay().admin_listen.clone().unwrap();
    let config = relay.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            base_config(relay.dir.path()),
            admin_section().replace("127.0.0.1:0", &listen)
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_and_replays_through_a_running_relay() {
    let target = Target::start(vec![Reply::Status(500); 4]).await;
    let (relay, admin) = relay_to(&target).await;
    let id = dead_notification(&relay, &admin, "c-1", "0004-0001").await;
    let listen = relay.relay().admin_listen.clone().unwrap();
    let config_file = cli_config(&relay);
    let config = config_file.as_path();

    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(config, &["spool", "ls", "--state", "dead"], VIEWER_TOKEN)
    });
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID "), "a table with headers: {out}");
    assert!(
        lines[1].starts_with(&id) && lines[1].ends_with("1 dead"),
        "{out}"
    );
    assert!(
        lines[1].contains("0004-0001") && lines[1].contains('T'),
        "{out}"
    );

    let (code, out, _) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["spool", "ls", "--subject", "0004-*", "--json"],
            VIEWER_TOKEN,
        )
    });
    assert_eq!(code, 0);
    let row: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(row["id"], id);

    let (code, out, _) =
        tokio::task::block_in_place(|| cli(config, &["spool", "show", &id], VIEWER_TOKEN));
    assert_eq!(code, 0);
    assert!(
        out.contains("attempt 4") && out.contains("HTTP 500"),
        "{out}"
    );
    assert!(out.contains("\"hook_id\": \"c-1\""), "the body: {out}");

    // Bulk actions need --dry-run or --yes; a viewer may not replay.
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(config, &["spool", "replay", "--state", "dead"], ADMIN_TOKEN)
    });
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--dry-run"), "{err}");
    let (code, _, err) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["spool", "replay", "--state", "dead", "--yes"],
            VIEWER_TOKEN,
        )
    });
    assert_eq!(code, 77, "{err}");
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["spool", "replay", "--source", "tusfacturas", "--dry-run"],
            ADMIN_TOKEN,
        )
    });
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would replay 1 deliveries"), "{out}");
    assert_eq!(target.count(), 4, "a dry run sends nothing");
    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(
            config,
            &["spool", "replay", "--source", "tusfacturas", "--yes"],
            ADMIN_TOKEN,
        )
    });
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 1 deliveries"), "{out}");
    assert!(
        err.contains("replay job ") && err.contains("1 replayed"),
        "progress on stderr: {err}"
    );
    assert!(target.wait_until(WAIT, |t| t.succeeded(&id)).await);

    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(config, &["subscriptions", "pause", "billing"], ADMIN_TOKEN)
    });
    assert_eq!((code, out.trim()), (0, "paused billing"), "{err}");
    let (code, out, _) =
        tokio::task::block_in_place(|| cli(config, &["subscriptions", "ls"], VIEWER_TOKEN));
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with("billing"))
        .unwrap_or_default();
    assert!(row.contains("paused"), "{out}");
    let (code, _, _) = tokio::task::block_in_place(|| {
        cli(config, &["subscriptions", "resume", "billing"], ADMIN_TOKEN)
    });
    assert_eq!(code, 0);
    let (code, out, _) =
        tokio::task::block_in_place(|| cli(config, &["spool", "audit"], VIEWER_TOKEN));
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|row| row.contains("ops") && row.contains("replay.bulk")),
        "{out}"
    );
    let (code, out, _) =
        tokio::task::block_in_place(|| cli(config, &["spool", "stats"], VIEWER_TOKEN));
    assert_eq!(code, 0);
    assert!(
        out.contains("tusfacturas") && out.contains("bytes on disk"),
        "{out}"
    );
    let _dir = relay.stop().await;

    // The relay is gone: a clear message and EX_UNAVAILABLE.
    let (code, _, err) =
        tokio::task::block_in_place(|| cli(config, &["spool", "ls"], VIEWER_TOKEN));
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("does not answer") && err.contains(&listen),
        "{err}"
    );
}

/// A headless Chromium session (Debian `chromium` and `chromium-driver`)
/// and its driver process, or None (the test is skipped, and says so)
/// where chromedriver is not installed and `REQUIRE_BROWSER` is not set.
pub async fn headless_browser() -> Option<(fantoccini::Client, tokio::process::Child)> {
    headless_browser_with(serde_json::json!({})).await
}

/// The same, with more `goog:chromeOptions` (e.g. `mobileEmulation`).
pub async fn headless_browser_with(
    options: Value,
) -> Option<(fantoccini::Client, tokio::process::Child)> {
    let Ok(chromedriver) = which("chromedriver") else {
        assert!(
            std::env::var_os("REQUIRE_BROWSER").is_none(),
            "REQUIRE_BROWSER is set but chromedriver is not installed"
        );
        eprintln!("chromedriver is not installed (Debian chromium-driver): skipped");
        return None;
    };
    let port = closed_port().await;
    let driver = tokio::process::Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let mut chrome = serde_json::json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]});
    if let (Some(chrome), Some(options)) = (chrome.as_object_mut(), options.as_object()) {
        chrome.extend(options.clone());
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), chrome);
    let webdriver = format!("http://127.0.0.1:{port}");
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match fantoccini::ClientBuilder::new(connector.clone())
            .capabilities(capabilities.clone())
            .connect(&webdriver)
            .await
        {
            Ok(browser) => return Some((browser, driver)),
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "chromedriver did not take a session: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The element, once the page shows it (WebDriver waits for it).
pub async fn shown(
    browser: &fantoccini::Client,
    locator: fantoccini::Locator<'_>,
) -> fantoccini::elements::Element {
    browser.wait().for_element(locator).await.unwrap()
}

/// Fills the page's login form with `token` and sends it.
pub async fn log_in(browser: &fantoccini::Client, token: &str) {
    use fantoccini::Locator;
    shown(browser, Locator::Css("input[name=token]"))
        .await
        .send_keys(token)
        .await
        .unwrap();
    shown(browser, Locator::Css("form[action='/login'] button"))
        .await
        .click()
        .await
        .unwrap();
}

/// Headless Chromium (Debian `chromium` and `chromium-driver`) opens the
/// page, logs in, finds a dead notification in the table, opens it, clicks
/// replay, and the delivery reaches the target. `.ci/run` installs the
/// browser and sets `REQUIRE_BROWSER=1`; elsewhere the test says it was
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_finds_a_dead_notification_and_replays_it() {
    use fantoccini::Locator;

    let Some((browser, mut driver)) = headless_browser().await else {
        return;
    };
    let target = Target::start(vec![Reply::Status(500); 4]).await;
    let (relay, admin) = relay_to(&target).await;
    let id = dead_notification(&relay, &admin, "b-1", "0005-0042").await;

    browser.goto(&admin.base).await.unwrap();
    log_in(&browser, VIEWER_TOKEN).await;
    // A viewer sees the table but gets no replay button.
    let row = shown(&browser, Locator::LinkText(&id)).await;
    let table = shown(&browser, Locator::Css("table:last-of-type"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        table.contains("0005-0042") && table.contains("dead"),
        "{table}"
    );
    row.click().await.unwrap();
    let deliveries_heading = Locator::XPath("//h2[text()='Deliveries']");
    shown(&browser, deliveries_heading).await;
    assert!(browser
        .find_all(Locator::Css("form[action*='/replay'] button"))
        .await
        .unwrap()
        .is_empty());

    // Log out, and in as an admin.
    shown(&browser, Locator::Css("form[action='/logout'] button"))
        .await
        .click()
        .await
        .unwrap();
    log_in(&browser, ADMIN_TOKEN).await;
    shown(&browser, Locator::LinkText(&id))
        .await
        .click()
        .await
        .unwrap();
    shown(&browser, deliveries_heading).await;
    let page = browser.source().await.unwrap();
    assert!(
        page.contains("attempt") && page.contains("HTTP 500"),
        "{page}"
    );
    shown(&browser, Locator::Css("form[action*='/replay'] button"))
        .await
        .click()
        .await
        .unwrap();
    assert!(
        target.wait_until(WAIT, |t| t.succeeded(&id)).await,
        "the replay clicked in the browser reaches the target"
    );
    browser.close().await.unwrap();
    let _ = driver.kill().await;
    relay.stop().await;
}

/// `doc/openapi.json` names every API route the listener serves, and
/// each route it names is served: called with a bad parameter (so nothing
/// changes), a route answers 400 or its own answer, never "no such
/// endpoint" or 405.
/// The page's release buttons: shown to an admin only, and a press makes
/// the quarantined body a notification that reaches the target, audited.
#[tokio::test]
async fn the_page_releases_a_quarantined_body_and_it_is_delivered() {
    let target = Target::start(Vec::new()).await;
    let (relay, admin) = relay_to(&target).await;
    let (status, json) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            "{\"not\": \"tusfacturas\"}",
        )
        .await;
    assert_eq!(status, 422, "{json}");
    let quarantined = json["quarantine_id"].as_str().unwrap().to_owned();
    let (ops, grafana) = (
        admin.log_in_page(ADMIN_TOKEN).await,
        admin.log_in_page(VIEWER_TOKEN).await,
    );
    let shown = format!("/q/{quarantined}");
    let button = format!("action=\"/q/{quarantined}/release?as=generic\"");
    assert!(
        ops.get(&shown).await.1.contains(&button),
        "an admin's page has the button"
    );
    assert!(
        !grafana.get(&shown).await.1.contains("release"),
        "a viewer's has none"
    );

    let press = format!("/q/{quarantined}/release?as=generic");
    assert_eq!(grafana.press(&press).await.status(), 403);
    let answer = ops.press(&press).await;
    assert_eq!(answer.status(), 303);
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    let id = location
        .strip_prefix("/n/")
        .unwrap_or_else(|| panic!("back to the notification's page: {location}"))
        .to_owned();
    assert!(
        target.wait_until(WAIT, |t| t.succeeded(&id)).await,
        "released and delivered"
    );
    let audit = admin.get("/api/audit").await;
    let record = &audit["items"][0];
    assert_eq!(
        (record["action"].as_str(), record["actor"].as_str()),
        (Some("quarantine.release"), Some("ops")),
        "{audit}"
    );
    assert_eq!(record["target"], quarantined);
    relay.stop().await;
}

/// The page's POSTs come from the page or not at all: with a valid
/// session cookie, a POST from another origin (or that says neither where
/// it comes from), or without the session's CSRF token, is 403 and changes
/// nothing; the page's own works. The cookie is a session id, not the
/// token, and after "log out" (or a reload that removes its token) it
/// opens nothing.
#[tokio::test]
async fn the_page_refuses_cross_origin_posts_and_its_cookie_dies_at_logout() {
    let target = Target::start(Vec::new()).await;
    let (relay, admin) = relay_to(&target).await;
    let ops = admin.log_in_page(ADMIN_TOKEN).await;
    assert!(
        !ops.set_cookie.contains(ADMIN_TOKEN) && ops.cookie.starts_with("relay_session="),
        "the cookie holds a session id, not the token: {}",
        ops.set_cookie
    );
    for attribute in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(ops.set_cookie.contains(attribute), "{}", ops.set_cookie);
    }
    assert!(!ops.set_cookie.contains("Secure"), "plain HTTP: not Secure");
    let csrf = ops.csrf().await;
    let pause = "/s/billing/pause";
    let port = admin.base.rsplit(':').next().unwrap();
    let elsewhere = format!("http://127.0.0.1:{}", port.parse::<u16>().unwrap() ^ 1);
    let same = Some(admin.base.as_str());
    for (origin, token, why) in [
        (
            Some("http://evil.example"),
            Some(csrf.as_str()),
            "another site",
        ),
        (
            Some(elsewhere.as_str()),
            Some(csrf.as_str()),
            "another port",
        ),
        (Some("null"), Some(csrf.as_str()), "an opaque origin"),
        (None, Some(csrf.as_str()), "no Origin"),
        (same, None, "no CSRF token"),
        (same, Some("0123456789abcdef"), "a wrong CSRF token"),
    ] {
        assert_eq!(ops.post(pause, origin, token).await, 403, "{why}");
    }
    let subs = admin.get("/api/subscriptions").await;
    assert_eq!(subs["items"][0]["paused"], false, "nothing paused: {subs}");
    assert_eq!(items(&admin.get("/api/audit").await), 0, "nothing audited");

    // The page's own POST, with its token: done, as the admin.
    assert_eq!(ops.post(pause, same, Some(&csrf)).await, 303);
    let subs = admin.get("/api/subscriptions").await;
    assert_eq!(subs["items"][0]["paused"], true, "{subs}");
    let audit = admin.get("/api/audit").await;
    assert_eq!(
        (
            audit["items"][0]["action"].as_str(),
            audit["items"][0]["actor"].as_str()
        ),
        (Some("subscription.pause"), Some("ops")),
        "{audit}"
    );
    // Another login, another session with a token of its own.
    let other = admin.log_in_page(ADMIN_TOKEN).await;
    assert_ne!(other.cookie, ops.cookie);
    let resume = "/s/billing/resume";
    assert_eq!(other.post(resume, same, Some(&csrf)).await, 403);

    // Logged out, the old cookie opens nothing, and changes nothing.
    assert_eq!(ops.post("/logout", same, Some(&csrf)).await, 303);
    let (status, page) = ops.get("/").await;
    assert_eq!(status, 401, "the login form again: {page}");
    assert!(page.contains("name=token"), "{page}");
    assert_eq!(ops.post(resume, same, Some(&csrf)).await, 401);
    let subs = admin.get("/api/subscriptions").await;
    assert_eq!(subs["items"][0]["paused"], true, "still paused: {subs}");
    assert_eq!(other.get("/").await.0, 200, "the other session lives on");

    // A reload that removes a token ends its sessions; the others live on.
    let grafana = admin.log_in_page(VIEWER_TOKEN).await;
    assert_eq!(grafana.get("/").await.0, 200);
    let without_viewer = format!(
        "{}{}{}",
        base_config(relay.dir.path()),
        subscription("billing", &target.url(), ""),
        admin_section().replace(
            &format!("name = \"grafana\", token = \"{VIEWER_TOKEN}\""),
            "name = \"grafana\", token = \"another-viewer-token-0123\""
        ),
    );
    let config = webhook_relay::config::Config::parse(&without_viewer).unwrap();
    relay.relay().reload(config).await.expect("reloaded");
    assert_eq!(grafana.get("/").await.0, 401, "its token is gone");
    assert_eq!(other.get("/").await.0, 200, "the admin's is not");

    // Behind a TLS proxy that says so, the cookie is Secure.
    let proxied = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let host = admin.base.trim_start_matches("http://");
    let answer = proxied
        .post(format!("{}/login", admin.base))
        .header("origin", format!("https://{host}"))
        .header("x-forwarded-proto", "https")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");

    // The API, by bearer token, is not the page's business: unchanged.
    let (status, body) = admin
        .call(
            "POST",
            "/api/subscriptions/billing/resume",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    relay.stop().await;
}

/// A tiny site on another port of 127.0.0.1: each path a page.
async fn attacker_site(pages: Vec<(String, String)>) -> String {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let pages = std::sync::Arc::new(pages);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let pages = pages.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let page = pages
                        .iter()
                        .find(|(path, _)| path == request.uri().path())
                        .map_or_else(String::new, |(_, page)| page.clone());
                    let mut response =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(page)));
                    response
                        .headers_mut()
                        .insert("content-type", "text/html".parse().unwrap());
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    base
}

/// Waits until the browser has left `from` (a form it submitted has been
/// answered, and the browser shows that answer).
async fn left(browser: &fantoccini::Client, from: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let url = browser.current_url().await.unwrap().to_string();
        if !url.starts_with(from) {
            return url;
        }
        assert!(tokio::time::Instant::now() < deadline, "still on {url}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Headless Chromium, logged in as an admin, visits pages on another port
/// of 127.0.0.1 that submit themselves to the page's pause and replay
/// buttons (the cookie goes with them: SameSite counts no ports). Nothing
/// changes: the subscription is not paused, the dead delivery not
/// replayed, nothing audited. The admin's own button still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_port_cannot_make_a_logged_in_browser_change_anything() {
    use fantoccini::Locator;

    let Some((browser, mut driver)) = headless_browser().await else {
        return;
    };
    let target = Target::start(vec![Reply::Status(500); 4]).await;
    let (relay, admin) = relay_to(&target).await;
    let id = dead_notification(&relay, &admin, "x-1", "0009-0001").await;

    browser.goto(&admin.base).await.unwrap();
    log_in(&browser, ADMIN_TOKEN).await;
    shown(&browser, Locator::LinkText(&id)).await;

    let attack = |action: String| {
        format!(
            "<!doctype html><body onload=\"document.forms[0].submit()\">\
             <form method=post action=\"{action}\"><input type=hidden name=csrf value=guess></form>"
        )
    };
    let evil = attacker_site(vec![
        (
            "/pause".into(),
            attack(format!("{}/s/billing/pause", admin.base)),
        ),
        (
            "/replay".into(),
            attack(format!("{}/n/{id}/replay?subscription=billing", admin.base)),
        ),
    ])
    .await;
    for page in ["/pause", "/replay"] {
        browser.goto(&format!("{evil}{page}")).await.unwrap();
        let landed = left(&browser, &evil).await;
        assert!(
            landed.starts_with(&admin.base),
            "the form was sent: {landed}"
        );
    }
    // Each form was answered before the browser showed the answer.
    let subs = admin.get("/api/subscriptions").await;
    assert_eq!(subs["items"][0]["paused"], false, "not paused: {subs}");
    let shown_notification = admin.get(&format!("/api/notifications/{id}")).await;
    assert_eq!(
        shown_notification["deliveries"][0]["state"], "dead",
        "not replayed: {shown_notification}"
    );
    assert!(!target.succeeded(&id));
    assert_eq!(items(&admin.get("/api/audit").await), 0, "nothing audited");

    // The admin's own button, in the same browser session, works.
    browser.goto(&admin.base).await.unwrap();
    shown(
        &browser,
        Locator::Css("form[action='/s/billing/pause'] button"),
    )
    .await
    .click()
    .await
    .unwrap();
    admin
        .wait_for("/api/subscriptions", "the pause", |s| {
            s["items"][0]["paused"] == true
        })
        .await;
    browser.close().await.unwrap();
    let _ = driver.kill().await;
    relay.stop().await;
}

#[tokio::test]
async fn the_openapi_file_and_the_live_routes_agree() {
    let relay = TestRelay::start(&admin_section()).await;
    let admin = Admin::of(&relay);
    let id = post_tus(&relay, "o-1", "0006-0001").await;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/openapi.json");
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut documented = std::collections::BTreeSet::new();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: std::collections::BTreeSet<(String, String)> = webhook_relay::admin::ROUTES
        .iter()
        .filter(|(_, path)| path.starts_with("/api") || path.ends_with("z") || *path == "/metrics")
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(
        documented, served,
        "doc/openapi.json and admin::ROUTES differ"
    );
    for (method, path) in &documented {
        let live = path.replace("{id}", &id);
        let probe = if method == "POST" {
            format!("{live}?bogus=1")
        } else {
            live
        };
        let (status, body) = admin.call(method, &probe, Some(ADMIN_TOKEN)).await;
        assert!(
            status != 405 && !(status == 404 && body["detail"] == "no such endpoint"),
            "{method} {path} is documented but not served: {status} {body}"
        );
        if method == "POST" {
            assert_eq!(
                status, 400,
                "{method} {path} refuses an unknown parameter: {body}"
            );
        }
    }
    let (status, _) = admin
        .call("GET", "/api/undocumented", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 404);
    relay.stop().await;
}

#[tokio::test]
async fn a_pause_holds_what_a_worker_leased_but_has_not_sent_yet() {
    // Two a second, in bursts of two: a worker that leases eight at once
    // sends two, then holds six behind the limit for up to three seconds.
    let billing = Target::start(Vec::new()).await;
    let relay = TestRelay::start(&format!(
        "{}{}",
        subscription("billing", &billing.url(), "rate = \"2/s\""),
        admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);
    let pause = "/api/subscriptions/billing/pause";
    let resume = "/api/subscriptions/billing/resume";
    // Paused while they come in, so that one lease takes all eight.
    assert_eq!(admin.call("POST", pause, Some(ADMIN_TOKEN)).await.0, 200);
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(post_tus(&relay, &format!("b-{i}"), &format!("0008-{i:04}")).await);
    }
    assert_eq!(admin.call("POST", resume, Some(ADMIN_TOKEN)).await.0, 200);
    billing.wait_for(2, WAIT).await;
    assert_eq!(admin.call("POST", pause, Some(ADMIN_TOKEN)).await.0, 200);
    // One attempt may have been under way as the pause came.
    let at_pause = billing.count() + 1;
    // Had the worker gone on with its batch, two more would arrive by then.
    let sent_on = billing
        .wait_until(Duration::from_millis(1_500), |t| t.count() > at_pause)
        .await;
    assert!(
        !sent_on,
        "{} sent after the pause, {at_pause} at most expected",
        billing.count()
    );
    let stats = admin.get("/api/stats").await;
    assert_eq!(
        stats["subscriptions"]["billing"]["waiting"].as_u64(),
        Some(8 - billing.count() as u64),
        "what was held waits again: {stats}"
    );

    assert_eq!(admin.call("POST", resume, Some(ADMIN_TOKEN)).await.0, 200);
    assert!(
        billing
            .wait_until(Duration::from_secs(15), |t| ids
                .iter()
                .all(|id| t.succeeded(id)))
            .await,
        "all eight are sent after the resume"
    );
    assert_eq!(billing.count(), 8, "each once");
    relay.stop().await;
}

#[tokio::test]
async fn a_paused_subscription_holds_its_deliveries_and_a_resume_sends_them_in_order() {
    let billing = Target::start(Vec::new()).await;
    let erp = Target::start(Vec::new()).await;
    let relay = TestRelay::start(&format!(
        "{}{}{}",
        // One at a time: the order of arrival is the order of sending.
        subscription("billing", &billing.url(), "max_in_flight = 1"),
        subscription("erp", &erp.url(), ""),
        admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);
    let pause = "/api/subscriptions/billing/pause";
    assert_eq!(admin.call("POST", pause, Some(VIEWER_TOKEN)).await.0, 403);
    let (status, body) = admin
        .call("POST", "/api/subscriptions/nobody/pause", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(admin.call("POST", pause, Some(ADMIN_TOKEN)).await.0, 200);

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(post_tus(&relay, &format!("p-{i}"), &format!("0007-{i:04}")).await);
    }
    // The other subscription got all three: the forwarder ran meanwhile.
    assert!(
        erp.wait_until(WAIT, |t| ids.iter().all(|id| t.succeeded(id)))
            .await
    );
    assert_eq!(billing.count(), 0, "nothing goes to a paused subscription");
    let subs = admin.get("/api/subscriptions").await;
    assert_eq!(subs["items"][0]["paused"], true, "{subs}");
    let stats = admin.get("/api/stats").await;
    assert_eq!(stats["subscriptions"]["billing"]["waiting"], 3, "{stats}");

    let resume = "/api/subscriptions/billing/resume";
    assert_eq!(admin.call("POST", resume, Some(ADMIN_TOKEN)).await.0, 200);
    let received = billing.wait_for(3, WAIT).await;
    let order: Vec<String> = received
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, ids, "held deliveries go in their order");
    let audit = admin.get("/api/audit").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["subscription.resume", "subscription.pause"]);
    relay.stop().await;
}

/// A bulk replay of thousands of dead deliveries is a job: 202 at once,
/// before anything is picked; the walk goes in slices of 1,000 (three
/// here) and the job counts them; it ends done with every delivery
/// replayed, and every one is delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_replay_of_thousands_runs_as_a_job_with_progress() {
    const NOTIFICATIONS: usize = 300;
    const SUBSCRIPTIONS: usize = 10;
    let target = Target::start(Vec::new()).await;
    target.fail_randomly(1.0);
    let mut subscriptions = String::new();
    for n in 0..SUBSCRIPTIONS {
        // Two attempts, then dead. Timeouts generous: the target fails at
        // once while it fails, and a loaded machine must not time out a
        // replayed attempt twice (dead again, never delivered).
        subscriptions.push_str(
            &subscription(&format!("s{n}"), &target.url(), "")
                .replace(
                    "schedule = [\"50ms\", \"100ms\", \"150ms\"]",
                    "schedule = [\"10ms\"]",
                )
                .replace("timeout_first = \"500ms\"", "timeout_first = \"10s\"")
                .replace("timeout_retry = \"300ms\"", "timeout_retry = \"10s\""),
        );
    }
    let relay = TestRelay::start(&format!("{subscriptions}{}", admin_section())).await;
    let admin = Admin::of(&relay);
    for n in 0..NOTIFICATIONS {
        post_tus(&relay, &format!("bulk-{n}"), &format!("0005-{n:05}")).await;
    }
    // Waits bounded by progress: on a loaded machine the relay is slow, and
    // only one that stops moving fails (the counts say how far it got).
    let all_in = |stats: Value, state: &str| {
        let counts: Vec<u64> = (0..SUBSCRIPTIONS)
            .map(|n| {
                stats["subscriptions"][format!("s{n}")][state]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        if counts.iter().all(|&count| count == NOTIFICATIONS as u64) {
            Ok(())
        } else {
            Err(counts.iter().sum())
        }
    };
    crate::progress::while_progressing("all deliveries dead", async || {
        all_in(admin.get("/api/stats").await, "dead")
    })
    .await;
    target.fail_randomly(0.0);
    let deliveries = (NOTIFICATIONS * SUBSCRIPTIONS) as u64;

    let (dry_status, dry) = admin
        .call("POST", "/api/replay?dry_run=true", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (dry_status, dry["deliveries"].as_u64()),
        (200, Some(deliveries)),
        "a dry run counts at once: {dry}"
    );

    // "At once" against a plain call's time on this machine now (a loaded
    // machine slows both); the counts below are what prove nothing was
    // picked before the answer.
    let looked = tokio::time::Instant::now();
    admin.get("/api/stats").await;
    let at_once = (10 * looked.elapsed()).max(Duration::from_secs(2));
    let asked = tokio::time::Instant::now();
    let (status, started) = admin.call("POST", "/api/replay", Some(ADMIN_TOKEN)).await;
    let answered_in = asked.elapsed();
    assert_eq!(status, 202, "{started}");
    assert_eq!(
        (started["deliveries"].as_u64(), started["replayed"].as_u64()),
        (Some(0), Some(0)),
        "answered before anything was picked: {started}"
    );
    assert!(
        answered_in < at_once,
        "at once: {answered_in:?} (limit {at_once:?})"
    );
    // One job at a time.
    let (second, body) = admin.call("POST", "/api/replay", Some(ADMIN_TOKEN)).await;
    let id = started["id"].as_str().unwrap().to_owned();
    let finished = crate::progress::while_progressing("the job done", async || {
        let job = admin.get(&format!("/api/jobs/{id}")).await;
        match job["state"] == "running" {
            true => Err(job["replayed"].as_u64().unwrap_or(0)),
            false => Ok(job),
        }
    })
    .await;
    if second == 202 {
        // The first one ended before the second was asked: not a refusal.
        assert_eq!(finished["state"], "done", "{finished}");
    } else {
        assert_eq!(second, 409, "a second job while one runs: {body}");
    }
    assert_eq!(finished["state"], "done", "{finished}");
    eprintln!(
        "bulk replay of {deliveries}: 202 in {answered_in:?}, job done in {:?}",
        asked.elapsed()
    );
    assert_eq!(
        (
            finished["deliveries"].as_u64(),
            finished["replayed"].as_u64(),
            finished["notifications"].as_u64(),
            finished["skipped"].as_u64(),
        ),
        (
            Some(deliveries),
            Some(deliveries),
            Some(NOTIFICATIONS as u64),
            Some(0)
        ),
        "{finished}"
    );
    assert!(finished["finished_at"].as_str().is_some(), "{finished}");
    let delivered = crate::progress::until_stalled(
        "every replayed delivery delivered",
        crate::progress::STALL,
        async || all_in(admin.get("/api/stats").await, "delivered"),
    )
    .await;
    if let Err(stuck) = delivered {
        // Which state the missing ones are in tells a lost wake-up (waiting)
        // from attempts that failed (dead again).
        let stats = admin.get("/api/stats").await;
        panic!(
            "every replayed delivery delivered: stuck at {stuck}; {}",
            stats["subscriptions"]
        );
    }
    // Audited once it ended, with its counts.
    let audit = admin.get("/api/audit").await;
    let record = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "replay.bulk" && r["detail"]["job"] == id.as_str())
        .unwrap_or_else(|| panic!("the job's audit record: {audit}"))
        .clone();
    assert_eq!(record["detail"]["replayed"], deliveries, "{record}");
    assert_eq!(record["actor"], "ops");
    relay.stop().await;
}
