//! relay-bench: measures webhook-relay on loopback against a bare hyper
//! server measured the same way in the same run, and prints the figures.
//!
//! `cargo run --release --bin relay-bench -- all` runs every scenario:
//! - ingest:   durable ingest (every 200 covered by a flush + fdatasync) vs a
//!   bare TLS hyper server answering 200, N keep-alive connections each;
//!   also the relay without fdatasync, to show what the sync costs, and
//!   sled alone (`sled_alone.rs`): the relay's writes in groups of N with
//!   nothing else, the most a relay on sled can reach.
//!   `--lifecycle` adds a relay posted each invoice twice, `encolado`
//!   (queued) then `emitido`, to show what a queued notification's extra
//!   index entry and seek cost beside the final-only default.
//! - forward:  deliveries per second to a local target from a ready backlog,
//!   then the latency scenario.
//! - latency:  end-to-end latency (provider POST → target receipt) at 500
//!   and 1,000 notifications/s, in `--rounds` rounds of 5 s each; before
//!   each round, the disk's own fdatasync latency in the spool's directory,
//!   so that a slow spell of the disk shows beside the figure it spoiled.
//! - steady:   ingest and forwarding at once: a closed-loop load on the
//!   relay with one subscription to a local target; notifications/s
//!   acknowledged, deliveries/s received, the backlog left, CPU per
//!   notification end to end. `--soak` runs it longer with a short
//!   retention and prints the spool's size on disk as it goes.
//! - backup:   `spool backup` of a live relay and `spool restore`, timed,
//!   with the archive's size (`backup.rs`).
//! - backlog:  the relay's RSS while a million deliveries wait in the spool,
//!   and its start to ready on that spool.
//!
//! Beside the rates it prints the relay's CPU time (user + system, from
//! /proc/<pid>/stat) per notification and per delivery.

// A benchmark measures the wall time it takes; it decides nothing by it.
#![allow(clippy::disallowed_methods)]

/// The same allocator as the relay, so that the bare server it is compared
/// with is not handicapped by glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backup;
mod load;
mod servers;
mod sled_alone;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::time::Instant;

use load::Stats;
use servers::{cpu_per, ChildServer, Target};

const TOKEN: &str = "bench-token-0123456789";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Parser)]
#[command(about = "Benchmarks webhook-relay against a bare hyper server")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// Concurrent keep-alive connections of the closed-loop load; ingest
    /// runs once per count given (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [32, 64, 256], global = true)]
    connections: Vec<usize>,
    /// Seconds each closed-loop measurement runs [default: 3; steady
    /// --soak: 300].
    #[arg(long, global = true)]
    seconds: Option<u64>,
    /// Ingest: rounds of (bare, relay, relay without fdatasync), one after
    /// the other, so that a slow or fast spell of this shared machine falls
    /// on both sides of a ratio; the median ratio is reported.
    #[arg(long, default_value_t = 3, global = true)]
    rounds: usize,
}

#[derive(Subcommand)]
enum Scenario {
    Ingest {
        /// Also measure a relay posted each invoice's queued notification
        /// (TusFacturas `encolado`), then its final `emitido`, beside the
        /// default final-only bodies.
        #[arg(long)]
        lifecycle: bool,
    },
    Forward {
        /// Notifications in the ready backlog.
        #[arg(long, default_value_t = 20_000)]
        backlog: u64,
    },
    Latency {
        /// Notifications per second to post at, one rate after the other.
        #[arg(long, value_delimiter = ',', default_values_t = [500, 1_000])]
        rates: Vec<u32>,
    },
    Steady {
        /// Run longer (300 s unless --seconds) with `retention = "2s"` and
        /// `dedup_window = "1s"`, printing the spool's size on disk every
        /// 10 s.
        #[arg(long)]
        soak: bool,
    },
    Backlog {
        /// Notifications to spool; each fans out to 10 subscriptions.
        #[arg(long, default_value_t = 100_000)]
        notifications: u64,
    },
    /// Time and size of `spool backup` of a live relay and of `spool
    /// restore`, on a spool of N notifications.
    Backup {
        #[arg(long, default_value_t = 100_000)]
        notifications: u64,
    },
    All,
    /// (internal) the bare baseline server.
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = args_settings(&args);
    runtime.block_on(async move {
        match args.scenario {
            Scenario::BareServer { cert, key } => servers::run_bare_server(cert.zip(key)).await,
            Scenario::Ingest { lifecycle } => ingest(&settings, lifecycle).await,
            Scenario::Forward { backlog } => forward(&settings, backlog).await,
            Scenario::Latency { rates } => latency(&settings, &rates).await,
            Scenario::Steady { soak } => steady(&settings, soak).await,
            Scenario::Backlog { notifications } => backlog(notifications).await,
            Scenario::Backup { notifications } => backup::run(notifications).await,
            Scenario::All => {
                ingest(&settings, false).await;
                forward(&settings, 20_000).await;
                steady(&settings, false).await;
                backlog(100_000).await;
            }
        }
    });
}

