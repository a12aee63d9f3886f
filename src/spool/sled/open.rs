//! Opening the sled spool: the lock, repairs sled can make (a damaged
//! snapshot is rebuilt from the log, a damaged `conf` is rewritten), the
//! upgrade from format 1, the check that no acknowledged notification went
//! missing, cursors for new subscriptions, orphans, and the counts (read
//! back, or made by one walk for a spool that has none). Also the offline
//! check of a whole spool (which recounts) and the record walks `spool
//! dump` uses.
//!
//! sled can panic on a damaged file; every call that reads a spool of
//! unknown health runs under `catch_quietly` (`catch_unwind` without Rust's
//! panic text on stderr), so damage is an error with a message, never a
//! crash.
//!
//! A truncated log looks to sled like a torn write: it opens with what is
//! before the cut, silently; on open, the notification the acknowledged
//! mark (`mark.rs`) names must be there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::sled::{Batch, Db, IVec, Tree};

use super::super::subscriptions::ApiSubscription;
use super::counts::{self, Kept};
use super::mark::{self, Acknowledged};
use super::quiet_panic::catch_quietly;
use super::{db_file, decode_delivery, keys, newest_notification, storage, Store, TREE};
use crate::config::SpoolConfig;
use crate::spool::record::{HasId, NotificationMeta, Record};
use crate::spool::{
    audit, AuditId, AuditRecord, CheckProblem, CheckReport, Counts, NotificationId,
    NotificationRecord, Routes, SpoolError,
};

pub(super) const FORMAT: &[u8] = b"2";
const FORMAT_V1: &[u8] = b"1";
const V1_TREES: [&str; 5] = ["notifications", "dedup", "deliveries", "due", "quarantine"];
/// What sled 0.34 writes to `conf` for the settings this spool uses.
const EXPECTED_CONF: &str = "segment_size: 524288\nuse_compression: false\nversion: 0.34\n";
/// Where a repair keeps the files as they were: `damaged-1`, `damaged-2`, ...
const DAMAGED_DIR: &str = "damaged-";
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
    pub counts: Counts,
    /// The newest audit record: new ones come after it.
    pub last_audit: Option<AuditId>,
    /// Subscriptions an admin paused.
    pub paused: std::collections::BTreeSet<String>,
    /// Subscriptions created through the admin API.
    pub api_subscriptions: BTreeMap<String, ApiSubscription>,
}

pub fn open(config: &SpoolConfig, routes: &Routes) -> Result<Opened, SpoolError> {
    let (store, repaired) = open_store(config)?;
    // From now on the files change: the mark of a clean stop no longer holds.
    forget_clean_stop(&config.path);
    // sled opened; a read that fails from here on (any of them: the cursors'
    // too) is damage it met past its first reads.
    prepare(config, routes, store, repaired).map_err(|err| match err {
        SpoolError::Storage(detail) => SpoolError::Damaged {
            path: config.path.clone(),
            detail: damaged_advice(&format!("sled cannot read it: {detail}")),
        },
        other => other,
    })
}

