//! The admin listener: the API, `/metrics`, `/healthz`, `/readyz` and the
//! page, on loopback or a unix socket, apart from the provider-facing
//! ingress. It reads the spool through its queries and changes it only
//! through the spool's writes (replays); it never touches a store.
//!
//! - [`auth`]: bearer tokens and roles.
//! - [`session`]: the page's sessions (cookie ids, CSRF tokens), in memory;
//!   [`csrf`] the checks that a page's POST comes from the page.
//! - [`query`]: the filters of the API, pure.
//! - `api`: the route table (method, path, role, handler) and the
//!   routing; `respond`: what every handler answers with (`ApiError`,
//!   JSON, parameter checks, the audit record), below the routes and the
//!   page alike.
//! - The resources, each with its routes' handlers: `health` (the
//!   probes), `notifications` (`listing` the walk they share with
//!   `quarantine`), `replay`, `stats`, `audit_log`, `reload`, `invoices`.
//! - `subscriptions`: creating, deleting, pausing and listing
//!   subscriptions and rotating their secrets; `backfill` gives one
//!   stored notifications or a test event.
//! - `purge`: the bulk purge; `jobs`: bulk replays, purges and
//!   reconciliations run as jobs; `reconcile`: asking an invoice's provider
//!   where it stands, on demand and by filter.
//! - `backup`: the spool's backup archive, streamed.
//! - `page`: the HTML page over the same reads; `html` its document and
//!   answers, `record_page` a notification's and a quarantined body's
//!   views, `invoice_page` its invoice search and timeline; `style` its
//!   style sheet and list tables, `humane` its values as a person reads
//!   them, `chart` its hour of traffic as SVG.

mod api;
mod audit_log;
pub mod auth;
mod backfill;
mod backup;
mod certificate;
mod chart;
pub mod csrf;
mod health;
mod html;
mod humane;
mod invoice_page;
mod invoices;
mod jobs;
mod listing;
mod notifications;
mod page;
mod purge;
mod quarantine;
pub mod query;
mod reconcile;
mod record_page;
mod reload;
mod replay;
mod respond;
pub mod session;
mod stats;
mod style;
mod subscriptions;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::clock::Clock;
use crate::config::{AdminListen, Config};
use crate::listen::slots::{self, Activity, Slots};
use crate::metrics::Metrics;
use crate::spool::Spool;
pub use api::ROUTES;
use auth::Tokens;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen for admin requests on {listen}: {source}")]
    Bind {
        listen: String,
        source: std::io::Error,
    },
    #[error("cannot listen for admin requests on {listen}: {reason}")]
    Socket { listen: String, reason: String },
}

/// What the admin handlers share; the parts a reload changes are swapped whole.
/// A reason the relay is not ready, while it is not.
pub type ReadinessCheck = Box<dyn Fn() -> Option<String> + Send + Sync>;

pub struct Admin {
    spool: Spool,
    metrics: Arc<Metrics>,
    clock: Clock,
    tokens: ArcSwap<Tokens>,
    /// The page's logins.
    sessions: session::Sessions,
    config: ArcSwap<Config>,
    /// Set once every listener is bound and serving.
    serving: AtomicBool,
    /// More reasons `/readyz` may give (e.g. no ACME certificate yet).
    readiness_checks: std::sync::Mutex<Vec<ReadinessCheck>>,
    /// The ACME certificate's state, for the page (with `[server.acme]`).
    certificate: std::sync::OnceLock<Arc<crate::acme::Status>>,
    /// `POST /api/reload` asks whoever holds the receiver (the `serve`
    /// command, which knows the config file) and waits for the answer.
    reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
    /// After an API change of subscriptions is in the spool, asks the app
    /// to hand them to fan-out and the forwarder, and waits for it.
    changes: tokio::sync::mpsc::Sender<ChangeRequest>,
    /// Held by each subscription change from its checks to its answer, so
    /// two requests cannot both find a name free and both take it.
    subscription_changes: tokio::sync::Mutex<()>,
    /// Bulk replays and purges, running and lately finished.
    jobs: jobs::Jobs,
    /// The engine that asks providers where an invoice stands (set by the
    /// relay once it runs), for the checks on demand.
    reconciler: std::sync::OnceLock<crate::reconcile::Reconciler>,
    /// When the relay started (Unix ms): a source expected every so often
    /// that sent nothing since is silent from then.
    started_ms: i64,
}

