//! Where a delivery stands for the counts ([`Standing`]), and how the
//! counts are kept in a sled tree beside what they count, whatever the
//! backend: sled keeps them in its spool, JetStream in each relay's local
//! index. [`CountKeys`] names the keys (each backend has its own layout);
//! the values are a version byte and big-endian u64s. The working counts
//! that stage a change's effect are the [`super::tally::Tally`].

use ::sled::Tree;

use crate::delivery::State;
use crate::spool::{cause, Counts, SourceCounts, SpoolError, SubscriptionCounts};

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

    pub(crate) fn slot(self, counts: &mut SubscriptionCounts) -> &mut u64 {
        match self {
            Standing::Waiting => &mut counts.waiting,
            Standing::Dead => &mut counts.dead,
            Standing::Delivered => &mut counts.delivered,
            Standing::Purged => &mut counts.purged,
        }
    }
}

/// Where a backend keeps its counts in its tree: the totals' key, and the
/// prefixes of one subscription's and one source's key (the name follows).
#[derive(Debug, Clone, Copy)]
pub struct CountKeys {
    pub totals: &'static [u8],
    pub subscription: &'static [u8],
    pub source: &'static [u8],
}

impl CountKeys {
    pub fn subscription(&self, name: &str) -> Vec<u8> {
        [self.subscription, name.as_bytes()].concat()
    }

    pub fn source(&self, name: &str) -> Vec<u8> {
        [self.source, name.as_bytes()].concat()
    }
}

fn encode_u64s(values: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 * values.len());
    out.push(COUNTS_V1);
    for value in values {
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

pub(crate) fn decode_u64s<const N: usize>(bytes: &[u8]) -> Option<[u64; N]> {
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

pub(crate) fn encode_totals(counts: &Counts) -> Vec<u8> {
    encode_u64s(&[counts.notifications, counts.quarantined])
}

pub(crate) fn encode_subscription(counts: &SubscriptionCounts) -> Vec<u8> {
    encode_u64s(&[counts.waiting, counts.dead, counts.delivered, counts.purged])
}

pub(crate) fn encode_source(counts: &SourceCounts) -> Vec<u8> {
    encode_u64s(&[counts.stored, counts.quarantined])
}

/// Reads the counts kept under `keys`: `Ok(None)` when no totals are kept
/// (none written yet), `Err` with what is damaged when a key cannot be
/// read as counts.
pub fn read_kept(
    tree: &Tree,
    keys: &CountKeys,
) -> Result<Result<Option<Counts>, String>, SpoolError> {
    let storage = |e: ::sled::Error| SpoolError::Storage(cause(e));
    let Some(totals) = tree.get(keys.totals).map_err(storage)? else {
        return Ok(Ok(None));
    };
    let Some([notifications, quarantined]) = decode_u64s::<2>(&totals) else {
        return Ok(Err(format!("the totals key holds {totals:?}")));
    };
    let mut counts = Counts {
        notifications,
        quarantined,
        ..Counts::default()
    };
    for item in tree.scan_prefix(keys.source) {
        let (key, value) = item.map_err(storage)?;
        let name = key.get(keys.source.len()..).unwrap_or_default();
        let Ok(name) = std::str::from_utf8(name) else {
            return Ok(Err(format!("a source count key is not UTF-8: {key:?}")));
        };
        let Some([stored, quarantined]) = decode_u64s::<2>(&value) else {
            return Ok(Err(format!("the counts of source {name:?} hold {value:?}")));
        };
        let source = SourceCounts {
            stored,
            quarantined,
        };
        counts.sources.insert(name.to_owned(), source);
    }
    for item in tree.scan_prefix(keys.subscription) {
        let (key, value) = item.map_err(storage)?;
        let name = key.get(keys.subscription.len()..).unwrap_or_default();
        let Ok(name) = std::str::from_utf8(name) else {
            return Ok(Err(format!("a count key is not UTF-8: {key:?}")));
        };
        let Some([waiting, dead, delivered, purged]) = decode_u64s::<4>(&value) else {
            return Ok(Err(format!("the counts of {name:?} hold {value:?}")));
        };
        let subscription = SubscriptionCounts {
            waiting,
            dead,
            delivered,
            purged,
        };
        counts.subscriptions.insert(name.to_owned(), subscription);
    }
    Ok(Ok(Some(counts)))
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
