//! The relay as a service: [`run`] checks the spool, starts the relay on
//! the listeners and the clock it is handed, tells systemd it is ready,
//! pings systemd's watchdog, reloads the config file when asked, and on
//! the shutdown future stops it (the caller, `webhook-relay serve`, turns
//! SIGTERM and SIGINT into that future and SIGHUP into reload triggers,
//! as mini-redis's `server::run(listener, signal::ctrl_c())`).
//!
//! A damaged spool is never served with holes: [`run`] first walks a sled
//! spool the way `spool check` does and refuses ([`AppError::Damaged`]) one
//! that sled cannot read in part or that lost acknowledged notifications.

use std::future::Future;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::{AppError, Relay};
use crate::clock::Clock;
use crate::config::{Config, SpoolBackend};
use crate::listen::Listeners;
use crate::reexec::Reexec;
use crate::spool::{CheckProblem, Spool};

/// What [`run`] starts a relay with.
pub struct Start {
    /// Validated.
    pub config: Config,
    /// The file a reload re-reads.
    pub config_path: PathBuf,
    pub listeners: Listeners,
    /// The time the relay reads: [`Clock::system`] in service.
    pub clock: Clock,
    /// Copies of the sockets for a restart in place once a spool that
    /// failed or had no room can be opened again ([`crate::reexec`]);
    /// `None` never replaces the process (a relay inside a test).
    pub restart_in_place: Option<Reexec>,
}

/// Runs a relay until `shutdown` completes, then stops it cleanly (the
/// ingress and the forwarder drained, a last flush). Each item of
/// `reloads` (SIGHUP in service) re-reads the config file and applies it,
/// audited as by `SIGHUP`; so does the admin API's `POST /api/reload`.
pub async fn run(
    start: Start,
    shutdown: impl Future<Output = ()>,
    reloads: mpsc::Receiver<()>,
) -> Result<(), AppError> {
    let Start {
        config,
        config_path,
        listeners,
        clock,
        restart_in_place,
    } = start;
    verify_spool(&config).await?;
    let relay = Relay::start_on(config, listeners, clock).await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(watchdog(relay.spool.clone()));
    let reopen =
        restart_in_place.map(|reexec| tokio::spawn(reexec.when_room_returns(relay.spool.clone())));
    wait_for_stop(&relay, &config_path, shutdown, reloads).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    watchdog.abort();
    if let Some(reopen) = reopen {
        reopen.abort();
    }
    relay.stop().await
}

/// Waits for `shutdown`; a reload trigger (or the admin API) reloads the
/// config file meanwhile.
async fn wait_for_stop(
    relay: &Relay,
    path: &Path,
    shutdown: impl Future<Output = ()>,
    mut reloads: mpsc::Receiver<()>,
) {
    let mut requests = relay.take_reload_requests();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = reloads.recv() => {
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
        if spool.alive(period / 4).await {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("spool writer not answering; withholding the watchdog ping");
        }
    }
}

/// Before serving, a walk over the whole spool, as `spool check` makes:
/// a spool with parts sled cannot read is refused (serving it would answer
/// from holes: duplicates not recognised, deliveries not found); repairs
/// are logged; entries that are read but not understood are logged by name
/// and skipped when met. A loss is left to the open that follows, which
/// refuses it with its own advice.
async fn verify_spool(config: &Config) -> Result<(), AppError> {
    if config.spool.backend == SpoolBackend::Jetstream {
        // Its servers keep the stream whole (each write acknowledged by a
        // quorum); the relay's own part, the index, is refolded at open
        // when it does not match the stream.
        return Ok(());
    }
    if Spool::room_to_open(&config.spool).await.is_err() {
        // The spool is not opened before there is room (`Relay::start_on`);
        // the process that opens it then checks it.
        return Ok(());
    }
    if Spool::is_new(&config.spool) {
        tracing::info!(spool = %config.spool.sled.path.display(), "no spool there yet: creating a new one");
        return Ok(());
    }
    // The lock first: a second relay on the same spool says only that.
    Spool::ensure_not_locked(&config.spool).await?;
    if Spool::stopped_cleanly(&config.spool) {
        tracing::info!("the spool was stopped cleanly and is untouched since; no full check");
        return Ok(());
    }
    tracing::info!(spool = %config.spool.sled.path.display(), "checking the whole spool before serving (it was not stopped cleanly, or its files changed)");
    let check = Spool::check(&config.spool, false);
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
    let report = report?;
    for repair in &report.repaired {
        tracing::warn!(repair = %repair, "spool repaired on open");
    }
    let mut unreadable = Vec::new();
    for problem in &report.problems {
        match problem {
            CheckProblem::Unreadable(what) => {
                tracing::error!(problem = %what, "part of the spool cannot be read");
                unreadable.push(what.as_str());
            }
            CheckProblem::Lost(_) => {}
            CheckProblem::Record(_) => {
                tracing::error!(record = %problem, "unreadable record in the spool; skipped when met");
            }
        }
    }
    if unreadable.is_empty() {
        return Ok(());
    }
    Err(AppError::Damaged(format!(
        "spool {} is damaged, so it is not served: {}. Stop here: copy the spool directory \
         for analysis, then restore it from a backup, or move it aside to start with an \
         empty one (`webhook-relay spool dump` on it prints every notification it can \
         still read and names what it cannot)",
        config.spool.sled.path.display(),
        unreadable.join("; ")
    )))
}