#[derive(Clone)]
struct Settings {
    /// Connection counts to measure ingest at; the others use the first.
    connections: Vec<usize>,
    duration: Duration,
    /// `--seconds` when it was given.
    seconds: Option<u64>,
    rounds: usize,
}

impl Settings {
    fn first_connections(&self) -> usize {
        self.connections.first().copied().unwrap_or(64)
    }
}

fn args_settings(args: &Args) -> Settings {
    let mut connections: Vec<usize> = args.connections.iter().map(|&n| n.max(1)).collect();
    if connections.is_empty() {
        connections.push(64);
    }
    Settings {
        connections,
        duration: Duration::from_secs(args.seconds.unwrap_or(3).max(1)),
        seconds: args.seconds,
        rounds: args.rounds.max(1),
    }
}

/// A scratch directory with a certificate and a relay config.
struct Workspace {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        webhook_relay::ingress::tls::ensure_self_signed(&cert, &key).expect("bench certificate");
        Workspace { dir, cert, key }
    }

    fn config(&self, name: &str, sync_data: bool, subscriptions: &str) -> PathBuf {
        self.config_with(name, sync_data, ("", ""), subscriptions)
    }

    /// A config with extra lines in its `[spool]` and `[forwarder]` sections.
    fn config_with(
        &self,
        name: &str,
        sync_data: bool,
        (spool_extra, forwarder_extra): (&str, &str),
        subscriptions: &str,
    ) -> PathBuf {
        let spool = self.dir.path().join(name);
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{key}"
max_connections = 4096
# hyper's header timeout also closes idle keep-alive connections: keep the
# load's connections open while the other contenders are measured.
header_timeout = "300s"

[spool]
path = "{spool}"
sync_data = {sync_data}
{spool_extra}
[forwarder]
max_in_flight = 1024
{forwarder_extra}

[sources.tusfacturas]
provider = "tusfacturas"
token = "{TOKEN}"
{subscriptions}
"#,
            cert = self.cert.display(),
            key = self.key.display(),
            spool = spool.display(),
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("bench config");
        path
    }

    fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).expect("bench certificate")
    }
}

fn subscription(name: &str, url: &str, max_in_flight: usize) -> String {
    format!(
        "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ntimeout_first = \"120s\"\ntimeout_retry = \"120s\"\nmax_in_flight = {max_in_flight}\n"
    )
}

fn notification(
    prefix: impl std::fmt::Display + Send + Sync + 'static,
) -> impl Fn(u64) -> String + Send + Sync + 'static {
    move |n| {
        format!(
            r#"{{"creado": "18/03/2022 15:58:11", "evento": "emitido", "recurso": "facturacion", "external_reference": "{n}", "intento": 1, "msg": [], "hook_id": "{prefix}-{n}"}}"#
        )
    }
}

/// Notifications posted in one stretch of queued ones, then as many final
/// ones of the same invoices: far more than the requests in flight, so
/// each invoice's queued notification is stored before its final one
/// (the other way round it would be a superseded resend, another path).
const LIFECYCLE_STRETCH: u64 = 4096;

