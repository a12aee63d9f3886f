//! This relay's local, disposable index of the shared spool: a sled
//! database under `index_path`, fed by the fold of the stream in stream
//! order (`tail.rs`), from which reads find a record's stream sequence and
//! metadata without scanning the stream (bodies come by direct get).
//!
//! One tree, keys by kind: `n`+id and `q`+id hold a notification's or a
//! quarantined body's `[sequence: u64 BE][metadata JSON]`; `!applied` the
//! last stream sequence folded, written in the same batch as what it
//! folded; `!identity` the spool's identity, so an index of a stream made
//! again is dropped and rebuilt; `!layout` the version of this layout, so
//! an index an older build folded is rebuilt too. Built so far (steps 2
//! to 5): notifications and quarantine, the deliveries' states with their
//! due set (`deliveries.rs`), pauses (`pause.rs`), the counts
//! (`counts.rs`), audit records (`audit.rs`) and API subscriptions
//! (`api_subscriptions.rs`); the invoice index with its resends
//! (`invoices.rs`), stuck marks (`stuck.rs`) and checks (`checks.rs`). Which
//! message changes what is `fold.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use tokio::sync::watch;

use super::counts::Kept;
use super::reports::Reports;
use super::Identity;
use crate::spool::tally::Tally;
use crate::spool::{cause, NotificationId, SpoolError};

const NOTIFICATION: u8 = b'n';
const QUARANTINE: u8 = b'q';
const APPLIED: &[u8] = b"!applied";
const IDENTITY: &[u8] = b"!identity";
const LAYOUT: &[u8] = b"!layout";
/// This build's layout: an index of another is emptied and folded again
/// (5: the states' standing and the counts came in step 5; 7: the
/// invoice index, stuck marks and reconcile checks, step 7).
const LAYOUT_VERSION: &[u8] = b"7";

/// What the fold reads from one message's headers.
#[derive(Debug, Default)]
pub(super) struct Folded<'a> {
    /// Its metadata (JSON).
    pub meta: Option<&'a str>,
    /// The quarantine id a notification takes out.
    pub released: Option<NotificationId>,
    /// A delivery state's mark: `due`, `wait` or `final`.
    pub lease: Option<&'a str>,
    /// When a delivery state is due.
    pub due_ms: Option<i64>,
    /// Where a delivery state stands, for the counts.
    pub standing: Option<&'a str>,
    /// On a state the forwarder recorded: the attempt and the state after
    /// it (`reports.rs`).
    pub attempted: Option<&'a str>,
    /// The body's size in bytes, as the server tells a headers-only read.
    pub size: Option<usize>,
}

/// One record as the index keeps it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub id: NotificationId,
    /// Its message's sequence in the stream (for a direct get).
    pub sequence: u64,
    /// Its metadata, as the message's header held it (JSON).
    pub meta: Vec<u8>,
}

/// The kinds of record a walk goes over.
#[derive(Debug, Clone, Copy)]
pub(super) enum Family {
    Notifications,
    Quarantine,
}

impl Family {
    fn tag(self) -> u8 {
        match self {
            Family::Notifications => NOTIFICATION,
            Family::Quarantine => QUARANTINE,
        }
    }
}

pub(super) struct Index {
    /// `None` once closed: the database's files are let go of then.
    tree: Mutex<Option<sled::Db>>,
    applied: watch::Sender<u64>,
    /// Counts the API subscriptions folded in (any relay's changes).
    subscriptions_changed: watch::Sender<u64>,
    /// The counts, as of `applied`.
    pub(super) counts: Kept,
    /// Where what the fold folds is reported, on the events' holder.
    pub(super) reports: Reports,
    /// The newest receipt folded of each source, since open (ms).
    received: Mutex<HashMap<String, i64>>,
}

pub(super) fn storage(err: sled::Error) -> SpoolError {
    SpoolError::Storage(cause(err))
}

/// The key of `family`'s record `id`.
pub(super) fn record_key(family: Family, id: NotificationId) -> [u8; 17] {
    key(family.tag(), id)
}

fn key(tag: u8, id: NotificationId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = tag;
    key[1..].copy_from_slice(&id.to_bytes());
    key
}

fn entry(key: &[u8], value: &[u8]) -> Result<Entry, SpoolError> {
    let corrupt = || SpoolError::Corrupt(format!("JetStream index entry {key:?}"));
    let id = NotificationId::from_bytes(key.get(1..).ok_or_else(corrupt)?).ok_or_else(corrupt)?;
    let sequence = value.get(..8).ok_or_else(corrupt)?;
    Ok(Entry {
        id,
        sequence: u64::from_be_bytes(sequence.try_into().map_err(|_| corrupt())?),
        meta: value[8..].to_vec(),
    })
}

