//! The counts the spool keeps, and its audit log: each path that changes a
//! delivery moves its count, and the kept counts equal a recount, both the
//! backend's own ([`Fixture::recount`]) and one made through the
//! interface ([`recount`]); the audit log is durable, paged newest first,
//! kept across a reopen and retained like quarantine.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::support::{
    attempt, lease_now, notification, ok, open, open_keeping, received, routes, spool_with_orphans,
    store, store_new,
};
use super::{Fixture, Keep};
use crate::delivery::{Outcome, State};
use crate::spool::{
    AuditEntry, AuditId, Counts, NotificationId, SourceCounts, Spool, SpoolError, Stored,
    SubscriptionCounts,
};

/// The counts as the interface shows what the spool holds: every
/// notification under its source, each of its deliveries under its
/// subscription by state (in flight is waiting), every quarantined body
/// under its source.
pub(crate) async fn recount(spool: &Spool) -> Counts {
    let mut counts = Counts::default();
    let notifications = spool.notifications().collect().await.unwrap();
    for record in notifications {
        counts.notifications += 1;
        let source = counts.sources.entry(record.meta.source.clone());
        source.or_default().stored += 1;
        let id = NotificationId::parse(&record.meta.id).unwrap();
        for delivery in spool.deliveries_of(id).await.unwrap() {
            let of = counts
                .subscriptions
                .entry(delivery.subscription.clone())
                .or_default();
            match delivery.state {
                State::Pending | State::InFlight { .. } | State::Waiting { .. } => of.waiting += 1,
                State::Dead { .. } => of.dead += 1,
                State::Delivered { .. } => of.delivered += 1,
                State::Purged { .. } => of.purged += 1,
            }
        }
    }
    for record in spool.quarantined().collect().await.unwrap() {
        counts.quarantined += 1;
        let source = counts.sources.entry(record.meta.source.clone());
        source.or_default().quarantined += 1;
    }
    counts
}

pub(crate) fn sub(waiting: u64, dead: u64, delivered: u64, purged: u64) -> SubscriptionCounts {
    SubscriptionCounts {
        waiting,
        dead,
        delivered,
        purged,
    }
}

