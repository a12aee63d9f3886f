//! The counts of what the spool holds (notifications, quarantined bodies,
//! each subscription's deliveries by where they stand), kept exact without
//! ever walking the spool to serve them.
//!
//! The writer applies every change, so it keeps them: each change stages
//! its effect in the [`Tally`], and the batch that applies the change also
//! writes the counts it touched (one key per subscription or source
//! touched, one for the totals). So after a crash they are exactly as durable as what they
//! count, and opening loads them in O(subscriptions). Only a spool made
//! before they existed (or whose count keys are damaged) is walked once, on
//! open, by [`recount`]; `spool check` walks too and compares.
//!
//! Where a delivery stands, for the counts: no record yet (pending), in
//! flight or waiting for a retry are all *waiting*; then delivered, dead or
//! purged. A notification counts one delivery per subscription it was
//! fanned out to, plus one per delivery record of a subscription it was
//! given to later (orphans reassigned).
//!
//! Per source, the notifications stored and the bodies in quarantine. A
//! spool whose counts predate these has the totals but not the
//! [`keys::SOURCE_COUNTS_KEPT`] mark: it is counted once on open, like one
//! without counts.

use std::collections::BTreeSet;
use std::iter::Peekable;
use std::sync::Mutex;

use ::sled::{Batch, IVec, Tree};

use super::{decode_delivery, keys, lock, storage, Store};
use crate::delivery::State;
use crate::spool::record::{NotificationMeta, QuarantineMeta, Record};
use crate::spool::{Counts, SourceCounts, SpoolError, SubscriptionCounts};

/// The layout of the count values: a version byte, then big-endian u64s.
const COUNTS_V1: u8 = 1;

/// Where a delivery stands, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Waiting,
    Dead,
    Delivered,
    Purged,
}

impl Standing {
    pub fn of(state: &State) -> Standing {
        match state {
            State::Pending | State::InFlight { .. } | State::Waiting { .. } => Standing::Waiting,
            State::Delivered { .. } => Standing::Delivered,
            State::Dead { .. } => Standing::Dead,
            State::Purged { .. } => Standing::Purged,
        }
    }

    pub fn is_final(self) -> bool {
        self != Standing::Waiting
    }

    fn slot(self, counts: &mut SubscriptionCounts) -> &mut u64 {
        match self {
            Standing::Waiting => &mut counts.waiting,
            Standing::Dead => &mut counts.dead,
            Standing::Delivered => &mut counts.delivered,
            Standing::Purged => &mut counts.purged,
        }
    }
}

// === the stored form ===

