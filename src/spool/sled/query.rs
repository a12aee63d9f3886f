//! Reads for the admin API: records newest first from a cursor, and one
//! quarantined body. Blocking, like the other queries: callers run them off
//! the async runtime.

use super::{keys, storage, SledSpool};
use crate::spool::record::{HasId, Record};
use crate::spool::{NotificationId, QuarantineRecord, SpoolError};

impl SledSpool {
    /// Records under `prefix`, newest first, strictly older than `before`
    /// when given. A damaged entry is an `Err` item, and ends the walk.
    pub fn newest_first<M>(
        &self,
        prefix: u8,
        before: Option<NotificationId>,
    ) -> impl Iterator<Item = Result<Record<M>, SpoolError>> + '_
    where
        M: serde::Serialize + for<'de> serde::Deserialize<'de> + HasId + 'static,
    {
        let items: Box<dyn Iterator<Item = Result<Record<M>, SpoolError>>> =
            match self.shared.store() {
                Ok(store) => {
                    let end = match before {
                        Some(id) => {
                            let mut key = vec![prefix];
                            key.extend_from_slice(&id.to_bytes());
                            key
                        }
                        None => vec![prefix + 1],
                    };
                    let range = store.tree.range(vec![prefix]..end).rev();
                    let mut failed = false;
                    Box::new(range.map_while(move |entry| {
                        // Held for the walk: a reopen waits for readers.
                        let _store = &store;
                        if failed {
                            return None;
                        }
                        let decoded = entry.map_err(storage).and_then(|(key, value)| {
                            Record::decode(&value).map_err(|err| {
                                SpoolError::Corrupt(format!(
                                    "{}: {err}",
                                    keys::id_of(&key)
                                        .map_or_else(|| "?".into(), |id| id.to_string())
                                ))
                            })
                        });
                        failed = decoded.is_err();
                        Some(decoded)
                    }))
                }
                Err(err) => Box::new(std::iter::once(Err(err))),
            };
        items
    }

    pub fn quarantine_record(
        &self,
        id: NotificationId,
    ) -> Result<Option<QuarantineRecord>, SpoolError> {
        let store = self.shared.store()?;
        store
            .get(&keys::quarantine(id))?
            .map(|bytes| Record::decode(&bytes))
            .transpose()
    }
}
