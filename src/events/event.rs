//! The relay's operational events, pure: what each one is called and the
//! JSON body it is delivered with. A body names what happened (the
//! subscription, the notification's id, source, event and invoice, the
//! counts) and never carries an invoice's body.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::clock::format_ms;
use crate::config::RELAY_SOURCE;
use crate::delivery::Attempt;
use crate::providers::{InvoiceStatus, Notification};
use crate::spool::{NotificationId, ObservedNotification, Received, StuckInvoice};

/// Ids an aggregated event lists (of its `count`), the first ones.
pub const FIRST_IDS: usize = 20;

/// One operational event.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    /// Deliveries of one subscription whose schedule ran out (an admin
    /// must replay or purge them): `count` of them from the event's time
    /// to `last_ms`, the first with its last attempt, and the first
    /// [`FIRST_IDS`] ids.
    DeliveryDead {
        subscription: String,
        notification: ObservedNotification,
        last: Attempt,
        count: u64,
        ids: Vec<NotificationId>,
        last_ms: i64,
    },
    /// A subscription's attempts failed `failures` times in a row.
    SubscriptionFailing {
        subscription: String,
        failures: u32,
        notification: ObservedNotification,
        last: Attempt,
        /// Recoveries and failings folded into this one (a flapping target).
        flaps: u32,
    },
    /// The first success after a subscription was reported failing.
    SubscriptionRecovered {
        subscription: String,
        failures: u32,
        notification: ObservedNotification,
        /// Failings and recoveries folded into this one.
        flaps: u32,
    },
    /// Bodies of one source its provider check refused were kept in the
    /// quarantine: `count` of them, the first as it was, the first
    /// [`FIRST_IDS`] ids.
    QuarantineAdded {
        id: NotificationId,
        source: String,
        reason_kind: String,
        reason: String,
        bytes: usize,
        count: u64,
        ids: Vec<NotificationId>,
    },
    /// The spool stopped taking notifications (503s) since `since_ms`.
    SpoolFull { condition: String },
    /// Nothing came from a source for its `expect_every`.
    SourceSilent {
        source: String,
        expect_every_ms: i64,
        /// Its last notification, when one came since the relay started.
        last_received_ms: Option<i64>,
    },
    /// A silent source was heard again.
    SourceRecovered {
        source: String,
        silent_since_ms: i64,
    },
    /// An invoice stayed `queued` past its source's `stuck_after`.
    InvoiceStuck {
        invoice: StuckInvoice,
        stuck_after_ms: i64,
    },
    /// A stuck invoice got its final status.
    InvoiceUnstuck {
        was: StuckInvoice,
        status: InvoiceStatus,
        latest: NotificationId,
    },
    /// The ACME certificate was renewed (or first issued).
    CertificateRenewed {
        domains: Vec<String>,
        issuer: String,
        not_after_ms: i64,
        /// Failed orders before this one succeeded.
        failures_before: u32,
    },
    /// Ordering the ACME certificate failed (told once per spell of
    /// failures); the certificate held, if any, keeps serving.
    CertificateFailing {
        domains: Vec<String>,
        error: String,
        /// Expiry of the certificate still served, if one is.
        serving_until_ms: Option<i64>,
    },
    /// Requests to a source's query API failed (told once per spell of
    /// failures; its automatic checks rest along its `failure_backoff`).
    ReconcileFailing {
        source: String,
        /// `AnswerError::kind`, `timeout` or `unreachable`.
        kind: String,
        error: String,
        http_status: Option<u16>,
        /// When the source's checks resume.
        retry_at_ms: Option<i64>,
    },
    /// The query API of a failing source answered again.
    ReconcileRecovered {
        source: String,
        failing_since_ms: i64,
        /// Requests that failed in the spell.
        failures: u32,
    },
    /// The spool takes notifications again.
    SpoolRecovered {
        full_since_ms: i64,
        refused_writes: u64,
        /// Operational events lost meanwhile (more than could wait).
        events_dropped: u64,
    },
}

