//! The command line: `serve`, `check-config`, `spool ...`, `quarantine
//! ...`, `subscriptions ...`, `invoice ...`, `gen-secret`. Commands parse their arguments, load the config and
//! call the library, or (for a running relay) its admin API through
//! [`remote`]; a bad config exits with 64 (EX_USAGE) after naming file,
//! line and key.
//!
//! One file a job: [`args`] the schema, [`serve`] the service (signals
//! handed to [`crate::app::run`]), [`spool`] the commands on a stopped
//! spool, [`inspect`] and [`bulk`] those on a running relay through
//! [`remote`]; here, running a command and its exit code. A spool that
//! `serve` refuses as damaged exits with 65 (EX_DATAERR).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::signing::SigningKey;
use crate::spool::SpoolError;
use remote::{cell, RemoteError};

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

mod args;
mod backup;
mod bulk;
mod inspect;
mod invoice;
mod man;
mod migrate;
mod remote;
mod serve;
mod spool;
mod subscriptions;

pub use args::{
    CertCommand, Cli, Command, ConfigArg, FilterArgs, QuarantineCommand, SpoolCommand,
    SubscriptionsCommand,
};
use remote::post_and_print;

/// EX_USAGE: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 64;
/// EX_DATAERR: the spool is damaged or lost acknowledged notifications.
pub const EXIT_DAMAGED: u8 = 65;
/// EX_TEMPFAIL: the spool is in use; try again when the relay is stopped.
pub const EXIT_LOCKED: u8 = 75;

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
            .and_then(|config| serve::check_certificate(&config).map(|()| config))
            .and_then(|config| {
                outln!(
                    "{}: ok ({} sources, {} subscriptions)",
                    arg.config.display(),
                    config.sources.len(),
                    config.subscriptions.len()
                )?;
                Ok(())
            }),
        Command::Serve(arg) => {
            load(&arg.config).and_then(|config| serve::serve(&arg.config, config))
        }
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
                (true, _) => spool::Dumped::Quarantined,
                (_, true) => spool::Dumped::Audit,
                _ => spool::Dumped::Notifications { deliveries },
            };
            spool::dump(&config, what)
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
        }) => load(&config.config).and_then(|config| spool::check(&config, accept_loss)),
        Command::Spool(SpoolCommand::Migrate { config, to }) => {
            load(&config.config).and_then(|config| migrate::migrate(&config, to))
        }
        Command::Spool(SpoolCommand::MoveOrphans { config, from, to }) => load(&config.config)
            .and_then(|config| spool::reassign_orphans(&config, &from, Some(&to))),
        Command::Spool(SpoolCommand::PurgeOrphans {
            config,
            subscription,
        }) => load(&config.config)
            .and_then(|config| spool::reassign_orphans(&config, &subscription, None)),
        Command::Spool(SpoolCommand::Replay {
            config,
            remote,
            id,
            filter,
            dry_run,
            yes,
        }) => bulk::replay_command(&config.config, &remote, id, filter, dry_run, yes),
        Command::Spool(SpoolCommand::Purge {
            config,
            remote,
            filter,
            dry_run,
            yes,
        }) => bulk::purge_command(&config.config, &remote, &filter, dry_run, yes),
        Command::Spool(SpoolCommand::Ls {
            config,
            remote,
            filter,
            limit,
            all,
        }) => inspect::list(&config.config, &remote, &filter, limit, all),
        Command::Spool(SpoolCommand::Show { config, remote, id }) => {
            inspect::show(&config.config, &remote, &id)
        }
        Command::Spool(SpoolCommand::Stats { config, remote }) => {
            inspect::stats(&config.config, &remote)
        }
        Command::Spool(SpoolCommand::Audit {
            config,
            remote,
            limit,
        }) => inspect::audit_log(&config.config, &remote, limit),
        Command::Quarantine(QuarantineCommand::Ls {
            config,
            remote,
            source,
            since,
            until,
            limit,
        }) => inspect::list(
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
            inspect::show_quarantined(&config.config, &remote, &id)
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
    } else if let Some(migrate) = err.downcast_ref::<crate::spool::migrate::MigrateError>() {
        migrate::exit_code(migrate)
    } else if err.downcast_ref::<crate::config::ConfigError>().is_some()
        // A certificate that cannot be read, or example secrets on a public
        // address, is the operator's to fix: no restart will mend it.
        || err.downcast_ref::<serve::Refused>().is_some()
        || err
            .downcast_ref::<crate::ingress::tls::TlsError>()
            .is_some()
        || matches!(app_error, Some(crate::app::AppError::Tls(_)))
    {
        EXIT_CONFIG
    } else if err.downcast_ref::<spool::Damaged>().is_some()
        || matches!(app_error, Some(crate::app::AppError::Damaged(_)))
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

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
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
