//! ACME with two relays on one JetStream spool, against Pebble: one
//! order, both serve the same certificate. Pebble validates through a
//! stand-in for a load balancer that sends the CA to the relay that did
//! *not* order, so the certificate is issued only if that relay answers
//! the challenge (TLS-ALPN-01 or HTTP-01) the other one published. A restart then
//! serves the shared certificate at once, ordering nothing.
//!
//! Needs `pebble` and `nats-server` (each test prints a notice and passes
//! without them; CI requires both).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use webhook_relay::spool::NatsCluster;

use crate::acme::*;
use crate::helpers::*;
use crate::process::RelayProcess;

type Log = Arc<Mutex<VecDeque<String>>>;

/// Accepts on `listener` and passes each connection to whichever relay
/// has not logged an order (the first one otherwise), noting where.
fn balancer(listener: TcpListener, relays: Vec<(SocketAddr, Log)>) -> Arc<Mutex<Vec<SocketAddr>>> {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let noted = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let ordered = |log: &Log| {
                log.lock()
                    .unwrap()
                    .iter()
                    .any(|line| line.contains("ordering a certificate"))
            };
            let to = relays
                .iter()
                .find(|(_, log)| !ordered(log))
                .map_or(relays[0].0, |(addr, _)| *addr);
            noted.lock().unwrap().push(to);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_jetstream_spool_order_once_by_tls_alpn_01() {
    two_relays_order_once(
        "two_relays_on_one_jetstream_spool_order_once_by_tls_alpn_01",
        "tls-alpn-01",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_jetstream_spool_order_once_by_http_01() {
    two_relays_order_once(
        "two_relays_on_one_jetstream_spool_order_once_by_http_01",
        "http-01",
    )
    .await;
}

/// Two relays, one order, the CA's validation sent to the relay that did
/// not order, the same certificate served by both and after a restart.
async fn two_relays_order_once(test: &str, challenge: &str) {
    if !pebble_present(test) {
        return;
    }
    let Some(binary) = nats_server_or_skip(test) else {
        return;
    };
    init();
    let nats = NatsCluster::start(&binary, 1).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let balancer_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let balancer_port = balancer_listener.local_addr().unwrap().port();
    // The CA validates on one port: the balancer's, for either challenge.
    let mut pebble = Pebble::prepare(
        &dirs[0].path().join("pebble"),
        balancer_port,
        balancer_port,
        None,
    );
    pebble.start().await;
    let prefix = jetstream_prefix(dirs[0].path());
    let http_ports = [free_port(), free_port()];
    let configs: Vec<_> = dirs
        .iter()
        .zip(http_ports)
        .map(|(dir, http_port)| {
            let base = base_config_on_nats(dir.path(), &nats)
                .replace(&jetstream_prefix(dir.path()), &prefix);
            let acme =
                format!("challenge = \"{challenge}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n");
            relay_config_from(&base, dir.path(), free_port(), &pebble, &acme)
        })
        .collect();

    let mut relays = Vec::new();
    for config in &configs {
        relays.push(RelayProcess::spawn(config).await);
    }
    // Where the CA's requests go: the ingress (TLS-ALPN-01) or the
    // HTTP-01 listener of each relay.
    let validated_at: Vec<SocketAddr> = match challenge {
        "http-01" => http_ports
            .iter()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
            .collect(),
        _ => relays.iter().map(|r| r.addr).collect(),
    };
    let sent = balancer(
        balancer_listener,
        validated_at
            .iter()
            .zip(&relays)
            .map(|(addr, relay)| (*addr, relay.log_handle()))
            .collect(),
    );
    for relay in &relays {
        wait_ready(&relay.admin_url(), Duration::from_secs(60)).await;
    }

    // One order, by one relay; the CA was answered by the other.
    let orderers: Vec<usize> = (0..2)
        .filter(|&i| !relays[i].logged("ordering a certificate").is_empty())
        .collect();
    let failures: Vec<_> = relays
        .iter()
        .flat_map(|r| r.logged("ACME order failed"))
        .collect();
    assert_eq!(
        orderers.len(),
        1,
        "relays that ordered: {orderers:?}; {failures:?}"
    );
    assert_eq!(pebble.orders(), 1, "{failures:?}");
    let other = 1 - orderers[0];
    let sent = sent.lock().unwrap().clone();
    assert!(
        !sent.is_empty(),
        "Pebble never validated through the balancer"
    );
    assert!(
        sent.iter().all(|addr| *addr == validated_at[other]),
        "validations went to {sent:?}; the relay that did not order is at {}",
        validated_at[other]
    );

    // Both serve the same certificate, trusted through Pebble's root.
    let root = pebble.root().await;
    let serials = [
        served_serial(&root, relays[0].addr).await.unwrap(),
        served_serial(&root, relays[1].addr).await.unwrap(),
    ];
    assert_eq!(
        serials[0], serials[1],
        "the relays serve different certificates"
    );
    for (i, relay) in relays.iter().enumerate() {
        let client = client_trusting(&root, relay.addr);
        assert_eq!(post(&client, relay.addr, &format!("shared-{i}")).await, 200);
        assert_eq!(relay.count_level("ERROR"), 0, "{}", relay.log_tail(30));
    }
    // Each host keeps a copy for `cert status`.
    for config in &configs {
        let status = cert_status(config);
        assert_eq!(
            status["certificate"]["domains"],
            serde_json::json!(["localhost"]),
            "{status}"
        );
    }

    // The relay that did not order restarts: ready at once, on the shared
    // certificate (its account and certificate files are gone: it can
    // only have them from the spool), and nothing is ordered.
    let relay = relays.remove(other);
    relay.sigterm().await;
    std::fs::remove_dir_all(dirs[other].path().join("acme")).unwrap();
    let relay = RelayProcess::spawn(&configs[other]).await;
    let (status, body) = readyz(&relay.admin_url()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_serial(&root, relay.addr).await.unwrap(), serials[0]);
    assert_eq!(pebble.orders(), 1, "the restart ordered again");
    relay.sigterm().await;
    for relay in relays {
        relay.sigterm().await;
    }
    pebble.stop().await;
}