/// Bodies that take each invoice through its lifecycle: request `n` is
/// the queued `encolado` of an invoice in one stretch, its final `emitido`
/// in the next. The invoices are named after `prefix` too: one seen in an
/// earlier round is final already, and a queued one would not move it.
fn lifecycle_notification(
    prefix: impl std::fmt::Display + Send + Sync + 'static,
) -> impl Fn(u64) -> String + Send + Sync + 'static {
    move |n| {
        let stretch = n / LIFECYCLE_STRETCH;
        let invoice = (stretch / 2) * LIFECYCLE_STRETCH + n % LIFECYCLE_STRETCH;
        let evento = if stretch.is_multiple_of(2) {
            "encolado"
        } else {
            "emitido"
        };
        format!(
            r#"{{"creado": "18/03/2022 15:58:11", "evento": "{evento}", "recurso": "facturacion", "external_reference": "{prefix}-{invoice}", "intento": 1, "msg": [], "hook_id": "{prefix}-{n}"}}"#
        )
    }
}

/// What a contender posts.
#[derive(Clone, Copy)]
enum Bodies {
    /// A final `emitido` of a new invoice each time.
    Final,
    /// Queued, then final, per invoice ([`lifecycle_notification`]).
    Lifecycle,
}

impl Bodies {
    fn of(self, prefix: String) -> Box<dyn Fn(u64) -> String + Send + Sync> {
        match self {
            Bodies::Final => Box::new(notification(prefix)),
            Bodies::Lifecycle => Box::new(lifecycle_notification(prefix)),
        }
    }
}

fn hooks_url(addr: std::net::SocketAddr) -> String {
    format!(
        "https://localhost:{}/hooks/tusfacturas/{TOKEN}",
        addr.port()
    )
}

/// One line of figures (pooled over the rounds); `ratio` is the median of
/// the per-round ratios to the bare server, so the pooled rates need not
/// divide to it.
fn print_row(name: &str, stats: &Stats, ratio: Option<f64>) {
    let ratio = ratio.map_or(String::from("-"), |r| {
        format!("{:.0} % (median)", 100.0 * r)
    });
    println!(
        "{name:<34} {:>10.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ok {:>7}  failed {:>4}  vs bare {ratio}",
        stats.rate(),
        stats.percentile_ms(0.50),
        stats.percentile_ms(0.99),
        stats.ok,
        stats.failed
    );
}

/// Opens the connections and their TLS sessions; returns requests stored.
async fn warm_up(client: &reqwest::Client, url: &str, connections: usize) -> u64 {
    load::closed_loop(
        client,
        url,
        connections,
        Duration::from_millis(500),
        5_000,
        notification("warm"),
    )
    .await
    .ok
}

async fn measure(
    client: &reqwest::Client,
    url: &str,
    connections: usize,
    duration: Duration,
    bodies: Box<dyn Fn(u64) -> String + Send + Sync>,
) -> Stats {
    load::closed_loop(client, url, connections, duration, 2_000_000, bodies).await
}

