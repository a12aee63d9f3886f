use super::routes::Route;
use super::*;
use crate::config::{ByteSize, HumanDuration, SledConfig, SpoolBackend};
use crate::delivery::{Outcome, Schedule, State};
use std::time::Duration;

pub(crate) fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        backend: SpoolBackend::Sled,
        dedup_window: HumanDuration(Duration::from_secs(60)),
        retention: HumanDuration(Duration::from_secs(3600)),
        dead_retention: None,
        sled: SledConfig {
            path: dir.join("spool"),
            cache_capacity: ByteSize(8 << 20),
            sync_data: true,
            min_free: ByteSize(0),
        },
    }
}

pub(crate) fn routes(names: &[&str]) -> Routes {
    Routes::new(names.iter().map(|n| Route::all(n)).collect())
}

/// The spool's clock is the tests' clock too: two clocks that follow a
/// paused tokio clock drift apart by the real time between their creation.
pub(crate) async fn open(dir: &Path, names: &[&str]) -> (Spool, Clock) {
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config(dir), routes(names), clock)
        .await
        .unwrap();
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

pub(super) async fn store(spool: &Spool, dedup: &str, at: i64) -> Stored {
    spool
        .store(received(at), notification(dedup))
        .await
        .unwrap()
}

pub(super) async fn store_new(spool: &Spool, dedup: &str, at: i64) -> NotificationId {
    match store(spool, dedup, at).await {
        Stored::New(id) => id,
        other => panic!("{other:?}"),
    }
}

/// What the forwarder does with one lease: start, finish, complete.
pub(super) async fn attempt(spool: &Spool, lease: &Lease, outcome: Outcome, now: i64) -> Delivery {
    let schedule = Schedule::try_new(vec![Duration::from_secs(10)], 0.0).unwrap();
    let mut delivery = lease.delivery().clone();
    delivery.start(now).unwrap();
    delivery.finish(&schedule, outcome, now + 1, 0.0).unwrap();
    spool.complete(lease, &delivery).await.unwrap();
    delivery
}

pub(super) fn ok() -> Outcome {
    Outcome::Status {
        code: 200,
        retry_after_ms: None,
    }
}

pub(super) async fn lease_now(spool: &Spool, name: &str, max: usize) -> Vec<Lease> {
    tokio::time::timeout(Duration::from_secs(5), spool.lease(name, max))
        .await
        .expect("nothing due")
        .unwrap()
}

