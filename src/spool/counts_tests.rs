//! The counts the spool keeps, and its audit log: each path that changes a
//! delivery moves its count, the kept counts equal a recount after any
//! sequence of changes, and they survive a reopen (or are made once by a
//! walk for a spool that has none).

use std::collections::BTreeMap;

use super::tests::{
    attempt, config, lease_now, notification, ok, open, received, routes, spool_with_orphans,
    store, store_new,
};
use super::*;
use crate::config::HumanDuration;
use crate::delivery::{Outcome, Schedule};
use std::time::Duration;

fn sub(waiting: u64, dead: u64, delivered: u64, purged: u64) -> SubscriptionCounts {
    SubscriptionCounts {
        waiting,
        dead,
        delivered,
        purged,
    }
}

fn counts(notifications: u64, quarantined: u64, subs: &[(&str, SubscriptionCounts)]) -> Counts {
    Counts {
        notifications,
        quarantined,
        subscriptions: subs
            .iter()
            .map(|(name, counts)| ((*name).to_owned(), counts.clone()))
            .collect(),
        sources: BTreeMap::new(),
    }
}

/// `(source, stored, quarantined)` for each source, as [`Counts::sources`].
fn sources(of: &[(&str, u64, u64)]) -> BTreeMap<String, SourceCounts> {
    of.iter()
        .map(|&(name, stored, quarantined)| {
            (
                name.to_owned(),
                SourceCounts {
                    stored,
                    quarantined,
                },
            )
        })
        .collect()
}

/// The kept counts, after asserting that a walk over every record agrees
/// (per source too); the per-source ones are left out of the answer, for
/// the tests of delivery counts ([`by_source`] answers them).
fn counted(spool: &Spool) -> Counts {
    Counts {
        sources: BTreeMap::new(),
        ..counted_whole(spool)
    }
}

fn counted_whole(spool: &Spool) -> Counts {
    // Every change a test makes is answered once applied, and no test
    // leaves retention behind (which would run a slice of its own).
    let kept = spool.counts();
    assert_eq!(kept, spool.sled().recount(), "kept counts vs a recount");
    kept
}

/// The kept per-source counts, after asserting that a recount agrees.
fn by_source(spool: &Spool) -> BTreeMap<String, SourceCounts> {
    counted_whole(spool).sources
}

/// The totals as `counts.rs` stores them (version 1, two big-endian u64s).
fn totals_value(notifications: u64, quarantined: u64) -> Vec<u8> {
    let mut value = vec![1];
    value.extend_from_slice(&notifications.to_be_bytes());
    value.extend_from_slice(&quarantined.to_be_bytes());
    value
}

async fn quarantine_one(spool: &Spool, at: i64) -> NotificationId {
    quarantine_from(spool, "tus", at).await
}

async fn quarantine_from(spool: &Spool, source: &str, at: i64) -> NotificationId {
    let mut body = received(at);
    body.source = source.into();
    body.body = Bytes::from_static(b"junk");
    spool
        .quarantine(body, "not_json", "x".into())
        .await
        .unwrap()
}

async fn store_from(spool: &Spool, source: &str, dedup: &str, at: i64) -> Stored {
    let mut body = received(at);
    body.source = source.into();
    spool.store(body, notification(dedup)).await.unwrap()
}

#[tokio::test]
async fn a_store_counts_one_waiting_delivery_per_subscription_and_a_duplicate_none() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp", "crm"]).await;
    assert_eq!(counted(&spool), Counts::default());
    let now = clock.now_ms();
    store_new(&spool, "k1", now).await;
    assert!(matches!(
        store(&spool, "k1", now).await,
        Stored::Duplicate(_)
    ));
    store_new(&spool, "k2", now).await;
    quarantine_one(&spool, now).await;
    assert_eq!(
        counted(&spool),
        counts(2, 1, &[("crm", sub(2, 0, 0, 0)), ("erp", sub(2, 0, 0, 0))])
    );
}

