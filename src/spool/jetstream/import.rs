//! Another spool's records written into the stream, for `spool migrate
//! --to jetstream` (`docs/design/jetstream.md` §2 step 12). Each record
//! goes to its exact subject expecting nothing there (sequence 0), with
//! its id, `received_ms` and metadata as they were: a record copied
//! before answers 10071 (wrong last sequence) and is counted "already
//! there", so a run after an interrupted one goes on where it stopped and
//! never copies a record twice. A delivery's state is written as
//! `states.rs` writes one (mark, due time, standing, write mark), expecting
//! 0; a notification's resends (its invoice's count) are `P.e.{id}.{r}`
//! with `r` fixed by the resend's number, so they are copied once too. The
//! invoice index and the counts come from the fold, as for any message.
//!
//! An API subscription's consumer is made before its record is written:
//! a consumer made later would start after the notifications copied for
//! it (a new one starts with what comes next).

use async_nats::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;

use super::complete::{mark_of, state_headers};
use super::pause::PauseFlag;
use super::store::Published;
use super::subjects::META;
use super::JetStreamSpool;
use crate::spool::backup::NotificationItem;
use crate::spool::reconcile::encode_check;
use crate::spool::record::Record;
use crate::spool::standing::Standing;
use crate::spool::{
    audit, cause, delivery_codec::encode_delivery, subscriptions, AuditId, NotificationId,
    NotificationMeta, QuarantineMeta, ReconcileCheck, SpoolError, StuckInvoice,
};

/// How many records one import wrote, and found written before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub copied: u64,
    pub already_there: u64,
}

impl Imported {
    fn of(published: Published) -> Imported {
        match published {
            Published::Acked(_) => Imported {
                copied: 1,
                already_there: 0,
            },
            Published::Taken => Imported {
                copied: 0,
                already_there: 1,
            },
        }
    }

    pub fn add(&mut self, other: Imported) {
        self.copied += other.copied;
        self.already_there += other.already_there;
    }
}

