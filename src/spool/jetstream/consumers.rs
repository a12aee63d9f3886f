//! One durable pull consumer per subscription, `P_s_{sub}`: filtered on
//! every notification (first attempts) and on the subscription's own
//! delivery states (retries marked `due`), explicit acks, no BackOff and
//! no MaxDeliver (the schedule is the relay's, `docs/design/jetstream.md`
//! §1.3). Its ack wait outlasts an attempt, so a lease is never handed to
//! a second relay while the first still sends it; a dead relay's leases
//! come back when it runs out. A consumer found with a shorter ack wait
//! (made by hand, or by a relay with a smaller `ack_margin`) is set right
//! before it is used, and refused if the server will not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, FromConsumer, PullConsumer};

use super::JetStreamSpool;
use crate::config::JETSTREAM_LONGEST_ATTEMPT;
use crate::spool::SpoolError;

/// The consumers this relay has made or found, by subscription.
#[derive(Default)]
pub(super) struct Consumers {
    known: Mutex<HashMap<String, PullConsumer>>,
}

impl JetStreamSpool {
    /// How long the servers wait for an ack before handing a lease out
    /// again: longer than any attempt, by `ack_margin`.
    pub(super) fn ack_wait(&self) -> Duration {
        JETSTREAM_LONGEST_ATTEMPT + self.config.jetstream.ack_margin.0
    }

    /// `subscription`'s consumer, made if it is not there (a new one
    /// starts with what is stored from now on; a backfill brings older
    /// notifications).
    pub(super) async fn consumer(&self, subscription: &str) -> Result<PullConsumer, SpoolError> {
        if let Some(found) = self.consumers.lock_known().get(subscription) {
            return Ok(found.clone());
        }
        let names = self.link.names();
        let name = names.consumer(subscription);
        let jetstream = &self.config.jetstream;
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subjects: vec![names.notifications(), names.deliveries_of(subscription)],
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
        if found.ack_wait < config.ack_wait {
            tracing::warn!(
                consumer = %name,
                found = ?found.ack_wait,
                wanted = ?config.ack_wait,
                "a JetStream consumer's ack wait is shorter than an attempt may last; setting it"
            );
            // Everything else as found (a pause set on the server stays).
            let fixed = pull::Config {
                ack_wait: config.ack_wait,
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
        self.consumers
            .lock_known()
            .insert(subscription.to_owned(), made.clone());
        Ok(made)
    }
}

impl Consumers {
    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<String, PullConsumer>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}