#[tokio::test(start_paused = true)]
async fn outcomes_and_replays_move_deliveries_between_states() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let leases = lease_now(&spool, "erp", 2).await;
    attempt(&spool, &leases[0], ok(), now).await;
    attempt(&spool, &leases[1], Outcome::Connect, now).await;
    drop(leases);
    assert_eq!(
        counted(&spool),
        counts(2, 0, &[("erp", sub(1, 0, 1, 0))]),
        "a failure still waits"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    let retry = lease_now(&spool, "erp", 1).await;
    assert_eq!(retry[0].id(), b);
    // One wait in the schedule: the second failure is the last.
    attempt(&spool, &retry[0], Outcome::Connect, now).await;
    drop(retry);
    assert_eq!(counted(&spool), counts(2, 0, &[("erp", sub(0, 1, 1, 0))]));

    let now = clock.now_ms();
    assert!(spool.replay(b, "erp", now).await.unwrap());
    assert_eq!(
        counted(&spool),
        counts(2, 0, &[("erp", sub(1, 0, 1, 0))]),
        "a replayed dead one waits again"
    );
    assert!(spool.replay(a, "erp", now).await.unwrap());
    assert_eq!(
        counted(&spool),
        counts(2, 0, &[("erp", sub(2, 0, 0, 0))]),
        "a replayed delivered one too"
    );
    // Refused replays change nothing: one waiting, one never attempted.
    assert!(matches!(
        spool.replay(a, "erp", now).await,
        Err(SpoolError::NotReplayable(_))
    ));
    let c = store_new(&spool, "c", now).await;
    assert!(!spool.replay(c, "erp", now).await.unwrap());
    assert_eq!(counted(&spool), counts(3, 0, &[("erp", sub(3, 0, 0, 0))]));
    for lease in lease_now(&spool, "erp", 3).await {
        attempt(&spool, &lease, ok(), clock.now_ms()).await;
    }
    assert_eq!(counted(&spool), counts(3, 0, &[("erp", sub(0, 0, 3, 0))]));
}

#[tokio::test(start_paused = true)]
async fn orphans_given_to_another_subscription_are_purged_there_and_wait_here() {
    let dir = tempfile::tempdir().unwrap();
    spool_with_orphans(dir.path()).await;
    let (spool, clock) = open(dir.path(), &["erp", "new"]).await;
    assert_eq!(
        counted(&spool),
        counts(2, 0, &[("erp", sub(0, 0, 2, 0)), ("old", sub(2, 0, 0, 0))]),
        "one retry and one never attempted wait for `old`"
    );
    let now = clock.now_ms();
    assert_eq!(
        spool
            .reassign_orphans("old", Some("new"), now)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        counted(&spool),
        counts(
            2,
            0,
            &[
                ("erp", sub(0, 0, 2, 0)),
                ("new", sub(2, 0, 0, 0)),
                ("old", sub(0, 0, 0, 2))
            ]
        )
    );
    for lease in lease_now(&spool, "new", 10).await {
        attempt(&spool, &lease, ok(), now).await;
    }
    assert_eq!(counted(&spool).subscriptions["new"], sub(0, 0, 2, 0));
    // Retention takes both notifications, and their counts with them.
    tokio::time::sleep(Duration::from_secs(3700)).await;
    assert_eq!(spool.maintain().await.unwrap().notifications, 2);
    assert_eq!(counted(&spool), Counts::default());
}

