//! `spool migrate --to jetstream` at the spool level (`spool/migrate.rs`,
//! `import.rs`) and the JetStream backup (`backup.rs`): a real sled spool
//! (fsyncs on) with deliveries in every state, a paused subscription, an
//! API subscription, audit records, a quarantined body, a resend and a
//! reconcile check, copied into a real nats-server; the copy read back,
//! copied again, interrupted and resumed, leased, and backed up into an
//! archive that restores into sled.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use crate::clock::Clock;
use crate::config::SpoolConfig;
use crate::delivery::{Delivery, Outcome, Schedule, State};
use crate::spool::contract::support::{ok, received, routes, store, store_new};
use crate::spool::migrate::{migrate_to_jetstream, MigrateError, Migrated, MigrationProgress};
use crate::spool::subscriptions::tests::billing;
use crate::spool::{
    AuditEntry, CheckOutcome, Lease, NotificationId, ReconcileCheck, Spool, Stored,
};

const SUBSCRIPTIONS: &[&str] = &["erp", "crm"];

/// One attempt whose schedule starts at `now` (a retry 10 s later, then
/// dead): the spool's own clock decides when a retry is due.
async fn attempt(spool: &Spool, lease: &Lease, outcome: Outcome, now: i64) -> Delivery {
    let schedule = Schedule::try_new(vec![Duration::from_secs(10)], 0.0).unwrap();
    let mut delivery = lease.delivery().clone();
    delivery.start(now).unwrap();
    delivery.finish(&schedule, outcome, now, 0.0).unwrap();
    spool.complete(lease, &delivery).await.unwrap();
    delivery
}

async fn lease_one(spool: &Spool, name: &str) -> Lease {
    let mut leases = tokio::time::timeout(Duration::from_secs(10), spool.lease(name, 1))
        .await
        .expect("a delivery due")
        .unwrap();
    assert_eq!(leases.len(), 1);
    leases.pop().unwrap()
}

/// What the sled spool holds, by notification: `erp`'s deliveries are
/// delivered, waiting for a retry in 10 s, dead, never attempted, and
/// waiting for a retry already due; `crm` (paused) has attempted none.
struct Made {
    delivered: NotificationId,
    later: NotificationId,
    dead: NotificationId,
    pending: NotificationId,
    due: NotificationId,
}

/// The config of both spools: sled in `dir`, JetStream on the fixture.
fn both(fixture: &JetStreamFixture, dir: &Path) -> SpoolConfig {
    SpoolConfig {
        sled: crate::spool::sled::contract_tests::config(dir).sled,
        ..fixture.config_for("migrate")
    }
}

fn sled_only(config: &SpoolConfig) -> SpoolConfig {
    SpoolConfig {
        backend: crate::config::SpoolBackend::Sled,
        ..config.clone()
    }
}

async fn make_sled_spool(config: &SpoolConfig) -> Made {
    let clock = Clock::system();
    let spool = Spool::open(&sled_only(config), routes(SUBSCRIPTIONS), clock)
        .await
        .unwrap();
    let now = clock.now_ms();
    let delivered = store_new(&spool, "a", now).await;
    let later = store_new(&spool, "b", now).await;
    let dead = store_new(&spool, "c", now).await;
    let due = store_new(&spool, "d", now).await;
    let pending = store_new(&spool, "e", now).await;
    let failed = || Outcome::Timeout;
    // In lease order (ids): a, b, c, d.
    let lease = lease_one(&spool, "erp").await;
    attempt(&spool, &lease, ok(), now).await;
    let lease = lease_one(&spool, "erp").await;
    attempt(&spool, &lease, failed(), now).await;
    // c fails twice (its retry due at once), then it is dead.
    let lease = lease_one(&spool, "erp").await;
    assert_eq!(lease.id(), dead);
    attempt(&spool, &lease, failed(), now - 20_000).await;
    let lease = lease_one(&spool, "erp").await;
    assert_eq!(lease.id(), dead);
    attempt(&spool, &lease, failed(), now).await;
    let lease = lease_one(&spool, "erp").await;
    assert_eq!(lease.id(), due);
    attempt(&spool, &lease, failed(), now - 20_000).await;
    spool.pause("crm", true).await.unwrap();
    // A resend of `a` inside the window: counted on its invoice.
    assert_eq!(
        store(&spool, "a", now + 1).await,
        Stored::Duplicate(delivered)
    );
    let entry = |action: &str| AuditEntry {
        actor: "ops".into(),
        action: action.into(),
        target: "spool".into(),
        detail: serde_json::json!({ "n": 1 }),
    };
    spool
        .put_subscription(billing(), entry("subscription.create"))
        .await
        .unwrap();
    spool.audit(entry("spool.replay")).await.unwrap();
    spool
        .quarantine(received(now), "invalid_json", "not JSON".into())
        .await
        .unwrap();
    spool
        .record_check(
            "tus",
            "17032",
            ReconcileCheck {
                at_ms: now,
                by: None,
                outcome: CheckOutcome::Pending {
                    said: "EN COLA".into(),
                },
            },
        )
        .await
        .unwrap();
    spool
        .save_stuck(crate::spool::StuckChanges {
            marked: vec![crate::spool::StuckInvoice {
                source: "tus".into(),
                subject: "17032".into(),
                since_ms: now,
                latest: pending,
            }],
            unmarked: vec![],
            walked: vec![("tus".into(), Some(pending))],
        })
        .await
        .unwrap();
    spool.close().await.unwrap();
    Made {
        delivered,
        later,
        dead,
        pending,
        due,
    }
}

