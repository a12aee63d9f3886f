//! The command line's schema (clap): the commands, their arguments and
//! their help, from which `--help` and the man page are made.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::remote::RemoteArgs;
use super::{invoice, subscriptions};

#[derive(Debug, Parser)]
#[command(
    name = "webhook-relay",
    version,
    about = "Durable relay for e-invoicing webhooks"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(ConfigArg),
    /// Validate the configuration and exit (0, or 64 with every error).
    CheckConfig(ConfigArg),
    /// Inspect the spool: of a running relay through its admin API (ls,
    /// show, stats, replay), or of a stopped one directly (dump, check, ...).
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// The quarantine of a running relay: authenticated bodies that were
    /// not accepted as notifications.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// The subscriptions of a running relay.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// The invoices of a running relay: each with its current status, and
    /// its timeline of notifications and deliveries.
    #[command(subcommand)]
    Invoice(invoice::InvoiceCommand),
    /// The certificate ordered by ACME (`[server.acme]`).
    #[command(subcommand)]
    Cert(CertCommand),
    /// Print a new subscription secret (`whsec_...`).
    GenSecret,
    /// Print the man page (roff), made from these definitions.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Domains, issuer, expiry and renewal time of the stored certificate.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined bodies, newest first.
    Ls {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long)]
        source: Option<String>,
        /// RFC 3339, or a duration back from now (`24h`).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one quarantined body, with the reason it was not accepted.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        id: String,
    },
    /// Make a quarantined body a notification: its provider check runs
    /// again (or, with --as-generic, it is taken as a generic one), then it
    /// is delivered like any other.
    Release {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        id: String,
        #[arg(long)]
        as_generic: bool,
    },
    /// Remove a quarantined body for good.
    Discard {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// List them with their deliveries waiting, dead and delivered.
    Ls {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Hold a subscription's deliveries (kept across restarts).
    Pause {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        name: String,
    },
    /// Let a paused subscription's deliveries go, in their order.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        name: String,
    },
    /// Make the subscription's deliveries waiting for a later retry due
    /// now (its target is back); dead ones are for `spool replay`.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        name: String,
    },
    /// Create a subscription (its URL's host must be in [admin]
    /// allowed_targets); prints its secret, once.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        new: subscriptions::AddArgs,
    },
    /// Delete a subscription created with `add`.
    Rm {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        name: String,
        /// Give up its deliveries still waiting (they are kept, purged);
        /// needs --yes.
        #[arg(long)]
        purge: bool,
        #[arg(long)]
        yes: bool,
    },
    /// Give a subscription the stored notifications of a time range that
    /// match it, in order (--dry-run to count them first, or --yes).
    Backfill {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        name: String,
        /// An RFC 3339 time, or a duration back from now (`24h`); needed
        /// but with --current.
        #[arg(long, required_unless_present = "current")]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Each invoice's current notification once (the newest that tells
        /// its status), not the raw history.
        #[arg(long)]
        current: bool,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        yes: bool,
    },
    /// Send a subscription a signed test event (`relay.test`).
    Test {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        name: String,
    },
    /// Give a subscription a new secret (printed once); the old one signs
    /// too until the overlap ends.
    RotateSecret {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        name: String,
        /// How long the old secret still signs (`24h`, `30m`).
        #[arg(long, default_value = "24h")]
        overlap: String,
    },
}

/// The filters of `spool ls` and of a bulk `spool replay`.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct FilterArgs {
    #[arg(long)]
    pub source: Option<String>,
    /// Event type pattern, `*` matches anything (`facturacion.*`).
    #[arg(long)]
    pub event: Option<String>,
    /// The invoice (TusFacturas external_reference, NubeFact serie-numero,
    /// Dátil receipt), a pattern with `*`.
    #[arg(long)]
    pub subject: Option<String>,
    /// The invoice's status: queued, accepted, rejected, deleted, unknown.
    #[arg(long)]
    pub status: Option<String>,
    /// waiting, delivered, dead, purged (or quarantined for `ls`).
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub subscription: Option<String>,
    /// RFC 3339, or a duration back from now (`24h`).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
}

