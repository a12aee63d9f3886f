//! Store, lease and complete: a store answered once, fanned out inside;
//! leases in order, held by one at a time, due again when dropped, retried
//! when due; waiting leases woken; a pause held; what was recorded kept
//! across a reopen; a closed spool refusing writes; quarantine.

use std::time::Duration;

use bytes::Bytes;

use super::support::{
    attempt, lease_now, nothing_due, notification, ok, open, received, store, store_new,
};
use super::Fixture;
use crate::clock::Clock;
use crate::delivery::{Outcome, State};
use crate::spool::{Lease, SpoolError, Stored};

pub(crate) async fn stores_once_per_dedup_key_within_the_window_and_fans_out_inside(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["erp", "crm"]).await;
    let now = clock.now_ms();
    let first = store_new(&spool, "k1", now).await;
    assert_eq!(
        store(&spool, "k1", now + 1_000).await,
        Stored::Duplicate(first)
    );
    assert!(matches!(store(&spool, "k2", now).await, Stored::New(_)));
    // Past the 60 s window the same key is new again.
    assert!(matches!(
        store(&spool, "k1", now + 61_000).await,
        Stored::New(_)
    ));
    assert_eq!(spool.notifications().count().await, 3);
    let record = spool.notification(first).await.unwrap().unwrap();
    assert_eq!(record.meta.id, first.to_string());
    assert_eq!(record.meta.subscriptions, ["erp", "crm"]);
    assert_eq!(record.body.as_ref(), b"{\"hook_id\": \"x\"}");
    assert_eq!(spool.deliveries_of(first).await.unwrap().len(), 2);
    // The resend added no delivery: three notifications, three leases each.
    assert_eq!(lease_now(&spool, "erp", 10).await.len(), 3);
    assert_eq!(lease_now(&spool, "crm", 10).await.len(), 3);
}
pub(crate) async fn first_attempts_come_in_order_and_retries_when_due(fixture: &impl Fixture) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let leases = lease_now(&spool, "erp", 10).await;
    let ids: Vec<_> = leases.iter().map(Lease::id).collect();
    assert_eq!(ids, [a, b]);
    assert!(
        nothing_due(&spool, "erp", Duration::from_secs(60)).await,
        "held leases are not handed out twice"
    );
    let now = clock.now_ms();
    attempt(&spool, &leases[0], Outcome::Timeout, now).await;
    attempt(&spool, &leases[1], ok(), now).await;
    drop(leases);
    // The retry is due 10 s after the failure, not before.
    assert!(nothing_due(&spool, "erp", Duration::from_secs(9)).await);
    let retry = lease_now(&spool, "erp", 10).await;
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].id(), a);
    assert_eq!(retry[0].delivery().attempts.len(), 1);
    let now = clock.now_ms();
    attempt(&spool, &retry[0], ok(), now).await;
    drop(retry);
    assert!(nothing_due(&spool, "erp", Duration::from_secs(3600)).await);
    assert_eq!(spool.next_due_ms("erp").await.unwrap(), None);
    let mut states = Vec::new();
    for id in [a, b] {
        states.push(spool.deliveries_of(id).await.unwrap()[0].state);
    }
    assert!(states.iter().all(|s| matches!(s, State::Delivered { .. })));
}

pub(crate) async fn a_lease_dropped_without_an_outcome_is_due_again_and_a_completed_one_is_not(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let mut leases = lease_now(&spool, "erp", 10).await;
    let second = leases.pop().unwrap();
    attempt(&spool, &second, ok(), now).await;
    drop(second);
    drop(leases); // `a` never got an outcome
    let again = lease_now(&spool, "erp", 10).await;
    assert_eq!(again.iter().map(Lease::id).collect::<Vec<_>>(), [a]);
    assert_ne!(a, b);
}

pub(crate) async fn a_lease_let_go_of_wakes_a_waiting_lease(fixture: &impl Fixture) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let a = store_new(&spool, "a", clock.now_ms()).await;
    let held = lease_now(&spool, "erp", 1).await;
    let waiting = {
        let spool = spool.clone();
        tokio::spawn(async move { spool.lease("erp", 1).await })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!waiting.is_finished(), "nothing was due");
    drop(held);
    let leases = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("the waiting lease heard of it")
        .unwrap()
        .unwrap();
    assert_eq!(leases[0].id(), a);
}

pub(crate) async fn an_idle_lease_wakes_as_soon_as_a_store_is_durable(fixture: &impl Fixture) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let waiting = {
        let spool = spool.clone();
        tokio::spawn(async move { spool.lease("erp", 1).await })
    };
    // Let the lease walk, find nothing and wait.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stored_at = tokio::time::Instant::now();
    let id = store_new(&spool, "a", clock.now_ms()).await;
    let leases = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the lease never woke")
        .unwrap()
        .unwrap();
    assert_eq!(leases[0].id(), id);
    assert!(
        stored_at.elapsed() < Duration::from_millis(100),
        "woke after {:?}",
        stored_at.elapsed()
    );
}

