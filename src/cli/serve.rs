//! `serve`: takes the listening sockets (systemd's, or bound as
//! configured), refuses what must not be served, installs the signals and
//! hands them to [`crate::app::run`] as its shutdown future (SIGTERM,
//! SIGINT) and its reload trigger (SIGHUP).

use std::future::Future;
use std::path::Path;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::app::{self, Start};
use crate::clock::Clock;
use crate::config::Config;
use crate::listen::Listeners;

/// What `serve` refuses to do (exit 64): listen where others can reach it
/// with the repository's example secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refused(String);

/// The configured certificate and key files can be read and fit together.
pub(super) fn check_certificate(config: &Config) -> anyhow::Result<()> {
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

pub(super) fn serve(path: &Path, config: Config) -> anyhow::Result<()> {
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
        let (shutdown, reloads) = Signals::install()?.into_controls();
        let start = Start {
            config,
            config_path: path.to_owned(),
            listeners,
            clock: Clock::system(),
            restart_in_place: Some(reexec),
        };
        app::run(start, shutdown, reloads).await?;
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

    /// SIGTERM or SIGINT as the relay's shutdown future; each SIGHUP as a
    /// reload trigger (on the runtime: it spawns the SIGHUP's forwarder).
    fn into_controls(self) -> (impl Future<Output = ()>, mpsc::Receiver<()>) {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = self;
        // Room for one: SIGHUPs that come while a reload runs make one more
        // reload after it, as the one pending signal they were made before.
        let (trigger, reloads) = mpsc::channel(1);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(mpsc::error::TrySendError::Closed(())) = trigger.try_send(()) {
                    break;
                }
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        (shutdown, reloads)
    }
}
