//! The ingest scenario: durable ingest against a bare TLS hyper server,
//! the relay without fdatasync, and sled alone, N keep-alive connections
//! each, in rounds alternated between the contenders; `--lifecycle` adds a
//! relay posted each invoice queued then final.

use std::time::Duration;

use crate::load::{self, Stats};
use crate::servers::{cpu_per, ChildServer};
use crate::sled_alone;
use crate::{
    dir_size, hooks_url, measure, median, print_row, warm_up, Bodies, Settings, Workspace,
};

pub async fn run(settings: &Settings, lifecycle: bool) {
    for &connections in &settings.connections {
        ingest_at(connections, settings.duration, settings.rounds, lifecycle).await;
    }
}

/// One server under measurement, and what it measured over the rounds.
struct Contender {
    name: &'static str,
    server: ChildServer,
    url: String,
    /// Its own pool of keep-alive connections.
    client: reqwest::Client,
    /// Starts the hook ids it posts, so that no request is a resend.
    prefix: &'static str,
    bodies: Bodies,
    /// Before its ratio to the bare server in each round's line.
    round_label: &'static str,
    /// Its spool directory in the workspace (the relays only).
    spool: Option<&'static str>,
    /// Notifications it acknowledged, warm-up included.
    stored: u64,
    /// One measurement per round.
    runs: Vec<Stats>,
    /// Its CPU time (user + system) during each round's measurement, µs.
    cpu_us: Vec<Option<u64>>,
}

