//! An invoice's reconcile checks on JetStream (`spool/reconcile.rs`): the
//! n-th check of an invoice is `P.x.check.{src}.{subj}.{n mod 100}`, so
//! the stream itself keeps the last [`CHECKS_KEPT`] of each invoice (one
//! message per subject). `Relay-Meta` = `{n} {base64 of encode_check}`,
//! since the fold reads headers only. A check is published expecting
//! its slot to hold what the index says it holds (check n − 100, or
//! nothing), so two relays (or two calls) recording at once never take
//! one number: the loser catches up and takes the next. A check of an
//! invoice the index does not hold is refused (`NotFound`), as on sled.
//!
//! The fold keeps them in the index, in the order they were made:
//!
//! | key                                    | value                              |
//! |----------------------------------------|------------------------------------|
//! | `K` source 0x00 subject 0x00 n (u64 BE) | sequence (8) ++ the check's bytes |
//!
//! and drops check n − 100 as it folds check n. Retention removes an
//! invoice's checks with its last notification: the holder purges
//! `P.x.check.{src}.{subj}.>` after the notification's removal marker, and
//! every fold drops the invoice's `K` entries as it folds that marker
//! (`removal.rs`).

use super::staged::{Reads, Writes};
use async_nats::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;

use super::index::{storage, Index};
use super::invoices::timeline_prefix;
use super::store::{publish, Published};
use super::subjects::META;
use super::JetStreamSpool;
use crate::providers::InvoiceStatus;
use crate::spool::invoices::InvoiceRef;
use crate::spool::reconcile::{decode_check, encode_check, CHECKS_KEPT};
use crate::spool::{ReconcileCheck, SpoolError};

const CHECK: u8 = b'K';
/// Tries of one check when another takes its number meanwhile.
const TRIES: usize = 4;
pub(super) const KEPT: u64 = CHECKS_KEPT as u64;

fn prefix(source: &str, subject: &str) -> Vec<u8> {
    [&[CHECK], source.as_bytes(), &[0], subject.as_bytes(), &[0]].concat()
}

fn key(source: &str, subject: &str, n: u64) -> Vec<u8> {
    [prefix(source, subject).as_slice(), &n.to_be_bytes()].concat()
}

