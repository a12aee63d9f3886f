//! Replay, retention (with `dead_retention`) and orphans: what is over
//! goes and the rest stays; a dead delivery comes back with its history;
//! deliveries of a removed subscription are reported, given away or
//! purged.

use std::time::Duration;

use bytes::Bytes;

use super::support::{
    attempt, lease_now, nothing_due, ok, open, open_keeping, received, spool_with_orphans, store,
    store_new,
};
use super::{Fixture, Keep};
use crate::delivery::{Delivery, Outcome, State};
use crate::spool::{Lease, Maintained, NotificationId, SpoolError, Stored};

pub(crate) async fn retention_removes_what_is_over_and_keeps_the_rest(fixture: &impl Fixture) {
    let keep = Keep {
        retention: Duration::from_secs(120),
        ..Keep::default()
    };
    let (spool, clock) = open_keeping(fixture, keep, &["erp"]).await;
    let now = clock.now_ms();
    let delivered = store_new(&spool, "delivered", now).await;
    let dead = store_new(&spool, "dead", now).await;
    let waiting = store_new(&spool, "waiting", now).await;
    let leases = lease_now(&spool, "erp", 2).await;
    attempt(&spool, &leases[0], ok(), now).await;
    // One wait in the schedule: two failures make it dead.
    attempt(&spool, &leases[1], Outcome::Connect, now).await;
    drop(leases);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let retry = lease_now(&spool, "erp", 1).await;
    assert_eq!(retry[0].id(), dead);
    let delivery = attempt(&spool, &retry[0], Outcome::Connect, now + 11_000).await;
    assert!(matches!(delivery.state, State::Dead { .. }));
    drop(retry);
    let mut quarantined = received(now);
    quarantined.body = Bytes::from_static(b"junk");
    spool
        .quarantine(quarantined, "not_json", "x".into())
        .await
        .unwrap();

    // Inside the dedup window, nothing expires.
    assert_eq!(spool.maintain().await.unwrap(), Maintained::default());
    tokio::time::sleep(Duration::from_secs(61)).await;
    let done = spool.maintain().await.unwrap();
    assert_eq!(
        done.dedup_entries, 0,
        "dedup entries go with their notification, not by a time index of their own: {done:?}"
    );
    assert_eq!(done.notifications, 0);

    tokio::time::sleep(Duration::from_secs(120)).await;
    // Past the window the entry is stale: a resend is new and takes it over.
    let resent = match store(&spool, "delivered", clock.now_ms()).await {
        Stored::New(id) => id,
        other => panic!("past the window: {other:?}"),
    };
    let done = spool.maintain().await.unwrap();
    assert_eq!(done.notifications, 1, "only the delivered one goes");
    // The first copy went, and not the dedup entry its resend took over.
    assert!(matches!(
        store(&spool, "delivered", clock.now_ms()).await,
        Stored::Duplicate(id) if id == resent
    ));
    assert_eq!(done.quarantined, 1);
    assert!(spool.notification(delivered).await.unwrap().is_none());
    assert!(spool.deliveries_of(delivered).await.unwrap().is_empty());
    assert!(
        spool.notification(dead).await.unwrap().is_some(),
        "dead stays for an admin"
    );
    assert!(
        spool.notification(waiting).await.unwrap().is_some(),
        "never attempted stays"
    );
    assert_eq!(spool.quarantined().count().await, 0);
}

pub(crate) async fn dead_retention_lets_dead_deliveries_go_too(fixture: &impl Fixture) {
    let keep = Keep {
        retention: Duration::from_secs(120),
        dead_retention: Some(Duration::from_secs(60)),
    };
    let (spool, clock) = open_keeping(fixture, keep, &["erp"]).await;
    let now = clock.now_ms();
    let dead = store_new(&spool, "dead", now).await;
    let leases = lease_now(&spool, "erp", 1).await;
    attempt(&spool, &leases[0], Outcome::Connect, now).await;
    drop(leases);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let retry = lease_now(&spool, "erp", 1).await;
    attempt(&spool, &retry[0], Outcome::Connect, now + 11_000).await;
    drop(retry);
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(spool.maintain().await.unwrap().notifications, 1);
    assert!(spool.notification(dead).await.unwrap().is_none());
}

