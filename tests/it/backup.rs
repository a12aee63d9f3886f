//! `spool backup` of a live relay under load, `spool restore` into a new
//! directory, and a relay started on it: every notification acknowledged
//! before the backup began is there, with its deliveries as they were
//! (delivered ones not sent again, dead ones still dead), and the waiting
//! ones are delivered.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::process::{dump_records, RelayProcess, BINARY};

const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// Notifications acknowledged before the backup starts.
const BEFORE: usize = 300;

/// Two subscriptions: `erp` to a target that fails some requests (retries
/// every second, so some wait when the backup runs), `ledger` to a closed
/// port with a one-retry schedule (so its deliveries die).
fn config_text(dir: &Path, spool: &Path, erp: &str, ledger: &str) -> String {
    let base = base_config(dir).replace(
        &format!("path = \"{}\"", dir.join("spool").display()),
        &format!("path = \"{}\"", spool.display()),
    );
    format!(
        "{base}
[admin]
listen = \"unix:{socket}\"
tokens = [{{ name = \"ops\", token = \"{ADMIN_TOKEN}\", role = \"admin\" }}]

[[subscriptions]]
name = \"erp\"
url = \"{erp}\"
secret = \"{SECRET}\"
schedule = [\"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]
jitter = 0.0

[[subscriptions]]
name = \"ledger\"
url = \"{ledger}\"
secret = \"{SECRET}\"
schedule = [\"10ms\"]
jitter = 0.0
",
        socket = dir
            .join(format!(
                "admin-{}.sock",
                spool.file_name().unwrap().to_string_lossy()
            ))
            .display(),
    )
}

/// Providers posting as fast as the relay answers, until stopped; each
/// acknowledged id with whether it came before `mark` was set.
struct Load {
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, cert: &Path, workers: usize) -> Load {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let client = provider_client(cert);
        let url = format!(
            "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
            addr.port()
        );
        let tasks = (0..workers)
            .map(|worker| {
                let (client, url, acked, stop) =
                    (client.clone(), url.clone(), acked.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let body = tusfacturas(&format!("bk-{worker}-{n}"), "emitido", 1);
                        let Ok(response) = client.post(&url).body(body).send().await else {
                            continue;
                        };
                        if response.status() != 200 {
                            continue;
                        }
                        let (_, json) = answer(response).await;
                        acked
                            .lock()
                            .unwrap()
                            .push(json["id"].as_str().unwrap().to_owned());
                    }
                })
            })
            .collect();
        Load { acked, stop, tasks }
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let acked = self.acked.clone();
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        acked
    }
}

/// `spool dump --deliveries`: id → (subscription → (state, attempts)).
async fn states(config: &Path) -> HashMap<String, HashMap<String, (String, usize)>> {
    dump_records(config, &["--deliveries"])
        .await
        .into_iter()
        .map(|record| {
            let deliveries = record["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let state = match &d["state"] {
                        Value::String(state) => state.clone(),
                        other => other["state"].as_str().unwrap().to_owned(),
                    };
                    let attempts = d["attempts"].as_array().map_or(0, Vec::len);
                    (
                        d["subscription"].as_str().unwrap().to_owned(),
                        (state, attempts),
                    )
                })
                .collect();
            (record["id"].as_str().unwrap().to_owned(), deliveries)
        })
        .collect()
}