/// The loss check, cursors for new subscriptions, orphans and the newest ids
/// of an opened store.
fn prepare(
    config: &SpoolConfig,
    routes: &Routes,
    store: Store,
    repaired: Vec<String>,
) -> Result<Opened, SpoolError> {
    let newest = newest_notification(&store.tree)?;
    let acknowledged = Acknowledged::read(&config.path, newest);
    if let Some(missing) = acknowledged.missing(&store.tree)? {
        // A repair made on this open (a snapshot rebuilt from the log) tells
        // where the files as they were are kept.
        let repairs: String = repaired.iter().map(|r| format!(" On open: {r}.")).collect();
        return Err(SpoolError::Lost {
            path: config.path.clone(),
            detail: format!(
                "{missing}. sled's log was probably truncated or damaged (its files \
                 were changed while the relay was stopped, or the disk lost writes).{repairs} \
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
    let api_subscriptions = read_api_subscriptions(&store)?;
    // What the API created is no orphan, though the config does not name it.
    let routes = routes.with_names(api_subscriptions.keys());
    let orphans = super::orphans::count(&store.tree, &routes)?;
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
    let last_audit = store
        .tree
        .scan_prefix([keys::AUDIT])
        .next_back()
        .transpose()
        .map_err(storage)?
        .and_then(|(key, _)| keys::audit_id_of(&key));
    let counts = counts_on_open(&store)?;
    if let Some(indexed) = super::invoices::build_on_open(&store)? {
        if indexed > 0 {
            tracing::info!(
                notifications = indexed,
                "indexed the spool's notifications by invoice (once: the index is kept from now on)"
            );
        }
    }
    let mut paused = std::collections::BTreeSet::new();
    for entry in store.tree.scan_prefix(keys::PAUSED) {
        let (key, _) = entry.map_err(storage)?;
        if let Ok(name) = std::str::from_utf8(&key[keys::PAUSED.len()..]) {
            paused.insert(name.to_owned());
        }
    }
    for name in &paused {
        tracing::warn!(subscription = %name, "subscription paused by an admin: its deliveries wait until it is resumed");
    }
    Ok(Opened {
        store,
        newest,
        last_id: newest.max(last_quarantined),
        orphans,
        repaired,
        acknowledged,
        counts,
        last_audit,
        paused,
        api_subscriptions,
    })
}

/// The API-created subscriptions; a damaged one is logged and left out
/// (its deliveries then wait as orphans, where an admin sees them).
fn read_api_subscriptions(store: &Store) -> Result<BTreeMap<String, ApiSubscription>, SpoolError> {
    let mut found = BTreeMap::new();
    for entry in store.tree.scan_prefix(keys::API_SUBSCRIPTION) {
        let (key, value) = entry.map_err(storage)?;
        match super::super::subscriptions::decode(&value) {
            Ok(subscription) => {
                found.insert(subscription.name.clone(), subscription);
            }
            Err(err) => {
                tracing::error!(key = ?key, error = %err, "an API-created subscription cannot be read; left out")
            }
        }
    }
    Ok(found)
}

/// The kept counts; for a spool that has none (made before they were
/// kept) or whose count keys are damaged, one walk makes and keeps them.
fn counts_on_open(store: &Store) -> Result<Counts, SpoolError> {
    let why = match counts::load(&store.tree)? {
        Kept::Found(counts) => return Ok(counts),
        Kept::Missing | Kept::WithoutSources => None,
        Kept::Damaged(why) => Some(why),
    };
    if let Some(why) = &why {
        tracing::warn!(damage = %why, "the spool's kept counts are damaged; counting again");
    }
    let started = std::time::Instant::now();
    let recount = counts::recount(&store.tree)?;
    counts::write_all(&store.tree, &recount.counts)?;
    store.db.flush().map_err(storage)?;
    tracing::info!(
        notifications = recount.counts.notifications,
        quarantined = recount.counts.quarantined,
        subscriptions = recount.counts.subscriptions.len(),
        sources = recount.counts.sources.len(),
        unreadable_records = recount.unreadable,
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "counted the spool's deliveries by a walk over every notification (once: they are kept from now on)"
    );
    Ok(recount.counts)
}

/// The lock, sled itself (with repairs), the format (with the upgrade).
///
/// A snapshot sled cannot use (its checksum, or a log shorter than it says,
/// as after a truncation) fails sled's open or its first reads: then the
/// files are copied aside (sled's rebuild rewrites the log where it finds a
/// tear, so the copy is the evidence) and sled rebuilds from the log alone.
/// What the rebuild could not recover shows in the acknowledged mark.
fn open_store(config: &SpoolConfig) -> Result<(Store, Vec<String>), SpoolError> {
    open_store_or_damage(config).map_err(|refused| match refused {
        Refused::Damaged(detail) => SpoolError::Damaged {
            path: config.path.clone(),
            detail: damaged_advice(&detail),
        },
        Refused::Other(err) => err,
    })
}

/// Why a spool could not be opened.
enum Refused {
    /// Its files are damaged: what sled made of them.
    Damaged(String),
    Other(SpoolError),
}

impl From<SpoolError> for Refused {
    fn from(error: SpoolError) -> Refused {
        Refused::Other(error)
    }
}

fn open_store_or_damage(config: &SpoolConfig) -> Result<(Store, Vec<String>), Refused> {
    let path = &config.path;
    check_not_locked(path)?;
    let mut repaired = Vec::new();
    repair_conf(path, &mut repaired)?;
    let refuse = |detail: &str, damage: bool| {
        if damage {
            Refused::Damaged(detail.to_owned())
        } else {
            Refused::Other(SpoolError::Open {
                path: path.clone(),
                detail: detail.to_owned(),
            })
        }
    };
    let (db, tree) = match open_checked(config) {
        Ok(opened) => opened,
        Err(first) => {
            let snapshots = snapshot_files(path);
            if !first.damage || snapshots.is_empty() {
                return Err(refuse(&first.detail, first.damage));
            }
            // The failed attempt's handles are gone; sled lets go of its
            // lock a moment later.
            check_not_locked(path)?;
            let kept = set_aside(path, &snapshots).map_err(|e| {
                refuse(
                    &format!(
                        "{}; its snapshot could be rebuilt from the log, but the damaged \
                         files cannot be copied aside first ({e})",
                        first.detail
                    ),
                    true,
                )
            })?;
            match open_checked(config) {
                Ok(opened) => {
                    repaired.push(format!(
                        "sled could not use its snapshot ({}); it rebuilt it from the log \
                         (the files as they were are kept in {})",
                        first.detail,
                        kept.display()
                    ));
                    opened
                }
                Err(second) => {
                    return Err(refuse(
                        &format!(
                            "{}; rebuilt from the log without its snapshot: {} (the files \
                             as they were are kept in {})",
                            first.detail,
                            second.detail,
                            kept.display()
                        ),
                        true,
                    ))
                }
            }
        }
    };
    let log = if config.sync_data {
        Some(
            File::open(db_file(path))
                .map_err(|e| refuse(&format!("cannot open the log for fdatasync: {e}"), false))?,
        )
    } else {
        None
    };
    Ok((Store { db, tree, log }, repaired))
}

/// sled's open and the first reads every use of the spool makes (the
/// format, the upgrade, the newest entries), all under `catch_quietly`.
fn open_checked(config: &SpoolConfig) -> Result<(Db, Tree), OpenFailure> {
    let db = try_open_db(config)?;
    let guarded = catch_quietly(AssertUnwindSafe(|| -> Result<Tree, OpenFailure> {
        let meta = db.open_tree("meta").map_err(sled_failure)?;
        let tree = db.open_tree(TREE).map_err(sled_failure)?;
        match meta.get("format").map_err(sled_failure)? {
            None => {
                meta.insert("format", FORMAT).map_err(sled_failure)?;
                db.flush().map_err(sled_failure)?;
            }
            Some(v) if v.as_ref() == FORMAT => drop_v1_trees(&db).map_err(spool_failure)?,
            Some(v) if v.as_ref() == FORMAT_V1 => {
                migrate_v1(&db, &tree, &meta).map_err(spool_failure)?;
            }
            Some(v) => {
                return Err(OpenFailure {
                    detail: format!(
                        "unsupported spool format {:?} (written by a newer relay?)",
                        String::from_utf8_lossy(&v)
                    ),
                    damage: false,
                })
            }
        }
        for prefix in [keys::NOTIFICATION, keys::QUARANTINE] {
            tree.scan_prefix([prefix])
                .next_back()
                .transpose()
                .map_err(sled_failure)?;
        }
        Ok(tree)
    }));
    match guarded {
        Ok(result) => result.map(|tree| (db, tree)),
        Err(panic) => Err(OpenFailure {
            detail: format!("sled panicked reading it: {}", panic_text(&panic)),
            damage: true,
        }),
    }
}

/// Copies the log (and blobs) into a new `damaged-N` directory of the spool
/// and moves the snapshots there, where sled does not look for them (it
/// reads any file whose name starts with `snap.`).
fn set_aside(path: &Path, snapshots: &[PathBuf]) -> std::io::Result<PathBuf> {
    let kept = (1..)
        .map(|n| path.join(format!("{DAMAGED_DIR}{n}")))
        .find(|dir| !dir.exists())
        .unwrap_or_else(|| path.join(DAMAGED_DIR));
    std::fs::create_dir_all(&kept)?;
    std::fs::copy(db_file(path), kept.join("db"))?;
    let blobs = path.join("blobs");
    if let Ok(entries) = std::fs::read_dir(&blobs) {
        std::fs::create_dir_all(kept.join("blobs"))?;
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), kept.join("blobs").join(entry.file_name()))?;
            }
        }
    }
    File::open(&kept)?.sync_all()?;
    for snapshot in snapshots {
        if let Some(name) = snapshot.file_name() {
            std::fs::rename(snapshot, kept.join(name))?;
        }
    }
    File::open(path)?.sync_all()?;
    Ok(kept)
}

