//! sled's kept counts: read back on open without a walk (wrong but well
//! formed ones are believed), made by one walk when missing or damaged,
//! and mended by the check, which says what differed.

use std::collections::BTreeMap;

use super::{backend, config, open};
use crate::clock::Clock;
use crate::spool::contract::counts::{
    counts, quarantine_from, quarantine_one, sources, store_from, sub,
};
use crate::spool::contract::support::{attempt, lease_now, ok, store_new};
use crate::spool::{Counts, SourceCounts, Spool};

/// The kept counts, after asserting that sled's walk over every record
/// agrees (per source too); the per-source ones are left out of the
/// answer ([`by_source`] answers them).
pub(super) fn counted(spool: &Spool) -> Counts {
    Counts {
        sources: BTreeMap::new(),
        ..counted_whole(spool)
    }
}

fn counted_whole(spool: &Spool) -> Counts {
    let kept = spool.counts();
    assert_eq!(kept, backend(spool).recount(), "kept counts vs a recount");
    kept
}

/// The kept per-source counts, after asserting that a recount agrees.
pub(super) fn by_source(spool: &Spool) -> BTreeMap<String, SourceCounts> {
    counted_whole(spool).sources
}

/// The totals as `counts.rs` stores them (version 1, two big-endian u64s).
fn totals_value(notifications: u64, quarantined: u64) -> Vec<u8> {
    let mut value = vec![1];
    value.extend_from_slice(&notifications.to_be_bytes());
    value.extend_from_slice(&quarantined.to_be_bytes());
    value
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
    backend(&spool).overwrite_counts(None, Some(&totals_value(999, 1)));
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
    backend(&spool).overwrite_counts(None, None);
    backend(&spool).overwrite_counts(Some("erp"), None);
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(counted(&spool), before);
    // A damaged count key is a recount, not a panic nor an error.
    backend(&spool).overwrite_counts(Some("erp"), Some(b"\x01not eight bytes"));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(counted(&spool), before);
    backend(&spool).overwrite_counts(None, Some(b"\x09junk".as_slice()));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(counted(&spool), before);
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
    backend(&spool).overwrite_source_counts(None, None);
    backend(&spool).overwrite_source_counts(Some("tus"), None);
    backend(&spool).overwrite_source_counts(Some("datil"), None);
    // Wrong totals that the walk must replace: proof that it walked.
    backend(&spool).overwrite_counts(None, Some(&totals_value(999, 1)));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(counted_whole(&spool).notifications, 2, "counted by a walk");
    assert_eq!(by_source(&spool), expected);
    // Kept from then on: a wrong but well-formed source count is believed.
    let mut wrong = vec![1];
    wrong.extend_from_slice(&7u64.to_be_bytes());
    wrong.extend_from_slice(&0u64.to_be_bytes());
    backend(&spool).overwrite_source_counts(Some("tus"), Some(&wrong));
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
    backend(&spool).overwrite_source_counts(Some("tus"), Some(b"\x01short"));
    spool.close().await.unwrap();
    let (spool, _) = open(dir.path(), &["erp"]).await;
    assert_eq!(by_source(&spool), expected);
}
