//! Properties over random sequences of what callers and crashes do:
//! nothing acknowledged is lost (across restarts and crashes), nothing is
//! leased that was not acknowledged nor leased twice at once, every
//! delivery ends delivered or dead; and the kept counts equal a recount
//! after any sequence of changes.
//!
//! Each property runs its recorded failing cases first (found on sled
//! before the suite was parameterised), then random ones (32, or as many
//! as the fixture or `PROPTEST_CASES` says), each on a fresh fixture and a
//! paused current-thread runtime.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::counts::{counted, quarantine_one, store_from};
use super::support::{notification, ok, received, routes};
use super::{Fixture, Keep};
use crate::clock::Clock;
use crate::delivery::{Outcome, Schedule};
use crate::spool::routes::Route;
use crate::spool::{Lease, NotificationId, Routes, Spool, Stored};

/// Runs `run` on the recorded cases, then on [`Fixture::property_cases`]
/// of `strategy`'s, each on a fresh fixture; a failure panics with
/// proptest's smallest failing case.
fn check_property<F: Fixture, S: Strategy, R: Future<Output = ()>>(
    new: impl Fn() -> F,
    recorded: Vec<S::Value>,
    strategy: S,
    run: impl Fn(F, S::Value) -> R,
) {
    let on_paused_runtime = |value: S::Value| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(new(), value));
    };
    for value in recorded {
        on_paused_runtime(value);
    }
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| new().property_cases());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |value| {
        on_paused_runtime(value);
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// Leases due now, if any, within a second of (paused) tokio time.
async fn lease_some(spool: &Spool, sub: &str, n: usize) -> Vec<Lease> {
    tokio::time::timeout(Duration::from_secs(1), spool.lease(sub, n))
        .await
        .map(Result::unwrap)
        .unwrap_or_default()
}

// === nothing acknowledged lost, nothing leased twice, nothing left ===

#[derive(Debug, Clone)]
enum Op {
    Store(u8),
    Lease(&'static str, usize),
    Complete(usize, bool),
    DropLease(usize),
    Replay(u8, &'static str),
    Advance(u64),
    Restart,
    /// The process dies: no clean close, held leases gone with it.
    Crash,
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
        1 => Just(Op::Crash),
    ]
}

pub(crate) fn nothing_acknowledged_is_lost_nor_leased_twice_nor_left_undelivered<F: Fixture>(
    new: impl Fn() -> F,
) {
    let recorded = vec![vec![Op::Store(0)], vec![Op::Store(0), Op::Crash]];
    let ops = proptest::collection::vec(op(), 1..50);
    check_property(new, recorded, ops, |fixture, ops| async move {
        deliveries(&fixture, ops).await;
    });
}

async fn deliveries(fixture: &impl Fixture, ops: Vec<Op>) {
    let keep = Keep {
        retention: Duration::from_secs(120),
        ..Keep::default()
    };
    let names = ["erp", "crm"];
    let clock = Clock::following_tokio();
    let schedule = Schedule::try_new(vec![Duration::from_secs(1)], 0.0).unwrap();
    let mut spool = fixture.open(keep, routes(&names), clock).await.unwrap();
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
                let outcome = if ok {
                    super::support::ok()
                } else {
                    Outcome::Connect
                };
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
                spool = fixture.open(keep, routes(&names), clock).await.unwrap();
            }
            Op::Crash => {
                // An outcome not yet durable may be lost: its delivery is
                // then made again, which the drain below allows.
                held.clear();
                fixture.crash(spool).await;
                spool = fixture.open(keep, routes(&names), clock).await.unwrap();
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
                delivery.finish(&schedule, ok(), now, 0.0).unwrap();
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

// === the kept counts are a recount's, whatever happens ===

#[derive(Debug, Clone)]
enum Change {
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

fn change() -> impl Strategy<Value = Change> {
    let sub = prop_oneof![Just("erp"), Just("crm"), Just("ops")];
    prop_oneof![
        4 => (0u8..12).prop_map(Change::Store),
        1 => Just(Change::Quarantine),
        4 => (sub.clone(), 1usize..4).prop_map(|(s, n)| Change::Lease(s, n)),
        4 => (0usize..4, any::<bool>()).prop_map(|(i, ok)| Change::Complete(i, ok)),
        1 => (0usize..4).prop_map(Change::DropLease),
        2 => (0u8..12, sub).prop_map(|(k, s)| Change::Replay(k, s)),
        2 => (1u64..200).prop_map(Change::Advance),
        1 => Just(Change::Restart),
        1 => any::<bool>().prop_map(Change::Orphan),
    ]
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

pub(crate) fn the_kept_counts_equal_a_recount_after_any_sequence_of_changes<F: Fixture>(
    new: impl Fn() -> F,
) {
    use Change::*;
    let recorded = vec![
        vec![
            Store(0),
            Store(11),
            Lease("crm", 2),
            DropLease(0),
            Complete(0, false),
            Replay(11, "crm"),
        ],
        vec![
            Store(4),
            Store(0),
            Advance(60),
            Lease("erp", 1),
            Store(0),
            Lease("erp", 2),
            Complete(0, true),
            Lease("crm", 1),
            Complete(2, true),
            Advance(61),
            Replay(4, "erp"),
        ],
    ];
    let changes = proptest::collection::vec(change(), 1..60);
    check_property(new, recorded, changes, |fixture, changes| async move {
        kept_counts(&fixture, changes).await;
    });
}

async fn kept_counts(fixture: &impl Fixture, changes: Vec<Change>) {
    let keep = Keep {
        retention: Duration::from_secs(120),
        dead_retention: Some(Duration::from_secs(150)),
    };
    let clock = Clock::following_tokio();
    let schedule = Schedule::try_new(vec![Duration::from_secs(1)], 0.0).unwrap();
    let mut spool = fixture
        .open(keep, subscriptions(true), clock)
        .await
        .unwrap();
    let mut held: Vec<Lease> = Vec::new();
    let mut ids: Vec<NotificationId> = Vec::new();
    for change in changes {
        match change {
            Change::Store(key) => {
                // Two sources, so the per-source counts are tried too.
                let source = if key % 3 == 0 { "nube" } else { "tus" };
                let stored = store_from(&spool, source, &format!("k{key}"), clock.now_ms()).await;
                if let Stored::New(id) = stored {
                    ids.push(id);
                }
            }
            Change::Quarantine => {
                quarantine_one(&spool, clock.now_ms()).await;
            }
            Change::Lease(sub, n) => held.extend(lease_some(&spool, sub, n).await),
            Change::Complete(i, ok) if i < held.len() => {
                let lease = held.remove(i);
                let mut delivery = lease.delivery().clone();
                let now = clock.now_ms();
                delivery.start(now).unwrap();
                let outcome = if ok {
                    super::support::ok()
                } else {
                    Outcome::Connect
                };
                delivery.finish(&schedule, outcome, now, 0.0).unwrap();
                spool.complete(&lease, &delivery).await.unwrap();
            }
            Change::DropLease(i) if i < held.len() => drop(held.remove(i)),
            Change::Complete(..) | Change::DropLease(_) => {}
            Change::Replay(key, sub) => {
                if let Some(id) = ids.get(usize::from(key)) {
                    // Refused or not, the counts must follow.
                    let _ = spool.replay(*id, sub, clock.now_ms()).await;
                }
            }
            Change::Advance(secs) => {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                spool.maintain().await.unwrap();
            }
            Change::Restart => {
                held.clear();
                spool.close().await.unwrap();
                drop(spool);
                spool = fixture
                    .open(keep, subscriptions(true), clock)
                    .await
                    .unwrap();
            }
            Change::Orphan(give) => {
                held.clear();
                spool.close().await.unwrap();
                drop(spool);
                let without = fixture
                    .open(keep, subscriptions(false), clock)
                    .await
                    .unwrap();
                let to = give.then_some("ops");
                without
                    .reassign_orphans("crm", to, clock.now_ms())
                    .await
                    .unwrap();
                counted(fixture, &without).await;
                without.close().await.unwrap();
                drop(without);
                spool = fixture
                    .open(keep, subscriptions(true), clock)
                    .await
                    .unwrap();
            }
        }
        counted(fixture, &spool).await;
    }
    held.clear();
    spool.close().await.unwrap();
    let report = fixture.check().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.repaired.is_empty(), "{:?}", report.repaired);
    assert_eq!(report.counts, report.kept_counts);
}
