//! The durable spool, on sled: the only module that knows the store is sled.
//!
//! Trees: `notifications` (records by id), `deliveries` (a delivery's state
//! and attempts, written from its first outcome on; until then a pending
//! delivery is just its due entry), `due` (the due-time index the forwarder reads, per
//! subscription), `dedup` (source + dedup key → first id and its time),
//! `quarantine` (authenticated bodies that were not valid notifications)
//! and `meta` (format version).
//!
//! A notification, its dedup entry, its deliveries and their due entries are
//! written in one transaction, so a crash never leaves one without the other;
//! [`Spool::store`] returns only after a group flush that covers the write.

pub mod records;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::SpoolConfig;
use crate::delivery::Delivery;
use crate::providers::Notification;
pub use records::{
    NotificationId, NotificationMeta, NotificationRecord, QuarantineMeta, QuarantineRecord, Record,
};
use writer::{Change, Op, Trees};

const FORMAT_VERSION: &[u8] = b"1";

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {} is in use by another process (a running relay?): {detail}", path.display())]
    Locked { path: PathBuf, detail: String },
    #[error("cannot open spool {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    #[error("spool storage error: {0}")]
    Storage(String),
    #[error("spool flush failed: {0}")]
    Flush(String),
    #[error("spool is closed")]
    Closed,
    #[error("cannot encode record: {0}")]
    Encode(String),
    #[error("corrupt record in spool: {0}")]
    Corrupt(String),
    #[error("delivery cannot be replayed: {0}")]
    NotReplayable(String),
}

impl From<sled::Error> for SpoolError {
    fn from(err: sled::Error) -> Self {
        SpoolError::Storage(err.to_string())
    }
}

/// A validated notification as ingress hands it over.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub source: String,
    pub notification: Notification,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub peer: String,
    pub received_ms: i64,
}

/// An authenticated body that failed the provider check.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub source: String,
    pub reason_kind: String,
    pub reason: String,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub peer: String,
    pub received_ms: i64,
}

/// What [`Spool::store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New(NotificationId),
    /// The same source and dedup key arrived within the window: nothing new was stored.
    Duplicate(NotificationId),
}

/// A delivery whose time has come, with what it must send.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: NotificationId,
    pub subscription: String,
    /// The due-index entry that made it due; replaced when its outcome is recorded.
    pub due_key: Vec<u8>,
    pub delivery: Delivery,
    pub notification: NotificationRecord,
}

#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    trees: Arc<Trees>,
    writer: mpsc::Sender<Op>,
    new_work: watch::Sender<u64>,
}

