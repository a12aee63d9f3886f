//! The queries: one record, the records of a kind (oldest first, past
//! damage; or newest first from a cursor, for the admin API), a
//! notification's deliveries, due times, the audit log. Blocking: callers
//! run them off the async runtime.

use super::{audit, keys, lease, open, orphans, storage, SledSpool};
use crate::delivery::Delivery;
use crate::spool::record::{HasId, Record};
use crate::spool::{
    AuditId, AuditRecord, NotificationId, NotificationRecord, QuarantineRecord, SpoolError,
};

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

    pub fn notification(
        &self,
        id: NotificationId,
    ) -> Result<Option<NotificationRecord>, SpoolError> {
        let store = self.shared.store()?;
        store
            .get(&keys::notification(id))?
            .map(|bytes| Record::decode(&bytes))
            .transpose()
    }

    pub fn is_quarantined(&self, id: NotificationId) -> Result<bool, SpoolError> {
        Ok(self.shared.store()?.get(&keys::quarantine(id))?.is_some())
    }

    pub fn notifications(
        &self,
    ) -> impl Iterator<Item = Result<NotificationRecord, SpoolError>> + '_ {
        self.records(keys::NOTIFICATION)
    }

    pub fn quarantined(&self) -> impl Iterator<Item = Result<QuarantineRecord, SpoolError>> + '_ {
        self.records(keys::QUARANTINE)
    }

    fn records<M>(&self, prefix: u8) -> impl Iterator<Item = Result<Record<M>, SpoolError>> + '_
    where
        M: serde::Serialize + for<'de> serde::Deserialize<'de> + HasId + 'static,
    {
        let items: Box<dyn Iterator<Item = Result<Record<M>, SpoolError>>> =
            match self.shared.store() {
                Ok(store) => Box::new(open::records_of(store, prefix)),
                Err(err) => Box::new(std::iter::once(Err(err))),
            };
        items
    }

    pub fn deliveries_of(&self, id: NotificationId) -> Result<Vec<Delivery>, SpoolError> {
        let store = self.shared.store()?;
        let Some(bytes) = store.get(&keys::notification(id))? else {
            return Ok(Vec::new());
        };
        let notification: NotificationRecord = Record::decode(&bytes)?;
        let mut recorded = orphans::records_of(&store, id)?;
        let mut out = Vec::new();
        for name in &notification.meta.subscriptions {
            match recorded.iter().position(|d| &d.subscription == name) {
                Some(at) => out.push(recorded.remove(at)),
                None => out.push(Delivery::new(name, notification.meta.received_ms)),
            }
        }
        // Deliveries given to it later (from an orphan subscription).
        out.extend(recorded);
        Ok(out)
    }

    pub fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, SpoolError> {
        lease::next_due_ms(&self.shared, subscription)
    }

    pub fn oldest_waiting_ms(&self, subscription: &str) -> Result<Option<i64>, SpoolError> {
        lease::oldest_waiting_ms(&self.shared, subscription)
    }

    pub fn audit_log(
        &self,
        before: Option<AuditId>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, SpoolError> {
        let store = self.shared.store()?;
        let from = [keys::AUDIT];
        let until = match before {
            Some(before) => keys::audit(before).to_vec(),
            None => vec![keys::AUDIT + 1],
        };
        let mut out = Vec::new();
        for item in store.tree.range(from.to_vec()..until).rev() {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(storage)?;
            let decoded = keys::audit_id_of(&key)
                .ok_or_else(|| SpoolError::Corrupt(format!("malformed audit key {key:?}")))
                .and_then(|id| audit::decode_record(id, &value));
            match decoded {
                Ok(record) => out.push(record),
                Err(err) => self.shared.note_unreadable(err.to_string()),
            }
        }
        Ok(out)
    }

    pub fn audit_records(&self) -> impl Iterator<Item = Result<AuditRecord, SpoolError>> + '_ {
        let items: Box<dyn Iterator<Item = Result<AuditRecord, SpoolError>>> =
            match self.shared.store() {
                Ok(store) => Box::new(open::audit_records_of(store)),
                Err(err) => Box::new(std::iter::once(Err(err))),
            };
        items
    }
}