/// Everything a reader of a spool sees that the migration must carry.
#[derive(Debug, PartialEq)]
struct Seen {
    notifications: Vec<crate::spool::NotificationRecord>,
    deliveries: Vec<Vec<Delivery>>,
    quarantined: Vec<crate::spool::QuarantineRecord>,
    audit: Vec<crate::spool::AuditRecord>,
    api: Vec<crate::spool::ApiSubscription>,
    paused: std::collections::BTreeSet<String>,
    counts: crate::spool::Counts,
    invoice: Option<crate::spool::Invoice>,
    checks: Vec<ReconcileCheck>,
    stuck: crate::spool::StuckMarks,
}

async fn seen(spool: &Spool) -> Seen {
    let notifications = spool.notifications().collect().await.unwrap();
    let mut deliveries = Vec::new();
    for record in &notifications {
        let id = NotificationId::parse(&record.meta.id).unwrap();
        let mut of = spool.deliveries_of(id).await.unwrap();
        of.sort_by(|a, b| a.subscription.cmp(&b.subscription));
        deliveries.push(of);
    }
    let mut api = spool.api_subscriptions();
    api.sort_by(|a, b| a.name.cmp(&b.name));
    Seen {
        notifications,
        deliveries,
        quarantined: spool.quarantined().collect().await.unwrap(),
        audit: spool.audit_log(None, 100).await.unwrap(),
        api,
        paused: spool.paused(),
        counts: spool.counts(),
        invoice: spool.invoice_now("tus", "17032").await.unwrap(),
        checks: spool.checks("tus", "17032").await.unwrap(),
        stuck: spool.stuck_marks().await.unwrap(),
    }
}

async fn seen_in_sled(config: &SpoolConfig) -> Seen {
    let spool = Spool::open(&sled_only(config), routes(SUBSCRIPTIONS), Clock::system())
        .await
        .unwrap();
    let seen = seen(&spool).await;
    spool.close().await.unwrap();
    seen
}

async fn migrate(config: &SpoolConfig) -> Result<Migrated, MigrateError> {
    migrate_to_jetstream(config, routes(SUBSCRIPTIONS), Clock::system(), |_| {
        ControlFlow::Continue(())
    })
    .await
}

