//! The spool's reports on JetStream (`docs/design/jetstream.md` §1.5):
//! what operational events are made of comes from the fold, so the relay
//! that holds the duty `duty.events` hears every relay's attempts and
//! quarantined bodies, once, as the stream holds them; the others hear
//! none. Sled reports in-process instead (`Spool::complete`).
//!
//! An attempt is a report only when the forwarder recorded it: `complete`
//! writes the attempt and the state after it in the header
//! [`ATTEMPTED`] of the new state (the fold reads headers only), which a
//! replay, purge, wake or reassignment never carries. The notification's
//! words (source, type, subject, receipt) come from the index.
//!
//! The fold reports only until the duty's hold runs out ([`Reports::hold_until`],
//! set at each renewal): a relay whose lease lapsed stops at once. A
//! relay that takes the duty over reports from where its fold is then:
//! what other relays recorded between the old holder's last renewal and
//! the takeover (at most the lease's TTL) is not reported by either, and
//! what the old holder counted but had not stored yet when it crashed is
//! lost with it. So across a failover the attempt-made events (failing,
//! recovered, dead) may be missed, not told twice.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::duty::{real_now, EVENTS, RECONCILE};
use crate::delivery::{Attempt, Delivery, State};
use crate::spool::observe::Observer;
use crate::spool::{NotificationId, NotificationMeta, Observed, ObservedNotification, SpoolError};

/// On a delivery's state that `complete` wrote after a new attempt: that
/// attempt and the state after it (JSON, ASCII only).
pub(super) const ATTEMPTED: &str = "Relay-Attempted";

/// What [`ATTEMPTED`] holds.
#[derive(Debug, Serialize, Deserialize)]
struct Attempted {
    attempt: Attempt,
    state: State,
}

/// The header value for the attempt `delivery` gained over `before`
/// attempts, if it gained one (a stale retry entry is recorded with none).
pub(super) fn attempted_header(
    before: usize,
    delivery: &Delivery,
) -> Result<Option<String>, SpoolError> {
    if delivery.attempts.len() <= before {
        return Ok(None);
    }
    let Some(attempt) = delivery.attempts.last() else {
        return Ok(None);
    };
    let json = serde_json::to_string(&Attempted {
        attempt: attempt.clone(),
        state: delivery.state,
    })
    .map_err(|e| SpoolError::Storage(crate::spool::cause(e)))?;
    Ok(Some(ascii_json(&json)))
}

/// `json` with every character past ASCII as a `\u` escape (JSON's own),
/// so an answer excerpt in any script makes a valid header value. Only
/// strings hold such characters, and the escape is valid in a string.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Who the fold reports to, and until when it may.
#[derive(Default)]
pub(super) struct Reports {
    observer: OnceLock<Arc<Observer>>,
    until: Mutex<Option<Instant>>,
}

impl Reports {
    /// The spool's observer (its sink and on/off switch).
    pub(super) fn attach(&self, observer: Arc<Observer>) {
        let _ = self.observer.set(observer);
    }

    /// Reports go out until `until` (the events duty's hold), or not at
    /// all (`None`: another relay holds it).
    pub(super) fn hold_until(&self, until: Option<Instant>) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// Whether a report of what is folded now goes out.
    pub(super) fn wanted(&self) -> bool {
        let held = self
            .until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| real_now() < until);
        held && self.observer.get().is_some_and(|o| o.is_on())
    }

    pub(super) fn send(&self, report: Observed) {
        if let Some(observer) = self.observer.get() {
            observer.send(report);
        }
    }
}

