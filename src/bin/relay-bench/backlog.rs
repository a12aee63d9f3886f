//! The backlog scenario: the relay's RSS while a million deliveries wait in
//! the spool, and its start to ready on that spool.

use std::time::Duration;

use tokio::time::Instant;

use crate::load;
use crate::servers::{ChildServer, Target};
use crate::{dir_size, hooks_url, notification, subscription, Workspace};

pub async fn run(notifications: u64) {
    let subscriptions = 10;
    println!(
        "\n== backlog: {notifications} notifications x {subscriptions} subscriptions = {} waiting deliveries ==",
        notifications * subscriptions
    );
    let ws = Workspace::new();
    let pem = ws.cert_pem();
    // The target never answers: every delivery stays waiting in the spool.
    let target = Target::start(false).await;
    let subs: String = (0..subscriptions)
        .map(|i| subscription(&format!("app{i}"), &target.url(), 4))
        .collect();
    // A short grace: the attempts held by the target need not delay a stop.
    let config = ws.config_with("backlog", true, ("", "shutdown_grace = \"1s\"\n"), &subs);
    let relay = ChildServer::relay(&config).await;
    let client = load::client(Some(&pem), 64);
    let url = hooks_url(relay.addr);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut stored = 0;
    while stored < notifications {
        let chunk = (notifications - stored).min(20_000);
        let stats = load::closed_loop(&client, &url, 64, Duration::from_secs(600), chunk, {
            let offset = stored;
            move |n| notification("bl")(n + offset)
        })
        .await;
        stored += stats.ok;
        if stats.ok == 0 {
            println!(
                "backlog: the relay stopped accepting ({} failed)",
                stats.failed
            );
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) || stored >= notifications {
            let (rss, peak) = relay.rss_mib();
            println!(
                "  {stored} notifications spooled ({:.0}/s), relay RSS {rss:.1} MiB, peak {peak:.1} MiB",
                stored as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    // Let the forwarder scan its due index with the whole backlog present.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, peak) = relay.rss_mib();
    println!(
        "with {} deliveries waiting: relay RSS {rss:.1} MiB, peak {peak:.1} MiB, spool {:.1} MiB on disk ({:.0} bytes per notification)",
        stored * subscriptions,
        dir_size(&ws.dir.path().join("backlog")) as f64 / (1 << 20) as f64,
        dir_size(&ws.dir.path().join("backlog")) as f64 / stored.max(1) as f64
    );
    relay.stop().await;

    // Start to ready on the filled spool: from spawning the process until it
    // logs "ingress listening".
    let spawned = Instant::now();
    let relay = ChildServer::relay(&config).await;
    let ready = spawned.elapsed();
    let (rss_ready, _) = relay.rss_mib();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, peak) = relay.rss_mib();
    println!(
        "restart with {} deliveries waiting: start to ready (spawn to \"ingress listening\") {:.3} s; relay RSS {rss_ready:.1} MiB when ready, {rss:.1} MiB 5 s later, peak {peak:.1} MiB",
        stored * subscriptions,
        ready.as_secs_f64()
    );
    relay.stop().await;
}