fn encode_u64s(values: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 * values.len());
    out.push(COUNTS_V1);
    for value in values {
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

fn decode_u64s<const N: usize>(bytes: &[u8]) -> Option<[u64; N]> {
    let (&version, rest) = bytes.split_first()?;
    if version != COUNTS_V1 || rest.len() != 8 * N {
        return None;
    }
    let mut out = [0; N];
    for (value, chunk) in out.iter_mut().zip(rest.chunks_exact(8)) {
        *value = u64::from_be_bytes(chunk.try_into().ok()?);
    }
    Some(out)
}

fn encode_totals(counts: &Counts) -> Vec<u8> {
    encode_u64s(&[counts.notifications, counts.quarantined])
}

fn encode_subscription(counts: &SubscriptionCounts) -> Vec<u8> {
    encode_u64s(&[counts.waiting, counts.dead, counts.delivered, counts.purged])
}

fn encode_source(counts: &SourceCounts) -> Vec<u8> {
    encode_u64s(&[counts.stored, counts.quarantined])
}

/// The source of a quarantined body, read from its record; None when the
/// record cannot be read (it is then in the total alone, here and in a
/// recount alike).
pub fn quarantined_source(value: &[u8]) -> Option<String> {
    Record::<QuarantineMeta>::decode(value)
        .ok()
        .map(|record| record.meta.source)
}

/// The counts a spool keeps, as found on open.
#[derive(Debug)]
pub enum Kept {
    Found(Counts),
    /// Made before counts were kept (or never opened by this version).
    Missing,
    /// Made before the per-source counts were kept: the others are there.
    WithoutSources,
    /// A count key cannot be read: which, and why.
    Damaged(String),
}

/// Reads the kept counts: one key per subscription, and the totals.
pub fn load(tree: &Tree) -> Result<Kept, SpoolError> {
    let Some(totals) = tree.get(keys::COUNT_TOTALS).map_err(storage)? else {
        return Ok(Kept::Missing);
    };
    let Some([notifications, quarantined]) = decode_u64s::<2>(&totals) else {
        return Ok(Kept::Damaged(format!("the totals key holds {totals:?}")));
    };
    if tree
        .get(keys::SOURCE_COUNTS_KEPT)
        .map_err(storage)?
        .is_none()
    {
        return Ok(Kept::WithoutSources);
    }
    let mut counts = Counts {
        notifications,
        quarantined,
        ..Counts::default()
    };
    for item in tree.scan_prefix(keys::SOURCE_COUNTS) {
        let (key, value) = item.map_err(storage)?;
        let name = key.get(keys::SOURCE_COUNTS.len()..).unwrap_or_default();
        let Ok(name) = std::str::from_utf8(name) else {
            return Ok(Kept::Damaged(format!(
                "a source count key is not UTF-8: {key:?}"
            )));
        };
        let Some([stored, quarantined]) = decode_u64s::<2>(&value) else {
            return Ok(Kept::Damaged(format!(
                "the counts of source {name:?} hold {value:?}"
            )));
        };
        counts.sources.insert(
            name.to_owned(),
            SourceCounts {
                stored,
                quarantined,
            },
        );
    }
    for item in tree.scan_prefix(keys::SUBSCRIPTION_COUNTS) {
        let (key, value) = item.map_err(storage)?;
        let name = key
            .get(keys::SUBSCRIPTION_COUNTS.len()..)
            .unwrap_or_default();
        let Ok(name) = std::str::from_utf8(name) else {
            return Ok(Kept::Damaged(format!("a count key is not UTF-8: {key:?}")));
        };
        let Some([waiting, dead, delivered, purged]) = decode_u64s::<4>(&value) else {
            return Ok(Kept::Damaged(format!(
                "the counts of {name:?} hold {value:?}"
            )));
        };
        counts.subscriptions.insert(
            name.to_owned(),
            SubscriptionCounts {
                waiting,
                dead,
                delivered,
                purged,
            },
        );
    }
    Ok(Kept::Found(counts))
}

/// Writes `counts` whole, in place of whatever was kept (a subscription or
/// source kept but absent from `counts` is removed).
pub fn write_all(tree: &Tree, counts: &Counts) -> Result<(), SpoolError> {
    let mut batch = Batch::default();
    for item in tree.scan_prefix(keys::SUBSCRIPTION_COUNTS).keys() {
        batch.remove(item.map_err(storage)?);
    }
    for (name, subscription) in &counts.subscriptions {
        if !subscription.is_zero() {
            batch.insert(
                keys::subscription_counts(name),
                encode_subscription(subscription),
            );
        }
    }
    for item in tree.scan_prefix(keys::SOURCE_COUNTS).keys() {
        batch.remove(item.map_err(storage)?);
    }
    for (name, source) in &counts.sources {
        if !source.is_zero() {
            batch.insert(keys::source_counts(name), encode_source(source));
        }
    }
    batch.insert(keys::SOURCE_COUNTS_KEPT, &[]);
    batch.insert(keys::COUNT_TOTALS, encode_totals(counts));
    tree.apply_batch(batch).map_err(storage)
}

// === the walk ===

/// What a walk over every record counted, and what it could not read.
#[derive(Debug, Default)]
pub struct Recount {
    pub counts: Counts,
    /// Notification or delivery records that could not be decoded: their
    /// deliveries are not counted.
    pub unreadable: u64,
}

/// Counts every notification's deliveries, and the quarantined bodies:
/// the notifications and the delivery records are both in id order, so
/// one pass over each, side by side, finds each one's records.
pub fn recount(tree: &Tree) -> Result<Recount, SpoolError> {
    let mut out = Recount::default();
    let mut records = tree.scan_prefix([keys::DELIVERY]).peekable();
    for item in tree.scan_prefix([keys::NOTIFICATION]) {
        let (key, value) = item.map_err(storage)?;
        out.counts.notifications += 1;
        let Some(id) = keys::id_of(&key) else {
            out.unreadable += 1;
            continue;
        };
        let recorded = records_up_to(&mut records, &id.to_bytes(), &mut out.unreadable)?;
        let Ok(record) = Record::<NotificationMeta>::decode(&value) else {
            out.unreadable += 1;
            continue;
        };
        source_entry(&mut out.counts, &record.meta.source).stored += 1;
        let subscriptions = &record.meta.subscriptions;
        for name in subscriptions {
            // A damaged record of this subscription stands nowhere known.
            let standing = match recorded.iter().find(|(n, _)| n == name) {
                Some((_, Some(standing))) => *standing,
                Some((_, None)) => continue,
                None => Standing::Waiting,
            };
            add(&mut out.counts, name, standing);
        }
        for (name, standing) in &recorded {
            if let (false, Some(standing)) = (subscriptions.contains(name), standing) {
                add(&mut out.counts, name, *standing);
            }
        }
    }
    for item in tree.scan_prefix([keys::QUARANTINE]) {
        let (_, value) = item.map_err(storage)?;
        out.counts.quarantined += 1;
        if let Some(source) = quarantined_source(&value) {
            source_entry(&mut out.counts, &source).quarantined += 1;
        }
    }
    Ok(out)
}

fn source_entry<'a>(counts: &'a mut Counts, source: &str) -> &'a mut SourceCounts {
    counts.sources.entry(source.to_owned()).or_default()
}

