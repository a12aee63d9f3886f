//! The fold of the stream into this relay's index, one message at a time
//! in stream order: which part of the index each kind of message changes.
//! Apart from `index.rs` so that the parts it calls (deliveries, pause)
//! can build on the index without the index building on them.

use super::deliveries::{fold_first_attempts, fold_state};
use super::index::{record_key, Family, Folded, Index};
use super::pause::fold_pause;
use super::subjects::Kind;
use crate::spool::SpoolError;

impl Index {
    /// Folds in one message of the stream: `kind` from its subject, the
    /// rest from its headers.
    pub(super) fn apply(
        &self,
        sequence: u64,
        kind: &Kind,
        folded: &Folded<'_>,
    ) -> Result<(), SpoolError> {
        let (meta, released) = (folded.meta, folded.released);
        if sequence <= self.applied() {
            return Ok(()); // seen before a restart of the tail
        }
        let db = self.db()?;
        let mut batch = sled::Batch::default();
        let value = |meta: &str| {
            let mut value = sequence.to_be_bytes().to_vec();
            value.extend_from_slice(meta.as_bytes());
            value
        };
        match (kind, meta) {
            (&Kind::Notification(id), Some(meta)) => {
                batch.insert(&record_key(Family::Notifications, id), value(meta));
                fold_first_attempts(&db, &mut batch, id, meta)?;
            }
            (&Kind::Quarantine(id), Some(meta)) => {
                batch.insert(&record_key(Family::Quarantine, id), value(meta));
            }
            // A quarantine record without metadata is its tombstone.
            (&Kind::Quarantine(id), None) => batch.remove(&record_key(Family::Quarantine, id)),
            (Kind::Pause, Some(meta)) => fold_pause(&mut batch, meta)?,
            (Kind::Delivery { subscription, id }, _) => {
                fold_state(&db, &mut batch, sequence, subscription, *id, folded)?;
            }
            _ => {}
        }
        if let Some(released) = released {
            batch.remove(&record_key(Family::Quarantine, released));
        }
        self.commit(&db, batch, sequence)
    }
}
