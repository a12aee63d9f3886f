//! What the spool keeps, whatever the backend: notification and quarantine
//! records, their ids, and their versioned byte format. A record keeps the
//! provider's body byte for byte after its metadata, so a forward never
//! re-encodes it.
//!
//! Layouts:
//! - version 1 (the first release): `[1][meta length: u32 BE][meta: JSON][body]`,
//!   the id inside the JSON;
//! - version 2: `[2][id: 16 bytes][meta length: u32 BE][meta: JSON][body]`.
//!   The id sits in a fixed place so the spool's writer can stamp it in
//!   without re-encoding (ids are handed out in commit order, see
//!   `spool/sled/writer/`); the JSON's `id` is left empty.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::SpoolError;
use crate::providers::InvoiceStatus;

const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
const V2_HEADER: usize = 1 + 16 + 4;

/// A stable, unique, time-sortable notification id (a ULID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NotificationId(pub ulid::Ulid);

impl NotificationId {
    /// A fresh id for `now_ms` (its order within one millisecond is
    /// random; the spool's writer orders the ids it hands out with
    /// [`NotificationId::next_after`]).
    pub fn new(now_ms: i64) -> Self {
        Self::next_after(None, now_ms)
    }

    /// The id for a record received at `now_ms` in a spool whose newest id
    /// is `last`: time-sortable, and always after `last` (within one
    /// millisecond, or when the clock stepped back, it counts up from it),
    /// so the order of ids is the order of commits.
    pub fn next_after(last: Option<NotificationId>, now_ms: i64) -> Self {
        NotificationId(ulid_after(last.map(|id| id.0), now_ms))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0 .0.to_be_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        Some(NotificationId(ulid::Ulid(u128::from_be_bytes(bytes))))
    }

    /// The id a text names, if it is one ([`parse_ulid`]'s rules).
    pub fn parse(text: &str) -> Option<Self> {
        text.parse().ok()
    }

    /// The Unix milliseconds the id was made for (its receipt time).
    pub fn ms(self) -> i64 {
        i64::try_from(self.0.timestamp_ms()).unwrap_or(i64::MAX)
    }
}

impl std::str::FromStr for NotificationId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<NotificationId, IdError> {
        parse_ulid(text).map(NotificationId)
    }
}

/// Why a text is not an id (a ULID: 26 characters of Crockford's base32).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{text:?} has {length} characters; an id has 26")]
    Length { text: String, length: usize },
    #[error("{text:?} holds {found:?}, not a character of an id (0-9 and A-Z but I, L, O, U)")]
    Character { text: String, found: char },
    #[error("{text:?} is past the largest id (an id begins with 0 to 7)")]
    Overflow { text: String },
}

/// A ULID, strictly: exactly 26 characters of Crockford's base32 (either
/// case), no spaces, and the first at most `7`. The `ulid` crate reads a
/// first character above `7` by dropping its high bits (`ZZZ…` is then
/// `7ZZ…`), so two texts would name one id; that is refused here.
pub fn parse_ulid(text: &str) -> Result<ulid::Ulid, IdError> {
    let length = text.chars().count();
    if length != ulid::ULID_LEN {
        return Err(IdError::Length {
            text: text.to_owned(),
            length,
        });
    }
    if let Some(found) = text.chars().find(|c| {
        !c.is_ascii_alphanumeric() || matches!(c.to_ascii_uppercase(), 'I' | 'L' | 'O' | 'U')
    }) {
        return Err(IdError::Character {
            text: text.to_owned(),
            found,
        });
    }
    if !matches!(text.as_bytes().first(), Some(b'0'..=b'7')) {
        return Err(IdError::Overflow {
            text: text.to_owned(),
        });
    }
    ulid::Ulid::from_string(text).map_err(|_| IdError::Character {
        text: text.to_owned(),
        found: '?',
    })
}

