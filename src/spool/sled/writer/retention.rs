//! Retention, in bounded slices between groups: delivered notifications
//! with their dedup entries (and an invoice's reconcile checks with its
//! last notification), quarantined bodies and audit records older
//! than `retention` (and the dedup entries of an older spool's time
//! index). Each part is walked on its own, at most [`RETENTION_SLICE`]
//! entries per slice.

use std::time::Duration;

use ::sled::Batch;

use super::super::counts::{quarantined_source, Standing};
use super::super::{checks, invoices, keys, storage, Shared, Store};
use super::Writer;
use crate::delivery::{Delivery, State};
use crate::spool::record::{NotificationMeta, Record};
use crate::spool::{AuditId, Maintained, NotificationId, SpoolError};

/// Entries one retention slice may examine: small, so a slice between two
/// groups keeps ingest latency flat.
const RETENTION_SLICE: usize = 256;
/// A finished retention walk over old notifications starts again after a
/// quarter of the retention, within these bounds: soon enough that the
/// spool levels off, seldom enough that what must stay (dead, waiting) is
/// not read over and over.
const RETENTION_CYCLE_MIN_MS: i64 = 100;
const RETENTION_CYCLE_MAX_MS: i64 = 60_000;

#[derive(Default)]
pub(super) struct Retention {
    /// The walk over old notifications resumes at this id.
    notifications_from: u128,
    /// It starts a new cycle at this time (Unix ms).
    next_cycle_ms: i64,
    /// The last slice stopped with work left: run another soon.
    pub(super) behind: bool,
}

impl Writer {
    /// One bounded slice of retention: delivered notifications with their
    /// dedup entries, quarantined bodies and audit records older than
    /// `retention` (and the dedup entries of an older spool's time index). Not flushed on its own: it rides on the next group
    /// flush, and a removal lost in a crash is simply made again (with the
    /// counts, which go in the same batch).
    pub(super) fn retention_slice(&mut self) -> Result<Maintained, SpoolError> {
        let store = self.shared.store()?;
        let done = self.retention_changes(&store);
        if done.is_err() {
            self.tally.discard(&self.shared.counts);
        }
        done
    }

    fn retention_changes(&mut self, store: &Store) -> Result<Maintained, SpoolError> {
        let config = &self.shared.config;
        let now = self.now_ms;
        let dedup_cutoff = now.saturating_sub(millis(config.dedup_window.0));
        let cutoff = now.saturating_sub(millis(config.retention.0));
        let dead_cutoff = config
            .dead_retention
            .map(|d| now.saturating_sub(millis(d.0)));
        let mut batch = Batch::default();
        let mut done = Maintained::default();
        let mut behind = expire_dedup_entries(store, &mut batch, dedup_cutoff, &mut done)?;
        if now >= self.retention.next_cycle_ms {
            behind |=
                self.remove_notifications(store, &mut batch, cutoff, dead_cutoff, &mut done)?;
        }
        behind |= self.remove_quarantined(store, &mut batch, cutoff, &mut done)?;
        behind |= remove_audit_records(store, &mut batch, cutoff, &mut done)?;
        self.retention.behind = behind;
        self.tally.apply(&store.tree, batch, &self.shared.counts)?;
        if done != Maintained::default() {
            tracing::debug!(?done, "retention slice");
        }
        Ok(done)
    }

    /// Notifications whose every delivery is over: one slice of a walk that
    /// starts again a quarter of the retention after it ends. Whether the
    /// slice stopped with work left.
    fn remove_notifications(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        cutoff: i64,
        dead_cutoff: Option<i64>,
        done: &mut Maintained,
    ) -> Result<bool, SpoolError> {
        let mut behind = false;
        let from = keys::notification(NotificationId(ulid::Ulid(
            self.retention.notifications_from,
        )));
        let until = keys::notification(NotificationId(ulid::Ulid::from_parts(
            u64::try_from(cutoff.max(0)).unwrap_or(0),
            0,
        )));
        let mut finished = true;
        let mut removed_upto = None;
        let mut gone = checks::Gone::default();
        for (seen, item) in store.tree.range(from..until).enumerate() {
            if seen == RETENTION_SLICE {
                finished = false;
                behind = true;
                break;
            }
            let (key, value) = item.map_err(storage)?;
            let Some(id) = keys::id_of(&key) else {
                continue;
            };
            self.retention.notifications_from = id.0 .0.saturating_add(1);
            let meta = match Record::<NotificationMeta>::decode(&value) {
                Ok(record) => record.meta,
                Err(err) => {
                    self.shared
                        .note_unreadable(format!("notification {id}: {err}"));
                    continue;
                }
            };
            if let Some(records) = removable(&self.shared, store, id, &meta, dead_cutoff)? {
                batch.remove(&key);
                for item in store.tree.scan_prefix(keys::delivery_prefix(id)).keys() {
                    batch.remove(item.map_err(storage)?);
                }
                self.tally.removed_notification(
                    &meta.source,
                    records
                        .iter()
                        .map(|d| (d.subscription.as_str(), Standing::of(&d.state))),
                );
                let dedup_key = keys::dedup(&meta.source, &meta.dedup_key);
                if dedup_points_to(store, &dedup_key, id)? {
                    batch.remove(dedup_key);
                    batch.remove(&keys::dedup_expiry(meta.received_ms, id));
                }
                invoices::removed(batch, &meta, id);
                gone.note(&meta, id);
                done.notifications += 1;
                removed_upto = Some(id);
            }
        }
        // An invoice whose last notification goes takes its checks along.
        gone.remove_checks(store, batch)?;
        if let Some(id) = removed_upto {
            let before = store
                .get(keys::REMOVED_UPTO)?
                .and_then(|v| NotificationId::from_bytes(&v));
            if before.is_none_or(|before| before < id) {
                batch.insert(keys::REMOVED_UPTO, &id.to_bytes());
            }
        }
        if finished {
            self.retention.notifications_from = 0;
            let cycle = (millis(self.shared.config.retention.0) / 4)
                .clamp(RETENTION_CYCLE_MIN_MS, RETENTION_CYCLE_MAX_MS);
            self.retention.next_cycle_ms = self.now_ms + cycle;
        }
        Ok(behind)
    }

