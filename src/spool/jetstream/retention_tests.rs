//! The lease order the contract's retention tests rely on, as JetStream
//! makes it with two consumers per subscription (`consumers.rs`): a retry
//! due now goes before first attempts stored earlier, on every relay (the
//! retries' consumer is fetched first, whichever relay woke the retry);
//! and what retention purges of an invoice with its last notification.

use std::time::Duration;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use super::Names;
use crate::delivery::Outcome;
use crate::spool::contract::support::{attempt, lease_now, open_keeping, routes, store_new};
use crate::spool::contract::Keep;
use crate::spool::{CheckOutcome, ReconcileCheck};

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

/// The contract sees an invoice's checks go from the index; the stream
/// loses them too (here both of the invoice's notifications go in one
/// `maintain`).
#[tokio::test(start_paused = true)]
async fn retention_purges_an_invoice_s_checks_from_the_stream_with_its_last_notification() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let keep = Keep {
        retention: Duration::from_secs(120),
        dead_retention: None,
    };
    let (spool, clock) = open_keeping(&fixture, keep, &[]).await;
    let now = clock.now_ms();
    store_new(&spool, "a", now).await;
    store_new(&spool, "b", now).await;
    let check = ReconcileCheck {
        at_ms: now,
        by: None,
        outcome: CheckOutcome::Pending { said: "x".into() },
    };
    // `notification` tells invoice tus/17032.
    spool.record_check("tus", "17032", check).await.unwrap();
    let names = Names::new(&fixture.config_for("index").jetstream.prefix);
    let slot = names.check("tus", "17032", 0);
    let held = || in_stream(fixture.url(), &names.stream(), &slot);
    assert!(held());

    tokio::time::sleep(Duration::from_secs(121)).await;
    assert_eq!(spool.maintain().await.unwrap().notifications, 2);
    assert!(spool.checks("tus", "17032").await.unwrap().is_empty());
    assert!(!held(), "the check is purged from the stream");
    spool.close().await.unwrap();
}

/// Whether `stream` holds a message on `subject`, asked by a plain client
/// on a runtime of its own (the test's tokio time is paused).
fn in_stream(url: &str, stream: &str, subject: &str) -> bool {
    let (url, stream, subject) = (url.to_owned(), stream.to_owned(), subject.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream(stream).await.unwrap();
            stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .is_ok()
        })
    })
    .join()
    .unwrap()
}
