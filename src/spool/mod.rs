//! The durable spool, on sled: the only module that knows the store is sled.
//!
//! Trees: `notifications` (records by id), `deliveries` (one per notification
//! and subscription), `due` (the due-time index the forwarder reads, per
//! subscription), `dedup` (source + dedup key → first id and its time),
//! `quarantine` (authenticated bodies that were not valid notifications)
//! and `meta` (format version).
//!
//! A notification, its dedup entry, its deliveries and their due entries are
//! written in one transaction, so a crash never leaves one without the other;
//! [`Spool::store`] returns only after a group flush that covers the write.

mod commit;
pub mod records;

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::config::SpoolConfig;
use crate::delivery::Delivery;
use crate::providers::Notification;
use commit::GroupCommit;
pub use records::{
    NotificationId, NotificationMeta, NotificationRecord, QuarantineMeta, QuarantineRecord, Record,
};

const FORMAT_VERSION: &[u8] = b"1";

#[derive(Debug, thiserror::Error)]
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
    db: sled::Db,
    notifications: sled::Tree,
    deliveries: sled::Tree,
    due: sled::Tree,
    dedup: sled::Tree,
    quarantine: sled::Tree,
    commit: Arc<GroupCommit>,
    flush: commit::FlushFn,
    new_work: tokio::sync::watch::Sender<u64>,
    dedup_window_ms: i64,
}

impl Spool {
    /// Opens (or creates) the spool. Fails clearly if another process holds
    /// it or it cannot be read; it never silently starts empty over old data.
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
            // Our flusher makes writes durable; sled's own timer would only add flushes.
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
        let inner = Inner {
            notifications: tree("notifications")?,
            deliveries: tree("deliveries")?,
            due: tree("due")?,
            dedup: tree("dedup")?,
            quarantine: tree("quarantine")?,
            commit: GroupCommit::new(),
            flush: commit::flush_and_sync(db.clone(), log),
            new_work: tokio::sync::watch::Sender::new(0),
            dedup_window_ms: i64::try_from(config.dedup_window.0.as_millis()).unwrap_or(i64::MAX),
            path,
            db,
        };
        Ok(Spool {
            inner: Arc::new(inner),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The group-commit flusher. Must run for [`Spool::store`] to return;
    /// makes a last flush when `shutdown` resolves.
    pub fn flusher(&self, shutdown: impl Future<Output = ()>) -> impl Future<Output = ()> {
        self.inner
            .commit
            .clone()
            .run(self.inner.flush.clone(), shutdown)
    }

    /// Stores a notification with one pending delivery per subscription
    /// named, unless it is a duplicate. Returns once the write is durable.
    pub async fn store(
        &self,
        incoming: Incoming,
        subscriptions: &[&str],
    ) -> Result<Stored, SpoolError> {
        let stored = self.write_notification(&incoming, subscriptions)?;
        // A duplicate waits too: the first copy may still be on its way to disk.
        self.inner.commit.durable().await?;
        if matches!(stored, Stored::New(_)) && !subscriptions.is_empty() {
            self.announce_work();
        }
        Ok(stored)
    }

    fn write_notification(
        &self,
        incoming: &Incoming,
        subscriptions: &[&str],
    ) -> Result<Stored, SpoolError> {
        let inner = &self.inner;
        let id = NotificationId::new(incoming.received_ms);
        let record = Record {
            meta: NotificationMeta {
                id: id.to_string(),
                source: incoming.source.clone(),
                received_ms: incoming.received_ms,
                event_type: incoming.notification.event_type.clone(),
                subject: incoming.notification.subject.clone(),
                dedup_key: incoming.notification.dedup_key.clone(),
                provider_time: incoming.notification.provider_time.and_then(rfc3339),
                content_type: incoming.content_type.clone(),
                headers: incoming.headers.clone(),
                peer: incoming.peer.clone(),
            },
            body: incoming.body.clone(),
        }
        .encode()?;
        let dedup_key = records::dedup_key(&incoming.source, &incoming.notification.dedup_key);
        let dedup_value = records::dedup_value(id, incoming.received_ms);
        let mut deliveries = Vec::with_capacity(subscriptions.len());
        for name in subscriptions {
            let delivery = Delivery::new(*name, incoming.received_ms);
            deliveries.push((
                records::delivery_key(id, name),
                records::encode_delivery(&delivery)?,
                records::due_key(name, incoming.received_ms, id),
            ));
        }
        let window = inner.dedup_window_ms;
        let now = incoming.received_ms;
        let result = (
            &inner.notifications,
            &inner.dedup,
            &inner.deliveries,
            &inner.due,
        )
            .transaction(|(notifications, dedup, delivery_tree, due)| {
                if let Some(existing) = dedup.get(&dedup_key)? {
                    if let Some((first, at)) = records::split_dedup_value(&existing) {
                        if now.saturating_sub(at) < window {
                            return Ok(Stored::Duplicate(first));
                        }
                    }
                }
                notifications.insert(&id.to_bytes(), record.as_slice())?;
                dedup.insert(dedup_key.as_slice(), &dedup_value)?;
                for (key, value, due_key) in &deliveries {
                    delivery_tree.insert(key.as_slice(), value.as_slice())?;
                    due.insert(due_key.as_slice(), &[])?;
                }
                Ok::<_, ConflictableTransactionError<SpoolError>>(Stored::New(id))
            });
        flatten(result)
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
        self.inner
            .quarantine
            .insert(id.to_bytes(), record.encode()?)?;
        self.inner.commit.durable().await?;
        Ok(id)
    }

    /// All notifications, oldest first.
    pub fn notifications(
        &self,
    ) -> impl Iterator<Item = Result<NotificationRecord, SpoolError>> + '_ {
        self.inner.notifications.iter().map(|item| {
            item.map_err(SpoolError::from)
                .and_then(|(_, v)| Record::decode(&v))
        })
    }

    /// All quarantined bodies, oldest first.
    pub fn quarantined(&self) -> impl Iterator<Item = Result<QuarantineRecord, SpoolError>> + '_ {
        self.inner.quarantine.iter().map(|item| {
            item.map_err(SpoolError::from)
                .and_then(|(_, v)| Record::decode(&v))
        })
    }

