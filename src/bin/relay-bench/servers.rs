//! The servers a bench run talks to: the relay binary and the bare hyper
//! baseline as child processes (so each one's RSS is its own), and an
//! in-process target that records when each notification arrives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// A server running as a child process.
pub struct ChildServer {
    pub child: Child,
    pub addr: std::net::SocketAddr,
}

impl ChildServer {
    /// Starts the relay binary beside this one on `config`.
    pub async fn relay(config: &Path) -> ChildServer {
        let mut command = Command::new(sibling("webhook-relay"));
        command
            .args(["serve", "--config"])
            .arg(config)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,webhook_relay::app=info");
        ChildServer::spawn(command).await
    }

    /// Starts this binary's bare hyper server (the baseline).
    pub async fn bare(cert: Option<(&Path, &Path)>) -> ChildServer {
        ChildServer::bare_publishing(cert, None).await
    }

    /// Starts the bare server; with `jetstream` (servers, replicas) it
    /// publishes each body with ack before it answers (the bridge).
    pub async fn bare_publishing(
        cert: Option<(&Path, &Path)>,
        jetstream: Option<(&[String], usize)>,
    ) -> ChildServer {
        let mut command = Command::new(sibling("relay-bench"));
        command.arg("bare-server");
        if let Some((cert, key)) = cert {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some((servers, replicas)) = jetstream {
            command
                .arg("--jetstream")
                .arg(servers.join(","))
                .arg("--replicas")
                .arg(replicas.to_string());
        }
        ChildServer::spawn(command).await
    }

    /// Both servers announce their address in a JSON log line on stderr.
    async fn spawn(mut command: Command) -> ChildServer {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("server starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            // Its last words, for the panic when it exits instead.
            let mut said = std::collections::VecDeque::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if said.len() == 5 {
                    said.pop_front();
                }
                said.push_back(line.clone());
                let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if log["fields"]["message"] == "ingress listening" {
                    if let Some(addr) = log["fields"]["addr"].as_str().and_then(|a| a.parse().ok())
                    {
                        return addr;
                    }
                }
            }
            panic!(
                "server exited before listening: {}",
                Vec::from(said).join("\n")
            );
        })
        .await
        .expect("server listens within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ChildServer { child, addr }
    }

    /// (current RSS, peak RSS) in MiB, from /proc.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = self
            .child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU time the process has used so far (user + system, all its
    /// threads), in microseconds, from /proc/<pid>/stat.
    pub fn cpu_us(&self) -> Option<u64> {
        cpu_us(self.child.id()?)
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// utime + stime of a process, in microseconds: fields 14 and 15 of
/// /proc/<pid>/stat, in clock ticks. They are counted after the command
/// name, which is in parentheses and may itself hold spaces.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After the name: state (field 3) ... utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / clock_ticks())
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, read
/// once; 100 on Linux when it cannot be read).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// CPU time used between two readings of [`cpu_us`], per unit of work,
/// in microseconds; NaN when a reading is missing or there was no work.
pub fn cpu_per(before: Option<u64>, after: Option<u64>, units: u64) -> f64 {
    match (before, after) {
        (Some(before), Some(after)) if units > 0 => {
            after.saturating_sub(before) as f64 / units as f64
        }
        _ => f64::NAN,
    }
}

pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.with_file_name(name)
}

/// The in-process target: answers 200 (once its gate is open) and records
/// when each notification first arrived, by the `hook_id` in its body.
#[derive(Clone)]
pub struct Target {
    pub addr: std::net::SocketAddr,
    state: Arc<TargetState>,
}

struct TargetState {
    gate: watch::Sender<bool>,
    first_seen: Mutex<HashMap<String, Instant>>,
    requests: Mutex<u64>,
    arrived: Notify,
}

impl Target {
    pub async fn start(open: bool) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("target binds");
        let addr = listener.local_addr().expect("target address");
        let state = Arc::new(TargetState {
            gate: watch::Sender::new(open),
            first_seen: Mutex::new(HashMap::new()),
            requests: Mutex::new(0),
            arrived: Notify::new(),
        });
        let server_state = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let body = body_of(request).await;
                                let mut gate = state.gate.subscribe();
                                let _ = gate.wait_for(|open| *open).await;
                                state.record(&body);
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::new(),
                                )))
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Target { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn open(&self) {
        self.state.gate.send_replace(true);
    }

    /// Distinct notifications received.
    pub fn distinct(&self) -> usize {
        self.state.first_seen.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.lock().map(|n| *n).unwrap_or(0)
    }

    pub fn first_seen(&self, hook_id: &str) -> Option<Instant> {
        self.state.first_seen.lock().ok()?.get(hook_id).copied()
    }

    /// Waits until `n` distinct notifications arrived, or `limit` passed.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let arrived = self.state.arrived.notified();
            if self.distinct() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.distinct() >= n;
            }
        }
    }
}

impl TargetState {
    fn record(&self, body: &Bytes) {
        let now = Instant::now();
        if let Some(id) = hook_id(body) {
            if let Ok(mut seen) = self.first_seen.lock() {
                seen.entry(id).or_insert(now);
            }
        }
        if let Ok(mut n) = self.requests.lock() {
            *n += 1;
        }
        self.arrived.notify_waiters();
    }
}

/// The `hook_id` of a TusFacturas body, without a full JSON parse.
fn hook_id(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"hook_id\": \"")? + "\"hook_id\": \"".len();
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_owned())
}

/// A request's whole body (empty when it breaks off).
async fn body_of(request: hyper::Request<hyper::body::Incoming>) -> Bytes {
    request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

/// Where the bridge publishes: one stream of its own on the bench's
/// cluster.
pub struct BridgeTarget {
    pub servers: Vec<String>,
    pub replicas: usize,
}

/// The bare baseline: hyper (+ the same rustls setup) answering 200 to any
/// request once its body is read. Same listener code path as the relay's
/// TLS, nothing else. With a [`BridgeTarget`] it is the bridge: the least
/// an HTTPS front of JetStream does, a publish of the body awaiting its
/// ack before the 200 (503 when it fails).
pub async fn run_bare_server(cert: Option<(PathBuf, PathBuf)>, bridge: Option<BridgeTarget>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bare server binds");
    let addr = listener.local_addr().expect("bare address");
    let acceptor = cert.map(|(cert, key)| {
        let cert =
            webhook_relay::ingress::tls::ReloadableCert::load(&cert, &key).expect("certificate");
        tokio_rustls::TlsAcceptor::from(
            webhook_relay::ingress::tls::server_config(cert).expect("TLS config"),
        )
    });
    let publisher = match bridge {
        Some(target) => Some(Arc::new(
            crate::jetstream::publisher_on(&target.servers, "bridge", target.replicas).await,
        )),
        None => None,
    };
    let sequence = Arc::new(std::sync::atomic::AtomicU64::new(0));
    eprintln!(
        "{}",
        serde_json::json!({"fields": {"message": "ingress listening", "addr": addr.to_string()}})
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let (publisher, sequence) = (publisher.clone(), sequence.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let (publisher, sequence) = (publisher.clone(), sequence.clone());
                async move {
                    let body = body_of(request).await;
                    let acked = match &publisher {
                        Some(js) => {
                            let n = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            match js.publish(format!("bridge.{n}"), body).await {
                                Ok(ack) => ack.await.is_ok(),
                                Err(_) => false,
                            }
                        }
                        None => true,
                    };
                    let mut response =
                        hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                    if !acked {
                        *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    response.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}
