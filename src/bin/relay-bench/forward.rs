//! The forward and latency scenarios: deliveries per second to a local
//! target from a ready backlog, and end-to-end latency (provider POST to
//! target receipt) at fixed rates, beside the disk's own fdatasync latency.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::load;
use crate::servers::{cpu_per, ChildServer, Target};
use crate::{hooks_url, median, notification, subscription, Backend, Settings, Workspace};

pub async fn run(settings: &Settings, backlog: u64) {
    println!("\n== forward: {backlog} ready deliveries to a local HTTP target ==");
    let ws = Workspace::new();
    deliveries(&ws, &Backend::Sled, settings.first_connections(), backlog).await;
    latency(settings, &[500, 1_000]).await;
}

/// Deliveries per second from a ready backlog of `backlog` notifications
/// (posted over `connections` connections while the target holds its
/// answers) once the target opens, on a relay on `backend`; printed, and
/// returned.
pub async fn deliveries(
    ws: &Workspace,
    backend: &Backend,
    connections: usize,
    backlog: u64,
) -> f64 {
    let pem = ws.cert_pem();
    // Throughput: fill the spool while the target holds its answers, then open it.
    let target = Target::start(false).await;
    let config = ws.relay_config(
        "forward",
        backend,
        &subscription("bench", &target.url(), 128),
    );
    let relay = ChildServer::relay(&config).await;
    let client = load::client(Some(&pem), connections);
    let url = hooks_url(relay.addr);
    let filled = load::closed_loop(
        &client,
        &url,
        connections,
        Duration::from_secs(300),
        backlog,
        notification("fw"),
    )
    .await;
    let started = Instant::now();
    // The relay's CPU over the window: from opening the target until the
    // last notification arrived (a few attempts already sent and held by
    // the closed target fall before it, the last outcomes' flush after).
    let cpu_before = relay.cpu_us();
    target.open();
    let all = target
        .wait_for(filled.ok as usize, Duration::from_secs(300))
        .await;
    let elapsed = started.elapsed();
    let cpu_after = relay.cpu_us();
    // Every request the target records has been answered 200.
    let answered = target.requests();
    let (_, peak) = relay.rss_mib();
    relay.stop().await;
    let rate = target.distinct() as f64 / elapsed.as_secs_f64();
    println!(
        "deliveries: {} of {} in {:.2} s = {rate:.0} deliveries/s ({} requests at the target), relay peak RSS {peak:.1} MiB{}",
        target.distinct(),
        filled.ok,
        elapsed.as_secs_f64(),
        target.requests(),
        if all { "" } else { "  (INCOMPLETE)" }
    );
    println!(
        "relay CPU µs per delivery: {:.1} ({answered} deliveries answered 2xx by the target; {:.2} cores busy)",
        cpu_per(cpu_before, cpu_after, answered),
        cpu_per(cpu_before, cpu_after, 1) / 1e6 / elapsed.as_secs_f64()
    );
    rate
}

/// Seconds each end-to-end round posts for.
const LATENCY_ROUND_SECONDS: u64 = 5;

/// End-to-end latency at fixed, moderate rates, in rounds on one relay;
/// the median of the rounds' p99 is the figure (one slow spell of this
/// shared machine's disk spoils one round, not the result).
pub async fn latency(settings: &Settings, rates: &[u32]) {
    println!(
        "\n== latency: provider POST -> target receipt, {} rounds of {LATENCY_ROUND_SECONDS} s per rate ==",
        settings.rounds
    );
    latency_on(&Workspace::new(), &Backend::Sled, settings, rates).await;
}

/// [`latency`] on a relay on `backend`: per rate, the median of the
/// rounds' p50 and of their p99, in ms.
pub async fn latency_on(
    ws: &Workspace,
    backend: &Backend,
    settings: &Settings,
    rates: &[u32],
) -> Vec<(f64, f64)> {
    let client = load::client(Some(&ws.cert_pem()), 8);
    let target = Target::start(true).await;
    let config = ws.relay_config(
        "latency",
        backend,
        &subscription("bench", &target.url(), 64),
    );
    let relay = ChildServer::relay(&config).await;
    let url = hooks_url(relay.addr);
    warm_up_delivered(
        &client,
        &url,
        &target,
        rates.first().copied().unwrap_or(1_000),
    )
    .await;
    let mut medians = Vec::new();
    for &rate in rates {
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for round in 1..=settings.rounds {
            let disk = disk_sync_latency(ws.dir.path()).await;
            println!(
                "round {round} (the disk's fdatasync of a 1.5 KB append just before: p50 {:.2} ms  p99 {:.2} ms):",
                load::percentile_ms(&disk, 0.50),
                load::percentile_ms(&disk, 0.99)
            );
            let prefix = format!("e2e-{rate}-{round}");
            let count = u64::from(rate) * LATENCY_ROUND_SECONDS;
            let (p50, p99) =
                end_to_end(&client, &url, (&relay, &target), (rate, count), &prefix).await;
            p50s.push(p50);
            p99s.push(p99);
        }
        let (p50, p99) = (median(p50s), median(p99s));
        println!("end-to-end at {rate}/s: median of the rounds' p99 {p99:.2} ms");
        medians.push((p50, p99));
    }
    relay.stop().await;
    medians
}

