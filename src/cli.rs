//! The command line: `serve`, `check-config`, `spool ...`, `quarantine
//! ...`, `subscriptions ...`, `invoice ...`, `gen-secret`. Commands parse their arguments, load the config and
//! call the library, or (for a running relay) its admin API through
//! [`remote`]; a bad config exits with 64 (EX_USAGE) after naming file,
//! line and key.
//!
//! A damaged spool is never served with holes: `serve` first walks it the
//! way `spool check` does and refuses, with exit 65 (EX_DATAERR), a spool
//! that sled cannot read in part or that lost acknowledged notifications.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use clap::{Parser, Subcommand};

use crate::app::Relay;
use crate::clock::format_ms;
use crate::clock::Clock;
use crate::config::Config;
use crate::listen::Listeners;
use crate::signing::SigningKey;
use crate::spool::{Routes, Spool, SpoolError};
use remote::{cell, table, AdminClient, RemoteArgs, RemoteError};

/// `println!` that hands back the write's error instead of panicking, as
/// `println!` does on a pipe closed by its reader (`... | head -n 1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::PrintError)
    }};
}

/// `print!` that hands back the write's error: see [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::PrintError)
    }};
}

mod backup;
mod invoice;
mod man;
mod remote;
mod subscriptions;

/// EX_USAGE: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 64;
/// EX_DATAERR: the spool is damaged or lost acknowledged notifications.
pub const EXIT_DAMAGED: u8 = 65;
/// EX_TEMPFAIL: the spool is in use; try again when the relay is stopped.
pub const EXIT_LOCKED: u8 = 75;

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
    fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
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

    fn is_empty(&self) -> bool {
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

/// Standard output could not be written: its reader went away (a closed
/// pipe) or the disk under a redirect is full.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct PrintError(#[source] pub std::io::Error);

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let result = run_command(cli).and_then(|()| {
        // What is still buffered goes now, so its error is seen here.
        std::io::stdout()
            .flush()
            .map_err(|err| anyhow::Error::from(PrintError(err)))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader closed the pipe (`spool ls --json | head -n 1`): it
        // has what it wanted, so this ends quietly with 0, as ripgrep does,
        // not 141 (a death by SIGPIPE), which would fail a `pipefail` script.
        Err(err)
            if err
                .downcast_ref::<PrintError>()
                .is_some_and(|e| e.0.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{}", report(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig(arg) => load(&arg.config)
            .and_then(|config| check_certificate(&config).map(|()| config))
            .and_then(|config| {
                outln!(
                    "{}: ok ({} sources, {} subscriptions)",
                    arg.config.display(),
                    config.sources.len(),
                    config.subscriptions.len()
                )?;
                Ok(())
            }),
        Command::Serve(arg) => load(&arg.config).and_then(|config| serve(&arg.config, config)),
        Command::Cert(CertCommand::Status { config, json }) => {
            load(&config.config).and_then(|config| cert_status(&config, json))
        }
        Command::Spool(SpoolCommand::Dump {
            config,
            quarantine,
            audit,
            deliveries,
        }) => load(&config.config).and_then(|config| {
            let what = match (quarantine, audit) {
                (true, _) => Dumped::Quarantined,
                (_, true) => Dumped::Audit,
                _ => Dumped::Notifications { deliveries },
            };
            dump(&config, what)
        }),
        Command::Spool(SpoolCommand::Backup {
            config,
            remote,
            file,
        }) => backup::backup(&config.config, &remote, &file),
        Command::Spool(SpoolCommand::Restore { file, path, json }) => {
            backup::restore(&file, &path, json)
        }
        Command::Spool(SpoolCommand::Check {
            config,
            accept_loss,
        }) => load(&config.config).and_then(|config| check(&config, accept_loss)),
        Command::Spool(SpoolCommand::MoveOrphans { config, from, to }) => {
            load(&config.config).and_then(|config| reassign_orphans(&config, &from, Some(&to)))
        }
        Command::Spool(SpoolCommand::PurgeOrphans {
            config,
            subscription,
        }) => {
            load(&config.config).and_then(|config| reassign_orphans(&config, &subscription, None))
        }
        Command::Spool(SpoolCommand::Replay {
            config,
            remote,
            id,
            filter,
            dry_run,
            yes,
        }) => replay_command(&config.config, &remote, id, filter, dry_run, yes),
        Command::Spool(SpoolCommand::Purge {
            config,
            remote,
            filter,
            dry_run,
            yes,
        }) => purge_command(&config.config, &remote, &filter, dry_run, yes),
        Command::Spool(SpoolCommand::Ls {
            config,
            remote,
            filter,
            limit,
            all,
        }) => list(&config.config, &remote, &filter, limit, all),
        Command::Spool(SpoolCommand::Show { config, remote, id }) => {
            show(&config.config, &remote, &id)
        }
        Command::Spool(SpoolCommand::Stats { config, remote }) => stats(&config.config, &remote),
        Command::Spool(SpoolCommand::Audit {
            config,
            remote,
            limit,
        }) => audit_log(&config.config, &remote, limit),
        Command::Quarantine(QuarantineCommand::Ls {
            config,
            remote,
            source,
            since,
            until,
            limit,
        }) => list(
            &config.config,
            &remote,
            &FilterArgs {
                source,
                since,
                until,
                state: Some("quarantined".into()),
                ..FilterArgs::default()
            },
            limit,
            false,
        ),
        Command::Quarantine(QuarantineCommand::Show { config, remote, id }) => {
            show_quarantined(&config.config, &remote, &id)
        }
        Command::Quarantine(QuarantineCommand::Release {
            config,
            remote,
            id,
            as_generic,
        }) => {
            let query = if as_generic { "?as=generic" } else { "" };
            let path = format!("/api/quarantine/{}/release{query}", encode_segment(&id));
            post_and_print(&config.config, &remote, &path, |done| {
                format!(
                    "released {id} as notification {}{}",
                    cell(&done["notification"]),
                    if done["duplicate"] == true {
                        " (a duplicate of it)"
                    } else {
                        ""
                    }
                )
            })
        }
        Command::Subscriptions(change) => subscriptions::run(change),
        Command::Invoice(command) => invoice::run(command),
        Command::Quarantine(QuarantineCommand::Discard { config, remote, id }) => {
            let path = format!("/api/quarantine/{}/discard", encode_segment(&id));
            post_and_print(&config.config, &remote, &path, |_| {
                format!("discarded {id}")
            })
        }
        Command::Man => Ok(man::print()?),
        Command::GenSecret => {
            outln!("{}", SigningKey::generate_secret(rand::random()))?;
            Ok(())
        }
    }
}

/// The error for a person: each cause once (a cause that an error's own
/// message already shows is not repeated), every line prefixed with the
/// program's name, as a journal reader filters lines one by one.
pub fn report(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text.lines()
        .map(|line| format!("webhook-relay: {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn exit_code(err: &anyhow::Error) -> u8 {
    let spool_error = err.downcast_ref::<SpoolError>().or_else(|| {
        match err.downcast_ref::<crate::app::AppError>() {
            Some(crate::app::AppError::Spool(spool)) => Some(spool),
            _ => None,
        }
    });
    let app_error = err.downcast_ref::<crate::app::AppError>();
    if let Some(remote) = err.downcast_ref::<RemoteError>() {
        remote.exit_code()
    } else if let Some(backup) = err.downcast_ref::<crate::spool::backup::BackupError>() {
        backup::exit_code(backup)
    } else if err.downcast_ref::<crate::config::ConfigError>().is_some()
        // A certificate that cannot be read, or example secrets on a public
        // address, is the operator's to fix: no restart will mend it.
        || err.downcast_ref::<Refused>().is_some()
        || err
            .downcast_ref::<crate::ingress::tls::TlsError>()
            .is_some()
        || matches!(app_error, Some(crate::app::AppError::Tls(_)))
    {
        EXIT_CONFIG
    } else if err.downcast_ref::<Damaged>().is_some()
        || matches!(
            spool_error,
            Some(SpoolError::Lost { .. } | SpoolError::Damaged { .. })
        )
    {
        EXIT_DAMAGED
    } else if matches!(spool_error, Some(SpoolError::Locked { .. })) {
        EXIT_LOCKED
    } else {
        1
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn cert_status(config: &Config, json: bool) -> anyhow::Result<()> {
    let now_ms = crate::clock::Clock::system().now_ms();
    let Some(status) = crate::acme::report::status(config, now_ms)? else {
        anyhow::bail!(
            "the config has no [server.acme]: the certificate is not ordered by the relay"
        );
    };
    match json {
        true => outln!("{}", serde_json::to_string_pretty(&status)?)?,
        false => out!("{}", status.table())?,
    }
    Ok(())
}

/// What `serve` refuses to do (exit 64): listen where others can reach it
/// with the repository's example secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// The configured certificate and key files can be read and fit together.
fn check_certificate(config: &Config) -> anyhow::Result<()> {
    if let (true, Some(cert), Some(key)) = (
        config.server.tls,
        &config.server.tls_cert,
        &config.server.tls_key,
    ) {
        crate::ingress::tls::ReloadableCert::load(cert, key)?;
    }
    Ok(())
}

/// Refuses to serve on an address other than loopback while a secret is
/// still one of the repository's examples (published, so no secret).
fn refuse_examples(config: &Config, listeners: &Listeners) -> anyhow::Result<()> {
    let public: Vec<String> = listeners
        .addresses()
        .into_iter()
        .filter(|addr| !addr.ip().is_loopback())
        .map(|addr| addr.to_string())
        .collect();
    let examples = config.example_secrets();
    if public.is_empty() || examples.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = examples.iter().map(|k| format!("`{k}`")).collect();
    Err(Refused(format!(
        "refusing to listen on {} (not loopback): {} still hold the example secrets published with webhook-relay; write secrets of your own (`webhook-relay gen-secret` prints one), or listen on 127.0.0.1 to try it out",
        public.join(", "),
        keys.join(", ")
    ))
    .into())
}

fn serve(path: &Path, config: Config) -> anyhow::Result<()> {
    // Before the runtime's threads: taking systemd's sockets clears their
    // variables from the environment. Before the spool or a certificate
    // is touched: a start that cannot listen writes nothing.
    let mut listeners = Listeners::acquire(config.server.listen)?;
    // A TCP admin listener is bound here, as if passed by systemd, so that
    // a restart in place (`reexec`) can pass it on too.
    if let (None, Some(crate::config::AdminListen::Tcp(addr))) =
        (&listeners.admin, &config.admin.listen)
    {
        listeners.admin = Some(Listeners::bind(*addr)?.ingress);
    }
    let reexec = crate::reexec::Reexec::keep(&listeners)?;
    refuse_examples(&config, &listeners)?;
    // A certificate that cannot be read stops the start before the spool
    // is created or opened.
    check_certificate(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Before anything starts: a SIGTERM that comes while the spool opens
        // must stop the relay cleanly, not kill it.
        let signals = Signals::install()?;
        verify_spool(&config).await?;
        let relay = Relay::start_on(config, listeners).await?;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let watchdog = tokio::spawn(watchdog(relay.spool.clone()));
        let reopen = tokio::spawn(reexec.when_room_returns(relay.spool.clone()));
        signals.wait_for_stop(&relay, path).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        watchdog.abort();
        reopen.abort();
        relay.stop().await?;
        Ok(())
    })
}

/// The signals `serve` answers to.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Takes over SIGTERM, SIGINT and SIGHUP from their default (which ends
    /// the process at once).
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; SIGHUP (or the admin API) reloads the
    /// config file.
    async fn wait_for_stop(mut self, relay: &Relay, path: &Path) {
        let mut requests = relay.take_reload_requests();
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => {
                    if let Ok(report) = reload(relay, path).await {
                        let entry = crate::spool::AuditEntry {
                            actor: "SIGHUP".into(),
                            action: "config.reload".into(),
                            target: path.display().to_string(),
                            detail: report,
                        };
                        if let Err(err) = relay.spool.audit(entry).await {
                            tracing::warn!(error = %err, "the reload is not in the audit log");
                        }
                    }
                }
                Some(reply) = async { requests.as_mut()?.recv().await } => {
                    let _ = reply.send(reload(relay, path).await);
                }
            }
        }
        tracing::info!("stopping");
    }
}

/// Re-reads and applies the config file; a file that does not load is
/// logged, problem by problem, and the running config stays.
async fn reload(relay: &Relay, path: &Path) -> Result<serde_json::Value, String> {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    let result = reload_file(relay, path).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    result
}

async fn reload_file(relay: &Relay, path: &Path) -> Result<serde_json::Value, String> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            // The cause (an unreadable file) is the error's source.
            let text = match std::error::Error::source(&err) {
                Some(cause) => format!("{err}: {cause}"),
                None => err.to_string(),
            };
            for line in text.lines() {
                tracing::error!(problem = %line, "config not reloaded; the running one stays");
            }
            return Err(text);
        }
    };
    match relay.reload(config).await {
        Ok(report) => Ok(serde_json::to_value(report).unwrap_or_default()),
        Err(err) => {
            tracing::error!(error = %err, "config not reloaded; the running one stays");
            Err(err.to_string())
        }
    }
}

