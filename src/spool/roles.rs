//! The spool by role, as a queue hands out a producer and a consumer:
//! ingress holds a [`Producer`] (it stores and quarantines, and reads
//! health to decide a 503), the forwarder a [`Consumer`] (it leases,
//! completes, and asks whether a subscription is paused). Each is the
//! same spool underneath; admins hold the whole [`Spool`].

use std::time::Duration;

use super::{Health, Lease, NotificationId, Received, Spool, SpoolError, Stored};
use crate::delivery::Delivery;
use crate::providers::Notification;

/// What ingress may do with the spool. Cheap to clone.
#[derive(Clone)]
pub struct Producer(pub(super) Spool);

impl Producer {
    /// See [`Spool::store`].
    pub async fn store(
        &self,
        received: Received,
        notification: Notification,
    ) -> Result<Stored, SpoolError> {
        self.0.store(received, notification).await
    }

    /// See [`Spool::quarantine`].
    pub async fn quarantine(
        &self,
        received: Received,
        reason_kind: &str,
        reason: String,
    ) -> Result<NotificationId, SpoolError> {
        self.0.quarantine(received, reason_kind, reason).await
    }

    /// See [`Spool::health`].
    pub fn health(&self) -> Health {
        self.0.health()
    }

    /// See [`Spool::alive`].
    pub async fn alive(&self, within: Duration) -> bool {
        self.0.alive(within).await
    }
}

/// What the forwarder may do with the spool. Cheap to clone.
#[derive(Clone)]
pub struct Consumer(pub(super) Spool);

impl Consumer {
    /// See [`Spool::lease`].
    pub async fn lease(&self, subscription: &str, max: usize) -> Result<Vec<Lease>, SpoolError> {
        self.0.lease(subscription, max).await
    }

    /// See [`Spool::complete`].
    pub async fn complete(&self, lease: &Lease, delivery: &Delivery) -> Result<(), SpoolError> {
        self.0.complete(lease, delivery).await
    }

    /// See [`Spool::is_paused`].
    pub fn is_paused(&self, subscription: &str) -> bool {
        self.0.is_paused(subscription)
    }
}
