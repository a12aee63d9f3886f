//! Opening the sled spool: the lock, repairs sled can make (a damaged
//! snapshot is rebuilt from the log, a damaged `conf` is rewritten), the
//! upgrade from format 1, the check that no acknowledged notification went
//! missing, cursors for new subscriptions, and orphans. Also the offline
//! check of a whole spool and the record walks `spool dump` uses.
//!
//! sled can panic on a damaged file; every call that reads a spool of
//! unknown health runs under `catch_unwind`, so damage is an error with a
//! message, never a crash.
//!
//! A truncated log looks to sled like a torn write: it opens with what is
//! before the cut, silently. So the writer keeps a small fsynced file beside
//! sled's, `acknowledged`, naming the newest notification answered 200 (at
//! most a second old); on open, that notification must be there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::sled::{Batch, Db, Tree};

use super::{db_file, decode_delivery, keys, storage, Store, TREE};
use crate::clock::format_ms;
use crate::config::SpoolConfig;
use crate::spool::record::{HasId, NotificationMeta, Record};
use crate::spool::{CheckReport, NotificationId, NotificationRecord, Routes, SpoolError};

const FORMAT: &[u8] = b"2";
const FORMAT_V1: &[u8] = b"1";
const V1_TREES: [&str; 5] = ["notifications", "dedup", "deliveries", "due", "quarantine"];
/// What sled 0.34 writes to `conf` for the settings this spool uses.
const EXPECTED_CONF: &str = "segment_size: 524288\nuse_compression: false\nversion: 0.34\n";
const ACKNOWLEDGED_FILE: &str = "acknowledged";
/// How long `open` waits for a lock that is being let go: sled releases its
/// file from background threads a moment after the last handle is dropped,
/// so a spool closed and reopened in one process can find it still held.
const LOCK_GRACE: Duration = Duration::from_secs(2);
/// Batches of the format-1 upgrade.
const MIGRATE_BATCH: usize = 1000;

/// A spool opened for serving.
pub struct Opened {
    pub store: Store,
    pub newest: Option<NotificationId>,
    /// The newest id of any record: new ids come after it.
    pub last_id: Option<NotificationId>,
    pub orphans: BTreeMap<String, u64>,
    pub repaired: Vec<String>,
    pub acknowledged: Acknowledged,
}

pub fn open(config: &SpoolConfig, routes: &Routes) -> Result<Opened, SpoolError> {
    let (store, repaired) = open_store(config)?;
    let newest = newest_notification(&store.tree)?;
    let acknowledged = Acknowledged::read(&config.path, newest);
    if let Some(missing) = acknowledged.missing(&store.tree)? {
        return Err(SpoolError::Lost {
            path: config.path.clone(),
            detail: format!(
                "{missing}. sled's log was probably truncated or damaged (its files \
                 were changed while the relay was stopped, or the disk lost writes). \
                 Restore the spool from a backup; or run `webhook-relay spool check \
                 --accept-loss` to see what is intact and start with it"
            ),
        });
    }
    let first_new = newest.map_or(0, |id| id.0 .0.saturating_add(1));
    for name in routes.names() {
        let key = keys::cursor(name);
        if store.get(&key)?.is_none() {
            store
                .tree
                .insert(key, &first_new.to_be_bytes())
                .map_err(storage)?;
        }
    }
    store.db.flush().map_err(storage)?;
    let orphans = super::orphans::count(&store.tree, routes)?;
    for (name, waiting) in &orphans {
        tracing::warn!(
            subscription = %name, waiting,
            "deliveries wait for a subscription that is not configured; configure it again to deliver them"
        );
    }
    for repair in &repaired {
        tracing::warn!(repair = %repair, "spool repaired on open");
    }
    let last_quarantined = store
        .tree
        .scan_prefix([keys::QUARANTINE])
        .next_back()
        .transpose()
        .map_err(storage)?
        .and_then(|(key, _)| keys::id_of(&key));
    Ok(Opened {
        store,
        newest,
        last_id: newest.max(last_quarantined),
        orphans,
        repaired,
        acknowledged,
    })
}

