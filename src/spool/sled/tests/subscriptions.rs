//! An API subscription and its audit record are one batch of the writer:
//! a batch that fails (the writer's test hook) keeps neither.

use super::open;
use crate::spool::subscriptions::tests::billing;

fn created(name: &str) -> crate::spool::AuditEntry {
    crate::spool::AuditEntry {
        actor: "erp-team".into(),
        action: "subscription.create".into(),
        target: name.into(),
        detail: serde_json::json!({ "url": "http://10.0.0.5/in" }),
    }
}

/// What a reopened spool holds: the API subscriptions' names and the
/// audit records' (action, target).
async fn reopened(dir: &std::path::Path) -> (Vec<String>, Vec<(String, String)>) {
    let (spool, _) = open(dir, &[]).await;
    let names = spool
        .api_subscriptions()
        .into_iter()
        .map(|s| s.name)
        .collect();
    let records = spool
        .audit_log(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.entry.action, r.entry.target))
        .collect();
    (names, records)
}

#[tokio::test]
async fn a_subscription_and_its_audit_record_land_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), &[]).await;
    let id = spool
        .put_subscription(billing(), created("billing"))
        .await
        .unwrap();
    // The writer's next batch fails: neither half of this one lands.
    spool.fail_next_batch();
    let mut other = billing();
    other.name = "shop".into();
    assert!(spool
        .put_subscription(other, created("shop"))
        .await
        .is_err());
    spool.close().await.unwrap();
    drop(spool);

    let (names, records) = reopened(dir.path()).await;
    assert_eq!(names, ["billing"], "the failed one is not kept");
    assert_eq!(
        records,
        [("subscription.create".to_owned(), "billing".to_owned())],
        "one record, the kept one's"
    );
    let (spool, _) = open(dir.path(), &[]).await;
    assert_eq!(spool.audit_log(None, 1).await.unwrap()[0].id, id);

    // A removal and its record, likewise.
    let mut removed = created("billing");
    removed.action = "subscription.delete".into();
    spool.fail_next_batch();
    assert!(spool
        .remove_subscription("billing", removed.clone())
        .await
        .is_err());
    spool.remove_subscription("billing", removed).await.unwrap();
    spool.close().await.unwrap();
    drop(spool);
    let (names, records) = reopened(dir.path()).await;
    assert!(names.is_empty(), "{names:?}");
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].0, "subscription.delete", "newest first");
}