impl Contender {
    async fn start(
        name: &'static str,
        (server, url): (ChildServer, String),
        (prefix, spool): (&'static str, Option<&'static str>),
        (bodies, round_label): (Bodies, &'static str),
        pem: &[u8],
        connections: usize,
    ) -> Contender {
        let client = load::client(Some(pem), connections);
        let stored = warm_up(&client, &url, connections).await;
        Contender {
            name,
            server,
            url,
            client,
            prefix,
            bodies,
            round_label,
            spool,
            stored,
            runs: Vec::new(),
            cpu_us: Vec::new(),
        }
    }
}

async fn ingest_at(connections: usize, duration: Duration, rounds: usize, lifecycle: bool) {
    println!(
        "\n== ingest: {connections} keep-alive TLS connections, HTTP/1.1, {rounds} rounds of {} s each ==",
        duration.as_secs()
    );
    let ws = Workspace::new();
    let pem = ws.cert_pem();
    let bare = ChildServer::bare(Some((&ws.cert, &ws.key))).await;
    let bare_url = format!("https://localhost:{}/", bare.addr.port());
    let mut contenders = vec![
        Contender::start(
            "bare hyper + rustls (baseline)",
            (bare, bare_url),
            ("b", None),
            (Bodies::Final, ""),
            &pem,
            connections,
        )
        .await,
    ];
    let mut relays = vec![
        (
            "relay, flush + fdatasync",
            "s",
            "synced",
            true,
            Bodies::Final,
            "",
        ),
        (
            "relay, flush only (no fdatasync)",
            "u",
            "unsynced",
            false,
            Bodies::Final,
            "without fdatasync ",
        ),
    ];
    if lifecycle {
        relays.push((
            "relay, queued then final",
            "l",
            "lifecycle",
            true,
            Bodies::Lifecycle,
            "queued then final ",
        ));
    }
    for (name, prefix, spool, sync_data, bodies, round_label) in relays {
        let relay = ChildServer::relay(&ws.config(spool, sync_data, "")).await;
        let url = hooks_url(relay.addr);
        let server = (relay, url);
        let posts = (bodies, round_label);
        contenders.push(
            Contender::start(
                name,
                server,
                (prefix, Some(spool)),
                posts,
                &pem,
                connections,
            )
            .await,
        );
    }
    // What sled allows at all: every connection's notification in every
    // group, and nothing but sled's writes.
    let mut sled_alone = sled_alone::SledAlone::open(&ws.dir.path().join("sled-alone"));
    let mut sled_alone_rates = Vec::new();
    for round in 0..rounds {
        // Each round starts with another contender, so that a drift over
        // the run (the spools grow) does not always fall on the same side.
        let count = contenders.len();
        for turn in 0..count {
            let contender = &mut contenders[(round + turn) % count];
            let prefix = format!("{}{round}", contender.prefix);
            let cpu_before = contender.server.cpu_us();
            let stats = measure(
                &contender.client,
                &contender.url,
                connections,
                duration,
                contender.bodies.of(prefix),
            )
            .await;
            let cpu_after = contender.server.cpu_us();
            contender
                .cpu_us
                .push(cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b)));
            contender.stored += stats.ok;
            contender.runs.push(stats);
        }
        // Nothing else runs meanwhile: the blocking run may hold this thread.
        sled_alone_rates.push(tokio::task::block_in_place(|| {
            sled_alone.run(connections, duration)
        }));
        let bare_rate = contenders[0].runs[round].rate();
        let ratios: Vec<String> = contenders[1..]
            .iter()
            .map(|c| {
                let ratio = 100.0 * c.runs[round].rate() / bare_rate;
                format!("{}{ratio:.0} %", c.round_label)
            })
            .chain(
                sled_alone_rates
                    .get(round)
                    .map(|rate| format!("sled alone {:.0} %", 100.0 * rate / bare_rate)),
            )
            .collect();
        println!(
            "  round {}: bare {:.0} req/s, relay/bare {}",
            round + 1,
            bare_rate,
            ratios.join(", ")
        );
    }
    let bare_rates: Vec<f64> = contenders[0].runs.iter().map(Stats::rate).collect();
    for contender in &contenders {
        let ratio = contender.spool.map(|_| {
            let ratios: Vec<f64> = contender
                .runs
                .iter()
                .zip(&bare_rates)
                .map(|(run, bare)| run.rate() / bare)
                .collect();
            median(ratios)
        });
        print_row(contender.name, &Stats::pooled(&contender.runs), ratio);
    }
    if !sled_alone_rates.is_empty() {
        let ratios: Vec<f64> = sled_alone_rates
            .iter()
            .zip(&bare_rates)
            .map(|(rate, bare)| rate / bare)
            .collect();
        println!(
            "{:<34} {:>10.0} notifications/s (groups of {connections}, one thread, no HTTP)  vs bare {:.0} % (median): the most a relay on sled can reach here",
            "sled alone, flush + fdatasync",
            median(sled_alone_rates.clone()),
            100.0 * median(ratios)
        );
    }
    for contender in &contenders {
        print_cpu_row(contender);
    }
    for contender in contenders {
        let (_, peak) = contender.server.rss_mib();
        contender.server.stop().await;
        if let Some(spool) = contender.spool {
            println!(
                "{:<34} peak RSS {peak:.1} MiB, spool {:.0} bytes on disk per notification",
                "",
                dir_size(&ws.dir.path().join(spool)) as f64 / contender.stored.max(1) as f64
            );
        }
    }
}

/// A contender's CPU time per request answered 200, pooled over the rounds,
/// and how many of the 2 cores it kept busy while measured.
fn print_cpu_row(contender: &Contender) {
    let label = match contender.spool {
        Some(_) => "relay CPU µs per notification",
        None => "bare server CPU µs per request",
    };
    let cpu: Option<u64> = contender.cpu_us.iter().copied().sum();
    let pooled = Stats::pooled(&contender.runs);
    let per = cpu_per(Some(0), cpu, pooled.ok);
    let cores = cpu.map_or(f64::NAN, |us| us as f64 / 1e6) / pooled.elapsed.as_secs_f64();
    let rounds: Vec<String> = contender
        .cpu_us
        .iter()
        .zip(&contender.runs)
        .map(|(cpu, run)| format!("{:.1}", cpu_per(Some(0), *cpu, run.ok)))
        .collect();
    println!(
        "{:<34} {label}: {per:.1} (rounds {}), {cores:.2} cores busy while measured",
        contender.name,
        rounds.join(", ")
    );
}
