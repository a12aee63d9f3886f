//! The spool's contract: the promises every backend keeps, as tests
//! written against the interface only ([`Spool`] and its role handles;
//! no backend type, key, file or accessor).
//!
//! A backend passes the contract when every test here passes against it:
//! - `store`: a store is answered once durable, once per dedup key within
//!   the window, fanned out inside; leases come in order, one holder at a
//!   time, due again when dropped, a retry only when due; a lease waiting
//!   wakes on a durable store, a dropped lease and a resume; a pause holds
//!   across a reopen; what was recorded survives a reopen; a closed spool
//!   refuses writes; quarantine keeps the raw body (`store.rs`);
//! - `replay`: replay, retention (and `dead_retention`), orphans reported,
//!   given away or purged (`replay.rs`);
//! - `counts`: the kept counts move with every change and equal a recount
//!   (the backend's own, [`Fixture::recount`], and one made through the
//!   interface, [`counts::recount`]); the audit log (`counts.rs`);
//! - `invoices`: the invoice index, the queued notifications waiting, the
//!   stuck marks (`invoices.rs`);
//! - `reconcile`: an invoice's checks with its provider (in order, across
//!   a crash, the last 100, gone with the invoice), and the store rules for
//!   a notification made from the provider's answer (`reconcile.rs`);
//! - `property`: random store, lease, complete, replay, retention, restart
//!   and crash-and-reopen (nothing acknowledged lost, nothing leased before
//!   it was acknowledged nor twice at once, no delivery disappears), and
//!   random changes that keep the counts a recount's (`property.rs`).
//!
//! What is about one backend only (how sled groups its flushes, its
//! files, its format upgrade, its lock, damage to its records, its check
//! walk's repairs) is tested beside that backend, not here.
//!
//! To run the contract against a backend, implement [`Fixture`] (one
//! spool's storage: opening it, crashing it, checking it when stopped)
//! and instantiate the suite in the backend's module with an expression
//! that makes a fresh fixture, evaluated once per test:
//!
//! ```ignore
//! #[cfg(test)]
//! mod contract_tests {
//!     crate::spool::contract::contract_tests!(SledFixture::new());
//! }
//! ```
//!
//! Each test then runs as its own `#[tokio::test]` (with its clock
//! paused, or on two threads, where the test needs it), so
//! `cargo test --lib spool::sled::contract` runs the suite against sled.

use std::future::Future;
use std::time::Duration;

use super::{CheckReport, Counts, Routes, Spool, SpoolError};
use crate::clock::Clock;

pub(crate) mod counts;
pub(crate) mod invoices;
pub(crate) mod property;
pub(crate) mod reconcile;
pub(crate) mod replay;
pub(crate) mod store;
pub(crate) mod support;

/// How long the spool keeps what is over; what a test may change of a
/// spool's settings. A backend's other settings are the fixture's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keep {
    /// `spool.retention` (the dedup window is 60 s).
    pub retention: Duration,
    /// `spool.dead_retention`.
    pub dead_retention: Option<Duration>,
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            retention: Duration::from_secs(3600),
            dead_retention: None,
        }
    }
}

/// One spool's storage, for one test: a fresh one each time the
/// instantiation's expression is evaluated. Whatever the backend needs
/// (a directory, a server, a stream name) lives here, never in a test.
pub(crate) trait Fixture {
    /// Opens this fixture's spool: created empty the first time, as it was
    /// left by the last close or crash after that. A dedup window of 60 s.
    fn open(
        &self,
        keep: Keep,
        routes: Routes,
        clock: Clock,
    ) -> impl Future<Output = Result<Spool, SpoolError>>;

    /// Stops `spool` as a crash of the process would: no clean close (what
    /// a clean close would still have written may be lost, what was
    /// acknowledged may not). Answers once the spool can be opened again.
    fn crash(&self, spool: Spool) -> impl Future<Output = ()>;

    /// The backend's check of its stopped spool (`spool check`), with the
    /// settings of the last open.
    fn check(&self) -> impl Future<Output = Result<CheckReport, SpoolError>>;

    /// The counts as the backend makes them by walking what it holds. By
    /// default a walk through the interface ([`counts::recount`]).
    fn recount(&self, spool: &Spool) -> impl Future<Output = Counts> {
        counts::recount(spool)
    }

    /// How many random cases each property runs (after its recorded
    /// ones): fewer for a backend whose every call is a round trip.
    /// `PROPTEST_CASES`, when set, decides instead.
    fn property_cases(&self) -> u32 {
        32
    }
}

/// One contract test as a `#[tokio::test]` of a backend (see
/// [`contract_tests!`]). With `unless = $skip`, the test returns at once,
/// passing, when `$skip` (evaluated first, before the fixture) is true: for
/// a backend whose server may be absent on the machine, which `$skip`
/// reports (say, with a printed notice).
macro_rules! contract_test {
    ($fixture:expr, unless = $skip:expr, $theme:ident :: $name:ident) => {
        #[tokio::test]
        async fn $name() {
            if $skip {
                return;
            }
            let fixture = $fixture;
            $crate::spool::contract::$theme::$name(&fixture).await;
        }
    };
    ($fixture:expr, unless = $skip:expr, $theme:ident :: $name:ident, paused) => {
        #[tokio::test(start_paused = true)]
        async fn $name() {
            if $skip {
                return;
            }
            let fixture = $fixture;
            $crate::spool::contract::$theme::$name(&fixture).await;
        }
    };
    ($fixture:expr, unless = $skip:expr, $theme:ident :: $name:ident, two_threads) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if $skip {
                return;
            }
            let fixture = $fixture;
            $crate::spool::contract::$theme::$name(&fixture).await;
        }
    };
    // The property's closure makes fixtures and cannot `return`: the skip
    // sits outside it.
    ($fixture:expr, unless = $skip:expr, $theme:ident :: $name:ident, property) => {
        #[test]
        fn $name() {
            if $skip {
                return;
            }
            $crate::spool::contract::$theme::$name(|| $fixture);
        }
    };
    ($fixture:expr, $theme:ident :: $name:ident $(, $kind:ident)?) => {
        $crate::spool::contract::contract_test!(
            $fixture,
            unless = false,
            $theme::$name $(, $kind)?
        );
    };
}
pub(crate) use contract_test;

