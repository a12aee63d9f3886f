//! Applying a group: each change staged into one sled batch (more where a
//! change must read what the group wrote before it), with the counts it
//! moves. One function per kind of change; each answers
//! `Ok(its own answer)`, or `Err` where the store failed and the whole
//! group with it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ::sled::Batch;

use super::super::counts::{quarantined_source, Standing};
use super::super::invoices;
use super::super::{decode_delivery, encode_delivery, keys, lock, Store};
use super::{Applied, Change, Completion, NewNotification, Writer};
use crate::delivery::{Delivery, State};
use crate::spool::record::stamp_id;
use crate::spool::{ApiSubscription, AuditId, NotificationId, Routes, SpoolError, Stored};

/// A change's own answer: an `Err` here refuses that change alone.
type Answer = Result<Applied, SpoolError>;

#[derive(Default)]
pub(super) struct GroupApplied {
    /// Each change's answer; an `Err` here refuses that change alone.
    pub results: Vec<Answer>,
    /// The newest notification stored by the group.
    pub newest: Option<NotificationId>,
    /// Subscriptions with new first attempts.
    pub woken: HashSet<String>,
}

/// What the stores of one group share: the batch, and what the group
/// stored before (dedup keys, invoices) that the tree does not show yet.
struct Group {
    batch: Batch,
    fresh: HashMap<Vec<u8>, NotificationId>,
    invoices: invoices::Pending,
    /// The dedup window, in ms.
    window: i64,
    out: GroupApplied,
}

impl Writer {
    /// Applies a group as one batch (or more, where a replay must read what
    /// came before it), each with the counts it changed. Counts staged for
    /// a batch that is not applied are taken back.
    pub(super) fn apply(
        &mut self,
        store: &Store,
        changes: Vec<Change>,
    ) -> Result<GroupApplied, SpoolError> {
        let applied = self.apply_changes(store, changes);
        if applied.is_err() {
            self.tally.discard(&self.shared.counts);
        }
        applied
    }

