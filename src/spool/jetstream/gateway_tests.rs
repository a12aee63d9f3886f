//! The places where webhook gateways that scaled out on a broker lost or
//! doubled messages, tried on this backend (the third beside the ack wait,
//! which `consumers_tests` covers):
//! - retries of one notification to two destinations due at the same
//!   moment: each is its own delivery, neither drops the other;
//! - the broker restarted under a worker waiting for work: the worker goes
//!   on by itself and gets what is stored after.

use std::collections::BTreeSet;
use std::time::Duration;

use super::loopback_cluster::NatsCluster;
use super::test_server::nats_server;
use super::JetStreamSpool;
use crate::clock::Clock;
use crate::config::{JetstreamConfig, SpoolBackend, SpoolConfig};
use crate::delivery::{Outcome, Schedule};
use crate::spool::contract::support::{notification, ok, received, routes};
use crate::spool::{Backend, Lease, Spool, Stored};

async fn open_on(nats: &NatsCluster, index: &std::path::Path, subscriptions: &[&str]) -> Spool {
    let config = SpoolConfig {
        backend: SpoolBackend::Jetstream,
        jetstream: JetstreamConfig {
            servers: nats.urls(),
            replicas: 1,
            prefix: "gw".into(),
            index_path: index.to_owned(),
            ..JetstreamConfig::default()
        },
        ..SpoolConfig::default()
    };
    let backend = JetStreamSpool::open(&config, routes(subscriptions), Clock::system())
        .await
        .unwrap();
    Spool::over(Backend::Jetstream(backend))
}

/// Leases of `subscription` until `want` are held (a bounded wait).
async fn lease(spool: &Spool, subscription: &str, want: usize) -> Vec<Lease> {
    let mut held = Vec::new();
    while held.len() < want {
        let more = tokio::time::timeout(Duration::from_secs(10), spool.lease(subscription, 8))
            .await
            .unwrap_or_else(|_| panic!("{subscription}: {} of {want} due", held.len()))
            .unwrap();
        held.extend(more);
    }
    held
}

/// Records a failed attempt with its retry `wait` after `now`.
async fn fail(spool: &Spool, lease: &Lease, now: i64, wait: Duration) {
    let schedule = Schedule::try_new(vec![wait], 0.0).unwrap();
    let mut delivery = lease.delivery().clone();
    delivery.start(now).unwrap();
    delivery
        .finish(&schedule, Outcome::Timeout, now + 1, 0.0)
        .unwrap();
    spool.complete(lease, &delivery).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_to_two_destinations_due_at_once_are_both_made() {
    let Some(binary) = nats_server("the gateway tests") else {
        return;
    };
    let nats = NatsCluster::start(&binary, 1).await;
    let index = tempfile::tempdir().unwrap();
    let spool = open_on(&nats, index.path(), &["billing", "erp"]).await;
    let now = Clock::system().now_ms();
    let mut ids = BTreeSet::new();
    for key in ["a", "b", "c"] {
        let Stored::New(id) = spool.store(received(now), notification(key)).await.unwrap() else {
            panic!("new");
        };
        ids.insert(id);
    }
    // Every first attempt fails at the same moment with the same wait, so
    // each notification's two retries are due at the same millisecond.
    for subscription in ["billing", "erp"] {
        for held in lease(&spool, subscription, 3).await {
            fail(&spool, &held, now, Duration::from_millis(300)).await;
        }
    }
    for subscription in ["billing", "erp"] {
        let retried = lease(&spool, subscription, 3).await;
        let got: BTreeSet<_> = retried.iter().map(Lease::id).collect();
        assert_eq!(got, ids, "{subscription}'s retries");
        for held in &retried {
            assert_eq!(
                held.delivery().attempts.len(),
                1,
                "a retry, not a first attempt"
            );
            crate::spool::contract::support::attempt(&spool, held, ok(), now + 400).await;
        }
    }
    spool.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_across_a_restart_of_nats_gets_what_is_stored_after() {
    let Some(binary) = nats_server("the gateway tests") else {
        return;
    };
    let mut nats = NatsCluster::start(&binary, 1).await;
    let index = tempfile::tempdir().unwrap();
    let spool = open_on(&nats, index.path(), &["erp"]).await;
    // As the forwarder does: an error is heard and the lease asked again.
    let waiting = tokio::spawn({
        let spool = spool.clone();
        async move {
            loop {
                match spool.lease("erp", 8).await {
                    Ok(leases) => return leases,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    });
    nats.kill(0);
    nats.restart(0);
    let now = Clock::system().now_ms();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let id = loop {
        match spool.store(received(now), notification("after")).await {
            Ok(Stored::New(id) | Stored::Duplicate(id)) => break id,
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leased = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting worker is not stalled")
        .unwrap();
    assert_eq!(leased.iter().map(Lease::id).collect::<Vec<_>>(), [id]);
    drop(leased);
    spool.close().await.unwrap();
}