/// The lock, sled itself (with repairs), the format (with the upgrade).
fn open_store(config: &SpoolConfig) -> Result<(Store, Vec<String>), SpoolError> {
    let path = &config.path;
    check_not_locked(path)?;
    let mut repaired = Vec::new();
    repair_conf(path, &mut repaired)?;
    let db = open_db(config, &mut repaired)?;
    let fail = |detail: String| SpoolError::Open {
        path: path.clone(),
        detail,
    };
    let guarded = catch_unwind(AssertUnwindSafe(|| -> Result<Tree, SpoolError> {
        let meta = db.open_tree("meta").map_err(storage)?;
        let tree = db.open_tree(TREE).map_err(storage)?;
        match meta.get("format").map_err(storage)? {
            None => {
                meta.insert("format", FORMAT).map_err(storage)?;
                db.flush().map_err(storage)?;
            }
            Some(v) if v.as_ref() == FORMAT => drop_v1_trees(&db)?,
            Some(v) if v.as_ref() == FORMAT_V1 => {
                migrate_v1(&db, &tree, &meta)?;
            }
            Some(v) => {
                return Err(SpoolError::Open {
                    path: path.clone(),
                    detail: format!(
                        "unsupported spool format {:?} (written by a newer relay?)",
                        String::from_utf8_lossy(&v)
                    ),
                })
            }
        }
        Ok(tree)
    }));
    let tree = match guarded {
        Ok(result) => result?,
        Err(panic) => {
            return Err(fail(format!(
                "sled panicked reading it: {}",
                panic_text(&panic)
            )))
        }
    };
    let log = if config.sync_data {
        Some(
            File::open(db_file(path))
                .map_err(|e| fail(format!("cannot open the log for fdatasync: {e}")))?,
        )
    } else {
        None
    };
    Ok((Store { db, tree, log }, repaired))
}

/// sled's open, under `catch_unwind`; a damaged snapshot is moved aside and
/// rebuilt from the log.
fn open_db(config: &SpoolConfig, repaired: &mut Vec<String>) -> Result<Db, SpoolError> {
    let path = &config.path;
    let first = match try_open_db(config) {
        Ok(db) => return Ok(db),
        Err(err) => err,
    };
    let snapshots = snapshot_files(path);
    if !first.damage || snapshots.is_empty() {
        return Err(SpoolError::Open {
            path: path.clone(),
            detail: damaged_advice(&first.detail, first.damage),
        });
    }
    let mut kept = Vec::new();
    for snapshot in &snapshots {
        let aside = snapshot.with_extension(format!(
            "{}damaged",
            snapshot
                .extension()
                .map(|e| format!("{}.", e.to_string_lossy()))
                .unwrap_or_default()
        ));
        std::fs::rename(snapshot, &aside).map_err(|e| SpoolError::Open {
            path: path.clone(),
            detail: format!("{}; and cannot move its snapshot aside: {e}", first.detail),
        })?;
        kept.push(aside.display().to_string());
    }
    match try_open_db(config) {
        Ok(db) => {
            repaired.push(format!(
                "sled could not read its snapshot ({}); it was rebuilt from the log (the damaged one is kept as {})",
                first.detail,
                kept.join(", ")
            ));
            Ok(db)
        }
        Err(second) => Err(SpoolError::Open {
            path: path.clone(),
            detail: damaged_advice(
                &format!("{}; without its snapshot: {}", first.detail, second.detail),
                true,
            ),
        }),
    }
}

fn damaged_advice(detail: &str, damage: bool) -> String {
    if damage {
        format!(
            "{detail}. The spool's files are damaged. Stop here: copy the spool directory \
             for analysis, then restore it from a backup, or move it aside to start \
             with an empty one (`webhook-relay spool check` tells what it can read)"
        )
    } else {
        detail.to_owned()
    }
}

