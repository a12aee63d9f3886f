//! The spool's contract (`crate::spool::contract`) run against JetStream:
//! one nats-server per test process (started on first use, killed when
//! the process ends), and per fixture a prefix of its own (so its stream,
//! bucket and subjects are its own) and a temporary index directory; the
//! fixture deletes its stream and bucket when dropped. Without a
//! nats-server each test passes at once with a notice, unless
//! `REQUIRE_NATS=1` (see `test_server`).
//!
//! The fixture's recount is a refold: a relay with a new index folds the
//! stream from its start (`docs/design/jetstream.md`, Fixture).
//!
//! The contract tests the backend passes so far are listed one by one
//! (`docs/design/jetstream.md`, steps 2 to 8); step 8 replaces the list
//! with the whole suite.

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

    /// As far as step 7 goes: the stream walked into a scratch index (a
    /// relay opened on no routes, folding from the start), the orphans
    /// counted in it against no configured subscription, as sled's check
    /// counts them, and the audit records it holds. The rest of `spool check` is step 8's.
    async fn check(&self) -> Result<CheckReport, SpoolError> {
        let scratch = self.index.path().join("check");
        let _ = std::fs::remove_dir_all(&scratch);
        let config = self.config_for("check");
        let none = Routes::default();
        let backend = JetStreamSpool::open(&config, none.clone(), Clock::following_tokio()).await?;
        let orphans = backend.orphans_against(&none);
        let audit_records = backend
            .index
            .audit_log(None, usize::MAX)
            .map(|all| all.len());
        let closed = backend.close().await;
        let _ = std::fs::remove_dir_all(&scratch);
        closed?;
        Ok(CheckReport {
            orphans: orphans?,
            audit_records: u64::try_from(audit_records?).unwrap_or(u64::MAX),
            ..CheckReport::default()
        })
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

macro_rules! turned_on {
    ($($theme:ident :: $name:ident $(, $kind:ident)?);* $(;)?) => {
        $(
            crate::spool::contract::contract_test!(
                JetStreamFixture::new(),
                unless = skip_without_nats(),
                $theme::$name $(, $kind)?
            );
        )*
    };
}

// Step 2: store, quarantine, the index, reads.
turned_on! {
    store::quarantine_keeps_the_raw_body_and_reason;
    store::a_closed_spool_refuses_writes_and_probes;
}

// Step 3: leases and outcomes.
turned_on! {
    store::stores_once_per_dedup_key_within_the_window_and_fans_out_inside;
    store::first_attempts_come_in_order_and_retries_when_due, paused;
    store::a_lease_dropped_without_an_outcome_is_due_again_and_a_completed_one_is_not, paused;
    store::a_lease_let_go_of_wakes_a_waiting_lease, paused;
    store::an_idle_lease_wakes_as_soon_as_a_store_is_durable;
    store::deliveries_and_outcomes_survive_reopening;
    store::the_role_handles_store_lease_and_complete_as_the_spool_does;
}

// Step 4 (first part): pause and resume, as the index folds them.
turned_on! {
    store::a_paused_subscription_is_leased_nothing_until_resumed_even_across_a_reopen;
}

// Step 6: replay, purge and orphans (those that read no counts nor need
// retention).
turned_on! {
    replay::a_replay_brings_a_dead_delivery_back_with_its_history, paused;
    replay::a_removed_subscription_s_deliveries_are_reported_as_orphans;
    replay::orphans_can_be_purged;
}

// Step 5: counts kept by the fold (the audit log and API subscriptions
// have tests of their own, `counts_tests.rs`: the contract's audit test
// needs retention, step 7).
turned_on! {
    counts::a_store_counts_one_waiting_delivery_per_subscription_and_a_duplicate_none;
    counts::each_source_counts_what_it_stored_and_quarantined_and_a_release_moves_one;
}

// Steps 5 and 6 together: the moves' counts.
turned_on! {
    counts::outcomes_and_replays_move_deliveries_between_states, paused;
    counts::purged_orphans_are_counted_purged;
    counts::an_outcome_recorded_after_its_orphan_was_purged_moves_it_from_purged, paused;
}

// Step 7 (retention): `maintain` on the holder of the retention duty.
// Off: `replay::retention_removes_what_is_over_and_keeps_the_rest` and
// `counts::retention_takes_the_counts_of_what_it_removes` fail before
// their retention, on the lease's order: a retry woken at 11 s is handed
// out after a first attempt stored before it (stream order), where sled
// hands out the retry first.
turned_on! {
    replay::dead_retention_lets_dead_deliveries_go_too, paused;
    counts::audit_records_are_durable_paged_newest_first_and_retained_like_quarantine, paused;
    replay::orphans_can_be_given_to_another_subscription_and_are_then_delivered, paused;
    counts::orphans_given_to_another_subscription_are_purged_there_and_wait_here, paused;
}

// Step 7 (invoices): the invoice index, stuck marks and reconcile checks
// (those that need no retention: `maintain` is step 7's other part).
turned_on! {
    invoices::an_invoice_keeps_its_timeline_resends_and_a_final_status;
    invoices::two_notifications_of_one_invoice_in_one_group_see_each_other;
    invoices::only_queued_notifications_wait_in_time_order_and_are_read_from_a_point;
    invoices::the_stuck_marks_are_kept_across_a_reopen_and_removed_when_unmarked;
    reconcile::checks_are_kept_oldest_first_across_a_crash_and_need_their_invoice;
    reconcile::an_invoice_keeps_its_last_100_checks;
    reconcile::a_reconciled_state_is_stored_once_and_the_provider_s_webhook_of_it_is_a_resend;
}