/// Pings systemd's watchdog at half its period, when one is set, as long as
/// the spool's writer answers within a quarter of it: a writer stuck on a
/// hung disk lets the watchdog restart the service. A full disk or a failed
/// store is not such a case (the relay reopens it by itself when there is
/// room, `reexec`); it shows in the service's status line instead.
async fn watchdog(spool: Spool) {
    let Some(period) = sd_notify::watchdog_enabled().filter(|p| !p.is_zero()) else {
        return;
    };
    let mut tick = tokio::time::interval(period / 2);
    let mut last_status = String::new();
    loop {
        tick.tick().await;
        let health = spool.health();
        let status = match &health.condition {
            Some(condition) => format!("spool not writable: {condition}"),
            None => "serving".to_owned(),
        };
        if status != last_status {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&status)]);
            last_status = status;
        }
        if spool.writer_alive(period / 4).await {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("spool writer not answering; withholding the watchdog ping");
        }
    }
}

/// What `spool check` or `spool dump` found unreadable, or a spool `serve`
/// refuses (exit 65).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Damaged(String);

/// How the spool check words a part of the spool sled cannot read at all,
/// and a loss (the sled backend's `check` starts those problems so).
const UNREADABLE: &str = "unreadable: ";
const LOST: &str = "lost: ";

