//! The steady scenario: ingest and forwarding at once, closed-loop, with
//! one subscription to a local target; `--soak` runs it longer with a short
//! retention and prints the spool's size on disk as it goes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::load;
use crate::servers::{cpu_per, ChildServer, Target};
use crate::{
    dir_allocated, dir_size, hooks_url, mib, notification, subscription, warm_up, Settings,
    Workspace,
};

/// Seconds `steady --soak` runs unless `--seconds` says otherwise. The
/// spool's retention walk over delivered notifications starts again a
/// minute after the last one finished (and at ~7k/s one walk took about a
/// minute itself), so a soak has to run past a few walks to show whether
/// the spool's size levels off.
const SOAK_SECONDS: u64 = 300;

pub async fn run(settings: &Settings, soak: bool) {
    let connections = settings.first_connections();
    let duration = match (soak, settings.seconds) {
        (true, None) => Duration::from_secs(SOAK_SECONDS),
        _ => settings.duration,
    };
    let (spool_extra, retention) = match soak {
        true => (
            "retention = \"2s\"\ndedup_window = \"1s\"\n",
            ", retention 2 s, dedup window 1 s",
        ),
        false => ("", ""),
    };
    println!(
        "\n== steady{}: {connections} keep-alive TLS connections posting for {} s, one subscription to a local HTTP target{retention} ==",
        if soak { " (soak)" } else { "" },
        duration.as_secs()
    );
    let ws = Workspace::new();
    let pem = ws.cert_pem();
    let target = Target::start(true).await;
    let config = ws.config_with(
        "steady",
        true,
        (spool_extra, ""),
        &subscription("bench", &target.url(), 128),
    );
    let relay = ChildServer::relay(&config).await;
    let client = load::client(Some(&pem), connections);
    let url = hooks_url(relay.addr);
    let spool = ws.dir.path().join("steady");

    // Open the connections, then let the warm-up's notifications through.
    let warm = warm_up(&client, &url, connections).await;
    target
        .wait_for(warm as usize, Duration::from_secs(60))
        .await;
    // Deliveries still owed from the warm-up: counted out of the window's.
    let owed_at_start = (warm as usize).saturating_sub(target.distinct());
    let distinct_before = target.distinct();
    let requests_before = target.requests();
    let cpu_before = relay.cpu_us();
    let acked = Arc::new(AtomicU64::new(0));
    let mut load = tokio::spawn({
        let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
        async move {
            // Bounded in count too, far above what 2 cores can ingest.
            let limits = (duration, duration.as_secs().max(1) * 100_000);
            load::closed_loop_counted(
                &client,
                &url,
                connections,
                limits,
                notification("st"),
                acked,
            )
            .await
        }
    });

    // What the window delivered so far: new distinct notifications, less
    // what the warm-up still owed (first attempts go out in spool order).
    let delivered = || (target.distinct() - distinct_before).saturating_sub(owed_at_start) as u64;
    // A line every 10 s in a soak, about ten lines otherwise.
    let period = match soak {
        true => Duration::from_secs(10),
        false => Duration::from_secs((duration.as_secs() / 10).max(1)),
    };
    let started = Instant::now();
    let mut next = started + period;
    // (when, relay CPU, acknowledged) at the previous line.
    let mut last = (started, cpu_before, 0);
    let stats = loop {
        tokio::select! {
            stats = &mut load => break stats.expect("load task"),
            () = tokio::time::sleep_until(next) => {
                next += period;
                let (acked, delivered) = (acked.load(Ordering::Relaxed), delivered());
                let cpu = relay.cpu_us();
                let since = last.0.elapsed().as_secs_f64();
                let cores = cpu_per(last.1, cpu, 1) / 1e6 / since;
                let rate = acked.saturating_sub(last.2) as f64 / since;
                last = (Instant::now(), cpu, acked);
                let (rss, _) = relay.rss_mib();
                println!(
                    "  {:>4.0} s: {acked} acknowledged ({rate:.0}/s), {delivered} delivered, backlog {}, spool {:.1} MiB on disk ({:.1} MiB allocated), relay RSS {rss:.1} MiB, {cores:.2} cores busy",
                    started.elapsed().as_secs_f64(),
                    acked as i64 - delivered as i64,
                    mib(dir_size(&spool)),
                    mib(dir_allocated(&spool)),
                );
            }
        }
    };
    let delivered_in_window = delivered();
    let cpu_window = relay.cpu_us();
    // Can dip below 0 by a few: a delivery may reach the target before the
    // 200 of its post reaches the load.
    let backlog = stats.ok as i64 - delivered_in_window as i64;
    println!(
        "ingested: {} in {:.2} s = {:.0} notifications/s acknowledged  p50 {:.2} ms  p99 {:.2} ms  failed {}",
        stats.ok,
        stats.elapsed.as_secs_f64(),
        stats.rate(),
        stats.percentile_ms(0.50),
        stats.percentile_ms(0.99),
        stats.failed
    );
    println!(
        "delivered: {delivered_in_window} of them in the same {:.2} s = {:.0} deliveries/s received by the target; backlog at the end {backlog} (acknowledged, not yet delivered){}",
        stats.elapsed.as_secs_f64(),
        delivered_in_window as f64 / stats.elapsed.as_secs_f64(),
        match owed_at_start {
            0 => String::new(),
            owed => format!("; {owed} from the warm-up were still owed at the start"),
        }
    );

    // Let the backlog drain, so that the CPU covers each notification's
    // ingest and its delivery.
    let drain_started = Instant::now();
    let drained = target
        .wait_for(
            distinct_before + owed_at_start + stats.ok as usize,
            Duration::from_secs(120),
        )
        .await;
    let drain = drain_started.elapsed();
    let cpu_after = relay.cpu_us();
    let resends =
        (target.requests() - requests_before) as i64 - (target.distinct() - distinct_before) as i64;
    let (_, peak) = relay.rss_mib();
    println!(
        "relay CPU µs per notification end to end: {:.1} (ingest + delivery{}; {:.2} cores busy during the load); backlog {} {:.2} s after the load stopped{}",
        cpu_per(cpu_before, cpu_after, stats.ok),
        if drained { "" } else { ", backlog NOT drained" },
        cpu_per(cpu_before, cpu_window, 1) / 1e6 / stats.elapsed.as_secs_f64(),
        if drained { "drained" } else { "still not drained" },
        drain.as_secs_f64(),
        match resends {
            0 => String::new(),
            n => format!(", {n} requests beyond one per notification at the target"),
        }
    );
    println!(
        "relay peak RSS {peak:.1} MiB, spool {:.1} MiB on disk ({:.1} MiB allocated) at the end",
        mib(dir_size(&spool)),
        mib(dir_allocated(&spool)),
    );
    relay.stop().await;
}
