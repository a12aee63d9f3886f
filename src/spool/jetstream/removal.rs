//! Retention's removal markers (`docs/design/jetstream.md` §1.1, §1.5):
//! before the holder of the retention duty purges a record's subjects it
//! publishes a marker, so every relay's fold drops the record from its
//! index and takes its counts, as sled's retention takes them, even a
//! relay that folds after the purge (the purge leaves the marker):
//! - `P.r.{id}`: a notification, with its delivery states, due entries
//!   and first attempts still to make (one per subscription it has any
//!   of), its invoice timeline entry and wait, and its invoice's checks
//!   when it was the invoice's last notification; its counts go as
//!   `Tally::removed_notification` takes them;
//! - `P.r.q.{id}`: a quarantined body (folded as its tombstone is);
//! - `P.r.a.{auditid}`: an audit record.
//!
//! A marker of a record the index does not hold removes nothing. The
//! markers stay in the stream (the design's per-message TTL of
//! `index_max_offline` needs `allow_msg_ttl` on the stream, not set yet).

use super::audit::unfold_audit;
use super::checks::unfold_checks;
use super::deliveries::{decode_state, due_bytes, keyed, prefix, FIRST, STATE, WAITING};
use super::index::{record_key, Family};
use super::invoices::unfold_invoice;
use super::staged::{Reads, Writes};
use super::states::subscriptions_in;
use super::subjects::{name_of, token, Removed};
use super::Names;
use crate::spool::standing::Standing;
use crate::spool::tally::Tally;
use crate::spool::{NotificationId, NotificationMeta, SpoolError};

impl Names {
    /// The marker that retention removed `removed`.
    pub(super) fn removal(&self, removed: Removed) -> String {
        match removed {
            Removed::Notification(id) => format!("{}.r.{id}", self.prefix),
            Removed::Quarantine(id) => format!("{}.r.q.{id}", self.prefix),
            Removed::Audit(id) => format!("{}.r.a.{id}", self.prefix),
        }
    }

    /// Every delivery state of `id`, whatever its subscription.
    pub(super) fn deliveries_of_id(&self, id: NotificationId) -> String {
        format!("{}.d.*.{id}", self.prefix)
    }

    /// Every resend of `id` inside the window.
    pub(super) fn resends_of(&self, id: NotificationId) -> String {
        format!("{}.e.{id}.>", self.prefix)
    }

    /// The quarantined body `id`, whatever its source.
    pub(super) fn quarantined_any(&self, id: NotificationId) -> String {
        format!("{}.q.*.{id}", self.prefix)
    }
}

/// A removal marker folded in (a quarantined body's is folded as its
/// tombstone, in `fold.rs`).
pub(super) fn fold_removal(
    db: &impl Reads,
    batch: &mut Writes,
    tally: &mut Tally,
    removed: Removed,
) -> Result<(), SpoolError> {
    match removed {
        Removed::Notification(id) => remove_notification(db, batch, tally, id),
        Removed::Audit(id) => {
            unfold_audit(batch, id);
            Ok(())
        }
        // Folded as a tombstone by the caller; nothing here.
        Removed::Quarantine(_) => Ok(()),
    }
}

fn remove_notification(
    db: &impl Reads,
    batch: &mut Writes,
    tally: &mut Tally,
    id: NotificationId,
) -> Result<(), SpoolError> {
    let key = record_key(Family::Notifications, id);
    let Some(value) = db.read(&key)? else {
        return Ok(());
    };
    let meta: NotificationMeta = serde_json::from_slice(value.get(8..).unwrap_or_default())
        .map_err(|e| SpoolError::Corrupt(format!("the metadata of {id}: {e}")))?;
    batch.remove(&key);
    if let Some(gone) = unfold_invoice(db, batch, id, &meta)? {
        unfold_checks(db, batch, &gone.source, &gone.subject)?;
    }
    let mut subs: Vec<String> = meta.subscriptions.iter().map(|s| token(s)).collect();
    for sub in subscriptions_in(db, STATE)? {
        if !subs.contains(&sub) {
            subs.push(sub);
        }
    }
    let mut standings: Vec<(String, Standing)> = Vec::new();
    for sub in &subs {
        let state = keyed(STATE, sub, id);
        let first = keyed(FIRST, sub, id);
        let standing = match db.read(&state)? {
            Some(value) => {
                let state_at = decode_state(&value)?;
                if let Some(due) = state_at.due_ms {
                    let mut waiting = prefix(WAITING, sub);
                    waiting.extend_from_slice(&due_bytes(due));
                    waiting.extend_from_slice(&id.to_bytes());
                    batch.remove(waiting);
                }
                batch.remove(state);
                Some(state_at.standing)
            }
            None if db.holds(&first)? => Some(Standing::Waiting),
            None => None,
        };
        batch.remove(first);
        if let (Some(standing), Some(name)) = (standing, name_of(sub)) {
            standings.push((name, standing));
        }
    }
    tally.removed_notification(
        &meta.source,
        standings.iter().map(|(name, s)| (name.as_str(), *s)),
    );
    Ok(())
}
