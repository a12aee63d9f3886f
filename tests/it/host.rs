//! The built binary as a host runs it: a listener passed by systemd's
//! socket activation protocol, starts that fail (and write nothing), the
//! refusal of example secrets off loopback, and errors an operator reads.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::helpers::*;
use crate::process::{write_config, RelayProcess, BINARY};

/// Runs the relay the way systemd starts a socket-activated service: the
/// listener at fd 3, `LISTEN_FDS=1`, `LISTEN_FDNAMES`, and `LISTEN_PID` set
/// to the relay's own pid (`pid` = "self"), or to another one.
fn activated(listener: &TcpListener, names: &str, pid: &str, config: &Path) -> Command {
    // Let the socket survive exec; bash (whose redirections take fd numbers
    // past 9, unlike dash) moves it to fd 3 as systemd passes it, sets
    // LISTEN_PID to its own pid, and execs the relay, which keeps that pid.
    rustix::io::fcntl_setfd(listener, rustix::io::FdFlags::empty()).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(listener).to_string();
    let script = r#"
        fd=$1; names=$2; pid=$3; shift 3
        if [ "$fd" != 3 ]; then eval "exec 3<&$fd $fd<&-"; fi
        [ "$pid" = self ] && pid=$$
        LISTEN_FDS=1 LISTEN_FDNAMES=$names LISTEN_PID=$pid exec "$@"
    "#;
    let mut command = Command::new("bash");
    command
        .args([
            "-c", script, "bash", &fd, names, pid, BINARY, "serve", "--config",
        ])
        .arg(config);
    command
}

/// A config whose `server.listen` is an address already taken: a relay that
/// binds it instead of taking the passed socket fails.
fn config_on_taken_port(dir: &Path) -> (TcpListener, std::path::PathBuf) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let path = write_config(dir, "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", taken.local_addr().unwrap()),
    );
    std::fs::write(&path, text).unwrap();
    (taken, path)
}

#[tokio::test]
async fn a_socket_passed_by_systemd_is_served_and_the_configured_address_is_not_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (_taken, config) = config_on_taken_port(dir.path());
    let passed = TcpListener::bind("127.0.0.1:0").unwrap();
    let passed_addr = passed.local_addr().unwrap();

    let relay = RelayProcess::spawn_command(activated(&passed, "ingress", "self", &config)).await;
    drop(passed);
    assert_eq!(relay.addr, passed_addr, "serves the passed socket");
    assert_eq!(relay.logged("\"socket_activated\":true").len(), 1);

    let client = provider_client(&dir.path().join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        passed_addr.port()
    );
    let response = client
        .post(&url)
        .body(tusfacturas("activated-1", "emitido", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    relay.sigterm().await;

    // Nothing of the shipped file is built into the relay: an operator's
    // edit needs no rebuild and cannot be mistaken for a published example.
    let binary = std::fs::read(BINARY).unwrap();
    let shipped = shipped_relay_toml();
    let example_token = shipped
        .split('"')
        .find(|value| value.starts_with("example-tusfacturas-"))
        .unwrap();
    assert!(
        !binary
            .windows(example_token.len())
            .any(|window| window == example_token.as_bytes()),
        "the binary holds relay.toml's {example_token}"
    );
}

#[tokio::test]
async fn a_single_socket_named_by_systemd_is_the_ingress_but_an_admin_one_alone_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (_taken, config) = config_on_taken_port(dir.path());
    // Without FileDescriptorName=, systemd names the socket after its unit.
    let passed = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay =
        RelayProcess::spawn_command(activated(&passed, "webhook-relay.socket", "self", &config))
            .await;
    assert_eq!(relay.addr, passed.local_addr().unwrap());
    relay.sigterm().await;

    let passed = TcpListener::bind("127.0.0.1:0").unwrap();
    let output = activated(&passed, "admin", "self", &config)
        .stdout(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no socket is named \"ingress\"") && stderr.contains("passed: admin"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sockets_passed_to_another_process_are_not_taken_and_a_failed_bind_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (taken, config) = config_on_taken_port(dir.path());
    let passed = TcpListener::bind("127.0.0.1:0").unwrap();
    // LISTEN_PID of another process (pid 1): the variables were inherited,
    // the sockets are not ours; so the relay binds as configured, and fails.
    let output = activated(&passed, "ingress", "1", &config)
        .stdout(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "webhook-relay: cannot listen on {}: Address already in use (os error 98)",
        taken.local_addr().unwrap()
    );
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(expected.as_str()),
        "{stderr}"
    );
    // Each cause once.
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    // Nothing written: no certificate, no spool.
    assert!(
        !dir.path().join("tls").exists(),
        "tls/ written by a failed start"
    );
    assert!(
        !dir.path().join("spool").exists(),
        "spool written by a failed start"
    );

    // A certificate file that is not there: exit 64, and still no spool.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "self_signed = true",
        "tls_cert = \"missing.crt\"\ntls_key = \"missing.key\"",
    );
    let config = dir.path().join("missing-cert.toml");
    std::fs::write(&config, text).unwrap();
    drop(taken);
    let run = relay_cli(&["serve"], &config, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("missing.crt"), "{stderr}");
    assert!(
        !dir.path().join("spool").exists(),
        "spool written by a failed start"
    );
}

