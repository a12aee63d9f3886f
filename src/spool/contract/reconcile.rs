//! Reconciliation's part of the contract: an invoice's checks with its
//! provider are kept in order, across a crash, at most the last 100, and
//! go with their invoice; a notification made from the provider's answer
//! is not stored twice, and the provider's own webhook of the same state
//! is a resend of it, not a new delivery.

use std::time::Duration;

use bytes::Bytes;

use super::support::{lease_now, nothing_due, open, open_keeping, received};
use super::{Fixture, Keep};
use crate::providers::{Flag, InvoiceStatus, Notification};
use crate::spool::reconcile::{ANSWER_KEPT, CHECKS_KEPT};
use crate::spool::{
    reconciled_key, CheckOutcome, NotificationId, ReconcileCheck, Spool, SpoolError, Stored,
};

fn webhook(dedup: &str, subject: &str, status: InvoiceStatus) -> Notification {
    Notification {
        event_type: format!("facturacion.{}", status.as_str()),
        subject: Some(subject.into()),
        dedup_key: dedup.into(),
        provider_time: None,
        status,
        flags: vec![],
    }
}

/// What the reconciler stores of a provider's answer that the invoice is
/// final at `status`.
fn reconciled(subject: &str, status: InvoiceStatus) -> Notification {
    Notification {
        dedup_key: reconciled_key(subject, status),
        flags: vec![Flag::Reconciled],
        ..webhook("", subject, status)
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

fn pending(at_ms: i64) -> ReconcileCheck {
    ReconcileCheck {
        at_ms,
        by: None,
        outcome: CheckOutcome::Pending {
            said: "EN COLA, ESPERANDO APROBACION".into(),
        },
    }
}

pub(crate) async fn checks_are_kept_oldest_first_across_a_crash_and_need_their_invoice(
    fixture: &impl Fixture,
) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let queued = store_new(&spool, webhook("q", "0001", InvoiceStatus::Queued), now).await;
    let failed = ReconcileCheck {
        at_ms: now + 1,
        by: Some("ops".into()),
        outcome: CheckOutcome::Failed {
            kind: "unreadable".into(),
            message: "not the provider's JSON".into(),
            http_status: Some(200),
            answer: Some(Bytes::from(vec![b'x'; ANSWER_KEPT + 10])),
        },
    };
    let fin = ReconcileCheck {
        at_ms: now + 2,
        by: None,
        outcome: CheckOutcome::Final {
            status: InvoiceStatus::Accepted,
            notification: queued,
            stored: false,
        },
    };
    for check in [pending(now), failed.clone(), fin.clone(), pending(now + 3)] {
        spool.record_check("tus", "0001", check).await.unwrap();
    }
    // Answered once durable: a crash right after keeps them all.
    fixture.crash(spool).await;
    let (spool, _) = open(fixture, &["erp"]).await;
    let kept = spool.checks("tus", "0001").await.unwrap();
    let cut = ReconcileCheck {
        outcome: CheckOutcome::Failed {
            kind: "unreadable".into(),
            message: "not the provider's JSON".into(),
            http_status: Some(200),
            answer: Some(Bytes::from(vec![b'x'; ANSWER_KEPT])),
        },
        ..failed
    };
    assert_eq!(kept, [pending(now), cut, fin, pending(now + 3)]);
    // Another invoice, another source: none.
    assert!(spool.checks("tus", "0002").await.unwrap().is_empty());
    assert!(spool.checks("datil", "0001").await.unwrap().is_empty());
    // No check of an invoice the spool does not hold.
    let unknown = spool.record_check("tus", "0002", pending(now)).await;
    assert!(
        matches!(unknown, Err(SpoolError::NotFound(_))),
        "{unknown:?}"
    );
    // Two checks of one invoice in one group keep their order.
    let (a, b) = tokio::join!(
        spool.record_check("tus", "0001", pending(now + 10)),
        spool.record_check("tus", "0001", pending(now + 11)),
    );
    a.unwrap();
    b.unwrap();
    let kept = spool.checks("tus", "0001").await.unwrap();
    assert_eq!(kept.len(), 6);
    let mut last_two: Vec<i64> = kept[4..].iter().map(|c| c.at_ms).collect();
    last_two.sort_unstable();
    assert_eq!(last_two, [now + 10, now + 11]);
    spool.close().await.unwrap();
}

pub(crate) async fn an_invoice_keeps_its_last_100_checks(fixture: &impl Fixture) {
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    store_new(&spool, webhook("q", "0001", InvoiceStatus::Queued), now).await;
    let made = CHECKS_KEPT as i64 + 5;
    for n in 0..made {
        spool
            .record_check("tus", "0001", pending(now + n))
            .await
            .unwrap();
    }
    let kept = spool.checks("tus", "0001").await.unwrap();
    let times: Vec<i64> = kept.iter().map(|c| c.at_ms).collect();
    assert_eq!(times, (now + 5..now + made).collect::<Vec<_>>());
    spool.close().await.unwrap();
}

pub(crate) async fn retention_takes_an_invoice_s_checks_with_its_last_notification(
    fixture: &impl Fixture,
) {
    let keep = Keep {
        retention: Duration::from_secs(120),
        ..Keep::default()
    };
    // No subscription: nothing waits, retention may take them.
    let (spool, clock) = open_keeping(fixture, keep, &[]).await;
    let now = clock.now_ms();
    store_new(&spool, webhook("a", "0001", InvoiceStatus::Queued), now).await;
    store_new(&spool, webhook("b", "0002", InvoiceStatus::Queued), now).await;
    spool
        .record_check("tus", "0001", pending(now))
        .await
        .unwrap();
    spool
        .record_check("tus", "0002", pending(now))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    // 0002 has a newer notification, which retention keeps.
    let later = clock.now_ms();
    store_new(&spool, webhook("c", "0002", InvoiceStatus::Accepted), later).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let done = spool.maintain().await.unwrap();
    assert_eq!(done.notifications, 2);
    assert!(spool.invoice("tus", "0001").await.unwrap().is_none());
    assert!(spool.checks("tus", "0001").await.unwrap().is_empty());
    assert_eq!(spool.checks("tus", "0002").await.unwrap(), [pending(now)]);
    // Its last notification goes: its checks with it.
    tokio::time::sleep(Duration::from_secs(121)).await;
    spool.maintain().await.unwrap();
    assert!(spool.invoice("tus", "0002").await.unwrap().is_none());
    assert!(spool.checks("tus", "0002").await.unwrap().is_empty());
    spool.close().await.unwrap();
}

pub(crate) async fn a_reconciled_state_is_stored_once_and_the_provider_s_webhook_of_it_is_a_resend(
    fixture: &impl Fixture,
) {
    use InvoiceStatus::*;
    let (spool, clock) = open(fixture, &["erp"]).await;
    let now = clock.now_ms();
    let queued = store_new(&spool, webhook("q", "0001", Queued), now).await;
    let made = store_new(&spool, reconciled("0001", Accepted), now + 1).await;
    // Asked again: the same answer is not stored twice.
    assert_eq!(
        store(&spool, reconciled("0001", Accepted), now + 2).await,
        Stored::Duplicate(made)
    );
    // The provider's own webhook of that state, late, and its retry: a
    // resend of the reconciled notification, never a delivery of its own.
    for n in 0..2 {
        assert_eq!(
            store(&spool, webhook("a", "0001", Accepted), now + 3 + n).await,
            Stored::Duplicate(made)
        );
    }
    let (invoice, timeline) = spool.invoice("tus", "0001").await.unwrap().unwrap();
    assert_eq!((invoice.status, invoice.latest), (Accepted, made));
    let seen: Vec<_> = timeline
        .iter()
        .map(|e| (e.id, e.status, e.resends))
        .collect();
    assert_eq!(seen, [(queued, Queued, 0), (made, Accepted, 2)]);
    let leases = lease_now(&spool, "erp", 10).await;
    let leased: Vec<_> = leases.iter().map(|l| l.id()).collect();
    assert_eq!(leased, [queued, made]);
    assert!(nothing_due(&spool, "erp", Duration::from_millis(200)).await);
    drop(leases);

    // A different final state from the provider is news: stored.
    let rejected = store_new(&spool, webhook("r", "0001", Rejected), now + 6).await;
    let invoice = spool.invoice_now("tus", "0001").await.unwrap().unwrap();
    assert_eq!((invoice.status, invoice.latest), (Rejected, rejected));

    // An invoice the provider's webhook already made final: the
    // reconciler's answer of that state is not stored.
    let accepted = store_new(&spool, webhook("w", "0002", Accepted), now + 7).await;
    assert_eq!(
        store(&spool, reconciled("0002", Accepted), now + 8).await,
        Stored::Duplicate(accepted)
    );
    let (_, timeline) = spool.invoice("tus", "0002").await.unwrap().unwrap();
    assert_eq!(timeline.len(), 1);
    assert_eq!(timeline[0].resends, 0);
    // Of another state, it is.
    store_new(&spool, reconciled("0002", Deleted), now + 9).await;
    spool.close().await.unwrap();
}
