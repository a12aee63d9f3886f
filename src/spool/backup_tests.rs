//! The archive format (pure). A spool backed up and restored is sled's
//! (`sled/tests/backup.rs`): a restore makes a directory.

use super::*;
use crate::delivery::State;

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
        Item::Check {
            source: "tus".into(),
            subject: "0001-1".into(),
            check: crate::spool::ReconcileCheck {
                at_ms: 9,
                by: None,
                outcome: crate::spool::CheckOutcome::Final {
                    status: InvoiceStatus::Accepted,
                    notification: id,
                    stored: true,
                },
            },
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
            checks: 1,
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

#[test]
fn an_archive_without_checks_has_the_manifest_older_relays_read() {
    let without: Vec<Item> = items()
        .into_iter()
        .filter(|item| !matches!(item, Item::Check { .. }))
        .collect();
    let (bytes, manifest) = archive_of(&without);
    let json = serde_json::to_string(&manifest.counts).unwrap();
    assert!(!json.contains("checks"), "{json}");
    // And a manifest made before checks existed reads as none.
    let old: ArchiveCounts = serde_json::from_str(
        r#"{"notifications":0,"deliveries":0,"quarantined":0,"audit_records":0,"subscriptions":0,"paused":0,"stuck_marks":0,"walked_marks":0}"#,
    )
    .unwrap();
    assert_eq!(old.checks, 0);
    assert_eq!(read_all(&bytes).unwrap().0, without);
}
