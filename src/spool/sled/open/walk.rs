//! Reading a spool of unknown health: walks over the tree's entries, each
//! read under `catch_quietly`, that report a part sled cannot read as a
//! gap and go on past it; the record walks `spool dump` uses.

use std::ops::Bound;
use std::panic::AssertUnwindSafe;

use ::sled::{IVec, Tree};

use super::super::quiet_panic::catch_quietly;
use super::super::{keys, Store};
use super::repair::{panic_text, sled_text};
use crate::spool::record::{HasId, Record};
use crate::spool::{audit, AuditRecord, SpoolError};

/// The kinds of entries (key prefixes) of the spool's tree.
const KINDS: [u8; 11] = [
    keys::AUDIT,
    keys::CHECK,
    super::super::invoices::ENTRY,
    super::super::invoices::WAITING,
    keys::CURSOR,
    keys::DEDUP,
    keys::DELIVERY,
    keys::NOTIFICATION,
    keys::QUARANTINE,
    keys::RETRY,
    keys::DEDUP_EXPIRY,
];

/// One step of a [`Walk`].
pub(super) enum Step {
    Entry(IVec, IVec),
    /// sled cannot read the entries of the walk's `kind` (None: keys of no
    /// kind) after `after` (or from the first) up to `resume` (or to the
    /// last).
    Gap {
        kind: Option<u8>,
        after: Option<IVec>,
        resume: Option<IVec>,
        error: String,
    },
}

/// The entries of a key range in order, each read under `catch_quietly`.
/// Where sled cannot read a part (a damaged page fails the same way however
/// often it is asked), the walk reports a gap and goes on from the first
/// entry after it that a walk back from the end of the range reaches.
pub(super) struct Walk {
    tree: Tree,
    /// The kind of entries walked; None for the keys between two kinds.
    kind: Option<u8>,
    start: Bound<IVec>,
    end: Bound<IVec>,
    iter: Option<::sled::Iter>,
    /// Where the forward walk (re)starts.
    from: Bound<IVec>,
    last: Option<IVec>,
    /// Where the last gap resumed: a walk that fails there again ends.
    resumed_at: Option<IVec>,
    done: bool,
}

impl Walk {
    /// The entries under `prefix`.
    fn prefix(tree: Tree, prefix: u8) -> Walk {
        let end = match prefix.checked_add(1) {
            Some(next) => Bound::Excluded(IVec::from(&[next])),
            None => Bound::Unbounded,
        };
        Walk::new(
            tree,
            Some(prefix),
            Bound::Included(IVec::from(&[prefix])),
            end,
        )
    }

    /// The whole tree, one kind of entry after the other: each kind is
    /// walked on its own, so damage among one kind's entries does not hide
    /// the others.
    pub(super) fn whole(tree: Tree) -> impl Iterator<Item = Step> {
        let mut edges: Vec<u8> = KINDS
            .iter()
            .flat_map(|&p| [Some(p), p.checked_add(1)])
            .flatten()
            .collect();
        edges.sort_unstable();
        edges.dedup();
        let ranges: Vec<(Option<u8>, Bound<IVec>, Bound<IVec>)> = (0..=edges.len())
            .map(|i| {
                let first = i.checked_sub(1).and_then(|j| edges.get(j)).copied();
                let kind = first.filter(|f| KINDS.contains(f));
                let start = first.map_or(Bound::Unbounded, |f| Bound::Included(IVec::from(&[f])));
                let end = edges
                    .get(i)
                    .map_or(Bound::Unbounded, |&e| Bound::Excluded(IVec::from(&[e])));
                (kind, start, end)
            })
            .collect();
        ranges
            .into_iter()
            .flat_map(move |(kind, start, end)| Walk::new(tree.clone(), kind, start, end))
    }

    fn new(tree: Tree, kind: Option<u8>, start: Bound<IVec>, end: Bound<IVec>) -> Walk {
        Walk {
            tree,
            kind,
            from: start.clone(),
            start,
            end,
            iter: None,
            last: None,
            resumed_at: None,
            done: false,
        }
    }

    fn gap(&mut self, error: String) -> Step {
        self.iter = None;
        let after = self.last.clone();
        match self.first_of_readable_tail() {
            Some(key) if self.resumed_at.as_ref() != Some(&key) => {
                self.from = Bound::Included(key.clone());
                self.resumed_at = Some(key.clone());
                Step::Gap {
                    kind: self.kind,
                    after,
                    resume: Some(key),
                    error,
                }
            }
            _ => {
                self.done = true;
                Step::Gap {
                    kind: self.kind,
                    after,
                    resume: None,
                    error,
                }
            }
        }
    }

    /// Walking back from the end of the range to where sled fails (or to
    /// the last entry read): the first key of what is readable there.
    fn first_of_readable_tail(&self) -> Option<IVec> {
        let lower = self
            .last
            .clone()
            .map_or_else(|| self.start.clone(), Bound::Excluded);
        let mut back = self.tree.range::<IVec, _>((lower, self.end.clone()));
        let mut first = None;
        while let Ok(Some(Ok((key, _)))) = catch_quietly(AssertUnwindSafe(|| back.next_back())) {
            first = Some(key);
        }
        first
    }
}