#[tokio::test]
async fn purged_orphans_are_counted_purged() {
    let dir = tempfile::tempdir().unwrap();
    spool_with_orphans(dir.path()).await;
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    spool
        .reassign_orphans("old", None, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(
        counted(&spool),
        counts(2, 0, &[("erp", sub(0, 0, 2, 0)), ("old", sub(0, 0, 0, 2))])
    );
}

#[tokio::test(start_paused = true)]
async fn an_outcome_recorded_after_its_orphan_was_purged_moves_it_from_purged() {
    let dir = tempfile::tempdir().unwrap();
    spool_with_orphans(dir.path()).await;
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    // Held by a forwarder of `old` from before it left the config (as a
    // live reload would leave it) while an admin purges its orphans: the
    // never attempted one now, the retry once it is due.
    let mut held = lease_now(&spool, "old", 2).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    held.extend(lease_now(&spool, "old", 2).await);
    assert_eq!(held.len(), 2);
    spool
        .reassign_orphans("old", None, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(counted(&spool).subscriptions["old"], sub(0, 0, 0, 2));
    for lease in &held {
        attempt(&spool, lease, ok(), clock.now_ms()).await;
    }
    assert_eq!(
        counted(&spool).subscriptions["old"],
        sub(0, 0, 2, 0),
        "the writer read what the outcome replaced, not what was leased"
    );
}

#[tokio::test(start_paused = true)]
async fn retention_takes_the_counts_of_what_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention = HumanDuration(Duration::from_secs(120));
    config.dead_retention = Some(HumanDuration(Duration::from_secs(300)));
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config, routes(&["erp"]), clock).await.unwrap();
    let now = clock.now_ms();
    store_new(&spool, "delivered", now).await;
    let dead = store_new(&spool, "dead", now).await;
    store_new(&spool, "waiting", now).await;
    let leases = lease_now(&spool, "erp", 2).await;
    attempt(&spool, &leases[0], ok(), now).await;
    attempt(&spool, &leases[1], Outcome::Connect, now).await;
    drop(leases);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let retry = lease_now(&spool, "erp", 1).await;
    assert_eq!(retry[0].id(), dead);
    attempt(&spool, &retry[0], Outcome::Connect, clock.now_ms()).await;
    drop(retry);
    quarantine_one(&spool, now).await;
    assert_eq!(counted(&spool), counts(3, 1, &[("erp", sub(1, 1, 1, 0))]));

    tokio::time::sleep(Duration::from_secs(200)).await;
    let done = spool.maintain().await.unwrap();
    assert_eq!((done.notifications, done.quarantined), (1, 1), "{done:?}");
    assert_eq!(
        counted(&spool),
        counts(2, 0, &[("erp", sub(1, 1, 0, 0))]),
        "the delivered one and the quarantined body went"
    );
    assert_eq!(by_source(&spool), sources(&[("tus", 2, 0)]));
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(spool.maintain().await.unwrap().notifications, 1);
    assert_eq!(
        counted(&spool),
        counts(1, 0, &[("erp", sub(1, 0, 0, 0))]),
        "then the dead one, past spool.dead_retention"
    );
    assert_eq!(by_source(&spool), sources(&[("tus", 1, 0)]));
}

#[tokio::test]
async fn kept_counts_are_read_back_on_open_without_a_walk_and_check_mends_them() {
    let dir = tempfile::tempdir().unwrap();
    let now = Clock::system().now_ms();
    let before = {
        let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
        store_new(&spool, "a", now).await;
        store_new(&spool, "b", now).await;
        for lease in lease_now(&spool, "erp", 1).await {
            attempt(&spool, &lease, ok(), now).await;
        }
        quarantine_one(&spool, now).await;
        let before = counted_whole(&spool);
        spool.close().await.unwrap();
        before
    };
    assert_eq!(
        before,
        Counts {
            sources: sources(&[("tus", 2, 1)]),
            ..counts(2, 1, &[("crm", sub(2, 0, 0, 0)), ("erp", sub(1, 0, 1, 0))])
        }
    );
    let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
    assert_eq!(spool.counts(), before, "the same after a reopen");
    // Kept counts that are wrong but well formed are believed on open:
    // proof that the open read them instead of walking the spool.
    spool
        .sled()
        .overwrite_counts(None, Some(&totals_value(999, 1)));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
    assert_eq!(spool.counts().notifications, 999);
    spool.close().await.unwrap();

    // `spool check` recounts, says what differed and keeps the recount.
    let report = Spool::check(&config(dir.path()), false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.counts.as_ref(), Some(&before));
    assert!(
        report
            .repaired
            .iter()
            .any(|r| r.contains("disagree") && r.contains("kept 999 counted 2")),
        "{:?}",
        report.repaired
    );
    let report = Spool::check(&config(dir.path()), false).await.unwrap();
    assert!(report.repaired.is_empty(), "{:?}", report.repaired);
    assert_eq!(report.kept_counts.as_ref(), Some(&before));
    let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
    assert_eq!(spool.counts(), before);
}

#[tokio::test]
async fn a_spool_without_kept_counts_or_with_damaged_ones_is_counted_once_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = Clock::system().now_ms();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    store_new(&spool, "a", now).await;
    store_new(&spool, "b", now).await;
    for lease in lease_now(&spool, "erp", 1).await {
        attempt(&spool, &lease, ok(), now).await;
    }
    let before = counted(&spool);
    // As a spool made before counts were kept.
    spool.sled().overwrite_counts(None, None);
    spool.sled().overwrite_counts(Some("erp"), None);
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(counted(&spool), before);
    // A damaged count key is a recount, not a panic nor an error.
    spool
        .sled()
        .overwrite_counts(Some("erp"), Some(b"\x01not eight bytes"));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(counted(&spool), before);
    spool
        .sled()
        .overwrite_counts(None, Some(b"\x09junk".as_slice()));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(counted(&spool), before);
}

