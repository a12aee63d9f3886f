//! One check of one invoice: its query keys from its notifications, the
//! request its provider module builds, the call, the answer read; a final
//! answer stored as a notification flagged `reconciled`; the check
//! recorded, counted, and the source's health (failing/recovered) told.

use super::client::SendError;
use super::error::ReconcileError;
use super::source_state::Turn;
use super::sources::SourceEngine;
use super::Inner;
use crate::events::RelayEvent;
use crate::metrics::Reconciled;
use crate::providers::query::{Answer, AnswerError, QueryBuildError, QueryKeys};
use crate::spool::{CheckOutcome, Received, ReconcileCheck, Stored};

/// What a failed check keeps of an answer, for the admin.
const ANSWER_KEPT: usize = 16 << 10;

impl Inner {
    /// The query keys from the invoice's notifications, latest first: the
    /// first body its provider reads them from.
    async fn keys(
        &self,
        engine: &SourceEngine,
        source: &str,
        subject: &str,
    ) -> Result<QueryKeys, ReconcileError> {
        let unknown = || ReconcileError::UnknownInvoice {
            source: source.to_owned(),
            subject: subject.to_owned(),
        };
        let (_, timeline) = self
            .spool
            .invoice(source, subject)
            .await?
            .ok_or_else(unknown)?;
        for entry in timeline.iter().rev() {
            let Some(record) = self.spool.notification(entry.id).await? else {
                continue;
            };
            if let Some(keys) = engine.provider.query_keys(&record.body) {
                return Ok(keys);
            }
        }
        Err(ReconcileError::NoKeys {
            source: source.to_owned(),
            subject: subject.to_owned(),
        })
    }

    /// Asks the provider about one invoice, stores a final answer, records
    /// the check and counts it.
    pub(super) async fn check(
        &self,
        engine: &SourceEngine,
        source: &str,
        subject: &str,
        by: Option<&str>,
    ) -> Result<ReconcileCheck, ReconcileError> {
        let keys = self.keys(engine, source, subject).await?;
        let request = match engine.provider.build_query(&keys, &engine.credentials) {
            Ok(request) => request,
            Err(QueryBuildError::BadKeys(_)) => {
                return Err(ReconcileError::NoKeys {
                    source: source.to_owned(),
                    subject: subject.to_owned(),
                })
            }
            // Credentials that cannot be sent: the source's, like a refusal.
            Err(error) => {
                let at_ms = self.clock.now_ms();
                let kind = match error {
                    QueryBuildError::BadCredential(_) => "unauthorized",
                    _ => "unreadable",
                };
                let message = error.to_string();
                self.failed(engine, source, at_ms, kind, &message, None);
                let outcome = CheckOutcome::Failed {
                    kind: kind.to_owned(),
                    message,
                    http_status: None,
                    answer: None,
                };
                return self.recorded(source, subject, by, at_ms, outcome).await;
            }
        };
        // NubeFact's path is empty: the RUTA itself.
        let url = format!(
            "{}{}",
            engine.config.url.trim_end_matches('/'),
            request.path
        );
        let url = match request.path.is_empty() {
            true => engine.config.url.clone(),
            false => url,
        };
        let sent = engine
            .client
            .send(request.method, &url, &request.headers, request.body)
            .await;
        let at_ms = self.clock.now_ms();
        let outcome = match sent {
            Ok((status, body)) => {
                match engine.provider.read_answer(&keys, subject, status, &body) {
                    Ok(Answer::Final(notification)) => {
                        let status_told = notification.status;
                        let received = Received {
                            source: source.to_owned(),
                            body,
                            content_type: Some("application/json".into()),
                            headers: vec![("x-relay-origin".into(), "reconcile".into())],
                            peer: "reconcile".into(),
                            received_ms: at_ms,
                        };
                        let (notification, stored) =
                            match self.spool.store(received, notification).await? {
                                Stored::New(id) => (id, true),
                                Stored::Duplicate(id) => (id, false),
                            };
                        self.answered(engine, source, at_ms);
                        CheckOutcome::Final {
                            status: status_told,
                            notification,
                            stored,
                        }
                    }
                    Ok(Answer::Pending { said }) => {
                        self.answered(engine, source, at_ms);
                        CheckOutcome::Pending { said }
                    }
                    Err(error) => {
                        let kind = error.kind();
                        let message = error.to_string();
                        match error {
                            // The provider answered: the source is well.
                            AnswerError::NotFound(_) => self.answered(engine, source, at_ms),
                            _ => self.failed(engine, source, at_ms, kind, &message, Some(status)),
                        }
                        CheckOutcome::Failed {
                            kind: kind.to_owned(),
                            message,
                            http_status: Some(status),
                            answer: Some(body.slice(..body.len().min(ANSWER_KEPT))),
                        }
                    }
                }
            }
            Err(error) => {
                let http_status = match error {
                    SendError::TooLarge { status } => Some(status),
                    _ => None,
                };
                let message = error.to_string();
                self.failed(engine, source, at_ms, error.kind(), &message, http_status);
                CheckOutcome::Failed {
                    kind: error.kind().to_owned(),
                    message,
                    http_status,
                    answer: None,
                }
            }
        };
        self.recorded(source, subject, by, at_ms, outcome).await
    }

    /// Counts a check, records it on its invoice, and notes it.
    async fn recorded(
        &self,
        source: &str,
        subject: &str,
        by: Option<&str>,
        at_ms: i64,
        outcome: CheckOutcome,
    ) -> Result<ReconcileCheck, ReconcileError> {
        let counted = match &outcome {
            CheckOutcome::Final { .. } => Reconciled::Final,
            CheckOutcome::Pending { .. } | CheckOutcome::GaveUp => Reconciled::Pending,
            CheckOutcome::Failed { kind, .. } => Reconciled::of_failure(kind),
        };
        self.metrics.reconcile_request(source, counted);
        tracing::info!(%source, %subject, outcome = counted.as_str(), by = by.unwrap_or("schedule"), "invoice checked with its provider");
        let check = ReconcileCheck {
            at_ms,
            by: by.map(str::to_owned),
            outcome,
        };
        self.spool
            .record_check(source, subject, check.clone())
            .await?;
        self.note(source, subject, &check);
        Ok(check)
    }

    fn answered(&self, engine: &SourceEngine, source: &str, now_ms: i64) {
        let turn = engine.state().answered();
        if let Some(Turn::Recovered { since_ms, failures }) = turn {
            tracing::info!(%source, failures, "the provider's query API answers again");
            self.events.raise(
                RelayEvent::ReconcileRecovered {
                    source: source.to_owned(),
                    failing_since_ms: since_ms,
                    failures,
                },
                now_ms,
            );
        }
    }

    fn failed(
        &self,
        engine: &SourceEngine,
        source: &str,
        now_ms: i64,
        kind: &str,
        message: &str,
        http_status: Option<u16>,
    ) {
        let (turn, retry_at_ms) = {
            let mut state = engine.state();
            let turn = state.failed(now_ms, &engine.config.failure_backoff);
            (turn, state.resting_until_ms())
        };
        tracing::warn!(%source, kind, error = %crate::redact::urls_in(message), "a request to the provider's query API failed; the source's checks rest");
        if turn == Some(Turn::Failing) {
            self.events.raise(
                RelayEvent::ReconcileFailing {
                    source: source.to_owned(),
                    kind: kind.to_owned(),
                    error: message.to_owned(),
                    http_status,
                    retry_at_ms,
                },
                now_ms,
            );
        }
    }
}