/// The ids `name` is leased until nothing more comes within a second.
async fn leased_ids(spool: &Spool, name: &str) -> Vec<NotificationId> {
    let mut ids = Vec::new();
    let mut held = Vec::new();
    while let Ok(found) = tokio::time::timeout(Duration::from_secs(1), spool.lease(name, 10)).await
    {
        for lease in found.unwrap() {
            ids.push(lease.id());
            held.push(lease);
        }
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_spool_is_copied_whole_then_found_already_there_and_leases_what_was_due() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let dir = tempfile::tempdir().unwrap();
    let config = both(&fixture, dir.path());
    let made = make_sled_spool(&config).await;
    let before = seen_in_sled(&config).await;
    assert_eq!(before.notifications.len(), 5);
    assert_eq!(before.counts.subscriptions["erp"].dead, 1);

    let first = migrate(&config).await.unwrap();
    // 5 notifications, 4 states (`e` was never attempted), 1 resend, API
    // subscription, pause, 2 audit records, 1 quarantined body, 1 check,
    // a stuck mark and how far the stuck check walked.
    assert_eq!(first.progress.copied, 18, "{:?}", first.progress);
    assert_eq!(first.progress.already_there, 0);
    assert_eq!(first.counts, before.counts);
    assert_eq!(first.audit_records, 2);
    let again = migrate(&config).await.unwrap();
    assert_eq!(again.progress.copied, 0, "{:?}", again.progress);
    assert_eq!(again.progress.already_there, 18);
    assert_eq!(again.counts, before.counts);

    // Another relay, folding the stream from its start, reads the same.
    let mut names = SUBSCRIPTIONS.to_vec();
    names.push("billing");
    let relay = fixture
        .open_relay("relay", routes(&names), Clock::system())
        .await
        .unwrap();
    assert_eq!(seen(&relay).await, before);
    let resends = relay.invoice("tus", "17032").await.unwrap().unwrap().1;
    assert_eq!(
        resends.iter().map(|entry| entry.resends).sum::<u32>(),
        1,
        "{resends:?}"
    );
    // What was due goes out: the one never attempted and the retry due
    // now; not the retry due later, nor the delivered or dead ones, nor
    // anything of the paused subscription.
    let mut due = vec![made.pending, made.due];
    due.sort();
    assert_eq!(leased_ids(&relay, "erp").await, due);
    assert!(leased_ids(&relay, "crm").await.is_empty());
    let later = relay.deliveries_of(made.later).await.unwrap();
    assert!(matches!(later[0].state, State::Waiting { .. }));
    assert_eq!(later[0].attempts.len(), 1);
    let dead = relay.deliveries_of(made.dead).await.unwrap();
    assert!(matches!(dead[0].state, State::Dead { .. }));
    assert_eq!(dead[0].attempts.len(), 2);
    let delivered = relay.deliveries_of(made.delivered).await.unwrap();
    assert!(matches!(delivered[0].state, State::Delivered { .. }));
    // A provider's resend inside the window is known for the copy's.
    assert_eq!(
        store(&relay, "a", Clock::system().now_ms()).await,
        Stored::Duplicate(made.delivered)
    );
    relay.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_migration_run_again_ends_with_equal_counts_and_no_duplicates() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let dir = tempfile::tempdir().unwrap();
    let config = both(&fixture, dir.path());
    make_sled_spool(&config).await;
    let before = seen_in_sled(&config).await;
    let stopped = migrate_to_jetstream(&config, routes(SUBSCRIPTIONS), Clock::system(), |p| {
        if p.copied >= 6 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await;
    let Err(MigrateError::Stopped(MigrationProgress { copied, .. })) = stopped else {
        panic!("not stopped: {stopped:?}");
    };
    assert!((6..18).contains(&copied), "{copied}");
    let resumed = migrate(&config).await.unwrap();
    assert!(resumed.progress.already_there >= copied, "{resumed:?}");
    assert_eq!(
        resumed.progress.copied + resumed.progress.already_there,
        18,
        "every record once: {resumed:?}"
    );
    assert_eq!(resumed.counts, before.counts);
    let relay = fixture
        .open_relay("relay", routes(SUBSCRIPTIONS), Clock::system())
        .await
        .unwrap();
    assert_eq!(seen(&relay).await.notifications, before.notifications);
    relay.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_sled_spool_is_refused_and_a_wrong_copy_is_named() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let dir = tempfile::tempdir().unwrap();
    let config = both(&fixture, dir.path());
    let missing = migrate(&config).await.unwrap_err();
    assert!(matches!(missing, MigrateError::NoSpool(_)), "{missing}");
    make_sled_spool(&config).await;
    let held = Spool::open(&sled_only(&config), routes(SUBSCRIPTIONS), Clock::system())
        .await
        .unwrap();
    let refused = migrate(&config).await.unwrap_err();
    assert!(refused.is_locked(), "{refused}");
    held.close().await.unwrap();
    drop(held);
    // Something else in the stream: the counts differ, and say where.
    let other = fixture
        .open_relay("other", routes(SUBSCRIPTIONS), Clock::system())
        .await
        .unwrap();
    store_new(&other, "z", Clock::system().now_ms()).await;
    other.close().await.unwrap();
    let differ = migrate(&config).await.unwrap_err();
    let MigrateError::Mismatch(what) = &differ else {
        panic!("{differ}");
    };
    assert!(
        what.iter()
            .any(|w| w.starts_with("notifications sled 5 JetStream 6")),
        "{what:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_backup_restores_into_sled_with_the_same_records_and_counts() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let dir = tempfile::tempdir().unwrap();
    let config = both(&fixture, dir.path());
    make_sled_spool(&config).await;
    let before = seen_in_sled(&config).await;
    migrate(&config).await.unwrap();
    let relay = fixture
        .open_relay("relay", routes(SUBSCRIPTIONS), Clock::system())
        .await
        .unwrap();
    let (manifest, archive) = relay.backup(Vec::new(), 7, |_: &_| {}).await.unwrap();
    relay.close().await.unwrap();
    assert_eq!(manifest.counts.notifications, 5);
    assert_eq!(manifest.counts.deliveries, 4);
    assert_eq!(manifest.counts.quarantined, 1);
    assert_eq!(manifest.counts.audit_records, 2);
    assert_eq!(manifest.counts.subscriptions, 1);
    assert_eq!(manifest.counts.paused, 1);
    assert_eq!(manifest.counts.checks, 1);
    assert_eq!(manifest.counts.stuck_marks, 1);
    assert_eq!(manifest.counts.walked_marks, 1);

    let target = dir.path().join("restored");
    let restored = Spool::restore(archive.as_slice(), &target, &mut |_| {}).unwrap();
    assert_eq!(restored, manifest);
    let mut restored_config = sled_only(&config);
    restored_config.sled.path = target;
    let after = seen_in_sled(&restored_config).await;
    assert_eq!(after, before);
}