/// Before serving, a walk over the whole spool, as `spool check` makes:
/// a spool with parts sled cannot read is refused (serving it would answer
/// from holes: duplicates not recognised, deliveries not found); repairs
/// are logged; entries that are read but not understood are logged by name
/// and skipped when met. A loss is left to the open that follows, which
/// refuses it with its own advice.
async fn verify_spool(config: &Config) -> anyhow::Result<()> {
    if Spool::room_to_open(&config.spool).is_err() {
        // The spool is not opened before there is room (`Relay::start_on`);
        // the process that opens it then checks it.
        return Ok(());
    }
    if Spool::is_new(&config.spool) {
        tracing::info!(spool = %config.spool.sled.path.display(), "no spool there yet: creating a new one");
        return Ok(());
    }
    // The lock first: a second relay on the same spool says only that.
    let spool_config = config.spool.clone();
    tokio::task::spawn_blocking(move || Spool::ensure_not_locked(&spool_config))
        .await
        .context("the spool's lock check failed to run")??;
    if Spool::stopped_cleanly(&config.spool) {
        tracing::info!("the spool was stopped cleanly and is untouched since; no full check");
        return Ok(());
    }
    tracing::info!(spool = %config.spool.sled.path.display(), "checking the whole spool before serving (it was not stopped cleanly, or its files changed)");
    let spool_config = config.spool.clone();
    let check = tokio::task::spawn_blocking(move || Spool::check(&spool_config, false));
    // A big spool takes a while to read: tell systemd the start goes on,
    // so its start timeout does not kill a relay that is only checking.
    let keep_alive = tokio::spawn(async {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("checking the spool")]);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(30_000_000)]);
        }
    });
    let report = check.await;
    keep_alive.abort();
    let report = report.context("the spool check failed to run")??;
    for repair in &report.repaired {
        tracing::warn!(repair = %repair, "spool repaired on open");
    }
    let mut unreadable = Vec::new();
    for problem in &report.problems {
        if let Some(what) = problem.strip_prefix(UNREADABLE) {
            tracing::error!(problem = %what, "part of the spool cannot be read");
            unreadable.push(what);
        } else if !problem.starts_with(LOST) {
            tracing::error!(record = %problem, "unreadable record in the spool; skipped when met");
        }
    }
    if unreadable.is_empty() {
        return Ok(());
    }
    Err(Damaged(format!(
        "spool {} is damaged, so it is not served: {}. Stop here: copy the spool directory \
         for analysis, then restore it from a backup, or move it aside to start with an \
         empty one (`webhook-relay spool dump` on it prints every notification it can \
         still read and names what it cannot)",
        config.spool.sled.path.display(),
        unreadable.join("; ")
    ))
    .into())
}

