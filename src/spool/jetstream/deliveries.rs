//! The index's part for leases (step 3): each delivery's current state,
//! the due set the waker and `next_due_ms` read, and the first attempts
//! not yet made. Keys, with `{sub}` the subscription's subject token (it
//! never holds a zero byte):
//! - `D{sub}\0{id}` → `[sequence u64][mark][standing]` and, for `wait`
//!   and `due`, `[due ms i64]`: the state `P.d.{sub}.{id}` as last folded
//!   (its standing is what the counts move it from next);
//! - `W{sub}\0{due ms}{id}` → `[mark]`: the states marked `wait` or `due`,
//!   in due order (the waker takes the `wait` ones that are due);
//! - `F{sub}\0{id}` → `[received ms]`: a notification fanned out to `sub`
//!   with no state yet (its first attempt is still to make).

use super::counts::{standing_byte, standing_from_byte, standing_of};
use super::index::{storage, Folded, Index};
use super::staged::{Reads, Writes};
use super::subjects::token;
use crate::spool::standing::Standing;
use crate::spool::{NotificationId, NotificationMeta, SpoolError};

pub(super) const STATE: u8 = b'D';
pub(super) const WAITING: u8 = b'W';
pub(super) const FIRST: u8 = b'F';

/// A state's mark, as its `Relay-Lease` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// The consumer hands it out.
    Due,
    /// The waker marks it due when its time comes.
    Wait,
    /// Nothing more happens to it.
    Final,
}

impl Mark {
    pub(super) fn header(self) -> &'static str {
        match self {
            Mark::Due => "due",
            Mark::Wait => "wait",
            Mark::Final => "final",
        }
    }

    pub(super) fn from_header(header: Option<&str>) -> Mark {
        match header {
            Some("due") => Mark::Due,
            Some("wait") => Mark::Wait,
            _ => Mark::Final,
        }
    }

    fn byte(self) -> u8 {
        self.header().as_bytes()[0]
    }

    fn from_byte(byte: u8) -> Mark {
        match byte {
            b'd' => Mark::Due,
            b'w' => Mark::Wait,
            _ => Mark::Final,
        }
    }
}

/// A delivery's state as the index holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StateAt {
    pub sequence: u64,
    pub mark: Mark,
    pub standing: Standing,
    pub due_ms: Option<i64>,
}

pub(super) fn prefix(tag: u8, sub: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(sub.len() + 34);
    key.push(tag);
    key.extend_from_slice(sub.as_bytes());
    key.push(0);
    key
}

pub(super) fn keyed(tag: u8, sub: &str, id: NotificationId) -> Vec<u8> {
    let mut key = prefix(tag, sub);
    key.extend_from_slice(&id.to_bytes());
    key
}

fn waiting_key(sub: &str, due_ms: i64, id: NotificationId) -> Vec<u8> {
    let mut key = prefix(WAITING, sub);
    key.extend_from_slice(&due_bytes(due_ms));
    key.extend_from_slice(&id.to_bytes());
    key
}

pub(super) fn due_bytes(due_ms: i64) -> [u8; 8] {
    u64::try_from(due_ms.max(0)).unwrap_or(0).to_be_bytes()
}

pub(super) fn decode_state(value: &[u8]) -> Result<StateAt, SpoolError> {
    let corrupt = || SpoolError::Corrupt("a delivery state in the JetStream index".into());
    let sequence = u64::from_be_bytes(
        value
            .get(..8)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    );
    let mark = Mark::from_byte(*value.get(8).ok_or_else(corrupt)?);
    let standing = standing_from_byte(*value.get(9).ok_or_else(corrupt)?).ok_or_else(corrupt)?;
    let due_ms = match value.get(10..18) {
        Some(due) => Some(i64::from_be_bytes(due.try_into().map_err(|_| corrupt())?)),
        None => None,
    };
    Ok(StateAt {
        sequence,
        mark,
        standing,
        due_ms,
    })
}

pub(super) fn id_at_end(key: &[u8]) -> Option<NotificationId> {
    NotificationId::from_bytes(key.get(key.len().checked_sub(16)?..)?)
}

/// A notification folded in: each subscription it fans out to has its
/// first attempt to make. Answers where each of its deliveries stands (a
/// state folded before the notification is counted as it stands).
pub(super) fn fold_first_attempts(
    db: &impl Reads,
    batch: &mut Writes,
    id: NotificationId,
    meta: &NotificationMeta,
) -> Result<Vec<(String, Standing)>, SpoolError> {
    let mut standings = Vec::with_capacity(meta.subscriptions.len());
    for subscription in &meta.subscriptions {
        let sub = token(subscription);
        let standing = match db.read(&keyed(STATE, &sub, id))? {
            Some(state) => decode_state(&state)?.standing,
            None => {
                batch.insert(keyed(FIRST, &sub, id), &meta.received_ms.to_be_bytes());
                Standing::Waiting
            }
        };
        standings.push((subscription.clone(), standing));
    }
    Ok(standings)
}

