//! A full disk, on a real small filesystem: a tmpfs the test mounts (when it
//! runs as root, as CI does), else a file-size limit on the relay process
//! (RLIMIT_FSIZE, with SIGXFSZ ignored so the write fails as on a full disk).
//! With room kept free (`spool.min_free`), the relay answers 503, never a
//! false 200, logs the change of state once, keeps delivering, and serves
//! again by itself when room returns, with nothing acknowledged lost. With
//! no room kept, sled itself fails: 503s, and a stop that says the last
//! flush failed and exits non-zero.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::helpers::*;
use crate::process::*;

/// Where the spool lives, and how it is kept small.
struct SmallDisk {
    dir: PathBuf,
    tmpfs: bool,
}

impl SmallDisk {
    fn new(dir: PathBuf, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .is_ok_and(|out| out.status.success());
        if !mounted {
            eprintln!("full disk: cannot mount a tmpfs (not root?); using RLIMIT_FSIZE instead");
        }
        SmallDisk {
            dir,
            tmpfs: mounted,
        }
    }

    /// The relay, started so that its spool runs out of room.
    async fn start_relay(&self, config: &Path) -> RelayProcess {
        if self.tmpfs {
            return RelayProcess::spawn(config).await;
        }
        let mut command = Command::new("bash");
        command
            .args([
                "-c",
                "ulimit -S -f 4096; trap '' XFSZ; exec \"$0\" serve --config \"$1\"",
            ])
            .arg(BINARY)
            .arg(config);
        RelayProcess::spawn_command(command).await
    }

