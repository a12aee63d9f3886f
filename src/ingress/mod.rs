//! The ingress listener: HTTPS (or plain HTTP behind a balancer) with hyper,
//! HTTP/1.1 and HTTP/2. It routes `POST /hooks/{source}[/{token}]`,
//! authenticates, enforces limits (connections, handshake, header and body
//! time, body size, rate per peer), runs the provider check and hands the
//! notification to the spool. It answers 200 only once the spool says the
//! notification is on disk. Memory is bounded by the body budget
//! (`budget.rs`), connection slots (`crate::listen::slots`), hyper's header buffers and
//! the HTTP/2 settings set in [`serve`].

mod answer;
mod auth;
mod budget;
mod handler;
mod limits;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::{Config, OnInvalid};
use crate::listen::slots::{self, Activity, Slots};
use crate::metrics::Metrics;
use crate::providers::Provider;
use crate::spool::Producer;
pub use auth::AuthFailure;
use budget::{BodyBudget, ConnectionShare};
pub use handler::IngressError;
use limits::PeerLimiter;

/// For the fuzz targets (`fuzz/`): the header and body checks of
/// authentication, with no socket. `value` is presented as every header
/// the checks read, `path_token` as the path's token.
#[doc(hidden)]
pub fn fuzz_auth(
    source: &crate::config::SourceConfig,
    value: &[u8],
    path_token: &str,
    body: &[u8],
) {
    let auth = auth::Auth::new(source);
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(value) {
        for name in ["authorization", "x-signature", "x-forwarded-for"] {
            headers.append(name, value.clone());
        }
    }
    let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().expect("a valid network")];
    let peer = auth::client_ip(std::net::IpAddr::from([127, 0, 0, 1]), &headers, &trusted);
    let _ = auth.check_request(peer, Some(path_token), &headers);
    let _ = auth.check_body(&headers, body);
}

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
    spool: Producer,
    clock: Clock,
    max_body: u64,
    body_timeout: Duration,
    trusted_proxies: Vec<ipnet::IpNet>,
    metrics: Arc<Metrics>,
    /// Kept across reloads that leave `max_body` and `max_inflight_body`
    /// as they were, so bodies in flight stay counted.
    budget: Arc<BodyBudget>,
}

impl Ingress {
    pub fn new(config: &Config, spool: Producer, clock: Clock, metrics: Arc<Metrics>) -> Arc<Self> {
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
        spool: Producer,
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
        let budget = previous
            .map(|p| p.budget.clone())
            .filter(|b| b.is_for(config.server.max_inflight_body.0, config.server.max_body.0))
            .unwrap_or_else(|| {
                Arc::new(BodyBudget::new(
                    config.server.max_inflight_body.0,
                    config.server.max_body.0,
                ))
            });
        Arc::new(Ingress {
            sources,
            spool,
            clock,
            max_body: config.server.max_body.0,
            body_timeout: config.server.body_timeout.0,
            trusted_proxies: config.server.trusted_proxy_networks(),
            metrics,
            budget,
        })
    }

    pub fn spool(&self) -> &Producer {
        &self.spool
    }