#[tokio::test]
async fn a_format_1_spool_is_counted_by_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(spool_dir.join("blobs")).unwrap();
    for file in ["conf", "db"] {
        std::fs::copy(fixture.join(file), spool_dir.join(file)).unwrap();
    }
    let expected = counts(5, 1, &[("crm", sub(5, 0, 0, 0)), ("erp", sub(3, 1, 1, 0))]);
    let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
    assert_eq!(counted(&spool), expected);
    let expected = Counts {
        sources: by_source(&spool),
        ..expected
    };
    assert_eq!(
        expected.sources.values().map(|s| s.stored).sum::<u64>(),
        5,
        "every notification under its source: {:?}",
        expected.sources
    );
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
    assert_eq!(spool.counts(), expected, "kept from the upgrade on");
}

// === per source ===

#[tokio::test]
async fn each_source_counts_what_it_stored_and_quarantined_and_a_release_moves_one() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    assert!(matches!(
        store_from(&spool, "tus", "k1", now).await,
        Stored::New(_)
    ));
    assert!(matches!(
        store_from(&spool, "tus", "k1", now).await,
        Stored::Duplicate(_)
    ));
    assert!(matches!(
        store_from(&spool, "nube", "k2", now).await,
        Stored::New(_)
    ));
    let nube_junk = quarantine_from(&spool, "nube", now).await;
    quarantine_from(&spool, "nube", now).await;
    let datil_junk = quarantine_from(&spool, "datil", now).await;
    assert_eq!(
        by_source(&spool),
        sources(&[("datil", 0, 1), ("nube", 1, 2), ("tus", 1, 0)]),
        "a duplicate counts nothing"
    );

    let mut again = received(now);
    again.source = "nube".into();
    let released = spool
        .release(nube_junk, again.clone(), notification("k3"))
        .await
        .unwrap();
    assert!(matches!(released, Stored::New(_)), "{released:?}");
    spool.discard(datil_junk).await.unwrap();
    assert_eq!(
        by_source(&spool),
        sources(&[("nube", 2, 1), ("tus", 1, 0)]),
        "released: from quarantined to stored; a source holding nothing is absent"
    );
    // Released or discarded already: refused, and nothing moves.
    assert!(matches!(
        spool.release(nube_junk, again, notification("k4")).await,
        Err(SpoolError::NotFound(_))
    ));
    assert!(matches!(
        spool.discard(datil_junk).await,
        Err(SpoolError::NotFound(_))
    ));
    assert_eq!(counted_whole(&spool).notifications, 3);
    assert_eq!(by_source(&spool), sources(&[("nube", 2, 1), ("tus", 1, 0)]));
}

#[tokio::test]
async fn per_source_counts_survive_a_reopen_are_made_by_one_walk_for_an_older_spool_and_check_mends_them(
) {
    let dir = tempfile::tempdir().unwrap();
    let now = Clock::system().now_ms();
    let expected = sources(&[("datil", 0, 1), ("tus", 2, 0)]);
    {
        let (spool, _) = open(dir.path(), &["erp"]).await;
        store_from(&spool, "tus", "a", now).await;
        store_from(&spool, "tus", "b", now).await;
        quarantine_from(&spool, "datil", now).await;
        assert_eq!(by_source(&spool), expected);
        spool.close().await.unwrap();
    }
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(spool.counts().sources, expected, "the same after a reopen");

    // As a spool whose counts predate the per-source ones: the totals
    // and the subscriptions' counts are there, the sources' are not.
    spool.sled().overwrite_source_counts(None, None);
    spool.sled().overwrite_source_counts(Some("tus"), None);
    spool.sled().overwrite_source_counts(Some("datil"), None);
    // Wrong totals that the walk must replace: proof that it walked.
    spool
        .sled()
        .overwrite_counts(None, Some(&totals_value(999, 1)));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(counted_whole(&spool).notifications, 2, "counted by a walk");
    assert_eq!(by_source(&spool), expected);
    // Kept from then on: a wrong but well-formed source count is believed.
    let mut wrong = vec![1];
    wrong.extend_from_slice(&7u64.to_be_bytes());
    wrong.extend_from_slice(&0u64.to_be_bytes());
    spool
        .sled()
        .overwrite_source_counts(Some("tus"), Some(&wrong));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(spool.counts().sources["tus"].stored, 7);
    spool.close().await.unwrap();

    // `spool check` recounts them, says which differed, and mends them.
    let report = Spool::check(&config(dir.path()), false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report
            .repaired
            .iter()
            .any(|r| r.contains("source \"tus\" kept 7/0 counted 2/0")),
        "{:?}",
        report.repaired
    );
    assert_eq!(report.counts.map(|c| c.sources), Some(expected.clone()));
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(spool.counts().sources, expected);
    spool.close().await.unwrap();

    // A damaged source count is a walk on open, not an error.
    let (spool, _) = open(dir.path(), &["erp"]).await;
    spool
        .sled()
        .overwrite_source_counts(Some("tus"), Some(b"\x01short"));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(by_source(&spool), expected);
}

