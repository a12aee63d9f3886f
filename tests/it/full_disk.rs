//! A full disk, on a real small filesystem: a tmpfs the test mounts (when it
//! runs as root, as CI does; `REQUIRE_ROOT=1` makes a test that cannot
//! mount one fail instead of saying it is skipped).
//! With room kept free (`spool.sled.min_free`), the relay answers 503, never a
//! false 200, logs the change of state once, and serves again by itself
//! when room returns, with nothing acknowledged lost: whether its target
//! is healthy or refuses every delivery on a fast schedule (the outcomes
//! of a failing target must not eat the reserve), with no resend storm.
//! When sled itself fails (no room kept), or the relay starts on a disk
//! that is already full, it answers 503, says why on `/readyz`, and
//! serves again by itself once room returns, on the same port.

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
    /// A tmpfs of `mib` MiB, or None (the test says it is skipped) when
    /// none can be mounted and `REQUIRE_ROOT` is not set.
    fn tmpfs(dir: PathBuf, mib: u32) -> Option<SmallDisk> {
        let disk = SmallDisk::new(dir, mib);
        if disk.tmpfs {
            return Some(disk);
        }
        assert!(
            std::env::var_os("REQUIRE_ROOT").is_none(),
            "REQUIRE_ROOT is set but no tmpfs could be mounted"
        );
        eprintln!("skipped: this test needs a real filesystem to fill (run as root)");
        None
    }

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

    /// Bytes free on its filesystem, as the relay's guard reads them.
    fn free(&self) -> u64 {
        rustix::fs::statvfs(&self.dir)
            .map(|stat| stat.f_bavail.saturating_mul(stat.f_frsize))
            .unwrap_or(0)
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

/// The id the relay gave an acknowledged post.
async fn acked_id(response: reqwest::Response) -> String {
    let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    json["id"].as_str().unwrap().to_owned()
}

/// Posts until `refusals` answers were 503 (bounded); returns the
/// acknowledged (id, body) pairs.
async fn fill(
    client: &reqwest::Client,
    url: &str,
    prefix: &str,
    refusals: usize,
) -> Vec<(String, String)> {
    fill_with(client, url, prefix, refusals, 20_000).await
}

/// [`fill`] with bodies of about `pad` bytes.
async fn fill_with(
    client: &reqwest::Client,
    url: &str,
    prefix: &str,
    refusals: usize,
    pad: usize,
) -> Vec<(String, String)> {
    let pad = "x".repeat(pad);
    let (mut acked, mut unavailable) = (Vec::new(), 0);
    for n in 0..40_000 {
        let body = tus_body(&format!("{prefix}{n}"), &pad);
        let response = client
            .post(url)
            .body(body.clone())
            .send()
            .await
            .expect("the relay keeps answering");
        match response.status().as_u16() {
            200 => {
                acked.push((acked_id(response).await, body));
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
    let Some(disk) = SmallDisk::tmpfs(dir.path().join("disk"), 16) else {
        return;
    };
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
    let room_at = tokio::time::Instant::now();
    let pad = "x".repeat(20_000);
    let mut n = 0;
    let recovered_after = loop {
        n += 1;
        let body = tus_body(&format!("b{n}"), &pad);
        let response = client.post(&url).body(body.clone()).send().await.unwrap();
        if response.status() == 200 {
            acked.push((acked_id(response).await, body));
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
    // The line is read from the relay's output, which can trail its
    // answer on a loaded machine.
    crate::progress::while_progressing("the 'writable again' lines", async || {
        let left = relay.logged("spool writable again").len();
        match left >= entered {
            true => Ok(()),
            false => Err(left as u64),
        }
    })
    .await;
    assert_eq!(
        relay.logged("spool writable again").len(),
        entered,
        "every 'cannot take' line has its 'writable again'"
    );
    for m in 0..20 {
        let body = tus_body(&format!("c{m}"), "after");
        let response = client.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "after recovery");
        acked.push((acked_id(response).await, body));
    }

    // Every acknowledged notification reaches the target, and none was
    // resent in a storm while outcomes could not be recorded.
    let mut missing: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    crate::progress::while_progressing("every acknowledged delivered", async || {
        missing.retain(|id| !target.succeeded(id));
        match missing.is_empty() {
            true => Ok(()),
            false => Err((acked.len() - missing.len()) as u64),
        }
    })
    .await;
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

/// A subscription to `url` that retries 20 times, 50 ms apart.
fn fast_subscription(name: &str, url: &str, extra: &str) -> String {
    let schedule = vec!["\"50ms\""; 20].join(", ");
    format!(
        "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nschedule = [{schedule}]\njitter = 0.0\ntimeout_first = \"500ms\"\ntimeout_retry = \"300ms\"\n{extra}\n"
    )
}

/// `/readyz`: its status and body.
async fn readyz(admin: &str) -> (u16, String) {
    let response = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Keeps the disk full for `hold`: posts a body of about `pad` bytes every
/// 100 ms, each answered 503 (with `Retry-After`) or, when the relay found
/// room, 200: sled frees the segments its own rewrites emptied (a failing
/// target's outcomes overwrite delivery states), so room can come back by
/// itself, and the next posts take it. What was acknowledged joins `acked`
/// (the test then finds it delivered and spooled); most posts are refused,
/// and the store never fails meanwhile.
async fn keeps_full(
    disk: &SmallDisk,
    relay: &RelayProcess,
    client: &reqwest::Client,
    url: &str,
    hold: Duration,
    pad: usize,
    acked: &mut Vec<(String, String)>,
) {
    let pad = "x".repeat(pad);
    let until = tokio::time::Instant::now() + hold;
    let (mut refused, mut taken, mut least_free) = (0, 0, u64::MAX);
    for n in 0.. {
        if tokio::time::Instant::now() >= until {
            break;
        }
        least_free = least_free.min(disk.free());
        let body = tus_body(&format!("held{n}"), &pad);
        let response = client.post(url).body(body.clone()).send().await.unwrap();
        match response.status().as_u16() {
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                refused += 1;
            }
            200 => {
                acked.push((acked_id(response).await, body));
                taken += 1;
            }
            other => panic!(
                "answered {other} on a full disk ({} bytes free):\n{}",
                disk.free(),
                relay.log_tail(20)
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "full disk held: {refused} refused, {taken} taken as room came back, {least_free} bytes free at least"
    );
    assert!(
        refused > taken,
        "the disk did not stay full: {refused} refused, {taken} taken"
    );
    assert!(
        relay.logged("store failed").is_empty(),
        "the store failed on a full disk:\n{}",
        relay.log_tail(20)
    );
}

/// `/readyz` once a post was refused: 503, saying the disk is full (a
/// post taken meanwhile, room having come back, joins `acked`).
async fn readyz_when_full(
    client: &reqwest::Client,
    url: &str,
    admin: &str,
    acked: &mut Vec<(String, String)>,
) {
    let mut last = (0, String::new());
    for attempt in 0..10 {
        acked.extend(fill(client, url, &format!("ready{attempt}-"), 1).await);
        last = readyz(admin).await;
        if last.0 == 503 && last.1.contains("disk full") {
            return;
        }
    }
    panic!("/readyz never said the disk is full: {} {}", last.0, last.1);
}

/// The relay, started, and how long its start took: how slow this machine
/// is at this moment.
async fn started(config: &Path) -> (RelayProcess, Duration) {
    let spawned = tokio::time::Instant::now();
    let relay = RelayProcess::spawn(config).await;
    (relay, spawned.elapsed())
}

/// How soon the relay must serve again once room returns: 10 s, or five
/// times a start on this machine now if that is longer (a recovery can
/// take a start: when sled failed, the relay replaces its process).
fn recovery_limit(start: Duration) -> Duration {
    (5 * start).max(Duration::from_secs(10))
}

/// Room again: posts until one is answered 200 (within `limit`, failing
/// past it); how long it took.
async fn room_again(
    disk: &SmallDisk,
    relay: &RelayProcess,
    client: &reqwest::Client,
    url: &str,
    acked: &mut Vec<(String, String)>,
    limit: Duration,
) -> Duration {
    disk.grow(relay, 96);
    let room_at = tokio::time::Instant::now();
    for n in 0.. {
        let body = tus_body(&format!("room{n}"), "room");
        // The relay may be replacing its process right now: a reset
        // connection is "not yet", as a provider would retry it.
        let Ok(response) = client.post(url).body(body.clone()).send().await else {
            assert!(
                room_at.elapsed() < limit,
                "no answer {limit:?} after room came back:\n{}",
                relay.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if response.status() == 200 {
            acked.push((acked_id(response).await, body));
            return room_at.elapsed();
        }
        assert_eq!(response.status(), 503);
        assert!(
            room_at.elapsed() < limit,
            "no recovery {limit:?} after room came back:\n{}",
            relay.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Waits until every acknowledged notification was delivered to `target`,
/// replaying (by id, through the admin API) those that went dead while it
/// refused them, at most three times, each time deliveries stop arriving
/// (as long as they arrive, the relay is delivering, however slowly);
/// returns the most attempts one id took.
async fn all_delivered(
    target: &Target,
    admin: &str,
    acked: &[(String, String)],
    relay: &RelayProcess,
) -> usize {
    let client = reqwest::Client::new();
    let mut missing: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    for round in 0..=3 {
        // A delivery still on its schedule (50 ms apart) is tried again
        // within a second: ten seconds with none arriving means the rest
        // went dead. The last round replays nothing after it, so it waits
        // as long as any progress wait.
        let stall = match round {
            3 => crate::progress::STALL,
            _ => Duration::from_secs(10),
        };
        let waited =
            crate::progress::until_stalled("every acknowledged delivered", stall, async || {
                missing.retain(|id| !target.succeeded(id));
                match missing.is_empty() {
                    true => Ok(()),
                    false => Err((acked.len() - missing.len()) as u64),
                }
            })
            .await;
        if waited.is_ok() || round == 3 {
            break;
        }
        for id in &missing {
            let status = client
                .post(format!("{admin}/api/notifications/{id}/replay"))
                .bearer_auth(crate::admin::ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .status();
            assert!(
                status == 200 || status == 409,
                "replay of {id}: {status}:\n{}",
                relay.log_tail(10)
            );
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged never delivered:\n{}",
        missing.len(),
        acked.len(),
        relay.log_tail(20)
    );
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for request in target.received() {
        *per_id
            .entry(request.headers["webhook-id"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let total: usize = per_id.values().sum();
    let most = per_id.values().copied().max().unwrap_or(0);
    eprintln!(
        "full disk: {} acknowledged, {total} attempts at the target (most for one id: {most})",
        acked.len()
    );
    most
}

/// Stops the relay (exit 0) and finds every acknowledged notification in
/// its spool, byte for byte.
async fn nothing_lost(relay: RelayProcess, config: &Path, acked: &[(String, String)]) {
    relay.sigterm().await;
    let spooled = dump(config).await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|(id, body)| spooled.get(id) != Some(body))
        .collect();
    assert!(lost.is_empty(), "{} acknowledged but lost", lost.len());
}

/// A target that refuses every delivery, 50 ms apart, 21 times each: its
/// outcomes must not eat the room kept free. The store never fails, the
/// relay answers 503 while full and 200 within seconds of the disk
/// growing, no attempt is made beyond the schedule, and everything
/// acknowledged is delivered once the target takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_cannot_fail_a_full_spool_and_all_is_delivered_after_room_returns() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::tmpfs(dir.path().join("disk"), 16) else {
        return;
    };
    let target = Target::start(vec![]).await;
    target.fail_randomly(1.0);
    let extra = format!(
        "{}{}",
        fast_subscription("erp", &target.url(), ""),
        crate::admin::admin_section()
    );
    let config = config_on(&disk.dir, dir.path(), "4MiB", &extra);
    let (relay, start) = started(&config).await;
    let admin = relay.admin_url();
    let client = provider_client(&disk.dir.join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );

    let mut acked = fill(&client, &url, "f", 20).await;
    // The target goes on refusing for a while: its outcomes are what
    // would fill the disk now.
    let hold = Duration::from_secs(6);
    keeps_full(&disk, &relay, &client, &url, hold, 20_000, &mut acked).await;
    readyz_when_full(&client, &url, &admin, &mut acked).await;

    let recovered_after = room_again(
        &disk,
        &relay,
        &client,
        &url,
        &mut acked,
        recovery_limit(start),
    )
    .await;
    eprintln!("full disk, failing target: 200 again {recovered_after:?} after room returned");
    assert_eq!(readyz(&admin).await.0, 200);
    target.fail_randomly(0.0);
    let most = all_delivered(&target, &admin, &acked, &relay).await;
    // 21 attempts by the schedule, then a replay or two.
    assert!(most <= 24, "a resend storm: one id sent {most} times");
    assert!(relay.logged("store failed").is_empty());
    nothing_lost(relay, &config, &acked).await;
}

/// A healthy target, eight subscriptions to it, each at most 500
/// deliveries a second, small notifications: a backlog of deliveries whose
/// outcomes alone go on being written once stores are refused. The store
/// never fails, nothing is sent twice over, and all is delivered. (On the
/// code before the outcome budget this one passed too: some 13,000
/// outcomes, or 84,000 with the subscriptions paused during the fill, did
/// not fill this 4 MiB reserve; it guards the healthy path of the budget.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_of_a_healthy_target_cannot_fail_a_full_spool() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::tmpfs(dir.path().join("disk"), 16) else {
        return;
    };
    let target = Target::start(vec![]).await;
    let mut extra: String = (0..8)
        .map(|n| fast_subscription(&format!("erp{n}"), &target.url(), "rate = \"500/s\""))
        .collect();
    extra.push_str(&crate::admin::admin_section());
    let config = config_on(&disk.dir, dir.path(), "4MiB", &extra);
    let (relay, start) = started(&config).await;
    let admin = relay.admin_url();
    let client = provider_client(&disk.dir.join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );

    let mut acked = fill_with(&client, &url, "h", 20, 500).await;
    let hold = Duration::from_secs(10);
    keeps_full(&disk, &relay, &client, &url, hold, 500, &mut acked).await;
    let recovered_after = room_again(
        &disk,
        &relay,
        &client,
        &url,
        &mut acked,
        recovery_limit(start),
    )
    .await;
    eprintln!("full disk, healthy target: 200 again {recovered_after:?} after room returned");
    let most = all_delivered(&target, &admin, &acked, &relay).await;
    // One per subscription, and no more than one more each.
    assert!(most <= 8 * 2, "a resend storm: one id sent {most} times");
    assert!(relay.logged("store failed").is_empty());
    nothing_lost(relay, &config, &acked).await;
}

/// With no room kept (`min_free = "0"`), sled itself runs out of room and
/// fails. The relay answers 503 and says why on `/readyz`; once the disk
/// grows it replaces its own process (same pid, same ports) and serves
/// again, with nothing acknowledged lost and a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_sled_itself_fails_the_relay_recovers_by_itself_once_there_is_room() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::tmpfs(dir.path().join("disk"), 12) else {
        return;
    };
    let target = Target::start(vec![]).await;
    let extra = format!(
        "{}{}",
        fast_subscription("erp", &target.url(), ""),
        crate::admin::admin_section()
    );
    let config = config_on(&disk.dir, dir.path(), "0", &extra);
    let (relay, start) = started(&config).await;
    let admin = relay.admin_url();
    let pid = relay.child.id();
    let client = provider_client(&disk.dir.join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );
    let mut acked = fill(&client, &url, "s", 5).await;
    assert_eq!(relay.logged("the spool's store failed").len(), 1);
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 503, "{body}");

    let recovered_after = room_again(
        &disk,
        &relay,
        &client,
        &url,
        &mut acked,
        recovery_limit(start),
    )
    .await;
    eprintln!("sled failed: 200 again {recovered_after:?} after room returned");
    assert_eq!(relay.child.id(), pid, "the same process, not a new one");
    assert_eq!(readyz(&admin).await.0, 200, "the same admin port");
    all_delivered(&target, &admin, &acked, &relay).await;
    nothing_lost(relay, &config, &acked).await;
}

/// A relay stopped on a full disk starts again while it is still full
/// (no room at all): it listens, answers 503, says why on `/readyz`, and
/// serves once the disk grows, with nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_full_disk_answers_503_until_there_is_room() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::tmpfs(dir.path().join("disk"), 16) else {
        return;
    };
    let target = Target::start(vec![]).await;
    let extra = format!(
        "{}{}",
        fast_subscription("erp", &target.url(), ""),
        crate::admin::admin_section()
    );
    let config = config_on(&disk.dir, dir.path(), "4MiB", &extra);
    let relay = RelayProcess::spawn(&config).await;
    let client = provider_client(&disk.dir.join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );
    let mut acked = fill(&client, &url, "r", 5).await;
    relay.sigterm().await;
    // Whatever room is left, another file takes it.
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", disk.dir.join("other-files").display()))
        .output();

    let (relay, start) = started(&config).await;
    let admin = relay.admin_url();
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );
    let status = client
        .post(&url)
        .body(tus_body("r-full", "x"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);
    let (status, body) = readyz(&admin).await;
    assert!(
        status == 503 && body.contains("disk full"),
        "{status} {body}"
    );

    let recovered_after = room_again(
        &disk,
        &relay,
        &client,
        &url,
        &mut acked,
        recovery_limit(start),
    )
    .await;
    eprintln!("started full: 200 again {recovered_after:?} after room returned");
    all_delivered(&target, &admin, &acked, &relay).await;
    nothing_lost(relay, &config, &acked).await;
}
