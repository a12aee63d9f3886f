//! Wires the parts and owns start-up and shutdown: opens the spool, sets up
//! TLS, takes the ingress listener (bound as configured, or handed over by
//! systemd: [`crate::listen`]), starts the flusher, the forwarder and the
//! maintenance timers, and on stop takes them down in order (ingress first,
//! then the forwarder's in-flight attempts, then a last flush). A start that
//! fails writes nothing: the self-signed certificate of a first start is
//! written once everything else is ready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::forwarder::{Forwarder, TargetError};
use crate::ingress::tls::{self, ReloadableCert, SelfSigned, TlsError};
use crate::ingress::{self, ListenerSettings, LiveIngress};
use crate::listen::{ListenError, Listeners};
use crate::spool::{Routes, Spool, SpoolError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("a relay task failed: {0}")]
    Task(String),
    #[error("the relay stopped, but its spool could not be closed cleanly: {0}")]
    Close(SpoolError),
}

/// A running relay. Dropping it does not stop it; call [`Relay::stop`].
pub struct Relay {
    pub ingress_addr: SocketAddr,
    pub spool: Spool,
    cert: Option<Arc<ReloadableCert>>,
    ingress: Arc<LiveIngress>,
    /// The config in force (the last one reloaded).
    config: std::sync::Mutex<Config>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), SpoolError>>,
}

impl Relay {
    /// Starts everything on a listener bound as configured; the config must
    /// already be validated.
    pub async fn start(config: Config) -> Result<Relay, AppError> {
        let listeners = Listeners::bind(config.server.listen)?;
        Relay::start_on(config, listeners).await
    }

    /// Starts everything on these listeners; the config must already be
    /// validated.
    pub async fn start_on(config: Config, listeners: Listeners) -> Result<Relay, AppError> {
        let clock = Clock::system();
        let spool = {
            let (spool_config, routes) = (config.spool.clone(), Routes::from_config(&config));
            tokio::task::spawn_blocking(move || Spool::open(&spool_config, routes, clock))
                .await
                .map_err(|e| AppError::Task(e.to_string()))??
        };
        let (cert, self_signed) = load_certificate(&config)?;
        let acceptor = match &cert {
            Some(cert) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                cert.clone(),
            )?)),
            None => None,
        };
        let forwarder = Forwarder::new(&config, spool.clone(), clock)?;
        let listen_error = |source| ListenError::Bind {
            addr: config.server.listen,
            source,
        };
        let listener = TcpListener::from_std(listeners.ingress).map_err(listen_error)?;
        let ingress_addr = listener.local_addr().map_err(listen_error)?;
        // Nothing can fail after this: the files of a new certificate now.
        if let Some(generated) = self_signed {
            generated.write()?;
        }
        let ingress = LiveIngress::new(&config, spool.clone(), clock);
        let settings = ListenerSettings::from_config(&config, acceptor);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            listener,
            settings,
            ingress.clone(),
            forwarder,
            spool.clone(),
            stopped,
        ));
        tracing::info!(
            addr = %ingress_addr,
            tls = cert.is_some(),
            socket_activated = listeners.activated,
            spool = %spool.path().display(),
            subscriptions = config.subscriptions.len(),
            "ingress listening"
        );
        Ok(Relay {
            ingress_addr,
            spool,
            cert,
            ingress,
            config: std::sync::Mutex::new(config),
            stop,
            task,
        })
    }

    /// Applies a reloaded (and validated) config: the sources, `max_body`,
    /// `body_timeout` and `trusted_proxies` at once, and the certificate
    /// files re-read; says which other changed keys wait for a restart.
    pub fn reload(&self, config: Config) {
        self.ingress.reload(&config);
        self.reload_certificate();
        let mut running = self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pending = needs_restart(&running, &config);
        if !pending.is_empty() {
            tracing::warn!(
                keys = %pending.join(", "),
                "config reloaded, but these changes take effect only at the next restart"
            );
        }
        tracing::info!(sources = config.sources.len(), "config reloaded");
        *running = config;
    }

    /// Re-reads the TLS certificate files (SIGHUP).
    pub fn reload_certificate(&self) {
        if let Some(cert) = &self.cert {
            match cert.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(err) => {
                    tracing::error!(error = %err, "TLS certificate not reloaded; keeping the old one")
                }
            }
        }
    }

    /// Stops accepting, lets the forwarder finish its attempts in flight,
    /// makes a last flush and closes the spool.
    pub async fn stop(self) -> Result<(), AppError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| AppError::Task(e.to_string()))?
            .map_err(AppError::Close)
    }
}

