//! The key layout of the sled spool (format 2): one tree, each kind of
//! entry under a one-byte prefix, so that everything one change touches is
//! written by one `apply_batch` (atomic, and one pass through sled's log).
//!
//! | prefix | key                                   | value                         |
//! |--------|---------------------------------------|-------------------------------|
//! | `n`    | id (16)                               | notification record           |
//! | `q`    | id (16)                               | quarantine record             |
//! | `d`    | source 0x00 dedup key                 | id (16) ++ received ms (8)    |
//! | `x`    | received ms (8) ++ id (16)            | the `d` key it expires (1)    |
//! | `l`    | id (16) ++ subscription               | delivery record (once tried)  |
//! | `r`    | subscription 0x00 due ms (8) ++ id    | empty: a retry or replay due  |
//! | `c`    | subscription                          | first-attempt cursor: id (16) |
//! | `a`    | audit id (16)                         | audit entry                   |
//! | `m`    | name                                  | the spool's own marks         |
//! | `m`    | `counts`                              | totals (see `counts.rs`)      |
//! | `m`    | `counts/` subscription                | that subscription's counts    |
//! | `m`    | `sources`                             | empty: per-source counts kept |
//! | `m`    | `sources/` source                     | that source's counts          |
//! | `m`    | `sub/` subscription                   | an API-created subscription   |
//! | `m`    | `stuck/`, `walked/` (`invoices.rs`)   | the stuck check's marks       |
//! | `i`    | see `invoices.rs`                     | the invoice index             |
//! | `k`    | see `checks.rs`                       | an invoice's reconcile checks |
//!
//! (1) Written by releases before 2026-11-25 only: a `d` entry now goes
//! with its notification (retention), and past the dedup window a store
//! finds it stale and takes the key over; the `x` entries left in an older
//! spool are still walked until none is left.
//!
//! A notification's first attempt needs no entry of its own: the `n` keys
//! are in id (time) order, so each subscription walks them from its cursor.
//! Only what failed, was replayed or came from format 1 waits in `r`.
//! The counts are written in the batch of the change they count, so they
//! are exactly as durable as what they count; a spool without them (made
//! before they existed) gets them from one walk on open.
//! Times are big-endian so keys sort by time; negative times sort as 0.

use super::super::{AuditId, NotificationId};

pub const NOTIFICATION: u8 = b'n';
pub const QUARANTINE: u8 = b'q';
pub const DEDUP: u8 = b'd';
pub const DEDUP_EXPIRY: u8 = b'x';
pub const DELIVERY: u8 = b'l';
pub const RETRY: u8 = b'r';
pub const CURSOR: u8 = b'c';
pub const AUDIT: u8 = b'a';
pub const MARK: u8 = b'm';
/// An invoice's checks with its provider (`checks.rs`).
pub const CHECK: u8 = b'k';

/// The newest notification retention removed: the acknowledged mark may
/// name it without anything having been lost.
pub const REMOVED_UPTO: &[u8] = b"mremoved_upto";

/// The spool-wide counts (notifications, quarantined bodies).
pub const COUNT_TOTALS: &[u8] = b"mcounts";
/// Before a subscription's name: its deliveries' counts.
pub const SUBSCRIPTION_COUNTS: &[u8] = b"mcounts/";
/// Present once the per-source counts are kept (a spool whose counts
/// predate them has the totals without it, and is counted once on open).
pub const SOURCE_COUNTS_KEPT: &[u8] = b"msources";
/// Before a source's name: what the spool holds of it.
pub const SOURCE_COUNTS: &[u8] = b"msources/";
/// `mpaused/<subscription>`, present while an admin holds its deliveries.
pub const PAUSED: &[u8] = b"mpaused/";

/// `msub/<name>`: a subscription created through the admin API.
pub const API_SUBSCRIPTION: &[u8] = b"msub/";

pub fn api_subscription(name: &str) -> Vec<u8> {
    [API_SUBSCRIPTION, name.as_bytes()].concat()
}

pub fn paused(subscription: &str) -> Vec<u8> {
    [PAUSED, subscription.as_bytes()].concat()
}

fn ms_bytes(ms: i64) -> [u8; 8] {
    ms.max(0).to_be_bytes()
}

pub fn notification(id: NotificationId) -> [u8; 17] {
    let mut key = [NOTIFICATION; 17];
    key[1..].copy_from_slice(&id.to_bytes());
    key
}

pub fn quarantine(id: NotificationId) -> [u8; 17] {
    let mut key = [QUARANTINE; 17];
    key[1..].copy_from_slice(&id.to_bytes());
    key
}

/// The id in an `n` or `q` key.
pub fn id_of(key: &[u8]) -> Option<NotificationId> {
    NotificationId::from_bytes(key.get(1..)?)
}