fn damaged_advice(detail: &str) -> String {
    format!(
        "{detail}. The spool's files are damaged. Stop here: copy the spool directory \
         for analysis, then restore it from a backup, or move it aside to start \
         with an empty one (`webhook-relay spool check` tells what it can read)"
    )
}

struct OpenFailure {
    detail: String,
    /// The files look damaged (as opposed to, say, a permission problem).
    damage: bool,
}

fn sled_failure(err: ::sled::Error) -> OpenFailure {
    OpenFailure {
        damage: matches!(
            err,
            ::sled::Error::Corruption { .. } | ::sled::Error::ReportableBug(_)
        ),
        detail: sled_text(&err),
    }
}

/// sled's error in words (its own says "Read corrupted data at file offset
/// Some(Inline(96)) backtrace ()").
fn sled_text(err: &::sled::Error) -> String {
    match err {
        ::sled::Error::Corruption { at: Some(at), .. } => {
            format!(
                "sled found corrupted data at offset {} of its log",
                at.lid()
            )
        }
        ::sled::Error::Corruption { at: None, .. } => {
            "sled found corrupted data (its snapshot and its log disagree, or one is damaged)"
                .into()
        }
        other => format!("sled: {other}"),
    }
}

/// An error of the upgrade, where sled's own error was already turned into ours.
fn spool_failure(err: SpoolError) -> OpenFailure {
    OpenFailure {
        damage: matches!(err, SpoolError::Corrupt(_)),
        detail: err.to_string(),
    }
}