/// The whole contract, one test each, against the backend whose fresh
/// [`Fixture`] `$fixture` makes (evaluated once per test); with
/// `unless = $skip`, each test passes at once when `$skip` is true (see
/// [`contract_test!`]).
macro_rules! contract_tests {
    ($fixture:expr) => {
        $crate::spool::contract::contract_tests!($fixture, unless = false);
    };
    ($fixture:expr, unless = $skip:expr) => {
        use $crate::spool::contract::contract_test;
        // store, lease, complete
        contract_test!(
            $fixture,
            unless = $skip,
            store::stores_once_per_dedup_key_within_the_window_and_fans_out_inside
        );
        contract_test!(
            $fixture,
            unless = $skip,
            store::first_attempts_come_in_order_and_retries_when_due,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            store::a_lease_dropped_without_an_outcome_is_due_again_and_a_completed_one_is_not,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            store::a_lease_let_go_of_wakes_a_waiting_lease,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            store::an_idle_lease_wakes_as_soon_as_a_store_is_durable
        );
        contract_test!($fixture, unless = $skip, store::deliveries_and_outcomes_survive_reopening);
        contract_test!($fixture, unless = $skip, store::quarantine_keeps_the_raw_body_and_reason);
        contract_test!($fixture, unless = $skip, store::a_closed_spool_refuses_writes_and_probes);
        contract_test!(
            $fixture,
            unless = $skip,
            store::a_paused_subscription_is_leased_nothing_until_resumed_even_across_a_reopen
        );
        contract_test!(
            $fixture,
            unless = $skip,
            store::the_role_handles_store_lease_and_complete_as_the_spool_does
        );
        // replay, retention, orphans
        contract_test!(
            $fixture,
            unless = $skip,
            replay::retention_removes_what_is_over_and_keeps_the_rest,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            replay::dead_retention_lets_dead_deliveries_go_too,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            replay::a_replay_brings_a_dead_delivery_back_with_its_history,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            replay::a_removed_subscription_s_deliveries_are_reported_as_orphans
        );
        contract_test!(
            $fixture,
            unless = $skip,
            replay::orphans_can_be_given_to_another_subscription_and_are_then_delivered,
            paused
        );
        contract_test!($fixture, unless = $skip, replay::orphans_can_be_purged);
        // counts and the audit log
        contract_test!(
            $fixture,
            unless = $skip,
            counts::a_store_counts_one_waiting_delivery_per_subscription_and_a_duplicate_none
        );
        contract_test!(
            $fixture,
            unless = $skip,
            counts::outcomes_and_replays_move_deliveries_between_states,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            counts::orphans_given_to_another_subscription_are_purged_there_and_wait_here,
            paused
        );
        contract_test!($fixture, unless = $skip, counts::purged_orphans_are_counted_purged);
        contract_test!(
            $fixture,
            unless = $skip,
            counts::an_outcome_recorded_after_its_orphan_was_purged_moves_it_from_purged,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            counts::retention_takes_the_counts_of_what_it_removes,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            counts::each_source_counts_what_it_stored_and_quarantined_and_a_release_moves_one
        );
        contract_test!(
            $fixture,
            unless = $skip,
            counts::audit_records_are_durable_paged_newest_first_and_retained_like_quarantine,
            paused
        );
        // the invoice index and the queries
        contract_test!(
            $fixture,
            unless = $skip,
            invoices::an_invoice_keeps_its_timeline_resends_and_a_final_status
        );
        contract_test!(
            $fixture,
            unless = $skip,
            invoices::two_notifications_of_one_invoice_in_one_group_see_each_other
        );
        contract_test!(
            $fixture,
            unless = $skip,
            invoices::retention_takes_an_invoice_with_its_last_notification,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            invoices::only_queued_notifications_wait_in_time_order_and_are_read_from_a_point
        );
        contract_test!(
            $fixture,
            unless = $skip,
            invoices::the_stuck_marks_are_kept_across_a_reopen_and_removed_when_unmarked
        );
        // reconciliation
        contract_test!(
            $fixture,
            unless = $skip,
            reconcile::checks_are_kept_oldest_first_across_a_crash_and_need_their_invoice
        );
        contract_test!($fixture, unless = $skip, reconcile::an_invoice_keeps_its_last_100_checks);
        contract_test!(
            $fixture,
            unless = $skip,
            reconcile::retention_takes_an_invoice_s_checks_with_its_last_notification,
            paused
        );
        contract_test!(
            $fixture,
            unless = $skip,
            reconcile::a_reconciled_state_is_stored_once_and_the_provider_s_webhook_of_it_is_a_resend
        );
        // properties
        contract_test!(
            $fixture,
            unless = $skip,
            property::nothing_acknowledged_is_lost_nor_leased_twice_nor_left_undelivered,
            property
        );
        contract_test!(
            $fixture,
            unless = $skip,
            property::the_kept_counts_equal_a_recount_after_any_sequence_of_changes,
            property
        );
    };
}
pub(crate) use contract_tests;