fn open_spool(config: &Config) -> anyhow::Result<Spool> {
    Ok(Spool::open(
        &config.spool,
        Routes::from_config(config),
        Clock::system(),
    )?)
}

/// What `spool dump` prints.
enum Dumped {
    Notifications { deliveries: bool },
    Quarantined,
    Audit,
}

fn dump(config: &Config, what: Dumped) -> anyhow::Result<()> {
    let spool = open_spool(config)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut unreadable = 0;
    let mut report = |err: SpoolError| {
        unreadable += 1;
        eprintln!("webhook-relay: skipped: {err}");
    };
    if let Dumped::Audit = what {
        for record in spool.audit_records() {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    report(err);
                    continue;
                }
            };
            // Times for people (RFC 3339), as the CLI writes them everywhere.
            let line = serde_json::json!({
                "id": record.id,
                "at": format_ms(record.at_ms),
                "actor": record.entry.actor,
                "action": record.entry.action,
                "target": record.entry.target,
                "detail": record.entry.detail,
            });
            writeln!(out, "{line}").map_err(PrintError)?;
        }
    } else if let Dumped::Quarantined = what {
        for record in spool.quarantined() {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    report(err);
                    continue;
                }
            };
            let mut line = serde_json::to_value(&record.meta)?;
            line["received_at"] = format_ms(record.meta.received_ms).into();
            put_body(&mut line, &record.body);
            writeln!(out, "{line}").map_err(PrintError)?;
        }
    } else {
        for record in spool.notifications() {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    report(err);
                    continue;
                }
            };
            let mut line = serde_json::to_value(&record.meta)?;
            line["received_at"] = format_ms(record.meta.received_ms).into();
            put_body(&mut line, &record.body);
            if let Dumped::Notifications { deliveries: true } = what {
                let id = crate::spool::NotificationId::parse(&record.meta.id)
                    .ok_or_else(|| anyhow::anyhow!("malformed id {}", record.meta.id))?;
                match spool.deliveries_of(id) {
                    Ok(list) => line["deliveries"] = serde_json::to_value(list)?,
                    Err(err) => report(err),
                }
            }
            writeln!(out, "{line}").map_err(PrintError)?;
        }
    }
    out.flush().map_err(PrintError)?;
    drop(out);
    close(spool)?;
    if unreadable > 0 {
        return Err(Damaged(format!(
            "{unreadable} records (or ranges of records) of {} could not be read, each named \
             above; `webhook-relay spool check` tells more",
            config.spool.sled.path.display()
        ))
        .into());
    }
    Ok(())
}

/// Lets the writer finish and the spool go.
fn close(spool: Spool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(spool.close())?;
    Ok(())
}

/// Verifies a stopped spool and prints what it found: a summary line, then
/// one line per problem.
fn check(config: &Config, accept_loss: bool) -> anyhow::Result<()> {
    let report = Spool::check(&config.spool, accept_loss)?;
    outln!(
        "{}: {} notifications, {} quarantined, {} delivery records, {} retries due, {} dedup entries, {} audit records",
        config.spool.sled.path.display(),
        report.notifications,
        report.quarantined,
        report.deliveries,
        report.retries,
        report.dedup_entries,
        report.audit_records
    )?;
    print_counts(&report)?;
    for repair in &report.repaired {
        outln!("repaired: {repair}")?;
    }
    // The check counts every subscription's backlog; only those of
    // subscriptions no longer configured are orphans.
    let orphans = report
        .orphans
        .iter()
        .filter(|(name, _)| !config.subscriptions.iter().any(|s| &s.name == *name));
    for (subscription, waiting) in orphans {
        outln!("orphans: {waiting} deliveries wait for subscription {subscription:?}, which is not configured")?;
    }
    for problem in &report.problems {
        outln!("problem: {problem}")?;
    }
    if report.problems.is_empty() {
        outln!("ok")?;
        Ok(())
    } else {
        Err(Damaged(format!(
            "{} problems found in spool {}",
            report.problems.len(),
            config.spool.sled.path.display()
        ))
        .into())
    }
}