fn add(counts: &mut Counts, name: &str, standing: Standing) {
    let entry = counts.subscriptions.entry(name.to_owned()).or_default();
    *standing.slot(entry) += 1;
}

/// The delivery records of notification `id` (its 16 bytes), by
/// subscription, with where each stands (None: undecodable); those of
/// earlier ids (whose notification is gone) are passed over.
fn records_up_to(
    records: &mut Peekable<::sled::Iter>,
    id: &[u8; 16],
    unreadable: &mut u64,
) -> Result<Vec<(String, Option<Standing>)>, SpoolError> {
    let mut out = Vec::new();
    loop {
        let position = match records.peek() {
            None => break,
            Some(Err(_)) => {
                return match records.next() {
                    Some(Err(err)) => Err(storage(err)),
                    _ => Err(SpoolError::Storage(crate::spool::cause(
                        "a delivery record walk failed",
                    ))),
                }
            }
            Some(Ok((key, _))) => key.get(1..17).map(|of| of.cmp(id.as_slice())),
        };
        match position {
            Some(std::cmp::Ordering::Greater) => break,
            Some(std::cmp::Ordering::Less) | None => {
                records.next();
            }
            Some(std::cmp::Ordering::Equal) => {
                if let Some(Ok((key, value))) = records.next() {
                    out.push(record_standing(&key, &value, unreadable));
                }
            }
        }
    }
    Ok(out)
}

fn record_standing(key: &IVec, value: &IVec, unreadable: &mut u64) -> (String, Option<Standing>) {
    let name = String::from_utf8_lossy(key.get(17..).unwrap_or_default()).into_owned();
    match decode_delivery(value) {
        Ok(delivery) => (name, Some(Standing::of(&delivery.state))),
        Err(_) => {
            *unreadable += 1;
            (name, None)
        }
    }
}

// === the writer's tally ===

/// The writer's working counts: what is applied, plus what the changes of
/// the batch being built staged. [`Tally::apply`] writes the touched counts
/// into the batch, applies it and publishes them; if the batch is not
/// applied, [`Tally::discard`] takes back what was staged.
pub struct Tally {
    counts: Counts,
    /// Subscriptions whose counts were staged since the last apply.
    dirty: BTreeSet<String>,
    /// Sources whose counts were staged since the last apply.
    sources_dirty: BTreeSet<String>,
    totals_dirty: bool,
    /// A count went below zero once: warned, so the log is not flooded.
    warned: bool,
}