impl RelayEvent {
    /// Its event type: what subscriptions filter on (`relay.*`).
    pub fn event_type(&self) -> &'static str {
        match self {
            RelayEvent::DeliveryDead { .. } => "relay.delivery.dead",
            RelayEvent::SubscriptionFailing { .. } => "relay.subscription.failing",
            RelayEvent::SubscriptionRecovered { .. } => "relay.subscription.recovered",
            RelayEvent::QuarantineAdded { .. } => "relay.quarantine.added",
            RelayEvent::SpoolFull { .. } => "relay.spool.full",
            RelayEvent::SpoolRecovered { .. } => "relay.spool.recovered",
            RelayEvent::SourceSilent { .. } => "relay.source.silent",
            RelayEvent::SourceRecovered { .. } => "relay.source.recovered",
            RelayEvent::InvoiceStuck { .. } => "relay.invoice.stuck",
            RelayEvent::InvoiceUnstuck { .. } => "relay.invoice.unstuck",
            RelayEvent::CertificateRenewed { .. } => "relay.certificate.renewed",
            RelayEvent::CertificateFailing { .. } => "relay.certificate.failing",
            RelayEvent::ReconcileFailing { .. } => "relay.reconcile.failing",
            RelayEvent::ReconcileRecovered { .. } => "relay.reconcile.recovered",
        }
    }

    /// The subscription it is about, where there is one: who else may
    /// receive it depends on who owns that one.
    pub fn subscription(&self) -> Option<&str> {
        match self {
            RelayEvent::DeliveryDead { subscription, .. }
            | RelayEvent::SubscriptionFailing { subscription, .. }
            | RelayEvent::SubscriptionRecovered { subscription, .. } => Some(subscription),
            _ => None,
        }
    }

    /// The invoice it is about, where there is one.
    fn subject(&self) -> Option<String> {
        match self {
            RelayEvent::DeliveryDead { notification, .. } => notification.subject.clone(),
            RelayEvent::InvoiceStuck { invoice, .. } => Some(invoice.subject.clone()),
            RelayEvent::InvoiceUnstuck { was, .. } => Some(was.subject.clone()),
            _ => None,
        }
    }

    /// The body delivered, for an event raised at `at_ms`.
    pub fn body(&self, at_ms: i64) -> Value {
        let mut body = match self {
            RelayEvent::DeliveryDead {
                subscription,
                notification,
                last,
                count,
                ids,
                last_ms,
            } => json!({
                "subscription": subscription,
                "count": count,
                "ids": ids_json(ids),
                "last_at": format_ms(*last_ms),
                "notification": notification_json(notification),
                "attempts": last.number,
                "last_attempt": attempt_json(last),
            }),
            RelayEvent::SubscriptionFailing {
                subscription,
                failures,
                notification,
                last,
                flaps,
            } => json!({
                "subscription": subscription,
                "consecutive_failures": failures,
                "notification": notification_json(notification),
                "last_attempt": attempt_json(last),
                "flaps": flaps,
            }),
            RelayEvent::SubscriptionRecovered {
                subscription,
                failures,
                notification,
                flaps,
            } => json!({
                "subscription": subscription,
                "failures_before": failures,
                "notification": notification_json(notification),
                "flaps": flaps,
            }),
            RelayEvent::QuarantineAdded {
                id,
                source,
                reason_kind,
                reason,
                bytes,
                count,
                ids,
            } => json!({
                "quarantine_id": id.to_string(),
                "source": source,
                "reason_kind": reason_kind,
                "reason": reason,
                "bytes": bytes,
                "count": count,
                "ids": ids_json(ids),
            }),
            RelayEvent::SpoolFull { condition } => json!({ "condition": condition }),
            RelayEvent::SourceSilent {
                source,
                expect_every_ms,
                last_received_ms,
            } => json!({
                "source": source,
                "expect_every_seconds": expect_every_ms / 1000,
                "last_received_at": last_received_ms.map(format_ms),
            }),
            RelayEvent::SourceRecovered {
                source,
                silent_since_ms,
            } => json!({
                "source": source,
                "silent_since": format_ms(*silent_since_ms),
            }),
            RelayEvent::InvoiceStuck {
                invoice,
                stuck_after_ms,
            } => json!({
                "source": invoice.source,
                "subject": invoice.subject,
                "queued_since": format_ms(invoice.since_ms),
                "stuck_after_seconds": stuck_after_ms / 1000,
                "stuck_after_ms": stuck_after_ms,
                "latest_notification": invoice.latest.to_string(),
            }),
            RelayEvent::InvoiceUnstuck {
                was,
                status,
                latest,
            } => json!({
                "source": was.source,
                "subject": was.subject,
                "queued_since": format_ms(was.since_ms),
                "status": status.as_str(),
                "notification": latest.to_string(),
            }),
            RelayEvent::CertificateRenewed {
                domains,
                issuer,
                not_after_ms,
                failures_before,
            } => json!({
                "domains": domains,
                "issuer": issuer,
                "not_after": format_ms(*not_after_ms),
                "failures_before": failures_before,
            }),
            RelayEvent::CertificateFailing {
                domains,
                error,
                serving_until_ms,
            } => json!({
                "domains": domains,
                "error": error,
                "serving_until": serving_until_ms.map(format_ms),
            }),
            RelayEvent::ReconcileFailing {
                source,
                kind,
                error,
                http_status,
                retry_at_ms,
            } => json!({
                "source": source,
                "kind": kind,
                "error": crate::redact::urls_in(error),
                "http_status": http_status,
                "retry_at": retry_at_ms.map(format_ms),
            }),
            RelayEvent::ReconcileRecovered {
                source,
                failing_since_ms,
                failures,
            } => json!({
                "source": source,
                "failing_since": format_ms(*failing_since_ms),
                "failures": failures,
            }),
            RelayEvent::SpoolRecovered {
                full_since_ms,
                refused_writes,
                events_dropped,
            } => json!({
                "full_since": format_ms(*full_since_ms),
                "refused_writes": refused_writes,
                "events_dropped": events_dropped,
            }),
        };
        body["type"] = self.event_type().into();
        body["at"] = format_ms(at_ms).into();
        body
    }

    /// What the spool stores for it: a notification of the source
    /// [`RELAY_SOURCE`], received at `at_ms`, deduplicated by `unique` (a
    /// fresh id: no two events are the same).
    pub fn stored(&self, at_ms: i64, unique: NotificationId) -> (Received, Notification) {
        let received = Received {
            source: RELAY_SOURCE.to_owned(),
            body: Bytes::from(self.body(at_ms).to_string()),
            content_type: Some("application/json".into()),
            headers: Vec::new(),
            peer: RELAY_SOURCE.to_owned(),
            received_ms: at_ms,
        };
        let notification = Notification {
            event_type: self.event_type().to_owned(),
            subject: self.subject(),
            dedup_key: format!("relay:{unique}"),
            provider_time: None,
            status: InvoiceStatus::Unknown,
            flags: Vec::new(),
        };
        (received, notification)
    }
}

