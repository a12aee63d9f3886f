//! NATS gone entirely, under one relay: each store answers an error (the
//! provider's 503) within the store timeout, never an acknowledgement of
//! what JetStream did not take; the relay says it is not alive; when the
//! server comes back on its store the relay goes on by itself, with
//! nothing acknowledged lost and the dedup of what came before intact.
//! A shared-state bucket is made only where it is missing, never in answer
//! to NATS being gone.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::loopback_cluster::NatsCluster;
use super::provision::bucket_not_found;
use super::test_server::{nats_server, NatsServer};
use super::JetStreamSpool;
use crate::clock::Clock;
use crate::config::{JetstreamConfig, SpoolBackend, SpoolConfig};
use crate::spool::contract::support::{notification, received, routes};
use crate::spool::{Backend, Spool, Stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_fail_while_nats_is_down_and_go_on_by_themselves_when_it_returns() {
    let Some(binary) = nats_server("the NATS-down test") else {
        return;
    };
    let mut nats = NatsCluster::start(&binary, 1).await;
    let index = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        backend: SpoolBackend::Jetstream,
        jetstream: JetstreamConfig {
            servers: nats.urls(),
            replicas: 1,
            prefix: "down".into(),
            index_path: index.path().join("index"),
            ..JetstreamConfig::default()
        },
        ..SpoolConfig::default()
    };
    let backend = JetStreamSpool::open(&config, routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let spool = Spool::over(Backend::Jetstream(backend));
    let at = Clock::system().now_ms();
    let Stored::New(before) = spool.store(received(at), notification("a")).await.unwrap() else {
        panic!("a first store is new");
    };

    nats.kill(0);
    let started = tokio::time::Instant::now();
    let refused = spool.store(received(at), notification("b")).await;
    assert!(refused.is_err(), "stored with NATS down: {refused:?}");
    let store_timeout = config.jetstream.store_timeout.0;
    assert!(
        started.elapsed() < store_timeout + Duration::from_secs(2),
        "the refusal took {:?}",
        started.elapsed()
    );
    // Not writable, and why; yet the relay's own part is alive, so a
    // watchdog does not restart every relay for an outage of NATS.
    let health = spool.health();
    assert!(!health.writable, "{health:?}");
    assert!(
        health
            .condition
            .as_deref()
            .unwrap_or("")
            .contains("JetStream"),
        "{health:?}"
    );
    assert!(spool.alive(Duration::from_secs(1)).await);

    nats.restart(0);
    // As a provider does: post again until taken (a bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        match spool.store(received(at), notification("b")).await {
            Ok(Stored::New(id)) => break id,
            Ok(Stored::Duplicate(id)) => break id, // a refused store that landed later
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(spool.alive(Duration::from_secs(5)).await);
    assert!(spool.health().writable, "{:?}", spool.health());
    assert_eq!(
        spool.store(received(at), notification("a")).await.unwrap(),
        Stored::Duplicate(before),
        "the dedup of what came before NATS went"
    );
    for id in [before, after] {
        assert!(spool.notification(id).await.unwrap().is_some());
    }
    let mut leased = Vec::new();
    while leased.len() < 2 {
        let more = tokio::time::timeout(Duration::from_secs(10), spool.lease("erp", 8))
            .await
            .expect("both are due")
            .unwrap();
        leased.extend(more);
    }
    let mut ids: Vec<_> = leased.iter().map(|l| l.id()).collect();
    ids.sort();
    assert_eq!(ids, [before, after]);
    drop(leased);
    spool.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_told_apart_from_nats_being_gone() {
    let Some(binary) = nats_server("the missing-bucket test") else {
        return;
    };
    let server = NatsServer::start(&binary, "");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(client);
    let missing = js.get_key_value("missing").await.unwrap_err();
    assert!(bucket_not_found(&missing), "{missing}");
    let config = kv::Config {
        bucket: "there".into(),
        ..Default::default()
    };
    js.create_key_value(config).await.unwrap();
    js.get_key_value("there").await.unwrap();

    drop(server);
    for bucket in ["missing", "there"] {
        let gone = js.get_key_value(bucket).await.unwrap_err();
        assert!(!bucket_not_found(&gone), "{bucket}: {gone}");
    }
}
