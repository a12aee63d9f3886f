//! The spool's contract (`crate::spool::contract`) run against sled: each
//! test on a spool of its own in a temporary directory.

use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::{ByteSize, HumanDuration, SledConfig, SpoolBackend, SpoolConfig};
use crate::spool::contract::{Fixture, Keep};
use crate::spool::{Backend, CheckReport, Counts, Routes, Spool, SpoolError};

/// A sled spool in a temporary directory (removed with the fixture).
pub(crate) struct SledFixture {
    dir: tempfile::TempDir,
    /// The settings of the last open, for the check.
    keep: Cell<Keep>,
}

impl SledFixture {
    pub(crate) fn new() -> SledFixture {
        SledFixture {
            dir: tempfile::tempdir().unwrap(),
            keep: Cell::new(Keep::default()),
        }
    }

    /// The directory the spool is made in (as `spool/`).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> SpoolConfig {
        let keep = self.keep.get();
        SpoolConfig {
            retention: HumanDuration(keep.retention),
            dead_retention: keep.dead_retention.map(HumanDuration),
            ..config(self.dir())
        }
    }
}

/// A sled spool's settings, in `dir/spool`: a dedup window of 60 s, a
/// retention of an hour, fdatasync on, no floor of free space.
pub(crate) fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        backend: SpoolBackend::Sled,
        dedup_window: HumanDuration(Duration::from_secs(60)),
        retention: HumanDuration(Duration::from_secs(3600)),
        dead_retention: None,
        sled: SledConfig {
            path: dir.join("spool"),
            cache_capacity: ByteSize(8 << 20),
            sync_data: true,
            min_free: ByteSize(0),
        },
        jetstream: Default::default(),
    }
}

/// The sled backend under `spool`, for tests of sled itself.
pub(crate) fn backend(spool: &Spool) -> &super::SledSpool {
    match &spool.backend {
        Backend::Sled(sled) => sled,
        Backend::Jetstream(_) => panic!("a JetStream spool, not sled"),
    }
}

impl Fixture for SledFixture {
    async fn open(&self, keep: Keep, routes: Routes, clock: Clock) -> Result<Spool, SpoolError> {
        self.keep.set(keep);
        Spool::open(&self.config(), routes, clock).await
    }

    async fn crash(&self, spool: Spool) {
        // Stopped with no last flush nor marks; sled lets go of its files
        // (their lock too), which a test in one process needs.
        backend(&spool).crash_at_stop();
        spool.close().await.unwrap();
    }

    async fn check(&self) -> Result<CheckReport, SpoolError> {
        Spool::check(&self.config(), false).await
    }

    /// sled's own walk over every record (`counts::recount`).
    async fn recount(&self, spool: &Spool) -> Counts {
        backend(spool).recount()
    }
}

crate::spool::contract::contract_tests!(SledFixture::new());

/// The suite's skip arm: a skipped test makes no fixture at all.
mod skipped {
    use super::SledFixture;

    fn never_made() -> SledFixture {
        panic!("a skipped contract test must not make its fixture")
    }

    crate::spool::contract::contract_test!(
        never_made(),
        unless = true,
        store::quarantine_keeps_the_raw_body_and_reason
    );
    crate::spool::contract::contract_test!(
        never_made(),
        unless = true,
        property::the_kept_counts_equal_a_recount_after_any_sequence_of_changes,
        property
    );
}
