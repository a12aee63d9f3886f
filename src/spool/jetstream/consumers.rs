//! One durable pull consumer per subscription, `P_s_{sub}`: filtered on
//! every notification (first attempts) and on the subscription's own
//! delivery states (retries marked `due`), explicit acks, no BackOff and
//! no MaxDeliver (the schedule is the relay's, `docs/design/jetstream.md`
//! §1.3). Its ack wait outlasts an attempt, so a lease is never handed to
//! a second relay while the first still sends it; a dead relay's leases
//! come back when it runs out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};

use super::JetStreamSpool;
use crate::spool::SpoolError;

/// The longest forwarding timeout the ack wait is sized for. The spool
/// does not know each subscription's timeout yet (`Routes` does not carry
/// it); config validation keeps `timeout_first`/`timeout_retry` far below.
pub(super) const LONGEST_ATTEMPT: Duration = Duration::from_secs(60);

/// The consumers this relay has made or found, by subscription.
#[derive(Default)]
pub(super) struct Consumers {
    known: Mutex<HashMap<String, PullConsumer>>,
}

impl JetStreamSpool {
    /// How long the servers wait for an ack before handing a lease out
    /// again: longer than any attempt, by `ack_margin`.
    pub(super) fn ack_wait(&self) -> Duration {
        LONGEST_ATTEMPT + self.config.jetstream.ack_margin.0
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
        let made = self
            .bridge
            .run(async move { stream.get_or_create_consumer(&name, config).await })
            .await?
            .map_err(|e| {
                SpoolError::Unavailable(format!(
                    "JetStream: the consumer of subscription {subscription}: {e}"
                ))
            })?;
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