/// Whether `lease` has nothing due within `within` (of tokio time).
async fn nothing_due(spool: &Spool, name: &str, within: Duration) -> bool {
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

#[tokio::test]
async fn stores_once_per_dedup_key_within_the_window_and_fans_out_inside() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp", "crm"]).await;
    let now = clock.now_ms();
    let first = store_new(&spool, "k1", now).await;
    assert_eq!(
        store(&spool, "k1", now + 1_000).await,
        Stored::Duplicate(first)
    );
    assert!(matches!(store(&spool, "k2", now).await, Stored::New(_)));
    // Past the 60 s window the same key is new again.
    assert!(matches!(
        store(&spool, "k1", now + 61_000).await,
        Stored::New(_)
    ));
    assert_eq!(spool.notifications().count().await, 3);
    let record = spool.notification(first).await.unwrap().unwrap();
    assert_eq!(record.meta.id, first.to_string());
    assert_eq!(record.meta.subscriptions, ["erp", "crm"]);
    assert_eq!(record.body.as_ref(), b"{\"hook_id\": \"x\"}");
    assert_eq!(spool.deliveries_of(first).await.unwrap().len(), 2);
    // The resend added no delivery: three notifications, three leases each.
    assert_eq!(lease_now(&spool, "erp", 10).await.len(), 3);
    assert_eq!(lease_now(&spool, "crm", 10).await.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn first_attempts_come_in_order_and_retries_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let leases = lease_now(&spool, "erp", 10).await;
    let ids: Vec<_> = leases.iter().map(Lease::id).collect();
    assert_eq!(ids, [a, b]);
    assert!(
        nothing_due(&spool, "erp", Duration::from_secs(60)).await,
        "held leases are not handed out twice"
    );
    let now = clock.now_ms();
    attempt(&spool, &leases[0], Outcome::Timeout, now).await;
    attempt(&spool, &leases[1], ok(), now).await;
    drop(leases);
    // The retry is due 10 s after the failure, not before.
    assert!(nothing_due(&spool, "erp", Duration::from_secs(9)).await);
    let retry = lease_now(&spool, "erp", 10).await;
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].id(), a);
    assert_eq!(retry[0].delivery().attempts.len(), 1);
    let now = clock.now_ms();
    attempt(&spool, &retry[0], ok(), now).await;
    drop(retry);
    assert!(nothing_due(&spool, "erp", Duration::from_secs(3600)).await);
    assert_eq!(spool.next_due_ms("erp").await.unwrap(), None);
    let mut states = Vec::new();
    for id in [a, b] {
        states.push(spool.deliveries_of(id).await.unwrap()[0].state);
    }
    assert!(states.iter().all(|s| matches!(s, State::Delivered { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_lease_dropped_without_an_outcome_is_due_again_and_a_completed_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let mut leases = lease_now(&spool, "erp", 10).await;
    let second = leases.pop().unwrap();
    attempt(&spool, &second, ok(), now).await;
    drop(second);
    drop(leases); // `a` never got an outcome
    let again = lease_now(&spool, "erp", 10).await;
    assert_eq!(again.iter().map(Lease::id).collect::<Vec<_>>(), [a]);
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn a_damaged_retry_is_skipped_once_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let leases = lease_now(&spool, "erp", 2).await;
    for lease in &leases {
        attempt(&spool, lease, Outcome::Timeout, now).await;
    }
    drop(leases);
    spool.sled().damage_delivery(b, "erp");
    tokio::time::sleep(Duration::from_secs(11)).await;
    // The walk meets the damaged record after leasing `a`: `a` comes out,
    // and nothing hangs on the lease it holds.
    let retry = lease_now(&spool, "erp", 10).await;
    assert_eq!(retry.iter().map(Lease::id).collect::<Vec<_>>(), [a]);
    drop(retry);
    let again = lease_now(&spool, "erp", 10).await;
    assert_eq!(
        again.iter().map(Lease::id).collect::<Vec<_>>(),
        [a],
        "a dropped lease is due again"
    );
    drop(again);
    // With `a` held, the damaged one neither comes out nor makes the lease spin.
    let held = lease_now(&spool, "erp", 10).await;
    assert!(nothing_due(&spool, "erp", Duration::from_secs(60)).await);
    drop(held);
    let health = spool.health();
    assert_eq!(
        health.unreadable, 1,
        "noted once, not at every walk: {health:?}"
    );
    assert!(health.unreadable_ids[0].contains(&b.to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_lease_let_go_of_wakes_a_waiting_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let a = store_new(&spool, "a", clock.now_ms()).await;
    let held = lease_now(&spool, "erp", 1).await;
    let waiting = {
        let spool = spool.clone();
        tokio::spawn(async move { spool.lease("erp", 1).await })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!waiting.is_finished(), "nothing was due");
    drop(held);
    let leases = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("the waiting lease heard of it")
        .unwrap()
        .unwrap();
    assert_eq!(leases[0].id(), a);
}

#[tokio::test]
async fn an_idle_lease_wakes_as_soon_as_a_store_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let waiting = {
        let spool = spool.clone();
        tokio::spawn(async move { spool.lease("erp", 1).await })
    };
    // Let the lease walk, find nothing and wait.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stored_at = tokio::time::Instant::now();
    let id = store_new(&spool, "a", clock.now_ms()).await;
    let leases = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the lease never woke")
        .unwrap()
        .unwrap();
    assert_eq!(leases[0].id(), id);
    assert!(
        stored_at.elapsed() < Duration::from_millis(100),
        "woke after {:?}",
        stored_at.elapsed()
    );
}

#[tokio::test]
async fn nothing_newer_than_the_last_flush_is_leased() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    // As if `b` were applied but its group not yet flushed.
    spool.sled().pretend_durable_upto(a);
    let leases = lease_now(&spool, "erp", 10).await;
    assert_eq!(leases.iter().map(Lease::id).collect::<Vec<_>>(), [a]);
    spool.sled().pretend_durable_upto(b);
    let leases = lease_now(&spool, "erp", 10).await;
    assert_eq!(leases.iter().map(Lease::id).collect::<Vec<_>>(), [b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_flushes_and_none_is_answered_by_an_earlier_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    let before = spool.stats().await.flush_starts.unwrap();
    store(&spool, "first", 1_000).await;
    assert!(
        spool.stats().await.flush_starts.unwrap() > before,
        "answered before any flush"
    );

    let start = spool.stats().await.flush_starts.unwrap();
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let started_before = spool.stats().await.flush_starts.unwrap();
                store(&spool, &format!("k{i}"), 1_000).await;
                assert!(
                    spool.stats().await.flush_starts.unwrap() > started_before,
                    "answered by a flush that began before the write"
                );
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let used = spool.stats().await.flush_starts.unwrap() - start;
    assert!(used < 200, "200 writes took {used} flushes: no grouping");
    assert_eq!(spool.notifications().count().await, 201);
}

#[tokio::test]
async fn a_second_process_gets_a_clear_locked_error() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = open(dir.path(), &[]).await.0;
    let err = Spool::open(&config(dir.path()), routes(&[]), Clock::system())
        .await
        .err()
        .expect("second open must fail");
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
}

#[tokio::test]
async fn deliveries_and_outcomes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let now = Clock::system().now_ms();
    let (a, b) = {
        let (spool, _) = open(dir.path(), &["erp"]).await;
        let a = store_new(&spool, "a", now).await;
        let b = store_new(&spool, "b", now).await;
        let leases = lease_now(&spool, "erp", 1).await;
        attempt(&spool, &leases[0], ok(), now).await;
        drop(leases);
        spool.close().await.unwrap();
        (a, b)
    };
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert!(spool.notification(a).await.unwrap().is_some());
    let leases = lease_now(&spool, "erp", 10).await;
    assert_eq!(
        leases.iter().map(Lease::id).collect::<Vec<_>>(),
        [b],
        "the delivered one is not sent again"
    );
}

#[tokio::test]
async fn quarantine_keeps_the_raw_body_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), &[]).await;
    let mut body = received(1);
    body.body = Bytes::from_static(b"<xml/>");
    let id = spool
        .quarantine(body, "not_json", "expected value".into())
        .await
        .unwrap();
    let kept: Vec<_> = spool.quarantined().collect().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].meta.id, id.to_string());
    assert_eq!(kept[0].body.as_ref(), b"<xml/>");
    assert_eq!(kept[0].meta.reason_kind, "not_json");
    assert!(spool.is_quarantined(id).await.unwrap());
    assert_eq!(spool.notifications().count().await, 0);
}

