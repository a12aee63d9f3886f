//! The free-space guard: room kept on the spool's filesystem (statvfs
//! before each group), the states the writer is in when it lacks it
//! (full: stores refused; short of room: every write refused, nothing
//! leased), and the state it is in once sled itself failed.

use super::{lock, Blocked, Change, Write, Writer};
use crate::spool::SpoolError;

/// Bytes a group is expected to take on disk per byte of record (sled
/// writes about twice what it is given), plus a constant.
const SPACE_PER_BYTE: u64 = 2;
const SPACE_PER_GROUP: u64 = 64 << 10;
/// Room a full or short spool waits for, above its threshold, before it
/// takes writes again: some typical groups, so that the few segments sled
/// frees as it rewrites do not flip it back and forth (each flip an event
/// to operators).
pub(super) const ROOM_TO_RESUME: u64 = SPACE_PER_GROUP * 4;
/// What a change other than a store takes, besides its own value: keys,
/// index entries, the counts it moves.
const SPACE_PER_CHANGE: u64 = 512;

impl Writer {
    /// Refuses the stores and quarantines of a group that would eat into
    /// `min_free`, and every write of a group that would go below its
    /// floor; returns what may still be written.
    pub(super) fn guard_space(&mut self, group: Vec<Write>) -> Vec<Write> {
        let (stored, other) = group
            .iter()
            .fold((0, 0), |(stored, other), w| match &w.change {
                Change::Store(new) => (stored + new.record.len() as u64, other),
                Change::Quarantine { record, .. } => (stored + record.len() as u64, other),
                Change::Complete(done) => {
                    (stored, other + done.value.len() as u64 + SPACE_PER_CHANGE)
                }
                Change::Audit { entry, .. } => {
                    (stored, other + entry.len() as u64 + SPACE_PER_CHANGE)
                }
                Change::Check { value, .. } => {
                    (stored, other + value.len() as u64 + SPACE_PER_CHANGE)
                }
                Change::Replay { .. }
                | Change::Orphans { .. }
                | Change::Routes { .. }
                | Change::Discard { .. }
                | Change::Pause { .. }
                | Change::Subscription { .. }
                | Change::Backfill { .. }
                | Change::Purge { .. }
                | Change::RetryNow { .. }
                | Change::Stuck(_) => (stored, other + SPACE_PER_CHANGE),
            });
        let mut group = group;
        if stored > 0 {
            let mut needed = (stored + other) * SPACE_PER_BYTE + SPACE_PER_GROUP;
            if matches!(self.blocked, Some(Blocked::Full { .. })) {
                needed = needed.max(ROOM_TO_RESUME);
            }
            match self.check_space(self.min_free(), needed) {
                Ok(()) => {
                    self.leave_full();
                    return group;
                }
                Err(reason) => {
                    self.enter_full(reason.clone());
                    let (refused, kept): (Vec<Write>, Vec<Write>) =
                        group.into_iter().partition(|w| {
                            matches!(w.change, Change::Store(_) | Change::Quarantine { .. })
                        });
                    self.refuse(refused, &reason);
                    group = kept;
                }
            }
        }
        if group.is_empty() {
            return group;
        }
        match self.check_space(self.floor(), other * SPACE_PER_BYTE + SPACE_PER_GROUP) {
            Ok(()) => group,
            Err(reason) => {
                self.enter_short(&reason);
                self.refuse(group, &reason);
                Vec::new()
            }
        }
    }

    pub(super) fn min_free(&self) -> u64 {
        self.shared.config.sled.min_free.0
    }

    /// Below this, nothing at all is written: the lower half of `min_free`
    /// is the budget of outcomes and upkeep.
    pub(super) fn floor(&self) -> u64 {
        self.min_free() / 2
    }

    /// Whether `needed` bytes can be written and `keep` still be left free
    /// (`min_free` 0: no guard at all).
    pub(super) fn check_space(&self, keep: u64, needed: u64) -> Result<(), String> {
        let min_free = self.min_free();
        if min_free == 0 {
            return Ok(());
        }
        // Cannot tell: let sled try.
        let Some(free) = self.free_bytes() else {
            return Ok(());
        };
        if free >= keep.saturating_add(needed) {
            Ok(())
        } else {
            Err(format!(
                "disk full: {free} bytes free on the spool's filesystem, {min_free} kept free (spool.sled.min_free)"
            ))
        }
    }

    /// Bytes free on the spool's filesystem, if it can tell.
    fn free_bytes(&self) -> Option<u64> {
        #[cfg(test)]
        if let Some(free) = *lock(&self.shared.free_space) {
            return Some(free);
        }
        let stat = rustix::fs::statvfs(&self.shared.config.sled.path).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Below the floor: nothing more is written or leased until there is room.
    pub(super) fn enter_short(&mut self, reason: &str) {
        if self.short {
            return;
        }
        tracing::error!(error = %reason, "spool short of room: holding outcomes and upkeep, leasing nothing, until there is room");
        self.enter_full(reason.to_owned());
        self.set_short(true);
    }

    pub(super) fn set_short(&mut self, short: bool) {
        self.short = short;
        self.shared.short_of_room.send_replace(short);
    }

    pub(super) fn enter_full(&mut self, reason: String) {
        if self.blocked.is_some() {
            return;
        }
        tracing::error!(error = %reason, "spool cannot take notifications; answering 503 until there is room");
        let now = self.now_ms;
        {
            let mut health = lock(&self.shared.health);
            health.writable = false;
            health.condition = Some(reason.clone());
            health.since_ms = Some(now);
        }
        self.blocked = Some(Blocked::Full { since_ms: now });
    }

    pub(super) fn leave_full(&mut self) {
        let Some(Blocked::Full { since_ms, .. }) = self.blocked else {
            return;
        };
        self.blocked = None;
        let refused = {
            let mut health = lock(&self.shared.health);
            health.writable = true;
            health.condition = None;
            health.since_ms = None;
            health.refused_writes
        };
        tracing::info!(
            after_s = (self.now_ms - since_ms).max(0) / 1000,
            refused_writes_so_far = refused,
            "spool writable again"
        );
    }

    pub(super) fn refuse(&mut self, group: Vec<Write>, reason: &str) {
        lock(&self.shared.health).refused_writes += group.len() as u64;
        let err = SpoolError::Unavailable(reason.to_owned());
        for write in group {
            let _ = write.reply.send(Err(err.clone()));
        }
    }

    /// sled failed a write: the store is done for in this process.
    pub(super) fn enter_failure(&mut self, err: &SpoolError) {
        if self.is_failed() {
            return;
        }
        let reason = err.to_string();
        tracing::error!(error = %reason, "the spool's store failed; answering 503 and leasing nothing; the relay replaces its process once there is room");
        {
            let mut health = lock(&self.shared.health);
            health.writable = false;
            health.fatal = true;
            health.condition = Some(reason.clone());
            health.since_ms = Some(self.now_ms);
        }
        self.blocked = Some(Blocked::Failed { reason });
        self.set_short(true);
    }
}