#[test]
fn example_secrets_are_refused_off_loopback_and_allowed_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        shipped_relay_toml().replace("listen = \"127.0.0.1:8443\"", "listen = \"0.0.0.0:0\""),
    )
    .unwrap();
    let run = relay_cli(&["serve"], &path, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(64), "{stderr}");
    for key in [
        "sources.tusfacturas.token",
        "sources.datil.token",
        "sources.nubefact.token",
        "subscriptions[0].secret",
    ] {
        assert!(
            stderr.contains(&format!("`{key}`")),
            "names {key}: {stderr}"
        );
    }
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a refused start wrote data/"
    );
    // check-config has nothing against them: they are valid, only public.
    let run = relay_cli(&["check-config"], &path, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The shipped `relay.toml` as a file, read at run time: an operator
/// edits the file, not the binary.
fn shipped_relay_toml() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.toml")).unwrap()
}

#[tokio::test]
async fn the_shipped_relay_toml_with_fresh_secrets_of_ones_own_serves_off_loopback() {
    use base64::Engine as _;
    use rand::distr::{Alphanumeric, SampleString};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let mut rng = rand::rng();
    let mut text = shipped_relay_toml()
        .replace("listen = \"127.0.0.1:8443\"", "listen = \"0.0.0.0:0\"")
        .replace("listen = \"127.0.0.1:9090\"", "listen = \"127.0.0.1:0\"");
    let mut tus_token = String::new();
    for name in ["tusfacturas", "datil", "nubefact", "admin"] {
        let prefix = format!("token = \"example-{name}-");
        let start = text.find(&prefix).expect("an example token") + "token = \"".len();
        let end = start + text[start..].find('"').unwrap();
        let fresh = Alphanumeric.sample_string(&mut rng, 32);
        if name == "tusfacturas" {
            tus_token = fresh.clone();
        }
        text.replace_range(start..end, &fresh);
    }
    let start = text.find("secret = \"whsec_").unwrap() + "secret = \"".len();
    let end = start + text[start..].find('"').unwrap();
    let key: [u8; 32] = rand::random();
    let fresh_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    text.replace_range(start..end, &fresh_secret);
    assert!(!text.contains("\"example-"), "every example replaced");
    std::fs::write(&path, text).unwrap();

    let relay = RelayProcess::spawn(&path).await;
    assert!(relay.addr.ip().is_unspecified(), "{}", relay.addr);
    let client = provider_client(&dir.path().join("data/tls/self-signed.crt"));
    let response = client
        .post(format!(
            "https://localhost:{}/hooks/tusfacturas/{tus_token}",
            relay.addr.port()
        ))
        .body(tusfacturas("fresh-1", "emitido", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    relay.sigterm().await;
}

#[test]
fn check_config_prints_each_problem_on_its_own_prefixed_line_and_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "[server]\nself_signed = true\nmax_body = \"1MB\"\nidle_timeout = \"15 seconds\"\n\n[forwarder]\nmax_in_flight = 0\n\n[sources.open]\nprovider = \"generic\"\n\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nschedule = [\"1y\"]\n",
    )
    .unwrap();
    let run = relay_cli(&["check-config"], &path, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(64), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let file = path.display().to_string();
    let expected = [
        (3, "server.max_body"),
        (4, "server.idle_timeout"),
        (7, "forwarder.max_in_flight"),
        (9, "sources.open"),
        (16, "subscriptions[0].schedule"),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, (number, key)) in lines.iter().zip(expected) {
        let start = format!("webhook-relay: {file}:{number}:");
        assert!(line.starts_with(&start), "{line} starts with {start}");
        assert!(line.contains(&format!("`{key}`")), "{line} names {key}");
    }

    let missing = dir.path().join("missing.toml");
    let run = relay_cli(&["check-config"], &missing, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(64), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "webhook-relay: cannot read config file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

/// `[spool] path = ...`, the spelling of files written before `[spool.sled]`:
/// still read, and named (file, line, key) by `check-config` and at start.
#[tokio::test]
async fn a_config_with_the_flat_spool_spelling_starts_and_is_warned_of_with_file_line_and_key() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let new = write_config(dir.path(), "");
    let run = relay_cli(&["check-config"], &new, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(!stderr.contains("deprecated"), "{stderr}");

    let text = base_config(dir.path()).replace("[spool.sled]\n", "");
    let old = dir.path().join("old.toml");
    std::fs::write(&old, &text).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("path = "))
        .expect("a spool path");
    let place = format!(
        "{}:{line}:1: `spool.path`: deprecated spelling",
        old.display()
    );
    let run = relay_cli(&["check-config"], &old, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let warned: Vec<&str> = stderr.lines().filter(|l| l.contains(&place)).collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(warned[0].contains("WARN"), "{stderr}");
    assert!(warned[0].contains("[spool.sled]"), "{stderr}");

    let relay = RelayProcess::spawn(&old).await;
    let logged = relay.logged(&place);
    assert_eq!(logged.len(), 1, "{}", relay.log_tail(20));
    assert!(logged[0].contains("\"level\":\"WARN\""), "{}", logged[0]);
    // The flat path is the spool's, not the default beside the file.
    assert!(dir.path().join("spool").is_dir());
    assert!(!dir.path().join("data").exists());
    relay.sigterm().await;
}

#[tokio::test]
async fn sighup_applies_a_changed_config_and_keeps_the_running_one_when_the_new_one_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let relay = RelayProcess::spawn(&config).await;
    let client = provider_client(&dir.path().join("tls/self-signed.crt"));
    let post = |token: &str, hook: &str| {
        let request = client
            .post(format!(
                "https://localhost:{}/hooks/tusfacturas/{token}",
                relay.addr.port()
            ))
            .body(tusfacturas(hook, "emitido", 1));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let hup = || {
        let pid = relay.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let new_token = "tus-token-after-reload-0123";
    assert_eq!(post(TUS_TOKEN, "before").await, 200);

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(TUS_TOKEN, new_token)).unwrap();
    hup();
    eventually(Duration::from_secs(10), "the reload logged", || {
        !relay.logged("config reloaded").is_empty()
    })
    .await;
    assert_eq!(post(new_token, "after").await, 200);
    assert_eq!(post(TUS_TOKEN, "old").await, 401);

    // A wrong config is logged, problem by problem, and changes nothing.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(new_token, "short")
            .replace("max_body = \"64KiB\"", "max_body = \"64kB\""),
    )
    .unwrap();
    hup();
    eventually(Duration::from_secs(10), "the refusal logged", || {
        relay.logged("config not reloaded").len() >= 2
    })
    .await;
    let refused = relay.logged("config not reloaded").join("\n");
    assert!(
        refused.contains("server.max_body") && refused.contains("sources.tusfacturas.token"),
        "{refused}"
    );
    assert_eq!(post(new_token, "still").await, 200);
    relay.sigterm().await;
}
