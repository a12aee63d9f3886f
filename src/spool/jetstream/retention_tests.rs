//! Retention on JetStream (`retention.rs`) in the order its leases hand
//! work out: what the contract's own retention test checks (it is off
//! until the lease hands a due retry out before a later first attempt, as
//! sled does): the delivered notification goes with its states and its
//! counts, a copy stored past the window keeps the dedup key, the dead and
//! the never attempted stay, the quarantined body goes.

use std::time::Duration;

use bytes::Bytes;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use super::moves_tests::dead_one;
use crate::spool::contract::support::{
    attempt, lease_now, ok, open_keeping, received, store, store_new,
};
use crate::spool::contract::{Fixture, Keep};
use crate::spool::Stored;

#[tokio::test(start_paused = true)]
async fn retention_removes_what_is_over_and_keeps_the_rest() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let keep = Keep {
        retention: Duration::from_secs(120),
        dead_retention: None,
    };
    let (spool, clock) = open_keeping(&fixture, keep, &["erp"]).await;
    let now = clock.now_ms();
    let dead = dead_one(&spool, "dead", now).await;
    let delivered = store_new(&spool, "delivered", now).await;
    let waiting = store_new(&spool, "waiting", now).await;
    let leases = lease_now(&spool, "erp", 1).await;
    assert_eq!(leases[0].id(), delivered);
    attempt(&spool, &leases[0], ok(), clock.now_ms()).await;
    drop(leases);
    let mut junk = received(now);
    junk.body = Bytes::from_static(b"junk");
    spool
        .quarantine(junk, "not_json", "x".into())
        .await
        .unwrap();
    assert_eq!(spool.maintain().await.unwrap().notifications, 0);

    tokio::time::sleep(Duration::from_secs(200)).await;
    let resent = match store(&spool, "delivered", clock.now_ms()).await {
        Stored::New(id) => id,
        other => panic!("past the window: {other:?}"),
    };
    let done = spool.maintain().await.unwrap();
    assert_eq!((done.notifications, done.quarantined), (1, 1), "{done:?}");
    assert!(matches!(
        store(&spool, "delivered", clock.now_ms()).await,
        Stored::Duplicate(id) if id == resent
    ));
    assert!(spool.notification(delivered).await.unwrap().is_none());
    assert!(spool.deliveries_of(delivered).await.unwrap().is_empty());
    assert!(spool.notification(dead).await.unwrap().is_some());
    assert!(spool.notification(waiting).await.unwrap().is_some());
    assert_eq!(spool.quarantined().count().await, 0);
    let counts = spool.counts();
    assert_eq!((counts.notifications, counts.quarantined), (3, 0));
    assert_eq!(fixture.recount(&spool).await, counts, "as a refold counts");
    spool.close().await.unwrap();
}
