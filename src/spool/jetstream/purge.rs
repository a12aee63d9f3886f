//! An admin's bulk purge (`docs/design/jetstream.md` §1.3): each named
//! delivery that is dead, or waiting between two attempts (its state
//! marked `wait`), becomes purged, kept with its history and marked
//! `final`, by a compare-and-set republish of `P.d.{sub}.{id}`
//! (`states.rs`); retention then takes it like a delivered one.
//!
//! Skipped, and counted in [`Purged::skipped`], as on sled: a state marked
//! `due` (it may be leased and in flight; its outcome is about to be
//! written), a delivery never attempted (its notification is the
//! consumer's first attempt, which a state would not stop once handed
//! out), and one delivered or purged already. A lost race is judged again
//! on what won: a wait state woken and leased meanwhile is skipped.

use super::deliveries::Mark;
use super::states::{Current, Rewritten};
use super::JetStreamSpool;
use crate::delivery::State;
use crate::spool::{NotificationId, Purged, SpoolError};

impl JetStreamSpool {
    /// Gives up the named deliveries (notification, subscription).
    pub(crate) async fn purge(
        &self,
        targets: Vec<(NotificationId, String)>,
        now_ms: i64,
    ) -> Result<Purged, SpoolError> {
        self.open_for_writes()?;
        // The index holds what any relay wrote before the call.
        self.sync().await?;
        let mut done = Purged::default();
        let mut top = 0;
        for (id, subscription) in &targets {
            // The index spares a read of what is skipped anyway.
            let leasable = match self.index.state(subscription, *id)? {
                None => true,
                Some(state) => state.mark == Mark::Due,
            };
            if leasable {
                done.skipped += 1;
                continue;
            }
            let written = self
                .rewrite_readable(subscription, *id, |current| Ok(give_up(current, now_ms)))
                .await?;
            match written {
                Some(sequence) => {
                    top = top.max(sequence);
                    done.purged += 1;
                }
                None => done.skipped += 1,
            }
        }
        if top > 0 {
            self.caught_up(top).await?;
        }
        Ok(done)
    }
}

/// The purged state of a dead delivery or of one waiting for a retry;
/// `None` for any other.
fn give_up(current: &Current, now_ms: i64) -> Rewritten {
    let (Some(mark), Some(delivery)) = (current.mark, &current.delivery) else {
        return None;
    };
    let purgeable = matches!(
        (mark, &delivery.state),
        (Mark::Wait, State::Waiting { .. }) | (Mark::Final, State::Dead { .. })
    );
    let mut delivery = delivery.clone();
    (purgeable && delivery.give_up(now_ms).is_ok()).then_some((delivery, Mark::Final))
}
