//! The load generator: closed-loop (N keep-alive connections, each posting
//! as fast as answers come) and open-loop (a fixed rate), bounded in count
//! and time, with latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// What one load run measured.
#[derive(Debug, Default)]
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Latency of each successful request, microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }

    /// Several runs taken together: counts and times add up, latencies merge.
    pub fn pooled(runs: &[Stats]) -> Stats {
        let mut total = Stats::default();
        for run in runs {
            total.ok += run.ok;
            total.failed += run.failed;
            total.elapsed += run.elapsed;
            total.latencies_us.extend_from_slice(&run.latencies_us);
        }
        total.latencies_us.sort_unstable();
        total
    }
}

pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    sorted_us[index.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// A client with one pooled connection per concurrent task (HTTP/1.1
/// keep-alive), trusting the given certificate.
pub fn client(cert_pem: Option<&[u8]>, connections: usize) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30));
    if let Some(pem) = cert_pem {
        let cert = reqwest::Certificate::from_pem(pem).expect("bench certificate");
        builder = builder.tls_certs_only([cert]);
    }
    builder.build().expect("bench client")
}

/// `connections` tasks post back to back until `duration` or `max` requests.
pub async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    connections: usize,
    duration: Duration,
    max: u64,
    body: impl Fn(u64) -> String + Send + Sync + 'static,
) -> Stats {
    let acked = Arc::new(AtomicU64::new(0));
    closed_loop_counted(client, url, connections, (duration, max), body, acked).await
}

/// [`closed_loop`], adding each success to `acked` as it comes, so that
/// another task can watch the run's progress.
pub async fn closed_loop_counted(
    client: &reqwest::Client,
    url: &str,
    connections: usize,
    (duration, max): (Duration, u64),
    body: impl Fn(u64) -> String + Send + Sync + 'static,
    acked: Arc<AtomicU64>,
) -> Stats {
    let body = Arc::new(body);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url, body, issued, acked) = (
                client.clone(),
                url.to_owned(),
                body.clone(),
                issued.clone(),
                acked.clone(),
            );
            tokio::spawn(async move {
                let mut stats = Stats::default();
                while Instant::now() < deadline {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if n >= max {
                        break;
                    }
                    let sent = Instant::now();
                    match post(&client, &url, body(n)).await {
                        true => {
                            stats.ok += 1;
                            acked.fetch_add(1, Ordering::Relaxed);
                            stats.latencies_us.push(sent.elapsed().as_micros() as u64);
                        }
                        false => stats.failed += 1,
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = Stats::default();
    for task in tasks {
        let stats = task.await.expect("load task");
        total.ok += stats.ok;
        total.failed += stats.failed;
        total.latencies_us.extend(stats.latencies_us);
    }
    total.elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    total
}

/// Posts `count` requests at `rate` per second; returns when each was sent.
pub async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    rate: u32,
    count: u64,
    body: impl Fn(u64) -> String,
) -> (Vec<Instant>, u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut sent_at = Vec::with_capacity(count as usize);
    let mut tasks = Vec::with_capacity(count as usize);
    for n in 0..count {
        tick.tick().await;
        sent_at.push(Instant::now());
        let (client, url, body) = (client.clone(), url.to_owned(), body(n));
        tasks.push(tokio::spawn(async move { post(&client, &url, body).await }));
    }
    let mut failed = 0;
    for task in tasks {
        if !task.await.unwrap_or(false) {
            failed += 1;
        }
    }
    (sent_at, failed)
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> bool {
    match client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) => {
            let ok = response.status().is_success();
            // Read the answer so the connection goes back to the pool.
            ok && response.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}
