//! What the spool reports as it records it: facts in the spool's words
//! (an attempt was recorded, a body was quarantined), for whoever turns
//! them into the relay's operational events. The spool knows nothing of
//! those; it only never waits for its observer (a full channel drops the
//! report and counts it) and, while nobody wants the reports, costs one
//! atomic load per outcome.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use tokio::sync::mpsc;

use super::{Lease, NotificationId};
use crate::delivery::{Attempt, Delivery, State};

/// The notification an attempt was for, as a report names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNotification {
    pub id: NotificationId,
    pub source: String,
    pub event_type: String,
    pub subject: Option<String>,
    pub received_ms: i64,
}

/// One report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// An attempt's outcome was recorded; `state` is where the delivery
    /// stands after it.
    Attempted {
        notification: ObservedNotification,
        subscription: String,
        attempt: Attempt,
        state: State,
    },
    /// A body was quarantined.
    Quarantined {
        id: NotificationId,
        source: String,
        reason_kind: String,
        reason: String,
        bytes: usize,
    },
}

#[derive(Debug, Default)]
pub(super) struct Observer {
    sender: OnceLock<mpsc::Sender<Observed>>,
    on: AtomicBool,
    dropped: AtomicU64,
}

impl Observer {
    pub fn start(&self, capacity: usize) -> Option<mpsc::Receiver<Observed>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.sender.set(tx).ok().map(|()| rx)
    }

    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Release);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire) && self.sender.get().is_some()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn send(&self, report: Observed) {
        let Some(sender) = self.sender.get() else {
            return;
        };
        if sender.try_send(report).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reports the attempt `delivery` gained over its lease, if any (a
    /// stale retry entry is recorded with no new attempt).
    pub fn attempted(&self, lease: &Lease, delivery: &Delivery) {
        if !self.is_on() || delivery.attempts.len() <= lease.delivery().attempts.len() {
            return;
        }
        let Some(attempt) = delivery.attempts.last() else {
            return;
        };
        let meta = &lease.notification().meta;
        self.send(Observed::Attempted {
            notification: ObservedNotification {
                id: lease.id(),
                source: meta.source.clone(),
                event_type: meta.event_type.clone(),
                subject: meta.subject.clone(),
                received_ms: meta.received_ms,
            },
            subscription: lease.subscription().to_owned(),
            attempt: attempt.clone(),
            state: delivery.state,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantined(n: u64) -> Observed {
        Observed::Quarantined {
            id: NotificationId::new(n as i64),
            source: "tus".into(),
            reason_kind: "invalid_json".into(),
            reason: "not JSON".into(),
            bytes: 3,
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts_and_never_waits() {
        let observer = Observer::default();
        let mut reports = observer.start(2).expect("the first observer");
        assert!(observer.start(2).is_none(), "one observer only");
        let sent: Vec<Observed> = (1..=5).map(quarantined).collect();
        for report in &sent {
            observer.send(report.clone());
        }
        assert_eq!(observer.dropped(), 3);
        assert_eq!(reports.try_recv().ok().as_ref(), Some(&sent[0]));
        assert_eq!(reports.try_recv().ok().as_ref(), Some(&sent[1]));
        assert!(reports.try_recv().is_err());
    }
}
