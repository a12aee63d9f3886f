//! Leases (`docs/design/jetstream.md` §1.3): what a subscription's
//! consumer hands out, kept when it is leasable and acked as a skip when
//! not. Leasable are a notification fanned out to the subscription whose
//! delivery has no state yet (a first attempt), and the subscription's
//! current state (`seq` equal to the index's) marked `due` (a retry). The
//! lease holds the message's acker: a keep-alive (`in_progress` every
//! third of the ack wait) while it is held, an ack when its outcome is
//! recorded (`complete.rs`), and `nak(0)` when it is dropped without one,
//! sent by a task of the backend so it is on the wire before the next
//! fetch. A lease that waits wakes on what the fold applies, on a lease
//! let go of, when the next retry is due on the relay's Clock, and at an
//! idle poll (what another relay gave back, a lease whose ack wait ran
//! out), polled more rarely while nothing comes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::bridge::Bridge;
use super::consumers::Queue;
use super::deliveries::Mark;
use super::index::{Family, Index};
use super::subjects::{token, Kind, LEASE, META};
use super::JetStreamSpool;
use crate::delivery::Delivery;
use crate::spool::delivery_codec::decode_delivery;
use crate::spool::record::Record;
use crate::spool::{NotificationId, NotificationMeta, NotificationRecord, SpoolError};

/// The first idle poll, and the longest (under a clock that follows
/// tokio's, where polls only cost the test's time, the longest is longer).
const FIRST_POLL: Duration = Duration::from_millis(250);
const LONGEST_POLL: Duration = Duration::from_secs(1);
const LONGEST_POLL_TEST_CLOCK: Duration = Duration::from_secs(30);

/// A leased delivery (see [`crate::spool::Lease`]).
pub(crate) struct JetStreamLease {
    pub(super) id: NotificationId,
    pub(super) subscription: String,
    pub(super) delivery: Delivery,
    pub(super) notification: NotificationRecord,
    /// The sequence `P.d.{sub}.{id}` must still be at when the outcome is
    /// written (0: no state yet).
    pub(super) expected: u64,
    pub(super) acker: Option<Arc<Acker>>,
    /// Where its ack goes, as the lease journal keeps it.
    ack_subject: Option<String>,
    index: Arc<Index>,
    keepalive: JoinHandle<()>,
    pub(super) done: AtomicBool,
    naks: Arc<Naks>,
}

impl JetStreamLease {
    pub(crate) fn id(&self) -> NotificationId {
        self.id
    }

    pub(crate) fn subscription(&self) -> &str {
        &self.subscription
    }

    pub(crate) fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    pub(crate) fn notification(&self) -> &NotificationRecord {
        &self.notification
    }

    /// The outcome is recorded and acked: nothing to give back.
    pub(super) fn completed(&self) {
        self.done.store(true, Ordering::Release);
        self.keepalive.abort();
        self.forget();
    }

    fn forget(&self) {
        if let Some(subject) = &self.ack_subject {
            let _ = self.index.journal_done(subject);
        }
    }
}

impl Drop for JetStreamLease {
    fn drop(&mut self) {
        self.keepalive.abort();
        if !self.done.swap(true, Ordering::AcqRel) {
            // The journal keeps the lease until its nak is out: a crash
            // before that gives it back at the next open.
            match self.acker.take() {
                Some(acker) => self.naks.give_back(acker, self.ack_subject.take()),
                None => self.forget(),
            }
        }
    }
}

/// What a leasable message holds.
struct Leased {
    id: NotificationId,
    delivery: Delivery,
    notification: NotificationRecord,
    expected: u64,
}

/// A lease given back: its acker, and its ack subject in the journal.
type GivenBack = (Arc<Acker>, Option<String>);

/// The leases given back without an outcome, nak'd in order by one task.
pub(super) struct Naks {
    send: mpsc::UnboundedSender<GivenBack>,
    /// How many were given back; a waiting lease hears each at once.
    queued: watch::Sender<u64>,
    /// How many of them are on the wire.
    sent: Arc<watch::Sender<u64>>,
}