// === the audit log ===

fn entry(action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        actor: "ops".into(),
        action: action.into(),
        target: target.into(),
        detail: serde_json::json!({"dry_run": false}),
    }
}

#[tokio::test(start_paused = true)]
async fn audit_records_are_durable_paged_newest_first_and_retained_like_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention = HumanDuration(Duration::from_secs(120));
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config, routes(&["erp"]), clock).await.unwrap();
    let flushes = spool.stats().await.flush_starts.unwrap();
    let first = spool.audit(entry("replay", "one")).await.unwrap();
    assert!(
        spool.stats().await.flush_starts.unwrap() > flushes,
        "answered after a flush that covers it"
    );
    tokio::time::sleep(Duration::from_secs(100)).await;
    let second = spool.audit(entry("purge", "two")).await.unwrap();
    let third = spool.audit(entry("pause", "three")).await.unwrap();
    assert!(first < second && second < third, "ids in commit order");
    assert_eq!(
        second.ms(),
        clock.now_ms(),
        "stamped with the spool's clock"
    );

    let page = spool.audit_log(None, 2).await.unwrap();
    let ids: Vec<_> = page.iter().map(|r| r.id).collect();
    assert_eq!(ids, [third, second], "newest first");
    assert_eq!(page[0].entry, entry("pause", "three"));
    assert_eq!(page[0].at_ms, third.ms());
    let cursor: AuditId = page[1].id.to_string().parse().unwrap();
    let next = spool.audit_log(Some(cursor), 2).await.unwrap();
    assert_eq!(next.iter().map(|r| r.id).collect::<Vec<_>>(), [first]);
    assert!(spool.audit_log(Some(first), 2).await.unwrap().is_empty());
    assert_eq!(spool.audit_log(None, 0).await.unwrap(), []);
    spool.close().await.unwrap();

    let spool = Spool::open(&config, routes(&["erp"]), clock).await.unwrap();
    let all: Vec<_> = spool.audit_records().collect().await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        [first, second, third],
        "oldest first, kept across a reopen"
    );
    let fourth = spool.audit(entry("resume", "four")).await.unwrap();
    assert!(fourth > third, "new ids follow those found on open");
    // Past `retention`, the oldest goes; the others stay.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(spool.maintain().await.unwrap().audit_records, 1);
    let left: Vec<_> = spool
        .audit_log(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, [fourth, third, second]);
    spool.close().await.unwrap();
    let report = Spool::check(&config, false).await.unwrap();
    assert_eq!(report.audit_records, 3);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

// === property: the kept counts are a recount's, whatever happens ===

