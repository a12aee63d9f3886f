//! The spool's reads: one record, pages and whole-spool walks, the invoice
//! index, the audit log. All async: a backend that blocks (sled) reads on
//! tokio's blocking pool, and a walk comes as a [`RecordStream`] a few
//! records ahead of its reader.

use super::*;

impl Spool {
    // === queries: a backend that blocks does it off the runtime ===

    /// Runs a blocking read of the sled backend off the async runtime;
    /// on a backend that does not read it yet, `Unsupported(what)`.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        what: &'static str,
        read: impl FnOnce(&sled::SledSpool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        match &self.backend {
            Backend::Sled(b) => {
                let b = b.clone();
                blocking(move || read(&b)).await
            }
            Backend::Jetstream(_) => Err(SpoolError::Unsupported(what)),
        }
    }

    /// Streams a blocking walk of the sled backend, a few records ahead of
    /// the reader (see [`RecordStream`]); on a backend that does not walk
    /// it yet, one `Unsupported(what)` item.
    fn walk<T: Send + 'static>(
        &self,
        what: &'static str,
        walk: impl FnOnce(&sled::SledSpool) -> Walk<'_, T> + Send + 'static,
    ) -> RecordStream<T> {
        match &self.backend {
            Backend::Sled(b) => {
                let b = b.clone();
                RecordStream::blocking(move |send| {
                    for record in walk(&b) {
                        if !send(record) {
                            break; // the reader let go
                        }
                    }
                })
            }
            Backend::Jetstream(_) => RecordStream::blocking(move |send| {
                send(Err(SpoolError::Unsupported(what)));
            }),
        }
    }

    pub async fn notification(
        &self,
        id: NotificationId,
    ) -> Result<Option<NotificationRecord>, SpoolError> {
        if let Backend::Jetstream(b) = &self.backend {
            return Box::pin(b.notification(id)).await;
        }
        self.read("read a notification", move |b| b.notification(id))
            .await
    }

    /// Whether `id` is a quarantined body.
    pub async fn is_quarantined(&self, id: NotificationId) -> Result<bool, SpoolError> {
        if let Backend::Jetstream(b) = &self.backend {
            return Box::pin(b.is_quarantined(id)).await;
        }
        self.read("look up the quarantine", move |b| b.is_quarantined(id))
            .await
    }

    /// All notifications, oldest first; a damaged record is an `Err` item and
    /// the walk goes on past it.
    pub fn notifications(&self) -> RecordStream<NotificationRecord> {
        if let Backend::Jetstream(b) = &self.backend {
            return b.notifications(false, None);
        }
        self.walk("walk the notifications", |b| Box::new(b.notifications()))
    }

    /// All quarantined bodies, oldest first, damaged ones as `Err` items.
    pub fn quarantined(&self) -> RecordStream<QuarantineRecord> {
        if let Backend::Jetstream(b) = &self.backend {
            return b.quarantined(false, None);
        }
        self.walk("walk the quarantine", |b| Box::new(b.quarantined()))
    }

    /// Notifications newest first, strictly older than `before` when given;
    /// a damaged record is an `Err` item and ends the walk.
    pub fn notifications_newest_first(
        &self,
        before: Option<NotificationId>,
    ) -> RecordStream<NotificationRecord> {
        if let Backend::Jetstream(b) = &self.backend {
            return b.notifications(true, before);
        }
        self.walk("page the notifications", move |b| {
            Box::new(b.newest_first(sled::NOTIFICATIONS, before))
        })
    }

    /// Quarantined bodies newest first, like [`Spool::notifications_newest_first`].
    pub fn quarantined_newest_first(
        &self,
        before: Option<NotificationId>,
    ) -> RecordStream<QuarantineRecord> {
        if let Backend::Jetstream(b) = &self.backend {
            return b.quarantined(true, before);
        }
        self.walk("page the quarantine", move |b| {
            Box::new(b.newest_first(sled::QUARANTINED, before))
        })
    }

    pub async fn quarantined_body(
        &self,
        id: NotificationId,
    ) -> Result<Option<QuarantineRecord>, SpoolError> {
        if let Backend::Jetstream(b) = &self.backend {
            return Box::pin(b.quarantine_record(id)).await;
        }
        self.read("read a quarantined body", move |b| b.quarantine_record(id))
            .await
    }

    /// Up to `max` invoices after `after` in (source, subject) order, of
    /// `source` only when given: read from the invoice index, no scan.
    pub async fn invoices(
        &self,
        source: Option<&str>,
        after: Option<&InvoiceCursor>,
        max: usize,
    ) -> Result<Vec<Invoice>, SpoolError> {
        let (source, after) = (source.map(str::to_owned), after.cloned());
        if let Backend::Jetstream(b) = &self.backend {
            return b.invoices(source, after, max).await;
        }
        self.read("list invoices", move |b| {
            b.invoices(source.as_deref(), after.as_ref(), max)
        })
        .await
    }

    /// One invoice and its timeline, oldest notification first.
    pub async fn invoice(
        &self,
        source: &str,
        subject: &str,
    ) -> Result<Option<(Invoice, Vec<TimelineEntry>)>, SpoolError> {
        let (source, subject) = (source.to_owned(), subject.to_owned());
        if let Backend::Jetstream(b) = &self.backend {
            return b.invoice(source, subject).await;
        }
        self.read("read an invoice", move |b| b.invoice(&source, &subject))
            .await
    }

    /// Up to `max` `queued` notifications of `source` after `after`,
    /// received at or before `until_ms`, oldest first, with their subject:
    /// from a time-ordered index, no scan.
    pub async fn waiting(
        &self,
        source: &str,
        after: Option<NotificationId>,
        until_ms: i64,
        max: usize,
    ) -> Result<Vec<(NotificationId, String)>, SpoolError> {
        let source = source.to_owned();
        if let Backend::Jetstream(b) = &self.backend {
            return b.waiting(source, after, until_ms, max).await;
        }
        self.read("list waiting notifications", move |b| {
            b.waiting(&source, after, until_ms, max)
        })
        .await
    }

    /// One invoice as it stands now (its current status and latest
    /// notification), without its timeline.
    pub async fn invoice_now(
        &self,
        source: &str,
        subject: &str,
    ) -> Result<Option<Invoice>, SpoolError> {
        let (source, subject) = (source.to_owned(), subject.to_owned());
        if let Backend::Jetstream(b) = &self.backend {
            return b.invoice_now(source, subject).await;
        }
        self.read("read an invoice", move |b| b.invoice_now(&source, &subject))
            .await
    }

    /// The stuck check's marks, as last saved (a short read of its own
    /// keys, one per stuck invoice and per watched source).
    pub async fn stuck_marks(&self) -> Result<StuckMarks, SpoolError> {
        if let Backend::Jetstream(b) = &self.backend {
            return b.stuck_marks().await;
        }
        self.read("read the stuck marks", |b| b.stuck_marks()).await
    }

    /// Saves changes to the stuck check's marks through the writer; they
    /// ride on the next group flush (a change lost in a crash makes the
    /// check tell an invoice's turn again: at least once, like events).
    pub async fn save_stuck(&self, changes: StuckChanges) -> Result<(), SpoolError> {
        dispatch!(&self.backend, b => await b.save_stuck(changes))
    }

    /// The deliveries of one notification, one per subscription it was
    /// fanned out to (a never attempted one is pending).
    pub async fn deliveries_of(&self, id: NotificationId) -> Result<Vec<Delivery>, SpoolError> {
        if let Backend::Jetstream(b) = &self.backend {
            return Box::pin(b.deliveries_of(id)).await;
        }
        self.read("read deliveries", move |b| b.deliveries_of(id))
            .await
    }

    /// When the earliest not-yet-final delivery of `subscription` is due.
    pub async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, SpoolError> {
        if let Backend::Jetstream(b) = &self.backend {
            return Box::pin(b.next_due_ms(subscription)).await;
        }
        let subscription = subscription.to_owned();
        self.read("read when the next delivery is due", move |b| {
            b.next_due_ms(&subscription)
        })
        .await
    }

    /// When the oldest delivery still waiting for each of `subscriptions`
    /// was received (None when nothing waits, or it cannot be read now):
    /// two short reads each, cheap enough for every scrape; see the sled
    /// backend for how exact it is.
    pub async fn oldest_waiting_ms(
        &self,
        subscriptions: Vec<String>,
    ) -> Vec<(String, Option<i64>)> {
        if let Backend::Jetstream(b) = &self.backend {
            return subscriptions
                .into_iter()
                .map(|name| {
                    let at = b.oldest_waiting_ms(&name).ok().flatten();
                    (name, at)
                })
                .collect();
        }
        let names = subscriptions.clone();
        let read = self.read("read the oldest waiting", move |b| {
            Ok(names
                .into_iter()
                .map(|name| {
                    let at = b.oldest_waiting_ms(&name).ok().flatten();
                    (name, at)
                })
                .collect())
        });
        read.await
            .unwrap_or_else(|_| subscriptions.into_iter().map(|n| (n, None)).collect())
    }

    /// Audit records, newest first, strictly older than `before` when
    /// given; at most `limit`. An unreadable record is skipped and counted
    /// in [`Spool::health`].
    pub async fn audit_log(
        &self,
        before: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, SpoolError> {
        if let Backend::Jetstream(b) = &self.backend {
            return Box::pin(b.audit_log(before, limit)).await;
        }
        self.read("page the audit log", move |b| b.audit_log(before, limit))
            .await
    }

    /// The whole audit log, oldest first; a damaged record is an `Err` item
    /// and the walk goes on past it.
    pub fn audit_records(&self) -> RecordStream<AuditRecord> {
        if let Backend::Jetstream(b) = &self.backend {
            return b.audit_records();
        }
        self.walk("walk the audit log", |b| Box::new(b.audit_records()))
    }
}

/// A blocking backend's walk over records.
type Walk<'a, T> = Box<dyn Iterator<Item = Result<T, SpoolError>> + 'a>;

/// Runs a blocking backend call off the async runtime.
pub(super) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?
}
