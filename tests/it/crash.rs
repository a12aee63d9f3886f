//! Crash tests on the built binary: SIGKILL at random moments under load,
//! restart on the same spool, and check that nothing acknowledged is lost
//! (ingest) and that everything acknowledged reaches its target (forwarding).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::process::Command;

use crate::helpers::*;
use crate::process::*;

/// Providers posting unique notifications from concurrent keep-alive
/// connections until the relay dies; records every one answered 200.
struct Load {
    acked: Arc<Mutex<Vec<(String, String)>>>,
    /// How many were acknowledged so far, for a kill after N of them.
    acked_count: tokio::sync::watch::Receiver<usize>,
    /// Bodies whose request got no answer (the relay died): a provider
    /// sends them again.
    unanswered: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(relay_addr: std::net::SocketAddr, cert: &Path, clients: usize, round: usize) -> Load {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let unanswered = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, acked_count) = tokio::sync::watch::channel(0);
        let count_tx = Arc::new(count_tx);
        let tasks = (0..clients)
            .map(|client_no| {
                let client = provider_client(cert);
                let acked = acked.clone();
                let count_tx = count_tx.clone();
                let unanswered = unanswered.clone();
                let url = format!(
                    "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
                    relay_addr.port()
                );
                tokio::spawn(async move {
                    // Bounded: a round never posts more than this per client.
                    for n in 0..5_000 {
                        let body =
                            tusfacturas(&format!("r{round}-c{client_no}-n{n}"), "emitido", 1);
                        let Ok(response) = client.post(&url).body(body.clone()).send().await else {
                            unanswered.lock().unwrap().push(body);
                            return;
                        };
                        if response.status() != 200 {
                            continue;
                        }
                        let Ok(text) = response.text().await else {
                            unanswered.lock().unwrap().push(body);
                            return;
                        };
                        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
                        let id = json["id"].as_str().unwrap().to_owned();
                        acked.lock().unwrap().push((id, body));
                        count_tx.send_modify(|count| *count += 1);
                    }
                })
            })
            .collect();
        Load {
            acked,
            acked_count,
            unanswered,
            tasks,
        }
    }

    /// Waits until at least `n` notifications were acknowledged (so a kill
    /// lands under real load however slow the machine); fails after a
    /// minute.
    async fn acknowledged_at_least(&mut self, n: usize) {
        let reached = self.acked_count.wait_for(|count| *count >= n);
        let in_time = matches!(
            tokio::time::timeout(Duration::from_secs(60), reached).await,
            Ok(Ok(_))
        );
        if !in_time {
            panic!(
                "the load reached only {} acknowledged of {n} in 60 s",
                *self.acked_count.borrow()
            );
        }
    }

    /// Waits for the clients to notice the relay is gone; returns what was
    /// acknowledged and what got no answer.
    async fn finish(self) -> (Vec<(String, String)>, Vec<String>) {
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let unanswered = std::mem::take(&mut *self.unanswered.lock().unwrap());
        (acked, unanswered)
    }
}

/// A round's kill comes after this many acknowledged notifications, at
/// random in the range.
const MIN_ACKED_BEFORE_KILL: usize = 20;
const MAX_ACKED_BEFORE_KILL: usize = 400;

