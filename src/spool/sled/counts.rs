//! The counts of what the spool holds (notifications, quarantined bodies,
//! each subscription's deliveries by where they stand), kept exact without
//! ever walking the spool to serve them.
//!
//! The writer applies every change, so it keeps them: each change stages
//! its effect in the [`Tally`] (`spool/tally.rs`, shared with JetStream's
//! fold), and the batch that applies the change also
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

use std::iter::Peekable;

use ::sled::{Batch, IVec, Tree};

use super::{decode_delivery, keys, storage};
use crate::spool::record::{NotificationMeta, QuarantineMeta, Record};
pub use crate::spool::standing::Standing;
use crate::spool::standing::{
    decode_u64s, encode_source, encode_subscription, encode_totals, read_kept, CountKeys,
};
pub use crate::spool::tally::Tally;
use crate::spool::{Counts, SourceCounts, SpoolError};

const KEYS: CountKeys = CountKeys {
    totals: keys::COUNT_TOTALS,
    subscription: keys::SUBSCRIPTION_COUNTS,
    source: keys::SOURCE_COUNTS,
};

/// Working counts that write to sled's count keys.
pub fn tally(counts: Counts) -> Tally {
    Tally::new(counts, KEYS)
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

/// Reads the kept counts: one key per subscription and per source, and
/// the totals.
pub fn load(tree: &Tree) -> Result<Kept, SpoolError> {
    let Some(totals) = tree.get(keys::COUNT_TOTALS).map_err(storage)? else {
        return Ok(Kept::Missing);
    };
    if decode_u64s::<2>(&totals).is_none() {
        return Ok(Kept::Damaged(format!("the totals key holds {totals:?}")));
    }
    if tree
        .get(keys::SOURCE_COUNTS_KEPT)
        .map_err(storage)?
        .is_none()
    {
        return Ok(Kept::WithoutSources);
    }
    Ok(match read_kept(tree, &KEYS)? {
        Ok(Some(counts)) => Kept::Found(counts),
        Ok(None) => Kept::Missing,
        Err(damaged) => Kept::Damaged(damaged),
    })
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