mod interleavings {
    use super::*;
    use crate::spool::routes::Route;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Store(u8),
        Quarantine,
        Lease(&'static str, usize),
        Complete(usize, bool),
        DropLease(usize),
        Replay(u8, &'static str),
        Advance(u64),
        Restart,
        /// Restart without `crm`, give its deliveries to `ops` (or purge
        /// them), and restart with it again.
        Orphan(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let sub = prop_oneof![Just("erp"), Just("crm"), Just("ops")];
        prop_oneof![
            4 => (0u8..12).prop_map(Op::Store),
            1 => Just(Op::Quarantine),
            4 => (sub.clone(), 1usize..4).prop_map(|(s, n)| Op::Lease(s, n)),
            4 => (0usize..4, any::<bool>()).prop_map(|(i, ok)| Op::Complete(i, ok)),
            1 => (0usize..4).prop_map(Op::DropLease),
            2 => (0u8..12, sub).prop_map(|(k, s)| Op::Replay(k, s)),
            2 => (1u64..200).prop_map(Op::Advance),
            1 => Just(Op::Restart),
            1 => any::<bool>().prop_map(Op::Orphan),
        ]
    }

    async fn lease_some(spool: &Spool, sub: &str, n: usize) -> Vec<Lease> {
        tokio::time::timeout(Duration::from_secs(1), spool.lease(sub, n))
            .await
            .map(Result::unwrap)
            .unwrap_or_default()
    }

    /// `erp` and `crm` take every notification; `ops` none (its source
    /// never posts), so it has only what it is given as orphans.
    fn subscriptions(with_crm: bool) -> Routes {
        let mut routes = vec![Route::all("erp")];
        if with_crm {
            routes.push(Route::all("crm"));
        }
        routes.push(Route {
            sources: Some(vec!["elsewhere".into()]),
            ..Route::all("ops")
        });
        Routes::new(routes)
    }

    async fn run(ops: Vec<Op>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.retention = HumanDuration(Duration::from_secs(120));
        config.dead_retention = Some(HumanDuration(Duration::from_secs(150)));
        let clock = Clock::following_tokio();
        let schedule = Schedule::try_new(vec![Duration::from_secs(1)], 0.0).unwrap();
        let mut spool = Spool::open(&config, subscriptions(true), clock)
            .await
            .unwrap();
        let mut held: Vec<Lease> = Vec::new();
        let mut ids: Vec<NotificationId> = Vec::new();
        for op in ops {
            match op {
                Op::Store(key) => {
                    // Two sources, so the per-source counts are tried too.
                    let source = if key % 3 == 0 { "nube" } else { "tus" };
                    let stored =
                        store_from(&spool, source, &format!("k{key}"), clock.now_ms()).await;
                    if let Stored::New(id) = stored {
                        ids.push(id);
                    }
                }
                Op::Quarantine => {
                    quarantine_one(&spool, clock.now_ms()).await;
                }
                Op::Lease(sub, n) => held.extend(lease_some(&spool, sub, n).await),
                Op::Complete(i, ok) if i < held.len() => {
                    let lease = held.remove(i);
                    let mut delivery = lease.delivery().clone();
                    let now = clock.now_ms();
                    delivery.start(now).unwrap();
                    let outcome = if ok { super::ok() } else { Outcome::Connect };
                    delivery.finish(&schedule, outcome, now, 0.0).unwrap();
                    spool.complete(&lease, &delivery).await.unwrap();
                }
                Op::DropLease(i) if i < held.len() => drop(held.remove(i)),
                Op::Complete(..) | Op::DropLease(_) => {}
                Op::Replay(key, sub) => {
                    if let Some(id) = ids.get(usize::from(key)) {
                        // Refused or not, the counts must follow.
                        let _ = spool.replay(*id, sub, clock.now_ms()).await;
                    }
                }
                Op::Advance(secs) => {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    spool.maintain().await.unwrap();
                }
                Op::Restart => {
                    held.clear();
                    spool.close().await.unwrap();
                    drop(spool);
                    spool = Spool::open(&config, subscriptions(true), clock)
                        .await
                        .unwrap();
                }
                Op::Orphan(give) => {
                    held.clear();
                    spool.close().await.unwrap();
                    drop(spool);
                    let without = Spool::open(&config, subscriptions(false), clock)
                        .await
                        .unwrap();
                    let to = give.then_some("ops");
                    without
                        .reassign_orphans("crm", to, clock.now_ms())
                        .await
                        .unwrap();
                    counted(&without);
                    without.close().await.unwrap();
                    drop(without);
                    spool = Spool::open(&config, subscriptions(true), clock)
                        .await
                        .unwrap();
                }
            }
            counted(&spool);
        }
        held.clear();
        spool.close().await.unwrap();
        let report = Spool::check(&config, false).await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert!(report.repaired.is_empty(), "{:?}", report.repaired);
        assert_eq!(report.counts, report.kept_counts);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        #[test]
        fn the_kept_counts_equal_a_recount_after_any_sequence_of_changes(
            ops in proptest::collection::vec(op(), 1..60)
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
