//! Wires the parts and owns start-up and shutdown: opens the spool, sets up
//! TLS, takes the ingress listener (bound as configured, or handed over by
//! systemd: [`crate::listen`]), starts the flusher, the forwarder and the
//! maintenance timers, and on stop takes them down (the ingress's requests
//! under way and the forwarder's attempts in flight side by side, each
//! within its `shutdown_grace`, then a last flush). A start that
//! fails writes nothing: the self-signed certificate of a first start is
//! written once everything else is ready.
//!
//! The subscriptions in effect are those of `relay.toml` and those the
//! admin API created (kept in the spool): [`effective_config`] merges them,
//! and both a reload and an API change hand the result to fan-out, the
//! forwarder and the admin API the same way.
//!
//! [`run`] (in `app/service.rs`) is the relay as a service: the spool's
//! check before serving, systemd's readiness and watchdog, reloads, and the
//! stop when its shutdown future completes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, AdminError, AdminListener};
use crate::clock::Clock;
use crate::config::Config;
use crate::events::Events;
use crate::forwarder::{Forwarder, TargetError, Targets};
use crate::ingress::tls::{self, ReloadableCert, SelfSigned, TlsError};
use crate::ingress::{self, Ingress, ListenerSettings};
use crate::listen::{self, ListenError};
use crate::metrics::Metrics;
use crate::reconcile::{Reconciler, SetupError};
use crate::spool::{ApiSubscription, Routes, Spool, SpoolError};

mod service;

pub use service::{run, Start};

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
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("a relay task failed: {0}")]
    Task(String),
    #[error("the relay stopped, but its spool could not be closed cleanly: {0}")]
    Close(SpoolError),
    #[error("{0}")]
    Subscriptions(String),
    /// The spool has parts that cannot be read: not served.
    #[error("{0}")]
    Damaged(String),
    #[error(transparent)]
    Acme(#[from] crate::acme::AcmeError),
    #[error(transparent)]
    Reconcile(#[from] SetupError),
}

/// A running relay. Dropping it does not stop it; call [`Relay::stop`].
pub struct Relay {
    pub ingress_addr: SocketAddr,
    /// Where the admin listener listens, when configured.
    pub admin_listen: Option<String>,
    pub admin: Arc<Admin>,
    pub spool: Spool,
    cert: Option<Arc<ReloadableCert>>,
    /// Orders and renews the certificate under `[server.acme]`.
    _acme: Option<crate::acme::Running>,
    /// What a reload or an API change of subscriptions swaps.
    live: Arc<Live>,
    /// Checks stuck invoices with their providers' query APIs.
    reconciler: Reconciler,
    ingress: Arc<ArcSwap<Ingress>>,
    /// Applies the admin API's subscription changes.
    applier: JoinHandle<()>,
    reload_requests: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<admin::ReloadRequest>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), SpoolError>>,
}

impl Relay {
    /// Starts everything on a listener bound as configured, on the system
    /// clock; the config must already be validated.
    pub async fn start(config: Config) -> Result<Relay, AppError> {
        let listeners = listen::Listeners::bind(config.server.listen)?;
        Relay::start_on(config, listeners, Clock::system()).await
    }