impl Tally {
    pub fn new(counts: Counts) -> Tally {
        Tally {
            counts,
            dirty: BTreeSet::new(),
            sources_dirty: BTreeSet::new(),
            totals_dirty: false,
            warned: false,
        }
    }

    /// A new notification of `source`, one waiting delivery per
    /// subscription.
    pub fn stored(&mut self, source: &str, subscriptions: &[String]) {
        self.counts.notifications += 1;
        self.totals_dirty = true;
        self.change_source(source, |counts| counts.stored += 1);
        for name in subscriptions {
            self.added(name, Standing::Waiting);
        }
    }

    pub fn quarantined(&mut self, source: &str) {
        self.counts.quarantined += 1;
        self.totals_dirty = true;
        self.change_source(source, |counts| counts.quarantined += 1);
    }

    /// A delivery of `subscription` went from one standing to another.
    pub fn moved(&mut self, subscription: &str, from: Standing, to: Standing) {
        if from != to {
            self.removed(subscription, from);
            self.added(subscription, to);
        }
    }

    pub fn added(&mut self, subscription: &str, standing: Standing) {
        self.change(subscription, |counts| *standing.slot(counts) += 1);
    }

    pub fn removed(&mut self, subscription: &str, standing: Standing) {
        let underflow = self.change(subscription, |counts| {
            let slot = standing.slot(counts);
            match slot.checked_sub(1) {
                Some(less) => *slot = less,
                None => return true,
            }
            false
        });
        if underflow {
            self.drifted(subscription, &format!("{standing:?}"));
        }
    }

    /// Retention removed a notification of `source` with these deliveries.
    pub fn removed_notification<'a>(
        &mut self,
        source: &str,
        deliveries: impl IntoIterator<Item = (&'a str, Standing)>,
    ) {
        self.counts.notifications = self.counts.notifications.saturating_sub(1);
        self.totals_dirty = true;
        self.lower_source(source, |counts| &mut counts.stored);
        for (name, standing) in deliveries {
            self.removed(name, standing);
        }
    }

    /// A quarantined body left (retention, discard, release); `source` is
    /// None when its record could not be read (see [`quarantined_source`]).
    pub fn removed_quarantined(&mut self, source: Option<&str>) {
        self.counts.quarantined = self.counts.quarantined.saturating_sub(1);
        self.totals_dirty = true;
        if let Some(source) = source {
            self.lower_source(source, |counts| &mut counts.quarantined);
        }
    }

    /// Takes one from a source's count, warning once if it is already 0.
    fn lower_source(&mut self, source: &str, slot: impl FnOnce(&mut SourceCounts) -> &mut u64) {
        let underflow = self.change_source(source, |counts| {
            let slot = slot(counts);
            match slot.checked_sub(1) {
                Some(less) => *slot = less,
                None => return true,
            }
            false
        });
        if underflow {
            self.drifted(source, "source");
        }
    }

    /// Changes one source's counts and marks them to be written; like
    /// [`Tally::change`], no allocation for a source already in this batch.
    fn change_source<R>(&mut self, name: &str, change: impl FnOnce(&mut SourceCounts) -> R) -> R {
        if !self.sources_dirty.contains(name) {
            self.sources_dirty.insert(name.to_owned());
        }
        match self.counts.sources.get_mut(name) {
            Some(counts) => change(counts),
            None => {
                let mut counts = SourceCounts::default();
                let out = change(&mut counts);
                self.counts.sources.insert(name.to_owned(), counts);
                out
            }
        }
    }

    /// Changes one subscription's counts and marks them to be written.
    /// On the ingest path: no allocation unless the name is new to the map
    /// or to this batch.
    fn change<R>(&mut self, name: &str, change: impl FnOnce(&mut SubscriptionCounts) -> R) -> R {
        if !self.dirty.contains(name) {
            self.dirty.insert(name.to_owned());
        }
        match self.counts.subscriptions.get_mut(name) {
            Some(counts) => change(counts),
            None => {
                let mut counts = SubscriptionCounts::default();
                let out = change(&mut counts);
                self.counts.subscriptions.insert(name.to_owned(), counts);
                out
            }
        }
    }

