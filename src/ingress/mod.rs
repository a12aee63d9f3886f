//! The ingress listener: HTTPS (or plain HTTP behind a balancer) with hyper,
//! HTTP/1.1 and HTTP/2. It routes `POST /hooks/{source}[/{token}]`,
//! authenticates, enforces limits (connections, handshake, header and body
//! time, body size, rate per peer), runs the provider check and hands the
//! notification to the spool. It answers 200 only once the spool says the
//! notification is on disk.

mod auth;
mod handler;
mod limits;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::config::{Config, OnInvalid};
use crate::metrics::Metrics;
use crate::providers::Provider;
use crate::spool::Spool;
pub use auth::AuthFailure;
pub use handler::IngressError;
use limits::PeerLimiter;

/// One configured source, ready to check requests.
#[derive(Debug)]
struct Source {
    provider: Provider,
    auth: auth::Auth,
    /// Shared with the next config when a reload leaves its rate as it was,
    /// so a reload does not hand every peer a fresh allowance.
    limiter: Option<Arc<PeerLimiter>>,
    rate: Option<(crate::config::Rate, Option<u32>)>,
    on_invalid: OnInvalid,
}

/// Everything a request needs; shared by all connections.
pub struct Ingress {
    sources: HashMap<String, Source>,
    spool: Spool,
    clock: Clock,
    max_body: u64,
    body_timeout: Duration,
    trusted_proxies: Vec<ipnet::IpNet>,
    metrics: Arc<Metrics>,
}

impl Ingress {
    pub fn new(config: &Config, spool: Spool, clock: Clock, metrics: Arc<Metrics>) -> Arc<Self> {
        Ingress::build(config, spool, clock, metrics, None)
    }

    /// The ingress of a reloaded config; rate limiters whose rate did not
    /// change keep their state.
    pub fn reloaded(&self, config: &Config) -> Arc<Self> {
        Ingress::build(
            config,
            self.spool.clone(),
            self.clock,
            self.metrics.clone(),
            Some(self),
        )
    }

    fn build(
        config: &Config,
        spool: Spool,
        clock: Clock,
        metrics: Arc<Metrics>,
        previous: Option<&Ingress>,
    ) -> Arc<Self> {
        let sources = config
            .sources
            .iter()
            .map(|(name, source)| {
                let rate = source.rate.map(|rate| (rate, source.burst));
                let kept = previous
                    .and_then(|p| p.sources.get(name))
                    .filter(|old| old.rate == rate)
                    .and_then(|old| old.limiter.clone());
                let limiter = kept.or_else(|| {
                    source
                        .rate
                        .and_then(|rate| PeerLimiter::new(rate, source.burst))
                        .map(Arc::new)
                });
                let checked = Source {
                    provider: source.provider(),
                    auth: auth::Auth::new(source),
                    limiter,
                    rate,
                    on_invalid: source.on_invalid,
                };
                (name.clone(), checked)
            })
            .collect();
        Arc::new(Ingress {
            sources,
            spool,
            clock,
            max_body: config.server.max_body.0,
            body_timeout: config.server.body_timeout.0,
            trusted_proxies: config.server.trusted_proxy_networks(),
            metrics,
        })
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Forgets rate-limit state of idle peers; call periodically.
    pub fn sweep_limiters(&self) {
        for (name, source) in &self.sources {
            if let Some(limiter) = &source.limiter {
                let peers = limiter.sweep();
                if peers > 100_000 {
                    tracing::warn!(source = %name, peers, "many peers are being rate limited");
                }
            }
        }
    }
}

/// Connection-level settings of the listener.
#[derive(Clone)]
pub struct ListenerSettings {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request under way.
    pub idle_timeout: Duration,
    pub http2_max_streams: u32,
    /// How long open connections may finish their requests after shutdown.
    pub drain_timeout: Duration,
}

impl ListenerSettings {
    pub fn from_config(config: &Config, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        ListenerSettings {
            tls,
            max_connections: config.server.max_connections,
            handshake_timeout: config.server.handshake_timeout.0,
            header_timeout: config.server.header_timeout.0,
            idle_timeout: config.server.idle_timeout.0,
            http2_max_streams: config.server.http2_max_streams,
            drain_timeout: config.server.body_timeout.0 + Duration::from_secs(5),
        }
    }
}

/// Accepts connections until `shutdown` resolves, then lets open requests
/// finish (bounded by `drain_timeout`).
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
    ingress: Arc<ArcSwap<Ingress>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    // Tells connections still in their TLS handshake to give up: they have
    // no request to finish, and would hold the drain for their whole timeout.
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (ingress, builder, settings) = (ingress.clone(), builder.clone(), settings.clone());
        let watcher = graceful.watcher();
        let mut close_rx = close_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match &settings.tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream));
                    tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(tls)) => {
                                serve_connection(tls, peer, ingress, &builder, watcher, settings.idle_timeout).await
                            }
                            Ok(Err(err)) => {
                                tracing::debug!(%peer, error = %err, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        },
                        // (Inside a block: the guard `wait_for` returns is not Send.)
                        _ = async { close_rx.wait_for(|closing| *closing).await.is_ok() } => {
                            tracing::debug!(%peer, "closed during its TLS handshake: shutting down");
                        }
                    }
                }
                None => {
                    serve_connection(
                        stream,
                        peer,
                        ingress,
                        &builder,
                        watcher,
                        settings.idle_timeout,
                    )
                    .await
                }
            }
        });
    }
    drop(listener);
    let _ = close_tx.send(true);
    if tokio::time::timeout(settings.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("ingress connections still open after the drain timeout; closing them");
    }
}

async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    ingress: Arc<ArcSwap<Ingress>>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    idle_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let seen = activity.clone();
    let service = service_fn(move |request| {
        let (ingress, seen) = (ingress.clone(), seen.clone());
        async move {
            let _under_way = seen.request_started();
            // Each request sees the config current when it arrives (a reload
            // applies to open connections too).
            let ingress = ingress.load_full();
            Ok::<_, std::convert::Infallible>(handler::handle(&ingress, peer, request).await)
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::select! {
        result = watcher.watch(connection) => {
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        }
        // Dropping the connection closes it: nothing is under way on it.
        () = activity.idle_for(idle_timeout) => {
            tracing::debug!(%peer, "closing a connection idle for {idle_timeout:?}");
        }
    }
}

/// Whether a connection has a request under way, and since when it has
/// had none: a client that connects and sends nothing, or keeps an idle
/// connection, must not hold one of the `max_connections` slots forever.
struct Activity {
    in_flight: AtomicUsize,
    last_end: std::sync::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_end: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Marks a request under way until the guard is dropped.
    fn request_started(self: &Arc<Self>) -> RequestUnderWay {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestUnderWay(self.clone())
    }

    fn last_end(&self) -> tokio::time::Instant {
        *self
            .last_end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves once no request has been under way for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            tokio::time::sleep_until(self.last_end() + timeout).await;
            if self.in_flight.load(Ordering::Acquire) == 0 && self.last_end().elapsed() >= timeout {
                return;
            }
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // Look again once it could have become idle.
                tokio::time::sleep(timeout).await;
            }
        }
    }
}

struct RequestUnderWay(Arc<Activity>);

impl Drop for RequestUnderWay {
    fn drop(&mut self) {
        *self
            .0
            .last_end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
