//! The fdatasync after sled's flush, on a thread of its own, and the
//! answers it releases: a group is answered, and its notifications
//! published for leasing, only after an fdatasync that began after its
//! sled flush returned.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::{lock, Shared, Store};
use super::{answer_all, Applied, Reply};
use crate::spool::{NotificationId, SpoolError};

/// A group sled has flushed, waiting for the fdatasync that makes it
/// survive a power cut before it is answered and published.
pub(super) struct Flushed {
    pub(super) replies: Vec<(Reply, Result<Applied, SpoolError>)>,
    pub(super) newest: Option<NotificationId>,
    pub(super) woken: HashSet<String>,
    pub(super) changes: u64,
    /// Told (or dropped) once the group is answered.
    pub(super) synced: std::sync::mpsc::SyncSender<()>,
}

/// The fdatasync after sled's flush, on a thread of its own: while it
/// syncs one group the writer applies and flushes the next, and one
/// fdatasync covers every group flushed before it began. A group is
/// answered, and its notifications leased, only after an fdatasync that
/// began after its sled flush returned.
pub(super) struct Syncer {
    pub(super) tx: std::sync::mpsc::Sender<Flushed>,
    pub(super) thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    pub(super) fn start(shared: Arc<Shared>) -> std::io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::channel::<Flushed>();
        let thread = std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || {
                // Sticky: after a failed fdatasync Linux may report the
                // next one clean although the failed pages are lost.
                let mut failed: Option<SpoolError> = None;
                while let Ok(first) = rx.recv() {
                    let groups: Vec<Flushed> =
                        std::iter::once(first).chain(rx.try_iter()).collect();
                    let synced = match &failed {
                        Some(err) => Err(err.clone()),
                        None => shared.store().and_then(|store| sync_log(&store)),
                    };
                    if let (Err(err), None) = (&synced, &failed) {
                        // Before any answer: a client retrying at once
                        // must find the store failed.
                        *lock(&shared.sync_failed) = Some(err.clone());
                        failed = Some(err.clone());
                    }
                    for group in groups {
                        publish(&shared, group, &synced);
                    }
                }
            })?;
        Ok(Syncer { tx, thread })
    }
}

/// Answers a flushed group and publishes what it made durable, or answers
/// it with the error that kept it from being durable.
pub(super) fn publish(shared: &Shared, group: Flushed, synced: &Result<(), SpoolError>) {
    if let Err(err) = synced {
        return answer_all(group.replies.into_iter().map(|(reply, _)| reply), err);
    }
    shared
        .flushed_changes
        .fetch_add(group.changes, Ordering::Relaxed);
    if let Some(newest) = group.newest {
        let mut durable = lock(&shared.durable);
        *durable = (*durable).max(Some(newest));
        drop(durable);
        shared.wake(group.woken.iter().map(String::as_str));
    }
    for (reply, result) in group.replies {
        let _ = reply.send(result);
    }
    let _ = group.synced.try_send(());
}

/// sled's flush writes its log with `sync_file_range` on Linux, which
/// survives a crash but not a power cut: the fdatasync after it does.
pub(super) fn flush(shared: &Shared, store: &Store) -> Result<(), SpoolError> {
    flush_sled(shared, store)?;
    sync_log(store)
}

pub(super) fn flush_sled(shared: &Shared, store: &Store) -> Result<(), SpoolError> {
    shared.flush_starts.fetch_add(1, Ordering::Relaxed);
    store.db.flush().map_err(|e| SpoolError::Flush {
        step: "sled flush",
        source: crate::spool::cause(e),
    })?;
    Ok(())
}

pub(super) fn sync_log(store: &Store) -> Result<(), SpoolError> {
    if let Some(log) = &store.log {
        log.sync_data().map_err(|e| SpoolError::Flush {
            step: "fdatasync",
            source: crate::spool::cause(e),
        })?;
    }
    Ok(())
}