struct OpenFailure {
    detail: String,
    /// The files look damaged (as opposed to, say, a permission problem).
    damage: bool,
}

fn try_open_db(config: &SpoolConfig) -> Result<Db, OpenFailure> {
    let sled_config = ::sled::Config::new()
        .path(&config.path)
        .cache_capacity(config.cache_capacity.0)
        // The writer makes writes durable; sled's own timer would only add flushes.
        .flush_every_ms(None);
    match catch_unwind(AssertUnwindSafe(|| sled_config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(err)) => Err(OpenFailure {
            damage: matches!(
                err,
                ::sled::Error::Corruption { .. } | ::sled::Error::ReportableBug(_)
            ),
            detail: format!("sled: {err}"),
        }),
        Err(panic) => Err(OpenFailure {
            detail: format!("sled panicked opening it: {}", panic_text(&panic)),
            damage: true,
        }),
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "no message".into())
}

fn snapshot_files(path: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snap.") && !n.ends_with("damaged"))
        })
        .collect()
}

/// sled's `conf` only repeats settings this relay always uses; a damaged one
/// would make sled misread the log (or refuse with a puzzling message), so
/// it is set aside and sled writes it anew.
fn repair_conf(path: &Path, repaired: &mut Vec<String>) -> Result<(), SpoolError> {
    let conf = path.join("conf");
    let Ok(bytes) = std::fs::read(&conf) else {
        return Ok(()); // a new spool, or nothing to repair
    };
    let text = bytes
        .get(..bytes.len().saturating_sub(4))
        .unwrap_or_default();
    if text == EXPECTED_CONF.as_bytes() {
        return Ok(());
    }
    let aside = path.join("conf.damaged");
    std::fs::rename(&conf, &aside).map_err(|e| SpoolError::Open {
        path: path.to_owned(),
        detail: format!("its conf file is damaged and cannot be moved aside: {e}"),
    })?;
    repaired.push(format!(
        "sled's conf file was damaged; it was rewritten (the damaged one is kept as {})",
        aside.display()
    ));
    Ok(())
}

fn check_not_locked(path: &Path) -> Result<(), SpoolError> {
    let Ok(file) = File::open(db_file(path)) else {
        return Ok(()); // a new spool, or one sled will report on itself
    };
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_GRACE => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked {
                    path: path.to_owned(),
                    detail: "its lock is held".into(),
                })
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(SpoolError::Open {
                    path: path.to_owned(),
                    detail: err.to_string(),
                })
            }
        }
    }
}

fn newest_notification(tree: &Tree) -> Result<Option<NotificationId>, SpoolError> {
    let last = tree
        .scan_prefix([keys::NOTIFICATION])
        .next_back()
        .transpose()
        .map_err(storage)?;
    Ok(last.and_then(|(key, _)| keys::id_of(&key)))
}

// === the format-1 upgrade ===

