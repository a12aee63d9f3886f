//! The archive format (pure), and a spool backed up and restored.

use super::*;
use crate::delivery::{Outcome, State};
use crate::spool::tests::{attempt, config, lease_now, ok, open, received, store_new};
use crate::spool::{AuditEntry, Spool, Stored};

fn items() -> Vec<Item> {
    let id = NotificationId::new(1_700_000_000_000);
    let mut delivery = Delivery::new("erp", 1_700_000_000_000);
    delivery.state = State::Delivered {
        at_ms: 1_700_000_000_500,
    };
    vec![
        Item::Subscription(b"\x01{\"name\":\"crm\"}".to_vec()),
        Item::Paused("crm".into()),
        Item::Notification(NotificationItem {
            id,
            record: (0..4000u32).flat_map(|n| n.to_be_bytes()).collect(),
            deliveries: vec![delivery],
            invoice: Some(IndexEntry {
                status: InvoiceStatus::Queued,
                superseded: false,
                resends: 2,
                after: InvoiceStatus::Queued,
            }),
        }),
        Item::Quarantined {
            id: NotificationId::new(1_700_000_000_001),
            record: b"quarantined".to_vec(),
        },
        Item::Audit {
            id: AuditId::next_after(None, 1_700_000_000_002),
            entry: b"{\"actor\":\"ops\"}".to_vec(),
        },
        Item::Stuck(StuckInvoice {
            source: "tus".into(),
            subject: "0001-1".into(),
            since_ms: 5,
            latest: id,
        }),
        Item::Walked {
            source: "tus".into(),
            upto: id,
        },
    ]
}

fn archive_of(items: &[Item]) -> (Vec<u8>, Manifest) {
    let mut writer = ArchiveWriter::new(Vec::new(), 42).unwrap();
    for item in items {
        writer.put(item).unwrap();
    }
    let newest = items.iter().find_map(|item| match item {
        Item::Notification(n) => Some(n.id),
        _ => None,
    });
    let (manifest, bytes) = writer.finish(newest).unwrap();
    (bytes, manifest)
}

fn read_all(bytes: &[u8]) -> Result<(Vec<Item>, Manifest), BackupError> {
    let mut reader = ArchiveReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(item) = reader.next_item()? {
        out.push(item);
    }
    Ok((out, reader.manifest().cloned().expect("manifest")))
}

/// The archive's content, to damage it and compress it again.
fn content(bytes: &[u8]) -> Vec<u8> {
    zstd::decode_all(bytes).unwrap()
}

fn compressed(content: &[u8]) -> Vec<u8> {
    zstd::encode_all(content, 3).unwrap()
}

#[test]
fn every_kind_round_trips_with_a_manifest_of_counts_newest_and_checksum() {
    let items = items();
    let (bytes, manifest) = archive_of(&items);
    let (read, read_manifest) = read_all(&bytes).unwrap();
    assert_eq!(read, items);
    assert_eq!(read_manifest, manifest);
    assert_eq!(manifest.format, FORMAT);
    assert_eq!(manifest.created_ms, 42);
    let newest = items.iter().find_map(|item| match item {
        Item::Notification(n) => Some(n.id.to_string()),
        _ => None,
    });
    assert_eq!(manifest.newest, newest);
    assert_eq!(
        manifest.counts,
        ArchiveCounts {
            notifications: 1,
            deliveries: 1,
            quarantined: 1,
            audit_records: 1,
            subscriptions: 1,
            paused: 1,
            stuck_marks: 1,
            walked_marks: 1,
        }
    );
    assert_eq!(manifest.sha256.len(), 64);
    // The checksum is of the content before the end item.
    let content = content(&bytes);
    let end = content.len() - 5 - serde_json::to_vec(&manifest).unwrap().len();
    assert_eq!(manifest.sha256, hex(&Sha256::digest(&content[..end])));
    assert_eq!(verify(bytes.as_slice()).unwrap(), manifest);
}

#[test]
fn a_changed_byte_is_refused_by_the_checksum() {
    let (bytes, _) = archive_of(&items());
    let mut content = content(&bytes);
    // A byte of the notification's record, deep inside the content.
    let at = content.len() / 2;
    content[at] ^= 0x01;
    let err = verify(compressed(&content).as_slice()).unwrap_err();
    assert!(matches!(err, BackupError::Checksum { .. }), "{err}");
}

#[test]
fn counts_that_differ_from_the_manifest_are_refused() {
    let (bytes, _) = archive_of(&items());
    let content = content(&bytes);
    let needle = b"\"notifications\":1";
    let at = content
        .windows(needle.len())
        .rposition(|w| w == needle)
        .expect("manifest counts");
    let mut changed = content.clone();
    changed[at + "\"notifications\":".len()] = b'2';
    let err = verify(compressed(&changed).as_slice()).unwrap_err();
    assert!(matches!(err, BackupError::Counts(_)), "{err}");
}

#[test]
fn a_truncated_archive_is_refused() {
    let (bytes, _) = archive_of(&items());
    for cut in [bytes.len() / 2, bytes.len() - 1] {
        let err = verify(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, BackupError::Truncated(_)),
            "cut at {cut}: {err}"
        );
    }
    // Cut right before its end item: every item whole, the manifest gone.
    let content = content(&bytes);
    let manifest_len = {
        let (_, manifest) = read_all(&bytes).unwrap();
        serde_json::to_vec(&manifest).unwrap().len()
    };
    let without_end = &content[..content.len() - 5 - manifest_len];
    let err = verify(compressed(without_end).as_slice()).unwrap_err();
    assert!(matches!(err, BackupError::Truncated(_)), "{err}");
}

#[test]
fn anything_else_is_refused_as_not_an_archive_or_damaged() {
    let err = verify(&b"hello, not an archive"[..]).unwrap_err();
    assert!(matches!(err, BackupError::NotAnArchive), "{err}");
    let err = verify(compressed(b"some other zstd content").as_slice()).unwrap_err();
    assert!(matches!(err, BackupError::NotAnArchive), "{err}");
    let (bytes, _) = archive_of(&items());
    let mut longer = content(&bytes);
    longer.extend_from_slice(b"more");
    let err = verify(compressed(&longer).as_slice()).unwrap_err();
    assert!(matches!(err, BackupError::Damaged(_)), "{err}");
}

// === a spool, backed up and restored ===

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
    let counts_before = spool.counts();
    let (bytes, manifest) = backup_of(&spool).await;
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

    let spool = Spool::open(
        &restored_config,
        crate::spool::tests::routes(&["erp", "crm"]),
        clock,
    )
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
    // The dedup entries were rebuilt: a resend is still a duplicate.
    assert_eq!(
        crate::spool::tests::store(&spool, "a", now + 1).await,
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
    spool.sled().pretend_durable_upto(durable);
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