    /// Forgets rate-limit state of idle peers; call periodically.
    pub fn sweep_limiters(&self) {
        for (name, source) in &self.sources {
            if let Some(limiter) = &source.limiter {
                let peers = limiter.sweep();
                if peers * 2 > limits::MAX_KEYS {
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
    /// HTTP/2 flow-control windows: what a client may send before the
    /// relay reads it, per stream and per connection.
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
    /// How long open connections may finish their requests after shutdown
    /// (`server.shutdown_grace`, so a stop fits in TimeoutStopSec whatever
    /// `body_timeout` is).
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
            http2_stream_window: HTTP2_STREAM_WINDOW,
            http2_connection_window: HTTP2_CONNECTION_WINDOW,
            drain_timeout: (config.server.body_timeout.0 + Duration::from_secs(5))
                .min(config.server.shutdown_grace.0),
        }
    }
}

/// HTTP/2 flow control: the body bytes a client may send before the relay
/// reads them, per stream (h2's own default, 64 KiB less one byte) and per
/// connection. They sit in h2's buffers, outside the body budget, so they
/// are kept small: at most `max_connections` × 128 KiB in all.
const HTTP2_STREAM_WINDOW: u32 = 65_535;
const HTTP2_CONNECTION_WINDOW: u32 = 128 * 1024;
/// Request headers (HTTP/1.1 read buffer, HTTP/2 header list) above this
/// are refused: 431 on HTTP/1.1, 431 and a refused stream on HTTP/2.
const MAX_HEADER_BYTES: u32 = 64 * 1024;

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
        .max_buf_size(MAX_HEADER_BYTES as usize)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_max_streams)
        .initial_stream_window_size(settings.http2_stream_window)
        .initial_connection_window_size(settings.http2_connection_window)
        .max_header_list_size(MAX_HEADER_BYTES)
        .max_send_buf_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builders = Arc::new(Builders::new(builder));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Slots::new(settings.max_connections));
    // Tells connections still in their TLS handshake to give up: they have
    // no request to finish, and would hold the drain for their whole timeout.
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
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
        // Every slot taken: the connection idle longest makes room, else
        // this one waits (at most a handshake timeout) for a slot.
        let slot = tokio::select! {
            slot = slots.take(settings.handshake_timeout) => slot,
            _ = &mut shutdown => break,
        };
        let Some(slot) = slot else {
            tracing::debug!(%peer, "no connection slot came free; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (ingress, builders, settings) = (ingress.clone(), builders.clone(), settings.clone());
        let watcher = graceful.watcher();
        let mut close_rx = close_rx.clone();
        tokio::spawn(async move {
            let activity = slot.activity().clone();
            match &settings.tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream));
                    tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(tls)) => {
                                let builder = builders.for_alpn(tls.get_ref().1.alpn_protocol());
                                serve_connection(tls, peer, ingress, builder, watcher, activity, settings.idle_timeout).await
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
                        () = activity.evicted() => {
                            tracing::debug!(%peer, "closed during its TLS handshake to make room");
                        }
                    }
                }
                None => {
                    serve_connection(
                        stream,
                        peer,
                        ingress,
                        &builders.sniffing,
                        watcher,
                        activity,
                        settings.idle_timeout,
                    )
                    .await
                }
            }
            drop(slot);
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

/// One connection builder per protocol choice, all with the same settings.
/// A TLS connection is served in the protocol its ALPN named (RFC 9113
/// §3.2: `h2` means HTTP/2 from the first byte, so a bad preface gets a
/// GOAWAY, never an HTTP/1.1 answer). A connection that named none (plain
/// HTTP behind a balancer, or a TLS client that offers no ALPN) is sniffed,
/// so prior-knowledge HTTP/2 keeps working there.
struct Builders {
    sniffing: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(sniffing: auto::Builder<TokioExecutor>) -> Builders {
        Builders {
            http1: sniffing.clone().http1_only(),
            http2: sniffing.clone().http2_only(),
            sniffing,
        }
    }

    fn for_alpn(&self, alpn: Option<&[u8]>) -> &auto::Builder<TokioExecutor> {
        match alpn {
            Some(b"h2") => &self.http2,
            Some(b"http/1.1" | b"http/1.0") => &self.http1,
            _ => &self.sniffing,
        }
    }
}

async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    ingress: Arc<ArcSwap<Ingress>>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    activity: Arc<Activity>,
    idle_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let seen = activity.clone();
    let share: ConnectionShare = ingress
        .load()
        .budget
        .connection_share(peer.ip().to_canonical());
    let service = service_fn(move |request| {
        let (ingress, seen, share) = (ingress.clone(), seen.clone(), share.clone());
        async move {
            let _under_way = seen.request_started();
            // Each request sees the config current when it arrives (a reload
            // applies to open connections too).
            let ingress = ingress.load_full();
            Ok::<_, std::convert::Infallible>(
                handler::handle(&ingress, peer, &share, request).await,
            )
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    let connection = watcher.watch(connection);
    slots::serve_while_wanted(connection, &activity, idle_timeout, &peer).await;
}