    /// Starts everything on these listeners, reading the time from `clock`;
    /// the config must already be validated.
    pub async fn start_on(
        config: Config,
        listeners: listen::Listeners,
        clock: Clock,
    ) -> Result<Relay, AppError> {
        let spool = {
            let (spool_config, routes) = (config.spool.clone(), Routes::from_config(&config));
            match Spool::room_to_open(&spool_config).await {
                Ok(()) => Spool::open(&spool_config, routes, clock).await?,
                // sled may fail on a full disk as it opens, and a failed
                // sled cannot be let go of: serve 503s until there is room.
                Err(reason) => {
                    tracing::warn!(condition = %reason, "no room to open the spool: answering 503 until there is, then reopening it");
                    Spool::unopened(&spool_config, routes, clock, reason).await?
                }
            }
        };
        let acme = crate::acme::Acme::prepare(&config, &spool, clock).await?;
        let (cert, self_signed) = match &acme {
            Some(_) => (None, None),
            None => load_certificate(&config)?,
        };
        let acceptor = match (&cert, &acme) {
            (Some(cert), _) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
                cert.clone(),
            )?)),
            (None, Some(acme)) => Some(tokio_rustls::TlsAcceptor::from(tls::acme_server_config(
                acme.resolver(),
            )?)),
            (None, None) => None,
        };
        let tls_on = acceptor.is_some();
        let metrics = Arc::new(Metrics::with_clock(clock));
        let (effective, problems) = effective_config(&config, &spool.api_subscriptions());
        for problem in problems {
            tracing::error!(problem = %problem, "an API-created subscription is left out");
        }
        spool.set_routes(Routes::from_config(&effective)).await?;
        // Before the forwarder runs: nothing goes to a target no longer allowed.
        hold_disallowed_targets(&spool, &config).await?;
        let (forwarder, targets) =
            Forwarder::new(&effective, spool.consumer(), clock, metrics.clone())?;
        let (events_stop, events_stopped) = watch::channel(false);
        let (events, events_task) = Events::start(
            &effective,
            spool.clone(),
            metrics.clone(),
            clock,
            events_stopped,
        )
        .await;
        let reconciler = Reconciler::new(
            &config,
            spool.clone(),
            metrics.clone(),
            events.clone(),
            clock,
        )?;
        let (reconcile_stop, reconcile_stopped) = watch::channel(false);
        let listen_error = |source| ListenError::Bind {
            addr: config.server.listen,
            source,
        };
        let listener = TcpListener::from_std(listeners.ingress).map_err(listen_error)?;
        let ingress_addr = listener.local_addr().map_err(listen_error)?;
        let admin_listener = match (listeners.admin, &config.admin.listen) {
            // Passed by systemd (FileDescriptorName=admin): used as it is.
            (Some(passed), _) => Some(AdminListener::Tcp(TcpListener::from_std(passed).map_err(
                |source| ListenError::NotTcp {
                    name: listen::ADMIN.into(),
                    source,
                },
            )?)),
            (None, Some(listen)) => Some(AdminListener::bind(listen).await?),
            (None, None) => None,
        };
        // Nothing can fail after this: the files of a new certificate now.
        if let Some(generated) = self_signed {
            generated.write()?;
        }
        let admin_listen = admin_listener.as_ref().map(AdminListener::describe);
        let (reloads, reload_requests) = tokio::sync::mpsc::channel(4);
        let (changes, change_requests) = tokio::sync::mpsc::channel(4);
        let admin = Admin::new(
            &effective,
            spool.clone(),
            metrics.clone(),
            clock,
            reloads,
            changes,
        );
        admin.use_reconciler(reconciler.clone());
        let acme = match acme {
            Some(acme) => {
                admin.add_readiness_check(Box::new(acme.readiness()));
                admin.show_certificate(acme.status());
                Some(acme.start(metrics.clone(), events.clone()).await?)
            }
            None => None,
        };
        let ingress = Arc::new(ArcSwap::new(Ingress::new(
            &config,
            spool.producer(),
            clock,
            metrics,
        )));
        let settings = ListenerSettings::from_config(&config, acceptor);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve_until_stopped(
            Listeners {
                ingress: listener,
                admin: admin_listener,
            },
            settings,
            ingress.clone(),
            forwarder,
            admin.clone(),
            vec![
                // Its last events are raised before the events task's last store.
                (reconcile_stop, reconciler.start(reconcile_stopped)),
                (events_stop, events_task),
            ],
            stopped,
        ));
        tracing::info!(
            addr = %ingress_addr,
            tls = tls_on,
            socket_activated = listeners.activated,
            spool = %spool.location(),
            subscriptions = effective.subscriptions.len(),
            admin = admin_listen.as_deref().unwrap_or("off"),
            "ingress listening"
        );
        let live = Arc::new(Live {
            config: tokio::sync::Mutex::new(config),
            targets,
            events,
            spool: spool.clone(),
            admin: admin.clone(),
        });
        let applier = tokio::spawn(apply_changes(live.clone(), change_requests));
        Ok(Relay {
            ingress_addr,
            admin_listen,
            admin,
            live,
            reconciler,
            applier,
            ingress,
            reload_requests: std::sync::Mutex::new(Some(reload_requests)),
            spool,
            cert,
            _acme: acme,
            stop,
            task,
        })
    }

    /// Applies a new, validated config without dropping a connection or a
    /// request: sources, tokens and limits (each request sees the config
    /// current when it arrives), subscriptions (added, removed, changed),
    /// admin tokens, and the certificate files. What only a restart can
    /// change (listen addresses, TLS on or off, the spool) is reported and
    /// left as it was. Nothing is changed when the new subscriptions cannot
    /// be set up (e.g. an unreadable CA file).
    pub async fn reload(&self, new: Config) -> Result<Reloaded, AppError> {
        let mut current = self.live.config.lock().await;
        // A name the API already holds is refused, not silently shadowed.
        let (effective, problems) = effective_config(&new, &self.spool.api_subscriptions());
        if !problems.is_empty() {
            return Err(AppError::Subscriptions(problems.join("; ")));
        }
        let targets = Targets::build(&effective, Some(&self.live.targets.borrow()))?;
        let reconcile = self.reconciler.prepare(&new)?;
        let restart_needed = restart_needed(&current, &new);
        for key in &restart_needed {
            tracing::warn!(key = %key, "changed in the config, but applies only after a restart");
        }
        let held = hold_disallowed_targets(&self.spool, &new).await?;
        self.spool
            .set_routes(Routes::from_config(&effective))
            .await?;
        let old_names: Vec<String> = current
            .subscriptions
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let new_names: Vec<String> = new.subscriptions.iter().map(|s| s.name.clone()).collect();
        let added: Vec<String> = new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .cloned()
            .collect();
        let removed: Vec<String> = old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .cloned()
            .collect();
        for name in &removed {
            tracing::warn!(subscription = %name, "subscription removed; its waiting deliveries stay as orphans (`spool move-orphans` or `purge-orphans`)");
        }
        self.live.targets.send_replace(targets);
        self.live.events.reload(&effective);
        self.reconciler.install(reconcile);
        self.ingress.store(self.ingress.load().reloaded(&new));
        self.admin.reload(&effective);
        self.reload_certificate();
        *current = new;
        let report = Reloaded {
            subscriptions_added: added,
            subscriptions_removed: removed,
            subscriptions_paused_target_not_allowed: held,
            restart_needed,
        };
        tracing::info!(
            added = ?report.subscriptions_added,
            removed = ?report.subscriptions_removed,
            paused_target_not_allowed = ?report.subscriptions_paused_target_not_allowed,
            "config reloaded"
        );
        Ok(report)
    }

    /// The admin API's requests to reload (`POST /api/reload`), for the
    /// one who knows the config file; `None` once taken.
    pub fn take_reload_requests(
        &self,
    ) -> Option<tokio::sync::mpsc::Receiver<admin::ReloadRequest>> {
        self.reload_requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The reconciliation with the providers' query APIs (checks on demand).
    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
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
        self.applier.abort();
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| AppError::Task(e.to_string()))?
            .map_err(AppError::Close)
    }
}