/// The counts by a recount (or, when the spool could not be recounted, as
/// kept): one line for the totals, one per subscription.
fn print_counts(report: &crate::spool::CheckReport) -> Result<(), PrintError> {
    let (counts, how) = match (&report.counts, &report.kept_counts) {
        (Some(counts), _) => (counts, "counted"),
        (None, Some(kept)) => (kept, "kept (not recounted)"),
        (None, None) => return Ok(()),
    };
    outln!(
        "counts ({how}): {} notifications, {} quarantined",
        counts.notifications,
        counts.quarantined
    )?;
    for (name, sub) in &counts.subscriptions {
        outln!(
            "counts of {name:?}: {} waiting, {} dead, {} delivered, {} purged",
            sub.waiting,
            sub.dead,
            sub.delivered,
            sub.purged
        )?;
    }
    Ok(())
}

/// Moves or purges an orphan subscription's deliveries and prints a JSON
/// line with how many.
fn reassign_orphans(config: &Config, from: &str, to: Option<&str>) -> anyhow::Result<()> {
    let spool = open_spool(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let now_ms = Clock::system().now_ms();
        let result = spool.reassign_orphans(from, to, now_ms).await;
        spool.close().await?;
        let moved = result?;
        let line = match to {
            Some(to) => serde_json::json!({"from": from, "to": to, "moved": moved}),
            None => serde_json::json!({"subscription": from, "purged": moved}),
        };
        outln!("{line}")?;
        anyhow::Ok(())
    })
}

/// Replays the dead deliveries of one notification (or the named
/// subscription's, whatever its state) and prints one JSON line each.
fn replay(config: &Config, id: &str, subscription: Option<String>) -> anyhow::Result<()> {
    let id: crate::spool::NotificationId = id
        .parse()
        .map_err(|why| anyhow::anyhow!("not a notification id: {why}"))?;
    let spool = open_spool(config)?;
    let Some(notification) = spool.notification(id)? else {
        if spool.is_quarantined(id)? {
            anyhow::bail!("{id} is a quarantined body, not a notification: it has no deliveries to replay (`spool dump --quarantine` shows it)");
        }
        anyhow::bail!("no notification {id} in {}", spool.path().display());
    };
    let chosen: Vec<String> = match subscription {
        Some(name) if notification.meta.subscriptions.contains(&name) => vec![name],
        Some(name) => anyhow::bail!("notification {id} has no delivery for subscription {name:?}"),
        None => spool
            .deliveries_of(id)?
            .into_iter()
            .filter(|d| matches!(d.state, crate::delivery::State::Dead { .. }))
            .map(|d| d.subscription)
            .collect(),
    };
    if chosen.is_empty() {
        anyhow::bail!("notification {id} has no dead delivery to replay");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let now_ms = crate::clock::Clock::system().now_ms();
        for name in &chosen {
            // `false`: never attempted yet, so already due; nothing to do.
            let replayed = spool.replay(id, name, now_ms).await?;
            let line = serde_json::json!({"id": id.to_string(), "subscription": name, "replayed": replayed});
            outln!("{line}")?;
        }
        let entry = crate::spool::AuditEntry {
            actor: "cli".into(),
            action: "replay".into(),
            target: id.to_string(),
            detail: serde_json::json!({ "subscriptions": chosen }),
        };
        spool.audit(entry).await?;
        spool.close().await?;
        anyhow::Ok(())
    })
}

/// The body as text when it is UTF-8, else as base64 (`body_base64`).
fn put_body(line: &mut serde_json::Value, body: &[u8]) {
    match std::str::from_utf8(body) {
        Ok(text) => line["body"] = text.into(),
        Err(_) => {
            line["body_base64"] = base64::engine::general_purpose::STANDARD
                .encode(body)
                .into()
        }
    }
}

// === a running relay, through its admin API ===

