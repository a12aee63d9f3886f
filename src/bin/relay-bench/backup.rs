//! The backup scenario: a spool of N notifications (written in process
//! through the spool's own API, many stores at once so they share group
//! flushes; half of them delivered, so half carry a delivery record), a
//! relay started on it, then `webhook-relay spool backup` through its admin
//! socket and `webhook-relay spool restore` into a new directory, each
//! timed, with the archive's and the spools' sizes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use webhook_relay::clock::Clock;
use webhook_relay::config::{ByteSize, SledConfig, SpoolConfig};
use webhook_relay::delivery::{Outcome, Schedule};
use webhook_relay::providers::{InvoiceStatus, Notification};
use webhook_relay::spool::{Received, Route, Routes, Spool};

use crate::servers::{sibling, ChildServer, Target};
use crate::{dir_size, mib, notification, Workspace};

/// Stores in flight at once while filling: enough to make groups.
const FILLERS: u64 = 256;

pub async fn run(notifications: u64) {
    println!("\n== backup: {notifications} notifications, half of them delivered ==");
    let ws = Workspace::new();
    let spool_dir = ws.dir.path().join("spool");
    let filled = Instant::now();
    fill(&spool_dir, notifications).await;
    println!(
        "filled in {:.1} s; spool {:.1} MiB on disk",
        filled.elapsed().as_secs_f64(),
        mib(dir_size(&spool_dir))
    );
    // A target that never answers: the waiting half stays as it is.
    let target = Target::start(false).await;
    let socket = ws.dir.path().join("admin.sock");
    let admin = format!(
        "\n[admin]\nlisten = \"unix:{}\"\ntokens = [{{ name = \"bench\", token = \"{}\", role = \"admin\" }}]\n",
        socket.display(),
        crate::TOKEN
    );
    let subscription = crate::subscription("erp", &target.url(), 4);
    let config = ws.config("spool", false, &format!("{subscription}{admin}"));
    let relay = ChildServer::relay(&config).await;
    let archive = ws.dir.path().join("spool.backup");
    let started = Instant::now();
    let status = tokio::process::Command::new(sibling("webhook-relay"))
        .args(["spool", "backup", "--config"])
        .arg(&config)
        .arg(&archive)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("spool backup runs");
    let backup = started.elapsed();
    assert!(status.success(), "spool backup failed");
    relay.stop().await;
    let size = std::fs::metadata(&archive).map_or(0, |m| m.len());
    println!(
        "backup (live relay, through its admin socket, checked by the CLI): {:.1} s, archive {:.1} MiB ({:.0} bytes per notification)",
        backup.as_secs_f64(),
        mib(size),
        size as f64 / notifications.max(1) as f64
    );
    let restored = ws.dir.path().join("restored");
    let started = Instant::now();
    let status = tokio::process::Command::new(sibling("webhook-relay"))
        .args(["spool", "restore"])
        .arg(&archive)
        .arg("--path")
        .arg(&restored)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("spool restore runs");
    assert!(status.success(), "spool restore failed");
    println!(
        "restore (offline, into a new directory): {:.1} s, spool {:.1} MiB on disk",
        started.elapsed().as_secs_f64(),
        mib(dir_size(&restored))
    );
}

/// Writes `notifications` into a new spool at `path`; delivers half.
async fn fill(path: &Path, notifications: u64) {
    let config = SpoolConfig {
        sled: SledConfig {
            path: path.to_owned(),
            // Filling is not what is measured.
            sync_data: false,
            min_free: ByteSize(0),
            ..SledConfig::default()
        },
        ..SpoolConfig::default()
    };
    let spool = Spool::open(
        &config,
        Routes::new(vec![Route::all("erp")]),
        Clock::system(),
    )
    .await
    .expect("spool opens");
    let spool = Arc::new(spool);
    let body = notification("bk");
    let body = Arc::new(body);
    let tasks: Vec<_> = (0..FILLERS)
        .map(|filler| {
            let (spool, body) = (spool.clone(), body.clone());
            tokio::spawn(async move {
                let mut n = filler;
                while n < notifications {
                    let received = Received {
                        source: "tusfacturas".into(),
                        body: Bytes::from(body(n)),
                        content_type: Some("application/json".into()),
                        headers: vec![],
                        peer: "127.0.0.1".into(),
                        received_ms: Clock::system().now_ms(),
                    };
                    let notification = Notification {
                        event_type: "facturacion.emitido".into(),
                        subject: Some(format!("0001-{n:08}")),
                        dedup_key: format!("bk-{n}"),
                        provider_time: None,
                        status: InvoiceStatus::Accepted,
                        flags: vec![],
                    };
                    spool.store(received, notification).await.expect("stored");
                    n += FILLERS;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("filler");
    }
    let schedule = Schedule::try_new(vec![Duration::from_secs(300)], 0.0).expect("schedule");
    let mut delivered = 0;
    while delivered < notifications / 2 {
        let leases = spool.lease("erp", 1000).await.expect("lease");
        for lease in &leases {
            let mut delivery = lease.delivery().clone();
            let now = Clock::system().now_ms();
            delivery.start(now).expect("start");
            let outcome = Outcome::Status {
                code: 200,
                retry_after_ms: None,
            };
            delivery
                .finish(&schedule, outcome, now, 0.0)
                .expect("finish");
            spool.complete(lease, &delivery).await.expect("complete");
            delivered += 1;
        }
    }
    spool.close().await.expect("spool closes");
}