/// The report of an attempt folded in: `header` is its [`ATTEMPTED`],
/// `meta` the notification's metadata as the index holds it.
pub(super) fn attempt_report(
    id: NotificationId,
    subscription: String,
    header: &str,
    meta: &[u8],
) -> Result<Observed, SpoolError> {
    let corrupt = |what: &str, e: serde_json::Error| {
        SpoolError::Corrupt(format!("{what} of {id}'s attempt report: {e}"))
    };
    let attempted: Attempted =
        serde_json::from_str(header).map_err(|e| corrupt("the attempt", e))?;
    let meta: NotificationMeta =
        serde_json::from_slice(meta).map_err(|e| corrupt("the notification", e))?;
    Ok(Observed::Attempted {
        notification: ObservedNotification {
            id,
            source: meta.source,
            event_type: meta.event_type,
            subject: meta.subject,
            received_ms: meta.received_ms,
        },
        subscription,
        attempt: attempted.attempt,
        state: attempted.state,
    })
}

/// The report of a body quarantined: its metadata, and its size (the
/// headers-only fold hears it from the server's `Nats-Msg-Size`).
pub(super) fn quarantine_report(
    id: NotificationId,
    meta: &str,
    bytes: Option<usize>,
) -> Option<Observed> {
    let meta: crate::spool::QuarantineMeta = serde_json::from_str(meta).ok()?;
    Some(Observed::Quarantined {
        id,
        source: meta.source,
        reason_kind: meta.reason_kind,
        reason: meta.reason,
        bytes: bytes.unwrap_or(0),
    })
}

impl super::JetStreamSpool {
    /// Reports go to the spool's `observer` (while the events duty is held).
    pub(crate) fn report_to(&self, observer: Arc<Observer>) {
        self.index.reports.attach(observer);
    }

    /// Whether this relay holds `duty` now (taking it if no relay does);
    /// for the events duty, the fold reports until the hold runs out. An
    /// error (the servers unreachable) holds nothing.
    pub(crate) async fn holds(&self, duty: crate::spool::Duty) -> bool {
        let name = match duty {
            crate::spool::Duty::Events => EVENTS,
            crate::spool::Duty::Reconcile => RECONCILE,
        };
        let hold = match self.duty_now(name).await {
            Ok(hold) => hold,
            Err(err) => {
                tracing::warn!(duty = name, error = %err, "a duty's lease not asked; not held");
                None
            }
        };
        if duty == crate::spool::Duty::Events {
            self.index.reports.hold_until(hold.map(|h| h.until));
        }
        hold.is_some_and(|h| h.live())
    }

    /// The newest receipt of `source` this relay's fold saw since open,
    /// from any relay's ingress.
    pub(crate) fn last_received_ms(&self, source: &str) -> Option<i64> {
        self.index.last_received_ms(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_header_is_ascii_and_reads_back_whatever_the_answer_says() {
        let attempt = Attempt {
            number: 2,
            started_ms: 10,
            duration_ms: 3,
            outcome: crate::delivery::Outcome::Status {
                code: 503,
                retry_after_ms: None,
            },
            answer: Some("ocupado: café ☕ 𝄞\r\nretry".into()),
        };
        let delivery = Delivery {
            attempts: vec![attempt.clone(), attempt.clone()],
            state: State::Waiting { until_ms: 99 },
            ..Delivery::new("erp", 0)
        };
        assert_eq!(attempted_header(2, &delivery).unwrap(), None, "no new one");
        let header = attempted_header(1, &delivery).unwrap().unwrap();
        assert!(header.is_ascii() && !header.contains('\n'), "{header}");
        let meta = r#"{"id":"x","source":"tus","received_ms":5,"event_type":"a","subject":"s","dedup_key":"k","provider_time":null,"content_type":null,"headers":[],"peer":"p"}"#;
        let id = NotificationId::new(5);
        let report = attempt_report(id, "erp".into(), &header, meta.as_bytes()).unwrap();
        let Observed::Attempted {
            notification,
            attempt: read,
            state,
            subscription,
        } = report
        else {
            panic!("an attempt");
        };
        assert_eq!((read, state), (attempt, State::Waiting { until_ms: 99 }));
        assert_eq!(
            (notification.source.as_str(), subscription.as_str()),
            ("tus", "erp")
        );
    }
}