/// What the subscriptions in effect are built from, shared by reloads and
/// the admin API's changes (the lock orders them).
struct Live {
    /// The config as `relay.toml` has it (no API subscription in it).
    config: tokio::sync::Mutex<Config>,
    targets: watch::Sender<Targets>,
    /// Who wants the relay's own events, and their threshold.
    events: Arc<Events>,
    spool: Spool,
    admin: Arc<Admin>,
}

/// The config with the API-created subscriptions after those of
/// `relay.toml`, and the problems of those that cannot be used (a name now
/// in `relay.toml`, a setting no longer valid), which are left out.
pub fn effective_config(file: &Config, api: &[ApiSubscription]) -> (Config, Vec<String>) {
    let mut effective = file.clone();
    let mut problems = Vec::new();
    for subscription in api {
        if file
            .subscriptions
            .iter()
            .any(|s| s.name == subscription.name)
        {
            problems.push(format!(
                "subscription {:?} is in relay.toml and was also created through the admin API: \
                 rename one, or delete the API one (`webhook-relay subscriptions rm`)",
                subscription.name
            ));
            continue;
        }
        match subscription.to_config() {
            Ok(config) => effective.subscriptions.push(config),
            Err(err) => problems.push(format!(
                "API subscription {:?} cannot be used: {err}",
                subscription.name
            )),
        }
    }
    (effective, problems)
}