/// A delivery's state folded in: it replaces the one before (and its
/// place in the due set), and the first attempt is made. Answers where
/// the delivery stood before (`None`: it was no delivery of the
/// notification's until now, as a reassigned orphan is) and stands now.
pub(super) fn fold_state(
    db: &impl Reads,
    batch: &mut Writes,
    sequence: u64,
    sub: &str,
    id: NotificationId,
    folded: &Folded<'_>,
) -> Result<(Option<Standing>, Standing), SpoolError> {
    let key = keyed(STATE, sub, id);
    let first = keyed(FIRST, sub, id);
    let was = match db.read(&key)? {
        Some(old) => {
            let old = decode_state(&old)?;
            if let Some(due) = old.due_ms {
                batch.remove(waiting_key(sub, due, id));
            }
            Some(old.standing)
        }
        None if db.holds(&first)? => Some(Standing::Waiting),
        None => None,
    };
    batch.remove(first);
    let mark = Mark::from_header(folded.lease);
    let standing = standing_of(folded.standing, mark != Mark::Final);
    let mut value = sequence.to_be_bytes().to_vec();
    value.push(mark.byte());
    value.push(standing_byte(standing));
    if let (Some(due), false) = (folded.due_ms, mark == Mark::Final) {
        value.extend_from_slice(&due.to_be_bytes());
        batch.insert(waiting_key(sub, due, id), &[mark.byte()]);
    }
    batch.insert(key, value);
    Ok((was, standing))
}

impl Index {
    /// The state of `subscription`'s delivery of `id`, if it has one.
    pub(super) fn state(
        &self,
        subscription: &str,
        id: NotificationId,
    ) -> Result<Option<StateAt>, SpoolError> {
        let key = keyed(STATE, &token(subscription), id);
        match self.db()?.get(key).map_err(storage)? {
            Some(value) => decode_state(&value).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `max` states of `subscription` marked `wait` and due by
    /// `now_ms`, with the sequence each must still be at to be woken.
    pub(super) fn wakeable(
        &self,
        subscription: &str,
        now_ms: i64,
        max: usize,
    ) -> Result<Vec<(NotificationId, u64)>, SpoolError> {
        let db = self.db()?;
        let sub = token(subscription);
        let start = prefix(WAITING, &sub);
        let mut end = start.clone();
        end.extend_from_slice(&due_bytes(now_ms.saturating_add(1)));
        let mut out = Vec::new();
        for item in db.range(start..end) {
            let (key, mark) = item.map_err(storage)?;
            if mark.first().copied().map(Mark::from_byte) != Some(Mark::Wait) {
                continue;
            }
            let Some(id) = id_at_end(&key) else { continue };
            if let Some(state) = self.state(subscription, id)? {
                out.push((id, state.sequence));
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// When `subscription`'s next state marked `wait` is due.
    pub(super) fn next_wake_ms(&self, subscription: &str) -> Result<Option<i64>, SpoolError> {
        let db = self.db()?;
        let start = prefix(WAITING, &token(subscription));
        let at = start.len();
        for item in db.scan_prefix(&start) {
            let (key, mark) = item.map_err(storage)?;
            if mark.first().copied().map(Mark::from_byte) == Some(Mark::Wait) {
                return Ok(key
                    .get(at..at + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| i64::try_from(u64::from_be_bytes(b)).unwrap_or(i64::MAX)));
            }
        }
        Ok(None)
    }

    /// When `subscription`'s earliest delivery not yet final is due: its
    /// oldest first attempt not made, or its state due soonest.
    pub(super) fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, SpoolError> {
        let db = self.db()?;
        let sub = token(subscription);
        let waiting = match db.scan_prefix(prefix(WAITING, &sub)).next() {
            Some(item) => {
                let (key, _) = item.map_err(storage)?;
                let at = prefix(WAITING, &sub).len();
                key.get(at..at + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| i64::try_from(u64::from_be_bytes(b)).unwrap_or(i64::MAX))
            }
            None => None,
        };
        let first = first_attempt_ms(&db, &sub)?;
        Ok(match (waiting, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// When `subscription`'s oldest delivery not yet final was received,
    /// as far as two seeks tell (as sled's answer): its oldest first
    /// attempt not made (exact), and its state due soonest (retries of one
    /// schedule come due in about the order their notifications came).
    pub(super) fn oldest_waiting_ms(&self, subscription: &str) -> Result<Option<i64>, SpoolError> {
        let db = self.db()?;
        let sub = token(subscription);
        let due_soonest = match db.scan_prefix(prefix(WAITING, &sub)).next() {
            Some(item) => {
                let (key, _) = item.map_err(storage)?;
                let at = prefix(WAITING, &sub).len() + 8;
                key.get(at..at + 16)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .and_then(|b| NotificationId::from_bytes(&b))
                    .map(|id| id.ms())
            }
            None => None,
        };
        let first = first_attempt_ms(&db, &sub)?;
        Ok(match (due_soonest, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}

/// When the oldest notification whose first attempt to `sub` is still to
/// make was received (they are kept in id order).
fn first_attempt_ms(db: &sled::Db, sub: &str) -> Result<Option<i64>, SpoolError> {
    match db.scan_prefix(prefix(FIRST, sub)).next() {
        Some(item) => {
            let (_, value) = item.map_err(storage)?;
            Ok(value.as_ref().try_into().ok().map(i64::from_be_bytes))
        }
        None => Ok(None),
    }
}
