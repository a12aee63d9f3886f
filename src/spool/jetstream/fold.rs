//! The fold of the stream into this relay's index, message by message in
//! stream order (a burst of them committed as one batch, `staged.rs`):
//! which part of the index each kind of message changes,
//! and how it moves the counts (`counts.rs`). Apart from `index.rs` so
//! that the parts it calls (deliveries, pause, audit, API subscriptions)
//! can build on the index without the index building on them.
//!
//! The counts move as sled's writer moves them, decided from what the
//! index held before the message (so every relay, folding the same
//! messages in the same order, counts the same): a notification new to
//! the index is stored with one delivery per subscription it fans out to;
//! a delivery's state moves it from where its last state (or its first
//! attempt still to make) stood, or adds it when the notification had no
//! delivery for that subscription (a reassigned orphan); a state of a
//! notification the index does not hold counts nothing. A quarantined
//! body counts once, and leaves the count with its tombstone or release.

use super::api_subscriptions::fold_api_subscription;
use super::audit::fold_audit;
use super::checks::fold_check;
use super::counts::source_in;
use super::deliveries::{fold_first_attempts, fold_state};
use super::index::{record_key, Family, Folded, Index};
use super::invoices::{fold_invoice, fold_resend};
use super::pause::fold_pause;
use super::removal::fold_removal;
use super::reports::{attempt_report, quarantine_report};
use super::staged::{Reads, Staged, Writes};
use super::stuck::{fold_stuck, fold_walked};
use super::subjects::{name_of, Kind, Removed};
use crate::spool::tally::Tally;
use crate::spool::{NotificationId, NotificationMeta, Observed, SpoolError};

impl Index {
    /// Folds in one message of the stream: `kind` from its subject, the
    /// rest from its headers.
    #[cfg(test)]
    pub(super) fn apply(
        &self,
        sequence: u64,
        kind: &Kind,
        folded: &Folded<'_>,
    ) -> Result<(), SpoolError> {
        self.apply_burst([Ok((sequence, kind.clone(), folded))])
    }

    /// Folds in a burst of messages in stream order, committed as one
    /// sled batch (`staged.rs`): each is folded as if alone, seeing what
    /// the messages before it wrote. A message that cannot be read or
    /// folded fails the whole burst, nothing of it committed.
    pub(super) fn apply_burst<'f>(
        &self,
        messages: impl IntoIterator<Item = Result<(u64, Kind, &'f Folded<'f>), SpoolError>>,
    ) -> Result<(), SpoolError> {
        let db = self.db()?;
        let mut staged = Staged::over(&db);
        let mut tally = self.counts.tally();
        let mut done = Done::default();
        let staging = self.stage(&mut staged, &mut tally, &mut done, messages);
        let last = match staging {
            Ok(Some(last)) => last,
            Ok(None) => {
                self.counts.discard(&mut tally);
                return Ok(());
            }
            Err(err) => {
                self.counts.discard(&mut tally);
                return Err(err);
            }
        };
        self.commit(&db, staged.into_batch(), &mut tally, last)?;
        for (source, received_ms) in done.heard {
            self.heard(&source, received_ms);
        }
        if done.subscriptions_changed {
            self.subscription_folded();
        }
        for report in done.reports {
            self.reports.send(report);
        }
        Ok(())
    }

    /// Stages each message new to the index; the last sequence staged.
    fn stage<'f>(
        &self,
        staged: &mut Staged<'_>,
        tally: &mut Tally,
        done: &mut Done,
        messages: impl IntoIterator<Item = Result<(u64, Kind, &'f Folded<'f>), SpoolError>>,
    ) -> Result<Option<u64>, SpoolError> {
        let mut last = self.applied();
        let mut staged_any = false;
        let wanted = self.reports.wanted();
        for message in messages {
            let (sequence, kind, folded) = message?;
            if sequence <= last {
                continue; // seen before a restart of the tail
            }
            let mut writes = Writes::default();
            let mut heard = None;
            fold_one(
                staged,
                &mut writes,
                tally,
                sequence,
                &kind,
                folded,
                &mut heard,
            )?;
            // Read as the index stood before the message.
            if wanted {
                if let Some(report) = report_of(staged, &kind, folded)? {
                    done.reports.push(report);
                }
            }
            staged.add(writes);
            done.heard.extend(heard);
            done.subscriptions_changed |= matches!(kind, Kind::ApiSubscription(_));
            last = sequence;
            staged_any = true;
        }
        Ok(staged_any.then_some(last))
    }
}

/// What a burst tells once it is committed.
#[derive(Default)]
struct Done {
    /// Sources heard from, and when.
    heard: Vec<(String, i64)>,
    subscriptions_changed: bool,
    reports: Vec<Observed>,
}

