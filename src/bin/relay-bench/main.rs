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
//! - jetstream: the JetStream spool's store (issue 19, spool level)
//!   against a raw async-nats publish-with-ack at the same concurrency,
//!   R1 and R3 on loopback nats-servers, `sync_interval` default and
//!   `always` (`jetstream.rs`; not part of `all`). `jetstream --relay`
//!   measures the relay itself on those four spools and on sled in one run:
//!   ingest against the raw publisher, deliveries per second, end-to-end
//!   latency at 1,000/s (`jetstream_relay.rs`).
//! - backlog:  the relay's RSS while a million deliveries wait in the spool,
//!   and its start to ready on that spool.
//!
//! Beside the rates it prints the relay's CPU time (user + system, from
//! /proc/<pid>/stat) per notification and per delivery.
//!
//! A file per scenario (`ingest.rs`, `forward.rs` with latency, `steady.rs`,
//! `backup.rs`, `backlog.rs`); here the options, the workspace and the
//! helpers they share.

// A benchmark measures the wall time it takes; it decides nothing by it.
#![allow(clippy::disallowed_methods)]

/// The same allocator as the relay, so that the bare server it is compared
/// with is not handicapped by glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backlog;
mod backup;
mod forward;
mod ingest;
mod jetstream;
mod jetstream_relay;
mod load;
mod servers;
mod sled_alone;
mod steady;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

use load::Stats;

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
    /// The JetStream spool's store against a raw publish-with-ack, R1 and
    /// R3, sync default and always (nats-server on the PATH; not in `all`).
    Jetstream {
        /// Measure the relay (HTTPS ingest, deliveries, end-to-end
        /// latency) on those spools and on sled, instead of the store alone.
        #[arg(long)]
        relay: bool,
        /// `--relay`: notifications in each forward run's ready backlog.
        #[arg(long, default_value_t = 10_000)]
        backlog: u64,
        /// `--relay`: the nats-server setups to measure, comma-separated;
        /// all by default.
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(jetstream_relay::setup_names()))]
        setups: Vec<String>,
    },
    All,
    /// (internal) the bare baseline server.
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// Publish each body with ack to these servers (comma-separated):
        /// the bridge baseline of `jetstream --relay`.
        #[arg(long, value_delimiter = ',')]
        jetstream: Vec<String>,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
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
            Scenario::BareServer {
                cert,
                key,
                jetstream,
                replicas,
            } => {
                let bridge = (!jetstream.is_empty()).then_some(servers::BridgeTarget {
                    servers: jetstream,
                    replicas,
                });
                servers::run_bare_server(cert.zip(key), bridge).await
            }
            Scenario::Ingest { lifecycle } => ingest::run(&settings, lifecycle).await,
            Scenario::Forward { backlog } => forward::run(&settings, backlog).await,
            Scenario::Latency { rates } => forward::latency(&settings, &rates).await,
            Scenario::Steady { soak } => steady::run(&settings, soak).await,
            Scenario::Backlog { notifications } => backlog::run(notifications).await,
            Scenario::Backup { notifications } => backup::run(notifications).await,
            Scenario::Jetstream { relay: false, .. } => jetstream::run(&settings).await,
            Scenario::Jetstream {
                relay: true,
                backlog,
                setups,
            } => jetstream_relay::run(&settings, backlog, &setups).await,
            Scenario::All => {
                ingest::run(&settings, false).await;
                forward::run(&settings, 20_000).await;
                steady::run(&settings, false).await;
                backlog::run(100_000).await;
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

/// The spool a relay under measurement runs on.
#[derive(Clone)]
enum Backend {
    Sled,
    /// The servers of a loopback cluster and the stream's replicas.
    Jetstream {
        servers: Vec<String>,
        replicas: usize,
    },
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

    /// A durable relay's config on `backend`; `name` names its spool (and
    /// its JetStream prefix, so relays on one cluster keep apart).
    fn relay_config(&self, name: &str, backend: &Backend, subscriptions: &str) -> PathBuf {
        match backend {
            Backend::Sled => self.config(name, true, subscriptions),
            Backend::Jetstream { servers, replicas } => {
                let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
                let spool = format!(
                    "backend = \"jetstream\"\n[spool.jetstream]\nservers = [{}]\nreplicas = {replicas}\nprefix = \"{name}\"\nindex_path = \"{}\"\n",
                    servers.join(", "),
                    self.dir.path().join(format!("{name}-index")).display()
                );
                // JetStream refuses an attempt longer than its leases allow.
                let longest = webhook_relay::config::JETSTREAM_LONGEST_ATTEMPT.as_secs();
                let subscriptions = subscriptions.replace("\"120s\"", &format!("\"{longest}s\""));
                self.config_with(name, true, (&spool, ""), &subscriptions)
            }
        }
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