#[tokio::test(start_paused = true)]
async fn retention_removes_what_is_over_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention = HumanDuration(Duration::from_secs(120));
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config, routes(&["erp"]), clock).await.unwrap();
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

#[tokio::test(start_paused = true)]
async fn dead_retention_lets_dead_deliveries_go_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention = HumanDuration(Duration::from_secs(120));
    config.dead_retention = Some(HumanDuration(Duration::from_secs(60)));
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config, routes(&["erp"]), clock).await.unwrap();
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

#[tokio::test(start_paused = true)]
async fn a_replay_brings_a_dead_delivery_back_with_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
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

#[tokio::test]
async fn a_closed_spool_refuses_writes_and_probes() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), &[]).await;
    assert!(spool.alive(Duration::from_secs(5)).await);
    spool.close().await.unwrap();
    let err = spool
        .store(received(1_000), notification("late"))
        .await
        .unwrap_err();
    assert!(matches!(err, SpoolError::Closed), "{err}");
    assert!(!spool.alive(Duration::from_secs(5)).await);
}

/// A spool where `old` (then removed from the config) has one retry and
/// one never-attempted delivery waiting, and `erp` has both delivered.
pub(super) async fn spool_with_orphans(dir: &Path) -> [NotificationId; 2] {
    let now = Clock::system().now_ms();
    let (spool, _) = open(dir, &["erp", "old"]).await;
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

#[tokio::test]
async fn a_removed_subscription_s_deliveries_are_reported_as_orphans() {
    let dir = tempfile::tempdir().unwrap();
    spool_with_orphans(dir.path()).await;
    let (spool, _) = open(dir.path(), &["erp"]).await;
    let health = spool.health();
    assert_eq!(
        health.orphans.get("old"),
        Some(&2),
        "one retry and one never attempted: {health:?}"
    );
    assert!(!health.orphans.contains_key("erp"));
    let report = Spool::check(&config(dir.path()), false).await;
    assert!(
        matches!(report, Err(SpoolError::Locked { .. })),
        "check refuses a spool in use"
    );
    spool.close().await.unwrap();
    let report = Spool::check(&config(dir.path()), false).await.unwrap();
    assert_eq!(report.orphans.get("old"), Some(&2));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(start_paused = true)]
async fn orphans_can_be_given_to_another_subscription_and_are_then_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = spool_with_orphans(dir.path()).await;
    let (spool, clock) = open(dir.path(), &["erp", "new"]).await;
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
    let (spool, _) = open(dir.path(), &["erp", "new"]).await;
    assert!(
        spool.health().orphans.is_empty(),
        "nothing waits for `old` any more"
    );
}

