//! The NATS JetStream spool backend (issue 19), built in the steps of
//! `docs/design/jetstream.md`. Built so far: (steps 1 and 2) the
//! connection (auth file, TLS with a CA), the gate on the server's version
//! and the probe of the rule the dedup stands on, the creation or check of
//! the stream, the duty-lock bucket and the spool's identity, the report of
//! what a 200 means under the servers' settings ([`Provisioned`]); and the
//! backend ([`JetStreamSpool`]): store with the dedup's compare-and-set,
//! quarantine, the local index fed by the fold, reads by id and walks;
//! leases, outcomes and pause (steps 3 and 4); the counts the fold keeps,
//! the audit log and API subscriptions (step 5); replay, retry now, purge,
//! backfill and orphans (`states.rs` and its users, step 6); retention
//! under a duty lock (`retention.rs`, `duty.rs`, `removal.rs`), the invoice
//! index (`invoices.rs`, `invoice_reads.rs`), the stuck marks (`stuck.rs`)
//! and reconcile checks (`checks.rs`) of step 7; `spool check` on the
//! stream (`check.rs`) of step 8; of step 12, another spool's records
//! written under their ids (`import.rs`, for `spool migrate`) and the
//! backup walked from the stream (`backup.rs`); of steps 9 and 10, the
//! relay serving on it: whether the servers acknowledge now (`outage.rs`),
//! a superseded notification judged at its first lease (`superseded.rs`),
//! API subscription changes told to the relay (`api_subscriptions.rs`);
//! the events' and the reconciler's duties, with the spool's reports from
//! the fold on the events' holder (`reports.rs`), of step 9.
//!
//! Names: with `P` the configured prefix, the stream `P_spool` holds every
//! subject `P.>` (one copy per subject, direct gets on), the KV bucket
//! `P_locks` holds the single-run duties' leases, and `P.m.identity` the
//! spool's identity (created once, with a compare-and-set on sequence 0).

mod api_subscriptions;
mod audit;
#[cfg(test)]
mod audit_tests;
mod backend;
mod backup;
mod bridge;
mod check;
#[cfg(test)]
mod check_tests;
mod checks;
#[cfg(test)]
mod cluster_tests;
mod complete;
mod connect;
mod consumers;
#[cfg(test)]
mod consumers_tests;
#[cfg(test)]
pub(crate) mod contract_tests;
mod counts;
#[cfg(test)]
mod counts_tests;
mod deliveries;
mod durability;
mod duty;
#[cfg(test)]
mod duty_tests;
mod error;
#[cfg(test)]
mod events_duty_tests;
#[cfg(test)]
mod faults_tests;
mod fold;
#[cfg(test)]
mod fold_tests;
#[cfg(test)]
mod gateway_tests;
mod import;
mod index;
mod invoice_reads;
mod invoices;
#[cfg(test)]
mod invoices_tests;
mod journal;
#[cfg(test)]
mod journal_tests;
mod lease;
pub(crate) mod loopback_cluster;
#[cfg(test)]
mod migrate_tests;
#[cfg(test)]
mod moves_race_tests;
#[cfg(test)]
mod moves_tests;
mod orphans;
mod outage;
mod patience;
mod pause;
mod provision;
mod purge;
mod reads;
mod reconciled;
mod removal;
mod replay;
mod reports;
mod retention;
#[cfg(test)]
mod retention_tests;
pub(crate) mod shared_state;
mod staged;
mod states;
mod store;
#[cfg(test)]
mod store_tests;
mod stuck;
mod subjects;
mod superseded;
mod tail;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

use async_nats::jetstream;

use crate::clock::Clock;
use crate::config::SpoolConfig;
pub(crate) use backend::JetStreamSpool;
pub(crate) use durability::DurabilityReport;
pub(crate) use error::JetStreamError;
pub use import::Imported;
pub(crate) use lease::JetStreamLease;
pub(crate) use provision::Identity;

/// The names of what the relay makes on the servers, from the prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream that holds the whole spool.
    pub(crate) fn stream(&self) -> String {
        format!("{}_spool", self.prefix)
    }

    /// Every subject of the spool.
    fn subjects(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The KV bucket of the duties' leases.
    pub(crate) fn locks(&self) -> String {
        format!("{}_locks", self.prefix)
    }

    /// The marker a relay publishes to learn when its index has caught up.
    fn sync(&self) -> String {
        format!("{}.m.sync", self.prefix)
    }

    fn identity(&self) -> String {
        format!("{}.m.identity", self.prefix)
    }

    /// The subjects of one start-up probe (`token` unique to it).
    fn probe(&self, token: &str) -> String {
        format!("{}.m.probe.{token}", self.prefix)
    }
}

/// A connection to a checked, provisioned spool (step 1), which the
/// backend ([`JetStreamSpool`]) speaks through.
pub(crate) struct Provisioned {
    client: async_nats::Client,
    context: jetstream::Context,
    names: Names,
    identity: Identity,
    durability: DurabilityReport,
}

impl Provisioned {
    /// Connects to the configured servers, refuses a server older than
    /// [`connect::MIN_SERVER`] or one that fails the probe, creates the
    /// stream, bucket and identity or checks the existing ones (refusing
    /// settings that break a guarantee), and reports what a 200 means under
    /// the servers' settings, with a warning when that is less than
    /// `durability` asks. Opening again is harmless (idempotent).
    pub(crate) async fn open(
        config: &SpoolConfig,
        clock: Clock,
    ) -> Result<Provisioned, JetStreamError> {
        let settings = &config.jetstream;
        let client = connect::connect(settings).await?;
        let server = connect::check_version(&client)?;
        let context = jetstream::context::ContextBuilder::new()
            .timeout(settings.request_timeout.0)
            .build(client.clone());
        let names = Names::new(&settings.prefix);
        let info = provision::spool_stream(&context, &names, settings).await?;
        connect::probe(&context, &names, &server).await?;
        provision::locks_bucket(&context, &names, settings).await?;
        let identity = provision::identity(&context, &names, clock).await?;
        let sync = durability::read_sync(&settings.monitor_urls, settings.request_timeout.0).await;
        let durability = durability::assess(&info, sync, settings.durability);
        durability.log(&names.stream());
        Ok(Provisioned {
            client,
            context,
            names,
            identity,
            durability,
        })
    }

    /// What a 200 means on this spool, as found at open.
    pub(crate) fn durability(&self) -> &DurabilityReport {
        &self.durability
    }

    /// The spool's identity (the same for every relay that shares it).
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    pub(crate) fn context(&self) -> &jetstream::Context {
        &self.context
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Lets go of the connection after what was sent is flushed (the
    /// backend drains its client itself, on its bridge).
    #[cfg(test)]
    pub(crate) async fn close(&self) -> Result<(), JetStreamError> {
        self.client
            .drain()
            .await
            .map_err(|e| JetStreamError::request("closing the connection", e))
    }
}
