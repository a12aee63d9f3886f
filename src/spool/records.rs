//! The on-disk record formats of the spool, versioned: one version byte,
//! then the record. A notification keeps the provider's body byte for byte
//! after its metadata, so a forward never re-encodes it.
//!
//! Layout of a notification or quarantine record:
//! `[version: u8][meta length: u32 BE][meta: JSON][body: raw bytes]`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::delivery::Delivery;

use super::SpoolError;

const NOTIFICATION_V1: u8 = 1;
const DELIVERY_V1: u8 = 1;

/// A stable, unique, time-sortable notification id (a ULID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NotificationId(pub ulid::Ulid);

impl NotificationId {
    /// A new id for `now_ms`: sortable by time and, within this process,
    /// strictly increasing, so ids taken in one millisecond keep their order.
    pub fn new(now_ms: i64) -> Self {
        static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
        let ms = u64::try_from(now_ms).unwrap_or(0);
        let fresh = ulid::Ulid::from_parts(ms, rand::random()).0;
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Same millisecond as the last id (or a clock step back): count up
        // from it instead, which stays unique and in order.
        let id = if fresh > *last {
            fresh
        } else {
            last.saturating_add(1)
        };
        *last = id;
        NotificationId(ulid::Ulid(id))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0 .0.to_be_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        Some(NotificationId(ulid::Ulid(u128::from_be_bytes(bytes))))
    }

    pub fn parse(text: &str) -> Option<Self> {
        ulid::Ulid::from_string(text).ok().map(NotificationId)
    }
}

impl std::fmt::Display for NotificationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Everything the relay keeps about an accepted notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationMeta {
    pub id: String,
    pub source: String,
    /// The relay's receipt time, Unix milliseconds.
    pub received_ms: i64,
    pub event_type: String,
    pub subject: Option<String>,
    pub dedup_key: String,
    /// The provider's own timestamp (RFC 3339, UTC), when it sends one.
    pub provider_time: Option<String>,
    pub content_type: Option<String>,
    /// Selected request headers (user agent, forwarding hints).
    pub headers: Vec<(String, String)>,
    pub peer: String,
    /// The subscriptions it was fanned out to when it was spooled.
    #[serde(default)]
    pub subscriptions: Vec<String>,
}

/// An authenticated body that could not be accepted as a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineMeta {
    pub id: String,
    pub source: String,
    pub received_ms: i64,
    /// Machine-readable kind of rejection, e.g. `not_json`.
    pub reason_kind: String,
    pub reason: String,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub peer: String,
}

/// A record's metadata with the raw body it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<M> {
    pub meta: M,
    pub body: Bytes,
}

pub type NotificationRecord = Record<NotificationMeta>;
pub type QuarantineRecord = Record<QuarantineMeta>;

