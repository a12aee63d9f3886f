//! Writers racing on one delivery's state on JetStream (step 6): a
//! backfill run on two relays at once, two relays replaying one dead
//! delivery, and a rewrite whose compare-and-set loses (10071) deciding
//! again on what won.

use std::time::Duration;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use super::moves_tests::{dead_one, ids, state_of};
use crate::clock::Clock;
use crate::delivery::State;
use crate::spool::contract::support::{attempt, lease_now, ok, routes, store_new};
use crate::spool::{Lease, SpoolError};

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