/// Headers expecting nothing on the subject, with `meta` when given.
fn first_write(meta: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    if let Some(meta) = meta {
        headers.insert(META, meta);
    }
    headers
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, SpoolError> {
    serde_json::to_string(value).map_err(|e| SpoolError::Encode(cause(e)))
}

/// The ulid of a notification's `n`-th resend: the same on every run.
fn resend_ulid(id: NotificationId, n: u32) -> ulid::Ulid {
    let ms = u64::try_from(id.ms()).unwrap_or(0);
    ulid::Ulid::from_parts(ms, u128::from(n))
}

impl JetStreamSpool {
    /// An API subscription (as the spool encodes one): its consumer, then
    /// its record.
    pub(crate) async fn import_subscription(&self, bytes: &[u8]) -> Result<Imported, SpoolError> {
        self.open_for_writes()?;
        let subscription = subscriptions::decode(bytes)?;
        self.consumers_of(&subscription.name).await?;
        let subject = self.link.names().api_subscription(&subscription.name);
        let meta = json(&subscription)?;
        let published = self
            .publish_record(subject, first_write(Some(&meta)), Bytes::new())
            .await?;
        Ok(Imported::of(published))
    }

    /// A paused subscription: its flag (expecting none yet), and its
    /// consumer paused on the server.
    pub(crate) async fn import_paused(&self, subscription: &str) -> Result<Imported, SpoolError> {
        self.open_for_writes()?;
        let flag = json(&PauseFlag {
            subscription: subscription.to_owned(),
            paused: true,
        })?;
        let subject = self.link.names().pause(subscription);
        let published = self
            .publish_record(subject, first_write(Some(&flag)), Bytes::new())
            .await?;
        // Again on a rerun too: the first may have stopped between the two.
        self.pause_on_server(subscription, true).await?;
        Ok(Imported::of(published))
    }

    /// A notification, then its delivery states and its resends.
    pub(crate) async fn import_notification(
        &self,
        item: &NotificationItem,
    ) -> Result<Imported, SpoolError> {
        self.open_for_writes()?;
        let record = Record::<NotificationMeta>::decode(&item.record)?;
        let id = item.id;
        let names = self.link.names();
        let mut imported = Imported::default();
        let subject = names.notification(&record.meta.source, &record.meta.dedup_key, id);
        let meta = json(&record.meta)?;
        let published = self
            .publish_record(subject, first_write(Some(&meta)), record.body)
            .await?;
        imported.add(Imported::of(published));
        for delivery in &item.deliveries {
            let payload = Bytes::from(encode_delivery(delivery)?);
            let headers = state_headers(
                mark_of(delivery),
                delivery.due_at(),
                Standing::of(&delivery.state),
                0,
                &self.next_write(),
            );
            let subject = names.delivery(&delivery.subscription, id);
            let published = self.publish_record(subject, headers, payload).await?;
            imported.add(Imported::of(published));
        }
        let resends = item.invoice.map_or(0, |entry| entry.resends);
        for n in 0..resends {
            let subject = names.resend(id, resend_ulid(id, n));
            let published = self
                .publish_record(subject, first_write(None), Bytes::new())
                .await?;
            imported.add(Imported::of(published));
        }
        Ok(imported)
    }

    /// A quarantined body (as the spool encodes one), under its id.
    pub(crate) async fn import_quarantined(
        &self,
        id: NotificationId,
        record: &[u8],
    ) -> Result<Imported, SpoolError> {
        self.open_for_writes()?;
        let record = Record::<QuarantineMeta>::decode(record)?;
        let subject = self.link.names().quarantine(&record.meta.source, id);
        let meta = json(&record.meta)?;
        let published = self
            .publish_record(subject, first_write(Some(&meta)), record.body)
            .await?;
        Ok(Imported::of(published))
    }

    /// An audit record (as the spool encodes its entry), under its id.
    pub(crate) async fn import_audit(
        &self,
        id: AuditId,
        entry: &[u8],
    ) -> Result<Imported, SpoolError> {
        self.open_for_writes()?;
        let record = audit::decode_record(id, entry)?;
        let subject = self.link.names().audit(id);
        let meta = json(&record.entry)?;
        let published = self
            .publish_record(subject, first_write(Some(&meta)), Bytes::new())
            .await?;
        Ok(Imported::of(published))
    }

    /// The `n`-th reconcile check of an invoice (0 the oldest kept), in
    /// its slot.
    pub(crate) async fn import_check(
        &self,
        source: &str,
        subject: &str,
        n: u64,
        check: &ReconcileCheck,
    ) -> Result<Imported, SpoolError> {
        self.open_for_writes()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(encode_check(check)?);
        let slot = self
            .link
            .names()
            .check(source, subject, n % super::checks::KEPT);
        let meta = format!("{n} {encoded}");
        let published = self
            .publish_record(slot, first_write(Some(&meta)), Bytes::new())
            .await?;
        Ok(Imported::of(published))
    }

    /// The stuck check's marks: each one the index does not hold as it is.
    pub(crate) async fn import_stuck(
        &self,
        stuck: Vec<StuckInvoice>,
        walked: Vec<(String, NotificationId)>,
    ) -> Result<Imported, SpoolError> {
        self.open_for_writes()?;
        let held = self.stuck_marks().await?;
        let mut changes = crate::spool::StuckChanges::default();
        let mut imported = Imported::default();
        for mark in stuck {
            if held.stuck.contains(&mark) {
                imported.already_there += 1;
            } else {
                changes.marked.push(mark);
                imported.copied += 1;
            }
        }
        for (source, upto) in walked {
            if held.walked.contains(&(source.clone(), upto)) {
                imported.already_there += 1;
            } else {
                changes.walked.push((source, Some(upto)));
                imported.copied += 1;
            }
        }
        if imported.copied > 0 {
            self.save_stuck(changes).await?;
        }
        Ok(imported)
    }

    /// Waits until this relay's index holds everything in the stream
    /// (the end of an import, before its counts are read).
    pub(crate) async fn settle(&self) -> Result<(), SpoolError> {
        self.sync().await
    }
}