/// A request to apply the subscriptions kept in the spool; answered once
/// they are in effect, or with why not.
pub type ChangeRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

/// A request to re-read the config file; answered with what changed, or
/// why nothing did.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>;

impl Admin {
    /// The whole spool (the relay's upkeep and its close use it too).
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Whether a subscription of that name is in effect (relay.toml's or
    /// the API's).
    fn has_subscription(&self, name: &str) -> bool {
        self.config
            .load()
            .subscriptions
            .iter()
            .any(|s| s.name == name)
    }

    pub fn new(
        config: &Config,
        spool: Spool,
        metrics: Arc<Metrics>,
        clock: Clock,
        reloads: tokio::sync::mpsc::Sender<ReloadRequest>,
        changes: tokio::sync::mpsc::Sender<ChangeRequest>,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            started_ms: clock.now_ms(),
            reloads,
            changes,
            subscription_changes: tokio::sync::Mutex::new(()),
            jobs: jobs::Jobs::default(),
            spool,
            metrics,
            clock,
            tokens: ArcSwap::from_pointee(Tokens::from_config(&config.admin)),
            sessions: session::Sessions::default(),
            config: ArcSwap::from_pointee(config.clone()),
            serving: AtomicBool::new(false),
            readiness_checks: std::sync::Mutex::new(Vec::new()),
            certificate: std::sync::OnceLock::new(),
            reconciler: std::sync::OnceLock::new(),
        })
    }

    /// The relay accepts notifications: `/readyz` may say so.
    /// Adds a condition to `/readyz`: `Some(reason)` while not ready.
    pub fn add_readiness_check(&self, check: ReadinessCheck) {
        self.readiness_checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(check);
    }

    /// Shows the ACME certificate's state on the page.
    pub fn show_certificate(&self, status: Arc<crate::acme::Status>) {
        let _ = self.certificate.set(status);
    }

    /// Takes the engine that checks invoices with their providers on
    /// demand (the API's, the page's and the bulk job's checks).
    pub fn use_reconciler(&self, reconciler: crate::reconcile::Reconciler) {
        let _ = self.reconciler.set(reconciler);
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    /// Takes a reloaded config's tokens and subscriptions.
    pub fn reload(&self, config: &Config) {
        self.tokens
            .store(Arc::new(Tokens::from_config(&config.admin)));
        self.config.store(Arc::new(config.clone()));
    }
}

/// The fields of a notification, as the API names them, and the label
/// the CLI and the page show each under.
pub const NOTIFICATION_FIELDS: [(&str, &str); 9] = [
    ("id", "id"),
    ("received", "received_at"),
    ("source", "source"),
    ("event", "event"),
    ("invoice", "subject"),
    ("status", "status"),
    ("provider time", "provider_time"),
    ("dedup key", "dedup_key"),
    ("peer", "peer"),
];

/// The same for a quarantined body.
pub const QUARANTINE_FIELDS: [(&str, &str); 6] = [
    ("id", "id"),
    ("received", "received_at"),
    ("source", "source"),
    ("kind", "reason_kind"),
    ("reason", "reason"),
    ("peer", "peer"),
];