fn list(
    config: &Path,
    remote: &RemoteArgs,
    filter: &FilterArgs,
    limit: usize,
    all: bool,
) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let quarantine = filter.state.as_deref() == Some("quarantined");
    let mut cursor: Option<String> = None;
    let mut rows = Vec::new();
    loop {
        let mut pairs = filter.pairs();
        pairs.push(("limit", Some(limit.to_string())));
        pairs.push(("cursor", cursor.take()));
        let page = client.get(&format!("/api/notifications{}", remote::query(&pairs)))?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if remote.json {
            for item in &items {
                outln!("{item}")?;
            }
        }
        for item in items {
            rows.push(if quarantine {
                vec![
                    cell(&item["id"]),
                    cell(&item["received_at"]),
                    cell(&item["source"]),
                    cell(&item["reason_kind"]),
                    cell(&item["reason"]),
                ]
            } else {
                vec![
                    cell(&item["id"]),
                    cell(&item["received_at"]),
                    cell(&item["source"]),
                    cell(&item["event"]),
                    cell(&item["subject"]),
                    cell(&item["status"]),
                    flag_list(&item["flags"]),
                    delivery_summary(&item["deliveries"]),
                ]
            });
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if !all || cursor.is_none() {
            break;
        }
    }
    if !remote.json {
        let headers: &[&str] = if quarantine {
            &["ID", "RECEIVED", "SOURCE", "KIND", "REASON"]
        } else {
            &[
                "ID",
                "RECEIVED",
                "SOURCE",
                "EVENT",
                "SUBJECT",
                "STATUS",
                "FLAGS",
                "DELIVERIES",
            ]
        };
        // The deliveries' summary is never cut: a cut one hid `dead`.
        out!("{}", remote::table_keeping_last(headers, &rows))?;
        if let Some(cursor) = cursor {
            outln!("(more: --all, or the API with cursor={cursor})")?;
        }
    }
    Ok(())
}

fn show(config: &Path, remote: &RemoteArgs, id: &str) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let shown = client.get(&format!("/api/notifications/{}", encode_segment(id)))?;
    if remote.json {
        outln!("{shown}")?;
        return Ok(());
    }
    print_fields(&shown, &crate::admin::NOTIFICATION_FIELDS)?;
    outln!("{:<14} {}", "flags", flag_list(&shown["flags"]))?;
    let mut rows = Vec::new();
    for delivery in shown["deliveries"].as_array().into_iter().flatten() {
        let attempts = delivery["attempts"].as_array().cloned().unwrap_or_default();
        rows.push(vec![
            cell(&delivery["subscription"]),
            cell(&delivery["state"]),
            "-".into(),
            cell(&delivery["next_try_at"]),
            String::new(),
            String::new(),
        ]);
        for attempt in attempts {
            let outcome = &attempt["outcome"];
            let what = match outcome["code"].as_u64() {
                Some(code) => format!("HTTP {code}"),
                None => cell(&outcome["kind"]),
            };
            rows.push(vec![
                String::new(),
                format!("attempt {}", cell(&attempt["number"])),
                cell(&attempt["started_at"]),
                format!("{} ms", cell(&attempt["duration_ms"])),
                what,
                one_line(&cell(&attempt["answer"])),
            ]);
        }
    }
    outln!()?;
    out!(
        "{}",
        table(
            &[
                "SUBSCRIPTION",
                "STATE",
                "STARTED",
                "NEXT/TOOK",
                "OUTCOME",
                "ANSWER"
            ],
            &rows
        )
    )?;
    outln!("\n{}", body_shown(&shown))?;
    Ok(())
}

/// A notification's flags (what its provider check accepted though not
/// as documented), comma separated; "-" when none.
fn flag_list(flags: &serde_json::Value) -> String {
    let names: Vec<String> = flags.as_array().into_iter().flatten().map(cell).collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// A notification's deliveries counted by state, `dead` first: `2
/// delivered, 1 dead` reads whole however many subscriptions there are.
fn delivery_summary(deliveries: &serde_json::Value) -> String {
    let states: Vec<String> = deliveries
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| cell(&d["state"]))
        .collect();
    let mut order = vec!["dead", "waiting", "delivered", "purged"];
    // A state a newer relay names that this CLI does not know, still shown.
    for state in &states {
        if !order.contains(&state.as_str()) {
            order.push(state);
        }
    }
    let parts: Vec<String> = order
        .iter()
        .filter_map(|name| {
            let n = states.iter().filter(|s| s == name).count();
            (n > 0).then(|| format!("{n} {name}"))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// A record's body for a terminal: text as it is; a Latin-1 one (flag
/// `latin1_body`) decoded, and said so; any other non-UTF-8 one as base64,
/// and said so.
fn body_shown(shown: &serde_json::Value) -> String {
    let body = shown["body"].as_str().unwrap_or("");
    if shown["body_encoding"] != "base64" {
        return body.to_owned();
    }
    let latin1 = shown["flags"]
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "latin1_body"));
    match base64::engine::general_purpose::STANDARD.decode(body) {
        Ok(raw) if latin1 => {
            let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(&raw);
            format!("(body sent in Latin-1, decoded from Windows-1252; the targets get it as UTF-8)\n{text}")
        }
        _ => format!("(body not UTF-8: shown as base64)\n{body}"),
    }
}

fn show_quarantined(config: &Path, remote: &RemoteArgs, id: &str) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let shown = client.get(&format!("/api/quarantine/{}", encode_segment(id)))?;
    if remote.json {
        outln!("{shown}")?;
        return Ok(());
    }
    print_fields(&shown, &crate::admin::QUARANTINE_FIELDS)?;
    outln!("\n{}", body_shown(&shown))?;
    Ok(())
}

/// One line a field: its label, then its value.
fn print_fields(shown: &serde_json::Value, fields: &[(&str, &str)]) -> Result<(), PrintError> {
    for (label, key) in fields {
        outln!("{label:<14} {}", cell(&shown[*key]))?;
    }
    Ok(())
}