/// A fresh ULID for `now_ms`, or, when that would not sort after `last`
/// (the same millisecond, a clock stepped back), the one right after `last`.
pub(crate) fn ulid_after(last: Option<ulid::Ulid>, now_ms: i64) -> ulid::Ulid {
    let ms = u64::try_from(now_ms).unwrap_or(0);
    let fresh = ulid::Ulid::from_parts(ms, rand::random()).0;
    match last {
        Some(last) if fresh <= last.0 => ulid::Ulid(last.0.saturating_add(1)),
        _ => ulid::Ulid(fresh),
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
    /// What the provider check accepted though not as documented
    /// (`providers::Flag` names, e.g. `latin1_body`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The invoice's status as this notification tells it. Records stored
    /// before statuses were kept have none and read as `unknown`; an
    /// unknown one is not written, so it costs nothing where it says nothing.
    #[serde(default, skip_serializing_if = "is_unknown")]
    pub status: InvoiceStatus,
    /// It arrived after a final status of its invoice and would have moved
    /// it back (set by the spool's writer, which keeps the invoice index).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
}

fn is_unknown(status: &InvoiceStatus) -> bool {
    *status == InvoiceStatus::Unknown
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

/// Metadata that carries its record's id.
pub trait HasId {
    fn set_id(&mut self, id: String);
}

impl HasId for NotificationMeta {
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
}

impl HasId for QuarantineMeta {
    fn set_id(&mut self, id: String) {
        self.id = id;
    }
}

/// A record's metadata with the raw body it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<M> {
    pub meta: M,
    pub body: Bytes,
}

pub type NotificationRecord = Record<NotificationMeta>;
pub type QuarantineRecord = Record<QuarantineMeta>;

impl<M: Serialize + for<'de> Deserialize<'de> + HasId> Record<M> {
    /// Encodes in the current layout with a zero id, to be stamped by
    /// [`stamp_id`] once the id is known.
    pub fn encode(&self) -> Result<Vec<u8>, SpoolError> {
        let meta = serde_json::to_vec(&self.meta)
            .map_err(|e| SpoolError::Encode(crate::spool::cause(e)))?;
        let meta_len = u32::try_from(meta.len())
            .map_err(|_| SpoolError::Encode(crate::spool::cause("metadata too large")))?;
        let mut out = Vec::with_capacity(V2_HEADER + meta.len() + self.body.len());
        out.push(RECORD_V2);
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&meta_len.to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.body);
        Ok(out)
    }

    /// Decodes either layout; never panics on damaged bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SpoolError> {
        let corrupt = |why: &str| SpoolError::Corrupt(why.to_owned());
        let (id, meta_at) = match bytes.first() {
            Some(&RECORD_V1) => (None, 1),
            Some(&RECORD_V2) => {
                let id = NotificationId::from_bytes(bytes.get(1..17).unwrap_or_default())
                    .ok_or_else(|| corrupt("truncated record id"))?;
                (Some(id), 17)
            }
            Some(other) => {
                return Err(SpoolError::Corrupt(format!(
                    "unknown record version {other}"
                )))
            }
            None => return Err(corrupt("empty record")),
        };
        let len_bytes: [u8; 4] = bytes
            .get(meta_at..meta_at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("truncated record header"))?;
        let meta_start = meta_at + 4;
        let meta_end = usize::try_from(u32::from_be_bytes(len_bytes))
            .ok()
            .and_then(|len| meta_start.checked_add(len))
            .ok_or_else(|| corrupt("metadata length out of range"))?;
        let meta = bytes
            .get(meta_start..meta_end)
            .ok_or_else(|| corrupt("truncated metadata"))?;
        let mut meta: M =
            serde_json::from_slice(meta).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        if let Some(id) = id {
            meta.set_id(id.to_string());
        }
        Ok(Record {
            meta,
            body: Bytes::copy_from_slice(bytes.get(meta_end..).unwrap_or_default()),
        })
    }
}