pub(crate) async fn deliveries_and_outcomes_survive_reopening(fixture: &impl Fixture) {
    let now = Clock::system().now_ms();
    let (a, b) = {
        let (spool, _) = open(fixture, &["erp"]).await;
        let a = store_new(&spool, "a", now).await;
        let b = store_new(&spool, "b", now).await;
        let leases = lease_now(&spool, "erp", 1).await;
        attempt(&spool, &leases[0], ok(), now).await;
        drop(leases);
        spool.close().await.unwrap();
        (a, b)
    };
    let (spool, _) = open(fixture, &["erp"]).await;
    assert!(spool.notification(a).await.unwrap().is_some());
    let leases = lease_now(&spool, "erp", 10).await;
    assert_eq!(
        leases.iter().map(Lease::id).collect::<Vec<_>>(),
        [b],
        "the delivered one is not sent again"
    );
}

pub(crate) async fn quarantine_keeps_the_raw_body_and_reason(fixture: &impl Fixture) {
    let (spool, _) = open(fixture, &[]).await;
    let mut body = received(1);
    body.body = Bytes::from_static(b"<xml/>");
    let id = spool
        .quarantine(body, "not_json", "expected value".into())
        .await
        .unwrap();
    let kept: Vec<_> = spool.quarantined().collect().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].meta.id, id.to_string());
    assert_eq!(kept[0].body.as_ref(), b"<xml/>");
    assert_eq!(kept[0].meta.reason_kind, "not_json");
    assert!(spool.is_quarantined(id).await.unwrap());
    assert_eq!(spool.notifications().count().await, 0);
}

pub(crate) async fn a_closed_spool_refuses_writes_and_probes(fixture: &impl Fixture) {
    let (spool, _) = open(fixture, &[]).await;
    assert!(spool.alive(Duration::from_secs(5)).await);
    spool.close().await.unwrap();
    let err = spool
        .store(received(1_000), notification("late"))
        .await
        .unwrap_err();
    assert!(matches!(err, SpoolError::Closed), "{err}");
    assert!(!spool.alive(Duration::from_secs(5)).await);
}

pub(crate) async fn a_paused_subscription_is_leased_nothing_until_resumed_even_across_a_reopen(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["billing", "erp"]).await;
    spool.pause("billing", true).await.unwrap();
    let id = store_new(&spool, "p-1", clock.now_ms()).await;
    let erp = spool.lease("erp", 8).await.unwrap();
    assert_eq!(erp[0].id(), id, "other subscriptions go on");
    assert!(nothing_due(&spool, "billing", Duration::from_millis(200)).await);
    drop(erp);
    spool.close().await.unwrap();
    drop(spool);

    let (spool, _) = open(fixture, &["billing", "erp"]).await;
    assert!(spool.paused().contains("billing"), "kept across a reopen");
    assert!(nothing_due(&spool, "billing", Duration::from_millis(200)).await);
    // A lease that waits is woken by the resume.
    let waiting = tokio::spawn({
        let spool = spool.clone();
        async move { spool.lease("billing", 8).await }
    });
    spool.pause("billing", false).await.unwrap();
    let leased = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the resume wakes the lease")
        .unwrap()
        .unwrap();
    assert_eq!(leased[0].id(), id);
    assert!(spool.paused().is_empty());
    spool.close().await.unwrap();
}

/// Ingress's [`crate::spool::Producer`] and the forwarder's
/// [`crate::spool::Consumer`] are the spool by role: what one stores the
/// other leases, and an outcome completed through it is kept.
pub(crate) async fn the_role_handles_store_lease_and_complete_as_the_spool_does(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let (producer, consumer) = (spool.producer(), spool.consumer());
    let now = clock.now_ms();
    let Stored::New(id) = producer
        .store(received(now), notification("a"))
        .await
        .unwrap()
    else {
        panic!("a first store is new");
    };
    let quarantined = producer
        .quarantine(received(now), "not_json", "x".into())
        .await
        .unwrap();
    assert!(spool.is_quarantined(quarantined).await.unwrap());
    assert!(producer.health().writable);
    assert!(producer.alive(Duration::from_secs(5)).await);
    assert!(!consumer.is_paused("erp"));
    let leases = tokio::time::timeout(Duration::from_secs(5), consumer.lease("erp", 10))
        .await
        .expect("nothing due")
        .unwrap();
    assert_eq!(leases.iter().map(Lease::id).collect::<Vec<_>>(), [id]);
    let mut delivery = leases[0].delivery().clone();
    delivery.start(now).unwrap();
    let schedule = crate::delivery::Schedule::try_new(vec![Duration::from_secs(10)], 0.0).unwrap();
    delivery.finish(&schedule, ok(), now + 1, 0.0).unwrap();
    consumer.complete(&leases[0], &delivery).await.unwrap();
    drop(leases);
    assert!(matches!(
        spool.deliveries_of(id).await.unwrap()[0].state,
        State::Delivered { .. }
    ));
    spool.pause("erp", true).await.unwrap();
    assert!(consumer.is_paused("erp"));
    spool.close().await.unwrap();
}
