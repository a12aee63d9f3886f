//! Orphans: deliveries waiting for a subscription that is no longer in the
//! config. They are counted (at open, for health and `spool check`), and an
//! admin can give them to another subscription or purge them; either way
//! the orphan's delivery is kept, purged, with its history (and counted so:
//! each batch of the reassignment carries the counts it moved).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use ::sled::{Batch, Tree};

use super::counts::{Standing, Tally};
use super::{decode_delivery, delivery_of, encode_delivery, keys, storage, Store};
use crate::delivery::Delivery;
use crate::spool::record::{NotificationMeta, Record};
use crate::spool::{Counts, NotificationId, Routes, SpoolError};

/// Most notifications examined to count one orphan subscription's backlog.
const COUNT_EXAMINE: usize = 1_000_000;
/// Changes written per batch while reassigning.
const BATCH: usize = 1000;

/// Deliveries waiting for subscriptions that `routes` does not have: their
/// retries, and the notifications past their cursor fanned out to them.
pub fn count(tree: &Tree, routes: &Routes) -> Result<BTreeMap<String, u64>, SpoolError> {
    let mut orphans = BTreeMap::new();
    for item in tree.scan_prefix([keys::CURSOR]) {
        let (key, cursor) = item.map_err(storage)?;
        let Ok(name) = std::str::from_utf8(&key[1..]) else {
            continue;
        };
        if routes.contains(name) {
            continue;
        }
        // Not `count()`: a sled iterator that fails yields its error again
        // on every call, so a count would never end.
        let mut waiting = 0u64;
        for item in tree.scan_prefix(keys::retry_prefix(name)) {
            item.map_err(storage)?;
            waiting += 1;
        }
        for item in never_attempted(tree, name, &cursor).take(COUNT_EXAMINE) {
            item?;
            waiting += 1;
        }
        if waiting > 0 {
            orphans.insert(name.to_owned(), waiting);
        }
    }
    Ok(orphans)
}

/// The notifications from `cursor` on that were fanned out to `name` and
/// never attempted for it.
fn never_attempted<'a>(
    tree: &'a Tree,
    name: &'a str,
    cursor: &[u8],
) -> impl Iterator<Item = Result<(NotificationId, NotificationMeta), SpoolError>> + 'a {
    let from = NotificationId::from_bytes(cursor).unwrap_or(NotificationId(ulid::Ulid(0)));
    tree.range(keys::notification(from)..)
        .take_while(|item| {
            item.as_ref()
                .map_or(true, |(k, _)| k.first() == Some(&keys::NOTIFICATION))
        })
        .filter_map(move |item| {
            let (key, value) = match item {
                Ok(pair) => pair,
                Err(err) => return Some(Err(storage(err))),
            };
            let id = keys::id_of(&key)?;
            let meta = Record::<NotificationMeta>::decode(&value).ok()?.meta;
            if !meta.subscriptions.iter().any(|s| s == name) {
                return None;
            }
            match tree.get(keys::delivery(id, name)) {
                Ok(Some(_)) => None,
                Ok(None) => Some(Ok((id, meta))),
                Err(err) => Some(Err(storage(err))),
            }
        })
}

/// One batch of a reassignment, with the counts it moved and the
/// notifications it already gave up (a read does not see them until the
/// batch is applied, and a delivery with two retry entries must be given
/// up once).
struct Reassigning<'a> {
    store: &'a Store,
    tally: &'a mut Tally,
    published: &'a Mutex<Counts>,
    batch: Batch,
    in_batch: usize,
    given_up: HashSet<NotificationId>,
}