/// Copies a format-1 spool (one tree per kind) into the format-2 tree. A
/// crash midway leaves format 1 in place and the upgrade runs again.
fn migrate_v1(db: &Db, tree: &Tree, meta: &Tree) -> Result<(), SpoolError> {
    tracing::info!("upgrading the spool from format 1 to format 2");
    let mut batch = Batch::default();
    let mut pending = 0;
    let mut put = |batch: &mut Batch, key: Vec<u8>, value: &[u8]| -> Result<(), SpoolError> {
        batch.insert(key, value);
        pending += 1;
        if pending >= MIGRATE_BATCH {
            tree.apply_batch(std::mem::take(batch)).map_err(storage)?;
            pending = 0;
        }
        Ok(())
    };
    let prefixed = |prefix: u8, key: &[u8]| {
        let mut out = Vec::with_capacity(1 + key.len());
        out.push(prefix);
        out.extend_from_slice(key);
        out
    };
    let mut counts = [0u64; 5];
    let mut subscriptions = BTreeSet::new();
    let mut newest: Option<NotificationId> = None;
    for item in db.open_tree("notifications").map_err(storage)?.iter() {
        let (key, value) = item.map_err(storage)?;
        if let Ok(record) = Record::<NotificationMeta>::decode(&value) {
            subscriptions.extend(record.meta.subscriptions);
        }
        newest = keys::id_of(&prefixed(keys::NOTIFICATION, &key)).max(newest);
        put(&mut batch, prefixed(keys::NOTIFICATION, &key), &value)?;
        counts[0] += 1;
    }
    for item in db.open_tree("dedup").map_err(storage)?.iter() {
        let (key, value) = item.map_err(storage)?;
        let dedup_key = prefixed(keys::DEDUP, &key);
        if let Some((id, at)) = keys::split_dedup_value(&value) {
            put(&mut batch, keys::dedup_expiry(at, id).to_vec(), &dedup_key)?;
        }
        put(&mut batch, dedup_key, &value)?;
        counts[1] += 1;
    }
    for item in db.open_tree("deliveries").map_err(storage)?.iter() {
        let (key, value) = item.map_err(storage)?;
        put(&mut batch, prefixed(keys::DELIVERY, &key), &value)?;
        counts[2] += 1;
    }
    // Format 1 kept every pending delivery as a due entry: they become
    // retries, due when they were, and the cursors start after them.
    for item in db.open_tree("due").map_err(storage)?.iter() {
        let (key, _) = item.map_err(storage)?;
        put(&mut batch, prefixed(keys::RETRY, &key), &[])?;
        counts[3] += 1;
    }
    for item in db.open_tree("quarantine").map_err(storage)?.iter() {
        let (key, value) = item.map_err(storage)?;
        put(&mut batch, prefixed(keys::QUARANTINE, &key), &value)?;
        counts[4] += 1;
    }
    let after_newest = newest.map_or(0, |id| id.0 .0.saturating_add(1));
    for name in &subscriptions {
        put(&mut batch, keys::cursor(name), &after_newest.to_be_bytes())?;
    }
    tree.apply_batch(batch).map_err(storage)?;
    db.flush().map_err(storage)?;
    meta.insert("format", FORMAT).map_err(storage)?;
    db.flush().map_err(storage)?;
    drop_v1_trees(db)?;
    tracing::info!(
        notifications = counts[0],
        dedup_entries = counts[1],
        delivery_records = counts[2],
        due_entries = counts[3],
        quarantined = counts[4],
        "spool upgraded to format 2"
    );
    Ok(())
}

fn drop_v1_trees(db: &Db) -> Result<(), SpoolError> {
    let names = db.tree_names();
    let mut dropped = false;
    for name in V1_TREES {
        if names.iter().any(|n| n.as_ref() == name.as_bytes()) {
            db.drop_tree(name).map_err(storage)?;
            dropped = true;
        }
    }
    if dropped {
        db.flush().map_err(storage)?;
    }
    Ok(())
}

// === the acknowledged mark ===

/// The newest notification answered 200, as written to `acknowledged`.
pub struct Acknowledged {
    /// What the file says (None: no file, or unreadable).
    written: Option<NotificationId>,
    /// The newest acknowledged one known now.
    newest: Option<NotificationId>,
    last_write: Option<std::time::Instant>,
    warned: bool,
}

impl Acknowledged {
    fn read(path: &Path, newest: Option<NotificationId>) -> Acknowledged {
        let written = std::fs::read_to_string(path.join(ACKNOWLEDGED_FILE))
            .ok()
            .and_then(|text| {
                let mut lines = text.lines();
                (lines.next() == Some("webhook-relay acknowledged"))
                    .then(|| lines.next().and_then(NotificationId::parse))
                    .flatten()
            });
        Acknowledged {
            written,
            newest: newest.max(written),
            last_write: None,
            warned: false,
        }
    }

