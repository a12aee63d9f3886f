//! A superseded notification at its first lease: the store cannot know it
//! is (the fold decides it later, in id order, `invoices.rs`), so the
//! lease asks the index, once it holds the message. A subscription that
//! skips superseded notifications gets its delivery purged instead of
//! leased, as sled purges it at the store; any other gets the record
//! marked, so the forwarder sends `x-relay-superseded`.

use super::deliveries::Mark;
use super::invoices::is_superseded;
use super::JetStreamSpool;
use crate::delivery::Delivery;
use crate::spool::{NotificationId, NotificationMeta, SpoolError};

impl JetStreamSpool {
    /// Marks `meta` superseded when the index says so; false when
    /// `subscription` skips it (its delivery is purged: nothing to lease).
    pub(super) async fn judge_superseded(
        &self,
        subscription: &str,
        id: NotificationId,
        meta: &mut NotificationMeta,
    ) -> Result<bool, SpoolError> {
        let Some(subject) = meta.subject.as_deref() else {
            return Ok(true);
        };
        if !is_superseded(&self.index.db()?, &meta.source, subject, id)? {
            return Ok(true);
        }
        meta.superseded = true;
        if !self.routes.load().skips_superseded(subscription) {
            return Ok(true);
        }
        let (received_ms, now_ms) = (meta.received_ms, self.clock.now_ms());
        let written = self
            .rewrite(subscription, id, |current| {
                if current.mark.is_some() {
                    return Ok(None); // attempted or purged already
                }
                let mut delivery = Delivery::new(subscription, received_ms);
                Ok(delivery
                    .purge(now_ms)
                    .ok()
                    .map(|()| (delivery, Mark::Final)))
            })
            .await?;
        if let Some(sequence) = written {
            self.caught_up(sequence).await?;
        }
        Ok(false)
    }
}
