//! What the spool reports as it records it: facts in the spool's words
//! (an attempt was recorded, a body was quarantined), for whoever turns
//! them into the relay's operational events. The spool knows nothing of
//! those; it hands each report to its observer's [`Observe::observe`] in
//! the recording task (on JetStream, the fold's, on the relay holding the
//! events duty: `jetstream/reports.rs`) (no queue that a burst could fill: the observer
//! aggregates as it takes them, and must never wait) and, while nobody
//! wants the reports, costs one atomic load per outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::{Lease, NotificationId};
use crate::delivery::{Attempt, Delivery, State};

/// Who takes the spool's reports.
pub trait Observe: Send + Sync {
    /// Takes one report at once (called in the task that recorded it).
    fn observe(&self, report: Observed);
    /// Reports it took but could not keep.
    fn dropped(&self) -> u64;
}

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

#[derive(Default)]
pub(super) struct Observer {
    sink: OnceLock<Arc<dyn Observe>>,
    on: AtomicBool,
}

impl Observer {
    /// Makes `sink` the observer; false if there is one already.
    pub fn start(&self, sink: Arc<dyn Observe>) -> bool {
        self.sink.set(sink).is_ok()
    }

    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Release);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire) && self.sink.get().is_some()
    }

    pub fn dropped(&self) -> u64 {
        self.sink.get().map_or(0, |sink| sink.dropped())
    }

    pub fn send(&self, report: Observed) {
        if let Some(sink) = self.sink.get() {
            sink.observe(report);
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
    use std::sync::Mutex;

    #[derive(Default)]
    struct Kept(Mutex<Vec<Observed>>);

    impl Observe for Kept {
        fn observe(&self, report: Observed) {
            self.0.lock().unwrap().push(report);
        }
        fn dropped(&self) -> u64 {
            7
        }
    }

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
    fn every_report_reaches_the_one_observer_none_is_queued() {
        let observer = Observer::default();
        assert!(!observer.is_on(), "no observer yet");
        let kept = Arc::new(Kept::default());
        assert!(observer.start(kept.clone()));
        assert!(
            !observer.start(Arc::new(Kept::default())),
            "one observer only"
        );
        observer.set_on(true);
        let sent: Vec<Observed> = (1..=5000).map(quarantined).collect();
        for report in &sent {
            observer.send(report.clone());
        }
        assert_eq!(*kept.0.lock().unwrap(), sent);
        assert_eq!(observer.dropped(), 7, "the observer's own count");
    }
}