    fn apply_changes(
        &mut self,
        store: &Store,
        changes: Vec<Change>,
    ) -> Result<GroupApplied, SpoolError> {
        let mut group = Group {
            batch: Batch::default(),
            fresh: HashMap::new(),
            invoices: invoices::Pending::default(),
            window: crate::spool::dedup::window_ms(&self.shared.config),
            out: GroupApplied::default(),
        };
        for change in changes {
            let result = self.apply_change(store, &mut group, change)?;
            group.out.results.push(result);
        }
        #[cfg(test)]
        if self
            .shared
            .fail_next_batch
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            // As if the batch could not be written: none of it is.
            return Err(SpoolError::Encode(crate::spool::cause(
                "a batch failed on purpose (test)",
            )));
        }
        self.tally
            .apply(&store.tree, group.batch, &self.shared.counts)?;
        Ok(group.out)
    }

    fn apply_change(
        &mut self,
        store: &Store,
        group: &mut Group,
        change: Change,
    ) -> Result<Answer, SpoolError> {
        let batch = &mut group.batch;
        match change {
            Change::Store(new) => self.apply_store(store, group, *new),
            Change::Quarantine {
                record,
                received_ms,
                source,
            } => Ok(self.apply_quarantine(batch, record, received_ms, &source)),
            Change::Complete(completion) => self.apply_complete(store, batch, completion),
            Change::Replay {
                id,
                subscription,
                now_ms,
            } => self.apply_replay(store, batch, id, &subscription, now_ms),
            Change::Pause {
                subscription,
                paused,
            } => Ok(self.apply_pause(batch, subscription, paused)),
            Change::Subscription {
                name,
                kept,
                audit,
                audited_ms,
            } => Ok(self.apply_subscription(batch, name, kept, audit, audited_ms)),
            Change::Backfill {
                subscription,
                ids,
                now_ms,
            } => {
                self.apply_so_far(store, batch)?;
                let added = super::super::backfill::give(
                    store,
                    batch,
                    &mut self.tally,
                    &subscription,
                    &ids,
                    now_ms,
                )?;
                Ok(Ok(Applied::Added(added)))
            }
            Change::Discard { id } => self.apply_discard(store, batch, id),
            Change::Routes { routes } => self.apply_routes(store, batch, routes),
            Change::Orphans { from, to, now_ms } => {
                self.apply_so_far(store, batch)?;
                let moved = super::super::orphans::reassign(
                    store,
                    &mut self.tally,
                    &self.shared.counts,
                    &from,
                    to.as_deref(),
                    now_ms,
                )?;
                lock(&self.shared.health).orphans.remove(&from);
                Ok(Ok(Applied::Reassigned(moved)))
            }
            Change::Purge { targets, now_ms } => {
                self.apply_so_far(store, batch)?;
                // A slice that fails is that change's answer.
                Ok(super::super::purge::slice(
                    &self.shared,
                    store,
                    &mut self.tally,
                    &targets,
                    now_ms,
                )
                .map(Applied::Purged))
            }
            Change::RetryNow {
                subscription,
                now_ms,
                after,
            } => {
                self.apply_so_far(store, batch)?;
                Ok(super::super::retry_now::slice(
                    &self.shared,
                    store,
                    &mut self.tally,
                    &subscription,
                    now_ms,
                    after,
                )
                .map(Applied::RetriedNow))
            }
            Change::Stuck(changes) => {
                invoices::save_stuck(batch, &changes);
                Ok(Ok(Applied::Recorded))
            }
            Change::Audit { entry, at_ms } => Ok(Ok(Applied::Audited(
                self.add_audit_record(batch, entry, at_ms),
            ))),
            Change::Check {
                source,
                subject,
                value,
            } => {
                // It reads the invoice and its checks as this group left them.
                self.apply_so_far(store, batch)?;
                Ok(
                    super::super::checks::record(store, batch, &source, &subject, value)?
                        .map(|()| Applied::Recorded),
                )
            }
        }
    }

    /// Applies the batch so far, for a change that reads what this group
    /// wrote before it.
    fn apply_so_far(&mut self, store: &Store, batch: &mut Batch) -> Result<(), SpoolError> {
        self.tally
            .apply(&store.tree, std::mem::take(batch), &self.shared.counts)
    }

    /// A notification and its dedup entry, unless the dedup key is fresh
    /// (then a duplicate of the first); a quarantined body it is made from
    /// leaves the quarantine either way. Reconciliation adds two rules:
    /// a `reconciled` notification for an invoice already standing at its
    /// status is a duplicate of the invoice's latest; a webhook of a final
    /// status the relay already reconciled (its `reconciled_key` fresh) is
    /// a resend of the reconciled notification.
    fn apply_store(
        &mut self,
        store: &Store,
        group: &mut Group,
        new: NewNotification,
    ) -> Result<Answer, SpoolError> {
        let NewNotification {
            record,
            dedup_key,
            received_ms,
            source,
            subscriptions,
            released,
            invoice,
            reconciled,
            reconciled_dedup,
        } = new;
        let batch = &mut group.batch;
        if let Some(quarantined) = released {
            let key = keys::quarantine(quarantined);
            let Some(body) = store.get(&key)? else {
                return Ok(Err(SpoolError::NotFound(format!(
                    "quarantined body {quarantined} (released or discarded meanwhile)"
                ))));
            };
            batch.remove(&key);
            self.tally
                .removed_quarantined(quarantined_source(&body).as_deref());
        }
        let earlier = fresh_entry(store, &group.fresh, group.window, &dedup_key, received_ms)?;
        if let Some(first) = earlier {
            // A resend is the provider's; the relay asking again is not one.
            if let Some(invoice) = invoice.as_ref().filter(|_| !reconciled) {
                group.invoices.resent(store, batch, invoice, first)?;
            }
            return Ok(Ok(Applied::Stored(Stored::Duplicate(first))));
        }
        if let Some(invoice) = &invoice {
            if reconciled {
                // Rare: one seek, for what the reconciler found.
                if let Some((status, latest)) = group.invoices.current(store, invoice)? {
                    if status == invoice.status {
                        return Ok(Ok(Applied::Stored(Stored::Duplicate(latest))));
                    }
                }
            } else if let Some(key) = &reconciled_dedup {
                // A final status only: one point read of a dedup entry.
                let made = fresh_entry(store, &group.fresh, group.window, key, received_ms)?;
                if let Some(made) = made {
                    group.invoices.resent(store, batch, invoice, made)?;
                    return Ok(Ok(Applied::Stored(Stored::Duplicate(made))));
                }
            }
        }
        let id = self.next_id(received_ms);
        let superseded = match &invoice {
            Some(invoice) => group.invoices.stored(store, batch, invoice, id)?,
            None => false,
        };
        // Rare (a late resend after a final status): the record is
        // re-encoded only then.
        let (mut record, subscriptions) = if superseded {
            self.superseded(batch, &record, subscriptions, id, received_ms)?
        } else {
            (record, subscriptions)
        };
        stamp_id(&mut record, id);
        batch.insert(&keys::notification(id), record);
        // No expiry entry: the entry goes with its notification
        // (retention), and past the window a store finds it stale and
        // takes the key over.
        batch.insert(dedup_key.as_slice(), &keys::dedup_value(id, received_ms));
        group.fresh.insert(dedup_key, id);
        self.tally.stored(&source, &subscriptions);
        group.out.newest = Some(id);
        group.out.woken.extend(subscriptions);
        Ok(Ok(Applied::Stored(Stored::New(id))))
    }

    fn apply_quarantine(
        &mut self,
        batch: &mut Batch,
        mut record: Vec<u8>,
        received_ms: i64,
        source: &str,
    ) -> Answer {
        let id = self.next_id(received_ms);
        stamp_id(&mut record, id);
        batch.insert(&keys::quarantine(id), record);
        self.tally.quarantined(source);
        Ok(Applied::Quarantined(id))
    }

    /// A leased delivery's new state: its record, its retry entry moved,
    /// the subscription's cursor, the counts.
    fn apply_complete(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        completion: Completion,
    ) -> Result<Answer, SpoolError> {
        let Completion {
            id,
            subscription,
            value,
            old_retry,
            new_retry,
            cursor,
            was,
            now,
        } = completion;
        let was = if self.lease_may_be_stale(&subscription, was) {
            // What the record holds now, this group's writes included.
            self.apply_so_far(store, batch)?;
            stored_standing(store, id, &subscription)?
        } else {
            Some(was)
        };
        if let Some(old) = old_retry {
            batch.remove(old);
        }
        if let Some(new) = new_retry {
            batch.insert(new, &[]);
        }
        batch.insert(keys::delivery(id, &subscription), value);
        if let Some(cursor) = cursor {
            batch.insert(keys::cursor(&subscription), &cursor.to_be_bytes());
        }
        match was {
            Some(was) => self.tally.moved(&subscription, was, now),
            // An unreadable record was not counted; its new one is.
            None => self.tally.added(&subscription, now),
        }
        Ok(Ok(Applied::Recorded))
    }

    fn apply_replay(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        id: NotificationId,
        subscription: &str,
        now_ms: i64,
    ) -> Result<Answer, SpoolError> {
        // It reads what this group wrote before it.
        self.apply_so_far(store, batch)?;
        // A delivery that cannot be replayed is that change's answer, not
        // a failure of the group.
        Ok(
            replay(store, batch, id, subscription, now_ms)?.map(|replayed| {
                if let Some(was) = replayed {
                    self.tally.moved(subscription, was, Standing::Waiting);
                }
                Applied::Replayed(replayed.is_some())
            }),
        )
    }

    fn apply_pause(&mut self, batch: &mut Batch, subscription: String, paused: bool) -> Answer {
        let key = keys::paused(&subscription);
        if paused {
            batch.insert(key, &[]);
            lock(&self.shared.paused).insert(subscription);
        } else {
            batch.remove(key);
            lock(&self.shared.paused).remove(&subscription);
        }
        Ok(Applied::Recorded)
    }

    fn apply_subscription(
        &mut self,
        batch: &mut Batch,
        name: String,
        kept: Option<(Vec<u8>, Box<ApiSubscription>)>,
        audit: Vec<u8>,
        audited_ms: i64,
    ) -> Answer {
        let key = keys::api_subscription(&name);
        match kept {
            Some((bytes, subscription)) => {
                batch.insert(key, bytes);
                lock(&self.shared.api_subscriptions).insert(name, *subscription);
            }
            None => {
                batch.remove(key);
                lock(&self.shared.api_subscriptions).remove(&name);
                // A later subscription of that name starts unpaused.
                batch.remove(keys::paused(&name));
                lock(&self.shared.paused).remove(&name);
            }
        }
        Ok(Applied::Audited(
            self.add_audit_record(batch, audit, audited_ms),
        ))
    }

    fn apply_discard(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        id: NotificationId,
    ) -> Result<Answer, SpoolError> {
        let key = keys::quarantine(id);
        let Some(body) = store.get(&key)? else {
            return Ok(Err(SpoolError::NotFound(format!(
                "no quarantined body {id}"
            ))));
        };
        batch.remove(&key);
        self.tally
            .removed_quarantined(quarantined_source(&body).as_deref());
        Ok(Ok(Applied::Recorded))
    }

    fn apply_routes(
        &mut self,
        store: &Store,
        batch: &mut Batch,
        routes: Routes,
    ) -> Result<Answer, SpoolError> {
        let first_new = self.last_id.map_or(0, |id| id.0 .0.saturating_add(1));
        for name in routes.names() {
            let key = keys::cursor(name);
            if store.get(&key)?.is_none() {
                batch.insert(key, &first_new.to_be_bytes());
            }
        }
        // Stores stamped after this one fan out to the new set.
        self.shared.routes.store(Arc::new(routes));
        Ok(Ok(Applied::Recorded))
    }

    /// An audit record (encoded), with the next audit id after `at_ms`.
    fn add_audit_record(&mut self, batch: &mut Batch, entry: Vec<u8>, at_ms: i64) -> AuditId {
        let id = AuditId::next_after(self.last_audit, at_ms);
        self.last_audit = Some(id);
        batch.insert(&keys::audit(id), entry);
        id
    }

    /// A superseded notification: its record marked, and for each
    /// subscription that skips such notifications a delivery recorded as
    /// purged at once (never sent, counted as purged). Answers the record
    /// and the subscriptions that still take it.
    fn superseded(
        &mut self,
        batch: &mut Batch,
        record: &[u8],
        subscriptions: Vec<String>,
        id: NotificationId,
        received_ms: i64,
    ) -> Result<(Vec<u8>, Vec<String>), SpoolError> {
        let routes = self.shared.routes.load();
        let superseded =
            invoices::supersede(record, subscriptions, |name| routes.skips_superseded(name))?;
        for name in &superseded.skipped {
            let mut delivery = Delivery::new(name.as_str(), received_ms);
            delivery.state = State::Purged { at_ms: received_ms };
            batch.insert(keys::delivery(id, name), encode_delivery(&delivery)?);
            self.tally.added(name, Standing::Purged);
        }
        Ok((superseded.record, superseded.kept))
    }

    /// Whether the record a lease was made from may have changed since:
    /// a final one (leased through a stale retry entry) may have been
    /// replayed, and one of a subscription no longer configured may have
    /// been purged as an orphan. Then the writer reads what it replaces;
    /// otherwise nothing else writes a leased delivery, and the lease's
    /// word spares a read per outcome.
    fn lease_may_be_stale(&self, subscription: &str, was: Standing) -> bool {
        was.is_final() || !self.shared.routes.load().contains(subscription)
    }

    fn next_id(&mut self, received_ms: i64) -> NotificationId {
        let id = NotificationId::next_after(self.last_id, received_ms);
        self.last_id = Some(id);
        id
    }
}

