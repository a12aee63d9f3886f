//! Reconciliation on demand, through the surfaces (issue 20): the admin
//! API (`POST /api/invoices/{source}/{subject}/reconcile`, audited with the
//! token's name; 404, 409, 502 with the check recorded anyway), the bulk
//! reconciliation by filter (dry run count, then the job's result), the
//! CLI binary (`invoice reconcile`, one and by filter) and the invoice
//! page's "Check with the provider" button in headless Chromium. A real
//! relay, the TusFacturas query API simulator and a recording target.

use std::time::Duration;

use serde_json::{json, Value};

use crate::admin::*;
use crate::helpers::*;
use crate::provider_sim::{Fault, InvoiceState, ProviderSim};

const WAIT: Duration = Duration::from_secs(30);
const APIKEY: &str = "64914";
const APITOKEN: &str = "apitoken-0123456789";
const USERTOKEN: &str = "usertoken-0123456789";

/// A relay whose `tusfacturas` source asks the simulator (`datil` has no
/// `reconcile`), delivering to `target` as `billing`.
struct Scene {
    relay: TestRelay,
    admin: Admin,
    sim: ProviderSim,
    target: Target,
    _secrets: tempfile::TempDir,
}

async fn scene() -> Scene {
    let sim = ProviderSim::tusfacturas(APIKEY, APITOKEN, USERTOKEN).await;
    let target = Target::start(Vec::new()).await;
    let secrets = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, format!("{text}\n")).unwrap();
        path.display().to_string()
    };
    let reconcile = format!(
        "\n[sources.tusfacturas.reconcile]\nurl = \"{}\"\napikey = \"{APIKEY}\"\napitoken_file = \"{}\"\nusertoken_file = \"{}\"\nrate = \"100/s\"\ntimeout = \"2s\"\n",
        sim.url(),
        file("apitoken", APITOKEN),
        file("usertoken", USERTOKEN),
    );
    // The reconcile table goes right after its source's table.
    let relay = TestRelay::start_edited(|base| {
        let source =
            format!("[sources.tusfacturas]\nprovider = \"tusfacturas\"\ntoken = \"{TUS_TOKEN}\"\n");
        assert!(base.contains(&source), "{base}");
        format!(
            "{}{}{}",
            base.replace(&source, &format!("{source}{reconcile}")),
            subscription("billing", &target.url(), ""),
            admin_section()
        )
    })
    .await;
    let admin = Admin::of(&relay);
    Scene {
        relay,
        admin,
        sim,
        target,
        _secrets: secrets,
    }
}