fn stats(config: &Path, remote: &RemoteArgs) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let stats = client.get("/api/stats")?;
    if remote.json {
        outln!("{stats}")?;
        return Ok(());
    }
    let spool = &stats["spool"];
    outln!("spool          {}", cell(&spool["path"]))?;
    outln!("bytes on disk  {}", cell(&spool["bytes"]))?;
    outln!(
        "writable       {}{}",
        cell(&spool["writable"]),
        spool["condition"]
            .as_str()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default()
    )?;
    let all = &stats["deliveries"];
    outln!(
        "kept           {} notifications, {} quarantined; deliveries: {} waiting, {} dead, {} delivered, {} purged",
        cell(&stats["notifications"]),
        cell(&stats["quarantined"]),
        cell(&all["waiting"]),
        cell(&all["dead"]),
        cell(&all["delivered"]),
        cell(&all["purged"])
    )?;
    let rows: Vec<Vec<String>> = stats["sources"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, source)| {
            let received = &source["received_since_start"];
            let count = |outcome: &str| received[outcome].as_u64().unwrap_or(0).to_string();
            let refused: u64 = received
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(outcome, _)| !matches!(outcome.as_str(), "accepted" | "duplicate"))
                .filter_map(|(_, n)| n.as_u64())
                .sum();
            vec![
                name.clone(),
                cell(&source["stored"]),
                cell(&source["quarantined"]),
                cell(&source["last_received_at"]),
                count("accepted"),
                count("duplicate"),
                refused.to_string(),
            ]
        })
        .collect();
    outln!()?;
    out!(
        "{}",
        table(
            &[
                "SOURCE",
                "STORED",
                "QUARANTINED",
                "LAST RECEIVED",
                "ACCEPTED",
                "DUPLICATE",
                "REFUSED"
            ],
            &rows
        )
    )?;
    let rows: Vec<Vec<String>> = stats["subscriptions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, of)| {
            vec![
                name.clone(),
                cell(&of["waiting"]),
                cell(&of["dead"]),
                cell(&of["delivered"]),
                cell(&of["purged"]),
                cell(&of["oldest_waiting_received_at"]),
            ]
        })
        .collect();
    outln!()?;
    out!(
        "{}",
        table(
            &[
                "SUBSCRIPTION",
                "WAITING",
                "DEAD",
                "DELIVERED",
                "PURGED",
                "OLDEST WAITING"
            ],
            &rows
        )
    )?;
    outln!("\n(accepted, duplicate and refused count requests since the relay started)")?;
    Ok(())
}

/// A change through the API: its JSON answer, or a line for people.
pub(crate) fn post_and_print(
    config: &Path,
    remote: &RemoteArgs,
    path: &str,
    say: impl FnOnce(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let done = client.post(path)?;
    if remote.json {
        outln!("{done}")?;
    } else {
        outln!("{}", say(&done))?;
    }
    Ok(())
}

pub(crate) fn list_subscriptions(config: &Path, remote: &RemoteArgs) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    // Each item carries its delivery counts: a subscriber may not read the stats.
    let subscriptions = client.get("/api/subscriptions")?;
    let items = subscriptions["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if remote.json {
        for item in &items {
            outln!("{item}")?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let of = &s["deliveries"];
            // Who created it, for those made through the API.
            let origin = match &s["created_by"] {
                serde_json::Value::String(by) => format!("api ({by})"),
                _ => cell(&s["origin"]),
            };
            vec![
                cell(&s["name"]),
                cell(&s["url"]),
                origin,
                if s["paused"] == true {
                    "paused"
                } else {
                    "active"
                }
                .to_owned(),
                cell(&of["waiting"]),
                cell(&of["dead"]),
                cell(&of["delivered"]),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "NAME",
                "URL",
                "ORIGIN",
                "STATE",
                "WAITING",
                "DEAD",
                "DELIVERED"
            ],
            &rows
        )
    )?;
    Ok(())
}

fn audit_log(config: &Path, remote: &RemoteArgs, limit: usize) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let page = client.get(&format!("/api/audit?limit={limit}"))?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if remote.json {
        for item in &items {
            outln!("{item}")?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            vec![
                cell(&r["at"]),
                cell(&r["actor"]),
                cell(&r["action"]),
                cell(&r["target"]),
                cell(&r["detail"]),
            ]
        })
        .collect();
    out!(
        "{}",
        table(&["AT", "WHO", "ACTION", "TARGET", "DETAIL"], &rows)
    )?;
    Ok(())
}

