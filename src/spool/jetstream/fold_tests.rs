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
