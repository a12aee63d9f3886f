//! The lease journal (`docs/design/jetstream.md` §1.3, "Restart
//! reclaim"): each lease's ack subject and the wall-clock time it was
//! taken, kept in the local index (`J{ack subject}` → ms), flushed once
//! per batch of leases. On open, the entries younger than the ack wait
//! less [`MARGIN`] are nak'd, so a relay that crashed gives its leases
//! back at once instead of after the ack wait; an older one may belong to
//! another relay by now and is only forgotten.

use std::time::Duration;

use super::index::{storage, Index};
use super::JetStreamSpool;
use crate::clock::Clock;
use crate::spool::SpoolError;

const JOURNAL: u8 = b'J';
/// Kept off the ack wait, so a nak never reaches a lease handed on since.
const MARGIN: Duration = Duration::from_secs(5);

fn key(ack_subject: &str) -> Vec<u8> {
    let mut key = vec![JOURNAL];
    key.extend_from_slice(ack_subject.as_bytes());
    key
}

impl Index {
    /// Notes leases taken at `now_ms`, durably.
    pub(super) fn journal_taken(&self, subjects: &[String], now_ms: i64) -> Result<(), SpoolError> {
        if subjects.is_empty() {
            return Ok(());
        }
        let db = self.db()?;
        let mut batch = sled::Batch::default();
        for subject in subjects {
            batch.insert(key(subject), &now_ms.to_be_bytes());
        }
        db.apply_batch(batch).map_err(storage)?;
        db.flush().map(|_| ()).map_err(storage)
    }

    /// Forgets a lease recorded or given back (not flushed: a stale entry
    /// only naks an acked message, which the server ignores).
    pub(super) fn journal_done(&self, subject: &str) -> Result<(), SpoolError> {
        self.db()?.remove(key(subject)).map(|_| ()).map_err(storage)
    }

    /// Takes every entry out: the ack subjects taken after `since_ms`.
    fn journal_drain(&self, since_ms: i64) -> Result<Vec<String>, SpoolError> {
        let db = self.db()?;
        let mut young = Vec::new();
        for item in db.scan_prefix([JOURNAL]) {
            let (k, v) = item.map_err(storage)?;
            let at = v.as_ref().try_into().map(i64::from_be_bytes).unwrap_or(0);
            if at > since_ms {
                if let Ok(subject) = std::str::from_utf8(&k[1..]) {
                    young.push(subject.to_owned());
                }
            }
            db.remove(k).map_err(storage)?;
        }
        db.flush().map(|_| ()).map_err(storage)?;
        Ok(young)
    }
}

impl JetStreamSpool {
    /// Naks the leases an earlier run of this relay held and did not let
    /// go of (a crash), when still inside their ack wait.
    pub(super) async fn reclaim_journal(&self) -> Result<(), SpoolError> {
        let window = self.ack_wait().saturating_sub(MARGIN);
        let since = Clock::system().now_ms() - i64::try_from(window.as_millis()).unwrap_or(0);
        let young = self.index.journal_drain(since)?;
        if young.is_empty() {
            return Ok(());
        }
        tracing::info!(
            leases = young.len(),
            "giving back the leases a crashed run of this relay held"
        );
        let client = self.link.client().clone();
        self.bridge
            .run(async move {
                for subject in young {
                    let _ = client.publish(subject, "-NAK".into()).await;
                }
                let _ = client.flush().await;
            })
            .await
    }
}
