//! A delivery's state as the stream holds it, read and rewritten outside
//! a lease (`docs/design/jetstream.md` §1.3): what replay, retry now,
//! purge, backfill and the orphans' reassignment build on. A rewrite reads
//! the current state of `P.d.{sub}.{id}` (the latest message on that
//! subject, by direct get; after a lost race from the stream's leader),
//! lets a rule decide what it becomes, and
//! republishes it expecting the sequence it read (0: no state yet). When
//! another writer got there first (10071), the rule is applied again to
//! what is there now, as sled's writer applies a change to what its store
//! holds when the change's turn comes. Also `deliveries_of`, with the
//! deliveries given to a notification after its fan-out (backfill,
//! orphans), and the index's list of the subscriptions that have states.

use super::staged::Reads;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use bytes::Bytes;

use super::complete::state_headers;
use super::deliveries::{decode_state, keyed, Mark, STATE};
use super::index::{storage, Family, Index};
use super::store::Published;
use super::subjects::{token, LEASE};
use super::JetStreamSpool;
use crate::delivery::Delivery;
use crate::spool::delivery_codec::{decode_delivery, encode_delivery};
use crate::spool::standing::Standing;
use crate::spool::{NotificationId, NotificationMeta, SpoolError};

/// Tries of one rewrite while other writers change the state under it.
const TRIES: usize = 5;

/// A delivery's state as the stream holds it now.
#[derive(Debug, Clone)]
pub(super) struct Current {
    /// Its message's sequence; 0 when it has none yet.
    pub sequence: u64,
    /// Its mark; `None` with no state.
    pub mark: Option<Mark>,
    /// The state; `None` when it has none (never attempted, or never
    /// given to that subscription).
    pub delivery: Option<Delivery>,
}

/// What a rule makes of the current state: the state to write and its
/// mark, or `None` to leave it as it is.
pub(super) type Rewritten = Option<(Delivery, Mark)>;