fn notification_json(notification: &ObservedNotification) -> Value {
    json!({
        "id": notification.id.to_string(),
        "source": notification.source,
        "event": notification.event_type,
        "subject": notification.subject,
        "received_at": format_ms(notification.received_ms),
    })
}

fn ids_json(ids: &[NotificationId]) -> Value {
    ids.iter().map(ToString::to_string).collect()
}

/// An attempt without the target's answer (it may say anything), and with
/// any URL in its error detail redacted (see `redact`).
fn attempt_json(attempt: &Attempt) -> Value {
    let mut outcome = json!(attempt.outcome);
    if let Some(detail) = outcome.get_mut("detail") {
        if let Some(text) = detail.as_str() {
            *detail = crate::redact::urls_in(text).into_owned().into();
        }
    }
    json!({
        "number": attempt.number,
        "started_at": format_ms(attempt.started_ms),
        "duration_ms": attempt.duration_ms,
        "outcome": outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Outcome;

    const AT: i64 = 1_764_000_000_000;

    fn invoice() -> ObservedNotification {
        ObservedNotification {
            id: NotificationId::new(AT - 5000),
            source: "tusfacturas".into(),
            event_type: "facturacion.emitido".into(),
            subject: Some("0001-1234".into()),
            received_ms: AT - 5000,
        }
    }

    #[test]
    fn a_dead_delivery_names_the_invoice_and_the_last_attempt_not_its_body() {
        let first = invoice();
        let event = RelayEvent::DeliveryDead {
            subscription: "billing".into(),
            notification: first.clone(),
            last: Attempt {
                number: 4,
                started_ms: AT - 10,
                duration_ms: 7,
                outcome: Outcome::Status {
                    code: 500,
                    retry_after_ms: None,
                },
                answer: Some("stack trace with secrets".into()),
            },
            count: 3,
            ids: vec![first.id, NotificationId::new(AT - 4000)],
            last_ms: AT - 1,
        };
        let body = event.body(AT);
        assert_eq!(body["type"], "relay.delivery.dead");
        assert_eq!(body["subscription"], "billing");
        assert_eq!(body["count"], 3);
        assert_eq!(body["ids"][0], first.id.to_string());
        assert_eq!(body["ids"].as_array().map(Vec::len), Some(2));
        assert_eq!(body["last_at"], format_ms(AT - 1));
        assert_eq!(body["notification"]["subject"], "0001-1234");
        assert_eq!(body["notification"]["source"], "tusfacturas");
        assert_eq!(body["attempts"], 4);
        assert_eq!(body["last_attempt"]["outcome"]["code"], 500);
        assert!(!body.to_string().contains("secrets"), "no target answer");
        assert!(body["at"].as_str().is_some_and(|t| t.ends_with('Z')));
        let (received, notification) = event.stored(AT, NotificationId::new(AT));
        assert_eq!(received.source, RELAY_SOURCE);
        assert_eq!(notification.event_type, "relay.delivery.dead");
        assert_eq!(notification.subject.as_deref(), Some("0001-1234"));
        assert!(notification.dedup_key.starts_with("relay:"));
    }

    #[test]
    fn a_target_url_in_an_error_detail_keeps_no_query() {
        let event = RelayEvent::SubscriptionFailing {
            subscription: "billing".into(),
            failures: 5,
            notification: invoice(),
            last: Attempt {
                number: 5,
                started_ms: AT,
                duration_ms: 1,
                outcome: Outcome::Io {
                    detail:
                        "error sending request for url (http://u:pw@10.0.0.5/drop?apikey=s3cret)"
                            .into(),
                },
                answer: None,
            },
            flaps: 0,
        };
        let body = event.body(AT).to_string();
        assert!(body.contains("http://10.0.0.5/drop)"), "{body}");
        assert!(!body.contains("s3cret") && !body.contains("pw@"), "{body}");
    }

    #[test]
    fn a_failing_query_api_names_the_source_and_the_error_without_its_url() {
        let event = RelayEvent::ReconcileFailing {
            source: "nube".into(),
            kind: "unreachable".into(),
            error:
                "error sending request for url (https://api.nubefact.com/api/v1/uuid?token=s3cret)"
                    .into(),
            http_status: None,
            retry_at_ms: Some(AT + 60_000),
        };
        let body = event.body(AT);
        assert_eq!(body["type"], "relay.reconcile.failing");
        assert_eq!(body["source"], "nube");
        assert_eq!(body["kind"], "unreachable");
        assert_eq!(body["retry_at"], format_ms(AT + 60_000));
        assert!(!body.to_string().contains("s3cret"), "{body}");
        let (_, notification) = event.stored(AT, NotificationId::new(AT));
        assert_eq!(notification.subject, None);
        let recovered = RelayEvent::ReconcileRecovered {
            source: "nube".into(),
            failing_since_ms: AT - 60_000,
            failures: 3,
        }
        .body(AT);
        assert_eq!(recovered["type"], "relay.reconcile.recovered");
        assert_eq!(recovered["failures"], 3);
        assert_eq!(recovered["failing_since"], format_ms(AT - 60_000));
    }

    #[test]
    fn every_event_type_is_a_relay_event() {
        let events = [
            RelayEvent::SpoolFull {
                condition: "disk full".into(),
            },
            RelayEvent::SpoolRecovered {
                full_since_ms: AT,
                refused_writes: 3,
                events_dropped: 0,
            },
            RelayEvent::QuarantineAdded {
                id: NotificationId::new(AT),
                source: "datil".into(),
                reason_kind: "invalid_json".into(),
                reason: "expected value".into(),
                bytes: 12,
                count: 1,
                ids: vec![NotificationId::new(AT)],
            },
            RelayEvent::ReconcileFailing {
                source: "nube".into(),
                kind: "unauthorized".into(),
                error: "codigo 10: token".into(),
                http_status: Some(401),
                retry_at_ms: Some(AT + 60_000),
            },
            RelayEvent::ReconcileRecovered {
                source: "nube".into(),
                failing_since_ms: AT - 60_000,
                failures: 3,
            },
        ];
        for event in events {
            assert!(event.event_type().starts_with("relay."));
            assert_eq!(event.body(AT)["type"], event.event_type());
        }
    }
}