impl Index {
    /// Opens (or makes) the index at `path` for the spool `identity`; an
    /// index of another stream (deleted and made again) is emptied.
    pub(super) fn open(path: &Path, identity: &Identity) -> Result<Index, SpoolError> {
        let db = sled::open(path).map_err(|e| match e {
            // Two relays on one index would fold over each other.
            // sled says so only in its text.
            sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                SpoolError::Locked {
                    path: path.to_owned(),
                    detail: "its JetStream index is held; each relay needs an \
                             spool.jetstream.index_path of its own"
                        .into(),
                }
            }
            e => SpoolError::Open {
                path: path.to_owned(),
                detail: format!("the JetStream index: {e}"),
            },
        })?;
        let ours = identity.id.as_bytes();
        let stale = if db.get(IDENTITY).map_err(storage)?.as_deref() != Some(ours) {
            Some("it is of another stream")
        } else if db.get(LAYOUT).map_err(storage)?.as_deref() != Some(LAYOUT_VERSION) {
            Some("an older build folded it")
        } else if db.contains_key(APPLIED).map_err(storage)? && !Kept::present(&db)? {
            Some("it holds no counts")
        } else {
            None
        };
        let loaded = Kept::load(&db)?;
        let why = match (stale, &loaded) {
            (Some(why), _) => Some(why.to_owned()),
            (None, Err(damaged)) => Some(format!("its counts are damaged: {damaged}")),
            (None, Ok(_)) => None,
        };
        let counts = match (why, loaded) {
            (None, Ok(counts)) => counts,
            (why, _) => {
                if db.contains_key(APPLIED).map_err(storage)? {
                    let why = why.unwrap_or_default();
                    tracing::warn!(path = %path.display(), why, "the JetStream index is folded again from the stream's start");
                }
                db.clear().map_err(storage)?;
                db.insert(IDENTITY, ours).map_err(storage)?;
                db.insert(LAYOUT, LAYOUT_VERSION).map_err(storage)?;
                Kept::load(&db)?
                    .map_err(|e| SpoolError::Corrupt(format!("an emptied index: {e}")))?
            }
        };
        let applied = match db.get(APPLIED).map_err(storage)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| SpoolError::Corrupt("the JetStream index's checkpoint".into()))?,
            ),
            None => 0,
        };
        Ok(Index {
            tree: Mutex::new(Some(db)),
            applied: watch::Sender::new(applied),
            subscriptions_changed: watch::Sender::new(0),
            counts,
            reports: Reports::default(),
            received: Mutex::default(),
        })
    }

    pub(super) fn db(&self) -> Result<sled::Db, SpoolError> {
        self.tree
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(SpoolError::Closed)
    }

    /// Notes a notification of `source` received at `received_ms`.
    pub(super) fn heard(&self, source: &str, received_ms: i64) {
        let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        match received.get_mut(source) {
            Some(newest) => *newest = (*newest).max(received_ms),
            None => {
                received.insert(source.to_owned(), received_ms);
            }
        }
    }

    /// The newest receipt of `source` folded since open, from any relay.
    pub(super) fn last_received_ms(&self, source: &str) -> Option<i64> {
        let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        received.get(source).copied()
    }

    /// The last stream sequence folded in.
    pub(super) fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Hears each sequence folded in.
    pub(super) fn watch(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Hears each API subscription made, changed or removed, by any relay.
    pub(super) fn watch_subscriptions(&self) -> watch::Receiver<u64> {
        self.subscriptions_changed.subscribe()
    }

    /// Tells the watchers of API subscriptions that one was folded in.
    pub(super) fn subscription_folded(&self) {
        self.subscriptions_changed.send_modify(|n| *n += 1);
    }

    /// Writes what one message folded into `batch`, with the counts it
    /// moved (staged in `tally`) and `sequence` as the last folded, and
    /// tells the watchers.
    pub(super) fn commit(
        &self,
        db: &sled::Db,
        mut batch: sled::Batch,
        tally: &mut Tally,
        sequence: u64,
    ) -> Result<(), SpoolError> {
        batch.insert(APPLIED, &sequence.to_be_bytes());
        self.counts.apply(tally, db, batch)?;
        self.applied.send_replace(sequence);
        Ok(())
    }

    /// The notification or quarantined body `id`, if the index holds it.
    pub(super) fn get(
        &self,
        family: Family,
        id: NotificationId,
    ) -> Result<Option<Entry>, SpoolError> {
        let key = key(family.tag(), id);
        match self.db()?.get(key).map_err(storage)? {
            Some(value) => entry(&key, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Every record of `family`, oldest first, or newest first strictly
    /// before `before`; read from a snapshot-free iterator, as sled walks.
    pub(super) fn walk(
        &self,
        family: Family,
        newest_first: bool,
        before: Option<NotificationId>,
    ) -> Result<Box<dyn Iterator<Item = Result<Entry, SpoolError>> + Send>, SpoolError> {
        let db = self.db()?;
        let tag = family.tag();
        let start = key(tag, NotificationId(ulid::Ulid(0)));
        let end = match before {
            Some(before) => key(tag, before).to_vec(),
            None => vec![tag + 1],
        };
        let range = db.range(start.to_vec()..end);
        let read = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, v) = item.map_err(storage)?;
            entry(&k, &v)
        };
        Ok(if newest_first {
            Box::new(range.rev().map(read))
        } else {
            Box::new(range.map(read))
        })
    }

    /// Lets go of the database (flushed when `flush`; a crash does not).
    pub(super) fn close(&self, flush: bool) -> Result<(), SpoolError> {
        let db = self.tree.lock().unwrap_or_else(|e| e.into_inner()).take();
        match db {
            Some(db) if flush => db.flush().map(|_| ()).map_err(storage),
            _ => Ok(()),
        }
    }
}
