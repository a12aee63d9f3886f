//! A sled spool backed up and restored into a directory: what comes back,
//! what is left out (past the durable watermark), and the targets a
//! restore refuses.

use super::{backend, config, open};
use crate::delivery::{Outcome, State};
use crate::spool::backup::{ArchiveReader, BackupError, Item, Manifest};
use crate::spool::contract::support::{attempt, lease_now, ok, received, routes, store, store_new};
use crate::spool::{AuditEntry, CheckOutcome, ReconcileCheck, Spool, Stored};

/// Every item of an archive (as `backup_tests.rs` reads one).
fn read_all(bytes: &[u8]) -> Result<(Vec<Item>, Manifest), BackupError> {
    let mut reader = ArchiveReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(item) = reader.next_item()? {
        out.push(item);
    }
    Ok((out, reader.manifest().cloned().expect("manifest")))
}

async fn backup_of(spool: &Spool) -> (Vec<u8>, Manifest) {
    let (manifest, bytes) = spool.backup(Vec::new(), 1, |_: &_| {}).await.unwrap();
    (bytes, manifest)
}

#[tokio::test(start_paused = true)]
async fn a_restored_spool_holds_the_notifications_their_deliveries_and_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp", "crm"]).await;
    let now = clock.now_ms();
    let delivered = store_new(&spool, "a", now).await;
    let waiting = store_new(&spool, "b", now).await;
    let pending = store_new(&spool, "c", now).await;
    let leases = lease_now(&spool, "erp", 2).await;
    attempt(&spool, &leases[0], ok(), now).await;
    attempt(&spool, &leases[1], Outcome::Timeout, now).await;
    drop(leases);
    spool.pause("crm", true).await.unwrap();
    spool
        .audit(AuditEntry {
            actor: "ops".into(),
            action: "spool.backup".into(),
            target: "spool".into(),
            detail: serde_json::Value::Null,
        })
        .await
        .unwrap();
    spool
        .quarantine(received(now), "invalid_json", "no".into())
        .await
        .unwrap();
    let check = |at_ms, said: &str| ReconcileCheck {
        at_ms,
        by: None,
        outcome: CheckOutcome::Pending { said: said.into() },
    };
    for (n, said) in ["EN COLA", "EN COLA otra vez"].iter().enumerate() {
        spool
            .record_check("tus", "17032", check(now + n as i64, said))
            .await
            .unwrap();
    }
    let counts_before = spool.counts();
    let (bytes, manifest) = backup_of(&spool).await;
    assert_eq!(manifest.counts.checks, 2);
    assert_eq!(manifest.newest, Some(pending.to_string()));
    assert_eq!(manifest.counts.notifications, 3);
    assert_eq!(manifest.counts.deliveries, 2);
    assert_eq!(manifest.counts.quarantined, 1);
    assert_eq!(manifest.counts.audit_records, 1);
    assert_eq!(manifest.counts.paused, 1);
    spool.close().await.unwrap();

    let target = dir.path().join("restored");
    let restored = Spool::restore(bytes.as_slice(), &target, &mut |_| {}).unwrap();
    assert_eq!(restored, manifest);
    let mut restored_config = config(dir.path());
    restored_config.sled.path = target.clone();
    assert!(
        Spool::stopped_cleanly(&restored_config),
        "a restored spool is marked as cleanly stopped"
    );
    let report = Spool::check(&restored_config, false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.counts.as_ref(), report.kept_counts.as_ref());

    let spool = Spool::open(&restored_config, routes(&["erp", "crm"]), clock)
        .await
        .unwrap();
    assert_eq!(spool.counts(), counts_before);
    let state = async |id| spool.deliveries_of(id).await.unwrap()[0].state;
    assert!(matches!(state(delivered).await, State::Delivered { .. }));
    assert!(matches!(state(waiting).await, State::Waiting { .. }));
    assert!(matches!(state(pending).await, State::Pending));
    assert!(spool.is_paused("crm"));
    assert_eq!(spool.audit_log(None, 10).await.unwrap().len(), 1);
    assert_eq!(spool.quarantined().count().await, 1);
    // The checks came back in order, and the next one goes after them.
    spool
        .record_check("tus", "17032", check(now + 5, "ACEPTADO"))
        .await
        .unwrap();
    assert_eq!(
        spool.checks("tus", "17032").await.unwrap(),
        [
            check(now, "EN COLA"),
            check(now + 1, "EN COLA otra vez"),
            check(now + 5, "ACEPTADO")
        ]
    );
    // The dedup entries were rebuilt: a resend is still a duplicate.
    assert_eq!(
        store(&spool, "a", now + 1).await,
        Stored::Duplicate(delivered)
    );
    // The one never attempted comes first; the failed one when due.
    let first = lease_now(&spool, "erp", 10).await;
    assert_eq!(first.iter().map(|l| l.id()).collect::<Vec<_>>(), [pending]);
    drop(first);
    tokio::time::advance(std::time::Duration::from_secs(11)).await;
    let ids: Vec<_> = lease_now(&spool, "erp", 10)
        .await
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(
        ids.contains(&waiting) && !ids.contains(&delivered),
        "{ids:?}"
    );
    spool.close().await.unwrap();
}

#[tokio::test]
async fn nothing_newer_than_the_durable_watermark_is_backed_up() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    let now = clock.now_ms();
    let durable = store_new(&spool, "a", now).await;
    store_new(&spool, "b", now).await;
    backend(&spool).pretend_durable_upto(durable);
    let (bytes, manifest) = backup_of(&spool).await;
    assert_eq!(manifest.newest, Some(durable.to_string()));
    assert_eq!(manifest.counts.notifications, 1);
    let (items, _) = read_all(&bytes).unwrap();
    assert!(items
        .iter()
        .all(|item| !matches!(item, Item::Notification(n) if n.id != durable)));
    spool.close().await.unwrap();
}

#[tokio::test]
async fn a_restore_refuses_a_non_empty_target_and_leaves_nothing_of_a_bad_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, clock) = open(dir.path(), &["erp"]).await;
    store_new(&spool, "a", clock.now_ms()).await;
    let (bytes, _) = backup_of(&spool).await;
    spool.close().await.unwrap();

    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("something"), b"x").unwrap();
    let err = Spool::restore(bytes.as_slice(), &occupied, &mut |_| {}).unwrap_err();
    assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1);

    let target = dir.path().join("new");
    let err = Spool::restore(&bytes[..bytes.len() - 8], &target, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, BackupError::Truncated(_) | BackupError::Damaged(_)),
        "{err}"
    );
    assert!(!target.exists(), "a failed restore leaves no spool behind");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|name| !name.to_string_lossy().contains("restoring")),
        "{leftovers:?}"
    );
    // An empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Spool::restore(bytes.as_slice(), &empty, &mut |_| {}).unwrap();
    assert!(empty.join("db").exists());
}