/// What the spool's observer hears of one message, read before it is
/// folded in: an attempt the forwarder recorded, or a body newly
/// quarantined (a release or a tombstone is none).
fn report_of(
    db: &impl Reads,
    kind: &Kind,
    folded: &Folded<'_>,
) -> Result<Option<Observed>, SpoolError> {
    match (kind, folded.attempted, folded.meta) {
        (Kind::Delivery { subscription, id }, Some(attempted), _) => {
            let (Some(name), Some(value)) = (
                name_of(subscription),
                db.read(&record_key(Family::Notifications, *id))?,
            ) else {
                return Ok(None); // removed meanwhile: nothing to tell of
            };
            let meta = value.get(8..).unwrap_or_default();
            match attempt_report(*id, name, attempted, meta) {
                Ok(report) => Ok(Some(report)),
                Err(err) => {
                    tracing::warn!(error = %err, "an attempt not reported");
                    Ok(None)
                }
            }
        }
        (&Kind::Quarantine(id), _, Some(meta)) => {
            let new = !db.holds(&record_key(Family::Quarantine, id))?;
            Ok(new
                .then(|| quarantine_report(id, meta, folded.size))
                .flatten())
        }
        _ => Ok(None),
    }
}

/// `heard`: the source and receipt of a notification new to the index.
fn fold_one(
    db: &impl Reads,
    batch: &mut Writes,
    tally: &mut Tally,
    sequence: u64,
    kind: &Kind,
    folded: &Folded<'_>,
    heard: &mut Option<(String, i64)>,
) -> Result<(), SpoolError> {
    let value = |meta: &str| {
        let mut value = sequence.to_be_bytes().to_vec();
        value.extend_from_slice(meta.as_bytes());
        value
    };
    let held = |family, id| db.holds(&record_key(family, id));
    match (kind, folded.meta) {
        (&Kind::Notification(id), Some(meta)) => {
            let parsed: NotificationMeta = serde_json::from_str(meta)
                .map_err(|e| SpoolError::Corrupt(format!("the metadata of {id}: {e}")))?;
            let new = !held(Family::Notifications, id)?;
            batch.insert(&record_key(Family::Notifications, id), value(meta));
            let standings = fold_first_attempts(db, batch, id, &parsed)?;
            if new {
                // A provider was heard from (not the relay's own asking).
                if !parsed.flags.iter().any(|f| f == "reconciled") {
                    *heard = Some((parsed.source.clone(), parsed.received_ms));
                }
                fold_invoice(db, batch, id, &parsed)?;
                tally.stored(&parsed.source, &[]);
                for (subscription, standing) in standings {
                    tally.added(&subscription, standing);
                }
            }
        }
        (&Kind::Quarantine(id), Some(meta)) => {
            if !held(Family::Quarantine, id)? {
                match source_in(meta.as_bytes()) {
                    Some(source) => tally.quarantined(&source),
                    // Counted in the total alone, as sled counts one.
                    None => tally.quarantined_unread(),
                }
            }
            batch.insert(&record_key(Family::Quarantine, id), value(meta));
        }
        // A quarantine record without metadata is its tombstone.
        (&Kind::Quarantine(id), None) => unquarantine(db, batch, tally, id)?,
        (Kind::Pause, Some(meta)) => fold_pause(batch, meta)?,
        (&Kind::Resend(id), _) => {
            let notification = db.read(&record_key(Family::Notifications, id))?;
            fold_resend(
                db,
                batch,
                id,
                notification.as_ref().and_then(|v| v.get(8..)),
            )?;
        }
        // A damaged mark or check is left out (at worst an invoice is
        // announced again), not a stop of the fold.
        (Kind::Stuck { source, subject }, meta) => {
            skip_damaged(sequence, fold_stuck(batch, source, subject, meta))
        }
        (Kind::Walked(source), meta) => fold_walked(batch, source, meta),
        (Kind::Check { source, subject }, meta) => {
            skip_damaged(sequence, fold_check(batch, sequence, source, subject, meta))
        }
        (Kind::ApiSubscription(name), meta) => fold_api_subscription(batch, sequence, name, meta),
        (&Kind::Audit(id), Some(meta)) => fold_audit(batch, sequence, id, meta),
        (&Kind::Removed(Removed::Quarantine(id)), _) => unquarantine(db, batch, tally, id)?,
        (&Kind::Removed(removed), _) => fold_removal(db, batch, tally, removed)?,
        (Kind::Delivery { subscription, id }, _) => {
            let (was, now) = fold_state(db, batch, sequence, subscription, *id, folded)?;
            let name = name_of(subscription);
            if let (Some(name), true) = (name, held(Family::Notifications, *id)?) {
                match was {
                    Some(was) => tally.moved(&name, was, now),
                    None => tally.added(&name, now),
                }
            }
        }
        _ => {}
    }
    if let Some(released) = folded.released {
        unquarantine(db, batch, tally, released)?;
    }
    Ok(())
}

fn skip_damaged(sequence: u64, folded: Result<(), SpoolError>) {
    if let Err(err) = folded {
        tracing::warn!(sequence, error = %err, "a message of the stream is left out of the index");
    }
}

/// A quarantined body leaves (a tombstone, or released as a notification).
fn unquarantine(
    db: &impl Reads,
    batch: &mut Writes,
    tally: &mut Tally,
    id: NotificationId,
) -> Result<(), SpoolError> {
    let key = record_key(Family::Quarantine, id);
    if let Some(value) = db.read(&key)? {
        tally.removed_quarantined(value.get(8..).and_then(source_in).as_deref());
        batch.remove(&key);
    }
    Ok(())
}