impl<M: Serialize + for<'de> Deserialize<'de>> Record<M> {
    pub fn encode(&self) -> Result<Vec<u8>, SpoolError> {
        let meta = serde_json::to_vec(&self.meta).map_err(|e| SpoolError::Encode(e.to_string()))?;
        let meta_len = u32::try_from(meta.len())
            .map_err(|_| SpoolError::Encode("metadata too large".into()))?;
        let mut out = Vec::with_capacity(5 + meta.len() + self.body.len());
        out.push(NOTIFICATION_V1);
        out.extend_from_slice(&meta_len.to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SpoolError> {
        let corrupt = |why: &str| SpoolError::Corrupt(why.to_owned());
        match bytes.first() {
            Some(&NOTIFICATION_V1) => {}
            Some(other) => {
                return Err(SpoolError::Corrupt(format!(
                    "unknown record version {other}"
                )))
            }
            None => return Err(corrupt("empty record")),
        }
        let len_bytes: [u8; 4] = bytes
            .get(1..5)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("truncated record header"))?;
        let meta_end = 5 + u32::from_be_bytes(len_bytes) as usize;
        let meta = bytes
            .get(5..meta_end)
            .ok_or_else(|| corrupt("truncated metadata"))?;
        let meta = serde_json::from_slice(meta).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        Ok(Record {
            meta,
            body: Bytes::copy_from_slice(&bytes[meta_end..]),
        })
    }
}

pub fn encode_delivery(delivery: &Delivery) -> Result<Vec<u8>, SpoolError> {
    let mut out = vec![DELIVERY_V1];
    serde_json::to_writer(&mut out, delivery).map_err(|e| SpoolError::Encode(e.to_string()))?;
    Ok(out)
}

pub fn decode_delivery(bytes: &[u8]) -> Result<Delivery, SpoolError> {
    match bytes.split_first() {
        Some((&DELIVERY_V1, json)) => {
            serde_json::from_slice(json).map_err(|e| SpoolError::Corrupt(e.to_string()))
        }
        Some((other, _)) => Err(SpoolError::Corrupt(format!(
            "unknown delivery version {other}"
        ))),
        None => Err(SpoolError::Corrupt("empty delivery record".into())),
    }
}

// === keys ===
//
// notifications: id (16 bytes)
// deliveries:    id (16) ++ subscription
// due:           subscription ++ 0x00 ++ due_ms (8, BE) ++ id (16)
// dedup:         source ++ 0x00 ++ dedup key  →  id (16) ++ received_ms (8, BE)

pub fn delivery_key(id: NotificationId, subscription: &str) -> Vec<u8> {
    let mut key = id.to_bytes().to_vec();
    key.extend_from_slice(subscription.as_bytes());
    key
}

pub fn due_prefix(subscription: &str) -> Vec<u8> {
    let mut key = subscription.as_bytes().to_vec();
    key.push(0);
    key
}

pub fn due_key(subscription: &str, due_ms: i64, id: NotificationId) -> Vec<u8> {
    let mut key = due_prefix(subscription);
    key.extend_from_slice(&due_ms.max(0).to_be_bytes());
    key.extend_from_slice(&id.to_bytes());
    key
}

/// The due time and id of a due-index key under `prefix`.
pub fn split_due_key(prefix_len: usize, key: &[u8]) -> Option<(i64, NotificationId)> {
    let ms: [u8; 8] = key.get(prefix_len..prefix_len + 8)?.try_into().ok()?;
    let id = NotificationId::from_bytes(key.get(prefix_len + 8..)?)?;
    Some((i64::from_be_bytes(ms), id))
}

pub fn dedup_key(source: &str, key: &str) -> Vec<u8> {
    let mut out = source.as_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_its_body_byte_for_byte() {
        let record = Record {
            meta: QuarantineMeta {
                id: "x".into(),
                source: "tus".into(),
                received_ms: 5,
                reason_kind: "not_json".into(),
                reason: "expected value".into(),
                content_type: None,
                headers: vec![],
                peer: "127.0.0.1".into(),
            },
            body: Bytes::from_static(b"\xff\x00not json{"),
        };
        let bytes = record.encode().unwrap();
        assert_eq!(Record::<QuarantineMeta>::decode(&bytes).unwrap(), record);
        assert!(Record::<QuarantineMeta>::decode(&bytes[..3]).is_err());
        assert!(Record::<QuarantineMeta>::decode(&[9, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn due_keys_sort_by_time_within_a_subscription() {
        let id = NotificationId::new(1);
        let early = due_key("erp", 1_000, id);
        let late = due_key("erp", 2_000, id);
        assert!(early < late);
        assert!(early.starts_with(&due_prefix("erp")));
        assert!(!early.starts_with(&due_prefix("er")));
        assert_eq!(
            split_due_key(due_prefix("erp").len(), &late),
            Some((2_000, id))
        );
    }

    #[test]
    fn ids_sort_by_time_and_round_trip() {
        let a = NotificationId::new(1_000);
        let b = NotificationId::new(2_000);
        assert!(a < b && a.to_bytes() < b.to_bytes());
        assert_eq!(NotificationId::parse(&a.to_string()), Some(a));
        assert_eq!(NotificationId::from_bytes(&a.to_bytes()), Some(a));
    }

    #[test]
    fn ids_taken_in_one_millisecond_keep_their_order() {
        let ids: Vec<_> = (0..1_000).map(|_| NotificationId::new(5_000)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
