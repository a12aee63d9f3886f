//! Wires the parts and owns start-up and shutdown: opens the spool, sets up
//! TLS, binds the ingress listener, starts the flusher, the forwarder and the
//! maintenance timers, and on stop takes them down in order (ingress first,
//! then the forwarder's in-flight attempts, then a last flush).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::forwarder::{Forwarder, TargetError};
use crate::ingress::tls::{self, ReloadableCert, TlsError};
use crate::ingress::{self, Ingress, ListenerSettings};
use crate::spool::{Routes, Spool, SpoolError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), SpoolError>>,
}

impl Relay {
    /// Starts everything; the config must already be validated.
    pub async fn start(config: Config) -> Result<Relay, AppError> {
        let clock = Clock::system();
        let spool = {
            let (spool_config, routes) = (config.spool.clone(), Routes::from_config(&config));
            tokio::task::spawn_blocking(move || Spool::open(&spool_config, routes, clock))
                .await
                .map_err(|e| AppError::Task(e.to_string()))??
        };
        let cert = load_certificate(&config)?;
        let acceptor = match &cert {
            Some(cert) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                cert.clone(),
            )?)),
            None => None,
        };
        let forwarder = Forwarder::new(&config, spool.clone(), clock)?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.server.listen,
                source,
            })?;
        let ingress_addr = listener.local_addr().map_err(|source| AppError::Bind {
            addr: config.server.listen,
            source,
        })?;
        let ingress = Ingress::new(&config, spool.clone(), clock);
        let settings = ListenerSettings::from_config(&config, acceptor);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            listener,
            settings,
            ingress,
            forwarder,
            spool.clone(),
            stopped,
        ));
        tracing::info!(
            addr = %ingress_addr,
            tls = cert.is_some(),
            spool = %spool.path().display(),
            subscriptions = config.subscriptions.len(),
            "ingress listening"
        );
        Ok(Relay {
            ingress_addr,
            spool,
            cert,
            stop,
            task,
        })
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

fn load_certificate(config: &Config) -> Result<Option<Arc<ReloadableCert>>, TlsError> {
    if !config.server.tls {
        return Ok(None);
    }
    let (cert, key) = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let (cert, key) = config.self_signed_paths();
            tls::ensure_self_signed(&cert, &key)?;
            (cert, key)
        }
    };
    ReloadableCert::load(&cert, &key).map(Some)
}

async fn run(
    listener: TcpListener,
    settings: ListenerSettings,
    ingress: Arc<Ingress>,
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
const LIMITER_SWEEP: Duration = Duration::from_secs(10);

/// Periodic upkeep: the spool's slices, and forgetting idle rate-limit keys.
async fn maintain(ingress: Arc<Ingress>, spool: Spool) {
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