fn try_open_db(config: &SpoolConfig) -> Result<Db, OpenFailure> {
    let sled_config = ::sled::Config::new()
        .path(&config.path)
        .cache_capacity(config.cache_capacity.0)
        // The writer makes writes durable; sled's own timer would only add flushes.
        .flush_every_ms(None);
    match catch_quietly(AssertUnwindSafe(|| sled_config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(err)) => Err(sled_failure(err)),
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
                .is_some_and(|n| n.starts_with("snap."))
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

/// Whether there is no spool at `path` yet: the first start creates it.
pub fn is_new(path: &Path) -> bool {
    !db_file(path).exists()
}

/// Fails (after a short grace for a relay that is just stopping) when
/// another process holds the spool: checked before anything is said of a
/// check.
pub fn ensure_not_locked(path: &Path) -> Result<(), SpoolError> {
    check_not_locked(path)
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

// === the mark of a clean stop ===

/// Written by a clean stop, beside sled's files: what they looked like then.
const CLEAN_STOP_FILE: &str = "stopped-cleanly";

/// Names, sizes and modification times of the spool's files (and of
/// `blobs/`), but for the mark itself: any change to them, by the relay or
/// by anything else, shows.
fn fingerprint(path: &Path) -> Option<String> {
    let mut lines = Vec::new();
    for dir in [path.to_owned(), path.join("blobs")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == CLEAN_STOP_FILE || name.ends_with(".tmp") {
                continue;
            }
            let meta = entry.metadata().ok()?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            lines.push(format!(
                "{}/{name} {} {modified}",
                dir.display(),
                meta.len()
            ));
        }
    }
    lines.sort();
    Some(lines.join("\n"))
}

/// Records that the spool was closed cleanly, as its files are now.
pub fn mark_clean_stop(path: &Path) {
    let Some(print) = fingerprint(path) else {
        return;
    };
    let written = File::create(path.join(CLEAN_STOP_FILE)).and_then(|mut file| {
        file.write_all(print.as_bytes())
            .and_then(|()| file.sync_all())
    });
    if let Err(err) = written {
        tracing::debug!(error = %err, "cannot mark the clean stop; the next start checks the whole spool");
    }
}

/// Whether the spool was closed cleanly and nothing has touched its files
/// since: then a full check before serving can be skipped.
pub fn stopped_cleanly(path: &Path) -> bool {
    let Ok(marked) = std::fs::read_to_string(path.join(CLEAN_STOP_FILE)) else {
        return false;
    };
    fingerprint(path).is_some_and(|now| now == marked)
}

fn forget_clean_stop(path: &Path) {
    let _ = std::fs::remove_file(path.join(CLEAN_STOP_FILE));
}

// === reading a spool of unknown health ===

/// The kinds of entries (key prefixes) of the spool's tree.
const KINDS: [u8; 10] = [
    keys::AUDIT,
    super::invoices::ENTRY,
    super::invoices::WAITING,
    keys::CURSOR,
    keys::DEDUP,
    keys::DELIVERY,
    keys::NOTIFICATION,
    keys::QUARANTINE,
    keys::RETRY,
    keys::DEDUP_EXPIRY,
];

/// One step of a [`Walk`].
enum Step {
    Entry(IVec, IVec),
    /// sled cannot read the entries of the walk's `kind` (None: keys of no
    /// kind) after `after` (or from the first) up to `resume` (or to the
    /// last).
    Gap {
        kind: Option<u8>,
        after: Option<IVec>,
        resume: Option<IVec>,
        error: String,
    },
}

/// The entries of a key range in order, each read under `catch_quietly`.
/// Where sled cannot read a part (a damaged page fails the same way however
/// often it is asked), the walk reports a gap and goes on from the first
/// entry after it that a walk back from the end of the range reaches.
struct Walk {
    tree: Tree,
    /// The kind of entries walked; None for the keys between two kinds.
    kind: Option<u8>,
    start: Bound<IVec>,
    end: Bound<IVec>,
    iter: Option<::sled::Iter>,
    /// Where the forward walk (re)starts.
    from: Bound<IVec>,
    last: Option<IVec>,
    /// Where the last gap resumed: a walk that fails there again ends.
    resumed_at: Option<IVec>,
    done: bool,
}

impl Walk {
    /// The entries under `prefix`.
    fn prefix(tree: Tree, prefix: u8) -> Walk {
        let end = match prefix.checked_add(1) {
            Some(next) => Bound::Excluded(IVec::from(&[next])),
            None => Bound::Unbounded,
        };
        Walk::new(
            tree,
            Some(prefix),
            Bound::Included(IVec::from(&[prefix])),
            end,
        )
    }

    /// The whole tree, one kind of entry after the other: each kind is
    /// walked on its own, so damage among one kind's entries does not hide
    /// the others.
    fn whole(tree: Tree) -> impl Iterator<Item = Step> {
        let mut edges: Vec<u8> = KINDS
            .iter()
            .flat_map(|&p| [Some(p), p.checked_add(1)])
            .flatten()
            .collect();
        edges.sort_unstable();
        edges.dedup();
        let ranges: Vec<(Option<u8>, Bound<IVec>, Bound<IVec>)> = (0..=edges.len())
            .map(|i| {
                let first = i.checked_sub(1).and_then(|j| edges.get(j)).copied();
                let kind = first.filter(|f| KINDS.contains(f));
                let start = first.map_or(Bound::Unbounded, |f| Bound::Included(IVec::from(&[f])));
                let end = edges
                    .get(i)
                    .map_or(Bound::Unbounded, |&e| Bound::Excluded(IVec::from(&[e])));
                (kind, start, end)
            })
            .collect();
        ranges
            .into_iter()
            .flat_map(move |(kind, start, end)| Walk::new(tree.clone(), kind, start, end))
    }

    fn new(tree: Tree, kind: Option<u8>, start: Bound<IVec>, end: Bound<IVec>) -> Walk {
        Walk {
            tree,
            kind,
            from: start.clone(),
            start,
            end,
            iter: None,
            last: None,
            resumed_at: None,
            done: false,
        }
    }

    fn gap(&mut self, error: String) -> Step {
        self.iter = None;
        let after = self.last.clone();
        match self.first_of_readable_tail() {
            Some(key) if self.resumed_at.as_ref() != Some(&key) => {
                self.from = Bound::Included(key.clone());
                self.resumed_at = Some(key.clone());
                Step::Gap {
                    kind: self.kind,
                    after,
                    resume: Some(key),
                    error,
                }
            }
            _ => {
                self.done = true;
                Step::Gap {
                    kind: self.kind,
                    after,
                    resume: None,
                    error,
                }
            }
        }
    }

    /// Walking back from the end of the range to where sled fails (or to
    /// the last entry read): the first key of what is readable there.
    fn first_of_readable_tail(&self) -> Option<IVec> {
        let lower = self
            .last
            .clone()
            .map_or_else(|| self.start.clone(), Bound::Excluded);
        let mut back = self.tree.range::<IVec, _>((lower, self.end.clone()));
        let mut first = None;
        while let Ok(Some(Ok((key, _)))) = catch_quietly(AssertUnwindSafe(|| back.next_back())) {
            first = Some(key);
        }
        first
    }
}

impl Iterator for Walk {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        if self.done {
            return None;
        }
        let (tree, from, end) = (&self.tree, &self.from, &self.end);
        let iter = self
            .iter
            .get_or_insert_with(|| tree.range::<IVec, _>((from.clone(), end.clone())));
        match catch_quietly(AssertUnwindSafe(|| iter.next())) {
            Ok(None) => {
                self.done = true;
                None
            }
            Ok(Some(Ok((key, value)))) => {
                self.last = Some(key.clone());
                Some(Step::Entry(key, value))
            }
            Ok(Some(Err(err))) => Some(self.gap(sled_text(&err))),
            Err(panic) => Some(self.gap(format!("sled panicked: {}", panic_text(&panic)))),
        }
    }
}

/// An entry's key in words: its kind, and its id or name where it has one.
fn describe(key: &[u8]) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let id = keys::id_of(key).map(|id| id.to_string());
    let described = match key.first().copied() {
        Some(keys::NOTIFICATION) => id.map(|id| format!("notification {id}")),
        Some(keys::QUARANTINE) => id.map(|id| format!("quarantined body {id}")),
        Some(keys::DELIVERY) => id.map(|id| {
            format!(
                "delivery record of {id} for {:?}",
                text(key.get(17..).unwrap_or_default())
            )
        }),
        Some(keys::RETRY) => {
            keys::split_retry(key).map(|(name, _, id)| format!("retry of {id} for {name:?}"))
        }
        Some(keys::DEDUP_EXPIRY) => {
            keys::split_dedup_expiry(key).map(|(_, id)| format!("dedup expiry of {id}"))
        }
        Some(keys::AUDIT) => keys::audit_id_of(key).map(|id| format!("audit record {id}")),
        Some(keys::DEDUP) => Some(format!("dedup entry {:?}", text(&key[1..]))),
        Some(keys::CURSOR) => Some(format!("cursor of {:?}", text(&key[1..]))),
        _ => None,
    };
    described.unwrap_or_else(|| format!("entry {key:?}"))
}

