//! sled's durability, as only it can show it: a write answered only by a
//! flush that began after it, with many writes to one flush; nothing
//! leased past the newest flushed id; a damaged retry set aside once; the
//! lock a second process meets, and the check refuses; the contract's
//! crash (the fixture's) being one.

use std::time::Duration;

use super::{backend, config, open};
use crate::clock::Clock;
use crate::delivery::Outcome;
use crate::spool::contract::support::{attempt, lease_now, nothing_due, routes, store, store_new};
use crate::spool::contract::Fixture;
use crate::spool::sled::contract_tests::SledFixture;
use crate::spool::{Lease, Spool, SpoolError};

#[tokio::test(start_paused = true)]
async fn a_damaged_retry_is_skipped_once_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let leases = lease_now(&spool, "erp", 2).await;
    for lease in &leases {
        attempt(&spool, lease, Outcome::Timeout, now).await;
    }
    drop(leases);
    backend(&spool).damage_delivery(b, "erp");
    tokio::time::sleep(Duration::from_secs(11)).await;
    // The walk meets the damaged record after leasing `a`: `a` comes out,
    // and nothing hangs on the lease it holds.
    let retry = lease_now(&spool, "erp", 10).await;
    assert_eq!(retry.iter().map(Lease::id).collect::<Vec<_>>(), [a]);
    drop(retry);
    let again = lease_now(&spool, "erp", 10).await;
    assert_eq!(
        again.iter().map(Lease::id).collect::<Vec<_>>(),
        [a],
        "a dropped lease is due again"
    );
    drop(again);
    // With `a` held, the damaged one neither comes out nor makes the lease spin.
    let held = lease_now(&spool, "erp", 10).await;
    assert!(nothing_due(&spool, "erp", Duration::from_secs(60)).await);
    drop(held);
    let health = spool.health();
    assert_eq!(
        health.unreadable, 1,
        "noted once, not at every walk: {health:?}"
    );
    assert!(health.unreadable_ids[0].contains(&b.to_string()));
}

#[tokio::test]
async fn nothing_newer_than_the_last_flush_is_leased() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    // As if `b` were applied but its group not yet flushed.
    backend(&spool).pretend_durable_upto(a);
    let leases = lease_now(&spool, "erp", 10).await;
    assert_eq!(leases.iter().map(Lease::id).collect::<Vec<_>>(), [a]);
    backend(&spool).pretend_durable_upto(b);
    let leases = lease_now(&spool, "erp", 10).await;
    assert_eq!(leases.iter().map(Lease::id).collect::<Vec<_>>(), [b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_flushes_and_none_is_answered_by_an_earlier_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    let before = spool.stats().await.flush_starts.unwrap();
    store(&spool, "first", 1_000).await;
    assert!(
        spool.stats().await.flush_starts.unwrap() > before,
        "answered before any flush"
    );

    let start = spool.stats().await.flush_starts.unwrap();
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let started_before = spool.stats().await.flush_starts.unwrap();
                store(&spool, &format!("k{i}"), 1_000).await;
                assert!(
                    spool.stats().await.flush_starts.unwrap() > started_before,
                    "answered by a flush that began before the write"
                );
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let used = spool.stats().await.flush_starts.unwrap() - start;
    assert!(used < 200, "200 writes took {used} flushes: no grouping");
    assert_eq!(spool.notifications().count().await, 201);
}

#[tokio::test]
async fn a_second_process_gets_a_clear_locked_error() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = open(dir.path(), &[]).await.0;
    let err = Spool::open(&config(dir.path()), routes(&[]), Clock::system())
        .await
        .err()
        .expect("second open must fail");
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
}

/// Split from the contract's `a_removed_subscription_s_deliveries_are_reported_as_orphans`:
/// a live relay holds sled's lock, so the check refuses its spool.
#[tokio::test]
async fn the_check_refuses_a_spool_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    let report = Spool::check(&config(dir.path()), false).await;
    assert!(
        matches!(report, Err(SpoolError::Locked { .. })),
        "check refuses a spool in use"
    );
    spool.close().await.unwrap();
}

/// The contract's crash (`SledFixture::crash`) is one: the writer stops
/// with no last flush and no clean-stop mark, and lets go of sled's files;
/// what was acknowledged is there when they are opened again.
#[tokio::test]
async fn the_fixtures_crash_is_no_clean_stop_and_keeps_what_was_acknowledged() {
    let fixture = SledFixture::new();
    let (spool, clock) = open(fixture.dir(), &["erp"]).await;
    let id = store_new(&spool, "a", clock.now_ms()).await;
    fixture.crash(spool).await;
    assert!(
        !Spool::stopped_cleanly(&config(fixture.dir())),
        "a crash is not a clean stop"
    );
    let (spool, _) = open(fixture.dir(), &["erp"]).await;
    assert!(spool.notification(id).await.unwrap().is_some());
    spool.close().await.unwrap();
    assert!(Spool::stopped_cleanly(&config(fixture.dir())));
}
