//! The CLI as an operator at a terminal meets it, on the built binary and
//! a running relay: a closed pipe ends a command quietly; tables never
//! hide a delivery's state.

use std::process::{Command, Stdio};

use crate::admin::{cli, cli_config, post_tus, Admin, ADMIN_TOKEN, VIEWER_TOKEN};
use crate::helpers::*;

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
