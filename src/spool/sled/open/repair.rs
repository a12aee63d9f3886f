//! sled's own open, with the lock and the repairs it can make: a damaged
//! snapshot is rebuilt from the log (the files as they were copied aside
//! first), a damaged `conf` is rewritten. Every call that reads a spool of
//! unknown health runs under `catch_quietly`.

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ::sled::{Db, Tree};

use super::super::quiet_panic::catch_quietly;
use super::super::{db_file, keys, Store, TREE};
use super::upgrade::{drop_v1_trees, migrate_v1, FORMAT, FORMAT_V1};
use crate::clock::Clock;
use crate::config::SpoolConfig;
use crate::spool::SpoolError;

/// What sled 0.34 writes to `conf` for the settings this spool uses.
const EXPECTED_CONF: &str = "segment_size: 524288\nuse_compression: false\nversion: 0.34\n";
/// Where a repair keeps the files as they were: `damaged-1`, `damaged-2`, ...
const DAMAGED_DIR: &str = "damaged-";
/// How long `open` waits for a lock that is being let go: sled releases its
/// file from background threads a moment after the last handle is dropped,
/// so a spool closed and reopened in one process can find it still held.
const LOCK_GRACE: Duration = Duration::from_secs(2);

/// The lock, sled itself (with repairs), the format (with the upgrade).
///
/// A snapshot sled cannot use (its checksum, or a log shorter than it says,
/// as after a truncation) fails sled's open or its first reads: then the
/// files are copied aside (sled's rebuild rewrites the log where it finds a
/// tear, so the copy is the evidence) and sled rebuilds from the log alone.
/// What the rebuild could not recover shows in the acknowledged mark.
pub(super) fn open_store(config: &SpoolConfig) -> Result<(Store, Vec<String>), SpoolError> {
    open_store_or_damage(config).map_err(|refused| match refused {
        Refused::Damaged(detail) => SpoolError::Damaged {
            path: config.sled.path.clone(),
            detail: damaged_advice(&detail),
        },
        Refused::Other(err) => err,
    })
}

/// Why a spool could not be opened.
pub(super) enum Refused {
    /// Its files are damaged: what sled made of them.
    Damaged(String),
    Other(SpoolError),
}

impl From<SpoolError> for Refused {
    fn from(error: SpoolError) -> Refused {
        Refused::Other(error)
    }
}

pub(super) fn open_store_or_damage(config: &SpoolConfig) -> Result<(Store, Vec<String>), Refused> {
    let path = &config.sled.path;
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
    let log = if config.sled.sync_data {
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

pub(super) fn damaged_advice(detail: &str) -> String {
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
pub(super) fn sled_text(err: &::sled::Error) -> String {
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
        .path(&config.sled.path)
        .cache_capacity(config.sled.cache_capacity.0)
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

pub(super) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
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

pub(super) fn check_not_locked(path: &Path) -> Result<(), SpoolError> {
    let Ok(file) = File::open(db_file(path)) else {
        return Ok(()); // a new spool, or one sled will report on itself
    };
    // Another process lets go in real time, whatever clock the spool runs
    // on (a manual one would never end the grace).
    let real = Clock::system();
    let started = real.instant_now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if real.instant_now() < started + LOCK_GRACE => {
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