pub fn dedup(source: &str, dedup_key: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + source.len() + dedup_key.len());
    key.push(DEDUP);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(dedup_key.as_bytes());
    key
}

pub fn dedup_value(id: NotificationId, received_ms: i64) -> [u8; 24] {
    let mut out = [0; 24];
    out[..16].copy_from_slice(&id.to_bytes());
    out[16..].copy_from_slice(&received_ms.to_be_bytes());
    out
}

pub fn split_dedup_value(value: &[u8]) -> Option<(NotificationId, i64)> {
    let id = NotificationId::from_bytes(value)?;
    let ms: [u8; 8] = value.get(16..24)?.try_into().ok()?;
    Some((id, i64::from_be_bytes(ms)))
}

pub fn dedup_expiry(received_ms: i64, id: NotificationId) -> [u8; 25] {
    let mut key = [DEDUP_EXPIRY; 25];
    key[1..9].copy_from_slice(&ms_bytes(received_ms));
    key[9..].copy_from_slice(&id.to_bytes());
    key
}

/// The time and id of an `x` key.
pub fn split_dedup_expiry(key: &[u8]) -> Option<(i64, NotificationId)> {
    let ms: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some((
        i64::from_be_bytes(ms),
        NotificationId::from_bytes(key.get(9..)?)?,
    ))
}

pub fn delivery_prefix(id: NotificationId) -> [u8; 17] {
    let mut key = [DELIVERY; 17];
    key[1..].copy_from_slice(&id.to_bytes());
    key
}

pub fn delivery(id: NotificationId, subscription: &str) -> Vec<u8> {
    let mut key = delivery_prefix(id).to_vec();
    key.extend_from_slice(subscription.as_bytes());
    key
}

pub fn retry_prefix(subscription: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + subscription.len());
    key.push(RETRY);
    key.extend_from_slice(subscription.as_bytes());
    key.push(0);
    key
}

pub fn retry(subscription: &str, due_ms: i64, id: NotificationId) -> Vec<u8> {
    let mut key = retry_prefix(subscription);
    key.extend_from_slice(&ms_bytes(due_ms));
    key.extend_from_slice(&id.to_bytes());
    key
}

/// The subscription, due time and id of an `r` key.
pub fn split_retry(key: &[u8]) -> Option<(&str, i64, NotificationId)> {
    let rest = key.get(1..)?;
    let zero = rest.iter().position(|&b| b == 0)?;
    let subscription = std::str::from_utf8(&rest[..zero]).ok()?;
    let after = rest.get(zero + 1..)?;
    let ms: [u8; 8] = after.get(..8)?.try_into().ok()?;
    let id = NotificationId::from_bytes(after.get(8..)?)?;
    (after.len() == 24).then_some((subscription, i64::from_be_bytes(ms), id))
}

pub fn cursor(subscription: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + subscription.len());
    key.push(CURSOR);
    key.extend_from_slice(subscription.as_bytes());
    key
}

pub fn source_counts(source: &str) -> Vec<u8> {
    [SOURCE_COUNTS, source.as_bytes()].concat()
}

pub fn subscription_counts(subscription: &str) -> Vec<u8> {
    let mut key = SUBSCRIPTION_COUNTS.to_vec();
    key.extend_from_slice(subscription.as_bytes());
    key
}

pub fn audit(id: AuditId) -> [u8; 17] {
    let mut key = [AUDIT; 17];
    key[1..].copy_from_slice(&id.to_bytes());
    key
}

/// The id in an `a` key.
pub fn audit_id_of(key: &[u8]) -> Option<AuditId> {
    AuditId::from_bytes(key.get(1..)?).filter(|_| key.len() == 17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_keys_sort_by_time_within_a_subscription_and_split_back() {
        let id = NotificationId::new(1);
        let early = retry("erp", 1_000, id);
        let late = retry("erp", 2_000, id);
        assert!(early < late);
        assert!(early.starts_with(&retry_prefix("erp")));
        assert!(!early.starts_with(&retry_prefix("er")));
        assert_eq!(split_retry(&late), Some(("erp", 2_000, id)));
        assert_eq!(split_retry(&late[..late.len() - 1]), None);
        assert_eq!(split_retry(b"r"), None);
    }

    #[test]
    fn notification_keys_sort_by_id_and_dedup_expiry_by_time() {
        let a = NotificationId::new(1_000);
        let b = NotificationId::new(2_000);
        assert!(notification(a) < notification(b));
        assert_eq!(id_of(&notification(b)), Some(b));
        assert!(dedup_expiry(1_000, b) < dedup_expiry(2_000, a));
        assert_eq!(split_dedup_expiry(&dedup_expiry(7, a)), Some((7, a)));
        assert_eq!(split_dedup_value(&dedup_value(a, 9)), Some((a, 9)));
    }
}