/// A gap in words: which entries, between which readable ones.
fn gap_text(kind: Option<u8>, after: Option<&IVec>, resume: Option<&IVec>, error: &str) -> String {
    let what = match kind {
        Some(keys::AUDIT) => "audit records",
        Some(keys::CURSOR) => "cursors",
        Some(keys::DEDUP) => "dedup entries",
        Some(keys::DELIVERY) => "delivery records",
        Some(keys::NOTIFICATION) => "notifications",
        Some(keys::QUARANTINE) => "quarantined bodies",
        Some(keys::RETRY) => "retries",
        Some(keys::DEDUP_EXPIRY) => "dedup expiries",
        Some(super::invoices::ENTRY) => "invoice index entries",
        Some(super::invoices::WAITING) => "waiting invoice entries",
        _ => "entries",
    };
    let from = after.map_or_else(
        || "from the first one".into(),
        |k| format!("after {}", describe(k)),
    );
    let to = resume.map_or_else(
        || "to the last one".into(),
        |k| format!("up to {} (readable again from there)", describe(k)),
    );
    format!("sled cannot read the {what} {from} {to} ({error})")
}

/// The records under `prefix`, oldest first: a damaged one is an `Err`
/// naming it, a part sled cannot read is an `Err` naming the records
/// around it, and the walk goes on past both.
pub fn records_of<M>(
    store: std::sync::Arc<Store>,
    prefix: u8,
) -> impl Iterator<Item = Result<Record<M>, SpoolError>>
where
    M: serde::Serialize + for<'de> serde::Deserialize<'de> + HasId,
{
    Walk::prefix(store.tree.clone(), prefix).map(move |step| {
        // Held for the walk: a reopen waits for readers to let go.
        let _store = &store;
        match step {
            Step::Entry(key, value) => Record::decode(&value)
                .map_err(|err| SpoolError::Corrupt(format!("{}: {err}", describe(&key)))),
            Step::Gap {
                kind,
                after,
                resume,
                error,
            } => Err(SpoolError::Corrupt(gap_text(
                kind,
                after.as_ref(),
                resume.as_ref(),
                &error,
            ))),
        }
    })
}

