//! A format-1 spool (`tests/fixtures/spool-v1`) opened by today's sled
//! backend: upgraded once, nothing lost, counted, its invoice index built.

use std::path::Path;

use super::counts::{by_source, counted};
use super::open;
use crate::delivery::State;
use crate::providers::InvoiceStatus;
use crate::spool::contract::counts::{counts, sub};
use crate::spool::contract::support::{lease_now, notification, received};
use crate::spool::{Counts, Lease, NotificationId, Stored};

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

#[tokio::test]
async fn a_spool_from_before_the_index_gets_it_once_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1");
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(spool_dir.join("blobs")).unwrap();
    for file in ["conf", "db"] {
        std::fs::copy(fixture.join(file), spool_dir.join(file)).unwrap();
    }
    let (spool, _) = open(dir.path(), &["erp", "crm"]).await;
    let records: Vec<_> = spool.notifications().collect().await.unwrap();
    let mut subjects: Vec<(String, String)> = records
        .iter()
        .filter_map(|r| Some((r.meta.source.clone(), r.meta.subject.clone()?)))
        .collect();
    subjects.sort();
    subjects.dedup();
    assert!(
        !subjects.is_empty(),
        "the fixture's notifications name invoices"
    );
    let listed = spool.invoices(None, None, 100).await.unwrap();
    let listed_subjects: Vec<(String, String)> = listed
        .iter()
        .map(|i| (i.source.clone(), i.subject.clone()))
        .collect();
    assert_eq!(listed_subjects, subjects);
    // Stored before statuses were kept: unknown.
    assert!(listed.iter().all(|i| i.status == InvoiceStatus::Unknown));
    let (source, subject) = &subjects[0];
    let (_, timeline) = spool.invoice(source, subject).await.unwrap().unwrap();
    let of_it = records
        .iter()
        .filter(|r| r.meta.source == *source && r.meta.subject.as_deref() == Some(subject))
        .count();
    assert_eq!(timeline.len(), of_it);
}
