//! The spool's single writer thread: group commit.
//!
//! Every change to the spool goes through one channel to one thread. It
//! takes whatever has queued up, applies it as one sled transaction across
//! the trees, then flushes sled and fdatasyncs its log, and only then answers
//! each change. While it flushes, the next group queues. So one flush covers
//! many requests, no request is answered before a flush that began after its
//! write, and sled never sees concurrent flushes (which can deadlock, see
//! CRATES.md) nor writers contending with a flush.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use super::records::{self, NotificationId};
use super::{SpoolError, Stored};

/// Most changes applied in one transaction and covered by one flush.
const MAX_GROUP: usize = 512;
/// Changes waiting for the writer before senders have to wait too.
pub(super) const QUEUE: usize = 4096;

/// Where the writer answers one change.
pub(super) type Reply = oneshot::Sender<Result<Option<Stored>, SpoolError>>;

/// One change, encoded and ready to apply.
pub(super) enum Change {
    /// A notification, the due entries of its deliveries, and its dedup
    /// entry (written last), unless the dedup key is already there and fresh.
    /// A pending delivery is only its due entry: its record is written with
    /// its first outcome, which halves what a backlog costs.
    Store {
        id: NotificationId,
        record: Vec<u8>,
        dedup_key: Vec<u8>,
        received_ms: i64,
        due_keys: Vec<Vec<u8>>,
    },
    Quarantine {
        id: NotificationId,
        record: Vec<u8>,
    },
    /// A delivery's new state, moving its due-index entry.
    Delivery {
        key: Vec<u8>,
        value: Vec<u8>,
        old_due: Option<Vec<u8>>,
        new_due: Option<Vec<u8>>,
    },
}

pub(super) enum Op {
    Write {
        change: Change,
        /// Answer only once flushed; else as soon as applied (the change
        /// still rides on this group's flush).
        durable: bool,
        reply: Reply,
    },
    /// Answered once the writes queued before it are done: the writer is
    /// alive and not wedged (for the service watchdog).
    Probe { alive: oneshot::Sender<()> },
    /// Finish what is queued, flush, and stop.
    Close { done: oneshot::Sender<()> },
}

/// The trees the writer changes, and how to make them durable.
pub(super) struct Trees {
    pub db: sled::Db,
    pub notifications: sled::Tree,
    pub dedup: sled::Tree,
    pub deliveries: sled::Tree,
    pub due: sled::Tree,
    pub quarantine: sled::Tree,
    /// sled's log file, for the fdatasync after each flush (None: not asked for).
    pub log: Option<File>,
    pub dedup_window_ms: i64,
    /// Group commits that reached the disk.
    pub flushes: AtomicU64,
}

pub(super) fn start(trees: Arc<Trees>) -> std::io::Result<mpsc::Sender<Op>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || {
            let closed = run(&trees, rx);
            // Let go of the database before saying so: whoever closed the
            // spool may reopen it at once, and sled's lock goes with the
            // last handle.
            drop(trees);
            if let Some(done) = closed {
                let _ = done.send(());
            }
        })?;
    Ok(tx)
}

/// Serves writes until closed; returns the closer's channel, if any.
fn run(trees: &Trees, mut rx: mpsc::Receiver<Op>) -> Option<oneshot::Sender<()>> {
    while let Some(first) = rx.blocking_recv() {
        let mut group: Vec<Write> = Vec::new();
        let mut probes = Vec::new();
        let mut closing = None;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                Op::Write {
                    change,
                    durable,
                    reply,
                } => group.push(Write {
                    change,
                    durable,
                    reply,
                }),
                Op::Probe { alive } => probes.push(alive),
                Op::Close { done } => {
                    closing = Some(done);
                    break;
                }
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit(trees, group);
        }
        for alive in probes {
            let _ = alive.send(());
        }
        if let Some(done) = closing {
            rx.close();
            // Whatever raced in before the close still gets an answer.
            let late: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
                .filter_map(|op| match op {
                    Op::Write {
                        change,
                        durable,
                        reply,
                    } => Some(Write {
                        change,
                        durable,
                        reply,
                    }),
                    Op::Probe { .. } | Op::Close { .. } => None,
                })
                .collect();
            if !late.is_empty() {
                commit(trees, late);
            }
            return Some(done);
        }
    }
    None
}

