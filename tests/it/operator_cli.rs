//! The CLI as an operator at a terminal meets it, on the built binary and
//! a running relay: a closed pipe ends a command quietly; tables never
//! hide a delivery's state.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::admin::{cli, cli_config, post_latin1_tus, post_tus, Admin, ADMIN_TOKEN, VIEWER_TOKEN};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

/// Runs the CLI with its standard output a pipe whose reader is gone
/// before the command writes (it must first ask the relay): its status
/// and standard error.
fn cli_into_closed_pipe(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(crate::process::BINARY)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("WEBHOOK_RELAY_TOKEN", VIEWER_TOKEN)
        .env_remove("WEBHOOK_RELAY_ADMIN_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the relay binary runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("the CLI ends");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_every_printing_command_quietly_with_status_0() {
    let target = Target::start(vec![]).await;
    let relay = TestRelay::start(&format!(
        "{}{}",
        subscription("billing", &target.url(), ""),
        crate::admin::admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);
    let id = post_tus(&relay, "pipe-1", "0001-0001").await;
    admin
        .wait_for("/api/notifications?state=delivered", "delivered", |b| {
            crate::admin::items(b) == 1
        })
        .await;
    let config = cli_config(&relay);
    for args in [
        &["spool", "ls", "--json"][..],
        &["spool", "ls"],
        &["spool", "show", &id],
        &["spool", "show", &id, "--json"],
        &["spool", "stats"],
        &["subscriptions", "ls"],
        &["invoice", "ls"],
        &["invoice", "show", "tusfacturas", "0001-0001"],
    ] {
        let (status, stderr) = tokio::task::block_in_place(|| cli_into_closed_pipe(&config, args));
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(status, Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}: quiet");
    }
    // The same commands into an open pipe print as before.
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&config, &["spool", "ls", "--json"], ADMIN_TOKEN));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_ls_counts_every_state_and_show_decodes_a_latin1_body() {
    let failing = Target::start(vec![Reply::Status(500); 4]).await;
    let ok = Target::start(vec![]).await;
    // Three subscriptions with long names: cut at 48 characters, the old
    // `name:state` column hid the third one's state.
    let relay = TestRelay::start(&format!(
        "{}{}{}{}",
        subscription("erp-accounting-main", &ok.url(), ""),
        subscription("erp-accounting-backup", &ok.url(), ""),
        subscription("dead-end", &failing.url(), ""),
        crate::admin::admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);
    let id = post_latin1_tus(&relay, "cli-latin1", "emitido").await;
    admin
        .wait_for(
            "/api/notifications?state=dead",
            "the dead-end delivery dead",
            |b| crate::admin::items(b) == 1,
        )
        .await;
    admin
        .wait_for(
            &format!("/api/notifications/{id}"),
            "both erp deliveries delivered",
            |b| {
                b["deliveries"]
                    .as_array()
                    .is_some_and(|d| d.iter().filter(|d| d["state"] == "delivered").count() == 2)
            },
        )
        .await;
    let config = cli_config(&relay);

    for filter in [&[][..], &["--state", "dead"]] {
        let args = [&["spool", "ls"][..], filter].concat();
        let (code, out, err) = tokio::task::block_in_place(|| cli(&config, &args, VIEWER_TOKEN));
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].contains("FLAGS") && lines[0].ends_with("DELIVERIES"),
            "{out}"
        );
        let row = lines.iter().find(|l| l.starts_with(&id)).expect("the row");
        assert!(row.ends_with("1 dead, 2 delivered"), "{args:?}: {out}");
        assert!(row.contains("latin1_body"), "{out}");
    }

    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&config, &["spool", "show", &id], VIEWER_TOKEN));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("flags") && l.ends_with("latin1_body")),
        "{out}"
    );
    assert!(out.contains("decoded from Windows-1252"), "{out}");
    assert!(out.contains("\"external_reference\":\"Nº 17032\""), "{out}");
}

