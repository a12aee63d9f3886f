//! The spool's contract (`crate::spool::contract`) run against JetStream:
//! one nats-server per test process (started on first use, killed when
//! the process ends), and per fixture a prefix of its own (so its stream,
//! bucket and subjects are its own) and a temporary index directory; the
//! fixture deletes its stream and bucket when dropped. Without a
//! nats-server each test passes at once with a notice, unless
//! `REQUIRE_NATS=1` (see `test_server`).
//!
//! The fixture's recount is a refold: a relay with a new index folds the
//! stream from its start (`docs/design/jetstream.md`, Fixture); its check
//! is `spool check`'s (`check.rs`); its crash drops the client without
//! draining (nats-server keeps running). The whole suite runs, unchanged.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::test_server::{nats_server, NatsServer};
use super::JetStreamSpool;
use crate::clock::Clock;
use crate::config::{HumanDuration, JetstreamConfig, SpoolBackend, SpoolConfig};
use crate::spool::contract::{Fixture, Keep};
use crate::spool::{Backend, CheckReport, Counts, Routes, Spool, SpoolError};

/// The test process's nats-server; `None` (after a notice) when there is
/// none and none is required.
fn server() -> Option<&'static NatsServer> {
    static SERVER: OnceLock<Option<NatsServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            nats_server("the JetStream contract tests").map(|binary| NatsServer::start(&binary, ""))
        })
        .as_ref()
}

/// The contract tests' skip: true when no nats-server can be had.
pub(crate) fn skip_without_nats() -> bool {
    server().is_none()
}

/// One spool on the process's nats-server under a prefix of its own.
pub(crate) struct JetStreamFixture {
    url: String,
    prefix: String,
    index: tempfile::TempDir,
    /// The settings of the last open.
    keep: Cell<Keep>,
}

impl JetStreamFixture {
    pub(crate) fn new() -> JetStreamFixture {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let server = server().expect("a fixture is made only when nats-server is there");
        JetStreamFixture {
            url: server.url().to_owned(),
            prefix: format!("c{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            index: tempfile::tempdir().unwrap(),
            keep: Cell::new(Keep::default()),
        }
    }

    /// The nats-server's address.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// This fixture's settings, with a local index of its own (`name`):
    /// two relays sharing the spool differ only in it.
    pub(crate) fn config_for(&self, name: &str) -> SpoolConfig {
        let keep = self.keep.get();
        SpoolConfig {
            backend: SpoolBackend::Jetstream,
            dedup_window: HumanDuration(Duration::from_secs(60)),
            retention: HumanDuration(keep.retention),
            dead_retention: keep.dead_retention.map(HumanDuration),
            jetstream: JetstreamConfig {
                servers: vec![self.url.clone()],
                replicas: 1,
                prefix: self.prefix.clone(),
                index_path: self.index.path().join(name),
                ..JetstreamConfig::default()
            },
            ..SpoolConfig::default()
        }
    }

    /// Opens the spool as one more relay would, with its own index.
    pub(crate) async fn open_relay(
        &self,
        name: &str,
        routes: Routes,
        clock: Clock,
    ) -> Result<Spool, SpoolError> {
        let backend = JetStreamSpool::open(&self.config_for(name), routes, clock).await?;
        Ok(Spool::over(Backend::Jetstream(backend)))
    }
}

impl Fixture for JetStreamFixture {
    async fn open(&self, keep: Keep, routes: Routes, clock: Clock) -> Result<Spool, SpoolError> {
        self.keep.set(keep);
        self.open_relay("index", routes, clock).await
    }

    /// The client is dropped without draining and the fold stopped; the
    /// servers keep what they acknowledged.
    async fn crash(&self, spool: Spool) {
        match &spool.backend {
            Backend::Jetstream(backend) => backend.crash(),
            Backend::Sled(_) => panic!("a sled spool in the JetStream fixture"),
        }
    }

    /// `spool check` (`check.rs`): the stream folded into a scratch
    /// index and walked with its bodies.
    async fn check(&self) -> Result<CheckReport, SpoolError> {
        JetStreamSpool::check(&self.config_for("index"), Clock::following_tokio()).await
    }

    /// Every call is a round trip (through the bridge, under the paused
    /// clock): 8 random cases keep the properties to seconds. A deeper run
    /// sets `PROPTEST_CASES`.
    fn property_cases(&self) -> u32 {
        8
    }

    /// A refold: one more relay, with an index of its own made for this
    /// count, folds the stream from its start; what it counted.
    async fn recount(&self, spool: &Spool) -> Counts {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let clock = match &spool.backend {
            Backend::Jetstream(backend) => backend.clock,
            Backend::Sled(_) => panic!("a sled spool in the JetStream fixture"),
        };
        let name = format!("recount{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let relay = self.open_relay(&name, Routes::default(), clock).await;
        let relay = relay.expect("a relay that folds the stream from its start");
        let counts = relay.counts();
        relay.close().await.unwrap();
        counts
    }
}

impl JetStreamFixture {
    /// Deletes the fixture's stream and bucket (consumers go with the
    /// stream), on a runtime of its own: a drop cannot await.
    pub(crate) fn remove_spool(&self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let Ok(client) = async_nats::connect(url).await else {
                    return;
                };
                let context = async_nats::jetstream::new(client);
                let _ = context.delete_stream(format!("{prefix}_spool")).await;
                let _ = context.delete_key_value(format!("{prefix}_locks")).await;
            });
        });
        let _ = cleanup.join();
    }
}

impl Drop for JetStreamFixture {
    fn drop(&mut self) {
        self.remove_spool();
    }
}

crate::spool::contract::contract_tests!(JetStreamFixture::new(), unless = skip_without_nats());
