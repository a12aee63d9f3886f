//! The lease journal against a real nats-server: a relay that crashed
//! holding a lease gives it back when it opens again, at once, not after
//! the consumer's ack wait (90 s here).

use std::time::Duration;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use crate::clock::Clock;
use crate::spool::contract::support::{notification, received, routes};
use crate::spool::contract::Fixture;
use crate::spool::Stored;

#[tokio::test]
async fn a_relay_that_crashed_holding_leases_gives_them_back_when_it_opens_again() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let relay = fixture
        .open_relay("a", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let now = Clock::system().now_ms();
    let Stored::New(id) = relay.store(received(now), notification("k")).await.unwrap() else {
        panic!("a first store is new");
    };
    let held = relay.lease("erp", 10).await.unwrap();
    assert_eq!(held[0].id(), id);
    // The crash: nothing given back, the lease is forgotten, not dropped.
    std::mem::forget(held);
    fixture.crash(relay).await;

    let relay = fixture
        .open_relay("a", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), relay.lease("erp", 10))
        .await
        .expect("given back at open, not after the ack wait")
        .unwrap();
    assert_eq!(again[0].id(), id);
    relay.close().await.unwrap();
}

/// A lease let go of just before the crash: its nak had not gone out yet,
/// so the journal must still hold it when the relay opens again (found by
/// the contract's property: the delivery came back only after the ack
/// wait).
#[tokio::test]
async fn a_lease_let_go_of_just_before_a_crash_is_given_back_when_the_relay_opens_again() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let relay = fixture
        .open_relay("a", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let now = Clock::system().now_ms();
    let Stored::New(id) = relay.store(received(now), notification("k")).await.unwrap() else {
        panic!("a first store is new");
    };
    let held = relay.lease("erp", 10).await.unwrap();
    assert_eq!(held[0].id(), id);
    drop(held);
    fixture.crash(relay).await;

    let relay = fixture
        .open_relay("a", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), relay.lease("erp", 10))
        .await
        .expect("given back at open, not after the ack wait")
        .unwrap();
    assert_eq!(again[0].id(), id);
    relay.close().await.unwrap();
}
