//! Two durable pull consumers per subscription: `P_s_{sub}`, filtered on
//! every notification (first attempts), and `P_r_{sub}`, filtered on the
//! subscription's own delivery states (retries marked `due`). A lease
//! fetches from the retries first, so a retry due now goes before first
//! attempts stored earlier, as the contract has it (sled's order). Explicit
//! acks, no BackOff and no MaxDeliver (the schedule is the relay's,
//! `docs/design/jetstream.md` §1.3). The ack wait outlasts an attempt, so
//! a lease is never handed to a second relay while the first still sends
//! it; a dead relay's leases come back when it runs out. A consumer found
//! with a shorter ack wait (made by hand, or by a relay with a smaller
//! `ack_margin`) or another filter is set right before it is used, and
//! refused if the server will not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, FromConsumer, PullConsumer};

use super::JetStreamSpool;
use crate::config::JETSTREAM_LONGEST_ATTEMPT;
use crate::spool::SpoolError;

/// Which of a subscription's two consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Queue {
    /// `P_s_{sub}`: the notifications, for first attempts.
    FirstAttempts,
    /// `P_r_{sub}`: the subscription's states, for retries marked `due`.
    Retries,
}

/// The consumers this relay has made or found, by subscription.
#[derive(Default)]
pub(super) struct Consumers {
    known: Mutex<HashMap<(String, Queue), PullConsumer>>,
}

impl JetStreamSpool {
    /// How long the servers wait for an ack before handing a lease out
    /// again: longer than any attempt, by `ack_margin`.
    pub(super) fn ack_wait(&self) -> Duration {
        JETSTREAM_LONGEST_ATTEMPT + self.config.jetstream.ack_margin.0
    }

    /// Both of `subscription`'s consumers, made if they are not there (a
    /// new one starts with what is stored from now on; a backfill brings
    /// older notifications).
    pub(super) async fn consumers_of(&self, subscription: &str) -> Result<(), SpoolError> {
        for queue in [Queue::Retries, Queue::FirstAttempts] {
            self.consumer(subscription, queue).await?;
        }
        Ok(())
    }

    /// One of `subscription`'s consumers, made if it is not there.
    pub(super) async fn consumer(
        &self,
        subscription: &str,
        queue: Queue,
    ) -> Result<PullConsumer, SpoolError> {
        let key = (subscription.to_owned(), queue);
        if let Some(found) = self.consumers.lock_known().get(&key) {
            return Ok(found.clone());
        }
        let names = self.link.names();
        let (name, filter) = match queue {
            Queue::FirstAttempts => (names.consumer(subscription), names.notifications()),
            Queue::Retries => (
                names.retry_consumer(subscription),
                names.deliveries_of(subscription),
            ),
        };
        let jetstream = &self.config.jetstream;
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subjects: vec![filter],
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait(),
            max_deliver: -1,
            max_ack_pending: i64::from(jetstream.max_relays).saturating_mul(256) + 64,
            deliver_policy: DeliverPolicy::New,
            num_replicas: usize::from(jetstream.replicas),
            ..Default::default()
        };
        let stream = self.stream.clone();
        let unavailable = |e: &dyn std::fmt::Display| {
            SpoolError::Unavailable(format!(
                "JetStream: the consumer of subscription {subscription}: {e}"
            ))
        };
        let mut made: PullConsumer = self
            .bridge
            .run({
                let (stream, name, config) = (stream.clone(), name.clone(), config.clone());
                async move { stream.get_or_create_consumer(&name, config).await }
            })
            .await?
            .map_err(|e| unavailable(&e))?;
        let found = made.cached_info().config.clone();
        let mut found_filter = found.filter_subjects.clone();
        if !found.filter_subject.is_empty() {
            found_filter.push(found.filter_subject.clone());
        }
        if found.ack_wait < config.ack_wait || found_filter != config.filter_subjects {
            tracing::warn!(
                consumer = %name,
                found = ?found.ack_wait,
                wanted = ?config.ack_wait,
                found_filter = ?found_filter,
                "a JetStream consumer's ack wait is shorter than an attempt may last, or its \
                 filter is not its queue's (one consumer for first attempts and retries, as an \
                 earlier build made it); setting them"
            );
            // Everything else as found (a pause set on the server stays).
            let fixed = pull::Config {
                ack_wait: config.ack_wait.max(found.ack_wait),
                filter_subject: String::new(),
                filter_subjects: config.filter_subjects.clone(),
                ..pull::Config::try_from_consumer_config(found).map_err(|e| unavailable(&e))?
            };
            made = self
                .bridge
                .run(async move { stream.update_consumer(fixed).await })
                .await?
                .map_err(|e| unavailable(&e))?;
        }
        // A pause or resume whose server half did not happen (a crash
        // between): the flag, as folded, is the truth.
        let flagged = self.index.is_paused(subscription)?;
        if made.cached_info().paused != flagged {
            self.pause_on_server(subscription, flagged).await?;
        }
        let held = made.cached_info().config.ack_wait;
        if held <= JETSTREAM_LONGEST_ATTEMPT {
            return Err(SpoolError::Open {
                path: self.config.jetstream.index_path.clone(),
                detail: format!(
                    "the JetStream consumer {name} holds a lease {held:?}, not longer than an \
                     attempt may last ({JETSTREAM_LONGEST_ATTEMPT:?}): a second relay could \
                     send a delivery the first is still sending"
                ),
            });
        }
        self.consumers.lock_known().insert(key, made.clone());
        Ok(made)
    }
}

impl Consumers {
    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Queue), PullConsumer>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}
