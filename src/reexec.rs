//! The relay replaces its own process once there is room again: how a
//! relay whose store failed (sled 0.34 cannot be flushed, closed or
//! reopened in the process that saw it fail, see `spool/sled/writer/`),
//! or that started on a disk with no room (its store not opened), comes
//! back by itself, with or without a supervisor.
//!
//! Why an exec, not an exit: an exit counts on systemd's `Restart=`, and a
//! relay run by hand, in a container without one, or under a unit that
//! gave up restarting, would stay down. An exec of `/proc/self/exe` with
//! the same arguments keeps the pid (systemd's MainPID and its notify
//! socket stay valid, no restart is counted), the environment and the
//! log's stdout/stderr; the listening sockets are passed on the way
//! systemd passes them (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`,
//! read by `crate::listen`), so the ports stay bound and clients that
//! connect meanwhile wait in the backlog instead of being refused. sled's
//! files and its lock close with the old image. What goes with it:
//! requests in progress (providers retry them), attempts in flight and
//! outcomes not yet flushed (those deliveries are made again, with the
//! same `webhook-id`: at-least-once); nothing acknowledged, which was
//! synced before its answer.
//!
//! The new process opens the spool as a restart would (with the full check
//! of a spool not stopped cleanly). It is made only when the spool's
//! filesystem has the room an open needs (`Spool::room_to_open`, the same
//! test a start makes, so it cannot loop on a still-full disk), and not
//! sooner than [`SETTLE`] after the failure was first seen, so a store
//! failing for another reason (a dying disk) restarts at that pace.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Duration;

use command_fds::{CommandFdExt as _, FdMapping};

use crate::listen::{Listeners, ADMIN, INGRESS};
use crate::spool::Spool;

/// How often the spool's health and room are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// The least time between a failure first seen and the exec.
const SETTLE: Duration = Duration::from_secs(2);
/// The first descriptor of sockets passed (systemd's `SD_LISTEN_FDS_START`).
const FIRST_PASSED_FD: i32 = 3;
/// The exit status when the exec itself failed (after its descriptors were
/// set up, the process cannot go on): systemd's `Restart=` brings it back.
pub const EXIT_REEXEC_FAILED: u8 = 75;

#[derive(Debug, thiserror::Error)]
pub enum ReexecError {
    #[error("cannot keep a copy of the listening sockets for a restart in place: {0}")]
    Dup(std::io::Error),
}

/// Copies of the listening sockets, kept for the exec.
pub struct Reexec {
    sockets: Vec<(&'static str, OwnedFd)>,
}

impl Reexec {
    /// Keeps a copy of each socket (closed on exec unless passed on).
    pub fn keep(listeners: &Listeners) -> Result<Reexec, ReexecError> {
        let mut sockets = vec![(
            INGRESS,
            OwnedFd::from(listeners.ingress.try_clone().map_err(ReexecError::Dup)?),
        )];
        if let Some(admin) = &listeners.admin {
            sockets.push((
                ADMIN,
                OwnedFd::from(admin.try_clone().map_err(ReexecError::Dup)?),
            ));
        }
        Ok(Reexec { sockets })
    }

    /// Waits until the spool's store failed (or was never opened) and there
    /// is room to open it, then replaces the process; returns only if
    /// `spool` never needs it (the task is aborted at the stop).
    pub async fn when_room_returns(self, spool: Spool) {
        let mut failed_at: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(LOOK_EVERY);
        loop {
            tick.tick().await;
            let health = spool.health();
            if !health.fatal {
                failed_at = None;
                continue;
            }
            let since = *failed_at.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() < SETTLE || Spool::room_to_open(spool.config()).await.is_err() {
                continue;
            }
            tracing::warn!(
                condition = health.condition.as_deref().unwrap_or(""),
                "there is room again for the spool: the relay replaces its process to reopen it (same pid, same sockets)"
            );
            let err = self.exec();
            tracing::error!(error = %err, "cannot replace the relay's process; exiting for the service manager to restart it");
            std::process::exit(i32::from(EXIT_REEXEC_FAILED));
        }
    }

    /// Execs this binary again with the sockets at 3, 4, ...; returns only
    /// on failure.
    fn exec(self) -> std::io::Error {
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| "webhook-relay".into());
        let names: Vec<&str> = self.sockets.iter().map(|(name, _)| *name).collect();
        let mappings = self
            .sockets
            .into_iter()
            .zip(FIRST_PASSED_FD..)
            .map(|((_, parent_fd), child_fd)| FdMapping {
                parent_fd,
                child_fd,
            })
            .collect();
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0(arg0)
            .args(args)
            .env("LISTEN_PID", std::process::id().to_string())
            .env("LISTEN_FDS", names.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        if let Err(collision) = command.fd_mappings(mappings) {
            return std::io::Error::other(format!("{collision:?}"));
        }
        command.exec()
    }
}
