//! Backup and restore of the sled spool, in the archive's words
//! (`spool/backup.rs`).
//!
//! The backup walks the live tree while the writer goes on: the
//! notifications up to the durable watermark read when it began (nothing
//! newer, nothing that a crash could still take back), each with its
//! delivery records as the walk finds them and its invoice index entry;
//! then the quarantined bodies, the audit log, the API's subscriptions,
//! the paused marks, the stuck check's marks and the invoices' reconcile
//! checks. sled's iterators are not
//! snapshots, so a delivery's state is the one it had when its
//! notification was read; that is what "at the time of the copy" means,
//! and the walk never holds the writer.
//!
//! The restore writes a new spool in a directory of its own beside the
//! target, rebuilding what follows from the records (dedup entries, due
//! entries, cursors, counts), and moves it in place only once the whole
//! archive checked out; then it writes the acknowledged mark and the mark
//! of a clean stop, so the first start neither repairs nor checks it all.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use ::sled::Batch;

use super::checks;
use super::invoices::{self, Entry, InvoiceRef};
use super::{counts, decode_delivery, encode_delivery, keys, lock, mark, storage, SledSpool, TREE};
use crate::providers::InvoiceStatus;
use crate::spool::backup::{
    ArchiveCounts, ArchiveReader, BackupError, IndexEntry, Item, ItemSink, Manifest,
    NotificationItem,
};
use crate::spool::reconcile::{decode_check, encode_check};
use crate::spool::record::{NotificationMeta, Record};
use crate::spool::{NotificationId, StuckChanges};

/// How often (in notifications) the walks report their progress.
const PROGRESS_EVERY: u64 = 10_000;
/// Items the restore writes per sled batch.
const RESTORE_BATCH: usize = 512;

impl SledSpool {
    /// Writes what the spool holds into `archive`; answers the newest
    /// notification it holds (the durable watermark when it began).
    pub fn backup<A: ItemSink>(
        &self,
        archive: &mut A,
        progress: &mut dyn FnMut(&ArchiveCounts),
    ) -> Result<Option<NotificationId>, BackupError> {
        let store = self.shared.store()?;
        let upto = *lock(&self.shared.durable);
        let tree = &store.tree;
        for entry in tree.scan_prefix(keys::API_SUBSCRIPTION) {
            let (_, value) = entry.map_err(storage)?;
            archive.put(&Item::Subscription(value.to_vec()))?;
        }
        for entry in tree.scan_prefix(keys::PAUSED) {
            let (key, _) = entry.map_err(storage)?;
            if let Ok(name) = std::str::from_utf8(&key[keys::PAUSED.len()..]) {
                archive.put(&Item::Paused(name.to_owned()))?;
            }
        }
        if let Some(upto) = upto {
            let first = keys::notification(NotificationId(ulid::Ulid(0)));
            for entry in tree.range(first..=keys::notification(upto)) {
                let (key, value) = entry.map_err(storage)?;
                let Some(id) = keys::id_of(&key) else {
                    continue;
                };
                let item = self.notification_item(&store, id, value.to_vec())?;
                archive.put(&Item::Notification(item))?;
                if archive
                    .counts()
                    .notifications
                    .is_multiple_of(PROGRESS_EVERY)
                {
                    progress(archive.counts());
                }
            }
        }
        for entry in tree.scan_prefix([keys::QUARANTINE]) {
            let (key, value) = entry.map_err(storage)?;
            if let Some(id) = keys::id_of(&key) {
                archive.put(&Item::Quarantined {
                    id,
                    record: value.to_vec(),
                })?;
            }
        }
        for entry in tree.scan_prefix([keys::AUDIT]) {
            let (key, value) = entry.map_err(storage)?;
            if let Some(id) = keys::audit_id_of(&key) {
                archive.put(&Item::Audit {
                    id,
                    entry: value.to_vec(),
                })?;
            }
        }
        let marks = self.stuck_marks()?;
        for stuck in marks.stuck {
            archive.put(&Item::Stuck(stuck))?;
        }
        for (source, upto) in marks.walked {
            archive.put(&Item::Walked { source, upto })?;
        }
        for found in checks::all(&store) {
            let (source, subject, value) = found?;
            match decode_check(&value) {
                Ok(check) => archive.put(&Item::Check {
                    source,
                    subject,
                    check,
                })?,
                Err(err) => self.shared.note_unreadable(format!(
                    "a reconcile check of {source}/{subject} (left out of the backup): {err}"
                )),
            }
        }
        progress(archive.counts());
        Ok(upto)
    }