    /// Room again, without touching the relay.
    fn grow(&self, relay: &RelayProcess, mib: u32) {
        let status = if self.tmpfs {
            std::process::Command::new("mount")
                .args(["-o", &format!("remount,size={mib}m")])
                .arg(&self.dir)
                .status()
        } else {
            let pid = relay.child.id().unwrap().to_string();
            std::process::Command::new("prlimit")
                .args(["--pid", &pid, "--fsize=unlimited"])
                .status()
        };
        assert!(status.unwrap().success(), "cannot make room");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.tmpfs {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

fn tus_body(n: &str, pad: &str) -> String {
    format!(
        r#"{{"evento": "emitido", "recurso": "facturacion", "external_reference": "{n}", "hook_id": "full-{n}", "pad": "{pad}"}}"#
    )
}

/// Posts until `refusals` answers were 503 (bounded); returns the
/// acknowledged (id, body) pairs.
async fn fill(
    client: &reqwest::Client,
    url: &str,
    prefix: &str,
    refusals: usize,
) -> Vec<(String, String)> {
    let pad = "x".repeat(20_000);
    let (mut acked, mut unavailable) = (Vec::new(), 0);
    for n in 0..5_000 {
        let body = tus_body(&format!("{prefix}{n}"), &pad);
        let response = client
            .post(url)
            .body(body.clone())
            .send()
            .await
            .expect("the relay keeps answering");
        match response.status().as_u16() {
            200 => {
                let json: serde_json::Value =
                    serde_json::from_str(&response.text().await.unwrap()).unwrap();
                acked.push((json["id"].as_str().unwrap().to_owned(), body));
            }
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                unavailable += 1;
                if unavailable >= refusals {
                    return acked;
                }
            }
            other => panic!("unexpected status {other} on a full disk"),
        }
    }
    panic!("the disk never filled: {} stored", acked.len());
}

fn config_on(disk: &Path, dir: &Path, min_free: &str, extra: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    let base = base_config(disk).replace(
        "[spool]\n",
        &format!("[spool]\nmin_free = \"{min_free}\"\n"),
    );
    assert!(
        base.contains("min_free"),
        "base config has a [spool] section"
    );
    std::fs::write(&path, format!("{base}{extra}")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_then_recovers_by_itself_with_nothing_lost_or_resent() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path().join("disk"), 16);
    if !disk.tmpfs {
        eprintln!("skipped: recovery needs a real filesystem to fill (run as root)");
        return;
    }
    let target = Target::start(vec![]).await;
    // The relay's own events about its spool go to `alerts`, one at a time
    // so that they arrive in the order they were stored.
    let alerts = Target::start(vec![]).await;
    let sub = format!(
        "{}{}",
        subscription("erp", &target.url(), ""),
        subscription(
            "alerts",
            &alerts.url(),
            "events = [\"relay.spool.*\"]\nmax_in_flight = 1"
        )
    );
    let config = config_on(&disk.dir, dir.path(), "4MiB", &sub);
    let relay = disk.start_relay(&config).await;
    let client = provider_client(&disk.dir.join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );

    let mut acked = fill(&client, &url, "a", 50).await;
    assert!(!acked.is_empty());
    assert!(
        relay.child.id().is_some(),
        "a full disk must not stop the relay"
    );
    // One line per change of state, not one per request. The free space
    // can cross the guard more than once while sled settles its files
    // (it did on a loaded CI machine), each crossing logged both ways.
    let entered = relay.logged("spool cannot take notifications").len();
    let left = relay.logged("spool writable again").len();
    assert!(
        (1..=3).contains(&entered) && left + 1 == entered,
        "{entered} lines 'cannot take', {left} 'writable again':\n{}",
        relay.log_tail(20)
    );
    assert!(
        relay.count_level("ERROR") <= 3,
        "errors logged per request:\n{}",
        relay.log_tail(20)
    );

    disk.grow(&relay, 96);
    let room_at = std::time::Instant::now();
    let pad = "x".repeat(20_000);
    let mut n = 0;
    let recovered_after = loop {
        n += 1;
        let body = tus_body(&format!("b{n}"), &pad);
        let response = client.post(&url).body(body.clone()).send().await.unwrap();
        if response.status() == 200 {
            let json: serde_json::Value =
                serde_json::from_str(&response.text().await.unwrap()).unwrap();
            acked.push((json["id"].as_str().unwrap().to_owned(), body));
            break room_at.elapsed();
        }
        assert_eq!(response.status(), 503);
        assert!(
            room_at.elapsed() < Duration::from_secs(30),
            "no recovery 30 s after room came back:\n{}",
            relay.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        relay.logged("spool writable again").len(),
        entered,
        "every 'cannot take' line has its 'writable again'"
    );
    for m in 0..20 {
        let body = tus_body(&format!("c{m}"), "after");
        let response = client.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "after recovery");
        let json: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        acked.push((json["id"].as_str().unwrap().to_owned(), body));
    }

    // Every acknowledged notification reaches the target, and none was
    // resent in a storm while outcomes could not be recorded.
    let mut missing: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    let all_there = target
        .wait_until(Duration::from_secs(60), |target| {
            missing.retain(|id| !target.succeeded(id));
            missing.is_empty()
        })
        .await;
    assert!(all_there, "{} never delivered", missing.len());
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for request in target.received() {
        *per_id
            .entry(request.headers["webhook-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let most = per_id.values().copied().max().unwrap_or(0);
    let total: usize = per_id.values().sum();
    eprintln!(
        "full disk: {} acknowledged, 200 again {recovered_after:?} after room returned, \
         {total} requests at the target for {} ids (most for one id: {most})",
        acked.len(),
        per_id.len()
    );
    assert!(most <= 3, "a resend storm: one id sent {most} times");

    // `relay.spool.full` waited in memory and was stored once there was
    // room, followed by `relay.spool.recovered`: a pair per crossing (two
    // crossings between two looks at the spool's health make one).
    let events = || -> Vec<serde_json::Value> {
        alerts
            .received()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    };
    let pairs = alerts
        .wait_until(Duration::from_secs(10), |t| {
            t.count() >= 2 && t.count() % 2 == 0
        })
        .await;
    let events = events();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        pairs && types.len() <= 2 * entered,
        "alerts got {types:?}, {entered} crossings"
    );
    for pair in types.chunks(2) {
        assert_eq!(
            pair,
            ["relay.spool.full", "relay.spool.recovered"],
            "{types:?}"
        );
    }
    assert!(events[0]["condition"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    let refused: u64 = events
        .iter()
        .filter_map(|e| e["refused_writes"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(refused >= 50, "the 503s are counted: {events:?}");

    relay.sigterm().await;
    let spooled = dump(&config).await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|(id, body)| spooled.get(id) != Some(body))
        .collect();
    assert!(lost.is_empty(), "{} acknowledged but lost", lost.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_sled_itself_fails_a_stop_exits_non_zero_and_says_so() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path().join("disk"), 12);
    let config = config_on(&disk.dir, dir.path(), "0", "");
    let relay = disk.start_relay(&config).await;
    let client = provider_client(&disk.dir.join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );
    fill(&client, &url, "s", 5).await;
    assert_eq!(relay.logged("the spool's store failed").len(), 1);
    let (exit, relay) = relay.terminate().await;
    assert!(!exit.success(), "exit 0 although the last flush failed");
    assert!(
        !relay.logged("spool's last flush failed").is_empty(),
        "{}",
        relay.log_tail(10)
    );
}
