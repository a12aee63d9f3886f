//! The audit log's records, whatever the backend: who changed what through
//! the admin API or the CLI, and when. The spool keeps them durably (an
//! admin's "who replayed this?" must survive a crash like the replay itself)
//! and lets retention remove them with quarantined bodies.
//!
//! Ids are time-ordered (a ULID whose time is the record's), handed out by
//! the writer in commit order like notification ids, so an id is also the
//! cursor of a page of the log: "older than this one".

use serde::{Deserialize, Serialize};

use super::SpoolError;

/// An audit record's id: its time, then its place among the records of the
/// same millisecond. Shown and parsed as a ULID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditId(pub ulid::Ulid);

impl AuditId {
    /// The id of a record made at `at_ms` in a log whose newest id is
    /// `last`: always after `last`, so ids follow the order of commits
    /// even within one millisecond or when the clock steps back.
    pub fn next_after(last: Option<AuditId>, at_ms: i64) -> AuditId {
        AuditId(super::record::ulid_after(last.map(|id| id.0), at_ms))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0 .0.to_be_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<AuditId> {
        let bytes: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        Some(AuditId(ulid::Ulid(u128::from_be_bytes(bytes))))
    }

    /// The Unix milliseconds in the id.
    pub fn ms(self) -> i64 {
        i64::try_from(self.0.timestamp_ms()).unwrap_or(i64::MAX)
    }
}

impl std::fmt::Display for AuditId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a text is not an audit id.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("not an audit record id: {why}")]
pub struct AuditIdError {
    pub text: String,
    pub why: super::record::IdError,
}

impl std::str::FromStr for AuditId {
    type Err = AuditIdError;

    fn from_str(text: &str) -> Result<AuditId, AuditIdError> {
        super::record::parse_ulid(text)
            .map(AuditId)
            .map_err(|why| AuditIdError {
                text: text.to_owned(),
                why,
            })
    }
}

impl Serialize for AuditId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One change an admin made, as the caller words it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The admin token's name, or `cli`.
    pub actor: String,
    /// What was done, e.g. `replay`, `purge`, `subscription.pause`.
    pub action: String,
    /// What it was done to: a notification id, a subscription, a filter as text.
    pub target: String,
    /// Anything else worth keeping (a count, a dry run, the old value).
    pub detail: serde_json::Value,
}

/// An audit entry as the spool keeps it: with its id and time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: AuditId,
    /// Unix milliseconds (the time in `id`).
    pub at_ms: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// The stored form: a version byte, then the entry as JSON (the id and time
/// are the key's).
const AUDIT_V1: u8 = 1;

pub(crate) fn encode_entry(entry: &AuditEntry) -> Result<Vec<u8>, SpoolError> {
    let mut out = vec![AUDIT_V1];
    serde_json::to_writer(&mut out, entry)
        .map_err(|e| SpoolError::Encode(crate::spool::cause(e)))?;
    Ok(out)
}

/// Decodes a stored entry; never panics on damaged bytes.
pub(crate) fn decode_record(id: AuditId, bytes: &[u8]) -> Result<AuditRecord, SpoolError> {
    let entry = match bytes.split_first() {
        Some((&AUDIT_V1, json)) => serde_json::from_slice(json)
            .map_err(|e| SpoolError::Corrupt(format!("audit record {id}: {e}")))?,
        Some((other, _)) => {
            return Err(SpoolError::Corrupt(format!(
                "audit record {id}: unknown version {other}"
            )))
        }
        None => return Err(SpoolError::Corrupt(format!("audit record {id}: empty"))),
    };
    Ok(AuditRecord {
        id,
        at_ms: id.ms(),
        entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            actor: "ops".into(),
            action: "replay".into(),
            target: "01KAV9FT00BR6ZK7R3ZGFJ8W7A".into(),
            detail: serde_json::json!({"subscription": "erp"}),
        }
    }

    #[test]
    fn an_id_is_a_cursor_that_round_trips_as_text() {
        let id = AuditId::next_after(None, 1_700_000_000_000);
        let parsed: AuditId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(id.ms(), 1_700_000_000_000);
        assert!("not-an-id".parse::<AuditId>().is_err());
        assert!("ZZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<AuditId>().is_err());
        let later = AuditId::next_after(Some(id), 1_600_000_000_000);
        assert!(later > id, "a clock stepped back still orders after");
        assert_eq!(serde_json::to_value(id).unwrap(), id.to_string());
    }

    #[test]
    fn a_record_round_trips_and_damage_is_an_error() {
        let id = AuditId::next_after(None, 5);
        let bytes = encode_entry(&entry()).unwrap();
        let record = decode_record(id, &bytes).unwrap();
        assert_eq!(record.entry, entry());
        assert_eq!(record.at_ms, 5);
        for cut in 0..bytes.len() {
            assert!(decode_record(id, &bytes[..cut]).is_err(), "cut {cut}");
        }
        assert!(decode_record(id, b"\x07{}").is_err());
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["actor"], "ops", "the entry is flattened: {json}");
    }
}
