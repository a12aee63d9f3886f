//! A walk over many records, read a few at a time: what the spool hands out
//! for its whole-spool reads (dump, newest-first pages, the audit log), so a
//! walk of a million records neither blocks the runtime nor sits in memory.
//!
//! A blocking backend walks on a blocking thread and sends each record
//! through a small bounded channel; the reader takes them with
//! [`RecordStream::next`]. Dropping the stream ends the walk at its next
//! record.

use tokio::sync::mpsc;

use super::SpoolError;

/// Records read ahead of the reader: enough to keep a fast reader busy.
const AHEAD: usize = 64;

/// Records of one walk, in its order; an `Err` item is a record the walk
/// could not read (whether it goes on past it is the walk's to say).
pub struct RecordStream<T> {
    records: mpsc::Receiver<Result<T, SpoolError>>,
}

impl<T: Send + 'static> RecordStream<T> {
    /// Streams what `walk` hands its `send`, run on a blocking thread;
    /// `send` answers false once the reader let go, and the walk stops.
    pub(super) fn blocking(
        walk: impl FnOnce(&mut dyn FnMut(Result<T, SpoolError>) -> bool) + Send + 'static,
    ) -> RecordStream<T> {
        let (sender, records) = mpsc::channel(AHEAD);
        tokio::task::spawn_blocking(move || {
            walk(&mut |record| sender.blocking_send(record).is_ok());
        });
        RecordStream { records }
    }

    /// The next record, or `None` at the end of the walk.
    pub async fn next(&mut self) -> Option<Result<T, SpoolError>> {
        self.records.recv().await
    }

    /// Every record that remains, or the first that could not be read:
    /// for tests and small walks (a whole-spool walk takes them one at a
    /// time instead).
    pub async fn collect(mut self) -> Result<Vec<T>, SpoolError> {
        let mut all = Vec::new();
        while let Some(record) = self.next().await {
            all.push(record?);
        }
        Ok(all)
    }

    /// How many records remain (tests).
    pub async fn count(mut self) -> usize {
        let mut count = 0;
        while self.next().await.is_some() {
            count += 1;
        }
        count
    }
}