    /// What is missing, if the newest acknowledged notification is gone
    /// (and retention did not remove it).
    fn missing(&self, tree: &Tree) -> Result<Option<String>, SpoolError> {
        let Some(id) = self.written else {
            return Ok(None);
        };
        if tree.get(keys::notification(id)).map_err(storage)?.is_some() {
            return Ok(None);
        }
        let removed_upto = tree
            .get(keys::REMOVED_UPTO)
            .map_err(storage)?
            .and_then(|v| NotificationId::from_bytes(&v));
        if removed_upto.is_some_and(|upto| id <= upto) {
            return Ok(None);
        }
        let newest = newest_notification(tree)?;
        Ok(Some(format!(
            "notification {id} (received {}) was answered 200 but is not in the spool; \
             the newest one there is {}",
            format_ms(id.ms()),
            newest.map_or_else(
                || "none (it is empty)".into(),
                |n| format!("{n} (received {})", format_ms(n.ms()))
            )
        )))
    }

    pub fn note(&mut self, id: NotificationId) {
        self.newest = self.newest.max(Some(id));
    }

    /// Writes the mark if it changed and the last write is `every` old.
    pub fn persist_every(&mut self, path: &Path, every: Duration) {
        if self.last_write.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.persist(path);
    }

    /// Writes the mark if it changed: a new file, fsynced, renamed over the
    /// old one, and the directory fsynced.
    pub fn persist(&mut self, path: &Path) {
        if self.newest == self.written {
            return;
        }
        let Some(newest) = self.newest else { return };
        self.last_write = Some(std::time::Instant::now());
        match write_acknowledged(path, newest) {
            Ok(()) => {
                self.written = Some(newest);
                self.warned = false;
            }
            Err(err) if !self.warned => {
                self.warned = true;
                tracing::warn!(error = %err, "cannot update the spool's acknowledged mark; loss detection lags until it can");
            }
            Err(_) => {}
        }
    }
}

fn write_acknowledged(path: &Path, id: NotificationId) -> std::io::Result<()> {
    let tmp = path.join(format!("{ACKNOWLEDGED_FILE}.tmp"));
    let mut file = File::create(&tmp)?;
    writeln!(file, "webhook-relay acknowledged\n{id}")?;
    file.sync_data()?;
    std::fs::rename(&tmp, path.join(ACKNOWLEDGED_FILE))?;
    File::open(path)?.sync_all()
}

// === reading a spool of unknown health ===

/// The records under `prefix`, oldest first: a damaged one is an `Err`
/// naming it, and the walk goes on; a read sled cannot get past ends it.
pub fn records_of<M>(
    store: std::sync::Arc<Store>,
    prefix: u8,
) -> impl Iterator<Item = Result<Record<M>, SpoolError>>
where
    M: serde::Serialize + for<'de> serde::Deserialize<'de> + HasId,
{
    let mut iter = store.tree.scan_prefix([prefix]);
    let mut ended = false;
    std::iter::from_fn(move || {
        if ended {
            return None;
        }
        let next = catch_unwind(AssertUnwindSafe(|| iter.next()));
        match next {
            Ok(None) => None,
            Ok(Some(Ok((key, value)))) => Some(Record::decode(&value).map_err(|err| {
                let id = keys::id_of(&key).map_or_else(|| format!("{key:?}"), |id| id.to_string());
                SpoolError::Corrupt(format!("record {id}: {err}"))
            })),
            Ok(Some(Err(err))) => {
                ended = true;
                Some(Err(SpoolError::Corrupt(format!(
                    "sled cannot read further: {err}"
                ))))
            }
            Err(panic) => {
                ended = true;
                Some(Err(SpoolError::Corrupt(format!(
                    "sled panicked reading further: {}",
                    panic_text(&panic)
                ))))
            }
        }
    })
}