    /// One notification with its delivery records and index entry; an
    /// unreadable delivery record is left out (and counted in health).
    fn notification_item(
        &self,
        store: &super::Store,
        id: NotificationId,
        record: Vec<u8>,
    ) -> Result<NotificationItem, BackupError> {
        let mut deliveries = Vec::new();
        for entry in store.tree.scan_prefix(keys::delivery_prefix(id)) {
            let (_, value) = entry.map_err(storage)?;
            match decode_delivery(&value) {
                Ok(delivery) => deliveries.push(delivery),
                Err(err) => self.shared.note_unreadable(format!(
                    "a delivery of {id} (left out of the backup): {err}"
                )),
            }
        }
        let invoice = match Record::<NotificationMeta>::decode(&record) {
            Ok(decoded) => index_entry(store, id, &decoded.meta)?,
            Err(_) => None,
        };
        Ok(NotificationItem {
            id,
            record,
            deliveries,
            invoice,
        })
    }
}

fn index_entry(
    store: &super::Store,
    id: NotificationId,
    meta: &NotificationMeta,
) -> Result<Option<IndexEntry>, BackupError> {
    let Some(invoice) = InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status) else {
        return Ok(None);
    };
    let key = invoices::entry_key(&invoice.source, &invoice.subject, id);
    Ok(store
        .get(&key)?
        .and_then(|value| Entry::decode(&value))
        .map(|entry| IndexEntry {
            status: entry.status,
            superseded: entry.superseded,
            resends: entry.resends,
            after: entry.after,
        }))
}

// === restore ===

