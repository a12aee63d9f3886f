//! The writer's deadlines run on the spool's clock: on a manual clock an
//! outcome is flushed when the clock reaches its deadline, whatever the
//! real time between. A full spool takes stores again only once it has
//! the room to resume, not as soon as one fits.

use std::time::Duration;

use super::super::SledSpool;
use super::space::ROOM_TO_RESUME;
use crate::clock::Clock;
use crate::config::ByteSize;
use crate::delivery::{Outcome, Schedule};
use crate::spool::contract::support::{notification, received, routes};
use crate::spool::sled::tests::config;
use crate::spool::{SpoolError, Stored};

/// Answered once the writer has taken what was queued before, and made
/// the flush due by then.
async fn writer_caught_up(spool: &SledSpool) {
    assert!(
        spool.writer_alive(Duration::from_secs(10)).await,
        "the writer did not answer"
    );
}

#[tokio::test]
async fn an_outcome_is_flushed_when_the_spools_clock_reaches_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_700_000_000_000);
    let spool = SledSpool::open(&config(dir.path()), routes(&["erp"]), clock).unwrap();
    let now = clock.now_ms();
    let stored = spool
        .store(received(now), notification("a"), None)
        .await
        .unwrap();
    assert!(matches!(stored, Stored::New(_)), "{stored:?}");
    let leases = tokio::time::timeout(Duration::from_secs(10), spool.lease("erp", 1))
        .await
        .expect("nothing due")
        .unwrap();
    let schedule = Schedule::try_new(vec![Duration::from_secs(10)], 0.0).unwrap();
    let mut delivery = leases[0].delivery.clone();
    delivery.start(now).unwrap();
    let delivered = Outcome::Status {
        code: 200,
        retry_after_ms: None,
    };
    delivery.finish(&schedule, delivered, now + 1, 0.0).unwrap();

    let before = spool.flush_starts();
    spool.complete(&leases[0], &delivery).await.unwrap();
    writer_caught_up(&spool).await;
    assert_eq!(spool.flush_starts(), before, "flushed before its deadline");
    clock.advance(Duration::from_millis(9));
    writer_caught_up(&spool).await;
    assert_eq!(spool.flush_starts(), before, "flushed before its deadline");
    clock.advance(Duration::from_millis(1));
    writer_caught_up(&spool).await;
    assert_eq!(
        spool.flush_starts(),
        before + 1,
        "one flush for the outcome, at its deadline on the spool's clock"
    );
    spool.close().await.unwrap();
}

#[tokio::test]
async fn a_full_spool_takes_stores_again_only_once_it_has_the_room_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let min_free = 4 << 20;
    let mut config = config(dir.path());
    config.sled.min_free = ByteSize(min_free);
    let clock = Clock::manual(1_700_000_000_000);
    let spool = SledSpool::open(&config, routes(&["erp"]), clock).unwrap();
    let store = async |key: &str| {
        spool
            .store(received(clock.now_ms()), notification(key), None)
            .await
    };

    spool.pretend_free_space(64 << 20);
    assert!(matches!(store("a").await, Ok(Stored::New(_))));
    spool.pretend_free_space(min_free + (8 << 10));
    let refused = store("b").await;
    assert!(
        matches!(refused, Err(SpoolError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(!spool.health().writable);
    // Room for one small store, as sled's freed segments may give back:
    // not yet enough to take stores again.
    spool.pretend_free_space(min_free + (128 << 10));
    let refused = store("c").await;
    assert!(
        matches!(refused, Err(SpoolError::Unavailable(_))),
        "{refused:?}"
    );
    writer_caught_up(&spool).await;
    assert!(!spool.health().writable, "writable again on 128 KiB");
    spool.pretend_free_space(min_free + ROOM_TO_RESUME);
    assert!(matches!(store("d").await, Ok(Stored::New(_))));
    assert!(spool.health().writable);
    spool.close().await.unwrap();
}