/// The audit records, oldest first, as [`records_of`] walks records.
pub fn audit_records_of(
    store: std::sync::Arc<Store>,
) -> impl Iterator<Item = Result<AuditRecord, SpoolError>> {
    Walk::prefix(store.tree.clone(), keys::AUDIT).map(move |step| {
        let _store = &store;
        match step {
            Step::Entry(key, value) => keys::audit_id_of(&key)
                .ok_or_else(|| SpoolError::Corrupt(format!("malformed audit key {key:?}")))
                .and_then(|id| audit::decode_record(id, &value)),
            Step::Gap {
                kind,
                after,
                resume,
                error,
            } => Err(SpoolError::Corrupt(gap_text(
                kind,
                after.as_ref(),
                resume.as_ref(),
                &error,
            ))),
        }
    })
}

/// Verifies a stopped spool, every entry; see [`crate::spool::Spool::check`].
/// A spool sled cannot open for damage is a report with that problem, not
/// an error; its problems are [`CheckProblem`]s.
pub fn check(config: &SpoolConfig, accept_loss: bool) -> Result<CheckReport, SpoolError> {
    let (store, repaired) = match open_store_or_damage(config) {
        Ok(opened) => opened,
        Err(Refused::Damaged(detail)) => {
            return Ok(CheckReport {
                problems: vec![CheckProblem::Unreadable(format!(
                    "sled cannot open it: {detail}"
                ))],
                ..CheckReport::default()
            })
        }
        Err(Refused::Other(err)) => return Err(err),
    };
    let mut report = CheckReport {
        repaired,
        ..CheckReport::default()
    };
    let looked = newest_notification(&store.tree).and_then(|newest| {
        let acknowledged = Acknowledged::read(&config.path, newest);
        let missing = acknowledged.missing(&store.tree)?;
        Ok((acknowledged, newest, missing))
    });
    match looked {
        Ok((_, _, None)) => {}
        Ok((mut acknowledged, newest, Some(missing))) if accept_loss => {
            acknowledged.newest = newest;
            acknowledged.written = None;
            if newest.is_some() {
                acknowledged.persist(&config.path);
            } else {
                mark::forget(&config.path);
            }
            report.repaired.push(format!("loss accepted: {missing}"));
        }
        Ok((_, _, Some(missing))) => report
            .problems
            .push(CheckProblem::Lost(missing.to_string())),
        Err(err) => report.problems.push(CheckProblem::Unreadable(format!(
            "cannot tell whether acknowledged notifications are missing: {err}"
        ))),
    }
    let walked = catch_quietly(AssertUnwindSafe(|| walk_all(&store, &mut report)));
    if let Err(panic) = walked {
        report.problems.push(CheckProblem::Unreadable(format!(
            "sled panicked reading the spool: {}",
            panic_text(&panic)
        )));
    }
    report.orphans = catch_quietly(AssertUnwindSafe(|| {
        // The API's subscriptions are no orphans, though no config names them.
        let api = read_api_subscriptions(&store)?;
        super::orphans::count(&store.tree, &Routes::default().with_names(api.keys()))
    }))
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    check_counts(&store, &mut report);
    store.db.flush().map_err(storage)?;
    Ok(report)
}