fn is_final(state: &str) -> bool {
    matches!(state, "delivered" | "dead" | "purged")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_a_relay_that_delivers_what_waited() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let flaky = Target::start(vec![]).await;
    flaky.fail_randomly(0.4);
    let closed = format!("http://127.0.0.1:{}/hook", closed_port().await);
    let config = dir.path().join("relay.toml");
    let spool = dir.path().join("spool");
    std::fs::write(
        &config,
        config_text(dir.path(), &spool, &flaky.url(), &closed),
    )
    .unwrap();
    let relay = RelayProcess::spawn(&config).await;
    let cert = dir.path().join("tls/self-signed.crt");

    let load = Load::start(relay.addr, &cert, 4);
    eventually(
        Duration::from_secs(60),
        "notifications acknowledged",
        || load.acked.lock().unwrap().len() >= BEFORE,
    )
    .await;
    let before: HashSet<String> = load.acked().into_iter().collect();
    let archive = dir.path().join("backups/spool.backup");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let output = tokio::process::Command::new(BINARY)
        .args(["spool", "backup", "--config"])
        .arg(&config)
        .arg(&archive)
        .output()
        .await
        .unwrap();
    let during = load.acked().len() - before.len();
    let acked = load.stop().await;
    assert!(
        output.status.success(),
        "spool backup: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        during > 0,
        "providers were acknowledged while the backup ran"
    );
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("notifications"), "{summary}");
    let leftovers: Vec<_> = std::fs::read_dir(archive.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["spool.backup"], "no temporary file is left");
    assert!(
        !relay.logged("spool backup sent").is_empty(),
        "the relay logged the backup"
    );
    relay.sigterm().await;
    let original = states(&config).await;
    assert!(acked.iter().all(|id| original.contains_key(id)));

    // Restore into a new directory: a non-empty one is refused first.
    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), b"x").unwrap();
    let refused = relay_cli_plain(&["spool", "restore"], &archive, &occupied);
    assert_eq!(refused.status.code(), Some(64), "{refused:?}");
    let restored_dir = dir.path().join("restored");
    let restore = relay_cli_plain(&["spool", "restore", "--json"], &archive, &restored_dir);
    assert!(
        restore.status.success(),
        "spool restore: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let manifest: Value = serde_json::from_slice(&restore.stdout).unwrap();
    assert!(
        webhook_relay::spool::Spool::stopped_cleanly(&webhook_relay::config::SpoolConfig {
            sled: webhook_relay::config::SledConfig {
                path: restored_dir.clone(),
                ..Default::default()
            },
            ..Default::default()
        }),
        "the restore marks the spool as cleanly stopped (no full check at the first start)"
    );

    let healthy_erp = Target::start(vec![]).await;
    let healthy_ledger = Target::start(vec![]).await;
    let restored_config = dir.path().join("restored.toml");
    std::fs::write(
        &restored_config,
        config_text(
            dir.path(),
            &restored_dir,
            &healthy_erp.url(),
            &healthy_ledger.url(),
        ),
    )
    .unwrap();
    let restored = states(&restored_config).await;
    assert_eq!(
        manifest["counts"]["notifications"].as_u64(),
        Some(restored.len() as u64)
    );
    let missing: Vec<&String> = before
        .iter()
        .filter(|id| !restored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the backup, not restored: {missing:?}"
    );
    let newest = manifest["newest"].as_str().unwrap();
    assert!(restored.keys().all(|id| id.as_str() <= newest));

    // Each restored delivery stands as it stood at the copy: no further on
    // than the original got since (states only move forward here: nothing
    // was replayed), a final one exactly as the original ends.
    let mut kinds: HashMap<(&str, &str), usize> = HashMap::new();
    let mut to_deliver: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut never_again: HashMap<&str, HashSet<String>> = HashMap::new();
    for (id, deliveries) in &restored {
        for name in ["erp", "ledger"] {
            let (state, attempts) = deliveries
                .get(name)
                .unwrap_or_else(|| panic!("{id} has no {name} delivery: {deliveries:?}"));
            let (now, attempts_now) = &original[id][name];
            assert!(
                attempts <= attempts_now,
                "{id} {name}: {state} {attempts} vs {now} {attempts_now}"
            );
            if is_final(state) {
                assert_eq!((state, attempts), (now, attempts_now), "{id} {name}");
                never_again.entry(name).or_default().insert(id.clone());
            } else {
                to_deliver.entry(name).or_default().insert(id.clone());
            }
            *kinds.entry((name, state.as_str())).or_default() += 1;
        }
    }
    for kind in [("erp", "delivered"), ("erp", "waiting"), ("ledger", "dead")] {
        assert!(
            kinds.contains_key(&kind),
            "the backup caught {kind:?}: {kinds:?}"
        );
    }

    let relay = RelayProcess::spawn(&restored_config).await;
    assert!(
        relay.logged("checking the whole spool").is_empty() && relay.logged("repaired").is_empty(),
        "a restored spool opens as cleanly stopped, with no repair:\n{}",
        relay.log_tail(20)
    );
    for (target, name) in [(&healthy_erp, "erp"), (&healthy_ledger, "ledger")] {
        let mut waiting: Vec<String> = to_deliver
            .get(name)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let all = target
            .wait_until(Duration::from_secs(60), |target| {
                waiting.retain(|id| !target.succeeded(id));
                waiting.is_empty()
            })
            .await;
        assert!(
            all,
            "{name}: {} waiting deliveries never came: {waiting:?}",
            waiting.len()
        );
        let again: Vec<String> = target
            .successes()
            .into_iter()
            .filter(|id| never_again.get(name).is_some_and(|ids| ids.contains(id)))
            .collect();
        assert!(
            again.is_empty(),
            "{name}: sent again though final: {again:?}"
        );
    }
    relay.sigterm().await;
    let after = states(&restored_config).await;
    for id in never_again.get("ledger").into_iter().flatten() {
        assert_eq!(
            after[id]["ledger"].0, restored[id]["ledger"].0,
            "{id} stays as it was"
        );
    }
    for (name, ids) in &to_deliver {
        for id in ids {
            assert_eq!(after[id][*name].0, "delivered", "{id} {name}");
        }
    }
    eprintln!(
        "backup under load: {} acknowledged before, {during} during; restored {} with {kinds:?}",
        before.len(),
        restored.len()
    );
}

/// The built binary with `args`, then FILE and `--path DIR` (no config).
fn relay_cli_plain(args: &[&str], file: &Path, dir: &Path) -> std::process::Output {
    std::process::Command::new(BINARY)
        .args(args)
        .arg(file)
        .arg("--path")
        .arg(dir)
        .output()
        .unwrap()
}