#[tokio::test]
async fn orphans_can_be_purged() {
    let dir = tempfile::tempdir().unwrap();
    let [a, _] = spool_with_orphans(dir.path()).await;
    let (spool, clock) = open(dir.path(), &["erp"]).await;
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

#[tokio::test]
async fn a_format_1_spool_upgrades_on_open_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(spool_dir.join("blobs")).unwrap();
    for file in ["conf", "db"] {
        std::fs::copy(fixture.join(file), spool_dir.join(file)).unwrap();
    }
    let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
    let records: Vec<_> = spool.notifications().collect().await.unwrap();
    assert_eq!(records.len(), 5);
    // Stored before statuses were kept: they read as unknown.
    assert!(records
        .iter()
        .all(|r| r.meta.status == crate::providers::InvoiceStatus::Unknown));
    let hooks: Vec<_> = records.iter().map(|r| r.meta.dedup_key.clone()).collect();
    assert_eq!(
        hooks,
        (0..5)
            .map(|i| format!("h{i}|facturacion.emitido"))
            .collect::<Vec<_>>()
    );
    let id = |i: usize| NotificationId::parse(&records[i].meta.id).unwrap();
    let state = async |i: usize, sub: &str| {
        spool
            .deliveries_of(id(i))
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.subscription == sub)
            .unwrap()
            .state
    };
    assert!(matches!(state(0, "erp").await, State::Delivered { .. }));
    assert!(matches!(state(1, "erp").await, State::Waiting { .. }));
    assert!(matches!(state(2, "erp").await, State::Dead { .. }));
    assert!(matches!(state(3, "erp").await, State::Pending));
    assert!(matches!(state(0, "crm").await, State::Pending));
    assert_eq!(spool.quarantined().count().await, 1);

    // What was due before the upgrade is due after it, and only that.
    let erp: Vec<_> = lease_now(&spool, "erp", 10).await;
    let mut erp_ids: Vec<_> = erp.iter().map(Lease::id).collect();
    erp_ids.sort();
    assert_eq!(erp_ids, [id(1), id(3), id(4)]);
    let retried = erp.iter().find(|l| l.id() == id(1)).unwrap();
    assert_eq!(retried.delivery().attempts.len(), 1, "history kept");
    assert_eq!(lease_now(&spool, "crm", 10).await.len(), 5);

    // The dedup entries came along: a resend inside the window is a duplicate.
    let mut resend = received(1_764_000_000_000 + 30_000);
    resend.source = "tusfacturas".into();
    assert_eq!(
        spool
            .store(resend, notification("h0|facturacion.emitido"))
            .await
            .unwrap(),
        Stored::Duplicate(id(0))
    );
    drop(erp);
    spool.close().await.unwrap();
    // Opened again: already format 2, nothing upgraded twice.
    let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
    assert_eq!(spool.notifications().count().await, 5);
}

