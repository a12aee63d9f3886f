//! Reconciliation's two rules of a store on JetStream (as sled's writer
//! keeps them, `sled/writer/apply.rs`), decided before the store's
//! publish:
//!
//! - a `reconciled` notification (made of the provider's answer) for an
//!   invoice already standing at its status is a duplicate of the
//!   invoice's latest, read from this relay's index (so, across relays,
//!   as of what it folded: another relay's webhook of a moment ago may
//!   not be seen, and the answer is then stored once more);
//! - a webhook of a final status the relay already reconciled (a
//!   notification under its `reconciled_key`, inside the window) is a
//!   resend of that one: one direct get of the newest message under
//!   that key, only for a final status of an invoice the index holds.
//!
//! The relay asking again is not a resend: the store of a `reconciled`
//! notification that the dedup finds publishes no `P.e` (`store.rs`).

use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::store::{publish, Published};
use super::subjects::{Kind, META};
use super::JetStreamSpool;
use crate::providers::{Flag, Notification};
use crate::spool::invoices::InvoiceRef;
use crate::spool::{dedup, reconciled_key, NotificationMeta, SpoolError, Stored};

/// Whether a notification was made of the provider's answer.
fn is_reconciled(notification: &Notification) -> bool {
    notification.flags.contains(&Flag::Reconciled)
}

impl JetStreamSpool {
    /// The answer (and the sequence to wait for) when reconciliation makes
    /// this store a duplicate; `None`: store it.
    pub(super) async fn reconciled_duplicate(
        &self,
        source: &str,
        notification: &Notification,
        received_ms: i64,
    ) -> Result<Option<(Stored, u64)>, SpoolError> {
        let invoice = InvoiceRef::of(source, notification.subject.as_deref(), notification.status);
        let Some(invoice) = invoice else {
            return Ok(None);
        };
        let reconciled = is_reconciled(notification);
        if !reconciled && !invoice.status.is_final() {
            return Ok(None);
        }
        // One point read of the index, made here as the fold makes its
        // writes: a hop to the blocking pool for every final webhook cost
        // more than the read itself (design §4, "Where the relay's CPU goes").
        let Some(now) = self.index.invoice_now(&invoice.source, &invoice.subject)? else {
            return Ok(None); // an invoice new to the spool: nothing to find
        };
        if reconciled {
            return Ok((now.status == invoice.status).then_some((Stored::Duplicate(now.latest), 0)));
        }
        let names = self.link.names().clone();
        let key = reconciled_key(&invoice.subject, invoice.status);
        let wildcard = names.dedup_wildcard(&invoice.source, &key);
        let stream = self.stream.clone();
        let last = self
            .bridge
            .run(async move { stream.direct_get_last_for_subject(wildcard).await })
            .await?;
        let last = match last {
            Ok(last) => last,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(SpoolError::Unavailable(format!(
                    "JetStream: reading a reconciled notification: {e}"
                )))
            }
        };
        let Kind::Notification(made) = names.parse(last.subject.as_str()) else {
            return Err(SpoolError::Corrupt(format!(
                "{} under a dedup key",
                last.subject
            )));
        };
        let meta: NotificationMeta = last
            .headers
            .get(META)
            .and_then(|v| serde_json::from_str(v.as_str()).ok())
            .ok_or_else(|| SpoolError::Corrupt(format!("the metadata of {}", last.subject)))?;
        if !dedup::is_resend(
            meta.received_ms,
            received_ms,
            dedup::window_ms(&self.config),
        ) {
            return Ok(None);
        }
        let resend = names.resend(made, ulid::Ulid::new());
        let context = self.link.context().clone();
        let timeout = self.config.jetstream.store_timeout.0;
        let noted =
            self.bridge
                .run(async move {
                    publish(&context, resend, HeaderMap::new(), Bytes::new(), timeout).await
                })
                .await??;
        let sequence = match noted {
            Published::Acked(ack) => ack.sequence,
            Published::Taken => last.sequence,
        };
        Ok(Some((Stored::Duplicate(made), sequence)))
    }
}
