use super::*;
use crate::config::{ByteSize, HumanDuration};
use std::time::Duration;

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        path: dir.join("spool"),
        dedup_window: HumanDuration(Duration::from_secs(60)),
        cache_capacity: ByteSize(8 << 20),
        sync_data: true,
    }
}

fn incoming(dedup: &str, received_ms: i64) -> Incoming {
    Incoming {
        source: "tus".into(),
        notification: Notification {
            event_type: "facturacion.emitido".into(),
            subject: Some("17032".into()),
            dedup_key: dedup.into(),
            provider_time: None,
        },
        body: Bytes::from_static(b"{\"hook_id\": \"x\"}"),
        content_type: Some("application/json".into()),
        headers: vec![],
        peer: "127.0.0.1".into(),
        received_ms,
    }
}

#[tokio::test]
async fn stores_once_per_dedup_key_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path())).unwrap();
    let Stored::New(first) = spool
        .store(incoming("k1", 1_000), &["erp", "crm"])
        .await
        .unwrap()
    else {
        panic!("first copy must be new");
    };
    assert_eq!(
        spool.store(incoming("k1", 2_000), &["erp"]).await.unwrap(),
        Stored::Duplicate(first)
    );
    assert!(matches!(
        spool.store(incoming("k2", 2_000), &[]).await.unwrap(),
        Stored::New(_)
    ));
    // Past the 60 s window the same key is new again.
    assert!(matches!(
        spool.store(incoming("k1", 62_000), &[]).await.unwrap(),
        Stored::New(_)
    ));
    assert_eq!(spool.notifications().count(), 3);
    assert_eq!(
        spool.deliveries_of(first).unwrap().len(),
        2,
        "fan-out written with the notification"
    );
    // The resend inside the window added no delivery: one due entry for
    // "erp" (the first copy's), one for "crm".
    assert_eq!(spool.due("erp", i64::MAX, 100, |_| false).unwrap().len(), 1);
    assert_eq!(spool.due("crm", i64::MAX, 100, |_| false).unwrap().len(), 1);
    let record = spool.notification(first).unwrap().unwrap();
    assert_eq!(record.body.as_ref(), b"{\"hook_id\": \"x\"}");
    assert_eq!(record.meta.event_type, "facturacion.emitido");
}

#[tokio::test]
async fn the_due_index_hands_out_work_in_time_order_and_moves_on_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path())).unwrap();
    spool.store(incoming("a", 2_000), &["erp"]).await.unwrap();
    spool.store(incoming("b", 1_000), &["erp"]).await.unwrap();
    assert_eq!(spool.next_due_ms("erp", |_| false).unwrap(), Some(1_000));
    assert_eq!(spool.due("erp", 999, 10, |_| false).unwrap().len(), 0);
    let due = spool.due("erp", 5_000, 10, |_| false).unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].notification.meta.dedup_key, "b");
    assert_eq!(
        spool
            .due("erp", 5_000, 10, |id| id == due[0].id)
            .unwrap()
            .len(),
        1
    );

    let mut delivery = due[0].delivery.clone();
    delivery.start(5_000).unwrap();
    let schedule = crate::delivery::Schedule::try_new(vec![Duration::from_secs(10)], 0.0).unwrap();
    delivery
        .finish(&schedule, crate::delivery::Outcome::Timeout, 5_100, 0.0)
        .unwrap();
    spool.record(&due[0], &delivery).await.unwrap();
    assert_eq!(spool.next_due_ms("erp", |_| false).unwrap(), Some(2_000));
    let later = spool.due("erp", 20_000, 10, |_| false).unwrap();
    assert_eq!(later.len(), 2);
    assert_eq!(
        later[1].id, due[0].id,
        "the retry is due 10 s after the failure"
    );
    assert_eq!(later[1].delivery.attempts.len(), 1);
}

#[tokio::test]
async fn a_second_process_gets_a_clear_locked_error() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = Spool::open(&config(dir.path())).unwrap();
    let err = Spool::open(&config(dir.path()))
        .err()
        .expect("second open must fail");
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let spool = Spool::open(&config(dir.path())).unwrap();
        let id = match spool.store(incoming("k", 1_000), &["erp"]).await.unwrap() {
            Stored::New(id) => id,
            other => panic!("{other:?}"),
        };
        spool.close().await;
        id
    };
    let spool = Spool::open(&config(dir.path())).unwrap();
    assert!(spool.notification(id).unwrap().is_some());
    assert_eq!(spool.next_due_ms("erp", |_| false).unwrap(), Some(1_000));
}

#[tokio::test]
async fn quarantine_keeps_the_raw_body_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path())).unwrap();
    spool
        .quarantine(Rejected {
            source: "tus".into(),
            reason_kind: "not_json".into(),
            reason: "expected value".into(),
            body: Bytes::from_static(b"<xml/>"),
            content_type: Some("text/xml".into()),
            headers: vec![],
            peer: "127.0.0.1".into(),
            received_ms: 1,
        })
        .await
        .unwrap();
    let kept: Vec<_> = spool.quarantined().collect::<Result<_, _>>().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].body.as_ref(), b"<xml/>");
    assert_eq!(kept[0].meta.reason_kind, "not_json");
    assert_eq!(spool.notifications().count(), 0);
}

#[tokio::test]
async fn pruning_removes_only_expired_dedup_entries() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path())).unwrap();
    spool.store(incoming("old", 0), &[]).await.unwrap();
    spool.store(incoming("new", 50_000), &[]).await.unwrap();
    assert_eq!(spool.prune_dedup(70_000).unwrap(), 1);
    assert!(matches!(
        spool.store(incoming("new", 70_000), &[]).await.unwrap(),
        Stored::Duplicate(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_flushes_and_none_returns_before_one() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path())).unwrap();
    let before = spool.flushes();
    spool.store(incoming("first", 1_000), &[]).await.unwrap();
    assert!(spool.flushes() > before, "answered before any flush");

    let start = spool.flushes();
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let flushes_before = spool.flushes();
                spool
                    .store(incoming(&format!("k{i}"), 1_000), &["erp"])
                    .await
                    .unwrap();
                assert!(
                    spool.flushes() > flushes_before,
                    "answered before a flush that began after the write"
                );
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let used = spool.flushes() - start;
    assert!(used < 200, "200 writes took {used} flushes: no grouping");
    assert_eq!(spool.notifications().count(), 201);
}

#[tokio::test]
async fn a_closed_spool_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path())).unwrap();
    spool.close().await;
    let err = spool.store(incoming("late", 1_000), &[]).await.unwrap_err();
    assert!(matches!(err, SpoolError::Closed), "{err}");
}

#[tokio::test]
async fn the_writer_answers_probes_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path())).unwrap();
    assert!(spool.writer_alive(Duration::from_secs(5)).await);
    spool.close().await;
    assert!(!spool.writer_alive(Duration::from_secs(5)).await);
}