impl Scene {
    /// The provider's `encolado` webhook for `reference`, posted; the
    /// invoice is then queued.
    async fn queued(&self, reference: &str) {
        let body = self.sim.webhook(reference, InvoiceState::Pending);
        let (status, answer) = self
            .relay
            .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), body)
            .await;
        assert_eq!(status, 200, "{answer}");
        let invoice = self
            .admin
            .get(&format!("/api/invoices/tusfacturas/{reference}"))
            .await;
        assert_eq!(invoice["status"], "queued", "{invoice}");
    }

    async fn reconcile(&self, path: &str, token: &str) -> (u16, Value) {
        self.admin.call("POST", path, Some(token)).await
    }

    async fn bulk(&self, filter: Value) -> (u16, Value) {
        let response = self
            .admin
            .client
            .post(format!("{}/api/invoices/reconcile", self.admin.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(filter.to_string())
            .send()
            .await
            .unwrap();
        answer(response).await
    }
}

/// The audit log's records of `action`, newest first.
async fn audited(admin: &Admin, action: &str) -> Vec<Value> {
    let log = admin.get("/api/audit").await;
    log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == action)
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_admin_checks_an_invoice_with_its_provider_and_the_answer_becomes_its_notification() {
    let scene = scene().await;
    scene.queued("ref-1").await;
    scene.queued("ref-2").await;
    scene.sim.set("ref-1", InvoiceState::Accepted);

    // A viewer may not; an admin may, and gets the check.
    let one = "/api/invoices/tusfacturas/ref-1/reconcile";
    let (status, refused) = scene.reconcile(one, VIEWER_TOKEN).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(scene.sim.count(), 0, "a refused call asks nothing");
    let (status, check) = scene.reconcile(one, ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["outcome"], "final", "{check}");
    assert_eq!(check["status"], "accepted", "{check}");
    assert_eq!(check["stored"], true, "{check}");
    assert_eq!(check["by"], "ops", "{check}");
    assert_eq!(check["subject"], "ref-1", "{check}");
    let requests = scene.sim.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].key.as_deref(), Some("ref-1"));

    // The answer is the invoice's notification now, delivered with its
    // origin; the check is on the timeline, with who asked.
    let stored = check["notification"].as_str().unwrap().to_owned();
    assert!(
        scene
            .target
            .wait_until(WAIT, |t| t.succeeded(&stored))
            .await
    );
    let delivered = scene
        .target
        .received()
        .into_iter()
        .find(|r| r.headers["webhook-id"] == stored.as_str())
        .unwrap();
    assert_eq!(delivered.headers["x-relay-origin"], "reconcile");
    let invoice = scene.admin.get("/api/invoices/tusfacturas/ref-1").await;
    assert_eq!(invoice["status"], "accepted", "{invoice}");
    let checks = invoice["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{invoice}");
    assert_eq!(checks[0]["by"], "ops");
    assert_eq!(checks[0]["notification"], stored.as_str());
    // Audited with the token's name.
    let records = audited(&scene.admin, "reconcile").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["actor"], "ops");
    assert_eq!(records[0]["target"], "tusfacturas/ref-1");
    assert_eq!(records[0]["detail"]["outcome"], "final");

    // Unknown invoice: 404; a source without `reconcile`: 409; an unknown
    // source: 404. None of them reaches the provider.
    for (path, wanted) in [
        ("/api/invoices/tusfacturas/ref-none/reconcile", 404),
        ("/api/invoices/datil/ref-1/reconcile", 409),
        ("/api/invoices/nosuch/ref-1/reconcile", 404),
    ] {
        let (status, answer) = scene.reconcile(path, ADMIN_TOKEN).await;
        assert_eq!(status, wanted, "{path}: {answer}");
        assert!(answer["detail"].is_string(), "{answer}");
    }
    assert_eq!(scene.sim.count(), 1);

    // The provider fails: 502, and the failed check is recorded all the
    // same, with the start of the answer; no notification.
    scene.sim.set("ref-2", InvoiceState::Accepted);
    scene.sim.fault_next(Fault::Status(503));
    let (status, failed) = scene
        .reconcile("/api/invoices/tusfacturas/ref-2/reconcile", ADMIN_TOKEN)
        .await;
    assert_eq!(status, 502, "{failed}");
    assert_eq!(failed["error"], "provider_failed", "{failed}");
    assert_eq!(failed["check"]["outcome"], "failed", "{failed}");
    assert_eq!(failed["check"]["http_status"], 503, "{failed}");
    let invoice = scene.admin.get("/api/invoices/tusfacturas/ref-2").await;
    assert_eq!(invoice["status"], "queued", "{invoice}");
    assert_eq!(invoice["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(invoice["checks"][0]["outcome"], "failed", "{invoice}");
    assert!(invoice["checks"][0]["answer"].is_string(), "{invoice}");
    scene.relay.stop().await;
}

#[tokio::test]
async fn a_bulk_reconciliation_counts_first_then_checks_each_invoice_in_a_job() {
    let scene = scene().await;
    for reference in ["b-1", "b-2", "b-3"] {
        scene.queued(reference).await;
    }
    scene.sim.set("b-1", InvoiceState::Accepted);
    scene.sim.set("b-2", InvoiceState::Pending);
    scene.sim.set("b-3", InvoiceState::Rejected);

    let (status, count) = scene
        .bulk(json!({"source": "tusfacturas", "since": "1h", "dry_run": true}))
        .await;
    assert_eq!(status, 200, "{count}");
    assert_eq!(count["count"], 3, "{count}");
    assert_eq!(scene.sim.count(), 0, "a dry run asks nothing");
    let (status, none) = scene
        .bulk(json!({"source": "tusfacturas", "status": "accepted", "dry_run": true}))
        .await;
    assert_eq!(status, 200, "{none}");
    assert_eq!(none["count"], 0, "{none}");
    let (status, refused) = scene
        .bulk(json!({"source": "datil", "dry_run": true}))
        .await;
    assert_eq!(status, 409, "{refused}");
    let (status, bad) = scene
        .bulk(json!({"source": "tusfacturas", "since": "soon"}))
        .await;
    assert_eq!(status, 400, "{bad}");

    let (status, started) = scene
        .bulk(json!({"source": "tusfacturas", "since": "1h"}))
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["kind"], "reconcile", "{started}");
    let path = format!("/api/jobs/{}", started["id"].as_str().unwrap());
    let job = scene
        .admin
        .wait_for(&path, "the job's end", |j| j["state"] != "running")
        .await;
    assert_eq!(job["state"], "done", "{job}");
    for (count, wanted) in [
        ("invoices", 3),
        ("checked", 3),
        ("final", 2),
        ("pending", 1),
        ("failed", 0),
        ("skipped", 0),
    ] {
        assert_eq!(job[count], wanted, "{count}: {job}");
    }
    assert_eq!(scene.sim.count(), 3);
    for (reference, status) in [("b-1", "accepted"), ("b-2", "queued"), ("b-3", "rejected")] {
        let invoice = scene
            .admin
            .get(&format!("/api/invoices/tusfacturas/{reference}"))
            .await;
        assert_eq!(invoice["status"], status, "{invoice}");
        assert_eq!(invoice["checks"][0]["by"], "ops", "{invoice}");
    }
    let records = audited(&scene.admin, "reconcile.bulk").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["actor"], "ops");
    assert_eq!(records[0]["detail"]["final"], 2, "{records:?}");
    scene.relay.stop().await;
}