    /// Quarantined bodies, by age alone; whether work is left.
    fn remove_quarantined(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        cutoff: i64,
        done: &mut Maintained,
    ) -> Result<bool, SpoolError> {
        let from = keys::quarantine(NotificationId(ulid::Ulid(0)));
        let until = keys::quarantine(NotificationId(ulid::Ulid::from_parts(
            u64::try_from(cutoff.max(0)).unwrap_or(0),
            0,
        )));
        for (seen, item) in store.tree.range(from..until).enumerate() {
            if seen == RETENTION_SLICE {
                return Ok(true);
            }
            let (key, body) = item.map_err(storage)?;
            batch.remove(key);
            self.tally
                .removed_quarantined(quarantined_source(&body).as_deref());
            done.quarantined += 1;
        }
        Ok(false)
    }
}

/// Dedup entries by the time index that spools written before this
/// release still hold (new entries go with their notification); whether
/// work is left.
fn expire_dedup_entries(
    store: &Store,
    batch: &mut Batch,
    dedup_cutoff: i64,
    done: &mut Maintained,
) -> Result<bool, SpoolError> {
    let start = keys::dedup_expiry(0, NotificationId(ulid::Ulid(0)));
    let end = keys::dedup_expiry(dedup_cutoff, NotificationId(ulid::Ulid(0)));
    for (seen, item) in store.tree.range(start..end).enumerate() {
        if seen == RETENTION_SLICE {
            return Ok(true);
        }
        let (key, dedup_key) = item.map_err(storage)?;
        batch.remove(key.clone());
        let Some((_, id)) = keys::split_dedup_expiry(&key) else {
            continue;
        };
        if dedup_points_to(store, &dedup_key, id)? {
            batch.remove(dedup_key);
        }
        done.dedup_entries += 1;
    }
    Ok(false)
}

/// Audit records, by age alone, like quarantined bodies; whether work is
/// left.
fn remove_audit_records(
    store: &Store,
    batch: &mut Batch,
    cutoff: i64,
    done: &mut Maintained,
) -> Result<bool, SpoolError> {
    let from = [keys::AUDIT];
    let until = keys::audit(AuditId(ulid::Ulid::from_parts(
        u64::try_from(cutoff.max(0)).unwrap_or(0),
        0,
    )));
    for (seen, item) in store
        .tree
        .range(from.as_slice()..until.as_slice())
        .enumerate()
    {
        if seen == RETENTION_SLICE {
            return Ok(true);
        }
        let (key, _) = item.map_err(storage)?;
        batch.remove(key);
        done.audit_records += 1;
    }
    Ok(false)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a dedup entry still names `id` (a later copy past the window
/// may have taken it over; then it is that one's to expire).
fn dedup_points_to(
    store: &Store,
    dedup_key: &[u8],
    id: NotificationId,
) -> Result<bool, SpoolError> {
    Ok(store
        .get(dedup_key)?
        .and_then(|v| keys::split_dedup_value(&v))
        .is_some_and(|(first, _)| first == id))
}

/// The delivery records of a notification, if every one is over:
/// delivered, purged, or dead past `dead_cutoff` (when dead deliveries
/// expire at all). A subscription it was fanned out to with no record yet
/// was never attempted.
fn removable(
    shared: &Shared,
    store: &Store,
    id: NotificationId,
    meta: &NotificationMeta,
    dead_cutoff: Option<i64>,
) -> Result<Option<Vec<Delivery>>, SpoolError> {
    let records = match super::super::orphans::records_of(store, id) {
        Ok(records) => records,
        Err(SpoolError::Corrupt(err)) => {
            shared.note_unreadable(format!("a delivery of {id}: {err}"));
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let all_attempted = meta
        .subscriptions
        .iter()
        .all(|name| records.iter().any(|d| &d.subscription == name));
    let all_over = records.iter().all(|d| match d.state {
        State::Delivered { .. } | State::Purged { .. } => true,
        State::Dead { at_ms } => dead_cutoff.is_some_and(|cutoff| at_ms < cutoff),
        State::Pending | State::InFlight { .. } | State::Waiting { .. } => false,
    });
    Ok((all_attempted && all_over).then_some(records))
}