/// Counts again and compares with the kept counts. Where they differ (or
/// none are kept), the recount is written in their place, but only when
/// everything else read clean: a recount that skipped damaged records is
/// not the truth either, and is then only reported.
fn check_counts(store: &Store, report: &mut CheckReport) {
    if report
        .problems
        .iter()
        .any(|p| matches!(p, CheckProblem::Unreadable(_)))
    {
        // The walk met parts sled cannot read; a recount would meet them
        // again and could only be wrong. Show what was kept, if readable.
        let kept = catch_quietly(AssertUnwindSafe(|| counts::load(&store.tree)));
        if let Ok(Ok(Kept::Found(kept))) = kept {
            report.kept_counts = Some(kept);
        }
        return;
    }
    let guarded = catch_quietly(AssertUnwindSafe(|| {
        Ok::<_, SpoolError>((counts::load(&store.tree)?, counts::recount(&store.tree)?))
    }));
    let (kept, recount) = match guarded {
        Ok(Ok(found)) => found,
        Ok(Err(err)) => {
            report.problems.push(CheckProblem::Unreadable(format!(
                "cannot count the deliveries again: {err}"
            )));
            return;
        }
        Err(panic) => {
            report.problems.push(CheckProblem::Unreadable(format!(
                "sled panicked counting the deliveries again: {}",
                panic_text(&panic)
            )));
            return;
        }
    };
    let clean = report.problems.is_empty() && recount.unreadable == 0;
    let counted = recount.counts;
    let disagreement = match &kept {
        Kept::Found(kept) if *kept == counted => None,
        Kept::Found(kept) => Some(format!(
            "the kept delivery counts disagree with a recount: {}",
            counts_difference(kept, &counted)
        )),
        Kept::Missing => Some(
            "no delivery counts were kept yet (a spool from a relay before they were)".to_owned(),
        ),
        Kept::WithoutSources => Some(
            "no per-source counts were kept yet (a spool from a relay before they were)".to_owned(),
        ),
        Kept::Damaged(why) => Some(format!("the kept delivery counts are damaged: {why}")),
    };
    if let Kept::Found(kept) = kept {
        report.kept_counts = Some(kept);
    }
    if let Some(disagreement) = disagreement {
        let rewritten = clean
            && catch_quietly(AssertUnwindSafe(|| {
                counts::write_all(&store.tree, &counted)
            }))
            .is_ok_and(|written| written.is_ok());
        if rewritten {
            report
                .repaired
                .push(format!("{disagreement}; the recount is kept now"));
            report.kept_counts = Some(counted.clone());
        } else {
            report.problems.push(CheckProblem::Record(format!(
                "{disagreement} (not rewritten while the spool has other problems)"
            )));
        }
    }
    report.counts = Some(counted);
}

/// Where two counts differ, in words.
fn counts_difference(kept: &Counts, counted: &Counts) -> String {
    let mut parts = Vec::new();
    if kept.notifications != counted.notifications {
        parts.push(format!(
            "notifications kept {} counted {}",
            kept.notifications, counted.notifications
        ));
    }
    if kept.quarantined != counted.quarantined {
        parts.push(format!(
            "quarantined kept {} counted {}",
            kept.quarantined, counted.quarantined
        ));
    }
    let names: BTreeSet<&String> = kept
        .subscriptions
        .keys()
        .chain(counted.subscriptions.keys())
        .collect();
    for name in names {
        let a = kept.subscriptions.get(name).cloned().unwrap_or_default();
        let b = counted.subscriptions.get(name).cloned().unwrap_or_default();
        if a != b {
            parts.push(format!(
                "{name:?} kept {}/{}/{}/{} counted {}/{}/{}/{} (waiting/dead/delivered/purged)",
                a.waiting, a.dead, a.delivered, a.purged, b.waiting, b.dead, b.delivered, b.purged
            ));
        }
    }
    let sources: BTreeSet<&String> = kept.sources.keys().chain(counted.sources.keys()).collect();
    for name in sources {
        let a = kept.sources.get(name).cloned().unwrap_or_default();
        let b = counted.sources.get(name).cloned().unwrap_or_default();
        if a != b {
            parts.push(format!(
                "source {name:?} kept {}/{} counted {}/{} (stored/quarantined)",
                a.stored, a.quarantined, b.stored, b.quarantined
            ));
        }
    }
    parts.join("; ")
}

