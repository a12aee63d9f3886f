//! The fold's rules on an index alone (no server): how each kind of
//! message moves the counts, whatever order a relay meets them in, and
//! what a reopen loads; the audit log's pages and the API subscriptions
//! as the index keeps them.

use super::index::{Folded, Index};
use super::subjects::{token, Kind};
use super::Identity;
use crate::spool::contract::counts::{counts, sources, sub};
use crate::spool::subscriptions::tests::billing;
use crate::spool::{AuditEntry, AuditId, Counts, NotificationId, NotificationMeta};

fn open_index(dir: &tempfile::TempDir) -> Index {
    let identity = Identity {
        id: "spool-1".into(),
        created_ms: 0,
    };
    Index::open(&dir.path().join("index"), &identity).unwrap()
}

fn meta(id: NotificationId, subscriptions: &[&str]) -> String {
    let meta = NotificationMeta {
        id: id.to_string(),
        source: "tus".into(),
        received_ms: 1,
        event_type: "e".into(),
        subject: None,
        dedup_key: id.to_string(),
        provider_time: None,
        status: crate::providers::InvoiceStatus::Unknown,
        superseded: false,
        content_type: None,
        headers: vec![],
        peer: "p".into(),
        subscriptions: subscriptions.iter().map(|s| (*s).to_owned()).collect(),
        flags: vec![],
    };
    serde_json::to_string(&meta).unwrap()
}

/// Folds message `sequence` (the next one).
struct Feed<'a> {
    index: &'a Index,
    sequence: u64,
}

impl Feed<'_> {
    fn fold(&mut self, kind: Kind, folded: Folded<'_>) {
        self.sequence += 1;
        self.index.apply(self.sequence, &kind, &folded).unwrap();
    }

    fn state(&mut self, subscription: &str, id: NotificationId, lease: &str, standing: &str) {
        let kind = Kind::Delivery {
            subscription: token(subscription),
            id,
        };
        let due_ms = (lease != "final").then_some(5);
        let (lease, standing) = (Some(lease), Some(standing));
        self.fold(
            kind,
            Folded {
                lease,
                standing,
                due_ms,
                ..Folded::default()
            },
        );
    }
}

fn with(meta: &str) -> Folded<'_> {
    Folded {
        meta: Some(meta),
        ..Folded::default()
    }
}

fn with_sources(mut counts: Counts, of: &[(&str, u64, u64)]) -> Counts {
    counts.sources = sources(of);
    counts
}

#[test]
fn each_message_moves_the_counts_as_sled_s_writer_would_and_a_reopen_loads_them() {
    let dir = tempfile::tempdir().unwrap();
    let index = open_index(&dir);
    let mut feed = Feed {
        index: &index,
        sequence: 0,
    };
    let (n1, n2, q1) = (
        NotificationId::new(1),
        NotificationId::new(2),
        NotificationId::new(3),
    );
    let stored = meta(n1, &["erp", "a.b"]);
    feed.fold(Kind::Notification(n1), with(&stored));
    let one = counts(1, 0, &[("a.b", sub(1, 0, 0, 0)), ("erp", sub(1, 0, 0, 0))]);
    assert_eq!(
        index.counts.now(),
        with_sources(one.clone(), &[("tus", 1, 0)])
    );
    feed.fold(Kind::Notification(n1), with(&stored));
    assert_eq!(
        index.counts.now().notifications,
        1,
        "a replacement counts once"
    );

    feed.state("erp", n1, "final", "delivered");
    feed.state("a.b", n1, "wait", "waiting");
    feed.state("old", n1, "due", "waiting"); // given to it later
    feed.state("erp", n1, "final", "purged");
    feed.state("erp", n2, "final", "dead"); // of no notification held
    let moved = counts(
        1,
        0,
        &[
            ("a.b", sub(1, 0, 0, 0)),
            ("erp", sub(0, 0, 0, 1)),
            ("old", sub(1, 0, 0, 0)),
        ],
    );
    assert_eq!(
        index.counts.now(),
        with_sources(moved.clone(), &[("tus", 1, 0)])
    );

    let junk = r#"{"source":"nube","id":"x"}"#;
    feed.fold(Kind::Quarantine(q1), with(junk));
    feed.fold(Kind::Quarantine(q1), with(junk));
    let held = Counts {
        quarantined: 1,
        ..moved.clone()
    };
    assert_eq!(
        index.counts.now(),
        with_sources(held, &[("nube", 0, 1), ("tus", 1, 0)])
    );
    let unread = NotificationId::new(4);
    feed.fold(Kind::Quarantine(unread), with("{"));
    assert_eq!(index.counts.now().quarantined, 2, "in the total alone");
    feed.fold(Kind::Quarantine(unread), Folded::default());
    let released = Folded {
        meta: Some(&meta(n2, &[])),
        released: Some(q1),
        ..Folded::default()
    };
    feed.fold(Kind::Notification(n2), released);
    feed.fold(Kind::Quarantine(q1), Folded::default()); // its tombstone
    let after = Counts {
        notifications: 2,
        ..moved
    };
    let want = with_sources(after, &[("tus", 2, 0)]);
    assert_eq!(
        index.counts.now(),
        want,
        "a release moves one; nube holds nothing"
    );

    // A message seen again after a restart of the tail changes nothing.
    index
        .apply(1, &Kind::Notification(n1), &with(&stored))
        .unwrap();
    assert_eq!(index.counts.now(), want);
    index.close(true).unwrap();
    drop(index);
    assert_eq!(open_index(&dir).counts.now(), want, "loaded");
}

fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        actor: "ops".into(),
        action: action.into(),
        target: "t".into(),
        detail: serde_json::json!(null),
    }
}

#[test]
fn the_audit_log_pages_newest_first_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let index = open_index(&dir);
    let mut feed = Feed {
        index: &index,
        sequence: 0,
    };
    let mut ids = Vec::new();
    let mut last = None;
    for n in 0..5 {
        let id = AuditId::next_after(last, 1_000 + n);
        last = Some(id);
        ids.push(id);
        let json = serde_json::to_string(&entry(&format!("a{n}"))).unwrap();
        feed.fold(Kind::Audit(id), with(&json));
    }
    let page = |before, limit| -> Vec<AuditId> {
        let records = index.audit_log(before, limit).unwrap();
        records.iter().map(|r| r.id).collect()
    };
    assert_eq!(page(None, 2), [ids[4], ids[3]]);
    assert_eq!(page(Some(ids[3]), 2), [ids[2], ids[1]]);
    assert_eq!(page(Some(ids[1]), 2), [ids[0]]);
    assert!(page(Some(ids[0]), 2).is_empty());
    assert!(page(None, 0).is_empty());
    let newest = index.audit_log(None, 1).unwrap();
    assert_eq!(newest[0].entry, entry("a4"));
    assert_eq!(newest[0].at_ms, 1_004);
    assert_eq!(index.newest_audit().unwrap(), Some(ids[4]));
}

#[test]
fn an_api_subscription_is_its_latest_message_and_a_removal_forgets_its_pause() {
    let dir = tempfile::tempdir().unwrap();
    let index = open_index(&dir);
    let mut feed = Feed {
        index: &index,
        sequence: 0,
    };
    let json = serde_json::to_string(&billing()).unwrap();
    feed.fold(Kind::ApiSubscription("billing".into()), with(&json));
    feed.fold(Kind::ApiSubscription("broken".into()), with("{"));
    let pause = r#"{"subscription":"billing","paused":true}"#;
    feed.fold(Kind::Pause, with(pause));
    assert_eq!(
        index.api_subscriptions().unwrap(),
        [billing()],
        "the broken one left out"
    );
    assert!(index.is_paused("billing").unwrap());
    feed.fold(Kind::ApiSubscription("billing".into()), Folded::default());
    assert!(index.api_subscriptions().unwrap().is_empty());
    assert!(!index.is_paused("billing").unwrap());
}

/// An invoice's notification: `subject` at `status`, to these subscriptions.
fn invoice_meta(
    id: NotificationId,
    subject: &str,
    status: crate::providers::InvoiceStatus,
    subscriptions: &[&str],
) -> String {
    let mut meta: NotificationMeta = serde_json::from_str(&meta(id, subscriptions)).unwrap();
    meta.subject = Some(subject.to_owned());
    meta.status = status;
    serde_json::to_string(&meta).unwrap()
}

