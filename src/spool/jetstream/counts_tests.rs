//! The counts the fold keeps, against a real nats-server: the same on
//! every relay sharing the spool, kept across a reopen, and what a fresh
//! index folded from the stream's start counts; each equal to a recount
//! through the interface.

use std::time::Duration;

use bytes::Bytes;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use crate::clock::Clock;
use crate::delivery::Outcome;
use crate::spool::contract::counts::{counts, recount, sources, sub};
use crate::spool::contract::support::{attempt, lease_now, ok, received, routes, store_new};
use crate::spool::{Counts, Spool};

/// `spool`'s counts once they equal `want` (another relay folds a
/// moment later), or its last ones after 5 s.
pub(super) async fn counts_become(spool: &Spool, want: &Counts) -> Counts {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = spool.counts();
        if &now == want || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Relay `name`'s index, opened once its last handle let go of it (the
/// lock is held a moment after a close).
async fn index_db(fixture: &JetStreamFixture, name: &str) -> sled::Db {
    let path = fixture.config_for(name).jetstream.index_path;
    for _ in 0..100 {
        if let Ok(db) = sled::open(&path) {
            return db;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sled::open(&path).unwrap()
}

#[tokio::test]
async fn the_counts_are_the_same_on_every_relay_across_a_reopen_and_a_fold_from_the_start() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let names = ["erp", "crm"];
    let open = |name: &'static str| fixture.open_relay(name, routes(&names), Clock::system());
    let (a, b) = (open("a").await.unwrap(), open("b").await.unwrap());
    let now = Clock::system().now_ms();
    store_new(&a, "delivered", now).await;
    store_new(&a, "dead", now).await;
    let mut junk = received(now);
    junk.source = "nube".into();
    junk.body = Bytes::from_static(b"junk");
    a.quarantine(junk, "not_json", "x".into()).await.unwrap();

    // On relay a: one delivered; one failed twice (its retry due at once:
    // the attempt is dated 20 s back, the schedule waits 10 s), so dead.
    let leases = lease_now(&a, "erp", 2).await;
    assert_eq!(leases.len(), 2);
    attempt(&a, &leases[0], ok(), now).await;
    attempt(&a, &leases[1], Outcome::Connect, now - 20_000).await;
    drop(leases);
    let retry = lease_now(&a, "erp", 1).await;
    attempt(&a, &retry[0], Outcome::Connect, now).await;
    drop(retry);
    store_new(&a, "waiting", now).await;

    let mut want = counts(3, 1, &[("crm", sub(3, 0, 0, 0)), ("erp", sub(1, 1, 1, 0))]);
    want.sources = sources(&[("nube", 0, 1), ("tus", 3, 0)]);
    assert_eq!(a.counts(), want, "on the relay that made the changes");
    assert_eq!(recount(&a).await, want, "what the interface shows");
    assert_eq!(counts_become(&b, &want).await, want, "on the other relay");

    b.close().await.unwrap();
    let mut b = open("b").await.unwrap();
    assert_eq!(b.counts(), want, "kept across a reopen");
    // An index whose counts are damaged, or that holds none (folded by an
    // older build), is folded again from the start.
    for (key, value) in [(&b"Cs/erp"[..], Some(&b"\x01junk"[..])), (b"C=", None)] {
        b.close().await.unwrap();
        let db = index_db(&fixture, "b").await;
        match value {
            Some(value) => db.insert(key, value).map(|_| ()),
            None => db.remove(key).map(|_| ()),
        }
        .unwrap();
        db.flush().unwrap();
        drop(db);
        b = open("b").await.unwrap();
        assert_eq!(b.counts(), want, "{key:?} tampered with");
    }
    let c = open("c").await.unwrap();
    assert_eq!(
        c.counts(),
        want,
        "a new index folds the stream from its start"
    );
    for spool in [a, b, c] {
        spool.close().await.unwrap();
    }
}