impl Iterator for Walk {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        if self.done {
            return None;
        }
        let (tree, from, end) = (&self.tree, &self.from, &self.end);
        let iter = self
            .iter
            .get_or_insert_with(|| tree.range::<IVec, _>((from.clone(), end.clone())));
        match catch_quietly(AssertUnwindSafe(|| iter.next())) {
            Ok(None) => {
                self.done = true;
                None
            }
            Ok(Some(Ok((key, value)))) => {
                self.last = Some(key.clone());
                Some(Step::Entry(key, value))
            }
            Ok(Some(Err(err))) => Some(self.gap(sled_text(&err))),
            Err(panic) => Some(self.gap(format!("sled panicked: {}", panic_text(&panic)))),
        }
    }
}

/// An entry's key in words: its kind, and its id or name where it has one.
pub(super) fn describe(key: &[u8]) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let id = keys::id_of(key).map(|id| id.to_string());
    let described = match key.first().copied() {
        Some(keys::NOTIFICATION) => id.map(|id| format!("notification {id}")),
        Some(keys::QUARANTINE) => id.map(|id| format!("quarantined body {id}")),
        Some(keys::DELIVERY) => id.map(|id| {
            format!(
                "delivery record of {id} for {:?}",
                text(key.get(17..).unwrap_or_default())
            )
        }),
        Some(keys::RETRY) => {
            keys::split_retry(key).map(|(name, _, id)| format!("retry of {id} for {name:?}"))
        }
        Some(keys::DEDUP_EXPIRY) => {
            keys::split_dedup_expiry(key).map(|(_, id)| format!("dedup expiry of {id}"))
        }
        Some(keys::AUDIT) => keys::audit_id_of(key).map(|id| format!("audit record {id}")),
        Some(keys::DEDUP) => Some(format!("dedup entry {:?}", text(&key[1..]))),
        Some(keys::CURSOR) => Some(format!("cursor of {:?}", text(&key[1..]))),
        _ => None,
    };
    described.unwrap_or_else(|| format!("entry {key:?}"))
}

/// A gap in words: which entries, between which readable ones.
pub(super) fn gap_text(
    kind: Option<u8>,
    after: Option<&IVec>,
    resume: Option<&IVec>,
    error: &str,
) -> String {
    let what = match kind {
        Some(keys::AUDIT) => "audit records",
        Some(keys::CURSOR) => "cursors",
        Some(keys::DEDUP) => "dedup entries",
        Some(keys::DELIVERY) => "delivery records",
        Some(keys::NOTIFICATION) => "notifications",
        Some(keys::QUARANTINE) => "quarantined bodies",
        Some(keys::RETRY) => "retries",
        Some(keys::DEDUP_EXPIRY) => "dedup expiries",
        Some(super::super::invoices::ENTRY) => "invoice index entries",
        Some(super::super::invoices::WAITING) => "waiting invoice entries",
        Some(keys::CHECK) => "reconcile checks",
        _ => "entries",
    };
    let from = after.map_or_else(
        || "from the first one".into(),
        |k| format!("after {}", describe(k)),
    );
    let to = resume.map_or_else(
        || "to the last one".into(),
        |k| format!("up to {} (readable again from there)", describe(k)),
    );
    format!("sled cannot read the {what} {from} {to} ({error})")
}

/// The records under `prefix`, oldest first: a damaged one is an `Err`
/// naming it, a part sled cannot read is an `Err` naming the records
/// around it, and the walk goes on past both.
pub fn records_of<M>(
    store: std::sync::Arc<Store>,
    prefix: u8,
) -> impl Iterator<Item = Result<Record<M>, SpoolError>>
where
    M: serde::Serialize + for<'de> serde::Deserialize<'de> + HasId,
{
    Walk::prefix(store.tree.clone(), prefix).map(move |step| {
        // Held for the walk: a reopen waits for readers to let go.
        let _store = &store;
        match step {
            Step::Entry(key, value) => Record::decode(&value)
                .map_err(|err| SpoolError::Corrupt(format!("{}: {err}", describe(&key)))),
            Step::Gap {
                kind,
                after,
                resume,
                error,
            } => Err(SpoolError::Corrupt(gap_text(
                kind,
                after.as_ref(),
                resume.as_ref(),
                &error,
            ))),
        }
    })
}

/// The audit records, oldest first, as [`records_of`] walks records.
pub fn audit_records_of(
    store: std::sync::Arc<Store>,
) -> impl Iterator<Item = Result<AuditRecord, SpoolError>> {
    Walk::prefix(store.tree.clone(), keys::AUDIT).map(move |step| {
        let _store = &store;
        match step {
            Step::Entry(key, value) => keys::audit_id_of(&key)
                .ok_or_else(|| SpoolError::Corrupt(format!("malformed audit key {key:?}")))
                .and_then(|id| audit::decode_record(id, &value)),
            Step::Gap {
                kind,
                after,
                resume,
                error,
            } => Err(SpoolError::Corrupt(gap_text(
                kind,
                after.as_ref(),
                resume.as_ref(),
                &error,
            ))),
        }
    })
}