pub(crate) fn counts(
    notifications: u64,
    quarantined: u64,
    subs: &[(&str, SubscriptionCounts)],
) -> Counts {
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
pub(crate) fn sources(of: &[(&str, u64, u64)]) -> BTreeMap<String, SourceCounts> {
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
pub(crate) async fn counted(fixture: &impl Fixture, spool: &Spool) -> Counts {
    Counts {
        sources: BTreeMap::new(),
        ..counted_whole(fixture, spool).await
    }
}

pub(crate) async fn counted_whole(fixture: &impl Fixture, spool: &Spool) -> Counts {
    // Every change a test makes is answered once applied, and no test
    // leaves retention behind (which would run a slice of its own).
    let kept = spool.counts();
    assert_eq!(
        kept,
        fixture.recount(spool).await,
        "kept counts vs a recount"
    );
    assert_eq!(
        kept,
        recount(spool).await,
        "kept counts vs what the interface shows"
    );
    kept
}

/// The kept per-source counts, after asserting that a recount agrees.
pub(crate) async fn by_source(
    fixture: &impl Fixture,
    spool: &Spool,
) -> BTreeMap<String, SourceCounts> {
    counted_whole(fixture, spool).await.sources
}

pub(crate) async fn quarantine_one(spool: &Spool, at: i64) -> NotificationId {
    quarantine_from(spool, "tus", at).await
}

pub(crate) async fn quarantine_from(spool: &Spool, source: &str, at: i64) -> NotificationId {
    let mut body = received(at);
    body.source = source.into();
    body.body = Bytes::from_static(b"junk");
    spool
        .quarantine(body, "not_json", "x".into())
        .await
        .unwrap()
}

pub(crate) async fn store_from(spool: &Spool, source: &str, dedup: &str, at: i64) -> Stored {
    let mut body = received(at);
    body.source = source.into();
    spool.store(body, notification(dedup)).await.unwrap()
}

pub(crate) async fn a_store_counts_one_waiting_delivery_per_subscription_and_a_duplicate_none(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["erp", "crm"]).await;
    assert_eq!(counted(fixture, &spool).await, Counts::default());
    let now = clock.now_ms();
    store_new(&spool, "k1", now).await;
    assert!(matches!(
        store(&spool, "k1", now).await,
        Stored::Duplicate(_)
    ));
    store_new(&spool, "k2", now).await;
    quarantine_one(&spool, now).await;
    assert_eq!(
        counted(fixture, &spool).await,
        counts(2, 1, &[("crm", sub(2, 0, 0, 0)), ("erp", sub(2, 0, 0, 0))])
    );
}

pub(crate) async fn outcomes_and_replays_move_deliveries_between_states(fixture: &impl Fixture) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let a = store_new(&spool, "a", now).await;
    let b = store_new(&spool, "b", now).await;
    let leases = lease_now(&spool, "erp", 2).await;
    attempt(&spool, &leases[0], ok(), now).await;
    attempt(&spool, &leases[1], Outcome::Connect, now).await;
    drop(leases);
    assert_eq!(
        counted(fixture, &spool).await,
        counts(2, 0, &[("erp", sub(1, 0, 1, 0))]),
        "a failure still waits"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    let retry = lease_now(&spool, "erp", 1).await;
    assert_eq!(retry[0].id(), b);
    // One wait in the schedule: the second failure is the last.
    attempt(&spool, &retry[0], Outcome::Connect, now).await;
    drop(retry);
    assert_eq!(
        counted(fixture, &spool).await,
        counts(2, 0, &[("erp", sub(0, 1, 1, 0))])
    );

    let now = clock.now_ms();
    assert!(spool.replay(b, "erp", now).await.unwrap());
    assert_eq!(
        counted(fixture, &spool).await,
        counts(2, 0, &[("erp", sub(1, 0, 1, 0))]),
        "a replayed dead one waits again"
    );
    assert!(spool.replay(a, "erp", now).await.unwrap());
    assert_eq!(
        counted(fixture, &spool).await,
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
    assert_eq!(
        counted(fixture, &spool).await,
        counts(3, 0, &[("erp", sub(3, 0, 0, 0))])
    );
    for lease in lease_now(&spool, "erp", 3).await {
        attempt(&spool, &lease, ok(), clock.now_ms()).await;
    }
    assert_eq!(
        counted(fixture, &spool).await,
        counts(3, 0, &[("erp", sub(0, 0, 3, 0))])
    );
}

pub(crate) async fn orphans_given_to_another_subscription_are_purged_there_and_wait_here(
    fixture: &impl Fixture,
) {
    spool_with_orphans(fixture).await;
    let (spool, clock) = open(fixture, &["erp", "new"]).await;
    assert_eq!(
        counted(fixture, &spool).await,
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
        counted(fixture, &spool).await,
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
    assert_eq!(
        counted(fixture, &spool).await.subscriptions["new"],
        sub(0, 0, 2, 0)
    );
    // Retention takes both notifications, and their counts with them.
    tokio::time::sleep(Duration::from_secs(3700)).await;
    assert_eq!(spool.maintain().await.unwrap().notifications, 2);
    assert_eq!(counted(fixture, &spool).await, Counts::default());
}

pub(crate) async fn purged_orphans_are_counted_purged(fixture: &impl Fixture) {
    spool_with_orphans(fixture).await;
    let (spool, clock) = open(fixture, &["erp"]).await;
    spool
        .reassign_orphans("old", None, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(
        counted(fixture, &spool).await,
        counts(2, 0, &[("erp", sub(0, 0, 2, 0)), ("old", sub(0, 0, 0, 2))])
    );
}

pub(crate) async fn an_outcome_recorded_after_its_orphan_was_purged_moves_it_from_purged(
    fixture: &impl Fixture,
) {
    spool_with_orphans(fixture).await;
    let (spool, clock) = open(fixture, &["erp"]).await;
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
    assert_eq!(
        counted(fixture, &spool).await.subscriptions["old"],
        sub(0, 0, 0, 2)
    );
    for lease in &held {
        attempt(&spool, lease, ok(), clock.now_ms()).await;
    }
    assert_eq!(
        counted(fixture, &spool).await.subscriptions["old"],
        sub(0, 0, 2, 0),
        "the writer read what the outcome replaced, not what was leased"
    );
}

pub(crate) async fn retention_takes_the_counts_of_what_it_removes(fixture: &impl Fixture) {
    let keep = Keep {
        retention: Duration::from_secs(120),
        dead_retention: Some(Duration::from_secs(300)),
    };
    let (spool, clock) = open_keeping(fixture, keep, &["erp"]).await;
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
    assert_eq!(
        counted(fixture, &spool).await,
        counts(3, 1, &[("erp", sub(1, 1, 1, 0))])
    );

    tokio::time::sleep(Duration::from_secs(200)).await;
    let done = spool.maintain().await.unwrap();
    assert_eq!((done.notifications, done.quarantined), (1, 1), "{done:?}");
    assert_eq!(
        counted(fixture, &spool).await,
        counts(2, 0, &[("erp", sub(1, 1, 0, 0))]),
        "the delivered one and the quarantined body went"
    );
    assert_eq!(by_source(fixture, &spool).await, sources(&[("tus", 2, 0)]));
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(spool.maintain().await.unwrap().notifications, 1);
    assert_eq!(
        counted(fixture, &spool).await,
        counts(1, 0, &[("erp", sub(1, 0, 0, 0))]),
        "then the dead one, past spool.dead_retention"
    );
    assert_eq!(by_source(fixture, &spool).await, sources(&[("tus", 1, 0)]));
}

pub(crate) async fn each_source_counts_what_it_stored_and_quarantined_and_a_release_moves_one(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["erp"]).await;
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
        by_source(fixture, &spool).await,
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
        by_source(fixture, &spool).await,
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
    assert_eq!(counted_whole(fixture, &spool).await.notifications, 3);
    assert_eq!(
        by_source(fixture, &spool).await,
        sources(&[("nube", 2, 1), ("tus", 1, 0)])
    );
}

fn entry(action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        actor: "ops".into(),
        action: action.into(),
        target: target.into(),
        detail: serde_json::json!({"dry_run": false}),
    }
}

pub(crate) async fn audit_records_are_durable_paged_newest_first_and_retained_like_quarantine(
    fixture: &impl Fixture,
) {
    let keep = Keep {
        retention: Duration::from_secs(120),
        ..Keep::default()
    };
    let (spool, clock) = open_keeping(fixture, keep, &["erp"]).await;
    // A backend that counts its flushes shows the record was in one.
    let flushes = spool.stats().await.flush_starts;
    let first = spool.audit(entry("replay", "one")).await.unwrap();
    if let Some(before) = flushes {
        let after = spool.stats().await.flush_starts.unwrap_or_default();
        assert!(after > before, "answered after a flush that covers it");
    }
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

    let spool = fixture.open(keep, routes(&["erp"]), clock).await.unwrap();
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
    let report = fixture.check().await.unwrap();
    assert_eq!(report.audit_records, 3);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