/// A check folded in: kept under its number, the one it replaced in the
/// stream (100 before) dropped.
pub(super) fn fold_check(
    batch: &mut Writes,
    sequence: u64,
    source: &str,
    subject: &str,
    meta: Option<&str>,
) -> Result<(), SpoolError> {
    let corrupt = |detail: &str| {
        SpoolError::Corrupt(format!("a reconcile check of {source}/{subject}: {detail}"))
    };
    let Some(meta) = meta else {
        return Ok(());
    };
    let (n, encoded) = meta.split_once(' ').ok_or_else(|| corrupt("no number"))?;
    let n: u64 = n.parse().map_err(|_| corrupt("its number"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| corrupt(&e.to_string()))?;
    let mut value = sequence.to_be_bytes().to_vec();
    value.extend_from_slice(&bytes);
    batch.insert(key(source, subject, n), value);
    if let Some(replaced) = n.checked_sub(KEPT) {
        batch.remove(key(source, subject, replaced));
    }
    Ok(())
}

/// Drops every check of an invoice from the index (its last
/// notification removed).
pub(super) fn unfold_checks(
    db: &impl Reads,
    batch: &mut Writes,
    source: &str,
    subject: &str,
) -> Result<(), SpoolError> {
    for (key, _) in db.all_with_prefix(&prefix(source, subject))? {
        batch.remove(key);
    }
    Ok(())
}

/// Where the next check of an invoice goes: its number and the sequence
/// its slot holds now (0: none).
struct Next {
    n: u64,
    expect: u64,
}

impl Index {
    /// The next check's place; `None` when the index holds no
    /// notification of the invoice.
    fn next_check(&self, source: &str, subject: &str) -> Result<Option<Next>, SpoolError> {
        let db = self.db()?;
        let held = db
            .scan_prefix(timeline_prefix(source, subject))
            .next()
            .transpose()
            .map_err(storage)?
            .is_some();
        if !held {
            return Ok(None);
        }
        let checks = prefix(source, subject);
        let last = db
            .scan_prefix(&checks)
            .next_back()
            .transpose()
            .map_err(storage)?;
        let n = match last {
            Some((key, _)) => {
                let bytes: [u8; 8] = key
                    .get(checks.len()..)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| SpoolError::Corrupt(format!("a check key {key:?}")))?;
                u64::from_be_bytes(bytes).saturating_add(1)
            }
            None => 0,
        };
        let expect = match n.checked_sub(KEPT) {
            Some(replaced) => match db.read(&key(source, subject, replaced))? {
                Some(value) => value
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| SpoolError::Corrupt("a check's sequence".into()))?,
                None => 0,
            },
            None => 0,
        };
        Ok(Some(Next { n, expect }))
    }

    /// Every invoice's checks: its source, subject and each check, an
    /// invoice's oldest first (for a backup).
    pub(super) fn all_checks(&self) -> Result<Vec<(String, String, ReconcileCheck)>, SpoolError> {
        let mut out = Vec::new();
        for item in self.db()?.scan_prefix([CHECK]) {
            let (key, value) = item.map_err(storage)?;
            let names = key
                .get(1..key.len().saturating_sub(8))
                .and_then(|names| names.strip_suffix(&[0]));
            let split = names.and_then(|names| {
                let zero = names.iter().position(|&b| b == 0)?;
                let source = std::str::from_utf8(&names[..zero]).ok()?;
                let subject = std::str::from_utf8(&names[zero + 1..]).ok()?;
                Some((source.to_owned(), subject.to_owned()))
            });
            let (Some((source, subject)), Some(bytes)) = (split, value.get(8..)) else {
                return Err(SpoolError::Corrupt(
                    "a reconcile check's key in the index".into(),
                ));
            };
            out.push((source, subject, decode_check(bytes)?));
        }
        Ok(out)
    }

    /// The checks of an invoice, oldest first.
    fn checks(&self, source: &str, subject: &str) -> Result<Vec<ReconcileCheck>, SpoolError> {
        let db = self.db()?;
        let mut out = Vec::new();
        for item in db.scan_prefix(prefix(source, subject)) {
            let (_, value) = item.map_err(storage)?;
            let bytes = value
                .get(8..)
                .ok_or_else(|| SpoolError::Corrupt("a reconcile check: too short".into()))?;
            out.push(decode_check(bytes)?);
        }
        Ok(out)
    }
}

impl JetStreamSpool {
    pub(crate) async fn checks(
        &self,
        source: String,
        subject: String,
    ) -> Result<Vec<ReconcileCheck>, SpoolError> {
        self.read_index(move |index| index.checks(&source, &subject))
            .await
    }

    /// Records a check; answers once durable and folded here.
    pub(crate) async fn record_check(
        &self,
        source: &str,
        subject: &str,
        check: &ReconcileCheck,
    ) -> Result<(), SpoolError> {
        self.open_for_writes()?;
        let unknown = || {
            SpoolError::NotFound(format!(
                "of invoice {source}/{subject} (a check needs its invoice)"
            ))
        };
        if InvoiceRef::of(source, Some(subject), InvoiceStatus::Unknown).is_none() {
            return Err(unknown());
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(encode_check(check)?);
        for _ in 0..TRIES {
            let (src, subj) = (source.to_owned(), subject.to_owned());
            let next = self
                .read_index(move |index| index.next_check(&src, &subj))
                .await?
                .ok_or_else(unknown)?;
            let slot = self.link.names().check(source, subject, next.n % KEPT);
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                next.expect.to_string().as_str(),
            );
            headers.insert(META, format!("{} {encoded}", next.n).as_str());
            let context = self.link.context().clone();
            let timeout = self.config.jetstream.store_timeout.0;
            let published = self
                .bridge
                .run(async move { publish(&context, slot, headers, Bytes::new(), timeout).await })
                .await??;
            match published {
                Published::Acked(ack) => return self.caught_up(ack.sequence).await,
                // Another check took this number: catch up, take the next.
                Published::Taken => self.sync().await?,
            }
        }
        Err(SpoolError::Unavailable(format!(
            "JetStream: the checks of {source}/{subject} changed under {TRIES} tries"
        )))
    }
}