impl Naks {
    pub(super) fn start(
        bridge: &Bridge,
        client: async_nats::Client,
        index: Arc<Index>,
    ) -> (Arc<Naks>, JoinHandle<()>) {
        let (send, mut given) = mpsc::unbounded_channel::<GivenBack>();
        let sent = Arc::new(watch::Sender::new(0u64));
        let counted = sent.clone();
        let task = bridge.spawn(async move {
            let mut batch = Vec::new();
            // All given back so far, nak'd, then one flush for them: only
            // then are they out of the journal.
            while given.recv_many(&mut batch, 256).await > 0 {
                let taken = u64::try_from(batch.len()).unwrap_or(u64::MAX);
                let mut naked = Vec::new();
                for (acker, ack_subject) in batch.drain(..) {
                    match acker.ack_with(AckKind::Nak(None)).await {
                        Ok(()) => naked.extend(ack_subject),
                        Err(err) => tracing::debug!(error = %err, "a lease given back could not be nak'd; it comes back at the next open or after the ack wait"),
                    }
                }
                let sent = naked.len();
                match client.flush().await {
                    Ok(()) => {
                        for subject in naked {
                            let _ = index.journal_done(&subject);
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, leases = sent, "the naks of leases given back may not have gone out; the journal keeps them for the next open"),
                }
                counted.send_modify(|n| *n += taken);
            }
        });
        let naks = Naks {
            send,
            queued: watch::Sender::new(0),
            sent,
        };
        (Arc::new(naks), task)
    }

    fn give_back(&self, acker: Arc<Acker>, ack_subject: Option<String>) {
        if self.send.send((acker, ack_subject)).is_ok() {
            self.queued.send_modify(|n| *n += 1);
        }
    }

    /// Waits until every lease given back so far is nak'd on the wire.
    pub(super) async fn settle(&self, bridge: &Bridge) -> Result<(), SpoolError> {
        let target = *self.queued.borrow();
        let mut sent = self.sent.subscribe();
        bridge
            .run(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), sent.wait_for(|n| *n >= target))
                        .await;
            })
            .await
    }
}

impl JetStreamSpool {
    pub(crate) async fn lease(
        &self,
        subscription: &str,
        max: usize,
    ) -> Result<Vec<JetStreamLease>, SpoolError> {
        let mut applied = self.index.watch();
        let mut given_back = self.naks.queued.subscribe();
        let longest = if self.clock.follows_tokio() {
            LONGEST_POLL_TEST_CLOCK
        } else {
            LONGEST_POLL
        };
        let mut idle = FIRST_POLL;
        loop {
            self.open_for_writes()?;
            applied.borrow_and_update();
            given_back.borrow_and_update();
            self.naks.settle(&self.bridge).await?;
            // A paused subscription fetches nothing; the resume is folded
            // in, which wakes this loop.
            if !self.index.is_paused(subscription)? {
                self.wake_due(subscription, max).await?;
                let leases = self.fetch_leases(subscription, max).await?;
                if !leases.is_empty() {
                    return Ok(leases);
                }
            }
            let mut wait = idle;
            if let Some(at) = self.index.next_wake_ms(subscription)? {
                let until = u64::try_from(at - self.clock.now_ms()).unwrap_or(0);
                wait = wait.min(Duration::from_millis(until));
            }
            tokio::select! {
                _ = applied.changed() => idle = FIRST_POLL,
                _ = given_back.changed() => idle = FIRST_POLL,
                () = tokio::time::sleep(wait) => idle = (idle * 2).min(longest),
            }
        }
    }

    /// Up to `max` leases of what the consumers have now (no wait): the
    /// retries due first, then first attempts. A skip takes a place in a
    /// fetch, so a fetch that held skips is followed by another for the
    /// places they took, until the consumer has no more.
    async fn fetch_leases(
        &self,
        subscription: &str,
        max: usize,
    ) -> Result<Vec<JetStreamLease>, SpoolError> {
        let mut leases = Vec::new();
        for queue in [Queue::Retries, Queue::FirstAttempts] {
            loop {
                let want = max - leases.len();
                if want == 0 {
                    return Ok(leases);
                }
                let (got, fetched) = self.fetch_once(subscription, queue, want).await?;
                leases.extend(got);
                if fetched < want {
                    break;
                }
            }
        }
        Ok(leases)
    }