/// Pauses the API-created subscriptions whose target `config`'s
/// `[admin] allowed_targets` does not allow (any more): never deleted, so
/// their deliveries wait, and an admin resumes them once the target is
/// allowed again, or deletes them. Each is logged (WARN, with the redacted
/// target) and a new pause audited; answers their names.
async fn hold_disallowed_targets(
    spool: &Spool,
    config: &Config,
) -> Result<Vec<String>, SpoolError> {
    let mut held = Vec::new();
    for subscription in spool.api_subscriptions() {
        if subscription.target_allowed(&config.admin) {
            continue;
        }
        let target = subscription.redacted_target();
        let name = subscription.name;
        let paused_now = !spool.is_paused(&name);
        if paused_now {
            spool.pause(&name, true).await?;
            let entry = crate::spool::AuditEntry {
                actor: "relay".into(),
                action: "subscription.pause".into(),
                target: name.clone(),
                detail: serde_json::json!({
                    "reason": "target no longer allowed",
                    "target": target,
                }),
            };
            spool.audit(entry).await?;
        }
        tracing::warn!(subscription = %name, %target, paused_now, "subscription paused: its target is no longer among [admin] allowed_targets; its deliveries wait (allow the host and resume it, or delete it)");
        held.push(name);
    }
    Ok(held)
}

/// Applies the admin API's subscription changes (already in the spool) to
/// fan-out, the forwarder and the admin API, one at a time: this relay's,
/// and those another relay sharing the spool made (JetStream).
async fn apply_changes(
    live: Arc<Live>,
    mut requests: tokio::sync::mpsc::Receiver<admin::ChangeRequest>,
) {
    let mut elsewhere = live.spool.subscription_changes();
    loop {
        tokio::select! {
            request = requests.recv() => match request {
                Some(reply) => {
                    let _ = reply.send(apply_api_subscriptions(&live).await);
                }
                None => return,
            },
            Some(()) = async { elsewhere.as_mut()?.changed().await.ok() } => {
                if let Err(problem) = apply_api_subscriptions(&live).await {
                    tracing::error!(problem = %problem, "an API subscription changed on another relay is not applied here");
                }
            }
        }
    }
}

async fn apply_api_subscriptions(live: &Live) -> Result<(), String> {
    let file = live.config.lock().await;
    let (effective, problems) = effective_config(&file, &live.spool.api_subscriptions());
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let targets =
        Targets::build(&effective, Some(&live.targets.borrow())).map_err(|e| e.to_string())?;
    live.spool
        .set_routes(Routes::from_config(&effective))
        .await
        .map_err(|e| e.to_string())?;
    live.targets.send_replace(targets);
    live.events.reload(&effective);
    live.admin.reload(&effective);
    Ok(())
}

/// What a reload changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reloaded {
    pub subscriptions_added: Vec<String>,
    pub subscriptions_removed: Vec<String>,
    /// API-created subscriptions paused (or still paused) because their
    /// target is no longer among `[admin] allowed_targets`.
    pub subscriptions_paused_target_not_allowed: Vec<String>,
    /// Keys that changed but apply only after a restart.
    pub restart_needed: Vec<String>,
}