impl FilterArgs {
    pub(super) fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("source", self.source.clone()),
            ("event", self.event.clone()),
            ("subject", self.subject.clone()),
            ("status", self.status.clone()),
            ("state", self.state.clone()),
            ("subscription", self.subscription.clone()),
            ("since", self.since.clone()),
            ("until", self.until.clone()),
        ]
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pairs().iter().all(|(_, v)| v.is_none())
    }
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// List notifications of a running relay, newest first, with the state
    /// of each delivery.
    Ls {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Rows per page.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
    },
    /// Show one notification of a running relay: its record, body, and
    /// every delivery with its attempts.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        id: String,
    },
    /// Counts and the state of the spool of a running relay.
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The audit log of a running relay, newest first: who changed what.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Write a backup of a running relay's spool to FILE, while it goes on
    /// taking notifications: every notification durable when it began,
    /// with its deliveries' states, and the rest a restored relay needs
    /// (zstd, with a manifest and a SHA-256 checksum). Written beside FILE
    /// and renamed once checked: a failed backup leaves no half file.
    Backup {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        /// The archive to write.
        file: PathBuf,
    },
    /// Restore a backup archive into a new spool directory (absent or
    /// empty), with no relay running on it; the archive's checksum and
    /// counts are checked, and nothing is left at DIR unless it all was.
    Restore {
        /// The archive `spool backup` wrote.
        file: PathBuf,
        /// The new spool's directory (then `[spool.sled] path` of the relay).
        #[arg(long, value_name = "DIR")]
        path: PathBuf,
        /// Print the archive's manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the spooled notifications as JSON lines, oldest first.
    Dump {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the quarantined bodies instead.
        #[arg(long, conflicts_with = "audit")]
        quarantine: bool,
        /// Print the audit log instead (who changed what, and when).
        #[arg(long, conflicts_with = "deliveries")]
        audit: bool,
        /// Print each notification's deliveries too.
        #[arg(long)]
        deliveries: bool,
    },
    /// Copy a stopped relay's sled spool (`[spool.sled] path`) into the
    /// JetStream spool of `[spool.jetstream]`, whatever `[spool] backend`
    /// says: notifications with their ids and receipt times, deliveries
    /// with their states and attempts, API subscriptions, pauses, the audit
    /// log, the quarantine, stuck marks and reconcile checks. Run it again
    /// after an interruption: what was copied is found already there.
    /// Verified by counts at the end (exit 65 when they differ); exit 75
    /// while a relay holds the sled spool.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
        /// The backend to copy into.
        #[arg(long, value_enum)]
        to: MigrateTarget,
    },
    /// Verify a stopped relay's spool, every record; exit 65 on damage.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// After a loss was found (acknowledged notifications missing), record
        /// it as known so `serve` starts with what is intact.
        #[arg(long)]
        accept_loss: bool,
    },
    /// Give every delivery waiting for a subscription that is no longer in
    /// the config (an orphan) to a configured one, due now (relay stopped).
    MoveOrphans {
        #[command(flatten)]
        config: ConfigArg,
        /// The removed subscription.
        from: String,
        /// The configured subscription that takes them.
        to: String,
    },
    /// Give up every delivery waiting for a subscription that is no longer
    /// in the config; they are kept, purged, with their history (relay
    /// stopped).
    PurgeOrphans {
        #[command(flatten)]
        config: ConfigArg,
        /// The removed subscription.
        subscription: String,
    },
    /// Put dead deliveries back in the queue, due now, with a fresh
    /// schedule: one notification's (by id), or every one a filter picks
    /// (with --dry-run to count them first, or --yes). Through the running
    /// relay's admin API; a stopped relay's spool directly (by id only).
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        /// The notification's id; without it, the filters pick.
        id: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Count what a bulk replay would touch; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do the bulk replay.
        #[arg(long)]
        yes: bool,
    },
    /// Give up the deliveries a filter picks (`--state` dead, the default,
    /// or waiting): they become purged, keep their history and can still
    /// be replayed until retention removes them. Through the running
    /// relay's admin API; needs --dry-run (to count) or --yes.
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Count what the purge would touch; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do the purge.
        #[arg(long)]
        yes: bool,
    },
}

/// What `spool migrate` copies into.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MigrateTarget {
    Jetstream,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path of the configuration file.
    #[arg(
        long,
        short,
        default_value = "relay.toml",
        env = "WEBHOOK_RELAY_CONFIG"
    )]
    pub config: PathBuf,
}