pub(crate) async fn a_replay_brings_a_dead_delivery_back_with_its_history(fixture: &impl Fixture) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let id = store_new(&spool, "a", now).await;
    assert!(
        !spool.replay(id, "erp", now).await.unwrap(),
        "never attempted: nothing to replay"
    );
    let leases = lease_now(&spool, "erp", 1).await;
    attempt(&spool, &leases[0], Outcome::Connect, now).await;
    drop(leases);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let retry = lease_now(&spool, "erp", 1).await;
    attempt(&spool, &retry[0], Outcome::Connect, now).await;
    drop(retry);
    assert!(nothing_due(&spool, "erp", Duration::from_secs(3600)).await);
    let now = clock.now_ms();
    assert!(spool.replay(id, "erp", now).await.unwrap());
    let again = lease_now(&spool, "erp", 1).await;
    assert_eq!(again[0].id(), id);
    assert_eq!(again[0].delivery().attempts.len(), 2);
    let unknown = NotificationId::new(now);
    assert!(matches!(
        spool.replay(unknown, "erp", now).await,
        Err(SpoolError::NotFound(_))
    ));
}

pub(crate) async fn a_removed_subscription_s_deliveries_are_reported_as_orphans(
    fixture: &impl Fixture,
) {
    spool_with_orphans(fixture).await;
    let (spool, _) = open(fixture, &["erp"]).await;
    let health = spool.health();
    assert_eq!(
        health.orphans.get("old"),
        Some(&2),
        "one retry and one never attempted: {health:?}"
    );
    assert!(!health.orphans.contains_key("erp"));
    // That the check refuses a spool in use is sled's (its lock): see
    // `sled::tests::durability`.
    spool.close().await.unwrap();
    let report = fixture.check().await.unwrap();
    assert_eq!(report.orphans.get("old"), Some(&2));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

pub(crate) async fn orphans_can_be_given_to_another_subscription_and_are_then_delivered(
    fixture: &impl Fixture,
) {
    let [a, b] = spool_with_orphans(fixture).await;
    let (spool, clock) = open(fixture, &["erp", "new"]).await;
    let now = clock.now_ms();
    assert!(matches!(
        spool.reassign_orphans("erp", Some("new"), now).await,
        Err(SpoolError::NotOrphan(_))
    ));
    assert!(matches!(
        spool.reassign_orphans("old", Some("gone"), now).await,
        Err(SpoolError::NotOrphan(_))
    ));
    assert_eq!(
        spool
            .reassign_orphans("old", Some("new"), now)
            .await
            .unwrap(),
        2
    );
    assert!(spool.health().orphans.is_empty());
    let leases = lease_now(&spool, "new", 10).await;
    let mut ids: Vec<_> = leases.iter().map(Lease::id).collect();
    ids.sort();
    assert_eq!(ids, [a, b]);
    for lease in &leases {
        attempt(&spool, lease, ok(), now).await;
    }
    drop(leases);
    let deliveries = spool.deliveries_of(a).await.unwrap();
    let state = |name: &str| {
        deliveries
            .iter()
            .find(|d| d.subscription == name)
            .map(|d| d.state)
    };
    assert!(matches!(state("old"), Some(State::Purged { .. })));
    assert!(matches!(state("new"), Some(State::Delivered { .. })));
    assert_eq!(
        deliveries
            .iter()
            .find(|d| d.subscription == "old")
            .unwrap()
            .attempts
            .len(),
        1,
        "the orphan's history is kept"
    );
    // Everything over: retention may now take them.
    tokio::time::sleep(Duration::from_secs(3700)).await;
    assert_eq!(spool.maintain().await.unwrap().notifications, 2);
    spool.close().await.unwrap();
    let (spool, _) = open(fixture, &["erp", "new"]).await;
    assert!(
        spool.health().orphans.is_empty(),
        "nothing waits for `old` any more"
    );
}

pub(crate) async fn orphans_can_be_purged(fixture: &impl Fixture) {
    let [a, _] = spool_with_orphans(fixture).await;
    let (spool, clock) = open(fixture, &["erp"]).await;
    assert_eq!(
        spool
            .reassign_orphans("old", None, clock.now_ms())
            .await
            .unwrap(),
        2
    );
    assert!(spool.health().orphans.is_empty());
    assert!(spool
        .deliveries_of(a)
        .await
        .unwrap()
        .iter()
        .all(Delivery::is_final));
}
