//! The JetStream store against a real nats-server, beyond the contract:
//! the dedup across relays sharing one spool (each with its own index),
//! under a race, and past the window; a release taking a body out of the
//! quarantine; the reads by id and the walks from a point.

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use crate::clock::Clock;
use crate::spool::contract::support::{notification, received, routes};
use crate::spool::{Spool, Stored};

async fn relays(fixture: &JetStreamFixture) -> (Spool, Spool) {
    let a = fixture
        .open_relay("a", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let b = fixture
        .open_relay("b", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn a_key_is_stored_once_within_the_window_on_any_relay_and_taken_over_after_it() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let (a, b) = relays(&fixture).await;
    let t = 1_700_000_000_000;
    let Stored::New(first) = a.store(received(t), notification("k")).await.unwrap() else {
        panic!("the first store of a key is new");
    };
    let resent = b.store(received(t + 59_999), notification("k")).await;
    assert_eq!(
        resent.unwrap(),
        Stored::Duplicate(first),
        "on the other relay"
    );
    // The window is judged on received_ms: 60 s after the first, a new copy.
    let Stored::New(second) = a
        .store(received(t + 60_000), notification("k"))
        .await
        .unwrap()
    else {
        panic!("past the window the key is taken over");
    };
    assert_ne!(second, first);
    let resent = b.store(received(t + 61_000), notification("k")).await;
    assert_eq!(resent.unwrap(), Stored::Duplicate(second));
    // Another key is its own.
    assert!(matches!(
        b.store(received(t), notification("other")).await.unwrap(),
        Stored::New(_)
    ));

    // Relay b folded relay a's store in before its own answer.
    let record = b.notification(second).await.unwrap().expect("indexed");
    assert_eq!(record.meta.dedup_key, "k");
    assert_eq!(record.meta.subscriptions, ["erp"]);
    assert_eq!(record.body, received(0).body);
    let all: Vec<_> = a.notifications().collect().await.unwrap();
    let ids: Vec<_> = all.iter().map(|r| r.meta.id.clone()).collect();
    assert_eq!(ids[..2], [first.to_string(), second.to_string()]);
    let older: Vec<_> = a
        .notifications_newest_first(Some(second))
        .collect()
        .await
        .unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].meta.id, first.to_string());
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_storing_one_key_at_once_keep_one_copy() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let (a, b) = relays(&fixture).await;
    let t = 1_700_000_000_000;
    for n in 0..20 {
        let key = format!("race-{n}");
        let (x, y) = tokio::join!(
            a.store(received(t + n), notification(&key)),
            b.store(received(t + n), notification(&key)),
        );
        match (x.unwrap(), y.unwrap()) {
            (Stored::New(x), Stored::Duplicate(y)) | (Stored::Duplicate(y), Stored::New(x)) => {
                assert_eq!(x, y, "{key}: the duplicate names the stored copy")
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    assert_eq!(a.notifications().count().await, 20);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_release_or_a_discard_takes_the_body_out_of_the_quarantine() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let (a, b) = relays(&fixture).await;
    let held = a
        .quarantine(received(1), "signature", "bad".into())
        .await
        .unwrap();
    assert!(a.quarantined_body(held).await.unwrap().is_some());
    let Stored::New(id) = a
        .release(held, received(2), notification("released"))
        .await
        .unwrap()
    else {
        panic!("a release stores");
    };
    assert!(!a.is_quarantined(held).await.unwrap());
    assert_eq!(a.quarantined().count().await, 0);
    assert!(a.notification(id).await.unwrap().is_some());
    // The other relay's index folds the release in too.
    b.store(received(3), notification("later")).await.unwrap();
    assert!(!b.is_quarantined(held).await.unwrap());
    let gone = a.release(held, received(4), notification("again")).await;
    assert!(
        matches!(gone, Err(crate::spool::SpoolError::NotFound(_))),
        "{gone:?}"
    );

    // A body released as a resend of a stored key leaves the quarantine too.
    let resent = b
        .quarantine(received(5), "signature", "bad".into())
        .await
        .unwrap();
    let stored = b
        .release(resent, received(6), notification("released"))
        .await
        .unwrap();
    assert_eq!(stored, Stored::Duplicate(id));
    assert!(!b.is_quarantined(resent).await.unwrap());
    assert!(b.quarantined_body(resent).await.unwrap().is_none());

    // A discard takes a body out for good, on every relay.
    let dropped = a
        .quarantine(received(7), "signature", "bad".into())
        .await
        .unwrap();
    b.discard(dropped).await.unwrap();
    assert!(!b.is_quarantined(dropped).await.unwrap());
    let again = a.discard(dropped).await;
    assert!(
        matches!(again, Err(crate::spool::SpoolError::NotFound(_))),
        "{again:?}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn an_index_catches_up_at_open_and_is_rebuilt_for_a_stream_made_again() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let open = |name: &'static str| fixture.open_relay(name, routes(&["erp"]), Clock::system());
    let a = open("a").await.unwrap();
    let Stored::New(stored) = a.store(received(1), notification("k")).await.unwrap() else {
        panic!("a new key");
    };
    let held = a
        .quarantine(received(2), "signature", "bad".into())
        .await
        .unwrap();
    a.close().await.unwrap();

    // A relay with a new index folds the whole stream before it answers.
    let b = open("b").await.unwrap();
    assert_eq!(b.notifications().count().await, 1);
    assert!(b.is_quarantined(held).await.unwrap());
    b.close().await.unwrap();
    // One reopened from its checkpoint folds nothing twice.
    let a = open("a").await.unwrap();
    let again = a.store(received(3), notification("k")).await.unwrap();
    assert_eq!(again, Stored::Duplicate(stored));
    assert_eq!(a.notifications().count().await, 1);
    a.close().await.unwrap();

    // The stream deleted and made again: the old index is dropped.
    fixture.remove_spool();
    let a = open("a").await.unwrap();
    assert_eq!(a.notifications().count().await, 0);
    assert!(!a.is_quarantined(held).await.unwrap());
    a.close().await.unwrap();
}
