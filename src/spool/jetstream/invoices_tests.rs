//! The invoice index as the fold keeps it, on an index alone (no server):
//! `superseded` and the waits decided in id order whatever order the
//! stream brought two racing stores in, resends, stuck marks and checks
//! folded and unfolded.

use super::index::{Folded, Index};
use super::subjects::Kind;
use super::Identity;
use crate::providers::InvoiceStatus::{self, Accepted, Queued};
use crate::spool::{NotificationId, NotificationMeta};

fn open_index(dir: &tempfile::TempDir) -> Index {
    let identity = Identity {
        id: "spool-1".into(),
        created_ms: 0,
    };
    Index::open(&dir.path().join("index"), &identity).unwrap()
}

fn meta(id: NotificationId, status: InvoiceStatus) -> String {
    let meta = NotificationMeta {
        id: id.to_string(),
        source: "tus".into(),
        received_ms: id.ms(),
        event_type: "e".into(),
        subject: Some("0001".into()),
        dedup_key: id.to_string(),
        provider_time: None,
        status,
        superseded: false,
        content_type: None,
        headers: vec![],
        peer: "p".into(),
        subscriptions: vec![],
        flags: vec![],
    };
    serde_json::to_string(&meta).unwrap()
}

fn fold(index: &Index, sequence: u64, kind: Kind, meta: Option<&str>) {
    let folded = Folded {
        meta,
        ..Folded::default()
    };
    index.apply(sequence, &kind, &folded).unwrap();
}

#[tokio::test]
async fn a_queued_notification_older_than_an_acceptance_that_came_first_is_decided_again() {
    let dir = tempfile::tempdir().unwrap();
    let index = open_index(&dir);
    let accepted = NotificationId::new(1_000);
    let queued = NotificationId::new(2_000);
    // The later id reaches the stream first.
    fold(
        &index,
        1,
        Kind::Notification(queued),
        Some(&meta(queued, Queued)),
    );
    let waits = |index: &Index| {
        let db = index.db().unwrap();
        db.scan_prefix([super::invoices::QUEUED]).count()
    };
    assert_eq!(waits(&index), 1);
    fold(
        &index,
        2,
        Kind::Notification(accepted),
        Some(&meta(accepted, Accepted)),
    );
    fold(&index, 3, Kind::Resend(queued), None);
    let db = index.db().unwrap();
    let prefix = super::invoices::timeline_prefix("tus", "0001");
    let entries: Vec<_> = db
        .scan_prefix(&prefix)
        .map(|item| super::invoices::Entry::decode(&item.unwrap().1).unwrap())
        .map(|e| (e.status, e.superseded, e.resends, e.after))
        .collect();
    // Newest first: the queued one is superseded, its resend counted.
    assert_eq!(
        entries,
        [(Queued, true, 1, Accepted), (Accepted, false, 0, Accepted)]
    );
    assert_eq!(
        waits(&index),
        0,
        "a superseded queued one waits for nothing"
    );
}

#[tokio::test]
async fn stuck_marks_and_checks_fold_in_and_out() {
    let dir = tempfile::tempdir().unwrap();
    let index = open_index(&dir);
    let since = NotificationId::new(1_000);
    let stuck = Kind::Stuck {
        source: "tus".into(),
        subject: "0001".into(),
    };
    let mark = format!("{{\"since_ms\":1000,\"latest\":\"{since}\"}}");
    fold(&index, 1, stuck.clone(), Some(&mark));
    fold(
        &index,
        2,
        Kind::Walked("tus".into()),
        Some(&since.to_string()),
    );
    let db = index.db().unwrap();
    assert_eq!(db.scan_prefix(b"Ms").count(), 1);
    assert_eq!(db.scan_prefix(b"Mw").count(), 1);
    fold(&index, 3, stuck.clone(), None);
    fold(&index, 4, Kind::Walked("tus".into()), None);
    assert_eq!(db.scan_prefix(b"M").count(), 0);
    // A damaged mark or check is left out, and the fold goes on.
    fold(&index, 5, stuck, Some("{"));
    let check = Kind::Check {
        source: "tus".into(),
        subject: "0001".into(),
    };
    fold(&index, 6, check, Some("x"));
    assert_eq!(index.applied(), 6);
    assert_eq!(db.scan_prefix(b"M").count(), 0);
    assert_eq!(db.scan_prefix(b"K").count(), 0);
}
