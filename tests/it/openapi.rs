//! `doc/openapi.json` tells a client what each answer holds: every
//! operation documents a JSON Schema for each status it lists, and a live
//! relay's answers (one with a delivered, a dead and a waiting delivery,
//! quarantined bodies, an invoice's timeline, an API subscription, bulk
//! jobs, and checks with a provider's query API simulator) match them, checked with the `jsonschema` crate (OpenAPI 3.1
//! schemas are JSON Schema 2020-12).

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::admin::{admin_section, post_tus, Admin, ADMIN_TOKEN};
use crate::helpers::*;
use crate::provider_sim::{Fault, InvoiceState, ProviderSim};

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The spec, the live admin listener, and the operations seen answering
/// 2xx so far.
struct Checker {
    spec: Value,
    admin: Admin,
    answered: BTreeSet<(String, String)>,
}

impl Checker {
    fn load(admin: Admin) -> Checker {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/openapi.json");
        let spec = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        Checker {
            spec,
            admin,
            answered: BTreeSet::new(),
        }
    }

    /// Every operation, and every status it documents, has a schema for
    /// what it answers.
    fn every_response_has_a_schema(&self) {
        let mut missing = Vec::new();
        for (path, operations) in self.spec["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let schemas = response["content"]
                        .as_object()
                        .map(|c| c.values().filter(|m| m.get("schema").is_some()).count());
                    if schemas.unwrap_or(0) == 0 {
                        missing.push(format!("{} {path} {status}", method.to_uppercase()));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{} responses have no schema: {missing:#?}",
            missing.len()
        );
    }

    /// Sends `method path` (the operation `template`) as the admin, checks
    /// that the status is documented and the answer matches its schema;
    /// returns the status and the answer.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let verb = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .admin
            .client
            .request(verb, format!("{}{path}", self.admin.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("admin listener answers");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = response.text().await.unwrap();
        let what = format!("{method} {path} ({template}) answered {status}");
        let documented =
            &self.spec["paths"][template][method.to_lowercase()]["responses"][status.to_string()];
        assert!(documented.is_object(), "{what}: not documented: {text}");
        let media = content_type.split(';').next().unwrap_or("").trim();
        let (_, described) = documented["content"]
            .as_object()
            .and_then(|c| {
                c.iter()
                    .find(|(name, _)| name.split(';').next().unwrap().trim() == media)
            })
            .unwrap_or_else(|| panic!("{what}: no schema for {content_type:?}: {text}"));
        let answer = if media == "application/json" {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
        } else {
            Value::String(text)
        };
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.spec["components"],
            "allOf": [described["schema"]],
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{what}: its schema does not build: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&answer)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the answer does not match its schema:\n{}\n{answer:#}",
            errors.join("\n")
        );
        if (200..300).contains(&status) {
            self.answered
                .insert((method.to_lowercase(), template.to_owned()));
        }
        (status, answer)
    }

    async fn expect(&mut self, status: u16, method: &str, template: &str, path: &str) -> Value {
        let (got, answer) = self.call(method, template, path, None).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        answer
    }
}

/// Every operation of `doc/openapi.json` documents a response schema for
/// each status it lists, and a relay's live answers, 2xx and errors alike,
/// match the schema of their status.
#[tokio::test]
async fn every_operation_answers_as_its_openapi_response_schema_says() {
    // Billing: the first notification's four attempts fail (dead), the
    // second is delivered. `slow`'s target refuses connections and its next
    // try is an hour away: its deliveries wait.
    let target = Target::start(vec![Reply::Status(500); 4]).await;
    let closed = closed_port().await;
    let slow = format!(
        "\n[[subscriptions]]\nname = \"slow\"\nurl = \"http://127.0.0.1:{closed}/\"\nsecret = \"{SECRET}\"\nschedule = [\"1h\"]\njitter = 0.0\n"
    );
    let section = admin_section().replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nallowed_targets = [\"127.0.0.1\"]\n",
    );
    // `tusfacturas` asks the TusFacturas query API simulator.
    let sim = ProviderSim::tusfacturas("64914", "apitoken-0123", "usertoken-0123").await;
    let secrets = tempfile::tempdir().unwrap();
    for name in ["apitoken", "usertoken"] {
        std::fs::write(secrets.path().join(name), format!("{name}-0123\n")).unwrap();
    }
    let reconcile = format!(
        "\n[sources.tusfacturas.reconcile]\nurl = \"{}\"\napikey = \"64914\"\napitoken_file = \"{}\"\nusertoken_file = \"{}\"\nrate = \"100/s\"\ntimeout = \"2s\"\n",
        sim.url(),
        secrets.path().join("apitoken").display(),
        secrets.path().join("usertoken").display(),
    );
    let extra = format!(
        "{}{slow}{section}{reconcile}",
        subscription("billing", &target.url(), "")
    );
    let config_text = format!("{}{extra}", base_config(std::path::Path::new("/unused")));
    let relay = TestRelay::start(&extra).await;
    let config_text = config_text.replace(
        &std::path::Path::new("/unused")
            .join("spool")
            .display()
            .to_string(),
        &relay.dir.path().join("spool").display().to_string(),
    );
    let mut checker = Checker::load(Admin::of(&relay));
    checker.every_response_has_a_schema();

    let dead = post_tus(&relay, "o-1", "0006-0001").await;
    checker
        .admin
        .wait_for("/api/notifications?state=dead", "the dead delivery", |b| {
            b["items"].as_array().is_some_and(|i| i.len() == 1)
        })
        .await;
    let delivered = post_tus(&relay, "o-2", "0006-0002").await;
    assert!(target.wait_until(WAIT, |t| t.succeeded(&delivered)).await);
    checker
        .admin
        .wait_for("/api/stats", "one delivered, one dead", |s| {
            s["subscriptions"]["billing"]["delivered"] == 1
                && s["subscriptions"]["slow"]["waiting"] == 2
        })
        .await;
    let mut quarantined = Vec::new();
    for n in 0..2 {
        let (status, json) = relay
            .post(
                &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
                format!("{{\"not\": \"tusfacturas\", \"n\": {n}}}"),
            )
            .await;
        assert_eq!(status, 422, "{json}");
        quarantined.push(json["quarantine_id"].as_str().unwrap().to_owned());
    }
    let (status, created) = checker
        .call(
            "POST",
            "/api/subscriptions",
            "/api/subscriptions",
            Some(json!({ "name": "erp", "url": target.url() })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let (status, _) = checker
        .call(
            "POST",
            "/api/subscriptions",
            "/api/subscriptions",
            Some(json!({ "name": "erp", "url": target.url() })),
        )
        .await;
    assert_eq!(status, 409, "the name is taken");

    for path in ["/healthz", "/readyz", "/metrics"] {
        checker.expect(200, "GET", path, path).await;
    }
    let list = "/api/notifications";
    let page = checker.expect(200, "GET", list, list).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
    for query in ["?state=dead", "?state=waiting", "?state=quarantined"] {
        checker
            .expect(200, "GET", list, &format!("{list}?{}", &query[1..]))
            .await;
    }
    checker
        .expect(400, "GET", list, "/api/notifications?state=lost")
        .await;
    let one = "/api/notifications/{id}";
    let shown = checker
        .expect(200, "GET", one, &format!("/api/notifications/{dead}"))
        .await;
    let states: BTreeSet<&str> = shown["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["state"].as_str())
        .collect();
    assert_eq!(states, BTreeSet::from(["dead", "waiting"]), "{shown}");
    checker
        .expect(
            404,
            "GET",
            one,
            "/api/notifications/01KAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .await;
    checker
        .expect(400, "GET", one, "/api/notifications/nonsense")
        .await;

    let quarantine = "/api/quarantine";
    checker.expect(200, "GET", quarantine, quarantine).await;
    let [released, discarded] = [&quarantined[0], &quarantined[1]];
    checker
        .expect(
            200,
            "GET",
            "/api/quarantine/{id}",
            &format!("{quarantine}/{released}"),
        )
        .await;
    checker
        .expect(
            200,
            "POST",
            "/api/quarantine/{id}/release",
            &format!("{quarantine}/{released}/release?as=generic"),
        )
        .await;
    checker
        .expect(
            200,
            "POST",
            "/api/quarantine/{id}/discard",
            &format!("{quarantine}/{discarded}/discard"),
        )
        .await;
    checker
        .expect(
            404,
            "POST",
            "/api/quarantine/{id}/discard",
            &format!("{quarantine}/{discarded}/discard"),
        )
        .await;

    checker.expect(200, "GET", "/api/stats", "/api/stats").await;
    let subs = checker
        .expect(200, "GET", "/api/subscriptions", "/api/subscriptions")
        .await;
    assert_eq!(subs["items"].as_array().unwrap().len(), 3, "{subs}");

    let replay = "/api/notifications/{id}/replay";
    checker
        .expect(
            409,
            "POST",
            replay,
            &format!("/api/notifications/{delivered}/replay"),
        )
        .await;
    checker
        .expect(
            200,
            "POST",
            replay,
            &format!("/api/notifications/{dead}/replay"),
        )
        .await;
    // The replay job sends the delivered one again; the purge job picks
    // nothing (no dead delivery of that invoice), so `slow` keeps waiting.
    for (bulk, pick) in [
        ("/api/replay", "state=delivered&subject=0006-0002"),
        ("/api/purge", "state=dead&subject=0006-0002"),
    ] {
        checker
            .expect(200, "POST", bulk, &format!("{bulk}?dry_run=true"))
            .await;
        let job = checker
            .expect(202, "POST", bulk, &format!("{bulk}?{pick}"))
            .await;
        let path = format!("/api/jobs/{}", job["id"].as_str().unwrap());
        let deadline = tokio::time::Instant::now() + WAIT;
        while checker.expect(200, "GET", "/api/jobs/{id}", &path).await["state"] == "running" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} still running"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // The archive: not JSON, checked as the documented binary string.
    checker
        .expect(200, "POST", "/api/spool/backup", "/api/spool/backup")
        .await;
    checker
        .expect(
            404,
            "GET",
            "/api/jobs/{id}",
            "/api/jobs/01KAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .await;

    let erp = "/api/subscriptions/erp";
    for (action, query) in [
        ("pause", ""),
        ("resume", ""),
        ("retry", ""),
        ("backfill", "?since=1h&dry_run=true"),
        ("backfill", "?since=1h"),
        ("test", ""),
        ("rotate-secret", "?overlap=1h"),
    ] {
        let template = format!("/api/subscriptions/{{name}}/{action}");
        checker
            .expect(200, "POST", &template, &format!("{erp}/{action}{query}"))
            .await;
    }
    checker
        .expect(
            409,
            "POST",
            "/api/subscriptions/{name}/rotate-secret",
            "/api/subscriptions/billing/rotate-secret",
        )
        .await;

    // The relay runs in this process: the test answers its reload request.
    let mut requests = relay.relay().take_reload_requests().unwrap();
    let config = webhook_relay::config::Config::parse(&config_text).unwrap();
    let (reloaded, ()) = tokio::join!(
        checker.expect(200, "POST", "/api/reload", "/api/reload"),
        async {
            let reply = requests.recv().await.unwrap();
            let report = relay.relay().reload(config).await;
            let _ = reply.send(
                report
                    .map(|r| serde_json::to_value(r).unwrap())
                    .map_err(|e| e.to_string()),
            );
        }
    );
    assert!(reloaded["subscriptions_paused_target_not_allowed"].is_array());

    checker.expect(200, "GET", "/api/audit", "/api/audit").await;
    let invoices = "/api/invoices";
    checker.expect(200, "GET", invoices, invoices).await;
    checker
        .expect(200, "GET", invoices, "/api/invoices?stuck=true")
        .await;
    let timeline = checker
        .expect(
            200,
            "GET",
            "/api/invoices/{source}/{subject}",
            "/api/invoices/tusfacturas/0006-0001",
        )
        .await;
    assert!(!timeline["notifications"].as_array().unwrap().is_empty());
    checker
        .expect(
            404,
            "GET",
            "/api/invoices/{source}/{subject}",
            "/api/invoices/tusfacturas/none",
        )
        .await;
    // Checks with the provider: an answer (200), a failure (502, the check
    // recorded), no such invoice (404), a source without `reconcile` (409).
    let check = "/api/invoices/{source}/{subject}/reconcile";
    sim.set("0006-0001", InvoiceState::Accepted);
    let checked = checker
        .expect(
            200,
            "POST",
            check,
            "/api/invoices/tusfacturas/0006-0001/reconcile",
        )
        .await;
    assert_eq!(checked["outcome"], "final", "{checked}");
    sim.fault_next(Fault::Status(500));
    checker
        .expect(
            502,
            "POST",
            check,
            "/api/invoices/tusfacturas/0006-0001/reconcile",
        )
        .await;
    checker
        .expect(
            404,
            "POST",
            check,
            "/api/invoices/tusfacturas/none/reconcile",
        )
        .await;
    checker
        .expect(409, "POST", check, "/api/invoices/datil/none/reconcile")
        .await;
    let timeline = checker
        .expect(
            200,
            "GET",
            "/api/invoices/{source}/{subject}",
            "/api/invoices/tusfacturas/0006-0001",
        )
        .await;
    assert_eq!(
        timeline["checks"].as_array().unwrap().len(),
        2,
        "{timeline}"
    );
    let bulk = "/api/invoices/reconcile";
    for (wanted, body) in [
        (
            200,
            json!({"source": "tusfacturas", "status": "accepted", "dry_run": true}),
        ),
        (409, json!({"source": "datil", "dry_run": true})),
        (404, json!({"source": "nosuch", "dry_run": true})),
        (400, json!({"source": "tusfacturas", "since": "soon"})),
    ] {
        let (status, answer) = checker.call("POST", bulk, bulk, Some(body)).await;
        assert_eq!(status, wanted, "{answer}");
    }
    let (status, job) = checker
        .call(
            "POST",
            bulk,
            bulk,
            Some(json!({"source": "tusfacturas", "status": "accepted"})),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/api/jobs/{}", job["id"].as_str().unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    while checker.expect(200, "GET", "/api/jobs/{id}", &path).await["state"] == "running" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    checker
        .expect(
            200,
            "DELETE",
            "/api/subscriptions/{name}",
            &format!("{erp}?purge=true"),
        )
        .await;
    checker
        .expect(404, "DELETE", "/api/subscriptions/{name}", erp)
        .await;

    // Each /api operation refuses a parameter it does not know, with an
    // error as documented.
    let operations: Vec<(String, String)> = checker.spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    for (method, template) in &operations {
        if !template.starts_with("/api") {
            continue;
        }
        let live = template
            .replace("{id}", &dead)
            .replace("{name}", "billing")
            .replace("{source}", "tusfacturas")
            .replace("{subject}", "0006-0001");
        checker
            .expect(400, method, template, &format!("{live}?bogus=1"))
            .await;
    }

    let unanswered: Vec<String> = operations
        .iter()
        .filter(|(m, p)| !checker.answered.contains(&(m.to_lowercase(), p.clone())))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        unanswered.is_empty(),
        "never seen answering: {unanswered:?}"
    );
    relay.stop().await;
}
