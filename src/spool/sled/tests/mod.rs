//! Tests of what only the sled backend does, beside the contract it
//! passes (`contract_tests.rs`): how it groups flushes and what it leases
//! and backs up before one, its lock, damage to its records
//! (`durability.rs`, with the contract fixture's crash); its kept counts read back, mended and rebuilt
//! (`counts.rs`); the upgrade of a format-1 spool (`upgrade.rs`); backup
//! and restore into a directory (`backup.rs`); an API subscription and its
//! audit record landing together (`subscriptions.rs`).

use std::path::Path;

pub(crate) use super::contract_tests::{backend, config};
use crate::clock::Clock;
use crate::spool::contract::support::routes;
use crate::spool::Spool;

mod backup;
mod counts;
mod durability;
mod subscriptions;
mod upgrade;

/// Opens the sled spool in `dir/spool` (see [`config`]) on a clock that
/// follows tokio's.
pub(crate) async fn open(dir: &Path, names: &[&str]) -> (Spool, Clock) {
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config(dir), routes(names), clock)
        .await
        .unwrap();
    (spool, clock)
}
