//! The JetStream backend against real nats-server processes
//! (`test_server`): provisioning, the version gate, and the refusal of
//! settings that break a guarantee. Each test starts its own server and
//! skips with a notice when there is none (see `test_server`).

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::connect::parse_version;
use super::durability::SyncSetting;
use super::provision::{guarantee_problems, spool_stream_config};
use super::test_server::{nats_server, old_nats_server, NatsServer};
use super::{JetStreamError, Names, Provisioned};
use crate::clock::Clock;
use crate::config::{Durability, JetstreamConfig, SpoolBackend, SpoolConfig};

/// A spool's settings on `server` under `prefix`, with `replicas` copies.
fn config(server: &NatsServer, prefix: &str, replicas: u8) -> SpoolConfig {
    SpoolConfig {
        backend: SpoolBackend::Jetstream,
        jetstream: JetstreamConfig {
            servers: vec![server.url().to_owned()],
            replicas,
            prefix: prefix.to_owned(),
            monitor_urls: vec![server.monitor_url().to_owned()],
            ..JetstreamConfig::default()
        },
        ..SpoolConfig::default()
    }
}

/// A plain JetStream client of `server`, to look or to set things up.
async fn raw(server: &NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(server.url()).await.unwrap())
}

#[tokio::test]
async fn provisioning_is_idempotent_and_reports_what_a_200_means() {
    let Some(binary) = nats_server("provisioning_is_idempotent") else {
        return;
    };
    let server = NatsServer::start(&binary, "");
    let config = config(&server, "t1", 1);
    let first = Provisioned::open(&config, Clock::system()).await.unwrap();
    // Again, and twice at once: the same stream, bucket and identity.
    let again = Provisioned::open(&config, Clock::system()).await.unwrap();
    let (a, b) = tokio::join!(
        Provisioned::open(&config, Clock::system()),
        Provisioned::open(&config, Clock::system())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    for other in [&again, &a, &b] {
        assert_eq!(other.identity(), first.identity());
    }

    let js = first.context();
    assert_eq!(first.names().stream(), "t1_spool");
    let mut spool = js.get_stream("t1_spool").await.unwrap();
    let info = spool.info().await.unwrap();
    assert_eq!(info.config.storage, stream::StorageType::File);
    assert_eq!(info.config.max_messages_per_subject, 1);
    assert_eq!(info.config.subjects, ["t1.>"]);
    assert!(info.config.allow_direct);
    // The identity, once; every probe purged.
    assert_eq!(info.state.messages, 1, "{:?}", info.state);
    let locks = js
        .get_stream(format!("KV_{}", first.names().locks()))
        .await
        .unwrap();
    assert_eq!(locks.cached_info().config.max_age, Duration::from_secs(15));

    // R1 under the default sync_interval: weaker than asked (quorum).
    let report = first.durability();
    assert_eq!(report.replicas, 1);
    assert_eq!(report.sync, SyncSetting::Interval(Duration::from_secs(120)));
    assert!(report.promise.contains("weaker than sled"), "{report:?}");
    assert!(
        report.shortfall.as_deref().unwrap().contains("quorum"),
        "{report:?}"
    );
    for spool in [first, again, a, b] {
        spool.close().await.unwrap();
    }
}

#[tokio::test]
async fn fsync_durability_is_verified_on_a_server_that_syncs_always() {
    let Some(binary) = nats_server("fsync_durability_is_verified") else {
        return;
    };
    let server = NatsServer::start(&binary, "sync_interval: always");
    let mut config = config(&server, "t2", 1);
    config.jetstream.durability = Durability::Fsync;
    let spool = Provisioned::open(&config, Clock::system()).await.unwrap();
    let report = spool.durability();
    assert_eq!(report.sync, SyncSetting::Always);
    assert!(report.promise.contains("sled's promise"), "{report:?}");
    assert_eq!(report.shortfall, None);

    // Without the monitoring URLs it cannot be verified, and says so.
    config.jetstream.monitor_urls.clear();
    let blind = Provisioned::open(&config, Clock::system()).await.unwrap();
    let shortfall = blind.durability().shortfall.clone().unwrap();
    assert!(shortfall.contains("cannot be verified"), "{shortfall}");
}

#[tokio::test]
async fn a_server_older_than_2_11_is_refused_before_anything_is_made() {
    let Some(binary) = old_nats_server("a_server_older_than_2_11_is_refused") else {
        return;
    };
    let server = NatsServer::start(&binary, "");
    let error = Provisioned::open(&config(&server, "t3", 1), Clock::system())
        .await
        .err()
        .expect("an old server must be refused");
    assert!(matches!(error, JetStreamError::TooOld { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("2.10"), "{message}");
    assert!(message.contains("older than 2.11.0"), "{message}");
    assert!(message.contains("upgrade nats-server"), "{message}");
    let js = raw(&server).await;
    assert!(js.get_stream("t3_spool").await.is_err(), "nothing is made");
}

#[tokio::test]
async fn a_stream_that_would_break_a_guarantee_is_refused_with_what_to_do() {
    let Some(binary) = nats_server("a_stream_that_would_break_a_guarantee") else {
        return;
    };
    let server = NatsServer::start(&binary, "");
    let js = raw(&server).await;
    // Made by hand beforehand: in memory, and with async persistence.
    js.create_stream(stream::Config {
        storage: stream::StorageType::Memory,
        ..spool_stream_config(&Names::new("mem"), 1)
    })
    .await
    .unwrap();
    js.create_stream(stream::Config {
        persist_mode: Some(stream::PersistenceMode::Async),
        ..spool_stream_config(&Names::new("async"), 1)
    })
    .await
    .unwrap();
    for (prefix, says) in [("mem", "in memory"), ("async", "persist_mode is async")] {
        let error = Provisioned::open(&config(&server, prefix, 1), Clock::system())
            .await
            .err()
            .expect("an unsafe stream must be refused");
        assert!(matches!(error, JetStreamError::Unsafe { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains(says), "{message}");
        assert!(message.contains(&format!("{prefix}_spool")), "{message}");
    }
}

#[tokio::test]
async fn more_replicas_than_servers_are_refused_with_what_to_do() {
    let Some(binary) = nats_server("more_replicas_than_servers_are_refused") else {
        return;
    };
    let server = NatsServer::start(&binary, "");
    let error = Provisioned::open(&config(&server, "t4", 3), Clock::system())
        .await
        .err()
        .expect("R3 on one server must be refused");
    assert!(
        matches!(error, JetStreamError::Replicas { replicas: 3, .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("spool.jetstream.replicas"), "{message}");
}

#[tokio::test]
async fn the_token_file_authenticates_and_a_missing_one_is_named() {
    let Some(binary) = nats_server("the_token_file_authenticates") else {
        return;
    };
    let token = "relay-test-token-0123456789";
    let server = NatsServer::start_with(
        &binary,
        &format!("authorization {{ token: \"{token}\" }}"),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("nats.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut config = config(&server, "t5", 1);
    config.jetstream.token_file = Some(token_file);
    let spool = Provisioned::open(&config, Clock::system()).await.unwrap();
    spool.close().await.unwrap();

    // No token: the server refuses the connection, and the error says where.
    config.jetstream.token_file = None;
    let error = Provisioned::open(&config, Clock::system())
        .await
        .err()
        .expect("no token, no connection");
    assert!(matches!(error, JetStreamError::Connect { .. }), "{error}");
    assert!(error.to_string().contains(server.url()), "{error}");

    // A token file that is not there is named by its key and path.
    config.jetstream.token_file = Some(dir.path().join("absent.token"));
    let error = Provisioned::open(&config, Clock::system())
        .await
        .err()
        .expect("an absent token file is an error");
    let message = error.to_string();
    assert!(message.contains("spool.jetstream.token_file"), "{message}");
    assert!(message.contains("absent.token"), "{message}");
}

#[tokio::test]
async fn the_spool_opens_the_backend_named_and_says_which_servers_it_could_not_reach() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::spool::sled::contract_tests::config(dir.path());
    config.backend = SpoolBackend::Jetstream;
    config.jetstream.servers = vec!["nats://127.0.0.1:1".into()];
    config.jetstream.index_path = dir.path().join("index");
    let routes = crate::spool::Routes::new(vec![crate::spool::Route::all("erp")]);
    let error = crate::spool::Spool::open(&config, routes, Clock::system())
        .await
        .err()
        .expect("nothing listens there");
    assert!(
        matches!(error, crate::spool::SpoolError::Open { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    // Neither a sled spool nor an index was made for a spool never reached.
    assert!(!config.sled.path.exists());
    assert!(!config.jetstream.index_path.exists());
}

#[test]
fn each_setting_that_breaks_a_guarantee_is_named() {
    let names = Names::new("p");
    assert_eq!(
        guarantee_problems(&spool_stream_config(&names, 3), &names, 3),
        Vec::<String>::new()
    );
    let fewer = spool_stream_config(&names, 1);
    let problems = guarantee_problems(&fewer, &names, 3);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("1 replica(s), fewer than spool.jetstream.replicas = 3"));
    let loose = stream::Config {
        max_age: Duration::from_secs(3600),
        max_messages_per_subject: 10,
        allow_direct: false,
        ..spool_stream_config(&names, 3)
    };
    let problems = guarantee_problems(&loose, &names, 3);
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn server_versions_are_read_as_the_server_writes_them() {
    assert_eq!(parse_version("2.11.0"), Some((2, 11, 0)));
    assert_eq!(parse_version("v2.12.0-RC.1"), Some((2, 12, 0)));
    assert_eq!(parse_version("2.10.26+build"), Some((2, 10, 26)));
    assert_eq!(parse_version("2.10"), None);
    assert_eq!(parse_version(""), None);
    assert!(parse_version("2.10.26").unwrap() < super::connect::MIN_SERVER);
}