async fn ingest(settings: &Settings, lifecycle: bool) {
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

/// The middle value; the mean of the two middle ones for an even count.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

async fn forward(settings: &Settings, backlog: u64) {
    println!("\n== forward: {backlog} ready deliveries to a local HTTP target ==");
    let ws = Workspace::new();
    let pem = ws.cert_pem();

    // Throughput: fill the spool while the target holds its answers, then open it.
    let target = Target::start(false).await;
    let config = ws.config("forward", true, &subscription("bench", &target.url(), 128));
    let relay = ChildServer::relay(&config).await;
    let connections = settings.first_connections();
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
    println!(
        "deliveries: {} of {} in {:.2} s = {:.0} deliveries/s ({} requests at the target), relay peak RSS {peak:.1} MiB{}",
        target.distinct(),
        filled.ok,
        elapsed.as_secs_f64(),
        target.distinct() as f64 / elapsed.as_secs_f64(),
        target.requests(),
        if all { "" } else { "  (INCOMPLETE)" }
    );
    println!(
        "relay CPU µs per delivery: {:.1} ({answered} deliveries answered 2xx by the target; {:.2} cores busy)",
        cpu_per(cpu_before, cpu_after, answered),
        cpu_per(cpu_before, cpu_after, 1) / 1e6 / elapsed.as_secs_f64()
    );

    latency(settings, &[500, 1_000]).await;
}

/// Seconds each end-to-end round posts for.
const LATENCY_ROUND_SECONDS: u64 = 5;

/// End-to-end latency at fixed, moderate rates, in rounds on one relay;
/// the median of the rounds' p99 is the figure (one slow spell of this
/// shared machine's disk spoils one round, not the result).
async fn latency(settings: &Settings, rates: &[u32]) {
    println!(
        "\n== latency: provider POST -> target receipt, {} rounds of {LATENCY_ROUND_SECONDS} s per rate ==",
        settings.rounds
    );
    let ws = Workspace::new();
    let client = load::client(Some(&ws.cert_pem()), 8);
    let target = Target::start(true).await;
    let config = ws.config("latency", true, &subscription("bench", &target.url(), 64));
    let relay = ChildServer::relay(&config).await;
    let url = hooks_url(relay.addr);
    warm_up_delivered(
        &client,
        &url,
        &target,
        rates.first().copied().unwrap_or(1_000),
    )
    .await;
    for &rate in rates {
        let mut p99s = Vec::new();
        for round in 1..=settings.rounds {
            let disk = disk_sync_latency(ws.dir.path()).await;
            println!(
                "round {round} (the disk's fdatasync of a 1.5 KB append just before: p50 {:.2} ms  p99 {:.2} ms):",
                load::percentile_ms(&disk, 0.50),
                load::percentile_ms(&disk, 0.99)
            );
            let prefix = format!("e2e-{rate}-{round}");
            let count = u64::from(rate) * LATENCY_ROUND_SECONDS;
            let p99 = end_to_end(&client, &url, (&relay, &target), (rate, count), &prefix).await;
            p99s.push(p99);
        }
        println!(
            "end-to-end at {rate}/s: median of the rounds' p99 {:.2} ms",
            median(p99s)
        );
    }
    relay.stop().await;
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
/// CPU per notification over the whole (ingest, delivery, idle time).
async fn end_to_end(
    client: &reqwest::Client,
    url: &str,
    (relay, target): (&ChildServer, &Target),
    (rate, count): (u32, u64),
    prefix: &str,
) -> f64 {
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
    load::percentile_ms(&latencies, 0.99)
}

/// Seconds `steady --soak` runs unless `--seconds` says otherwise. The
/// spool's retention walk over delivered notifications starts again a
/// minute after the last one finished (and at ~7k/s one walk took about a
/// minute itself), so a soak has to run past a few walks to show whether
/// the spool's size levels off.
const SOAK_SECONDS: u64 = 300;

async fn steady(settings: &Settings, soak: bool) {
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

async fn backlog(notifications: u64) {
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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Bytes the files under `path` occupy on the disk (blocks allocated,
/// which sparse files keep below their length).
fn dir_allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => dir_allocated(&entry.path()),
                    Ok(meta) => meta.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use webhook_relay::providers::{tusfacturas, InvoiceStatus};

    #[test]
    fn lifecycle_bodies_queue_each_invoice_then_make_it_final() {
        let body = lifecycle_notification("l0");
        let told = |n: u64| {
            let checked = tusfacturas::check(body(n).as_bytes()).expect("a valid TusFacturas body");
            (checked.subject.expect("an invoice"), checked.status)
        };
        let (first, status) = told(0);
        assert_eq!(status, InvoiceStatus::Queued);
        assert_eq!(told(LIFECYCLE_STRETCH), (first, InvoiceStatus::Accepted));
        let (last, status) = told(LIFECYCLE_STRETCH - 1);
        assert_eq!(status, InvoiceStatus::Queued);
        assert_eq!(
            told(2 * LIFECYCLE_STRETCH - 1),
            (last.clone(), InvoiceStatus::Accepted)
        );
        // The next stretch starts new invoices, and another round's
        // prefix never names one of this round.
        let (next, status) = told(2 * LIFECYCLE_STRETCH);
        assert_eq!(status, InvoiceStatus::Queued);
        assert_ne!(next, last);
        let other_round = tusfacturas::check(lifecycle_notification("l1")(0).as_bytes()).unwrap();
        assert_ne!(other_round.subject, Some(told(0).0));
    }
}