    /// `name` is a subscription or a source, `count` which of its counts.
    fn drifted(&mut self, name: &str, count: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                name,
                count,
                "a count would go below zero: the counts disagree with the spool; \
                 `webhook-relay spool check` (relay stopped) recounts and rewrites them"
            );
        }
    }

    /// Writes the staged counts into `batch`, applies it, and publishes
    /// them to `published`; if sled refuses the batch, the staged counts
    /// are taken back.
    pub fn apply(
        &mut self,
        store: &Store,
        mut batch: Batch,
        published: &Mutex<Counts>,
    ) -> Result<(), SpoolError> {
        for name in &self.dirty {
            let key = keys::subscription_counts(name);
            match self.counts.subscriptions.get(name) {
                Some(counts) if !counts.is_zero() => {
                    batch.insert(key, encode_subscription(counts));
                }
                _ => batch.remove(key),
            }
        }
        for name in &self.sources_dirty {
            let key = keys::source_counts(name);
            match self.counts.sources.get(name) {
                Some(counts) if !counts.is_zero() => {
                    batch.insert(key, encode_source(counts));
                }
                _ => batch.remove(key),
            }
        }
        if self.totals_dirty {
            batch.insert(keys::COUNT_TOTALS, encode_totals(&self.counts));
        }
        if let Err(err) = store.tree.apply_batch(batch) {
            self.discard(published);
            return Err(storage(err));
        }
        let mut shown = lock(published);
        for name in std::mem::take(&mut self.dirty) {
            match self.counts.subscriptions.get(&name) {
                Some(counts) if !counts.is_zero() => {
                    shown.subscriptions.insert(name, counts.clone());
                }
                _ => {
                    self.counts.subscriptions.remove(&name);
                    shown.subscriptions.remove(&name);
                }
            }
        }
        for name in std::mem::take(&mut self.sources_dirty) {
            match self.counts.sources.get(&name) {
                Some(counts) if !counts.is_zero() => {
                    shown.sources.insert(name, counts.clone());
                }
                _ => {
                    self.counts.sources.remove(&name);
                    shown.sources.remove(&name);
                }
            }
        }
        if std::mem::take(&mut self.totals_dirty) {
            shown.notifications = self.counts.notifications;
            shown.quarantined = self.counts.quarantined;
        }
        Ok(())
    }

    /// Takes back what was staged since the last apply: the batch that
    /// carried it was dropped.
    pub fn discard(&mut self, published: &Mutex<Counts>) {
        let shown = lock(published);
        for name in std::mem::take(&mut self.dirty) {
            match shown.subscriptions.get(&name) {
                Some(counts) => {
                    self.counts.subscriptions.insert(name, counts.clone());
                }
                None => {
                    self.counts.subscriptions.remove(&name);
                }
            }
        }
        for name in std::mem::take(&mut self.sources_dirty) {
            match shown.sources.get(&name) {
                Some(counts) => {
                    self.counts.sources.insert(name, counts.clone());
                }
                None => {
                    self.counts.sources.remove(&name);
                }
            }
        }
        if std::mem::take(&mut self.totals_dirty) {
            self.counts.notifications = shown.notifications;
            self.counts.quarantined = shown.quarantined;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_values_round_trip_and_damage_is_refused() {
        let counts = SubscriptionCounts {
            waiting: 3,
            dead: 2,
            delivered: u64::MAX,
            purged: 0,
        };
        let bytes = encode_subscription(&counts);
        assert_eq!(decode_u64s::<4>(&bytes), Some([3, 2, u64::MAX, 0]));
        for cut in 0..bytes.len() {
            assert_eq!(decode_u64s::<4>(&bytes[..cut]), None, "cut {cut}");
        }
        let mut other_version = bytes.clone();
        other_version[0] = 9;
        assert_eq!(decode_u64s::<4>(&other_version), None);
        assert_eq!(decode_u64s::<2>(&bytes), None, "the wrong width");
    }
}