/// A bulk reconciliation whose provider fails (here a 503 from a proxy in
/// front) stops at the first failure instead of asking about every
/// invoice left at the source's rate: one request, the job failed and
/// saying why, the invoices left as they were.
#[tokio::test]
async fn a_bulk_reconciliation_stops_at_the_first_failure_of_its_provider() {
    let scene = scene().await;
    for reference in ["f-1", "f-2", "f-3", "f-4"] {
        scene.queued(reference).await;
        scene.sim.set(reference, InvoiceState::Accepted);
    }
    scene.sim.fault_always(Some(Fault::Status(503)));
    let (status, started) = scene
        .bulk(json!({"source": "tusfacturas", "since": "1h"}))
        .await;
    assert_eq!(status, 202, "{started}");
    let path = format!("/api/jobs/{}", started["id"].as_str().unwrap());
    let job = scene
        .admin
        .wait_for(&path, "the job's end", |j| j["state"] != "running")
        .await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .is_some_and(|e| e.contains("provider_error")),
        "{job}"
    );
    assert_eq!(
        (job["checked"].clone(), job["failed"].clone()),
        (json!(1), json!(1)),
        "{job}"
    );
    assert_eq!(scene.sim.count(), 1, "one request, not one per invoice");
    for reference in ["f-1", "f-2", "f-3", "f-4"] {
        let invoice = scene
            .admin
            .get(&format!("/api/invoices/tusfacturas/{reference}"))
            .await;
        assert_eq!(invoice["status"], "queued", "{invoice}");
    }
    scene.relay.stop().await;
}

