//! What one subscription's lease walks hold between calls: where each walk
//! resumes, the deliveries leased and not yet completed, and the entries
//! found unusable. Kept in the backend's shared state, one per
//! subscription; the walks themselves are in `lease.rs`.

use std::collections::{BTreeSet, HashSet};

use crate::spool::NotificationId;

/// One subscription's walks and what it holds.
#[derive(Debug, Default)]
pub(super) struct SubState {
    /// The cursor was read from the store since it was opened.
    pub(super) loaded: bool,
    /// The first-attempt walk examines notification ids from here on.
    pub(super) scan_from: u128,
    pub(super) first_in_flight: BTreeSet<NotificationId>,
    /// First attempts let go of without an outcome: leased again first.
    pub(super) redo_first: BTreeSet<NotificationId>,
    pub(super) retry_in_flight: HashSet<NotificationId>,
    /// The retry walk resumes after this `r` key.
    pub(super) retry_after: Option<Vec<u8>>,
    /// `r` entries that cannot be served (their notification or delivery
    /// is unreadable or gone): skipped, so they neither block nor spin.
    pub(super) unusable: HashSet<Vec<u8>>,
}

impl SubState {
    /// The cursor that may be persisted once `id`'s first attempt is
    /// recorded: every notification below it is done with.
    pub(super) fn cursor_without(&self, id: NotificationId) -> u128 {
        let lowest_held = self.first_in_flight.iter().find(|other| **other != id);
        let lowest_redo = self.redo_first.first();
        [lowest_held, lowest_redo]
            .into_iter()
            .flatten()
            .map(|other| other.0 .0)
            .fold(self.scan_from, u128::min)
    }

    pub(super) fn release(&mut self, id: NotificationId, first_attempt: bool, again: bool) {
        if first_attempt {
            self.first_in_flight.remove(&id);
            if again {
                self.redo_first.insert(id);
            }
        } else {
            self.retry_in_flight.remove(&id);
            if again {
                self.retry_after = None;
            }
        }
    }

    /// The next retry walk starts from the first entry (one was moved
    /// before where the last walk stopped).
    pub(super) fn forget_retry_position(&mut self) {
        self.retry_after = None;
    }

    pub(super) fn holds(&self, id: NotificationId) -> bool {
        self.first_in_flight.contains(&id) || self.retry_in_flight.contains(&id)
    }
}