/// Restores an archive into `target` (absent or an empty directory).
pub fn restore<R: Read>(
    input: R,
    target: &Path,
    progress: &mut dyn FnMut(&ArchiveCounts),
) -> Result<Manifest, BackupError> {
    if let Ok(mut entries) = std::fs::read_dir(target) {
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(target.to_owned()));
        }
    } else if target.exists() {
        return Err(BackupError::NotEmpty(target.to_owned()));
    }
    let staging = staging_dir(target)?;
    let result = restore_into(input, &staging, progress).and_then(|(manifest, newest)| {
        finish(&staging, target, newest)?;
        Ok(manifest)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// `.NAME.restoring` beside the target: on the same filesystem, so the
/// finished spool moves in place by a rename.
fn staging_dir(target: &Path) -> Result<PathBuf, BackupError> {
    let name = target
        .file_name()
        .ok_or_else(|| BackupError::NotEmpty(target.to_owned()))?;
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let staging = parent.join(format!(".{}.restoring", name.to_string_lossy()));
    // What an interrupted restore of the same target left.
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    Ok(staging)
}

/// What the restore builds beside the records as it writes them.
#[derive(Default)]
struct Rebuilt {
    /// Per subscription, its first notification never attempted.
    first_pending: BTreeMap<String, NotificationId>,
    subscriptions: BTreeSet<String>,
    newest: Option<NotificationId>,
    /// Per invoice, the sequence number of its next check.
    next_check: BTreeMap<(String, String), u64>,
}

impl Rebuilt {
    fn notification(
        &mut self,
        batch: &mut Batch,
        item: &NotificationItem,
    ) -> Result<(), BackupError> {
        let id = item.id;
        batch.insert(&keys::notification(id), item.record.as_slice());
        self.newest = self.newest.max(Some(id));
        for delivery in &item.deliveries {
            batch.insert(
                keys::delivery(id, &delivery.subscription),
                encode_delivery(delivery)?,
            );
            if let Some(at) = delivery.due_at() {
                batch.insert(keys::retry(&delivery.subscription, at, id), &[]);
            }
            self.subscriptions.insert(delivery.subscription.clone());
        }
        // An unreadable record is restored as it was; `spool check` and
        // the walks report it, as they did on the original.
        let Ok(record) = Record::<NotificationMeta>::decode(&item.record) else {
            return Ok(());
        };
        let meta = record.meta;
        batch.insert(
            keys::dedup(&meta.source, &meta.dedup_key),
            &keys::dedup_value(id, meta.received_ms),
        );
        for name in &meta.subscriptions {
            if !item.deliveries.iter().any(|d| &d.subscription == name) {
                self.first_pending.entry(name.clone()).or_insert(id);
            }
            self.subscriptions.insert(name.clone());
        }
        if let (Some(entry), Some(invoice)) = (
            item.invoice,
            InvoiceRef::of(&meta.source, meta.subject.as_deref(), meta.status),
        ) {
            let value = Entry {
                status: entry.status,
                superseded: entry.superseded,
                resends: entry.resends,
                after: entry.after,
            };
            batch.insert(
                invoices::entry_key(&invoice.source, &invoice.subject, id),
                &value.encode(),
            );
            if entry.status == InvoiceStatus::Queued && entry.after == InvoiceStatus::Queued {
                batch.insert(
                    invoices::waiting_key(&invoice.source, id),
                    invoice.subject.as_bytes(),
                );
            }
        }
        Ok(())
    }

    fn item(&mut self, batch: &mut Batch, item: Item) -> Result<(), BackupError> {
        match item {
            Item::Notification(n) => self.notification(batch, &n)?,
            Item::Quarantined { id, record } => batch.insert(&keys::quarantine(id), record),
            Item::Audit { id, entry } => batch.insert(&keys::audit(id), entry),
            Item::Subscription(bytes) => {
                let subscription = crate::spool::subscriptions::decode(&bytes)?;
                batch.insert(keys::api_subscription(&subscription.name), bytes);
                self.subscriptions.insert(subscription.name);
            }
            Item::Paused(name) => batch.insert(keys::paused(&name), &[]),
            Item::Stuck(stuck) => invoices::save_stuck(
                batch,
                &StuckChanges {
                    marked: vec![stuck],
                    ..StuckChanges::default()
                },
            ),
            Item::Walked { source, upto } => invoices::save_stuck(
                batch,
                &StuckChanges {
                    walked: vec![(source, Some(upto))],
                    ..StuckChanges::default()
                },
            ),
            Item::Check {
                source,
                subject,
                check,
            } => {
                let key = (source, subject);
                let seq = self.next_check.entry(key.clone()).or_insert(0);
                batch.insert(checks::key(&key.0, &key.1, *seq), encode_check(&check)?);
                *seq += 1;
            }
        }
        Ok(())
    }

    /// Each subscription walks its first attempts from its first
    /// notification never attempted; one with none, from the next new one.
    fn cursors(&self, batch: &mut Batch) {
        let next_new = self.newest.map_or(0, |id| id.0 .0.saturating_add(1));
        for name in &self.subscriptions {
            let from = self.first_pending.get(name).map_or(next_new, |id| id.0 .0);
            batch.insert(keys::cursor(name), &from.to_be_bytes());
        }
    }
}

/// Writes the archive's content into a new sled spool at `dir`; answers
/// the checked manifest and the newest notification.
fn restore_into<R: Read>(
    input: R,
    dir: &Path,
    progress: &mut dyn FnMut(&ArchiveCounts),
) -> Result<(Manifest, Option<NotificationId>), BackupError> {
    let mut reader = ArchiveReader::new(input)?;
    let db = ::sled::Config::new()
        .path(dir)
        .cache_capacity(64 << 20)
        .flush_every_ms(None)
        .open()
        .map_err(storage)?;
    let meta = db.open_tree("meta").map_err(storage)?;
    meta.insert("format", super::open::FORMAT)
        .map_err(storage)?;
    let tree = db.open_tree(TREE).map_err(storage)?;
    let mut rebuilt = Rebuilt::default();
    let mut batch = Batch::default();
    let mut in_batch = 0;
    while let Some(item) = reader.next_item()? {
        let is_notification = matches!(item, Item::Notification(_));
        rebuilt.item(&mut batch, item)?;
        in_batch += 1;
        if in_batch >= RESTORE_BATCH {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(storage)?;
            in_batch = 0;
        }
        if is_notification && reader.counts().notifications.is_multiple_of(PROGRESS_EVERY) {
            progress(reader.counts());
        }
    }
    let manifest = reader
        .manifest()
        .cloned()
        .ok_or_else(|| BackupError::Truncated("no manifest".into()))?;
    let newest = manifest
        .newest
        .as_deref()
        .map(|text| {
            NotificationId::parse(text)
                .ok_or_else(|| BackupError::Damaged(format!("its newest id {text:?}")))
        })
        .transpose()?;
    if newest != rebuilt.newest {
        return Err(BackupError::Counts(format!(
            "manifest's newest notification {:?}, content's {:?}",
            manifest.newest,
            rebuilt.newest.map(|id| id.to_string())
        )));
    }
    rebuilt.cursors(&mut batch);
    batch.insert(invoices::BUILT, &[]);
    tree.apply_batch(batch).map_err(storage)?;
    // The counts from one walk over what was written, checked against the
    // manifest: what the restored relay will show is what the archive held.
    let recount = counts::recount(&tree)?;
    let (notifications, quarantined) = (recount.counts.notifications, recount.counts.quarantined);
    if notifications != manifest.counts.notifications || quarantined != manifest.counts.quarantined
    {
        return Err(BackupError::Restored(format!(
            "{notifications} notifications and {quarantined} quarantined bodies written, \
             the manifest says {} and {}",
            manifest.counts.notifications, manifest.counts.quarantined
        )));
    }
    counts::write_all(&tree, &recount.counts)?;
    db.flush().map_err(storage)?;
    progress(reader.counts());
    drop((tree, meta, db));
    Ok((manifest, newest))
}

/// The acknowledged mark, the rename into place, the mark of a clean stop.
fn finish(
    staging: &Path,
    target: &Path,
    newest: Option<NotificationId>,
) -> Result<(), BackupError> {
    let mut acknowledged = mark::Acknowledged::read(staging, newest);
    acknowledged.persist(staging);
    std::fs::File::open(staging)?.sync_all()?;
    // Checked absent or empty above: rename(2) takes an empty directory's place.
    std::fs::rename(staging, target)?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    super::open::mark_clean_stop(target);
    Ok(())
}