/// The built binary, as an operator runs it: one invoice, then a filter's
/// count and its job to the end (progress on stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reconciles_one_invoice_and_a_filter_through_the_running_relay() {
    let scene = scene().await;
    for reference in ["c-1", "c-2"] {
        scene.queued(reference).await;
    }
    scene.sim.set("c-1", InvoiceState::Pending);
    scene.sim.set("c-2", InvoiceState::Accepted);
    let config = cli_config(&scene.relay);
    let run = |args: &'static [&'static str]| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || cli(&config, args, ADMIN_TOKEN))
    };

    let (code, out, err) = run(&["invoice", "reconcile", "tusfacturas", "c-1"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("tusfacturas c-1: still pending: "), "{out}");
    let (code, out, err) = run(&["invoice", "reconcile", "datil", "c-1"])
        .await
        .unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("409") && err.contains("reconcile"), "{err}");
    let (code, out, err) = run(&["invoice", "reconcile", "--source", "tusfacturas"])
        .await
        .unwrap();
    assert_eq!(code, 64, "neither --dry-run nor --yes: {out}{err}");

    let (code, out, err) = run(&[
        "invoice",
        "reconcile",
        "--source",
        "tusfacturas",
        "--since",
        "1h",
        "--dry-run",
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        "would ask the provider about 2 invoices (run again with --yes)"
    );
    let (code, out, err) = run(&["invoice", "reconcile", "--source", "tusfacturas", "--yes"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        "asked the provider about 2 of 2 invoices: 1 final, 1 still pending, 0 failed, 0 skipped",
        "{err}"
    );
    assert!(err.contains("reconcile job "), "progress on stderr: {err}");
    let invoice = scene.admin.get("/api/invoices/tusfacturas/c-2").await;
    assert_eq!(invoice["status"], "accepted", "{invoice}");
    // c-1: asked once alone, once by the job.
    let c1 = scene.admin.get("/api/invoices/tusfacturas/c-1").await;
    assert_eq!(c1["checks"].as_array().unwrap().len(), 2, "{c1}");
    scene.relay.stop().await;
}

/// Headless Chromium: an admin opens a queued invoice, presses "Check with
/// the provider", and the page comes back with the check on the timeline
/// and the invoice accepted; a source without `reconcile` shows no button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invoice_page_button_checks_with_the_provider_and_shows_it_on_the_timeline() {
    use fantoccini::Locator;

    let Some((browser, mut driver)) = headless_browser().await else {
        return;
    };
    let scene = scene().await;
    scene.queued("p-1").await;
    scene.sim.set("p-1", InvoiceState::Accepted);
    let datil = post_datil(&scene).await;

    browser.goto(&scene.admin.base).await.unwrap();
    log_in(&browser, ADMIN_TOKEN).await;
    shown(&browser, Locator::Css("form[action='/logout']")).await;
    browser
        .goto(&format!("{}/i/tusfacturas/p%2D1", scene.admin.base))
        .await
        .unwrap();
    assert_eq!(
        shown(&browser, Locator::Id("invoice-status"))
            .await
            .text()
            .await
            .unwrap(),
        "queued"
    );
    shown(&browser, Locator::Id("reconcile"))
        .await
        .click()
        .await
        .unwrap();
    let check = shown(&browser, Locator::Css("tr.check")).await;
    let text = check.text().await.unwrap();
    assert!(
        text.contains("check with the provider") && text.contains("asked by ops"),
        "{text}"
    );
    assert!(
        text.contains("accepted") && text.contains("final: stored as"),
        "{text}"
    );
    assert_eq!(
        shown(&browser, Locator::Id("invoice-status"))
            .await
            .text()
            .await
            .unwrap(),
        "accepted"
    );
    assert_eq!(scene.sim.count(), 1);
    let records = audited(&scene.admin, "reconcile").await;
    assert_eq!(records[0]["actor"], "ops", "{records:?}");

    // No button where the source has no query API, nor for a viewer.
    browser
        .goto(&format!("{}/i/datil/{datil}", scene.admin.base))
        .await
        .unwrap();
    shown(&browser, Locator::Id("invoice-status")).await;
    assert!(browser.find(Locator::Id("reconcile")).await.is_err());
    let viewer = scene
        .admin
        .page_as("/i/tusfacturas/p%2D1", VIEWER_TOKEN)
        .await;
    assert!(viewer.contains("class=check"), "{viewer}");
    assert!(!viewer.contains("id=reconcile"), "{viewer}");
    browser.close().await.unwrap();
    let _ = driver.kill().await;
    scene.relay.stop().await;
}

/// Posts a Dátil invoice (a source without `reconcile`); its subject as
/// a path segment.
async fn post_datil(scene: &Scene) -> String {
    let sim = ProviderSim::datil("unused").await;
    let body = sim.webhook("d-1", InvoiceState::Pending);
    let (status, answer) = scene
        .relay
        .post(&format!("/hooks/datil/{DATIL_TOKEN}"), body)
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap();
    let stored = scene.admin.get(&format!("/api/notifications/{id}")).await;
    let subject = stored["subject"]
        .as_str()
        .expect("a Dátil invoice has a subject");
    form_urlencoded::byte_serialize(subject.as_bytes()).collect()
}