/// One second of posts at `rate`, delivered and not counted: just after a
/// start the first few dozen notifications took 20-30 ms each (first
/// connections, first flushes), which is not the steady state the rounds
/// measure.
async fn warm_up_delivered(client: &reqwest::Client, url: &str, target: &Target, rate: u32) {
    let before = target.distinct();
    let body = notification("warm-up".to_owned());
    let (_, failed) = load::open_loop(client, url, rate, u64::from(rate), body).await;
    let delivered = target
        .wait_for(
            before + (u64::from(rate) - failed) as usize,
            Duration::from_secs(60),
        )
        .await;
    println!(
        "warm-up: {rate} notifications at {rate}/s, not counted ({failed} posts failed{})",
        if delivered {
            ""
        } else {
            ", not all delivered within 60 s"
        }
    );
}

/// The disk's own latency, sorted (µs): 500 appends of 1.5 KB (about a
/// notification's record), each followed by an fdatasync, in `dir`. A
/// `sync` first: what earlier work left dirty (a build's output, deleted
/// files' discards on a filesystem mounted with `discard`) would otherwise
/// be written back by the first fdatasyncs of the round, tens of ms each.
async fn disk_sync_latency(dir: &Path) -> Vec<u64> {
    let path = dir.join("disk-probe");
    let sorted = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        rustix::fs::sync();
        let mut file = std::fs::File::create(&path).expect("disk probe file");
        let record = [b'x'; 1536];
        let mut latencies: Vec<u64> = (0..500)
            .map(|_| {
                let started = std::time::Instant::now();
                file.write_all(&record).expect("disk probe write");
                file.sync_data().expect("disk probe fdatasync");
                started.elapsed().as_micros() as u64
            })
            .collect();
        let _ = std::fs::remove_file(&path);
        latencies.sort_unstable();
        latencies
    })
    .await
    .expect("disk probe task");
    sorted
}

/// Posts `count` notifications at `rate` per second and prints the
/// latencies from each post to its arrival at the target, and the relay's
/// CPU per notification over the whole (ingest, delivery, idle time);
/// returns the p50 and p99 in ms.
async fn end_to_end(
    client: &reqwest::Client,
    url: &str,
    (relay, target): (&ChildServer, &Target),
    (rate, count): (u32, u64),
    prefix: &str,
) -> (f64, f64) {
    // The target may hold an earlier run's notifications (other prefixes).
    let before = target.distinct();
    let cpu_before = relay.cpu_us();
    let body = notification(prefix.to_owned());
    let (sent_at, failed) = load::open_loop(client, url, rate, count, body).await;
    let acknowledged = count - failed;
    target
        .wait_for(before + acknowledged as usize, Duration::from_secs(60))
        .await;
    let cpu_after = relay.cpu_us();
    let mut latencies: Vec<u64> = (0..count)
        .filter_map(|n| {
            Some(
                (target.first_seen(&format!("{prefix}-{n}"))? - sent_at[n as usize]).as_micros()
                    as u64,
            )
        })
        .collect();
    latencies.sort_unstable();
    let (_, peak) = relay.rss_mib();
    println!(
        "end-to-end at {rate}/s: p50 {:.2} ms  p99 {:.2} ms  ({} of {count} delivered, {failed} posts failed), relay peak RSS {peak:.1} MiB",
        load::percentile_ms(&latencies, 0.50),
        load::percentile_ms(&latencies, 0.99),
        latencies.len()
    );
    println!(
        "relay CPU µs per notification end to end at {rate}/s: {:.1} (ingest + delivery + idle time, over the {} delivered)",
        cpu_per(cpu_before, cpu_after, latencies.len() as u64),
        latencies.len()
    );
    (
        load::percentile_ms(&latencies, 0.50),
        load::percentile_ms(&latencies, 0.99),
    )
}