/// Every key and value of an index.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Every key and value of an index, and its counts.
fn contents(index: &Index) -> (Pairs, Counts) {
    let pairs = index
        .db()
        .unwrap()
        .iter()
        .map(|pair| {
            let (key, value) = pair.unwrap();
            (key.to_vec(), value.to_vec())
        })
        .collect();
    (pairs, index.counts.now())
}

/// Folds numbered messages into `index` as one burst.
fn fold_burst(index: &Index, burst: &[(u64, &(Kind, Folded<'_>))]) {
    index
        .apply_burst(
            burst
                .iter()
                .map(|(sequence, (kind, folded))| Ok((*sequence, kind.clone(), folded))),
        )
        .unwrap();
}

#[test]
fn a_burst_folds_to_the_same_index_as_its_messages_one_by_one() {
    use super::subjects::Removed;
    use crate::providers::InvoiceStatus::{Accepted, Queued, Rejected};
    let id = NotificationId::new;
    let (n1, n2, n3, n4, q1) = (id(1), id(2), id(3), id(4), id(5));
    let metas = [
        invoice_meta(n1, "F-1", Queued, &["erp", "audit"]),
        invoice_meta(n2, "F-1", Accepted, &["erp"]),
        // Older than n2 but folded after it: n2's entry is decided again.
        invoice_meta(n3, "F-1", Rejected, &["erp"]),
        invoice_meta(n4, "F-2", Queued, &["audit"]),
    ];
    let quarantined = r#"{"source":"nube","id":"q"}"#;
    let state = |lease: &'static str, standing: &'static str| Folded {
        lease: Some(lease),
        standing: Some(standing),
        due_ms: (lease != "final").then_some(7),
        ..Folded::default()
    };
    let delivery = |subscription: &str, id| Kind::Delivery {
        subscription: token(subscription),
        id,
    };
    // Each message reads what the ones before it wrote: a state before
    // and after its notification, a resend, a removal, a quarantined body
    // and its release.
    let messages: Vec<(Kind, Folded<'_>)> = vec![
        (delivery("erp", n1), state("due", "waiting")),
        (Kind::Notification(n1), with(&metas[0])),
        (delivery("erp", n1), state("final", "delivered")),
        (Kind::Notification(n2), with(&metas[1])),
        (Kind::Resend(n2), Folded::default()),
        (Kind::Quarantine(q1), with(quarantined)),
        (delivery("audit", n1), state("wait", "waiting")),
        (
            Kind::Notification(n4),
            Folded {
                meta: Some(&metas[3]),
                released: Some(q1),
                ..Folded::default()
            },
        ),
        (Kind::Notification(n3), with(&metas[2])),
        (delivery("erp", n2), state("final", "dead")),
        (Kind::Removed(Removed::Notification(n1)), Folded::default()),
        (delivery("audit", n4), state("final", "delivered")),
        (Kind::Resend(n3), Folded::default()),
    ];

    let one_by_one_dir = tempfile::tempdir().unwrap();
    let one_by_one = open_index(&one_by_one_dir);
    for (sequence, (kind, folded)) in (1..).zip(&messages) {
        one_by_one.apply(sequence, kind, folded).unwrap();
    }
    let want = contents(&one_by_one);
    assert_eq!(want.1.notifications, 3, "{:?}", want.1);

    for size in [2, 3, messages.len()] {
        let dir = tempfile::tempdir().unwrap();
        let bursts = open_index(&dir);
        let numbered: Vec<(u64, &(Kind, Folded<'_>))> = (1..).zip(&messages).collect();
        for burst in numbered.chunks(size) {
            fold_burst(&bursts, burst);
        }
        assert_eq!(contents(&bursts), want, "bursts of {size}");
        // A burst seen again after a restart of the tail changes nothing.
        fold_burst(&bursts, &numbered);
        assert_eq!(contents(&bursts), want, "bursts of {size}, again");
    }
}
