//! The invoice index and the queries on it: an invoice's timeline with
//! resends and a final status that does not regress, listing by source,
//! retention taking an invoice with its last notification, the queued
//! notifications waiting in time order, and the stuck check's marks.

use std::time::Duration;

use super::support::{open, open_keeping, received};
use super::{Fixture, Keep};
use crate::providers::{InvoiceStatus, Notification};
use crate::spool::{InvoiceCursor, NotificationId, Spool, Stored, StuckChanges, StuckInvoice};

fn said(dedup: &str, subject: &str, status: InvoiceStatus) -> Notification {
    Notification {
        event_type: format!("facturacion.{}", status.as_str()),
        subject: Some(subject.into()),
        dedup_key: dedup.into(),
        provider_time: None,
        status,
        flags: vec![],
    }
}

async fn store(spool: &Spool, n: Notification, at: i64) -> Stored {
    spool.store(received(at), n).await.unwrap()
}

async fn store_new(spool: &Spool, n: Notification, at: i64) -> NotificationId {
    match store(spool, n, at).await {
        Stored::New(id) => id,
        other => panic!("{other:?}"),
    }
}

pub(crate) async fn an_invoice_keeps_its_timeline_resends_and_a_final_status(
    fixture: &impl Fixture,
) {
    use InvoiceStatus::*;
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let queued = store_new(&spool, said("q", "0001", Queued), now).await;
    // The provider's retry of the same notification: a duplicate, counted.
    for _ in 0..2 {
        assert_eq!(
            store(&spool, said("q", "0001", Queued), now + 1).await,
            Stored::Duplicate(queued)
        );
    }
    let accepted = store_new(&spool, said("a", "0001", Accepted), now + 2).await;
    // A late "queued" after the acceptance does not move it back.
    let late = store_new(&spool, said("q2", "0001", Queued), now + 3).await;
    store_new(&spool, said("o", "0002", Queued), now + 4).await;

    let (invoice, timeline) = spool.invoice("tus", "0001").await.unwrap().unwrap();
    assert_eq!(invoice.status, Accepted);
    assert_eq!(invoice.latest, late);
    let seen: Vec<_> = timeline
        .iter()
        .map(|e| (e.id, e.status, e.superseded, e.resends))
        .collect();
    assert_eq!(
        seen,
        [
            (queued, Queued, false, 2),
            (accepted, Accepted, false, 0),
            (late, Queued, true, 0),
        ]
    );
    assert!(spool.invoice("tus", "0003").await.unwrap().is_none());
    assert!(spool.invoice("datil", "0001").await.unwrap().is_none());

    let all = spool.invoices(None, None, 10).await.unwrap();
    let listed: Vec<_> = all.iter().map(|i| (i.subject.as_str(), i.status)).collect();
    assert_eq!(listed, [("0001", Accepted), ("0002", Queued)]);
    let after = InvoiceCursor::after(&all[0]);
    let rest = spool.invoices(Some("tus"), Some(&after), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].subject, "0002");
    assert!(spool
        .invoices(Some("tu"), None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(spool.invoices(None, None, 1).await.unwrap().len(), 1);
}

pub(crate) async fn two_notifications_of_one_invoice_in_one_group_see_each_other(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let (a, b) = tokio::join!(
        store(&spool, said("a", "0009", InvoiceStatus::Accepted), now),
        store(&spool, said("b", "0009", InvoiceStatus::Queued), now),
    );
    assert!(matches!((a, b), (Stored::New(_), Stored::New(_))));
    let (_, timeline) = spool.invoice("tus", "0009").await.unwrap().unwrap();
    assert_eq!(timeline.len(), 2);
    // Whichever came first, a queued one after the acceptance is superseded.
    let superseded: Vec<bool> = timeline.iter().map(|e| e.superseded).collect();
    let first_is_accepted = timeline[0].status == InvoiceStatus::Accepted;
    assert_eq!(superseded, [false, first_is_accepted]);
}

pub(crate) async fn retention_takes_an_invoice_with_its_last_notification(fixture: &impl Fixture) {
    let keep = Keep {
        retention: Duration::from_secs(120),
        ..Keep::default()
    };
    // No subscription: nothing waits, retention may take them.
    let (spool, clock) = open_keeping(fixture, keep, &[]).await;
    let now = clock.now_ms();
    store_new(&spool, said("a", "0001", InvoiceStatus::Queued), now).await;
    store_new(&spool, said("b", "0001", InvoiceStatus::Accepted), now).await;
    tokio::time::sleep(Duration::from_secs(121)).await;
    let done = spool.maintain().await.unwrap();
    assert_eq!(done.notifications, 2);
    assert!(spool.invoice("tus", "0001").await.unwrap().is_none());
    assert!(spool.invoices(None, None, 10).await.unwrap().is_empty());
}

pub(crate) async fn only_queued_notifications_wait_in_time_order_and_are_read_from_a_point(
    fixture: &impl Fixture,
) {
    use InvoiceStatus::*;
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let first = store_new(&spool, said("q1", "0001", Queued), now).await;
    store_new(&spool, said("a2", "0002", Accepted), now + 1).await;
    let second = store_new(&spool, said("q3", "0003", Queued), now + 2).await;
    // A late queued resend after a final status starts no wait.
    store_new(&spool, said("a1", "0001", Accepted), now + 3).await;
    store_new(&spool, said("q1b", "0001", Queued), now + 4).await;

    let all = spool.waiting("tus", None, now + 10, 10).await.unwrap();
    assert_eq!(
        all,
        [(first, "0001".to_owned()), (second, "0003".to_owned())]
    );
    // Up to a time, and on from a point.
    assert_eq!(
        spool.waiting("tus", None, now + 1, 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        spool
            .waiting("tus", Some(first), now + 10, 10)
            .await
            .unwrap(),
        [(second, "0003".to_owned())]
    );
    assert!(spool
        .waiting("datil", None, now + 10, 10)
        .await
        .unwrap()
        .is_empty());
    let current = spool.invoice_now("tus", "0001").await.unwrap().unwrap();
    assert_eq!(current.status, Accepted);
    assert_eq!(
        spool
            .invoice_now("tus", "0003")
            .await
            .unwrap()
            .unwrap()
            .status,
        Queued
    );
    assert!(spool.invoice_now("tus", "0009").await.unwrap().is_none());
}

pub(crate) async fn the_stuck_marks_are_kept_across_a_reopen_and_removed_when_unmarked(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let since = NotificationId::new(clock.now_ms());
    let stuck = |subject: &str| StuckInvoice {
        source: "tus".into(),
        subject: subject.into(),
        since_ms: since.ms(),
        latest: since,
    };
    spool
        .save_stuck(StuckChanges {
            marked: vec![stuck("0001"), stuck("0002:b")],
            unmarked: vec![],
            walked: vec![("tus".into(), Some(since)), ("datil".into(), Some(since))],
        })
        .await
        .unwrap();
    spool.close().await.unwrap();
    drop(spool);

    let (spool, _) = open(fixture, &["erp"]).await;
    let kept = spool.stuck_marks().await.unwrap();
    assert_eq!(kept.stuck, [stuck("0001"), stuck("0002:b")]);
    assert_eq!(
        kept.walked,
        [("datil".to_owned(), since), ("tus".to_owned(), since)]
    );
    spool
        .save_stuck(StuckChanges {
            marked: vec![],
            unmarked: vec![("tus".into(), "0001".into())],
            walked: vec![("datil".into(), None)],
        })
        .await
        .unwrap();
    let left = spool.stuck_marks().await.unwrap();
    assert_eq!(left.stuck, [stuck("0002:b")]);
    assert_eq!(left.walked, [("tus".to_owned(), since)]);
    spool.close().await.unwrap();
}