    pub fn notification(
        &self,
        id: NotificationId,
    ) -> Result<Option<NotificationRecord>, SpoolError> {
        match self.inner.notifications.get(id.to_bytes())? {
            Some(bytes) => Record::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The deliveries of one notification, by subscription name.
    pub fn deliveries_of(&self, id: NotificationId) -> Result<Vec<Delivery>, SpoolError> {
        self.inner
            .deliveries
            .scan_prefix(id.to_bytes())
            .map(|item| records::decode_delivery(&item?.1))
            .collect()
    }

    /// Every delivery record, in notification order: for reports and tests.
    pub fn all_deliveries(
        &self,
    ) -> impl Iterator<Item = Result<(NotificationId, Delivery), SpoolError>> + '_ {
        self.inner.deliveries.iter().map(|item| {
            let (key, value) = item?;
            let (id, _) = records::split_delivery_key(&key)
                .ok_or_else(|| SpoolError::Corrupt("malformed delivery key".into()))?;
            Ok((id, records::decode_delivery(&value)?))
        })
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
        for item in self.inner.due.range(prefix.clone()..end) {
            if found.len() >= limit {
                break;
            }
            let (due_key, _) = item?;
            let Some((_, id)) = records::split_due_key(prefix.len(), &due_key) else {
                tracing::error!(subscription, "dropping a malformed due-index key");
                self.inner.due.remove(&due_key)?;
                continue;
            };
            if skip(id) {
                continue;
            }
            match self.load_due(id, subscription, due_key.to_vec())? {
                Some(due) => found.push(due),
                None => {
                    tracing::error!(%id, subscription, "due entry without its delivery or notification; dropping it");
                    self.inner.due.remove(&due_key)?;
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
        let delivery = self
            .inner
            .deliveries
            .get(records::delivery_key(id, subscription))?;
        let notification = self.inner.notifications.get(id.to_bytes())?;
        let (Some(delivery), Some(notification)) = (delivery, notification) else {
            return Ok(None);
        };
        Ok(Some(DueDelivery {
            id,
            subscription: subscription.to_owned(),
            due_key,
            delivery: records::decode_delivery(&delivery)?,
            notification: Record::decode(&notification)?,
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
        for item in self.inner.due.scan_prefix(&prefix) {
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

    /// Records a delivery's new state and moves its due-index entry. Not
    /// waited on: it rides on the next group flush (a lost outcome means one
    /// more delivery, which at-least-once allows).
    pub fn record(&self, due: &DueDelivery, delivery: &Delivery) -> Result<(), SpoolError> {
        self.write_delivery(due.id, &due.subscription, Some(&due.due_key), delivery)
    }

    fn write_delivery(
        &self,
        id: NotificationId,
        subscription: &str,
        old_due_key: Option<&[u8]>,
        delivery: &Delivery,
    ) -> Result<(), SpoolError> {
        let key = records::delivery_key(id, subscription);
        let value = records::encode_delivery(delivery)?;
        let new_due = delivery
            .due_at()
            .map(|at| records::due_key(subscription, at, id));
        let result = (&self.inner.deliveries, &self.inner.due).transaction(|(deliveries, due)| {
            if let Some(old) = old_due_key {
                due.remove(old)?;
            }
            if let Some(new_due) = &new_due {
                due.insert(new_due.as_slice(), &[])?;
            }
            deliveries.insert(key.as_slice(), value.as_slice())?;
            Ok::<_, ConflictableTransactionError<SpoolError>>(())
        });
        flatten(result)?;
        self.inner.commit.mark_dirty();
        Ok(())
    }

    /// Puts a dead (or delivered) delivery back in the queue with a fresh schedule.
    pub async fn replay(
        &self,
        id: NotificationId,
        subscription: &str,
        now_ms: i64,
    ) -> Result<bool, SpoolError> {
        let key = records::delivery_key(id, subscription);
        let Some(bytes) = self.inner.deliveries.get(&key)? else {
            return Ok(false);
        };
        let mut delivery = records::decode_delivery(&bytes)?;
        delivery
            .replay(now_ms)
            .map_err(|e| SpoolError::Storage(format!("cannot replay: {e}")))?;
        self.write_delivery(id, subscription, None, &delivery)?;
        self.inner.commit.durable().await?;
        self.announce_work();
        Ok(true)
    }

    /// Removes dedup entries older than the window; returns how many.
    pub fn prune_dedup(&self, now_ms: i64) -> Result<usize, SpoolError> {
        let mut removed = 0;
        for item in self.inner.dedup.iter() {
            let (key, value) = item?;
            let expired = records::split_dedup_value(&value)
                .is_none_or(|(_, at)| now_ms.saturating_sub(at) >= self.inner.dedup_window_ms);
            if expired
                && self
                    .inner
                    .dedup
                    .compare_and_swap(&key, Some(value), None::<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            self.inner.commit.mark_dirty();
        }
        Ok(removed)
    }

    /// Bytes the spool takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, SpoolError> {
        Ok(self.inner.db.size_on_disk()?)
    }
}

fn flatten<T>(result: Result<T, TransactionError<SpoolError>>) -> Result<T, SpoolError> {
    result.map_err(|err| match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => SpoolError::from(err),
    })
}

fn rfc3339(time: time::OffsetDateTime) -> Option<String> {
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// sled reports a held lock as a generic I/O error; look first, to say so plainly.
fn check_not_locked(path: &Path) -> Result<(), SpoolError> {
    let Ok(file) = File::open(path.join("db")) else {
        return Ok(()); // a new spool, or one sled will report on itself
    };
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::Locked {
            path: path.to_owned(),
            detail: "its lock is held".into(),
        }),
        Err(std::fs::TryLockError::Error(err)) => Err(SpoolError::Open {
            path: path.to_owned(),
            detail: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests;