impl Spool {
    /// Opens (or creates) the spool and starts its writer thread. Fails
    /// clearly if another process holds it or it cannot be read; it never
    /// silently starts empty over old data.
    pub fn open(config: &SpoolConfig) -> Result<Spool, SpoolError> {
        let path = config.path.clone();
        check_not_locked(&path)?;
        let open_err = |e: sled::Error| SpoolError::Open {
            path: path.clone(),
            detail: e.to_string(),
        };
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_capacity.0)
            // The writer makes writes durable; sled's own timer would only add flushes.
            .flush_every_ms(None)
            .open()
            .map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;
        match meta.get("format").map_err(open_err)? {
            Some(version) if version.as_ref() != FORMAT_VERSION => {
                return Err(SpoolError::Open {
                    path,
                    detail: format!(
                        "unsupported spool format {:?}",
                        String::from_utf8_lossy(&version)
                    ),
                })
            }
            Some(_) => {}
            None => {
                meta.insert("format", FORMAT_VERSION).map_err(open_err)?;
                db.flush().map_err(open_err)?;
            }
        }
        let log = if config.sync_data {
            Some(File::open(path.join("db")).map_err(|e| SpoolError::Open {
                path: path.clone(),
                detail: format!("cannot open the log for fdatasync: {e}"),
            })?)
        } else {
            None
        };
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let trees = Arc::new(Trees {
            notifications: tree("notifications")?,
            dedup: tree("dedup")?,
            deliveries: tree("deliveries")?,
            due: tree("due")?,
            quarantine: tree("quarantine")?,
            log,
            dedup_window_ms: i64::try_from(config.dedup_window.0.as_millis()).unwrap_or(i64::MAX),
            flushes: Default::default(),
            db,
        });
        let writer = writer::start(trees.clone()).map_err(|e| SpoolError::Open {
            path: path.clone(),
            detail: format!("cannot start the writer thread: {e}"),
        })?;
        Ok(Spool {
            inner: Arc::new(Inner {
                path,
                trees,
                writer,
                new_work: watch::Sender::new(0),
            }),
        })
    }

    /// Applies a change through the writer; returns once it is durable, or
    /// (not `durable`) once applied, to ride on that group's flush.
    async fn write(&self, change: Change, durable: bool) -> Result<Option<Stored>, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(Op::Write {
                change,
                durable,
                reply,
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        answer.await.map_err(|_| SpoolError::Closed)?
    }

    /// Lets the writer finish and flush what is queued, then stops it; every
    /// later write answers [`SpoolError::Closed`].
    pub async fn close(&self) {
        let (done, finished) = oneshot::channel();
        if self.inner.writer.send(Op::Close { done }).await.is_ok() {
            let _ = finished.await;
        }
    }

    /// Whether the writer thread answers within `within`, after finishing
    /// the writes queued before the question: false when it is gone or stuck
    /// (a hung disk), so the service watchdog can stop vouching for it.
    pub async fn writer_alive(&self, within: std::time::Duration) -> bool {
        let (alive, answer) = oneshot::channel();
        let asked = async {
            self.inner.writer.send(Op::Probe { alive }).await.is_ok() && answer.await.is_ok()
        };
        tokio::time::timeout(within, asked).await.unwrap_or(false)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Stores a notification with one pending delivery per subscription
    /// named, unless it is a duplicate. Returns once the write is durable; a
    /// duplicate too, since its first copy may have been in the same group.
    pub async fn store(
        &self,
        incoming: Incoming,
        subscriptions: &[&str],
    ) -> Result<Stored, SpoolError> {
        let id = NotificationId::new(incoming.received_ms);
        let record = Record {
            meta: NotificationMeta {
                id: id.to_string(),
                source: incoming.source.clone(),
                received_ms: incoming.received_ms,
                event_type: incoming.notification.event_type,
                subject: incoming.notification.subject,
                dedup_key: incoming.notification.dedup_key.clone(),
                provider_time: incoming.notification.provider_time.and_then(rfc3339),
                content_type: incoming.content_type,
                headers: incoming.headers,
                peer: incoming.peer,
                subscriptions: subscriptions.iter().map(|s| s.to_string()).collect(),
            },
            body: incoming.body,
        }
        .encode()?;
        let change = Change::Store {
            id,
            record,
            dedup_key: records::dedup_key(&incoming.source, &incoming.notification.dedup_key),
            received_ms: incoming.received_ms,
            due_keys: subscriptions
                .iter()
                .map(|name| records::due_key(name, incoming.received_ms, id))
                .collect(),
        };
        let stored = self.write(change, true).await?.unwrap_or(Stored::New(id));
        if matches!(stored, Stored::New(_)) && !subscriptions.is_empty() {
            self.announce_work();
        }
        Ok(stored)
    }

    /// Keeps a rejected body durably, with the reason, for admins.
    pub async fn quarantine(&self, rejected: Rejected) -> Result<NotificationId, SpoolError> {
        let id = NotificationId::new(rejected.received_ms);
        let record = Record {
            meta: QuarantineMeta {
                id: id.to_string(),
                source: rejected.source,
                received_ms: rejected.received_ms,
                reason_kind: rejected.reason_kind,
                reason: rejected.reason,
                content_type: rejected.content_type,
                headers: rejected.headers,
                peer: rejected.peer,
            },
            body: rejected.body,
        };
        self.write(
            Change::Quarantine {
                id,
                record: record.encode()?,
            },
            true,
        )
        .await?;
        Ok(id)
    }

    /// All notifications, oldest first.
    pub fn notifications(
        &self,
    ) -> impl Iterator<Item = Result<NotificationRecord, SpoolError>> + '_ {
        self.inner.trees.notifications.iter().map(|item| {
            item.map_err(SpoolError::from)
                .and_then(|(_, v)| Record::decode(&v))
        })
    }

    /// All quarantined bodies, oldest first.
    pub fn quarantined(&self) -> impl Iterator<Item = Result<QuarantineRecord, SpoolError>> + '_ {
        self.inner.trees.quarantine.iter().map(|item| {
            item.map_err(SpoolError::from)
                .and_then(|(_, v)| Record::decode(&v))
        })
    }

    pub fn notification(
        &self,
        id: NotificationId,
    ) -> Result<Option<NotificationRecord>, SpoolError> {
        match self.inner.trees.notifications.get(id.to_bytes())? {
            Some(bytes) => Record::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The deliveries of one notification, by subscription name.
    pub fn deliveries_of(&self, id: NotificationId) -> Result<Vec<Delivery>, SpoolError> {
        let Some(notification) = self.notification(id)? else {
            return Ok(Vec::new());
        };
        notification
            .meta
            .subscriptions
            .iter()
            .map(|name| self.delivery(id, name, notification.meta.received_ms))
            .collect()
    }

    /// A delivery's record, or the pending delivery its absence means.
    fn delivery(
        &self,
        id: NotificationId,
        subscription: &str,
        received_ms: i64,
    ) -> Result<Delivery, SpoolError> {
        match self
            .inner
            .trees
            .deliveries
            .get(records::delivery_key(id, subscription))?
        {
            Some(bytes) => records::decode_delivery(&bytes),
            None => Ok(Delivery::new(subscription, received_ms)),
        }
    }

    /// Up to `limit` deliveries of `subscription` due at or before `now_ms`,
    /// earliest first, leaving out those `skip` names (already in flight).
    pub fn due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
        skip: impl Fn(NotificationId) -> bool,
    ) -> Result<Vec<DueDelivery>, SpoolError> {
        let prefix = records::due_prefix(subscription);
        let mut end = prefix.clone();
        end.extend_from_slice(&(now_ms.max(0).saturating_add(1)).to_be_bytes());
        let mut found = Vec::new();
        for item in self.inner.trees.due.range(prefix.clone()..end) {
            if found.len() >= limit {
                break;
            }
            let (due_key, _) = item?;
            let Some((_, id)) = records::split_due_key(prefix.len(), &due_key) else {
                tracing::error!(subscription, "dropping a malformed due-index key");
                self.inner.trees.due.remove(&due_key)?;
                continue;
            };
            if skip(id) {
                continue;
            }
            match self.load_due(id, subscription, due_key.to_vec())? {
                Some(due) => found.push(due),
                None => {
                    tracing::error!(%id, subscription, "due entry without its delivery or notification; dropping it");
                    self.inner.trees.due.remove(&due_key)?;
                }
            }
        }
        Ok(found)
    }

    fn load_due(
        &self,
        id: NotificationId,
        subscription: &str,
        due_key: Vec<u8>,
    ) -> Result<Option<DueDelivery>, SpoolError> {
        let Some(notification) = self.inner.trees.notifications.get(id.to_bytes())? else {
            return Ok(None);
        };
        let notification: NotificationRecord = Record::decode(&notification)?;
        Ok(Some(DueDelivery {
            id,
            subscription: subscription.to_owned(),
            due_key,
            delivery: self.delivery(id, subscription, notification.meta.received_ms)?,
            notification,
        }))
    }

    /// When the earliest delivery of `subscription` that `skip` does not
    /// name is due, if any is.
    pub fn next_due_ms(
        &self,
        subscription: &str,
        skip: impl Fn(NotificationId) -> bool,
    ) -> Result<Option<i64>, SpoolError> {
        let prefix = records::due_prefix(subscription);
        for item in self.inner.trees.due.scan_prefix(&prefix) {
            let (key, _) = item?;
            match records::split_due_key(prefix.len(), &key) {
                Some((_, id)) if skip(id) => continue,
                Some((ms, _)) => return Ok(Some(ms)),
                None => continue,
            }
        }
        Ok(None)
    }

    /// Changes whenever new deliveries became durable and due: the
    /// forwarder's wake-up call (ingress and forwarder meet only here).
    pub fn new_work(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.new_work.subscribe()
    }

    fn announce_work(&self) {
        self.inner.new_work.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records a delivery's new state and moves its due-index entry. Returns
    /// once applied, without waiting for the flush that follows: a crash
    /// before it means one more delivery, which at-least-once allows.
    pub async fn record(&self, due: &DueDelivery, delivery: &Delivery) -> Result<(), SpoolError> {
        self.write_delivery(
            due.id,
            &due.subscription,
            Some(due.due_key.clone()),
            delivery,
            false,
        )
        .await
    }

    async fn write_delivery(
        &self,
        id: NotificationId,
        subscription: &str,
        old_due: Option<Vec<u8>>,
        delivery: &Delivery,
        durable: bool,
    ) -> Result<(), SpoolError> {
        let change = Change::Delivery {
            key: records::delivery_key(id, subscription),
            value: records::encode_delivery(delivery)?,
            old_due,
            new_due: delivery
                .due_at()
                .map(|at| records::due_key(subscription, at, id)),
        };
        self.write(change, durable).await.map(|_| ())
    }

    /// Puts a dead (or delivered) delivery back in the queue with a fresh
    /// schedule; false if there is no such delivery.
    pub async fn replay(
        &self,
        id: NotificationId,
        subscription: &str,
        now_ms: i64,
    ) -> Result<bool, SpoolError> {
        let key = records::delivery_key(id, subscription);
        let Some(bytes) = self.inner.trees.deliveries.get(&key)? else {
            return Ok(false);
        };
        let mut delivery = records::decode_delivery(&bytes)?;
        delivery
            .replay(now_ms)
            .map_err(|e| SpoolError::NotReplayable(e.to_string()))?;
        self.write_delivery(id, subscription, None, &delivery, true)
            .await?;
        self.announce_work();
        Ok(true)
    }

    /// Removes dedup entries older than the window; returns how many.
    pub fn prune_dedup(&self, now_ms: i64) -> Result<usize, SpoolError> {
        let mut removed = 0;
        for item in self.inner.trees.dedup.iter() {
            let (key, value) = item?;
            let expired = records::split_dedup_value(&value).is_none_or(|(_, at)| {
                now_ms.saturating_sub(at) >= self.inner.trees.dedup_window_ms
            });
            if expired
                && self
                    .inner
                    .trees
                    .dedup
                    .compare_and_swap(&key, Some(value), None::<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        // Not flushed on purpose: a lost prune only means the entry is pruned again.
        Ok(removed)
    }

    /// Group commits that reached the disk so far.
    pub fn flushes(&self) -> u64 {
        self.inner
            .trees
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes the spool takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, SpoolError> {
        Ok(self.inner.trees.db.size_on_disk()?)
    }
}

fn rfc3339(time: time::OffsetDateTime) -> Option<String> {
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// sled reports a held lock as a generic I/O error; look first, to say so plainly.
/// How long `open` waits for a lock that is being let go: sled releases its
/// file from background threads a moment after the last handle is dropped,
/// so a spool closed and reopened in one process can find it still held.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn check_not_locked(path: &Path) -> Result<(), SpoolError> {
    let Ok(file) = File::open(path.join("db")) else {
        return Ok(()); // a new spool, or one sled will report on itself
    };
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(10));
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

#[cfg(test)]
mod tests;