/// The certificate to serve, and a self-signed one still to be written.
type Certificate = (Option<Arc<ReloadableCert>>, Option<SelfSigned>);

/// The keys (sections, or keys of `[server]`) that differ between two
/// configs and that only a restart applies.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    // Compared through their Debug form: the sections hold no secret-free
    // equality of their own, and this runs once per reload.
    let differ =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let (a, b) = (&old.server, &new.server);
    let mut changed = Vec::new();
    for (key, differs) in [
        ("server.listen", a.listen != b.listen),
        (
            "server.tls",
            a.tls != b.tls || a.self_signed != b.self_signed,
        ),
        (
            "server.tls_cert",
            a.tls_cert != b.tls_cert || a.tls_key != b.tls_key,
        ),
        (
            "server.header_timeout",
            a.header_timeout != b.header_timeout,
        ),
        (
            "server.handshake_timeout",
            a.handshake_timeout != b.handshake_timeout,
        ),
        ("server.idle_timeout", a.idle_timeout != b.idle_timeout),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "server.http2_max_streams",
            a.http2_max_streams != b.http2_max_streams,
        ),
        ("spool", differ(&old.spool, &new.spool)),
        ("forwarder", differ(&old.forwarder, &new.forwarder)),
        (
            "subscriptions",
            differ(&old.subscriptions, &new.subscriptions),
        ),
    ] {
        if differs {
            changed.push(key);
        }
    }
    changed
}

fn load_certificate(config: &Config) -> Result<Certificate, TlsError> {
    if !config.server.tls {
        return Ok((None, None));
    }
    let (cert, key) = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let (cert, key) = config.self_signed_paths();
            if !(cert.exists() && key.exists()) {
                let generated = SelfSigned::generate(&cert, &key)?;
                let loaded = ReloadableCert::from_self_signed(&generated)?;
                return Ok((Some(loaded), Some(generated)));
            }
            (cert, key)
        }
    };
    Ok((Some(ReloadableCert::load(&cert, &key)?), None))
}

async fn run(
    listener: TcpListener,
    settings: ListenerSettings,
    ingress: Arc<LiveIngress>,
    forwarder: Forwarder,
    spool: Spool,
    stopped: watch::Receiver<bool>,
) -> Result<(), SpoolError> {
    let signal = |rx: watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let (forwarder_stop, forwarder_stopped) = watch::channel(false);
    let forwarding = tokio::spawn(forwarder.run(signal(forwarder_stopped)));
    let maintenance = tokio::spawn(maintain(ingress.clone(), spool.clone()));

    ingress::serve(listener, settings, ingress, signal(stopped)).await;
    tracing::info!("ingress closed; stopping the forwarder");
    let _ = forwarder_stop.send(true);
    let _ = forwarding.await;
    maintenance.abort();
    match spool.close().await {
        Ok(()) => {
            tracing::info!("spool flushed; relay stopped");
            Ok(())
        }
        Err(err) => {
            tracing::error!(error = %err, "relay stopped, but the spool's last flush failed");
            Err(err)
        }
    }
}

/// How often the spool gets a slice of upkeep (retention, recovery).
const SPOOL_UPKEEP: Duration = Duration::from_millis(100);
/// How often idle rate-limit keys are forgotten.
const LIMITER_SWEEP: Duration = Duration::from_secs(60);

/// Periodic upkeep: the spool's slices, and forgetting idle rate-limit keys.
async fn maintain(ingress: Arc<LiveIngress>, spool: Spool) {
    let mut tick = tokio::time::interval(SPOOL_UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        // Errors (a store that cannot write yet) are the spool's to log, once.
        let _ = spool.maintain().await;
        if last_sweep.elapsed() >= LIMITER_SWEEP {
            ingress.sweep_limiters();
            last_sweep = tokio::time::Instant::now();
        }
    }
}
