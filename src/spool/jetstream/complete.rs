//! What moves a delivery after a lease (`docs/design/jetstream.md`
//! §1.3): `complete` writes the new state to `P.d.{sub}.{id}` with a
//! compare-and-set on the sequence the lease read, then acks; the waker
//! marks a `wait` state `due` once the relay's Clock says so, by
//! republishing it expecting its sequence (of two relays that race, one
//! wins), and the consumer then hands it out. Also `next_due_ms`; the
//! other writes of a state (replay, purge, ...) build on these in
//! `states.rs`.

use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::counts::standing_header;
use super::deliveries::Mark;
use super::lease::JetStreamLease;
use super::reports::{attempted_header, ATTEMPTED};
use super::store::Published;
use super::subjects::{DUE, LEASE, STANDING, WRITE};
use super::JetStreamSpool;
use crate::delivery::Delivery;
use crate::spool::delivery_codec::{decode_delivery, encode_delivery};
use crate::spool::standing::Standing;
use crate::spool::SpoolError;

/// Tries of one outcome's write when its state changed meanwhile.
const TRIES: usize = 3;

pub(super) fn mark_of(delivery: &Delivery) -> Mark {
    match (delivery.is_final(), delivery.due_at()) {
        (true, _) | (false, None) => Mark::Final,
        (false, Some(_)) => Mark::Wait,
    }
}

impl JetStreamSpool {
    pub(crate) async fn complete(
        &self,
        lease: &JetStreamLease,
        delivery: &Delivery,
    ) -> Result<(), SpoolError> {
        self.open_for_writes()?;
        if lease.done.load(Ordering::Acquire) {
            return Ok(()); // recorded before
        }
        let subject = self.link.names().delivery(&lease.subscription, lease.id);
        let payload = Bytes::from(encode_delivery(delivery)?);
        let write = self.next_write();
        // The attempt made, for the events' holder to report (`reports.rs`).
        let attempted = attempted_header(lease.delivery().attempts.len(), delivery)?;
        let mut expected = lease.expected;
        let mut sequence = None;
        for _ in 0..TRIES {
            let mut headers = state_headers(
                mark_of(delivery),
                delivery.due_at(),
                Standing::of(&delivery.state),
                expected,
                &write,
            );
            if let Some(attempted) = &attempted {
                headers.insert(ATTEMPTED, attempted.as_str());
            }
            match self
                .publish_record(subject.clone(), headers, payload.clone())
                .await?
            {
                Published::Acked(ack) => {
                    sequence = Some(ack.sequence);
                    break;
                }
                Published::Taken => {}
            }
            // Changed meanwhile: our own write whose ack was lost counts;
            // otherwise the outcome is recorded over what is there now.
            let stream = self.stream.clone();
            let last = subject.clone();
            let current = self
                .bridge
                .run(async move { stream.direct_get_last_for_subject(last).await })
                .await?
                .map_err(|e| {
                    SpoolError::Unavailable(format!("JetStream: reading {subject}: {e}"))
                })?;
            if current.headers.get(WRITE).map(|v| v.as_str()) == Some(write.as_str()) {
                sequence = Some(current.sequence);
                break;
            }
            expected = current.sequence;
        }
        let sequence = sequence.ok_or_else(|| {
            SpoolError::Unavailable(format!(
                "the state of {subject} changed under {TRIES} tries"
            ))
        })?;
        self.caught_up(sequence).await?;
        if let Some(acker) = lease.acker.clone() {
            // A lost ack only hands the message out again, as a skip.
            self.bridge.spawn(async move {
                let _ = acker.ack().await;
            });
        }
        lease.completed();
        Ok(())
    }

    /// Marks up to `max` of `subscription`'s `wait` states due by the
    /// relay's Clock `due`, each expecting the sequence the index holds.
    pub(super) async fn wake_due(&self, subscription: &str, max: usize) -> Result<(), SpoolError> {
        let now = self.clock.now_ms();
        let wakeable = self.index.wakeable(subscription, now, max)?;
        let mut top = 0;
        for (id, sequence) in wakeable {
            let stream = self.stream.clone();
            let Some(payload) = self
                .bridge
                .run(async move { super::reads::body_at(&stream, sequence).await })
                .await??
            else {
                continue; // replaced meanwhile
            };
            let woken = decode_delivery(&payload)?;
            let headers = state_headers(
                Mark::Due,
                woken.due_at(),
                Standing::of(&woken.state),
                sequence,
                &self.next_write(),
            );
            let subject = self.link.names().delivery(subscription, id);
            if let Published::Acked(ack) = self
                .publish_record(subject.clone(), headers, payload)
                .await?
            {
                top = top.max(ack.sequence);
            }
        }
        if top > 0 {
            self.caught_up(top).await?;
        }
        Ok(())
    }

    /// When `subscription`'s earliest delivery not yet final is due.
    pub(crate) async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, SpoolError> {
        self.index.next_due_ms(subscription)
    }

    pub(crate) fn oldest_waiting_ms(&self, subscription: &str) -> Result<Option<i64>, SpoolError> {
        self.index.oldest_waiting_ms(subscription)
    }

    /// A write's mark of its own: `{relay}.{n}`.
    pub(super) fn next_write(&self) -> String {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.relay)
    }
}

/// A state's headers: its mark, when it is due, where it stands (for the
/// counts), the sequence it replaces and which write it is.
pub(super) fn state_headers(
    mark: Mark,
    due: Option<i64>,
    standing: Standing,
    expected: u64,
    write: &str,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.to_string().as_str(),
    );
    headers.insert(LEASE, mark.header());
    if let (Some(due), false) = (due, mark == Mark::Final) {
        headers.insert(DUE, due.to_string().as_str());
    }
    headers.insert(STANDING, standing_header(standing));
    headers.insert(WRITE, write);
    headers
}