/// Adds `name` through the built CLI, with these retry waits and no jitter.
fn add_with_schedule(config: &std::path::Path, name: &str, url: &str, schedule: &str) {
    let (code, out, err) = cli(
        config,
        &[
            "subscriptions",
            "add",
            name,
            "--url",
            url,
            "--schedule",
            schedule,
            "--jitter",
            "0",
        ],
        ADMIN_TOKEN,
    );
    assert_eq!(code, 0, "add {name}: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_takes_a_schedule_and_retry_brings_a_subscriptions_waiting_deliveries_forward() {
    // Each target is down for its first request, then up.
    let quick = Target::start(vec![Reply::Status(503)]).await;
    let erp = Target::start(vec![Reply::Status(503)]).await;
    let later = Target::start(vec![Reply::Status(503)]).await;
    let relay = TestRelay::start(&crate::admin::admin_section().replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\nallowed_targets = [\"127.0.0.1\"]\n",
    ))
    .await;
    let admin = Admin::of(&relay);
    let config = cli_config(&relay);
    tokio::task::block_in_place(|| {
        // The default schedule would retry in 5 minutes.
        add_with_schedule(&config, "quick", &quick.url(), "50ms,100ms");
        add_with_schedule(&config, "erp", &erp.url(), "1h");
        add_with_schedule(&config, "later", &later.url(), "1h");
    });
    let (status, body) = admin
        .call("GET", "/api/subscriptions", Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = post_tus(&relay, "retry-1", "0001-0042").await;

    // --schedule took: the second attempt 50 ms after the first.
    quick.wait_for(2, WAIT).await;
    // erp and later tried once, and wait an hour.
    admin
        .wait_for(
            &format!("/api/notifications/{id}"),
            "erp and later waiting after one attempt",
            |b| {
                b["deliveries"].as_array().is_some_and(|ds| {
                    ds.iter().filter(|d| d["subscription"] != "quick").all(|d| {
                        d["state"] == "waiting" && d["attempts"].as_array().map_or(0, Vec::len) == 1
                    })
                })
            },
        )
        .await;
    assert_eq!(erp.count(), 1);

    let (code, out, err) = tokio::task::block_in_place(|| {
        cli(&config, &["subscriptions", "retry", "erp"], ADMIN_TOKEN)
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1 waiting deliveries of erp are due now");
    erp.wait_for(2, WAIT).await;
    admin
        .wait_for(&format!("/api/notifications/{id}"), "erp delivered", |b| {
            b["deliveries"].as_array().is_some_and(|ds| {
                ds.iter()
                    .any(|d| d["subscription"] == "erp" && d["state"] == "delivered")
            })
        })
        .await;
    assert_eq!(later.count(), 1, "a retry is of one subscription");
    let (_, audit) = admin.call("GET", "/api/audit", Some(ADMIN_TOKEN)).await;
    assert!(
        audit["items"].as_array().unwrap().iter().any(|r| {
            r["action"] == "subscription.retry"
                && r["target"] == "erp"
                && r["detail"]["retried"] == 1
        }),
        "audited: {audit}"
    );

    // The page's button, as a logged-in admin.
    let ops = admin.log_in_page(ADMIN_TOKEN).await;
    let (_, page) = ops.get("/").await;
    assert!(page.contains("action=\"/s/later/retry\""), "{page}");
    let pressed = ops.press("/s/later/retry").await;
    assert_eq!(pressed.status(), 303);
    later.wait_for(2, WAIT).await;
}

/// `doc/webhook-relay.8` (shipped by the package) is what the clap
/// definitions make: a command or flag added without it fails here.
#[test]
fn the_shipped_man_page_is_the_generated_one() {
    let out = Command::new(crate::process::BINARY)
        .arg("man")
        .output()
        .expect("the relay binary runs");
    assert!(out.status.success(), "{out:?}");
    let shipped = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/webhook-relay.8"))
        .expect("doc/webhook-relay.8");
    assert!(
        shipped == out.stdout,
        "doc/webhook-relay.8 differs from the clap definitions; regenerate it with \
         `cargo run -q -- man > doc/webhook-relay.8`"
    );
}