impl JetStreamSpool {
    /// The state of `subscription`'s delivery of `id`, read from the
    /// stream (the latest message on its subject): by a direct get, which
    /// a follower may answer a little behind, or from the stream's leader
    /// (`from_leader`), after a compare-and-set lost on what was read.
    pub(super) async fn current_state(
        &self,
        subscription: &str,
        id: NotificationId,
        from_leader: bool,
    ) -> Result<Current, SpoolError> {
        let subject = self.link.names().delivery(subscription, id);
        let stream = self.stream.clone();
        let asked = subject.clone();
        let read = self
            .bridge
            .run(async move {
                if from_leader {
                    match stream.get_last_raw_message_by_subject(&asked).await {
                        Ok(message) => Ok(Some(message)),
                        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                        Err(e) => Err(e.to_string()),
                    }
                } else {
                    match stream.direct_get_last_for_subject(asked).await {
                        Ok(message) => Ok(Some(message)),
                        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await?
            .map_err(|e| SpoolError::Unavailable(format!("JetStream: reading {subject}: {e}")))?;
        let Some(message) = read else {
            return Ok(Current {
                sequence: 0,
                mark: None,
                delivery: None,
            });
        };
        let mark = Mark::from_header(message.headers.get(LEASE).map(|v| v.as_str()));
        Ok(Current {
            sequence: message.sequence,
            mark: Some(mark),
            delivery: Some(decode_delivery(&message.payload)?),
        })
    }

    /// Rewrites `subscription`'s delivery of `id` as `rule` decides from
    /// the current state, with a compare-and-set on the sequence read; on
    /// a lost race `rule` decides again from what won (read from the
    /// leader, so a lagging follower's answer is not read twice). The new message's
    /// sequence, or `None` when `rule` left the state alone. The caller
    /// waits for the index ([`JetStreamSpool::caught_up`]) once it has
    /// written all it writes.
    pub(super) async fn rewrite<R>(
        &self,
        subscription: &str,
        id: NotificationId,
        mut rule: R,
    ) -> Result<Option<u64>, SpoolError>
    where
        R: FnMut(&Current) -> Result<Rewritten, SpoolError>,
    {
        let subject = self.link.names().delivery(subscription, id);
        for try_ in 0..TRIES {
            let current = self.current_state(subscription, id, try_ > 0).await?;
            let Some((delivery, mark)) = rule(&current)? else {
                return Ok(None);
            };
            let payload = Bytes::from(encode_delivery(&delivery)?);
            let write = self.next_write();
            let headers = state_headers(
                mark,
                delivery.due_at(),
                Standing::of(&delivery.state),
                current.sequence,
                &write,
            );
            match self
                .publish_record(subject.clone(), headers, payload)
                .await?
            {
                Published::Acked(ack) => return Ok(Some(ack.sequence)),
                Published::Taken => {} // another writer first: decide again
            }
        }
        Err(SpoolError::Unavailable(format!(
            "the state of {subject} changed under {TRIES} tries"
        )))
    }

    /// [`JetStreamSpool::rewrite`], leaving a state that cannot be read
    /// as it is (`None`), as sled's walks do, for a check to name.
    pub(super) async fn rewrite_readable<R>(
        &self,
        subscription: &str,
        id: NotificationId,
        rule: R,
    ) -> Result<Option<u64>, SpoolError>
    where
        R: FnMut(&Current) -> Result<Rewritten, SpoolError>,
    {
        match self.rewrite(subscription, id, rule).await {
            Err(SpoolError::Corrupt(what)) => {
                tracing::warn!(%what, "a delivery state that cannot be read is left as it is");
                Ok(None)
            }
            other => other,
        }
    }

    /// One delivery per subscription `id` was fanned out to (a never
    /// attempted one is pending), then those given to it later (a
    /// backfill, orphans reassigned), as sled answers.
    pub(crate) async fn deliveries_of(
        &self,
        id: NotificationId,
    ) -> Result<Vec<Delivery>, SpoolError> {
        let Some(entry) = self.index.get(Family::Notifications, id)? else {
            return Ok(Vec::new());
        };
        let meta: NotificationMeta = serde_json::from_slice(&entry.meta)
            .map_err(|e| SpoolError::Corrupt(format!("the metadata of {id}: {e}")))?;
        let fanned_out: Vec<String> = meta.subscriptions.iter().map(|s| token(s)).collect();
        let mut out = Vec::new();
        for (subscription, sub) in meta.subscriptions.iter().zip(&fanned_out) {
            out.push(match self.state_body(sub, id).await? {
                Some(delivery) => delivery,
                None => Delivery::new(subscription.as_str(), meta.received_ms),
            });
        }
        for sub in self.index.subscriptions_with(STATE)? {
            if fanned_out.contains(&sub) {
                continue;
            }
            if let Some(delivery) = self.state_body(&sub, id).await? {
                out.push(delivery);
            }
        }
        Ok(out)
    }

    /// The state the index names for the subscription token `sub` and
    /// `id`, read from the stream; `None` with no state (or one removed
    /// meanwhile).
    pub(super) async fn state_body(
        &self,
        sub: &str,
        id: NotificationId,
    ) -> Result<Option<Delivery>, SpoolError> {
        let Some(value) = self
            .index
            .db()?
            .get(keyed(STATE, sub, id))
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let sequence = decode_state(&value)?.sequence;
        let stream = self.stream.clone();
        let payload = self
            .bridge
            .run(async move { super::reads::body_at(&stream, sequence).await })
            .await??;
        payload.map(|p| decode_delivery(&p)).transpose()
    }
}

impl Index {
    /// The subscription tokens that have at least one key of the
    /// deliveries' kind `tag` (`D`, `W` or `F`), in order: one seek per
    /// subscription, however many keys each has.
    pub(super) fn subscriptions_with(&self, tag: u8) -> Result<Vec<String>, SpoolError> {
        subscriptions_in(&self.db()?, tag)
    }
}

/// [`Index::subscriptions_with`] on the index's database (as the fold
/// holds it).
pub(super) fn subscriptions_in(db: &impl Reads, tag: u8) -> Result<Vec<String>, SpoolError> {
    let end = vec![tag + 1];
    let mut from = vec![tag];
    let mut out = Vec::new();
    while let Some((key, _)) = db.first_in(&from, &end)? {
        let rest = key.get(1..).unwrap_or_default();
        let Some(at) = rest.iter().position(|b| *b == 0) else {
            // Not a deliveries' key: on to the one after it.
            from = key.to_vec();
            from.push(0);
            continue;
        };
        let sub = &rest[..at];
        if let Ok(sub) = std::str::from_utf8(sub) {
            out.push(sub.to_owned());
        }
        // Past every key of this subscription (`{tag}{sub}\0…`).
        from = Vec::with_capacity(sub.len() + 2);
        from.push(tag);
        from.extend_from_slice(sub);
        from.push(1);
    }
    Ok(out)
}
