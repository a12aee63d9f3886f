//! Retention on JetStream (`docs/design/jetstream.md` §1.5): `maintain`.
//! Only the holder of the duty `duty.retention` (`duty.rs`) removes; any
//! other relay's `maintain` renews or tries the lease and answers that it
//! removed nothing.
//!
//! The holder selects from its index, by `received_ms` (a notification's)
//! or id time (a quarantined body's, an audit record's) against the
//! spool's Clock, what is past `retention`: a notification whose every
//! delivery is over (delivered, purged, or dead past `dead_retention`
//! when that is set: sled's rule), quarantined bodies and audit records
//! by age alone. Each goes by a removal marker (`removal.rs`: every
//! relay's fold drops it from its index and takes its counts), then purges
//! of its subjects: a notification's `P.n.{src}.{kh}.{id}` (a later copy
//! that took over its dedup key is on another subject and stays),
//! `P.d.*.{id}` and `P.e.{id}.>`, and with an invoice's last notification
//! its checks `P.x.check.{src}.{subj}.>`; a quarantined body's `P.q.*.{id}`; an
//! audit record's `P.a.{auditid}`. At most [`SLICE`] of each kind per call,
//! and none once the lease's time is up. The answer waits for this
//! relay's index to fold the markers, so its counts show the removals.
//!
//! A delivery's state written between the selection and the marker (a
//! replay of a dead one by another relay) goes with the notification: the
//! selection reads the states from the stream just before the marker, so
//! that window is one round trip wide. So is an invoice's: a notification
//! of it stored in that window keeps the invoice in every index, while its
//! checks are purged from the stream (each index keeps them until a refold).
//! A check recorded between the marker and the purge (it needs the
//! invoice in the recording relay's index, which folds the marker soon
//! after) is the same kind of stray.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::duty::RETENTION;
use super::index::Family;
use super::invoices::timeline_ids;
use super::store::{publish, Published};
use super::subjects::Removed;
use super::JetStreamSpool;
use crate::delivery::State;
use crate::spool::invoices::InvoiceRef;
use crate::spool::standing::Standing;
use crate::spool::{AuditId, Maintained, NotificationId, NotificationMeta, SpoolError};

/// Records of each kind one call may remove.
const SLICE: usize = 256;

impl JetStreamSpool {
    pub(crate) async fn maintain(&self) -> Result<Maintained, SpoolError> {
        let Some(hold) = self.hold_duty(RETENTION).await? else {
            return Ok(Maintained::default());
        };
        // The index holds what any relay wrote before the call.
        self.sync().await?;
        let now = self.clock.now_ms();
        let cutoff = now.saturating_sub(millis(self.config.retention.0));
        let dead_cutoff = self
            .config
            .dead_retention
            .map(|d| now.saturating_sub(millis(d.0)));
        let mut done = Maintained::default();
        let mut top = 0;
        // Removed by this call, not yet folded here.
        let mut removed = BTreeSet::new();
        for id in self.old_notifications(cutoff, dead_cutoff)? {
            if !hold.live() {
                break;
            }
            let Some((meta, over)) = self.over(id, dead_cutoff).await? else {
                continue;
            };
            if over {
                top = top.max(self.remove_notification(id, &meta, &removed).await?);
                removed.insert(id);
                done.notifications += 1;
            }
        }
        for id in self.old_records(Family::Quarantine, cutoff)? {
            if !hold.live() {
                break;
            }
            let subject = self.link.names().quarantined_any(id);
            top = top.max(self.remove(Removed::Quarantine(id), &[subject]).await?);
            done.quarantined += 1;
        }
        let before = AuditId(ulid::Ulid::from_parts(ms_bits(cutoff), 0));
        for record in self.index.audit_log(Some(before), SLICE)? {
            if !hold.live() {
                break;
            }
            let subject = self.link.names().audit(record.id);
            top = top.max(self.remove(Removed::Audit(record.id), &[subject]).await?);
            done.audit_records += 1;
        }
        if top > 0 {
            self.caught_up(top).await?;
        }
        if done != Maintained::default() {
            tracing::debug!(?done, "retention");
        }
        Ok(done)
    }

