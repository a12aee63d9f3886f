//! Tests' hooks into the sled backend: damage, counts behind the writer's
//! back, a failing batch, a watermark moved back, the free space the
//! guard reads.

use super::{counts, keys, lock, SledSpool};
use crate::spool::{Counts, NotificationId};

impl SledSpool {
    /// Tests: the free-space guard reads `bytes` free from now on, whatever
    /// its filesystem has.
    pub fn pretend_free_space(&self, bytes: u64) {
        *lock(&self.shared.free_space) = Some(bytes);
    }

    /// Tests: the writer's next group fails before its batch is applied.
    pub fn fail_next_batch(&self) {
        self.shared
            .fail_next_batch
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tests: damage a delivery record in place.
    pub fn damage_delivery(&self, id: NotificationId, subscription: &str) {
        let store = self.shared.store().unwrap();
        store
            .tree
            .insert(
                keys::delivery(id, subscription),
                b"\x09not a delivery".as_slice(),
            )
            .unwrap();
    }

    /// Tests: the counts as a walk over every record makes them now.
    pub fn recount(&self) -> Counts {
        counts::recount(&self.shared.store().unwrap().tree)
            .unwrap()
            .counts
    }

    /// Tests: write (or, with `None`, remove) the kept counts of a
    /// subscription, or the totals, behind the writer's back.
    pub fn overwrite_counts(&self, subscription: Option<&str>, value: Option<&[u8]>) {
        let key = match subscription {
            Some(name) => keys::subscription_counts(name),
            None => keys::COUNT_TOTALS.to_vec(),
        };
        self.overwrite(key, value);
    }

    /// Tests: write (or, with `None`, remove) the kept counts of a source,
    /// or (`source` None) the mark that says they are kept.
    pub fn overwrite_source_counts(&self, source: Option<&str>, value: Option<&[u8]>) {
        let key = match source {
            Some(name) => keys::source_counts(name),
            None => keys::SOURCE_COUNTS_KEPT.to_vec(),
        };
        self.overwrite(key, value);
    }

    /// Tests: write (or, with `None`, remove) `key` behind the writer's back.
    fn overwrite(&self, key: Vec<u8>, value: Option<&[u8]>) {
        let tree = &self.shared.store().unwrap().tree;
        match value {
            Some(value) => tree.insert(key, value).unwrap(),
            None => tree.remove(key).unwrap(),
        };
    }

    /// Tests: move the durable watermark back, as if the newer stores were
    /// applied but not yet flushed.
    pub fn pretend_durable_upto(&self, id: NotificationId) {
        *lock(&self.shared.durable) = Some(id);
    }
}

impl SledSpool {
    /// Tests: the writer's stop (at the next close) is a crash's: no last
    /// flush, no acknowledged mark, no clean-stop mark. sled's files are
    /// let go, so the test can open them again in this process.
    pub fn crash_at_stop(&self) {
        self.shared
            .crash_at_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