/// Whether the notification is surely not there (a read that fails is
/// reported by the walk that meets the same damage).
fn surely_missing(store: &Store, id: NotificationId) -> bool {
    catch_quietly(AssertUnwindSafe(|| store.get(&keys::notification(id))))
        .is_ok_and(|got| matches!(got, Ok(None)))
}

fn walk_all(store: &Store, report: &mut CheckReport) {
    for step in Walk::whole(store.tree.clone()) {
        let (key, value) = match step {
            Step::Entry(key, value) => (key, value),
            // Keys of no kind: a page there also holds keys of a kind
            // beside them (pages split at keys that exist), whose walk
            // reports the same damage.
            Step::Gap { kind: None, .. } => continue,
            Step::Gap {
                kind,
                after,
                resume,
                error,
            } => {
                report.problems.push(CheckProblem::Unreadable(gap_text(
                    kind,
                    after.as_ref(),
                    resume.as_ref(),
                    &error,
                )));
                continue;
            }
        };
        match key.first().copied() {
            Some(keys::NOTIFICATION) => {
                report.notifications += 1;
                if let Err(err) = NotificationRecord::decode(&value) {
                    report
                        .problems
                        .push(CheckProblem::Record(format!("{}: {err}", describe(&key))));
                }
            }
            Some(keys::QUARANTINE) => {
                report.quarantined += 1;
                if let Err(err) = crate::spool::QuarantineRecord::decode(&value) {
                    report
                        .problems
                        .push(CheckProblem::Record(format!("{}: {err}", describe(&key))));
                }
            }
            Some(keys::DELIVERY) => {
                report.deliveries += 1;
                match (keys::id_of(&key), decode_delivery(&value)) {
                    (Some(id), Ok(_)) if surely_missing(store, id) => {
                        report.problems.push(CheckProblem::Record(format!(
                            "delivery record of missing notification {id}"
                        )))
                    }
                    (_, Err(err)) => report
                        .problems
                        .push(CheckProblem::Record(format!("{}: {err}", describe(&key)))),
                    _ => {}
                }
            }
            Some(keys::RETRY) => {
                report.retries += 1;
                match keys::split_retry(&key) {
                    Some((name, _, id)) if surely_missing(store, id) => {
                        report.problems.push(CheckProblem::Record(format!(
                            "retry of missing notification {id} for {name}"
                        )))
                    }
                    Some(_) => {}
                    None => report.problems.push(CheckProblem::Record(format!(
                        "malformed retry entry {key:?}"
                    ))),
                }
            }
            Some(keys::DEDUP) => {
                report.dedup_entries += 1;
                if keys::split_dedup_value(&value).is_none() {
                    report.problems.push(CheckProblem::Record(format!(
                        "malformed dedup entry {key:?}"
                    )));
                }
            }
            Some(keys::DEDUP_EXPIRY) if keys::split_dedup_expiry(&key).is_none() => {
                report.problems.push(CheckProblem::Record(format!(
                    "malformed dedup expiry {key:?}"
                )));
            }
            Some(keys::AUDIT) => {
                report.audit_records += 1;
                let decoded = keys::audit_id_of(&key)
                    .ok_or_else(|| SpoolError::Corrupt(format!("malformed audit key {key:?}")))
                    .and_then(|id| audit::decode_record(id, &value));
                if let Err(err) = decoded {
                    report.problems.push(CheckProblem::Record(err.to_string()));
                }
            }
            Some(keys::CURSOR) if NotificationId::from_bytes(&value).is_none() => {
                report
                    .problems
                    .push(CheckProblem::Record(format!("malformed cursor {key:?}")));
            }
            Some(keys::DEDUP_EXPIRY | keys::CURSOR | keys::MARK) => {}
            Some(super::invoices::ENTRY) => {
                if let Some(problem) = super::invoices::check_entry(&key, &value) {
                    report.problems.push(CheckProblem::Record(problem));
                }
            }
            Some(super::invoices::WAITING) => {
                if let Some(problem) = super::invoices::check_waiting(&key, &value) {
                    report.problems.push(CheckProblem::Record(problem));
                }
            }
            _ => report
                .problems
                .push(CheckProblem::Record(format!("unknown entry {key:?}"))),
        }
    }
}