struct Write {
    change: Change,
    durable: bool,
    reply: Reply,
}

fn commit(trees: &Trees, group: Vec<Write>) {
    let changes: Vec<&Change> = group.iter().map(|w| &w.change).collect();
    let results = match apply(trees, &changes) {
        Ok(results) => results,
        Err(err) => return fail(group.into_iter().map(|w| w.reply), &err),
    };
    let mut waiting = Vec::new();
    for (write, result) in group.into_iter().zip(results) {
        if write.durable {
            waiting.push((write.reply, result));
        } else {
            let _ = write.reply.send(Ok(result));
        }
    }
    match flush(trees) {
        Ok(()) => {
            for (reply, result) in waiting {
                let _ = reply.send(Ok(result));
            }
        }
        Err(err) => fail(waiting.into_iter().map(|(reply, _)| reply), &err),
    }
}

fn fail(replies: impl IntoIterator<Item = Reply>, err: &SpoolError) {
    let replies: Vec<Reply> = replies.into_iter().collect();
    if !replies.is_empty() {
        tracing::error!(error = %err, changes = replies.len(), "spool write failed; answering 503");
    }
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

/// Applies a group in one transaction; returns what each Store did.
fn apply(trees: &Trees, changes: &[&Change]) -> Result<Vec<Option<Stored>>, SpoolError> {
    let window = trees.dedup_window_ms;
    let result = (
        &trees.notifications,
        &trees.dedup,
        &trees.deliveries,
        &trees.due,
        &trees.quarantine,
    )
        .transaction(|(notifications, dedup, deliveries, due, quarantine)| {
            let mut results = Vec::with_capacity(changes.len());
            for change in changes {
                let result = match *change {
                    Change::Store {
                        id,
                        record,
                        dedup_key,
                        received_ms,
                        due_keys,
                    } => {
                        let fresh = dedup
                            .get(dedup_key)?
                            .and_then(|v| records::split_dedup_value(&v))
                            .filter(|(_, at)| received_ms.saturating_sub(*at) < window);
                        if let Some((first, _)) = fresh {
                            Some(Stored::Duplicate(first))
                        } else {
                            notifications.insert(&id.to_bytes(), record.as_slice())?;
                            for due_key in due_keys {
                                due.insert(due_key.as_slice(), &[])?;
                            }
                            dedup.insert(
                                dedup_key.as_slice(),
                                &records::dedup_value(*id, *received_ms),
                            )?;
                            Some(Stored::New(*id))
                        }
                    }
                    Change::Quarantine { id, record } => {
                        quarantine.insert(&id.to_bytes(), record.as_slice())?;
                        None
                    }
                    Change::Delivery {
                        key,
                        value,
                        old_due,
                        new_due,
                    } => {
                        if let Some(old) = old_due {
                            due.remove(old.as_slice())?;
                        }
                        if let Some(new) = new_due {
                            due.insert(new.as_slice(), &[])?;
                        }
                        deliveries.insert(key.as_slice(), value.as_slice())?;
                        None
                    }
                };
                results.push(result);
            }
            Ok::<_, ConflictableTransactionError<SpoolError>>(results)
        });
    result.map_err(|err| match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => SpoolError::from(err),
    })
}

/// sled's flush writes its log with `sync_file_range` on Linux, which
/// survives a crash but not a power cut: the fdatasync after it does.
fn flush(trees: &Trees) -> Result<(), SpoolError> {
    trees
        .db
        .flush()
        .map_err(|e| SpoolError::Flush(format!("sled flush: {e}")))?;
    if let Some(log) = &trees.log {
        log.sync_data()
            .map_err(|e| SpoolError::Flush(format!("fdatasync: {e}")))?;
    }
    trees.flushes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