/// `spool replay`: by id or by filter through the running relay; by id on
/// the spool itself when the relay is not running.
fn replay_command(
    config_path: &Path,
    remote: &RemoteArgs,
    id: Option<String>,
    filter: FilterArgs,
    dry_run: bool,
    yes: bool,
) -> anyhow::Result<()> {
    let Some(id) = id else {
        let bulk = Bulk {
            what: "a replay by filter",
            route: "/api/replay",
        };
        let Some(done) = bulk.run(config_path, remote, &filter, dry_run, yes)? else {
            return Ok(());
        };
        if dry_run {
            outln!(
                "would replay {} deliveries of {} notifications (run again with --yes)",
                cell(&done["deliveries"]),
                cell(&done["notifications"])
            )?;
        } else {
            outln!(
                "replayed {} deliveries of {} notifications",
                cell(&done["replayed"]),
                cell(&done["notifications"])
            )?;
        }
        return Ok(());
    };
    let other_filters = FilterArgs {
        subscription: None,
        ..filter.clone()
    };
    if !other_filters.is_empty() || dry_run {
        return Err(RemoteError::Usage(
            "a replay by id takes only --subscription; filters and --dry-run are for a replay without an id".into(),
        )
        .into());
    }
    let client = match AdminClient::locate(remote, config_path) {
        Ok(client) => Some(client),
        Err(err)
            if matches!(
                err.downcast_ref::<RemoteError>(),
                Some(RemoteError::NoAddress(_))
            ) =>
        {
            None
        }
        Err(err) => return Err(err),
    };
    if let Some(client) = client {
        let path = format!(
            "/api/notifications/{}/replay{}",
            encode_segment(&id),
            remote::query(&[("subscription", filter.subscription.clone())])
        );
        match client.post(&path) {
            Ok(done) => {
                for name in done["replayed"].as_array().into_iter().flatten() {
                    let line =
                        serde_json::json!({"id": id, "subscription": name, "replayed": true});
                    outln!("{line}")?;
                }
                return Ok(());
            }
            // Not running: the spool itself, below.
            Err(err) if err.is_unreachable() => {
                eprintln!(
                    "webhook-relay: the relay is not running; replaying on its spool directly"
                );
            }
            Err(err) => return Err(err.into()),
        }
    }
    let config = load(config_path)?;
    replay(&config, &id, filter.subscription)
}

/// A bulk action by filter on the running relay: counted first
/// (`--dry-run`) or done (`--yes`), one of the two required.
struct Bulk {
    what: &'static str,
    route: &'static str,
}

impl Bulk {
    /// The relay's answer, or `None` once printed as JSON.
    fn run(
        &self,
        config_path: &Path,
        remote: &RemoteArgs,
        filter: &FilterArgs,
        dry_run: bool,
        yes: bool,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        if !dry_run && !yes {
            return Err(RemoteError::Usage(format!(
                "{} needs --dry-run (to count) or --yes (to do it)",
                self.what
            ))
            .into());
        }
        let client = AdminClient::locate(remote, config_path)?;
        let mut pairs = filter.pairs();
        pairs.push(("dry_run", dry_run.then(|| "true".to_owned())));
        let mut done = client.post(&format!("{}{}", self.route, remote::query(&pairs)))?;
        if !dry_run {
            done = wait_for_job(&client, done)?;
        }
        if remote.json {
            outln!("{done}")?;
            return Ok(None);
        }
        Ok(Some(done))
    }
}

/// How often the CLI asks how far a bulk job is.
const JOB_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Follows a bulk job the relay started (`started` is its 202 answer) to
/// its end, printing progress on stderr; its last state, or an error if it
/// failed or the relay forgot it (a restart).
fn wait_for_job(
    client: &AdminClient,
    started: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let Some(id) = started["id"].as_str().map(str::to_owned) else {
        // An answer without a job: a relay that still answers at once.
        return Ok(started);
    };
    let kind = started["kind"].as_str().unwrap_or("bulk").to_owned();
    let done_key = if kind == "purge" {
        "purged"
    } else {
        "replayed"
    };
    let mut job = started;
    let mut shown = String::new();
    loop {
        let progress = format!(
            "{kind} job {id}: {} {done_key} of {} deliveries picked so far ({} notifications), {} skipped",
            cell(&job[done_key]),
            cell(&job["deliveries"]),
            cell(&job["notifications"]),
            cell(&job["skipped"]),
        );
        if progress != shown {
            eprintln!("{progress}");
            shown = progress;
        }
        match job["state"].as_str() {
            Some("running") => {}
            Some("failed") => anyhow::bail!(
                "the {kind} job {id} failed after {} of {} deliveries: {}",
                cell(&job[done_key]),
                cell(&job["deliveries"]),
                cell(&job["error"])
            ),
            _ => return Ok(job),
        }
        std::thread::sleep(JOB_POLL);
        job = client.get(&format!("/api/jobs/{id}"))?;
    }
}

/// `spool purge`: by filter, through the running relay.
fn purge_command(
    config_path: &Path,
    remote: &RemoteArgs,
    filter: &FilterArgs,
    dry_run: bool,
    yes: bool,
) -> anyhow::Result<()> {
    let bulk = Bulk {
        what: "a purge",
        route: "/api/purge",
    };
    let Some(done) = bulk.run(config_path, remote, filter, dry_run, yes)? else {
        return Ok(());
    };
    if dry_run {
        outln!(
            "would purge {} deliveries of {} notifications (run again with --yes)",
            cell(&done["deliveries"]),
            cell(&done["notifications"])
        )?;
    } else {
        outln!(
            "purged {} deliveries of {} notifications ({} skipped: in flight, never attempted, or changed meanwhile)",
            cell(&done["purged"]),
            cell(&done["notifications"]),
            cell(&done["skipped"])
        )?;
    }
    Ok(())
}

/// A target's text on one table line: its line breaks and other control
/// characters (a terminal's escape sequences among them) become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A path segment as typed by a user, made safe for a URL.
pub(crate) fn encode_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