// === property: random interleavings ===

mod interleavings {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    #[derive(Debug, Clone)]
    enum Op {
        Store(u8),
        Lease(&'static str, usize),
        Complete(usize, bool),
        DropLease(usize),
        Replay(u8, &'static str),
        Advance(u64),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        let sub = prop_oneof![Just("erp"), Just("crm")];
        prop_oneof![
            4 => (0u8..12).prop_map(Op::Store),
            4 => (sub.clone(), 1usize..4).prop_map(|(s, n)| Op::Lease(s, n)),
            4 => (0usize..4, any::<bool>()).prop_map(|(i, ok)| Op::Complete(i, ok)),
            1 => (0usize..4).prop_map(Op::DropLease),
            1 => (0u8..12, sub).prop_map(|(k, s)| Op::Replay(k, s)),
            2 => (1u64..200).prop_map(Op::Advance),
            1 => Just(Op::Restart),
        ]
    }

    /// Leases due now, if any, within a second of (paused) tokio time.
    async fn lease_some(spool: &Spool, sub: &str, n: usize) -> Vec<Lease> {
        tokio::time::timeout(Duration::from_secs(1), spool.lease(sub, n))
            .await
            .map(Result::unwrap)
            .unwrap_or_default()
    }

    async fn run(ops: Vec<Op>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.retention = HumanDuration(Duration::from_secs(120));
        let names = ["erp", "crm"];
        let clock = Clock::following_tokio();
        let schedule = Schedule::try_new(vec![Duration::from_secs(1)], 0.0).unwrap();
        let mut spool = Spool::open(&config, routes(&names), clock).await.unwrap();
        // Every acknowledged id, and which ones retention may have removed
        // (all their deliveries were delivered).
        let mut acked: HashSet<NotificationId> = HashSet::new();
        let mut delivered: HashMap<NotificationId, HashSet<&str>> = HashMap::new();
        let mut held: Vec<Lease> = Vec::new();
        let mut dedup: HashMap<u8, (NotificationId, i64)> = HashMap::new();
        for op in ops {
            match op {
                Op::Store(key) => {
                    let now = clock.now_ms();
                    let stored = spool
                        .store(received(now), notification(&format!("k{key}")))
                        .await
                        .unwrap();
                    match (stored, dedup.get(&key)) {
                        (Stored::Duplicate(id), Some((first, at))) => {
                            assert_eq!(id, *first);
                            assert!(now - at < 60_000, "a duplicate past the window");
                        }
                        (Stored::Duplicate(id), None) => panic!("duplicate of nothing: {id}"),
                        (Stored::New(id), previous) => {
                            if let Some((_, at)) = previous {
                                assert!(
                                    now - at >= 60_000,
                                    "a resend inside the window stored twice"
                                );
                            }
                            dedup.insert(key, (id, now));
                            acked.insert(id);
                        }
                    }
                }
                Op::Lease(sub, n) => {
                    for lease in lease_some(&spool, sub, n).await {
                        assert!(
                            acked.contains(&lease.id()),
                            "leased what was never acknowledged"
                        );
                        assert!(
                            !held
                                .iter()
                                .any(|h| h.id() == lease.id() && h.subscription() == sub),
                            "leased twice at once"
                        );
                        assert!(!lease.delivery().is_final());
                        held.push(lease);
                    }
                }
                Op::Complete(i, ok) if i < held.len() => {
                    let lease = held.remove(i);
                    let mut delivery = lease.delivery().clone();
                    let now = clock.now_ms();
                    delivery.start(now).unwrap();
                    let outcome = if ok { super::ok() } else { Outcome::Connect };
                    delivery.finish(&schedule, outcome, now, 0.0).unwrap();
                    spool.complete(&lease, &delivery).await.unwrap();
                    if ok {
                        delivered.entry(lease.id()).or_default().insert(
                            if lease.subscription() == "erp" {
                                "erp"
                            } else {
                                "crm"
                            },
                        );
                    }
                }
                Op::Complete(..) => {}
                Op::DropLease(i) if i < held.len() => drop(held.remove(i)),
                Op::DropLease(_) => {}
                Op::Replay(key, sub) => {
                    if let Some((id, _)) = dedup.get(&key) {
                        // Removed by retention already: NotFound, nothing changes.
                        let replayed = spool.replay(*id, sub, clock.now_ms()).await;
                        if matches!(replayed, Ok(true)) {
                            if let Some(subs) = delivered.get_mut(id) {
                                subs.remove(sub);
                            }
                        }
                    }
                }
                Op::Advance(secs) => {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    spool.maintain().await.unwrap();
                }
                Op::Restart => {
                    held.clear(); // attempts in flight die with the process
                    spool.close().await.unwrap();
                    drop(spool);
                    spool = Spool::open(&config, routes(&names), clock).await.unwrap();
                }
            }
            // Nothing acknowledged is missing unless retention could take it.
            for id in &acked {
                let all_delivered = delivered.get(id).is_some_and(|s| s.len() == names.len());
                if !all_delivered {
                    assert!(
                        spool.notification(*id).await.unwrap().is_some(),
                        "{id} lost before all its deliveries were made"
                    );
                }
            }
        }
        // Drain: deliver everything that is due, with time moving on.
        held.clear();
        for _ in 0..20 {
            let mut any = false;
            for sub in names {
                for lease in lease_some(&spool, sub, 100).await {
                    any = true;
                    let mut delivery = lease.delivery().clone();
                    let now = clock.now_ms();
                    delivery.start(now).unwrap();
                    delivery.finish(&schedule, super::ok(), now, 0.0).unwrap();
                    spool.complete(&lease, &delivery).await.unwrap();
                }
            }
            if !any {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // No delivery disappeared: each is delivered, or dead for an admin.
        for id in &acked {
            for delivery in spool.deliveries_of(*id).await.unwrap() {
                assert!(
                    delivery.is_final(),
                    "{id} for {}: {:?} yet nothing due",
                    delivery.subscription,
                    delivery.state
                );
            }
        }
        spool.close().await.unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        #[test]
        fn nothing_acknowledged_is_lost_nor_leased_twice_nor_left_undelivered(
            ops in proptest::collection::vec(op(), 1..50)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(run(ops));
        }
    }
}

#[tokio::test]
async fn a_paused_subscription_is_leased_nothing_until_resumed_even_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["billing", "erp"]).await;
    spool.pause("billing", true).await.unwrap();
    let id = store_new(&spool, "p-1", clock.now_ms()).await;
    let erp = spool.lease("erp", 8).await.unwrap();
    assert_eq!(erp[0].id(), id, "other subscriptions go on");
    assert!(nothing_due(&spool, "billing", Duration::from_millis(200)).await);
    drop(erp);
    spool.close().await.unwrap();
    drop(spool);

    let (spool, _) = open(dir.path(), &["billing", "erp"]).await;
    assert!(spool.paused().contains("billing"), "kept across a reopen");
    assert!(nothing_due(&spool, "billing", Duration::from_millis(200)).await);
    // A lease that waits is woken by the resume.
    let waiting = tokio::spawn({
        let spool = spool.clone();
        async move { spool.lease("billing", 8).await }
    });
    spool.pause("billing", false).await.unwrap();
    let leased = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the resume wakes the lease")
        .unwrap()
        .unwrap();
    assert_eq!(leased[0].id(), id);
    assert!(spool.paused().is_empty());
    spool.close().await.unwrap();
}
