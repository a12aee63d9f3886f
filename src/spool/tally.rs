//! The working counts of the one writer of a backend's counts (sled's
//! writer thread, a JetStream relay's fold): each change stages its effect
//! here, and the batch that applies the change also writes the counts it
//! touched (one key per subscription or source touched, one for the
//! totals, under the backend's [`CountKeys`]), so the counts are exactly
//! as durable as what they count; then they are published to the
//! in-memory copy that `counts()` answers from.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use ::sled::{Batch, Tree};

use super::standing::{encode_source, encode_subscription, encode_totals, CountKeys, Standing};
use crate::spool::{cause, Counts, SourceCounts, SpoolError, SubscriptionCounts};

fn lock(mutex: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer's working counts: what is applied, plus what the changes of
/// the batch being built staged. [`Tally::apply`] writes the touched counts
/// into the batch, applies it and publishes them; if the batch is not
/// applied, [`Tally::discard`] takes back what was staged.
pub struct Tally {
    counts: Counts,
    /// Subscriptions whose counts were staged since the last apply.
    dirty: BTreeSet<String>,
    /// Sources whose counts were staged since the last apply.
    sources_dirty: BTreeSet<String>,
    totals_dirty: bool,
    /// A count went below zero once: warned, so the log is not flooded.
    warned: bool,
    /// Where the counts are kept in the backend's tree.
    keys: CountKeys,
}

impl Tally {
    pub fn new(counts: Counts, keys: CountKeys) -> Tally {
        Tally {
            keys,
            counts,
            dirty: BTreeSet::new(),
            sources_dirty: BTreeSet::new(),
            totals_dirty: false,
            warned: false,
        }
    }

    /// A new notification of `source`, one waiting delivery per
    /// subscription.
    pub fn stored(&mut self, source: &str, subscriptions: &[String]) {
        self.counts.notifications += 1;
        self.totals_dirty = true;
        self.change_source(source, |counts| counts.stored += 1);
        for name in subscriptions {
            self.added(name, Standing::Waiting);
        }
    }

    pub fn quarantined(&mut self, source: &str) {
        self.counts.quarantined += 1;
        self.totals_dirty = true;
        self.change_source(source, |counts| counts.quarantined += 1);
    }

    /// A delivery of `subscription` went from one standing to another.
    pub fn moved(&mut self, subscription: &str, from: Standing, to: Standing) {
        if from != to {
            self.removed(subscription, from);
            self.added(subscription, to);
        }
    }

    pub fn added(&mut self, subscription: &str, standing: Standing) {
        self.change(subscription, |counts| *standing.slot(counts) += 1);
    }

    pub fn removed(&mut self, subscription: &str, standing: Standing) {
        let underflow = self.change(subscription, |counts| {
            let slot = standing.slot(counts);
            match slot.checked_sub(1) {
                Some(less) => *slot = less,
                None => return true,
            }
            false
        });
        if underflow {
            self.drifted(subscription, &format!("{standing:?}"));
        }
    }

    /// Retention removed a notification of `source` with these deliveries.
    pub fn removed_notification<'a>(
        &mut self,
        source: &str,
        deliveries: impl IntoIterator<Item = (&'a str, Standing)>,
    ) {
        self.counts.notifications = self.counts.notifications.saturating_sub(1);
        self.totals_dirty = true;
        self.lower_source(source, |counts| &mut counts.stored);
        for (name, standing) in deliveries {
            self.removed(name, standing);
        }
    }

    /// A body in quarantine whose record cannot be read: in the total
    /// only (its source is not known), as a recount would count it.
    pub fn quarantined_unread(&mut self) {
        self.counts.quarantined += 1;
        self.totals_dirty = true;
    }

    /// A quarantined body left (retention, discard, release); `source` is
    /// None when its record could not be read.
    pub fn removed_quarantined(&mut self, source: Option<&str>) {
        self.counts.quarantined = self.counts.quarantined.saturating_sub(1);
        self.totals_dirty = true;
        if let Some(source) = source {
            self.lower_source(source, |counts| &mut counts.quarantined);
        }
    }

    /// Takes one from a source's count, warning once if it is already 0.
    fn lower_source(&mut self, source: &str, slot: impl FnOnce(&mut SourceCounts) -> &mut u64) {
        let underflow = self.change_source(source, |counts| {
            let slot = slot(counts);
            match slot.checked_sub(1) {
                Some(less) => *slot = less,
                None => return true,
            }
            false
        });
        if underflow {
            self.drifted(source, "source");
        }
    }

    /// Changes one source's counts and marks them to be written; like
    /// [`Tally::change`], no allocation for a source already in this batch.
    fn change_source<R>(&mut self, name: &str, change: impl FnOnce(&mut SourceCounts) -> R) -> R {
        if !self.sources_dirty.contains(name) {
            self.sources_dirty.insert(name.to_owned());
        }
        match self.counts.sources.get_mut(name) {
            Some(counts) => change(counts),
            None => {
                let mut counts = SourceCounts::default();
                let out = change(&mut counts);
                self.counts.sources.insert(name.to_owned(), counts);
                out
            }
        }
    }

    /// Changes one subscription's counts and marks them to be written.
    /// On the ingest path: no allocation unless the name is new to the map
    /// or to this batch.
    fn change<R>(&mut self, name: &str, change: impl FnOnce(&mut SubscriptionCounts) -> R) -> R {
        if !self.dirty.contains(name) {
            self.dirty.insert(name.to_owned());
        }
        match self.counts.subscriptions.get_mut(name) {
            Some(counts) => change(counts),
            None => {
                let mut counts = SubscriptionCounts::default();
                let out = change(&mut counts);
                self.counts.subscriptions.insert(name.to_owned(), counts);
                out
            }
        }
    }

    /// `name` is a subscription or a source, `count` which of its counts.
    fn drifted(&mut self, name: &str, count: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                name,
                count,
                "a count would go below zero: the counts disagree with the spool; \
                 `webhook-relay spool check` (relay stopped) recounts and rewrites them"
            );
        }
    }

    /// Writes the staged counts into `batch`, applies it, and publishes
    /// them to `published`; if sled refuses the batch, the staged counts
    /// are taken back.
    pub fn apply(
        &mut self,
        tree: &Tree,
        mut batch: Batch,
        published: &Mutex<Counts>,
    ) -> Result<(), SpoolError> {
        for name in &self.dirty {
            let key = self.keys.subscription(name);
            match self.counts.subscriptions.get(name) {
                Some(counts) if !counts.is_zero() => {
                    batch.insert(key, encode_subscription(counts));
                }
                _ => batch.remove(key),
            }
        }
        for name in &self.sources_dirty {
            let key = self.keys.source(name);
            match self.counts.sources.get(name) {
                Some(counts) if !counts.is_zero() => {
                    batch.insert(key, encode_source(counts));
                }
                _ => batch.remove(key),
            }
        }
        if self.totals_dirty {
            batch.insert(self.keys.totals, encode_totals(&self.counts));
        }
        if let Err(err) = tree.apply_batch(batch) {
            self.discard(published);
            return Err(SpoolError::Storage(cause(err)));
        }
        let mut shown = lock(published);
        for name in std::mem::take(&mut self.dirty) {
            match self.counts.subscriptions.get(&name) {
                Some(counts) if !counts.is_zero() => {
                    shown.subscriptions.insert(name, counts.clone());
                }
                _ => {
                    self.counts.subscriptions.remove(&name);
                    shown.subscriptions.remove(&name);
                }
            }
        }
        for name in std::mem::take(&mut self.sources_dirty) {
            match self.counts.sources.get(&name) {
                Some(counts) if !counts.is_zero() => {
                    shown.sources.insert(name, counts.clone());
                }
                _ => {
                    self.counts.sources.remove(&name);
                    shown.sources.remove(&name);
                }
            }
        }
        if std::mem::take(&mut self.totals_dirty) {
            shown.notifications = self.counts.notifications;
            shown.quarantined = self.counts.quarantined;
        }
        Ok(())
    }

    /// Takes back what was staged since the last apply: the batch that
    /// carried it was dropped.
    pub fn discard(&mut self, published: &Mutex<Counts>) {
        let shown = lock(published);
        for name in std::mem::take(&mut self.dirty) {
            match shown.subscriptions.get(&name) {
                Some(counts) => {
                    self.counts.subscriptions.insert(name, counts.clone());
                }
                None => {
                    self.counts.subscriptions.remove(&name);
                }
            }
        }
        for name in std::mem::take(&mut self.sources_dirty) {
            match shown.sources.get(&name) {
                Some(counts) => {
                    self.counts.sources.insert(name, counts.clone());
                }
                None => {
                    self.counts.sources.remove(&name);
                }
            }
        }
        if std::mem::take(&mut self.totals_dirty) {
            self.counts.notifications = shown.notifications;
            self.counts.quarantined = shown.quarantined;
        }
    }
}