impl Reassigning<'_> {
    fn apply_if_full(&mut self) -> Result<(), SpoolError> {
        if self.in_batch >= BATCH {
            self.apply()?;
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<(), SpoolError> {
        let batch = std::mem::take(&mut self.batch);
        self.tally.apply(&self.store.tree, batch, self.published)?;
        self.in_batch = 0;
        self.given_up.clear();
        Ok(())
    }
}

/// Purges every waiting delivery of `from`, and gives each to `to` as a new
/// delivery due now when `to` is named (unless that notification already
/// has one for `to`). Returns how many deliveries were reassigned.
pub fn reassign(
    store: &Store,
    tally: &mut Tally,
    published: &Mutex<Counts>,
    from: &str,
    to: Option<&str>,
    now_ms: i64,
) -> Result<u64, SpoolError> {
    let tree = &store.tree;
    let mut work = Reassigning {
        store,
        tally,
        published,
        batch: Batch::default(),
        in_batch: 0,
        given_up: HashSet::new(),
    };
    let mut done = 0;
    for item in tree.scan_prefix(keys::retry_prefix(from)) {
        let (key, _) = item.map_err(storage)?;
        work.batch.remove(key.clone());
        work.in_batch += 1;
        let Some((_, _, id)) = keys::split_retry(&key) else {
            continue;
        };
        if work.given_up.contains(&id) {
            continue;
        }
        let Some(bytes) = store.get(&keys::notification(id))? else {
            continue;
        };
        // An unreadable one stays where it is, for `spool check` to name.
        let Ok(meta) = Record::<NotificationMeta>::decode(&bytes).map(|r| r.meta) else {
            continue;
        };
        let delivery = match delivery_of(store, id, from, meta.received_ms) {
            Ok((delivery, _)) => delivery,
            Err(SpoolError::Corrupt(_)) => continue,
            Err(err) => return Err(err),
        };
        give_up(&mut work, id, &meta, delivery, to, now_ms)?;
        done += 1;
        work.apply_if_full()?;
    }
    let cursor = store.get(&keys::cursor(from))?.unwrap_or_default();
    for item in never_attempted(tree, from, &cursor) {
        let (id, meta) = item?;
        if work.given_up.contains(&id) {
            continue;
        }
        let delivery = Delivery::new(from, meta.received_ms);
        give_up(&mut work, id, &meta, delivery, to, now_ms)?;
        work.in_batch += 1;
        done += 1;
        work.apply_if_full()?;
    }
    // Nothing waits for it any more; configured again, it starts afresh.
    work.batch.remove(keys::cursor(from));
    work.apply()?;
    Ok(done)
}

fn give_up(
    work: &mut Reassigning<'_>,
    id: NotificationId,
    meta: &NotificationMeta,
    mut delivery: Delivery,
    to: Option<&str>,
    now_ms: i64,
) -> Result<(), SpoolError> {
    let from = delivery.subscription.clone();
    work.given_up.insert(id);
    let was = Standing::of(&delivery.state);
    // Already final (a stale retry entry): nothing to give up, only to drop.
    if delivery.purge(now_ms).is_ok() {
        work.batch
            .insert(keys::delivery(id, &from), encode_delivery(&delivery)?);
        work.tally.moved(&from, was, Standing::Purged);
    }
    let Some(to) = to else { return Ok(()) };
    let has_one = meta.subscriptions.iter().any(|s| s == to)
        || work.store.get(&keys::delivery(id, to))?.is_some();
    if !has_one {
        work.batch.insert(
            keys::delivery(id, to),
            encode_delivery(&Delivery::new(to, now_ms))?,
        );
        work.batch.insert(keys::retry(to, now_ms, id), &[]);
        work.tally.added(to, Standing::Waiting);
    }
    Ok(())
}

/// The delivery records of one notification, whatever their subscription
/// (those it was fanned out to, and those given to it later).
pub fn records_of(store: &Store, id: NotificationId) -> Result<Vec<Delivery>, SpoolError> {
    store
        .tree
        .scan_prefix(keys::delivery_prefix(id))
        .map(|item| {
            let (_, value) = item.map_err(storage)?;
            decode_delivery(&value)
        })
        .collect()
}
