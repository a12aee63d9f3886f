//! An admin's moves that make deliveries due (`docs/design/jetstream.md`
//! §1.3), each a compare-and-set republish of `P.d.{sub}.{id}` marked
//! `due` (`states.rs`), which the subscription's consumer then hands out:
//! - `replay`: a delivered, dead or purged delivery is due again, with a
//!   full schedule and its history kept;
//! - `retry_now`: each state of the subscription marked `wait` for later
//!   is due now, its attempts and schedule unchanged (only `due_at`
//!   moves); one marked `due` may be in flight and is left alone, as are
//!   final ones and first attempts (due already);
//! - `backfill`: a stored notification the subscription was not fanned
//!   out to gets a new delivery, due now, written expecting no state, so
//!   two backfills at once give it one.
//!
//! Each first lets the index fold what any relay wrote before the call
//! (`sync`), so it sees what sled's single writer would; a replay only
//! when the index does not know the notification.

use std::collections::BTreeSet;

use super::deliveries::{due_bytes, id_at_end, prefix, Mark, WAITING};
use super::index::{storage, Family, Index};
use super::subjects::token;
use super::JetStreamSpool;
use crate::delivery::Delivery;
use crate::spool::{NotificationId, NotificationMeta, SpoolError};

/// States one slice of a retry now reads from the index at most.
const SLICE: usize = 1000;

impl JetStreamSpool {
    /// Puts a final delivery back in the queue with a fresh schedule;
    /// false if it was never attempted (so it is due already).
    pub(crate) async fn replay(
        &self,
        id: NotificationId,
        subscription: &str,
        now_ms: i64,
    ) -> Result<bool, SpoolError> {
        self.open_for_writes()?;
        if self.index.get(Family::Notifications, id)?.is_none() {
            // Stored by another relay a moment ago, maybe.
            self.sync().await?;
            if self.index.get(Family::Notifications, id)?.is_none() {
                return Err(SpoolError::NotFound(id.to_string()));
            }
        }
        let written = self
            .rewrite(subscription, id, |current| {
                let Some(delivery) = &current.delivery else {
                    return Ok(None); // never attempted
                };
                let mut delivery = delivery.clone();
                delivery
                    .replay(now_ms)
                    .map_err(|e| SpoolError::NotReplayable(e.to_string()))?;
                Ok(Some((delivery, Mark::Due)))
            })
            .await?;
        match written {
            Some(sequence) => self.caught_up(sequence).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Makes every delivery of `subscription` waiting for a later retry
    /// due now; how many were brought forward.
    pub(crate) async fn retry_now(
        &self,
        subscription: &str,
        now_ms: i64,
    ) -> Result<u64, SpoolError> {
        self.open_for_writes()?;
        // What any relay wrote before the call is in the walk.
        self.sync().await?;
        let mut moved = 0;
        let mut after = None;
        loop {
            let slice = self
                .index
                .waiting_after(subscription, now_ms, after, SLICE)?;
            let mut top = 0;
            for (_, id) in &slice {
                let written = self
                    .rewrite_readable(subscription, *id, |current| {
                        let Some(delivery) = &current.delivery else {
                            return Ok(None);
                        };
                        let mut delivery = delivery.clone();
                        let waiting = current.mark == Some(Mark::Wait);
                        Ok((waiting && delivery.bring_forward(now_ms))
                            .then_some((delivery, Mark::Due)))
                    })
                    .await?;
                if let Some(sequence) = written {
                    top = top.max(sequence);
                    moved += 1;
                }
            }
            if top > 0 {
                self.caught_up(top).await?;
            }
            if slice.len() < SLICE {
                return Ok(moved);
            }
            after = slice.last().map(|(key, _)| key.clone());
        }
    }

    /// Gives `subscription` a new delivery, due now, of each of `ids` that
    /// is stored and has none for it yet; how many were added.
    pub(crate) async fn backfill(
        &self,
        subscription: &str,
        ids: Vec<NotificationId>,
        now_ms: i64,
    ) -> Result<u64, SpoolError> {
        self.open_for_writes()?;
        // A consumer made after the states were written would start past
        // them: it is there first.
        self.consumers_of(subscription).await?;
        self.sync().await?;
        let ids: BTreeSet<NotificationId> = ids.into_iter().collect();
        let mut added = 0;
        let mut top = 0;
        for id in ids {
            let Some(entry) = self.index.get(Family::Notifications, id)? else {
                continue; // removed by retention since the caller chose it
            };
            // An unreadable one stays where it is, as on sled.
            let Ok(meta) = serde_json::from_slice::<NotificationMeta>(&entry.meta) else {
                continue;
            };
            if meta.subscriptions.iter().any(|s| s == subscription)
                || self.index.state(subscription, id)?.is_some()
            {
                continue;
            }
            let written = self
                .rewrite_readable(subscription, id, |current| {
                    Ok(current
                        .delivery
                        .is_none()
                        .then(|| (Delivery::new(subscription, now_ms), Mark::Due)))
                })
                .await?;
            if let Some(sequence) = written {
                top = top.max(sequence);
                added += 1;
            }
        }
        if top > 0 {
            self.caught_up(top).await?;
        }
        Ok(added)
    }
}

impl Index {
    /// Up to `max` of `subscription`'s states in the due set that are due
    /// after `now_ms`, in due order, from past the key `after` on: each
    /// with its key (where the next slice starts) and id.
    fn waiting_after(
        &self,
        subscription: &str,
        now_ms: i64,
        after: Option<Vec<u8>>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, NotificationId)>, SpoolError> {
        use std::ops::Bound;
        let db = self.db()?;
        let start = prefix(WAITING, &token(subscription));
        let from = match after {
            Some(after) => Bound::Excluded(after),
            None => {
                let mut first = start.clone();
                first.extend_from_slice(&due_bytes(now_ms.saturating_add(1)));
                Bound::Included(first)
            }
        };
        let mut out = Vec::new();
        for item in db.range((from, Bound::Unbounded)) {
            let (key, _) = item.map_err(storage)?;
            if !key.starts_with(&start) || out.len() >= max {
                break;
            }
            if let Some(id) = id_at_end(&key) {
                out.push((key.to_vec(), id));
            }
        }
        Ok(out)
    }
}
