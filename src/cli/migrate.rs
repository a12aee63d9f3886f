//! `spool migrate --to jetstream`: the stopped relay's sled spool copied
//! into JetStream (`spool::migrate`), with its progress on stderr every few
//! seconds and a summary of what was copied and verified on stdout.

use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Context;

use super::args::MigrateTarget;
use crate::clock::Clock;
use crate::config::Config;
use crate::spool::migrate::{migrate_to_jetstream, MigrateError, MigrationProgress};
use crate::spool::Routes;

/// How often the progress is told.
const EVERY: Duration = Duration::from_secs(3);

pub(super) fn migrate(config: &Config, to: MigrateTarget) -> anyhow::Result<()> {
    let MigrateTarget::Jetstream = to;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let clock = Clock::system();
    let sled = config.spool.sled.path.display().to_string();
    let stream = format!("{}_spool", config.spool.jetstream.prefix);
    eprintln!(
        "webhook-relay: copying the sled spool {sled} into the JetStream stream {stream} on {}",
        config.spool.jetstream.servers.join(", ")
    );
    let mut told = clock.instant_now();
    let tell = |progress: &MigrationProgress| {
        eprintln!(
            "webhook-relay: {} of {} notifications read; {} records copied, {} already there",
            progress.notifications,
            progress.notifications_total,
            progress.copied,
            progress.already_there
        );
    };
    let migrated = runtime.block_on(migrate_to_jetstream(
        &config.spool,
        Routes::from_config(config),
        clock,
        |progress| {
            if clock.instant_now() >= told + EVERY {
                told = clock.instant_now();
                tell(progress);
            }
            ControlFlow::Continue(())
        },
    ))?;
    tell(&migrated.progress);
    let counts = &migrated.counts;
    outln!(
        "migrated {sled} into {stream}: {} records copied, {} already there",
        migrated.progress.copied,
        migrated.progress.already_there
    )?;
    outln!(
        "verified: {} notifications, {} quarantined, {} audit records, {} API subscriptions, \
         the same in both",
        counts.notifications,
        counts.quarantined,
        migrated.audit_records,
        migrated.api_subscriptions
    )?;
    for (name, sub) in &counts.subscriptions {
        outln!(
            "verified {name:?}: {} waiting, {} dead, {} delivered, {} purged",
            sub.waiting,
            sub.dead,
            sub.delivered,
            sub.purged
        )?;
    }
    Ok(())
}

/// 75 while a relay holds the sled spool (try again once it stopped), 65
/// when the copy's counts differ, 64 when the config names no server.
pub(super) fn exit_code(err: &MigrateError) -> u8 {
    match err {
        _ if err.is_locked() => super::EXIT_LOCKED,
        MigrateError::Mismatch(_) => super::EXIT_DAMAGED,
        MigrateError::NoServers => super::EXIT_CONFIG,
        _ => 1,
    }
}
