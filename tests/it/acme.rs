//! ACME against Pebble (the Debian `pebble` package), all on loopback:
//! the built relay orders a certificate for `localhost` by TLS-ALPN-01 on
//! its ingress listener or by HTTP-01 on a listener of its own, a client
//! trusting only Pebble's root then posts a notification; a restart reuses
//! the stored account and certificate; a short validity makes it renew
//! while a client posts; Pebble stopped at renewal leaves the old
//! certificate serving.
//!
//! Without `pebble` on the PATH these tests print a notice and pass;
//! `REQUIRE_PEBBLE=1` (CI) makes its absence a failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::process::RelayProcess;

/// Whether Pebble can run here; without it, a notice (or a failure under
/// `REQUIRE_PEBBLE=1`).
pub(crate) fn pebble_present(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("pebble").is_file()));
    if !found {
        assert!(
            std::env::var("REQUIRE_PEBBLE").as_deref() != Ok("1"),
            "REQUIRE_PEBBLE=1 but no pebble on the PATH (apt-get install pebble)"
        );
        eprintln!("NOTICE: {test} skipped: no pebble on the PATH (apt-get install pebble)");
    }
    found
}

/// A loopback port free a moment ago (for the programs that must be told
/// each other's ports before either starts).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A Pebble on loopback, validating challenges on `tls_port`/`http_port`.
pub(crate) struct Pebble {
    child: Child,
    dir: PathBuf,
    listen: u16,
    management: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Pebble {
    /// Pebble's files (its listener's CA, certificate and key, its config)
    /// in `dir`; nothing runs yet.
    pub(crate) fn prepare(
        dir: &Path,
        tls_port: u16,
        http_port: u16,
        validity: Option<Duration>,
    ) -> Pebble {
        std::fs::create_dir_all(dir).unwrap();
        let ca = TestCa::new("pebble listener test CA");
        std::fs::write(dir.join("ca.pem"), &ca.ca_pem).unwrap();
        std::fs::write(dir.join("cert.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &ca.key_pem).unwrap();
        let (listen, management) = (free_port(), free_port());
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(validity) = validity {
            pebble["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config = serde_json::json!({ "pebble": pebble });
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        Pebble {
            child: Command::new("true").spawn().unwrap(),
            dir: dir.to_owned(),
            listen,
            management,
            log: Arc::default(),
        }
    }

    /// Starts it and waits until its directory answers.
    pub(crate) async fn start(&mut self) {
        self.start_with(&[]).await
    }

    /// The same, with more of Pebble's environment variables.
    async fn start_with(&mut self, env: &[(&str, &str)]) {
        let mut child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            // No random validation delay; every order validates afresh; no
            // nonce refused (Pebble refuses 5 % by default, and each refused
            // request it logs again, which would blur the count of orders).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("pebble starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let log = self.log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line);
            }
        });
        self.child = child;
        let client = self.client();
        let url = self.directory();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while client.get(&url).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pebble did not answer within 20 s: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    pub(crate) fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen)
    }

    pub(crate) fn listener_ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A client of Pebble's own listeners.
    fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(self.listener_ca()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    /// The root its certificates chain to, written to a file.
    pub(crate) async fn root(&self) -> PathBuf {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        let pem = self
            .client()
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let path = self.dir.join("issuing-root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// New-order requests so far (Pebble logs each one it receives).
    pub(crate) fn orders(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains("POST /order-plz"))
            .count()
    }
}

/// The relay's config: the test sources, an admin listener, ACME on Pebble.
pub(crate) fn relay_config(dir: &Path, port: u16, pebble: &Pebble, acme: &str) -> PathBuf {
    relay_config_from(&base_config(dir), dir, port, pebble, acme)
}

/// [`relay_config`] from another base (a spool of the test's own).
pub(crate) fn relay_config_from(
    base: &str,
    dir: &Path,
    port: u16,
    pebble: &Pebble,
    acme: &str,
) -> PathBuf {
    let base = base.replace("self_signed = true\n", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let extra = format!(
        "{}\n[server.acme]\ndomains = [\"localhost\"]\ncontact = [\"ops@example.com\"]\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\n{acme}",
        crate::admin::admin_section(),
        pebble.directory(),
        pebble.listener_ca().display()
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, format!("{base}{extra}")).unwrap();
    path
}

pub(crate) async fn readyz(admin: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(format!("{admin}/readyz"))
        .send()
        .await
        .unwrap();
    answer(response).await
}

pub(crate) async fn wait_ready(admin: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, body) = readyz(admin).await;
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready within {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that trusts only `root` and finds `localhost` at `addr`.
pub(crate) fn client_trusting(root: &Path, addr: SocketAddr) -> reqwest::Client {
    let pem = std::fs::read(root).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve("localhost", addr)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub(crate) async fn post(client: &reqwest::Client, addr: SocketAddr, hook_id: &str) -> u16 {
    client
        .post(format!(
            "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
            addr.port()
        ))
        .header("content-type", "application/json")
        .body(tusfacturas(hook_id, "facturacion.emitido", 1))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or_else(|e| panic!("post {hook_id}: {e:?}"))
}

/// The serial number of the certificate the relay serves for `localhost`.
pub(crate) async fn served_serial(root: &Path, addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let tls = tls_connect_to(addr, root, b"http/1.1").await?;
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| std::io::Error::other("no certificate"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(std::io::Error::other)?;
    Ok(parsed.raw_serial().to_vec())
}

/// `webhook-relay cert status --json`.
pub(crate) fn cert_status(config: &Path) -> serde_json::Value {
    let output = relay_cli(&["cert", "status"], config, &["--json"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The relay's operational events of `event_type` received by `alerts`.
fn events_of(alerts: &Target, event_type: &str) -> Vec<serde_json::Value> {
    alerts
        .received()
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter(|body| body["type"] == event_type)
        .collect()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Issuance, readiness, a post, the stored files, then a restart that
/// serves the stored certificate without ordering again.
async fn issues_serves_and_restarts(challenge: &str) {
    init();
    let started = tokio::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (relay_port, http_port) = (free_port(), free_port());
    let mut pebble = Pebble::prepare(&dir.path().join("pebble"), relay_port, http_port, None);
    let acme = format!("challenge = \"{challenge}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n");
    let config = relay_config(dir.path(), relay_port, &pebble, &acme);

    // Pebble is not up yet: the relay runs, but is not ready and serves
    // no certificate.
    let relay = RelayProcess::spawn(&config).await;
    let admin = relay.admin_url();
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reasons"]
            .to_string()
            .contains("no certificate yet for localhost"),
        "{body}"
    );
    let listener_ca = pebble.listener_ca();
    assert!(
        tls_connect_to(relay.addr, &listener_ca, b"http/1.1")
            .await
            .is_err(),
        "a handshake before the first certificate must fail"
    );

    assert_eq!(cert_status(&config)["certificate"], serde_json::Value::Null);

    pebble.start().await;
    wait_ready(&admin, Duration::from_secs(60)).await;
    let issued = started.elapsed();
    let status = cert_status(&config);
    assert_eq!(
        status["certificate"]["domains"],
        serde_json::json!(["localhost"]),
        "{status}"
    );
    assert_eq!(status["certificate"]["state"], "valid", "{status}");
    assert!(
        status["certificate"]["issuer"]
            .as_str()
            .unwrap()
            .contains("Pebble"),
        "{status}"
    );
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("webhook_relay_certificate_expiry_timestamp_seconds{domain=\"localhost\"}"),
        "{metrics}"
    );
    let root = pebble.root().await;
    let client = client_trusting(&root, relay.addr);
    assert_eq!(post(&client, relay.addr, "acme-1").await, 200);
    let serial = served_serial(&root, relay.addr).await.unwrap();
    let state = dir.path().join("acme");
    for file in ["account.json", "certificate.pem", "certificate.key"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&state), 0o700);
    // The CA's validation handshakes (ALPN acme-tls/1) and its HTTP-01
    // requests are not errors of the relay's.
    assert_eq!(relay.count_level("ERROR"), 0, "{}", relay.log_tail(30));
    // One order, or more where one failed validation and was made again:
    // what this test proves is that the restart makes none.
    let orders = pebble.orders();
    assert!(orders >= 1, "{:?}", relay.logged("ACME order failed"));
    relay.sigterm().await;

    // A restart serves the stored certificate at once, ordering nothing.
    let relay = RelayProcess::spawn(&config).await;
    let admin = relay.admin_url();
    let (status, body) = readyz(&admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_serial(&root, relay.addr).await.unwrap(), serial);
    let client = client_trusting(&root, relay.addr);
    assert_eq!(post(&client, relay.addr, "acme-2").await, 200);
    assert_eq!(pebble.orders(), orders, "the restart ordered again");
    assert!(relay.logged("ordering a certificate").is_empty());
    relay.sigterm().await;
    pebble.stop().await;
    eprintln!(
        "acme {challenge}: issued {issued:?} after start (Pebble started after the relay), {orders} order(s), whole test {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_serves_and_a_restart_reuses_the_certificate() {
    if pebble_present("tls_alpn_01_issues_serves_and_a_restart_reuses_the_certificate") {
        issues_serves_and_restarts("tls-alpn-01").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues_serves_and_a_restart_reuses_the_certificate() {
    if pebble_present("http_01_issues_serves_and_a_restart_reuses_the_certificate") {
        issues_serves_and_restarts("http-01").await;
    }
}

/// With an 18 s validity the relay renews 6 s before expiry while two clients post in a loop (one opening
/// a connection per request, so handshakes meet the swap): every request
/// is answered 200. Then Pebble stops: the next renewal fails, the
/// certificate in hand keeps serving, `relay.certificate.failing` goes out
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_under_load_and_keeps_serving_when_the_ca_is_gone() {
    if !pebble_present("renews_under_load_and_keeps_serving_when_the_ca_is_gone") {
        return;
    }
    init();
    let started = tokio::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let relay_port = free_port();
    let validity = Duration::from_secs(18);
    let mut pebble = Pebble::prepare(
        &dir.path().join("pebble"),
        relay_port,
        free_port(),
        Some(validity),
    );
    pebble.start().await;
    let alerts = Target::start(vec![]).await;
    let config = relay_config(
        dir.path(),
        relay_port,
        &pebble,
        &subscription("alerts", &alerts.url(), "events = [\"relay.*\"]"),
    );
    let relay = RelayProcess::spawn(&config).await;
    wait_ready(&relay.admin_url(), Duration::from_secs(60)).await;
    let issued = started.elapsed();
    let root = pebble.root().await;
    let first = served_serial(&root, relay.addr).await.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for (name, pooled) in [("pooled", true), ("fresh", false)] {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_pem(&std::fs::read(&root).unwrap()).unwrap(),
            ])
            .resolve("localhost", relay.addr)
            .no_proxy()
            .timeout(Duration::from_secs(10));
        if !pooled {
            builder = builder.pool_max_idle_per_host(0);
        }
        let client = builder.build().unwrap();
        let (stop, answers, addr) = (stop.clone(), answers.clone(), relay.addr);
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = post(&client, addr, &format!("{name}-{i}")).await;
                answers.lock().unwrap().push(status);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    let deadline = tokio::time::Instant::now() + validity * 2;
    let second = loop {
        let serial = served_serial(&root, relay.addr).await.unwrap();
        if serial != first {
            break serial;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal within {:?}: {}",
            validity * 2,
            relay.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let renewed = started.elapsed();
    assert_eq!(
        relay.logged("ordering a certificate").len(),
        2,
        "{:?}",
        relay.logged("ACME")
    );
    assert!(
        alerts
            .wait_until(Duration::from_secs(10), |t| {
                events_of(t, "relay.certificate.renewed").len() == 2
            })
            .await,
        "relay.certificate.renewed for the first certificate and the renewal"
    );

    // The CA goes away before the next renewal: it fails, and the
    // certificate in hand keeps serving.
    pebble.stop().await;
    eventually(validity * 2, "a failed renewal", || {
        !relay.logged("ACME order failed").is_empty()
    })
    .await;
    assert_eq!(served_serial(&root, relay.addr).await.unwrap(), second);
    let client = client_trusting(&root, relay.addr);
    assert_eq!(post(&client, relay.addr, "after-failure").await, 200);
    // Told once per spell of failures, however many retries follow.
    eventually(Duration::from_secs(10), "three failed orders", || {
        relay.logged("ACME order failed").len() >= 3
    })
    .await;
    assert!(
        alerts
            .wait_until(Duration::from_secs(10), |t| {
                !events_of(t, "relay.certificate.failing").is_empty()
            })
            .await,
        "relay.certificate.failing"
    );
    let failing = events_of(&alerts, "relay.certificate.failing");
    assert_eq!(failing.len(), 1, "{failing:?}");
    assert_eq!(failing[0]["domains"], serde_json::json!(["localhost"]));
    assert!(failing[0]["serving_until"].is_string(), "{}", failing[0]);
    assert_eq!(events_of(&alerts, "relay.certificate.renewed").len(), 2);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let answers = answers.lock().unwrap().clone();
    assert!(answers.len() > 50, "only {} requests", answers.len());
    assert!(answers.iter().all(|&s| s == 200), "{answers:?}");
    relay.sigterm().await;
    eprintln!(
        "acme renewal: issued {issued:?}, renewed {renewed:?}, failure seen {:?}, {} posts all 200",
        started.elapsed(),
        answers.len()
    );
}

/// Pebble refusing 30 % of the nonces (`badNonce`): the client retries
/// each request three times and an order that still fails is ordered
/// again after a back-off, so the relay ends up with its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_gets_through_a_ca_refusing_requests() {
    if !pebble_present("issuance_gets_through_a_ca_refusing_requests") {
        return;
    }
    init();
    let started = tokio::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let relay_port = free_port();
    let mut pebble = Pebble::prepare(&dir.path().join("pebble"), relay_port, free_port(), None);
    pebble.start_with(&[("PEBBLE_WFE_NONCEREJECT", "30")]).await;
    assert!(
        pebble
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("Configured to reject 30% of good nonces")),
        "Pebble took PEBBLE_WFE_NONCEREJECT"
    );
    let config = relay_config(dir.path(), relay_port, &pebble, "");
    let relay = RelayProcess::spawn(&config).await;
    wait_ready(&relay.admin_url(), Duration::from_secs(60)).await;
    let root = pebble.root().await;
    let client = client_trusting(&root, relay.addr);
    assert_eq!(post(&client, relay.addr, "refused-then-issued").await, 200);
    eprintln!(
        "acme with refusals: issued in {:?} after {} failed orders",
        started.elapsed(),
        relay.logged("ACME order failed").len()
    );
    relay.sigterm().await;
}
