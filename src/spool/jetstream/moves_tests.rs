//! An admin's moves of deliveries on JetStream (step 6), beyond the
//! contract tests turned on: retry now and purge (which the contract has
//! no test of its own for), orphans given away and delivered there, an
//! outcome recorded over its orphan's purge (the contract's own tests of
//! those also read counts or run retention, later steps). Races between
//! writers are in `moves_race_tests.rs`.

use std::time::Duration;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use crate::delivery::{Delivery, Outcome, State};
use crate::spool::contract::support::{
    attempt, lease_now, nothing_due, ok, open, routes, spool_with_orphans, store_new,
};
use crate::spool::{Lease, NotificationId, Purged, Spool};

pub(super) fn state_of(deliveries: &[Delivery], subscription: &str) -> Option<State> {
    deliveries
        .iter()
        .find(|d| d.subscription == subscription)
        .map(|d| d.state)
}

pub(super) fn ids(leases: &[Lease]) -> Vec<NotificationId> {
    let mut ids: Vec<_> = leases.iter().map(Lease::id).collect();
    ids.sort();
    ids
}

/// A delivery of `erp` made dead: two failures (one wait in the schedule).
pub(super) async fn dead_one(spool: &Spool, dedup: &str, now: i64) -> NotificationId {
    let id = store_new(spool, dedup, now).await;
    let first = lease_now(spool, "erp", 1).await;
    assert_eq!(first[0].id(), id);
    attempt(spool, &first[0], Outcome::Connect, now).await;
    drop(first);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let retry = lease_now(spool, "erp", 1).await;
    assert_eq!(retry[0].id(), id);
    let delivery = attempt(spool, &retry[0], Outcome::Connect, now + 11_000).await;
    assert!(matches!(delivery.state, State::Dead { .. }));
    id
}

#[tokio::test(start_paused = true)]
async fn retry_now_brings_waiting_retries_forward_and_leaves_the_rest() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let (spool, clock) = open(&fixture, &["erp"]).await;
    let now = clock.now_ms();
    let dead = dead_one(&spool, "dead", clock.now_ms()).await;
    let waiting = store_new(&spool, "waiting", now).await;
    let delivered = store_new(&spool, "delivered", now).await;
    // The consumer's skips (the dead one's states) take no place.
    let leases = lease_now(&spool, "erp", 2).await;
    assert_eq!(ids(&leases), [waiting, delivered]);
    attempt(&spool, &leases[0], Outcome::Connect, clock.now_ms()).await;
    attempt(&spool, &leases[1], ok(), clock.now_ms()).await;
    drop(leases);
    let never = store_new(&spool, "never", now).await;

    assert_eq!(spool.retry_now("erp", clock.now_ms()).await.unwrap(), 1);
    let due = lease_now(&spool, "erp", 10).await;
    assert_eq!(ids(&due), [waiting, never], "not {dead} nor {delivered}");
    let retried = due.iter().find(|l| l.id() == waiting).unwrap();
    assert_eq!(retried.delivery().attempts.len(), 1, "its history is kept");
    assert_eq!(
        spool.retry_now("erp", clock.now_ms()).await.unwrap(),
        0,
        "leased now: left alone"
    );
    drop(due);
    spool.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_purge_gives_up_dead_and_waiting_deliveries_and_skips_the_rest() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let (spool, clock) = open(&fixture, &["erp"]).await;
    let dead = dead_one(&spool, "dead", clock.now_ms()).await;
    let now = clock.now_ms();
    let waiting = store_new(&spool, "waiting", now).await;
    let delivered = store_new(&spool, "delivered", now).await;
    let leases = lease_now(&spool, "erp", 2).await;
    attempt(&spool, &leases[0], Outcome::Connect, now).await;
    attempt(&spool, &leases[1], ok(), now).await;
    drop(leases);
    let never = store_new(&spool, "never", now).await;

    let targets = [dead, waiting, delivered, never]
        .into_iter()
        .map(|id| (id, "erp".to_owned()))
        .chain([(dead, "nope".to_owned())])
        .collect();
    let done = spool.purge(targets, clock.now_ms()).await.unwrap();
    assert_eq!(
        done,
        Purged {
            purged: 2,
            skipped: 3
        }
    );
    for (id, attempts) in [(dead, 2), (waiting, 1)] {
        let deliveries = spool.deliveries_of(id).await.unwrap();
        assert!(matches!(
            state_of(&deliveries, "erp"),
            Some(State::Purged { .. })
        ));
        assert_eq!(deliveries[0].attempts.len(), attempts, "with its history");
    }
    // Only the never attempted one goes out; the purged retry never does.
    let due = lease_now(&spool, "erp", 10).await;
    assert_eq!(ids(&due), [never]);
    attempt(&spool, &due[0], ok(), clock.now_ms()).await;
    drop(due);
    assert!(nothing_due(&spool, "erp", Duration::from_secs(60)).await);
    // A purged delivery can be replayed.
    assert!(spool.replay(waiting, "erp", clock.now_ms()).await.unwrap());
    let again = lease_now(&spool, "erp", 10).await;
    assert_eq!(ids(&again), [waiting]);
    drop(again);
    spool.close().await.unwrap();
}

