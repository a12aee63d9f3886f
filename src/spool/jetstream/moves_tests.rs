//! An admin's moves of deliveries on JetStream (step 6), beyond the
//! contract tests turned on: retry now, purge and backfill (which the
//! contract has no test of its own for), orphans given away and delivered
//! there, an outcome recorded over its orphan's purge (the contract's own
//! tests of those also read counts or run retention, later steps), and
//! two relays racing on one delivery's compare-and-set.

use std::time::Duration;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use crate::clock::Clock;
use crate::delivery::{Delivery, Outcome, State};
use crate::spool::contract::support::{
    attempt, lease_now, nothing_due, ok, open, routes, spool_with_orphans, store_new,
};
use crate::spool::{Lease, NotificationId, Purged, Spool, SpoolError};

fn state_of(deliveries: &[Delivery], subscription: &str) -> Option<State> {
    deliveries
        .iter()
        .find(|d| d.subscription == subscription)
        .map(|d| d.state)
}

fn ids(leases: &[Lease]) -> Vec<NotificationId> {
    let mut ids: Vec<_> = leases.iter().map(Lease::id).collect();
    ids.sort();
    ids
}

/// `n` leases of `subscription`: a lease answers with what one fetch
/// held, and the consumer's skips (states it hands out that are not due)
/// take places in it.
async fn lease_n(spool: &Spool, subscription: &str, n: usize) -> Vec<Lease> {
    let mut leases = Vec::new();
    while leases.len() < n {
        leases.extend(lease_now(spool, subscription, n - leases.len()).await);
    }
    leases
}

/// A delivery of `erp` made dead: two failures (one wait in the schedule).
async fn dead_one(spool: &Spool, dedup: &str, now: i64) -> NotificationId {
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
    let leases = lease_n(&spool, "erp", 2).await;
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
    let leases = lease_n(&spool, "erp", 2).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_on_two_relays_at_once_gives_each_notification_once() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let clock = Clock::system();
    let a = fixture
        .open_relay("a", routes(&["erp"]), clock)
        .await
        .unwrap();
    let now = clock.now_ms();
    let x = store_new(&a, "x", now).await;
    let y = store_new(&a, "y", now).await;
    let b = fixture
        .open_relay("b", routes(&["erp", "new"]), clock)
        .await
        .unwrap();
    a.set_routes(routes(&["erp", "new"])).await.unwrap();

    let (on_a, on_b) = tokio::join!(
        a.backfill("new", vec![x, y, x], now),
        b.backfill("new", vec![y, x], now)
    );
    assert_eq!(on_a.unwrap() + on_b.unwrap(), 2);
    assert_eq!(a.backfill("new", vec![x, y], now).await.unwrap(), 0);
    assert_eq!(
        a.backfill("erp", vec![x], now).await.unwrap(),
        0,
        "fanned out to it already"
    );
    let leases = lease_now(&a, "new", 10).await;
    assert_eq!(
        leases.iter().map(Lease::id).collect::<Vec<_>>(),
        [x, y],
        "in the order they were received"
    );
    for lease in &leases {
        attempt(&a, lease, ok(), now).await;
    }
    drop(leases);
    // Across relays the index is eventual: b sees a's outcome soon.
    let mut deliveries = b.deliveries_of(x).await.unwrap();
    for _ in 0..50 {
        if matches!(state_of(&deliveries, "new"), Some(State::Delivered { .. })) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        deliveries = b.deliveries_of(x).await.unwrap();
    }
    assert_eq!(state_of(&deliveries, "erp"), Some(State::Pending));
    assert!(
        matches!(state_of(&deliveries, "new"), Some(State::Delivered { .. })),
        "{deliveries:?}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn two_relays_replaying_one_dead_delivery_bring_it_back_once() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let clock = Clock::following_tokio();
    let a = fixture
        .open_relay("a", routes(&["erp"]), clock)
        .await
        .unwrap();
    let id = dead_one(&a, "dead", clock.now_ms()).await;
    let b = fixture
        .open_relay("b", routes(&["erp"]), clock)
        .await
        .unwrap();
    let now = clock.now_ms();
    let (on_a, on_b) = tokio::join!(a.replay(id, "erp", now), b.replay(id, "erp", now));
    let answers = [on_a, on_b];
    assert_eq!(
        answers.iter().filter(|r| matches!(r, Ok(true))).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|r| matches!(r, Err(SpoolError::NotReplayable(_))))
            .count(),
        1,
        "the other finds it waiting: {answers:?}"
    );
    let again = lease_now(&a, "erp", 10).await;
    assert_eq!(ids(&again), [id]);
    assert_eq!(again[0].delivery().attempts.len(), 2);
    drop(again);
    a.close().await.unwrap();
    b.close().await.unwrap();
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

/// A rewrite whose compare-and-set loses to another writer (10071) decides
/// again on what that writer left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_that_loses_its_race_decides_again_on_what_won() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let clock = Clock::system();
    let spool = fixture
        .open_relay("a", routes(&["erp"]), clock)
        .await
        .unwrap();
    let now = clock.now_ms();
    let id = store_new(&spool, "x", now).await;
    let leases = lease_now(&spool, "erp", 1).await;
    attempt(&spool, &leases[0], ok(), now).await;
    drop(leases);
    let crate::spool::Backend::Jetstream(backend) = &spool.backend else {
        panic!("a JetStream fixture");
    };
    let subject = backend.link.names().delivery("erp", id);
    let context = backend.link.context().clone();
    let mut seen = Vec::new();
    let mut competitor = 0;
    let written = backend
        .rewrite("erp", id, |current| {
            let delivery = current.delivery.clone().unwrap();
            seen.push((current.sequence, delivery.state));
            if seen.len() == 1 {
                // Another writer gets there first: the delivery purged.
                let mut purged = delivery.clone();
                purged.state = State::Purged { at_ms: now };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(super::subjects::LEASE, "final");
                let payload = crate::spool::delivery_codec::encode_delivery(&purged).unwrap();
                let (context, subject) = (context.clone(), subject.clone());
                competitor = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(async move {
                        let sent = context
                            .publish_with_headers(subject, headers, payload.into())
                            .await
                            .unwrap();
                        sent.await.unwrap().sequence
                    })
                });
            }
            let mut replayed = delivery;
            Ok(replayed
                .replay(now)
                .is_ok()
                .then_some((replayed, super::deliveries::Mark::Due)))
        })
        .await
        .unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(matches!(seen[0].1, State::Delivered { .. }));
    assert_eq!(seen[1].0, competitor, "what won, read again");
    assert!(matches!(seen[1].1, State::Purged { .. }));
    assert!(written.unwrap() > competitor);
    spool.close().await.unwrap();
}
