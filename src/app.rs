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
use crate::spool::{Spool, SpoolError};

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
}

/// A running relay. Dropping it does not stop it; call [`Relay::stop`].
pub struct Relay {
    pub ingress_addr: SocketAddr,
    pub spool: Spool,
    cert: Option<Arc<ReloadableCert>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts everything; the config must already be validated.
    pub async fn start(config: Config) -> Result<Relay, AppError> {
        let clock = Clock::system();
        let spool = Spool::open(&config.spool)?;
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
            clock,
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
        self.task.await.map_err(|e| AppError::Task(e.to_string()))
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
    clock: Clock,
    stopped: watch::Receiver<bool>,
) {
    let signal = |rx: watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let (forwarder_stop, forwarder_stopped) = watch::channel(false);
    let forwarding = tokio::spawn(forwarder.run(signal(forwarder_stopped)));
    let maintenance = tokio::spawn(maintain(ingress.clone(), spool.clone(), clock));

    ingress::serve(listener, settings, ingress, signal(stopped)).await;
    tracing::info!("ingress closed; stopping the forwarder");
    let _ = forwarder_stop.send(true);
    let _ = forwarding.await;
    maintenance.abort();
    spool.close().await;
    tracing::info!("spool flushed; relay stopped");
}

/// Periodic upkeep: forget idle rate-limit keys, prune expired dedup entries.
async fn maintain(ingress: Arc<Ingress>, spool: Spool, clock: Clock) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        ingress.sweep_limiters();
        let spool = spool.clone();
        let now = clock.now_ms();
        match tokio::task::spawn_blocking(move || spool.prune_dedup(now)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::debug!(removed, "pruned expired dedup entries"),
            Ok(Err(err)) => tracing::warn!(error = %err, "dedup pruning failed"),
            Err(err) => tracing::warn!(error = %err, "dedup pruning task failed"),
        }
    }
}
