//! The lease order the contract's retention tests rely on, as JetStream
//! makes it with two consumers per subscription (`consumers.rs`): a retry
//! due now goes before first attempts stored earlier, on every relay (the
//! retries' consumer is fetched first, whichever relay woke the retry).

use std::time::Duration;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use crate::delivery::Outcome;
use crate::spool::contract::support::{attempt, lease_now, open_keeping, routes, store_new};
use crate::spool::contract::Keep;

#[tokio::test(start_paused = true)]
async fn a_due_retry_goes_before_first_attempts_stored_earlier_on_every_relay() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let (a, clock) = open_keeping(&fixture, Keep::default(), &["erp"]).await;
    let now = clock.now_ms();
    let failed = store_new(&a, "failed", now).await;
    let leases = lease_now(&a, "erp", 1).await;
    attempt(&a, &leases[0], Outcome::Connect, now).await;
    drop(leases);
    let first = store_new(&a, "first", now).await;
    let second = store_new(&a, "second", now).await;
    tokio::time::sleep(Duration::from_secs(11)).await;

    // Another relay wakes the retry and hands it out first.
    let b = fixture
        .open_relay("b", routes(&["erp"]), clock)
        .await
        .unwrap();
    let leases = lease_now(&b, "erp", 1).await;
    assert_eq!(leases[0].id(), failed, "the retry first");
    // The first attempts then, in the order they were stored, on either.
    let next = lease_now(&a, "erp", 2).await;
    let ids: Vec<_> = next.iter().map(|l| l.id()).collect();
    assert_eq!(ids, [first, second]);
    drop((leases, next));
    b.close().await.unwrap();
    a.close().await.unwrap();
}
