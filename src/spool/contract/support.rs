//! What the contract's tests share: opening a fixture's spool on a clock
//! that follows tokio's, a notification as ingress would store it, and
//! what the forwarder does with a lease.

use std::time::Duration;

use bytes::Bytes;

use super::{Fixture, Keep};
use crate::clock::Clock;
use crate::delivery::{Delivery, Outcome, Schedule};
use crate::providers::Notification;
use crate::spool::routes::Route;
use crate::spool::{Lease, NotificationId, Received, Routes, Spool, Stored};

pub(crate) fn routes(names: &[&str]) -> Routes {
    Routes::new(names.iter().map(|n| Route::all(n)).collect())
}

/// The spool's clock is the tests' clock too: two clocks that follow a
/// paused tokio clock drift apart by the real time between their creation.
pub(crate) async fn open(fixture: &impl Fixture, names: &[&str]) -> (Spool, Clock) {
    open_keeping(fixture, Keep::default(), names).await
}

/// [`open`], with these retention settings.
pub(crate) async fn open_keeping(
    fixture: &impl Fixture,
    keep: Keep,
    names: &[&str],
) -> (Spool, Clock) {
    let clock = Clock::following_tokio();
    let spool = fixture.open(keep, routes(names), clock).await.unwrap();
    (spool, clock)
}

pub(crate) fn received(received_ms: i64) -> Received {
    Received {
        source: "tus".into(),
        body: Bytes::from_static(b"{\"hook_id\": \"x\"}"),
        content_type: Some("application/json".into()),
        headers: vec![],
        peer: "127.0.0.1".into(),
        received_ms,
    }
}

pub(crate) fn notification(dedup: &str) -> Notification {
    Notification {
        event_type: "facturacion.emitido".into(),
        subject: Some("17032".into()),
        dedup_key: dedup.into(),
        provider_time: None,
        status: crate::providers::InvoiceStatus::Unknown,
        flags: vec![],
    }
}

pub(crate) async fn store(spool: &Spool, dedup: &str, at: i64) -> Stored {
    spool
        .store(received(at), notification(dedup))
        .await
        .unwrap()
}

pub(crate) async fn store_new(spool: &Spool, dedup: &str, at: i64) -> NotificationId {
    match store(spool, dedup, at).await {
        Stored::New(id) => id,
        other => panic!("{other:?}"),
    }
}

/// What the forwarder does with one lease: start, finish, complete.
pub(crate) async fn attempt(spool: &Spool, lease: &Lease, outcome: Outcome, now: i64) -> Delivery {
    let schedule = Schedule::try_new(vec![Duration::from_secs(10)], 0.0).unwrap();
    let mut delivery = lease.delivery().clone();
    delivery.start(now).unwrap();
    delivery.finish(&schedule, outcome, now + 1, 0.0).unwrap();
    spool.complete(lease, &delivery).await.unwrap();
    delivery
}

pub(crate) fn ok() -> Outcome {
    Outcome::Status {
        code: 200,
        retry_after_ms: None,
    }
}

pub(crate) async fn lease_now(spool: &Spool, name: &str, max: usize) -> Vec<Lease> {
    tokio::time::timeout(Duration::from_secs(5), spool.lease(name, max))
        .await
        .expect("nothing due")
        .unwrap()
}

/// Whether `lease` has nothing due within `within` (of tokio time).
pub(crate) async fn nothing_due(spool: &Spool, name: &str, within: Duration) -> bool {
    match tokio::time::timeout(within, spool.lease(name, 10)).await {
        Err(_) => true,
        Ok(found) => {
            if let Ok(found) = &found {
                for l in found {
                    eprintln!(
                        "due: {} {:?} {:?}",
                        l.id().0 .0,
                        l.delivery().state,
                        l.delivery().attempts.len()
                    );
                }
            }
            false
        }
    }
}

/// A spool where `old` (then removed from the config) has one retry and
/// one never-attempted delivery waiting, and `erp` has both delivered.
pub(crate) async fn spool_with_orphans(fixture: &impl Fixture) -> [NotificationId; 2] {
    let now = Clock::system().now_ms();
    let (spool, _) = open(fixture, &["erp", "old"]).await;
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let leases = lease_now(&spool, "old", 1).await;
    attempt(&spool, &leases[0], Outcome::Timeout, now).await;
    drop(leases);
    for lease in lease_now(&spool, "erp", 2).await {
        attempt(&spool, &lease, ok(), now).await;
    }
    spool.close().await.unwrap();
    [a, b]
}