/// The keys a reload cannot apply that differ between two configs.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut differs = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_owned());
        }
    };
    differs("server.listen", old.server.listen != new.server.listen);
    differs("server.tls", old.server.tls != new.server.tls);
    differs(
        "server.self_signed",
        old.server.self_signed != new.server.self_signed,
    );
    differs(
        "server.tls_cert",
        old.server.tls_cert != new.server.tls_cert,
    );
    differs("server.tls_key", old.server.tls_key != new.server.tls_key);
    differs("server.acme", old.server.acme != new.server.acme);
    differs(
        "server.http2_max_streams",
        old.server.http2_max_streams != new.server.http2_max_streams,
    );
    differs(
        "server.max_inflight_body",
        old.server.max_inflight_body != new.server.max_inflight_body,
    );
    differs(
        "server.max_connections",
        old.server.max_connections != new.server.max_connections,
    );
    differs(
        "server (timeouts)",
        (
            old.server.header_timeout,
            old.server.handshake_timeout,
            old.server.idle_timeout,
            old.server.shutdown_grace,
        ) != (
            new.server.header_timeout,
            new.server.handshake_timeout,
            new.server.idle_timeout,
            new.server.shutdown_grace,
        ),
    );
    differs("spool", old.spool != new.spool);
    differs(
        "forwarder",
        (old.forwarder.max_in_flight, old.forwarder.shutdown_grace)
            != (new.forwarder.max_in_flight, new.forwarder.shutdown_grace),
    );
    differs("admin.listen", old.admin.listen != new.admin.listen);
    keys
}

/// The certificate to serve, and a self-signed one still to be written.
type Certificate = (Option<Arc<ReloadableCert>>, Option<SelfSigned>);

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

/// The bound listeners a relay serves.
struct Listeners {
    ingress: TcpListener,
    admin: Option<AdminListener>,
}

async fn serve_until_stopped(
    listeners: Listeners,
    settings: ListenerSettings,
    ingress: Arc<ArcSwap<Ingress>>,
    forwarder: Forwarder,
    admin: Arc<Admin>,
    // Tasks that store notifications of their own, stopped in this order
    // once the forwarder has (reconciliation, then the events).
    background: Vec<(watch::Sender<bool>, JoinHandle<()>)>,
    stopped: watch::Receiver<bool>,
) -> Result<(), SpoolError> {
    // Maintenance and the close are the admin side's (ingress only stores).
    let spool = admin.spool().clone();
    let signal = |rx: watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    // The forwarder stops when the ingress does, not after its drain: the
    // two graces run side by side, so a stop takes the longer of them, not
    // their sum, and fits in the unit's TimeoutStopSec.
    let forwarding = tokio::spawn(forwarder.run(signal(stopped.clone())));
    let maintenance = tokio::spawn(maintain(ingress.clone(), spool.clone()));
    // The admin listener stays up until the forwarder has stopped, so a
    // stop can be watched through it.
    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin_serving = listeners
        .admin
        .map(|listener| tokio::spawn(admin::serve(listener, admin.clone(), signal(admin_stopped))));
    admin.set_serving(true);

    ingress::serve(listeners.ingress, settings, ingress, signal(stopped)).await;
    admin.set_serving(false);
    tracing::info!("ingress closed; waiting for the forwarder");
    let _ = forwarding.await;
    // The last attempts' events, stored before the spool closes.
    for (stop, task) in background {
        let _ = stop.send(true);
        let _ = task.await;
    }
    maintenance.abort();
    let _ = admin_stop.send(true);
    if let Some(serving) = admin_serving {
        let _ = serving.await;
    }
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
async fn maintain(ingress: Arc<ArcSwap<Ingress>>, spool: Spool) {
    let mut tick = tokio::time::interval(SPOOL_UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        // Errors (a store that cannot write yet) are the spool's to log, once.
        let _ = spool.maintain().await;
        if last_sweep.elapsed() >= LIMITER_SWEEP {
            ingress.load().sweep_limiters();
            last_sweep = tokio::time::Instant::now();
        }
    }
}