/// The contract's `orphans_can_be_given_to_another_subscription_and_are_then_delivered`
/// up to its retention (step 7).
#[tokio::test(start_paused = true)]
async fn orphans_given_to_another_subscription_are_delivered_there_and_kept_purged_here() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let [a, b] = spool_with_orphans(&fixture).await;
    let (spool, clock) = open(&fixture, &["erp", "new"]).await;
    assert_eq!(spool.health().orphans.get("old"), Some(&2));
    let now = clock.now_ms();
    assert_eq!(
        spool
            .reassign_orphans("old", Some("new"), now)
            .await
            .unwrap(),
        2
    );
    assert!(spool.health().orphans.is_empty());
    let leases = lease_now(&spool, "new", 10).await;
    assert_eq!(ids(&leases), [a, b]);
    for lease in &leases {
        attempt(&spool, lease, ok(), now).await;
    }
    drop(leases);
    let deliveries = spool.deliveries_of(a).await.unwrap();
    assert!(matches!(
        state_of(&deliveries, "old"),
        Some(State::Purged { .. })
    ));
    assert!(matches!(
        state_of(&deliveries, "new"),
        Some(State::Delivered { .. })
    ));
    let old = deliveries.iter().find(|d| d.subscription == "old").unwrap();
    assert_eq!(old.attempts.len(), 1, "the orphan's history is kept");
    // A second run finds nothing waiting and gives nothing again.
    assert_eq!(
        spool
            .reassign_orphans("old", Some("new"), now)
            .await
            .unwrap(),
        0
    );
    assert!(nothing_due(&spool, "new", Duration::from_secs(60)).await);
    spool.close().await.unwrap();
    let (spool, _) = open(&fixture, &["erp", "new"]).await;
    assert!(spool.health().orphans.is_empty());
    spool.close().await.unwrap();
}

/// The contract's `an_outcome_recorded_after_its_orphan_was_purged_moves_it_from_purged`
/// without its counts (step 5).
#[tokio::test(start_paused = true)]
async fn an_outcome_recorded_after_its_orphan_was_purged_is_written_over_the_purge() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let [a, b] = spool_with_orphans(&fixture).await;
    let (spool, clock) = open(&fixture, &["erp"]).await;
    let mut held = lease_now(&spool, "old", 2).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    held.extend(lease_now(&spool, "old", 2).await);
    assert_eq!(ids(&held), [a, b]);
    spool
        .reassign_orphans("old", None, clock.now_ms())
        .await
        .unwrap();
    for id in [a, b] {
        let deliveries = spool.deliveries_of(id).await.unwrap();
        assert!(matches!(
            state_of(&deliveries, "old"),
            Some(State::Purged { .. })
        ));
    }
    for lease in &held {
        attempt(&spool, lease, ok(), clock.now_ms()).await;
    }
    for id in [a, b] {
        let deliveries = spool.deliveries_of(id).await.unwrap();
        assert!(
            matches!(state_of(&deliveries, "old"), Some(State::Delivered { .. })),
            "{deliveries:?}"
        );
    }
    drop(held);
    spool.close().await.unwrap();
}

/// A subscription taken out of the routes while the relay runs: its
/// deliveries are reported under its name (one that is not a subject
/// token too) and can be purged.
#[tokio::test]
async fn a_subscription_removed_by_new_routes_leaves_orphans_under_its_name() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let (spool, clock) = open(&fixture, &["erp", "a.b"]).await;
    let id = store_new(&spool, "x", clock.now_ms()).await;
    assert!(spool.health().orphans.is_empty());
    spool.set_routes(routes(&["erp"])).await.unwrap();
    assert_eq!(
        spool.health().orphans,
        [("a.b".to_owned(), 1)].into_iter().collect()
    );
    assert_eq!(
        spool
            .reassign_orphans("a.b", None, clock.now_ms())
            .await
            .unwrap(),
        1
    );
    assert!(spool.health().orphans.is_empty());
    let deliveries = spool.deliveries_of(id).await.unwrap();
    assert_eq!(state_of(&deliveries, "erp"), Some(State::Pending));
    assert!(matches!(
        state_of(&deliveries, "a.b"),
        Some(State::Purged { .. })
    ));
    spool.close().await.unwrap();
}