/// Runs `rounds` of: start the binary, load it, SIGKILL it at a random
/// moment (after a random number of acknowledged notifications, not a
/// fixed time, so a slow machine still kills under load). Returns what was
/// acknowledged and what got no answer.
async fn kill_rounds(
    dir: &Path,
    config: &Path,
    rounds: usize,
) -> (Vec<(String, String)>, Vec<String>) {
    let cert = dir.join("tls/self-signed.crt");
    let mut acked = Vec::new();
    let mut unanswered = Vec::new();
    let mut rng = rand::rng();
    for round in 0..rounds {
        let relay = RelayProcess::spawn(config).await;
        let mut load = Load::start(relay.addr, &cert, 8, round);
        let moment = rng.random_range(MIN_ACKED_BEFORE_KILL..MAX_ACKED_BEFORE_KILL);
        load.acknowledged_at_least(moment).await;
        relay.sigkill().await;
        let (round_acked, round_unanswered) = load.finish().await;
        eprintln!(
            "round {round}: SIGKILL after {moment} acknowledged, {} acknowledged in all, {} unanswered",
            round_acked.len(),
            round_unanswered.len()
        );
        acked.extend(round_acked);
        unanswered.extend(round_unanswered);
    }
    (acked, unanswered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_notification() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (acked, _) = kill_rounds(dir.path(), &config, 10).await;
    assert!(
        acked.len() >= 100,
        "the load must have been real: {} acknowledged",
        acked.len()
    );

    // The spool opens after the last SIGKILL, and a clean stop leaves it ready to dump.
    RelayProcess::spawn(&config).await.sigterm().await;
    let spooled = dump(&config).await;
    let lost: Vec<&String> = acked
        .iter()
        .filter(|(id, _)| !spooled.contains_key(id))
        .map(|(id, _)| id)
        .collect();
    eprintln!(
        "{} acknowledged over 10 SIGKILLs, {} spooled, {} lost",
        acked.len(),
        spooled.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    for (id, body) in &acked {
        assert_eq!(&spooled[id], body, "body of {id} kept byte for byte");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_forwarding_still_delivers_everything_acknowledged() {
    init();
    let target = Target::start(vec![]).await;
    target.fail_randomly(0.2);
    let dir = tempfile::tempdir().unwrap();
    let sub = format!(
        "\n[[subscriptions]]\nname = \"erp\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nschedule = [\"20ms\", \"50ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\"]\nmax_in_flight = 16\n",
        target.url()
    );
    let config = write_config(dir.path(), &sub);
    let (mut acked, unanswered) = kill_rounds(dir.path(), &config, 5).await;
    assert!(
        acked.len() >= 50,
        "the load must have been real: {} acknowledged",
        acked.len()
    );

    let relay = RelayProcess::spawn(&config).await;
    // The provider sends again what got no answer: one that was stored
    // before the kill is a duplicate (same id); one that was not gets a new
    // id, and must never have been forwarded under the lost one.
    let client = provider_client(&dir.path().join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );
    for body in &unanswered {
        let response = client.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let json: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        acked.push((json["id"].as_str().unwrap().to_owned(), body.clone()));
    }
    let wanted: HashSet<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    let mut missing: Vec<String> = wanted.iter().cloned().collect();
    target
        .wait_until(Duration::from_secs(120), |target| {
            missing.retain(|id| !target.succeeded(id));
            missing.is_empty()
        })
        .await;
    relay.sigterm().await;
    if !missing.is_empty() {
        let output = Command::new(BINARY)
            .args(["spool", "dump", "--deliveries", "--config"])
            .arg(&config)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let sample: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(missing[0].as_str()))
            .collect();
        let seen: Vec<String> = target.successes().into_iter().take(3).collect();
        panic!(
            "{} of {} never reached the target ({} requests seen, e.g. {seen:?}); e.g. {sample:?}",
            missing.len(),
            wanted.len(),
            target.count()
        );
    }
    let received = target.received();
    let unique: HashSet<&str> = received
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    // One invoice notification, one webhook-id, whatever the kills did.
    let mut ids_per_hook: HashMap<String, HashSet<&str>> = HashMap::new();
    for request in &received {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        ids_per_hook
            .entry(body["hook_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(request.headers["webhook-id"].to_str().unwrap());
    }
    let split: Vec<_> = ids_per_hook
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    assert!(
        split.is_empty(),
        "notifications delivered under two ids: {split:?}"
    );
    eprintln!(
        "forwarding crash test: {} acknowledged ({} of them resent after no answer), {} requests at the target for {} ids ({} repeats, failures included), 0 lost, none under two ids",
        wanted.len(),
        unanswered.len(),
        received.len(),
        unique.len(),
        received.len() - unique.len()
    );
    eprintln!(
        "duplicates delivered successfully more than once: {}",
        target.duplicate_successes()
    );
}

#[tokio::test]
async fn the_service_reports_ready_watchdog_and_stopping_to_systemd() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    // A spool that was not stopped cleanly is checked whole before serving.
    RelayProcess::spawn(&config).await.sigkill().await;
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let relay = RelayProcess::spawn_command(command).await;

    let recv = async |limit: Duration| {
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(limit, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    };
    let ten_s = Duration::from_secs(10);
    // The service says so while its start goes on.
    let mut before_ready = Vec::new();
    loop {
        let message = recv(ten_s).await.expect("READY=1 within 10 s");
        if message == "READY=1" {
            break;
        }
        before_ready.push(message);
    }
    assert_eq!(
        before_ready.first().map(String::as_str),
        Some("STATUS=checking the spool"),
        "{before_ready:?}"
    );
    // The status line says how the spool is, once per change.
    assert_eq!(recv(ten_s).await.as_deref(), Some("STATUS=serving"));
    // A 400 ms watchdog is pinged every 200 ms while the spool writer answers.
    for _ in 0..3 {
        assert_eq!(recv(ten_s).await.as_deref(), Some("WATCHDOG=1"));
    }
    relay.sigterm().await;
    let mut after_stop = Vec::new();
    while let Some(message) = recv(Duration::from_millis(200)).await {
        after_stop.push(message);
    }
    assert!(
        after_stop.iter().any(|m| m == "STOPPING=1"),
        "{after_stop:?}"
    );
}

#[tokio::test]
async fn a_clean_stop_spares_the_next_start_a_full_check_and_a_kill_does_not() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let first = RelayProcess::spawn(&config).await;
    // A new spool is created, not checked, and nothing is said repaired.
    assert_eq!(first.logged("creating a new one").len(), 1);
    assert_eq!(first.logged("checking the whole spool").len(), 0);
    assert_eq!(first.count_level("WARN"), 0, "{}", first.log_tail(5));
    // A second relay on the same spool says only that it is in use.
    let second = relay_cli(&["serve"], &config, &[]);
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("is in use by another process"), "{said}");
    assert!(!said.contains("checking the whole spool"), "{said}");
    first.sigterm().await;
    let second = RelayProcess::spawn(&config).await;
    assert_eq!(
        second.logged("no full check").len(),
        1,
        "{}",
        second.log_tail(5)
    );
    second.sigkill().await;
    let third = RelayProcess::spawn(&config).await;
    assert_eq!(
        third.logged("checking the whole spool").len(),
        1,
        "after a kill the spool is checked whole"
    );
    third.sigterm().await;
    // Files touched while stopped: checked whole again.
    let db = dir.path().join("spool/db");
    let file = std::fs::OpenOptions::new().append(true).open(&db).unwrap();
    // A file time is the file system's wall clock: no Clock to ask.
    #[allow(clippy::disallowed_methods)]
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    file.set_modified(later).unwrap();
    drop(file);
    let fourth = RelayProcess::spawn(&config).await;
    assert_eq!(fourth.logged("checking the whole spool").len(), 1);
    fourth.sigterm().await;
}

/// The counts `spool check` prints for one subscription: waiting, dead,
/// delivered, purged.
fn printed_counts(check: &str, subscription: &str) -> Option<[u64; 4]> {
    let prefix = format!("counts of {subscription:?}: ");
    let line = check.lines().find_map(|l| l.strip_prefix(&prefix))?;
    let numbers: Vec<u64> = line
        .split(", ")
        .filter_map(|part| part.split(' ').next()?.parse().ok())
        .collect();
    numbers.try_into().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_forwarding_leaves_kept_counts_that_a_recount_agrees_with() {
    init();
    let target = Target::start(vec![]).await;
    // Half the attempts fail and the schedule is short: deliveries end
    // delivered, dead or still waiting when the kill comes.
    target.fail_randomly(0.5);
    let dir = tempfile::tempdir().unwrap();
    let sub = format!(
        "\n[[subscriptions]]\nname = \"erp\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nschedule = [\"20ms\", \"40ms\"]\nmax_in_flight = 16\n",
        target.url()
    );
    let config = write_config(dir.path(), &sub);
    let cert = dir.path().join("tls/self-signed.crt");
    let mut rng = rand::rng();
    let mut acknowledged = 0;
    for round in 0..4 {
        let relay = RelayProcess::spawn(&config).await;
        let mut load = Load::start(relay.addr, &cert, 8, round);
        load.acknowledged_at_least(rng.random_range(MIN_ACKED_BEFORE_KILL..MAX_ACKED_BEFORE_KILL))
            .await;
        relay.sigkill().await;
        acknowledged += load.finish().await.0.len();
        // Before the next start, whose check would mend what it finds.
        let check = relay_cli(&["spool", "check"], &config, &[]);
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success(), "round {round}: {report}");
        assert!(
            !report.contains("delivery counts"),
            "round {round}: the kept counts must equal a recount after a SIGKILL:\n{report}"
        );
        let [waiting, dead, delivered, purged] =
            printed_counts(&report, "erp").unwrap_or_else(|| panic!("no counts: {report}"));
        eprintln!(
            "round {round}: {acknowledged} acknowledged so far; erp: {waiting} waiting, {dead} dead, {delivered} delivered, {purged} purged"
        );
        assert_eq!(purged, 0);
    }
    assert!(acknowledged >= 50, "the load must have been real");
}
