//! The audit log and API subscriptions on JetStream, against a real
//! nats-server: records durable, paged newest first and walked oldest
//! first, seen by every relay and across a reopen, with ids that follow
//! those found on open; API subscriptions kept with their audit record,
//! seen by every relay, a change on a stale view refused.

use std::time::Duration;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use super::JetStreamSpool;
use crate::clock::Clock;
use crate::spool::contract::support::routes;
use crate::spool::subscriptions::tests::billing;
use crate::spool::{ApiSubscription, AuditEntry, AuditId, Backend, Spool, SpoolError};

fn entry(action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        actor: "ops".into(),
        action: action.into(),
        target: target.into(),
        detail: serde_json::json!({"dry_run": false}),
    }
}

fn backend(spool: &Spool) -> &JetStreamSpool {
    match &spool.backend {
        Backend::Jetstream(backend) => backend,
        Backend::Sled(_) => panic!("a sled spool in the JetStream fixture"),
    }
}

/// `check` of `spool` once it holds, or after 5 s (another relay folds
/// a moment later).
async fn becomes<T>(spool: &Spool, check: impl Fn(&Spool) -> Option<T>) -> Option<T> {
    for _ in 0..250 {
        if let Some(found) = check(spool) {
            return Some(found);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn audit_records_are_durable_paged_newest_first_and_seen_by_every_relay() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let t = 1_700_000_000_000;
    let clock = Clock::manual(t);
    let a = fixture
        .open_relay("a", routes(&["erp"]), clock)
        .await
        .unwrap();
    let first = a.audit(entry("replay", "one")).await.unwrap();
    clock.advance(Duration::from_secs(100));
    let second = a.audit(entry("purge", "two")).await.unwrap();
    let third = a.audit(entry("pause", "three")).await.unwrap();
    assert!(first < second && second < third, "ids in commit order");
    assert_eq!(
        (first.ms(), second.ms()),
        (t, t + 100_000),
        "the spool's clock"
    );

    let page = a.audit_log(None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        [third, second]
    );
    assert_eq!(page[0].entry, entry("pause", "three"));
    assert_eq!(page[0].at_ms, third.ms());
    let next = a.audit_log(Some(page[1].id), 2).await.unwrap();
    assert_eq!(next.iter().map(|r| r.id).collect::<Vec<_>>(), [first]);
    assert!(a.audit_log(Some(first), 2).await.unwrap().is_empty());
    assert!(a.audit_log(None, 0).await.unwrap().is_empty());
    a.close().await.unwrap();

    // Another relay, with a clock a minute behind: it sees them all, and
    // its ids still follow them.
    let behind = Clock::manual(t + 40_000);
    let b = fixture
        .open_relay("b", routes(&["erp"]), behind)
        .await
        .unwrap();
    let all: Vec<AuditId> = b
        .audit_records()
        .collect()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all, [first, second, third], "oldest first");
    let fourth = b.audit(entry("resume", "four")).await.unwrap();
    assert!(fourth > third, "new ids follow those found on open");
    b.close().await.unwrap();

    let a = fixture
        .open_relay("a", routes(&["erp"]), clock)
        .await
        .unwrap();
    let ids: Vec<AuditId> = a
        .audit_log(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [fourth, third, second, first], "kept across a reopen");
    a.close().await.unwrap();
}

fn named(spool: &Spool) -> Vec<ApiSubscription> {
    spool.api_subscriptions()
}

#[tokio::test]
async fn api_subscriptions_are_kept_with_their_audit_record_on_every_relay() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let open = |name: &'static str| fixture.open_relay(name, routes(&["erp"]), Clock::system());
    let (a, b) = (open("a").await.unwrap(), open("b").await.unwrap());
    let created = a
        .put_subscription(billing(), entry("subscription.create", "billing"))
        .await
        .unwrap();
    assert_eq!(named(&a), [billing()], "read your writes");
    let seen = becomes(&b, |b| (!named(b).is_empty()).then(|| named(b))).await;
    assert_eq!(seen, Some(vec![billing()]), "on the other relay");

    // Rotated on relay b; relay a sees the new secret.
    let mut rotated = billing();
    rotated.secret = "whsec_rotated".into();
    let rotation = b
        .put_subscription(rotated.clone(), entry("subscription.rotate", "billing"))
        .await
        .unwrap();
    let seen = becomes(&a, |a| (named(a) == [rotated.clone()]).then_some(())).await;
    assert!(seen.is_some(), "{:?}", named(&a));
    let log = a.audit_log(None, 10).await.unwrap();
    let ids: Vec<AuditId> = log.iter().map(|r| r.id).collect();
    assert!(ids.contains(&created) && ids.contains(&rotation), "{ids:?}");

    // A change made on a view older than the subscription's is refused.
    let json = serde_json::to_string(&billing()).unwrap();
    let stale = backend(&a).change_subscription("billing", Some(json), 0, created);
    assert!(matches!(stale.await, Err(SpoolError::Unavailable(_))));
    assert_eq!(named(&a), [rotated.clone()], "unchanged");

    // Removed: gone with its pause, on both relays; removing again only
    // audits; made again over the tombstone.
    a.pause("billing", true).await.unwrap();
    a.remove_subscription("billing", entry("subscription.delete", "billing"))
        .await
        .unwrap();
    assert!(named(&a).is_empty());
    assert!(!a.is_paused("billing"), "a later one starts unpaused");
    assert!(becomes(&b, |b| named(b).is_empty().then_some(()))
        .await
        .is_some());
    let again = a
        .remove_subscription("billing", entry("subscription.delete", "billing"))
        .await
        .unwrap();
    assert_eq!(a.audit_log(None, 1).await.unwrap()[0].id, again);
    a.put_subscription(billing(), entry("subscription.create", "billing"))
        .await
        .unwrap();
    a.close().await.unwrap();
    b.close().await.unwrap();

    let a = open("a").await.unwrap();
    assert_eq!(named(&a), [billing()], "kept across a reopen");
    a.close().await.unwrap();
}
