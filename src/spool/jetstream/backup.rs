//! The backup of a JetStream spool, in the archive's words
//! (`spool/backup.rs`), so that `spool restore` makes a sled spool of it
//! (restore stays sled-only: `docs/design/jetstream.md` §2 step 12).
//!
//! The walk runs on a blocking thread (the archive's writer is sync) and
//! reaches the servers through the bridge: first a sync, so the index
//! holds what every relay wrote before the backup began; then the API
//! subscriptions and pauses, the notifications in id order (each with
//! its delivery states, read from the stream, and its invoice index
//! entry), the quarantined bodies, the audit log, the stuck check's marks
//! and the reconcile checks, from the index. A delivery never attempted
//! has no state and goes as sled's does: pending by its notification's
//! fan-out. Records written while the walk goes on may be in it or not,
//! as on sled.

use super::deliveries::STATE;
use super::index::Family;
use super::invoices::{entry_key, Entry};
use super::reads::{body_at, record};
use super::JetStreamSpool;
use crate::spool::backup::{ArchiveCounts, BackupError, IndexEntry, Item, ItemSink};
use crate::spool::invoices::InvoiceRef;
use crate::spool::record::{stamp_id, NotificationMeta, QuarantineMeta, Record};
use crate::spool::{audit, subscriptions, NotificationId, SpoolError};

/// How often (in notifications) the walk reports its progress.
const PROGRESS_EVERY: u64 = 10_000;

impl JetStreamSpool {
    /// Writes what the spool holds into `archive` (from a blocking
    /// thread); answers the newest notification written.
    pub(crate) fn backup<A: ItemSink>(
        &self,
        archive: &mut A,
        progress: &mut dyn FnMut(&ArchiveCounts),
    ) -> Result<Option<NotificationId>, BackupError> {
        self.bridge.block_on(self.sync())?;
        for subscription in self.index.api_subscriptions()? {
            archive.put(&Item::Subscription(subscriptions::encode(&subscription)?))?;
        }
        for name in self.index.paused()? {
            archive.put(&Item::Paused(name))?;
        }
        let with_states = self.index.subscriptions_with(STATE)?;
        let mut newest = None;
        for entry in self.index.walk(Family::Notifications, false, None)? {
            let entry = entry?;
            let id = entry.id;
            let stream = self.stream.clone();
            let sequence = entry.sequence;
            let Some(body) = self.bridge.block_on(body_at(&stream, sequence))? else {
                continue; // removed by retention meanwhile
            };
            let record: Record<NotificationMeta> = record(&entry, body)?;
            let mut deliveries = Vec::new();
            for sub in &with_states {
                if let Some(delivery) = self.bridge.block_on(self.state_body(sub, id))? {
                    deliveries.push(delivery);
                }
            }
            let invoice = self.invoice_entry(id, &record.meta)?;
            let mut bytes = record.encode()?;
            stamp_id(&mut bytes, id);
            archive.put(&Item::Notification(
                crate::spool::backup::NotificationItem {
                    id,
                    record: bytes,
                    deliveries,
                    invoice,
                },
            ))?;
            newest = newest.max(Some(id));
            if archive
                .counts()
                .notifications
                .is_multiple_of(PROGRESS_EVERY)
            {
                progress(archive.counts());
            }
        }
        for entry in self.index.walk(Family::Quarantine, false, None)? {
            let entry = entry?;
            let stream = self.stream.clone();
            let Some(body) = self.bridge.block_on(body_at(&stream, entry.sequence))? else {
                continue;
            };
            let record: Record<QuarantineMeta> = record(&entry, body)?;
            let mut bytes = record.encode()?;
            stamp_id(&mut bytes, entry.id);
            archive.put(&Item::Quarantined {
                id: entry.id,
                record: bytes,
            })?;
        }
        for found in self.index.audit_walk()? {
            let found = found?;
            archive.put(&Item::Audit {
                id: found.id,
                entry: audit::encode_entry(&found.entry)?,
            })?;
        }
        let marks = self.index.stuck_marks()?;
        for stuck in marks.stuck {
            archive.put(&Item::Stuck(stuck))?;
        }
        for (source, upto) in marks.walked {
            archive.put(&Item::Walked { source, upto })?;
        }
        for (source, subject, check) in self.index.all_checks()? {
            archive.put(&Item::Check {
                source,
                subject,
                check,
            })?;
        }
        progress(archive.counts());
        Ok(newest)
    }

    /// A notification's entry in its invoice's timeline, as the fold
    /// decided it.
    fn invoice_entry(
        &self,
        id: NotificationId,
        meta: &NotificationMeta,
    ) -> Result<Option<IndexEntry>, SpoolError> {
        let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status)
        else {
            return Ok(None);
        };
        let key = entry_key(&invoice.source, &invoice.subject, id);
        let found = self.index.db()?.get(key).map_err(super::index::storage)?;
        Ok(found
            .and_then(|value| Entry::decode(&value))
            .map(|entry| IndexEntry {
                status: entry.status,
                superseded: entry.superseded,
                resends: entry.resends,
                after: entry.after,
            }))
    }
}
