//! The counts on JetStream (`docs/design/jetstream.md` §1.4): kept by the
//! fold from the transitions it applies, with the rules sled's writer
//! keeps them by ([`Tally`]), so they are exact as of the applied
//! sequence, and the same on every relay (each folds the same messages in
//! the same order). Written in the index in the batch of the message they
//! count (keys `C…`), so they are as durable as the index's checkpoint,
//! and loaded at open.
//!
//! Also where a delivery's [`Standing`] is written: the `Relay-Standing`
//! header of its state (the fold reads headers only) and one byte of the
//! state's index entry (what a transition moves the count from).

use std::sync::{Mutex, MutexGuard};

use serde::Deserialize;

use crate::spool::standing::{read_kept, CountKeys, Standing};
use crate::spool::tally::Tally;
use crate::spool::{cause, Counts, SpoolError};

/// Where the index keeps its counts.
const KEYS: CountKeys = CountKeys {
    totals: b"C=",
    subscription: b"Cs/",
    source: b"Cr/",
};

/// The fold's working counts and the copy `counts()` answers from.
pub(super) struct Kept {
    tally: Mutex<Tally>,
    shown: Mutex<Counts>,
}

impl Kept {
    /// The counts kept in `db`; an index with none yet holds nothing
    /// (its caller clears one that holds something without them). `Err`
    /// with what is damaged when a count key cannot be read.
    pub(super) fn load(db: &sled::Db) -> Result<Result<Kept, String>, SpoolError> {
        Ok(read_kept(db, &KEYS)?.map(|counts| {
            let counts = counts.unwrap_or_default();
            Kept {
                tally: Mutex::new(Tally::new(counts.clone(), KEYS)),
                shown: Mutex::new(counts),
            }
        }))
    }

    /// The working counts, for the fold of one message.
    pub(super) fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what `tally` staged into `batch`, applies it, and shows the
    /// new counts; if the batch is refused, takes the staged ones back.
    pub(super) fn apply(
        &self,
        tally: &mut Tally,
        db: &sled::Db,
        batch: sled::Batch,
    ) -> Result<(), SpoolError> {
        tally.apply(db, batch, &self.shown)
    }

    /// Takes back what `tally` staged for a message not folded after all.
    pub(super) fn discard(&self, tally: &mut Tally) {
        tally.discard(&self.shown);
    }

    /// The counts as of the last message folded.
    pub(super) fn now(&self) -> Counts {
        self.shown.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether `db` holds count keys (an index folded before they were kept
    /// has a checkpoint but none).
    pub(super) fn present(db: &sled::Db) -> Result<bool, SpoolError> {
        db.contains_key(KEYS.totals)
            .map_err(|e| SpoolError::Storage(cause(e)))
    }
}

/// A state's standing in its `Relay-Standing` header.
pub(super) fn standing_header(standing: Standing) -> &'static str {
    match standing {
        Standing::Waiting => "waiting",
        Standing::Dead => "dead",
        Standing::Delivered => "delivered",
        Standing::Purged => "purged",
    }
}

/// A state's standing from its header; a state without one (or with one
/// not known) stands waiting when it is still to be attempted (`waiting`,
/// its mark `due` or `wait`) and delivered otherwise.
pub(super) fn standing_of(header: Option<&str>, waiting: bool) -> Standing {
    match header {
        Some("waiting") => Standing::Waiting,
        Some("dead") => Standing::Dead,
        Some("delivered") => Standing::Delivered,
        Some("purged") => Standing::Purged,
        _ if waiting => Standing::Waiting,
        _ => Standing::Delivered,
    }
}

/// A standing as one byte of the index.
pub(super) fn standing_byte(standing: Standing) -> u8 {
    match standing {
        Standing::Waiting => b'w',
        Standing::Dead => b'x',
        Standing::Delivered => b'v',
        Standing::Purged => b'p',
    }
}

pub(super) fn standing_from_byte(byte: u8) -> Option<Standing> {
    match byte {
        b'w' => Some(Standing::Waiting),
        b'x' => Some(Standing::Dead),
        b'v' => Some(Standing::Delivered),
        b'p' => Some(Standing::Purged),
        _ => None,
    }
}

/// The source in a record's metadata (JSON), if it can be read.
pub(super) fn source_in(meta: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Source {
        source: String,
    }
    serde_json::from_slice::<Source>(meta)
        .ok()
        .map(|s| s.source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standing_round_trips_through_its_header_and_its_byte() {
        for standing in [
            Standing::Waiting,
            Standing::Dead,
            Standing::Delivered,
            Standing::Purged,
        ] {
            let header = standing_header(standing);
            assert_eq!(standing_of(Some(header), !standing.is_final()), standing);
            assert_eq!(standing_from_byte(standing_byte(standing)), Some(standing));
        }
        assert_eq!(standing_of(None, true), Standing::Waiting);
        assert_eq!(standing_of(Some("odd"), false), Standing::Delivered);
        assert_eq!(standing_from_byte(b'?'), None);
        assert_eq!(
            source_in(br#"{"source":"tus","id":"x"}"#).as_deref(),
            Some("tus")
        );
        assert_eq!(source_in(b"{"), None);
    }
}