/// A bound admin listener.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AdminListener {
    /// Binds as configured. A unix socket left by an earlier run is
    /// replaced; any other file at that path is an error. The socket is
    /// made accessible to its owner only.
    pub async fn bind(listen: &AdminListen) -> Result<AdminListener, AdminError> {
        let bind_error = |source| AdminError::Bind {
            listen: listen.to_string(),
            source,
        };
        match listen {
            AdminListen::Tcp(addr) => TcpListener::bind(addr)
                .await
                .map(AdminListener::Tcp)
                .map_err(bind_error),
            AdminListen::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(AdminError::Socket {
                            listen: listen.to_string(),
                            reason: "a file that is not a socket is in the way".into(),
                        });
                    }
                    std::fs::remove_file(path).map_err(bind_error)?;
                }
                let listener = UnixListener::bind(path).map_err(bind_error)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(bind_error)?;
                Ok(AdminListener::Unix(listener, path.clone()))
            }
        }
    }

    /// Where it listens, for logs and tests.
    pub fn describe(&self) -> String {
        match self {
            AdminListener::Tcp(listener) => listener
                .local_addr()
                .map_or_else(|_| "?".into(), |addr| addr.to_string()),
            AdminListener::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

/// How long admin requests may finish after shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// Admin clients are few; a bound keeps a runaway script from piling up,
/// and idle connections past it are closed to make room (`listen::slots`),
/// so nobody can lock out `/healthz`, the CLI or the page by holding them.
const MAX_CONNECTIONS: usize = 64;
/// Request headers above this are refused (431), as on the ingress.
const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// HTTP/2 streams at once on one admin connection.
const MAX_STREAMS: u32 = 32;

/// The admin listener's connection limits: the ingress's timeouts
/// (`server.header_timeout`, `idle_timeout`, and `handshake_timeout` as the
/// longest wait for a slot; there is no TLS here) and [`MAX_CONNECTIONS`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    idle_timeout: Duration,
    slot_wait: Duration,
}

impl Limits {
    fn from_config(config: &Config) -> Limits {
        Limits {
            header_timeout: config.server.header_timeout.0,
            idle_timeout: config.server.idle_timeout.0,
            slot_wait: config.server.handshake_timeout.0,
        }
    }
}

/// Serves admin requests until `shutdown` resolves.
pub async fn serve(listener: AdminListener, admin: Arc<Admin>, shutdown: impl Future<Output = ()>) {
    let limits = Limits::from_config(&admin.config.load());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Slots::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = &mut shutdown => break,
        };
        let Some((io, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Every slot taken: the connection idle longest makes room, else
        // this one waits (bounded) for a slot.
        let slot = tokio::select! {
            slot = slots.take(limits.slot_wait) => slot,
            _ = &mut shutdown => break,
        };
        let Some(slot) = slot else {
            tracing::debug!(%peer, "no admin connection slot came free; closing");
            continue;
        };
        let (admin, builder, watcher) = (admin.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let activity = slot.activity().clone();
            let idle = limits.idle_timeout;
            match io {
                Accepted::Tcp(stream) => {
                    serve_connection(stream, &peer, admin, &builder, watcher, activity, idle).await
                }
                Accepted::Unix(stream) => {
                    serve_connection(stream, &peer, admin, &builder, watcher, activity, idle).await
                }
            }
            drop(slot);
        });
    }
    if let AdminListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still open after the drain timeout; closing them");
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The next connection and its peer, for the log.
async fn accept(listener: &AdminListener) -> Option<(Accepted, String)> {
    let accepted = match listener {
        AdminListener::Tcp(listener) => listener
            .accept()
            .await
            .map(|(s, peer)| (Accepted::Tcp(s), format!("admin {peer}"))),
        AdminListener::Unix(listener, _) => listener
            .accept()
            .await
            .map(|(s, _)| (Accepted::Unix(s), "admin unix socket".to_owned())),
    };
    match accepted {
        Ok(accepted) => Some(accepted),
        Err(err) => {
            tracing::warn!(error = %err, "admin accept failed");
            None
        }
    }
}

async fn serve_connection<IO>(
    io: IO,
    peer: &str,
    admin: Arc<Admin>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    activity: Arc<Activity>,
    idle_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let seen = activity.clone();
    let service = service_fn(move |request| {
        let (admin, seen) = (admin.clone(), seen.clone());
        async move {
            // A streamed answer (the backup archive) holds it until its
            // body ends: the connection is busy (not idle, not to be
            // closed for room) until then.
            let under_way = seen.request_started();
            Ok::<_, Infallible>(api::handle(admin, request, under_way).await)
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    slots::serve_while_wanted(watcher.watch(connection), &activity, idle_timeout, &peer).await;
}