/// Puts a final delivery back in the queue, due now, and tells where it
/// stood; None if it was never attempted. The outer error is the store's;
/// the inner one the request's.
fn replay(
    store: &Store,
    batch: &mut Batch,
    id: NotificationId,
    subscription: &str,
    now_ms: i64,
) -> Result<Result<Option<Standing>, SpoolError>, SpoolError> {
    if store.get(&keys::notification(id))?.is_none() {
        return Ok(Err(SpoolError::NotFound(id.to_string())));
    }
    let key = keys::delivery(id, subscription);
    let Some(bytes) = store.get(&key)? else {
        return Ok(Ok(None));
    };
    let mut delivery = match decode_delivery(&bytes) {
        Ok(delivery) => delivery,
        Err(err) => return Ok(Err(err)),
    };
    let was = Standing::of(&delivery.state);
    if let Err(err) = delivery.replay(now_ms) {
        return Ok(Err(SpoolError::NotReplayable(err.to_string())));
    }
    if let Some(at) = delivery.due_at() {
        batch.insert(keys::retry(subscription, at, id), &[]);
    }
    batch.insert(key, encode_delivery(&delivery)?);
    Ok(Ok(Some(was)))
}

/// The notification a dedup entry names, if it is fresh: written by this
/// group, or received less than `window` ms before `received_ms`.
fn fresh_entry(
    store: &Store,
    fresh: &HashMap<Vec<u8>, NotificationId>,
    window: i64,
    dedup_key: &[u8],
    received_ms: i64,
) -> Result<Option<NotificationId>, SpoolError> {
    Ok(match fresh.get(dedup_key) {
        Some(first) => Some(*first),
        None => store
            .get(dedup_key)?
            .and_then(|v| keys::split_dedup_value(&v))
            .filter(|(_, at)| crate::spool::dedup::is_resend(*at, received_ms, window))
            .map(|(first, _)| first),
    })
}

/// Where a delivery stands in the store: its record's state, waiting when
/// it has none yet; None when the record cannot be read.
fn stored_standing(
    store: &Store,
    id: NotificationId,
    subscription: &str,
) -> Result<Option<Standing>, SpoolError> {
    match store.get(&keys::delivery(id, subscription))? {
        None => Ok(Some(Standing::Waiting)),
        Some(bytes) => Ok(decode_delivery(&bytes)
            .ok()
            .map(|delivery| Standing::of(&delivery.state))),
    }
}