/// Writes `id` into a record made by [`Record::encode`].
pub fn stamp_id(record: &mut [u8], id: NotificationId) {
    if record.first() == Some(&RECORD_V2) {
        if let Some(slot) = record.get_mut(1..17) {
            slot.copy_from_slice(&id.to_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantined() -> QuarantineRecord {
        Record {
            meta: QuarantineMeta {
                id: String::new(),
                source: "tus".into(),
                received_ms: 5,
                reason_kind: "not_json".into(),
                reason: "expected value".into(),
                content_type: None,
                headers: vec![],
                peer: "127.0.0.1".into(),
            },
            body: Bytes::from_static(b"\xff\x00not json{"),
        }
    }

    #[test]
    fn a_record_round_trips_its_body_byte_for_byte_with_its_stamped_id() {
        let record = quarantined();
        let mut bytes = record.encode().unwrap();
        let id = NotificationId::new(5);
        stamp_id(&mut bytes, id);
        let decoded = QuarantineRecord::decode(&bytes).unwrap();
        assert_eq!(decoded.meta.id, id.to_string());
        assert_eq!(decoded.body, record.body);
        assert_eq!(decoded.meta.reason, record.meta.reason);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let bytes = quarantined().encode().unwrap();
        for cut in 0..bytes.len().min(40) {
            assert!(
                QuarantineRecord::decode(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        assert!(QuarantineRecord::decode(&[9, 0, 0, 0, 0]).is_err());
        let mut huge = bytes.clone();
        huge[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(QuarantineRecord::decode(&huge).is_err());
    }

    #[test]
    fn a_version_1_record_still_decodes() {
        let meta = serde_json::json!({"id": "01KAV9FT00BR6ZK7R3ZGFJ8W7A", "source": "datil",
            "received_ms": 1, "reason_kind": "not_json", "reason": "x", "content_type": null,
            "headers": [], "peer": "127.0.0.1"});
        let meta = serde_json::to_vec(&meta).unwrap();
        let mut bytes = vec![RECORD_V1];
        bytes.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&meta);
        bytes.extend_from_slice(b"body");
        let record = QuarantineRecord::decode(&bytes).unwrap();
        assert_eq!(record.meta.id, "01KAV9FT00BR6ZK7R3ZGFJ8W7A");
        assert_eq!(record.body.as_ref(), b"body");
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
    fn ids_are_parsed_strictly() {
        let largest = "7ZZZZZZZZZZZZZZZZZZZZZZZZZ";
        assert_eq!(
            NotificationId::parse(largest),
            Some(NotificationId(ulid::Ulid(u128::MAX)))
        );
        assert_eq!(
            NotificationId::parse(&largest.to_lowercase()),
            NotificationId::parse(largest)
        );
        // Past the largest id: the ulid crate alone reads it as `7ZZ…`.
        for past in ["8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "ZZZZZZZZZZZZZZZZZZZZZZZZZZ"] {
            assert!(ulid::Ulid::from_string(past).is_ok());
            assert!(
                matches!(
                    past.parse::<NotificationId>(),
                    Err(IdError::Overflow { .. })
                ),
                "{past}"
            );
        }
        let id = NotificationId::new(1_000).to_string();
        for (bad, why) in [
            (format!(" {id}"), "length"),
            (format!("{id}\n"), "length"),
            (id[..25].to_owned(), "length"),
            (format!("{}U", &id[..25]), "character"),
            (format!("{}-", &id[..25]), "character"),
            (format!("{}é", &id[..25]), "character"),
        ] {
            let refused = bad.parse::<NotificationId>().expect_err(&bad);
            let kind = match refused {
                IdError::Length { .. } => "length",
                IdError::Character { .. } => "character",
                IdError::Overflow { .. } => "overflow",
            };
            assert_eq!(kind, why, "{bad:?}: {refused}");
        }
    }

    #[test]
    fn ids_follow_the_last_one_even_when_the_clock_steps_back() {
        let first = NotificationId::next_after(None, 10_000);
        let later = NotificationId::next_after(Some(first), 20_000);
        assert!(later > first && later.ms() == 20_000);
        let stepped_back = NotificationId::next_after(Some(later), 5_000);
        assert!(stepped_back > later);
        assert_eq!(stepped_back.ms(), 20_000);
    }

    #[test]
    fn ids_taken_in_one_millisecond_keep_their_order() {
        let mut last = None;
        let ids: Vec<_> = (0..1_000)
            .map(|_| {
                let id = NotificationId::next_after(last, 5_000);
                last = Some(id);
                id
            })
            .collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