    /// Up to [`SLICE`] notifications received before `cutoff` whose
    /// deliveries, as the index holds them, may all be over (the stream's
    /// states decide: [`JetStreamSpool::over`]).
    fn old_notifications(
        &self,
        cutoff: i64,
        dead_cutoff: Option<i64>,
    ) -> Result<Vec<NotificationId>, SpoolError> {
        let mut out = Vec::new();
        for entry in self.index.walk(Family::Notifications, false, None)? {
            let entry = entry?;
            if entry.id.ms() >= cutoff || out.len() >= SLICE {
                break;
            }
            let Ok(meta) = serde_json::from_slice::<NotificationMeta>(&entry.meta) else {
                tracing::warn!(id = %entry.id, "retention passes over a notification it cannot read");
                continue;
            };
            if meta.received_ms >= cutoff {
                continue;
            }
            let mut maybe = true;
            for subscription in &meta.subscriptions {
                maybe &= match self.index.state(subscription, entry.id)? {
                    // Never attempted.
                    None => false,
                    Some(state) => match state.standing {
                        Standing::Waiting => false,
                        Standing::Dead => dead_cutoff.is_some(),
                        Standing::Delivered | Standing::Purged => true,
                    },
                };
            }
            if maybe {
                out.push(entry.id);
            }
        }
        Ok(out)
    }

    /// Up to [`SLICE`] records of `family` made before `cutoff`.
    fn old_records(&self, family: Family, cutoff: i64) -> Result<Vec<NotificationId>, SpoolError> {
        let mut out = Vec::new();
        for entry in self.index.walk(family, false, None)? {
            let entry = entry?;
            if entry.id.ms() >= cutoff || out.len() >= SLICE {
                break;
            }
            out.push(entry.id);
        }
        Ok(out)
    }

    /// `id`'s metadata and whether every one of its deliveries is over, as
    /// the stream holds them now; `None` when the index no longer has it.
    async fn over(
        &self,
        id: NotificationId,
        dead_cutoff: Option<i64>,
    ) -> Result<Option<(NotificationMeta, bool)>, SpoolError> {
        let Some(entry) = self.index.get(Family::Notifications, id)? else {
            return Ok(None);
        };
        let meta: NotificationMeta = serde_json::from_slice(&entry.meta)
            .map_err(|e| SpoolError::Corrupt(format!("the metadata of {id}: {e}")))?;
        // A subscription with no state yet comes back pending: not over.
        let over = self.deliveries_of(id).await?.iter().all(|d| match d.state {
            State::Delivered { .. } | State::Purged { .. } => true,
            State::Dead { at_ms } => dead_cutoff.is_some_and(|cutoff| at_ms < cutoff),
            State::Pending | State::InFlight { .. } | State::Waiting { .. } => false,
        });
        Ok(Some((meta, over)))
    }

    /// Removes `id`; with its invoice's checks when the index holds no
    /// other notification of the invoice (`removed`: those this call
    /// removed already, which the index may still hold).
    async fn remove_notification(
        &self,
        id: NotificationId,
        meta: &NotificationMeta,
        removed: &BTreeSet<NotificationId>,
    ) -> Result<u64, SpoolError> {
        let names = self.link.names();
        let mut subjects = vec![
            names.notification(&meta.source, &meta.dedup_key, id),
            names.deliveries_of_id(id),
            names.resends_of(id),
        ];
        if let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status) {
            let db = self.index.db()?;
            let timeline = timeline_ids(&db, &invoice.source, &invoice.subject)?;
            if timeline
                .iter()
                .all(|other| *other == id || removed.contains(other))
            {
                subjects.push(names.checks_of(&invoice.source, &invoice.subject));
            }
        }
        self.remove(Removed::Notification(id), &subjects).await
    }

    /// Publishes the marker of `removed`, then purges `subjects`; the
    /// marker's sequence.
    async fn remove(&self, removed: Removed, subjects: &[String]) -> Result<u64, SpoolError> {
        let within = self.config.jetstream.request_timeout.0;
        let context = self.link.context().clone();
        let marker = self.link.names().removal(removed);
        let sent =
            self.bridge
                .run(async move {
                    publish(&context, marker, HeaderMap::new(), Bytes::new(), within).await
                })
                .await??;
        let sequence = match sent {
            Published::Acked(ack) => ack.sequence,
            Published::Taken => {
                return Err(SpoolError::Unavailable(
                    "JetStream: a removal marker was refused".into(),
                ))
            }
        };
        for subject in subjects {
            let stream = self.stream.clone();
            let filter = subject.clone();
            let purged = self
                .bridge
                .run(async move {
                    tokio::time::timeout(
                        within,
                        std::future::IntoFuture::into_future(stream.purge().filter(filter)),
                    )
                    .await
                })
                .await?;
            match purged {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(SpoolError::Unavailable(format!(
                        "JetStream: purging {subject}: {e}"
                    )))
                }
                Err(_) => {
                    return Err(SpoolError::Unavailable(format!(
                        "JetStream: no answer to purging {subject} within {within:?}"
                    )))
                }
            }
        }
        Ok(sequence)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn ms_bits(ms: i64) -> u64 {
    u64::try_from(ms.max(0)).unwrap_or(0)
}