    /// One fetch of up to `max` messages (no wait), sorted into leases and
    /// skips; the skips are acked. The leases, and how many messages came.
    async fn fetch_once(
        &self,
        subscription: &str,
        queue: Queue,
        max: usize,
    ) -> Result<(Vec<JetStreamLease>, usize), SpoolError> {
        let consumer = self.consumer(subscription, queue).await?;
        // A fetch sent while the connection was down may never be
        // answered: bounded, so the forwarder hears of it and asks again.
        let within = self.config.jetstream.request_timeout.0;
        let fetched = self
            .bridge
            .run(async move {
                let fetch = async {
                    let mut batch = consumer.fetch().max_messages(max).messages().await?;
                    let mut out = Vec::new();
                    while let Some(message) = batch.next().await {
                        out.push(message?);
                    }
                    Ok::<_, async_nats::Error>(out)
                };
                match tokio::time::timeout(within, fetch).await {
                    Ok(fetched) => fetched,
                    Err(_) => Err(format!("no answer within {within:?}").into()),
                }
            })
            .await?
            .map_err(|e| {
                SpoolError::Unavailable(format!("JetStream: leasing for {subscription}: {e}"))
            })?;
        let mut top = 0;
        for message in &fetched {
            top = top.max(message.info().map_or(0, |info| info.stream_sequence));
        }
        if fetched.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let count = fetched.len();
        let mut held = Vec::with_capacity(count);
        for message in fetched {
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            let reply = message.reply.as_ref().map(|r| r.to_string());
            let (message, acker) = message.split();
            held.push((sequence, reply, message, Arc::new(acker)));
        }
        // The index must hold what the messages are judged against. What
        // cannot be judged now is given back at once: left alone, the
        // servers would hold it for the whole ack wait.
        if let Err(err) = self.caught_up(top).await {
            for (.., acker) in held {
                self.naks.give_back(acker, None);
            }
            return Err(err);
        }
        let mut leases = Vec::new();
        let mut skips = Vec::new();
        let mut rest = held.into_iter();
        while let Some((sequence, reply, message, acker)) = rest.next() {
            match self.leasable(subscription, sequence, &message).await {
                Ok(Some(leased)) => leases.push(self.hold(subscription, leased, acker, reply)),
                Ok(None) => skips.push(acker),
                Err(err) => {
                    // The leases made so far give themselves back as they drop.
                    for acker in skips.into_iter().chain([acker]) {
                        self.naks.give_back(acker, None);
                    }
                    for (.., acker) in rest {
                        self.naks.give_back(acker, None);
                    }
                    return Err(err);
                }
            }
        }
        let taken: Vec<String> = leases
            .iter()
            .filter_map(|l: &JetStreamLease| l.ack_subject.clone())
            .collect();
        self.index
            .journal_taken(&taken, crate::clock::Clock::system().now_ms())?;
        if !skips.is_empty() {
            self.bridge.spawn(async move {
                for acker in skips {
                    let _ = acker.ack().await;
                }
            });
        }
        Ok((leases, count))
    }

    /// The delivery, notification and expected sequence of a message that
    /// is leasable for `subscription`; `None` for a skip.
    async fn leasable(
        &self,
        subscription: &str,
        sequence: u64,
        message: &async_nats::Message,
    ) -> Result<Option<Leased>, SpoolError> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        match self.link.names().parse(message.subject.as_str()) {
            Kind::Notification(id) => {
                let Some(meta) = header(META) else {
                    return Ok(None);
                };
                let mut meta: NotificationMeta = serde_json::from_str(&meta)
                    .map_err(|e| SpoolError::Corrupt(format!("the metadata of {id}: {e}")))?;
                if !meta.subscriptions.iter().any(|s| s == subscription)
                    || self.index.state(subscription, id)?.is_some()
                    || !self.judge_superseded(subscription, id, &mut meta).await?
                {
                    return Ok(None);
                }
                let delivery = Delivery::new(subscription, meta.received_ms);
                let record = Record {
                    meta,
                    body: message.payload.clone(),
                };
                Ok(Some(Leased {
                    id,
                    delivery,
                    notification: record,
                    expected: 0,
                }))
            }
            Kind::Delivery {
                subscription: sub,
                id,
            } if sub == token(subscription) => {
                let current = self.index.state(subscription, id)?;
                let due = header(LEASE).as_deref() == Some(Mark::Due.header());
                if !due || current.map(|s| s.sequence) != Some(sequence) {
                    return Ok(None);
                }
                let delivery = decode_delivery(&message.payload)?;
                match self.notification_of(id).await? {
                    Some(notification) => Ok(Some(Leased {
                        id,
                        delivery,
                        notification,
                        expected: sequence,
                    })),
                    None => Ok(None), // removed meanwhile
                }
            }
            _ => Ok(None),
        }
    }

    async fn notification_of(
        &self,
        id: NotificationId,
    ) -> Result<Option<NotificationRecord>, SpoolError> {
        let Some(entry) = self.index.get(Family::Notifications, id)? else {
            return Ok(None);
        };
        let stream = self.stream.clone();
        let body = self
            .bridge
            .run(async move { super::reads::body_at(&stream, entry.sequence).await })
            .await??;
        let Some(body) = body else { return Ok(None) };
        let meta = serde_json::from_slice(&entry.meta)
            .map_err(|e| SpoolError::Corrupt(format!("the metadata of {id}: {e}")))?;
        Ok(Some(Record { meta, body }))
    }

    fn hold(
        &self,
        subscription: &str,
        leased: Leased,
        acker: Arc<Acker>,
        ack_subject: Option<String>,
    ) -> JetStreamLease {
        let every = self.ack_wait() / 3;
        let kept = acker.clone();
        let keepalive = self.bridge.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let _ = kept.ack_with(AckKind::Progress).await;
            }
        });
        JetStreamLease {
            id: leased.id,
            subscription: subscription.to_owned(),
            delivery: leased.delivery,
            notification: leased.notification,
            expected: leased.expected,
            acker: Some(acker),
            ack_subject,
            index: self.index.clone(),
            keepalive,
            done: AtomicBool::new(false),
            naks: self.naks.clone(),
        }
    }
}