/// Verifies a stopped spool, every entry; see [`crate::spool::Spool::check`].
pub fn check(config: &SpoolConfig, accept_loss: bool) -> Result<CheckReport, SpoolError> {
    let (store, repaired) = open_store(config)?;
    let mut report = CheckReport {
        repaired,
        ..CheckReport::default()
    };
    let newest = newest_notification(&store.tree)?;
    let mut acknowledged = Acknowledged::read(&config.path, newest);
    if let Some(missing) = acknowledged.missing(&store.tree)? {
        if accept_loss {
            acknowledged.newest = newest;
            acknowledged.written = None;
            if newest.is_some() {
                acknowledged.persist(&config.path);
            } else {
                let _ = std::fs::remove_file(config.path.join(ACKNOWLEDGED_FILE));
            }
            report.repaired.push(format!("loss accepted: {missing}"));
        } else {
            report.problems.push(format!("lost: {missing}"));
        }
    }
    let walked = catch_unwind(AssertUnwindSafe(|| walk_all(&store, &mut report)));
    match walked {
        Ok(Ok(())) => {}
        Ok(Err(err)) => report
            .problems
            .push(format!("sled cannot read further: {err}")),
        Err(panic) => report.problems.push(format!(
            "sled panicked reading the spool: {}",
            panic_text(&panic)
        )),
    }
    report.orphans = super::orphans::count(&store.tree, &Routes::default()).unwrap_or_default();
    store.db.flush().map_err(storage)?;
    Ok(report)
}

fn walk_all(store: &Store, report: &mut CheckReport) -> Result<(), SpoolError> {
    let exists = |id: NotificationId| -> Result<bool, SpoolError> {
        Ok(store.get(&keys::notification(id))?.is_some())
    };
    for item in store.tree.iter() {
        let (key, value) = item.map_err(storage)?;
        let what = |kind: &str| match keys::id_of(&key) {
            Some(id) => format!("{kind} {id}"),
            None => format!("{kind} {key:?}"),
        };
        match key.first().copied() {
            Some(keys::NOTIFICATION) => {
                report.notifications += 1;
                if let Err(err) = NotificationRecord::decode(&value) {
                    report
                        .problems
                        .push(format!("{}: {err}", what("notification")));
                }
            }
            Some(keys::QUARANTINE) => {
                report.quarantined += 1;
                if let Err(err) = crate::spool::QuarantineRecord::decode(&value) {
                    report
                        .problems
                        .push(format!("{}: {err}", what("quarantined body")));
                }
            }
            Some(keys::DELIVERY) => {
                report.deliveries += 1;
                match (keys::id_of(&key), decode_delivery(&value)) {
                    (Some(id), Ok(_)) if !exists(id)? => report
                        .problems
                        .push(format!("delivery record of missing notification {id}")),
                    (_, Err(err)) => report.problems.push(format!("{}: {err}", what("delivery"))),
                    _ => {}
                }
            }
            Some(keys::RETRY) => {
                report.retries += 1;
                match keys::split_retry(&key) {
                    Some((name, _, id)) if !exists(id)? => report
                        .problems
                        .push(format!("retry of missing notification {id} for {name}")),
                    Some(_) => {}
                    None => report
                        .problems
                        .push(format!("malformed retry entry {key:?}")),
                }
            }
            Some(keys::DEDUP) => {
                report.dedup_entries += 1;
                if keys::split_dedup_value(&value).is_none() {
                    report
                        .problems
                        .push(format!("malformed dedup entry {key:?}"));
                }
            }
            Some(keys::DEDUP_EXPIRY) if keys::split_dedup_expiry(&key).is_none() => {
                report
                    .problems
                    .push(format!("malformed dedup expiry {key:?}"));
            }
            Some(keys::CURSOR) if NotificationId::from_bytes(&value).is_none() => {
                report.problems.push(format!("malformed cursor {key:?}"));
            }
            Some(keys::DEDUP_EXPIRY | keys::CURSOR | keys::MARK) => {}
            _ => report.problems.push(format!("unknown entry {key:?}")),
        }
    }
    Ok(())
}
