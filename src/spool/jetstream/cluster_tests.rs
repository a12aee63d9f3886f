//! The spool on a three-node cluster with three copies (R3), shared by two
//! relays, while nodes and relays go away: the stream's leader SIGKILLed
//! and brought back, a relay crashed holding leases and opened again.
//! Nothing acknowledged is lost, a resend to either relay is the same
//! notification, and every notification is delivered once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::loopback_cluster::NatsCluster;
use super::test_server::nats_server;
use super::{JetStreamSpool, Names};
use crate::clock::Clock;
use crate::config::{JetstreamConfig, SpoolBackend, SpoolConfig};
use crate::spool::contract::support::{attempt, notification, ok, received, routes};
use crate::spool::{Backend, NotificationId, Spool, Stored};

const PREFIX: &str = "k";

fn config(cluster: &NatsCluster, index: &std::path::Path) -> SpoolConfig {
    SpoolConfig {
        backend: SpoolBackend::Jetstream,
        jetstream: JetstreamConfig {
            servers: cluster.urls(),
            replicas: 3,
            prefix: PREFIX.into(),
            index_path: index.to_owned(),
            ..JetstreamConfig::default()
        },
        ..SpoolConfig::default()
    }
}

/// A relay's spool, opened as soon as the cluster lets it (a bounded wait).
async fn open(cluster: &NatsCluster, index: &std::path::Path) -> Spool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match JetStreamSpool::open(&config(cluster, index), routes(&["erp"]), Clock::system()).await
        {
            Ok(backend) => return Spool::over(Backend::Jetstream(backend)),
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A provider's post: sent again on every refusal (a 503) until stored.
async fn post(spool: &Spool, key: &str, at: i64) -> NotificationId {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match spool.store(received(at), notification(key)).await {
            Ok(Stored::New(id) | Stored::Duplicate(id)) => return id,
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "{key}: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Twenty posts shared by the relays, every fourth also sent to the other
/// relay (the same notification both times).
async fn posts(
    relays: [&Spool; 2],
    round: &str,
    at: i64,
    acked: &mut BTreeMap<String, NotificationId>,
) {
    for i in 0..20 {
        let key = format!("{round}-{i}");
        let id = post(relays[i % 2], &key, at).await;
        if i % 4 == 0 {
            let again = post(relays[(i + 1) % 2], &key, at).await;
            assert_eq!(again, id, "{key}: a resend to the other relay");
        }
        assert!(acked.insert(key, id).is_none());
    }
}

/// The stream's leader now, as the cluster says.
async fn leader(cluster: &NatsCluster) -> usize {
    let servers: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .iter()
        .map(|url| url.parse().unwrap())
        .collect();
    let js = async_nats::jetstream::new(async_nats::connect(servers).await.unwrap());
    let mut stream = js.get_stream(Names::new(PREFIX).stream()).await.unwrap();
    let info = stream.info().await.unwrap();
    let name = info.cluster.as_ref().and_then(|c| c.leader.clone());
    cluster.node_named(&name.expect("the stream has a leader"))
}

/// Leases from `relay` and delivers until `done` says so, each delivered
/// id written down.
async fn deliver(relay: Spool, delivered: Arc<Mutex<Vec<NotificationId>>>, want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered.lock().unwrap().len() < want {
        assert!(tokio::time::Instant::now() < deadline, "deliveries stalled");
        let leased = tokio::time::timeout(Duration::from_millis(500), relay.lease("erp", 8)).await;
        let Ok(Ok(leases)) = leased else {
            continue; // nothing due here now (the other relay may hold it), or an error to retry
        };
        for lease in leases {
            attempt(&relay, &lease, ok(), Clock::system().now_ms()).await;
            delivered.lock().unwrap().push(lease.id());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_leader_and_a_relay_go_away() {
    let Some(binary) = nats_server("the JetStream cluster test") else {
        return;
    };
    let mut cluster = NatsCluster::start(&binary, 3).await;
    let indexes = tempfile::tempdir().unwrap();
    let a = open(&cluster, &indexes.path().join("a")).await;
    let b = open(&cluster, &indexes.path().join("b")).await;
    let at = Clock::system().now_ms();
    let mut acked = BTreeMap::new();

    posts([&a, &b], "before", at, &mut acked).await;
    let down = leader(&cluster).await;
    cluster.kill(down);
    posts([&a, &b], "leader-down", at, &mut acked).await;
    cluster.restart(down);
    posts([&a, &b], "back", at, &mut acked).await;

    // Relay a crashes holding leases; opened again, it gives them back.
    // As the forwarder does, a lease that errs (the connection settling
    // after the node's return) is asked again.
    let held = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match a.lease("erp", 5).await {
                Ok(held) => return held,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("deliveries are due");
    assert!(!held.is_empty());
    match &a.backend {
        Backend::Jetstream(backend) => backend.crash(),
        Backend::Sled(_) => unreachable!(),
    }
    drop(held);
    drop(a);
    let a = open(&cluster, &indexes.path().join("a")).await;

    // Both relays see every acknowledged notification.
    for (key, id) in &acked {
        for relay in [&a, &b] {
            // Another relay's writes reach this one's index within moments.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let record = loop {
                match relay.notification(*id).await.unwrap() {
                    Some(record) => break record,
                    None => assert!(tokio::time::Instant::now() < deadline, "{key} lost"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(record.meta.dedup_key, *key);
        }
    }
    // Every one is delivered, once, by one relay or the other.
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let want = acked.len();
    let (one, two) = tokio::join!(
        tokio::spawn(deliver(a.clone(), delivered.clone(), want)),
        tokio::spawn(deliver(b.clone(), delivered.clone(), want)),
    );
    one.unwrap();
    two.unwrap();
    let delivered = delivered.lock().unwrap().clone();
    let unique: BTreeSet<NotificationId> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "a delivery sent twice");
    assert_eq!(unique, acked.values().copied().collect::<BTreeSet<_>>());
    a.close().await.unwrap();
    b.close().await.unwrap();
}
