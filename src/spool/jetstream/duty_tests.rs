//! The retention duty's lease across relays (`duty.rs`, `retention.rs`):
//! of two relays sharing a spool only the holder of `duty.retention`
//! removes, every relay's index drops what it removed; a holder that
//! closes gives the duty back and another relay takes it at once, and
//! one that crashes holding it loses it once the lease's key expires (the
//! bucket's max age, real time).

use std::time::Duration;

use tokio::time::Instant;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use super::provision::DUTY_TTL;
use crate::clock::Clock;
use crate::spool::contract::support::{attempt, lease_now, ok, routes, store_new};
use crate::spool::{Backend, NotificationId, Spool};

/// A notification stored on `spool` and delivered.
async fn delivered(spool: &Spool, dedup: &str, clock: Clock) -> NotificationId {
    let id = store_new(spool, dedup, clock.now_ms()).await;
    let leases = lease_now(spool, "erp", 1).await;
    assert_eq!(leases[0].id(), id);
    attempt(spool, &leases[0], ok(), clock.now_ms()).await;
    id
}

/// Whether `spool`'s index lets go of `id` within a few seconds.
async fn gone_from(spool: &Spool, id: NotificationId) -> bool {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if spool.notification(id).await.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `spool.maintain()` until it removes something, for at most the
/// lease's TTL and a little more; how many it removed at last.
async fn maintain_until_taken(spool: &Spool) -> u64 {
    let until = Instant::now() + DUTY_TTL + Duration::from_secs(5);
    loop {
        let removed = spool.maintain().await.unwrap().notifications;
        if removed > 0 || Instant::now() > until {
            return removed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_removes_and_the_duty_passes_on_when_it_stops() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let hour = Duration::from_secs(3600);
    let clock = Clock::manual(1_700_000_000_000);
    let a = fixture
        .open_relay("a", routes(&["erp"]), clock)
        .await
        .unwrap();
    let b = fixture
        .open_relay("b", routes(&["erp"]), clock)
        .await
        .unwrap();

    let first = delivered(&a, "first", clock).await;
    clock.advance(2 * hour);
    assert_eq!(
        a.maintain().await.unwrap().notifications,
        1,
        "a takes the duty"
    );
    assert!(gone_from(&b, first).await, "b's fold drops it too");
    // The counts move just after the record goes (the same fold step).
    let until = Instant::now() + Duration::from_secs(5);
    while b.counts().notifications != 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.counts().notifications, 0, "with its counts");

    let second = delivered(&a, "second", clock).await;
    clock.advance(2 * hour);
    assert_eq!(
        b.maintain().await.unwrap().notifications,
        0,
        "b does not hold it"
    );
    assert!(a.notification(second).await.unwrap().is_some());
    assert_eq!(a.maintain().await.unwrap().notifications, 1, "a renews it");

    // The holder closes and gives the duty back: b takes it at its next
    // try, without waiting for the lease to lapse.
    let third = delivered(&b, "third", clock).await;
    clock.advance(2 * hour);
    a.close().await.unwrap();
    let closed = Instant::now();
    assert_eq!(maintain_until_taken(&b).await, 1);
    assert!(
        closed.elapsed() < DUTY_TTL / 2,
        "a clean stop hands the duty over at once, not after {:?}",
        closed.elapsed()
    );
    assert!(gone_from(&b, third).await);

    // b crashes holding it: a third relay takes it after the TTL.
    let c = fixture
        .open_relay("c", routes(&["erp"]), clock)
        .await
        .unwrap();
    let fourth = delivered(&c, "fourth", clock).await;
    clock.advance(2 * hour);
    assert_eq!(c.maintain().await.unwrap().notifications, 0, "b holds it");
    match &b.backend {
        Backend::Jetstream(backend) => backend.crash(),
        Backend::Sled(_) => unreachable!(),
    }
    drop(b);
    let crashed = Instant::now();
    assert_eq!(maintain_until_taken(&c).await, 1);
    assert!(
        crashed.elapsed() > DUTY_TTL / 2,
        "not before the crashed holder's lease lapsed"
    );
    assert!(gone_from(&c, fourth).await);
    c.close().await.unwrap();
}
