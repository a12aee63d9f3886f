//! The JetStream backend as the spool's `Backend::Jetstream` holds it: the
//! provisioned connection, the local index and the fold that feeds it,
//! the routes a store fans out to, and its life (open, close, crash).
//! Writes are in `store.rs`, reads in `reads.rs`; the audit log in `audit.rs`, API subscriptions in
//! `api_subscriptions.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use tokio::task::JoinHandle;

use super::bridge::Bridge;
use super::consumers::Consumers;
use super::duty::Duties;
use super::error::JetStreamError;
use super::index::Index;
use super::lease::Naks;
use super::orphans::Orphans;
use super::outage::{self, Outage};
use super::patience::patiently;
use super::{tail, Provisioned};
use crate::clock::Clock;
use crate::config::SpoolConfig;
use crate::spool::{AuditId, Counts, Health, NotificationId, Routes, SpoolError};

pub(crate) struct JetStreamSpool {
    pub(super) config: SpoolConfig,
    pub(super) link: Provisioned,
    /// The spool's stream, for direct gets.
    pub(super) stream: Stream,
    pub(super) bridge: Bridge,
    pub(super) index: Arc<Index>,
    pub(super) routes: ArcSwap<Routes>,
    pub(super) clock: Clock,
    pub(super) consumers: Consumers,
    pub(super) naks: Arc<Naks>,
    /// The orphans as counted at open and on new routes (`orphans.rs`).
    pub(super) orphans: Orphans,
    /// The single-run duties this relay holds (`duty.rs`).
    pub(super) duties: Duties,
    /// This open's name in the marks of its writes (`Relay-Write`).
    pub(super) relay: String,
    pub(super) writes: AtomicU64,
    /// Whether writes reach the servers now (`outage.rs`).
    pub(super) outage: Arc<Outage>,
    closed: AtomicBool,
    /// The fold, the task that naks leases given back, and the probe of
    /// the servers while writes fail.
    fold: Mutex<Option<JoinHandle<()>>>,
    nak_task: Mutex<Option<JoinHandle<()>>>,
    probe_task: Mutex<Option<JoinHandle<()>>>,
    /// The newest id this relay handed out (ids count up from it).
    last_id: Mutex<Option<NotificationId>>,
    /// The newest audit record id this relay handed out.
    pub(super) last_audit: Mutex<Option<AuditId>>,
}

impl JetStreamSpool {
    /// Connects, checks and provisions (see [`Provisioned::open`]), opens
    /// the local index and starts the fold that feeds it.
    pub(crate) async fn open(
        config: &SpoolConfig,
        routes: Routes,
        clock: Clock,
    ) -> Result<Arc<JetStreamSpool>, SpoolError> {
        let bridge = Bridge::for_clock(clock)?;
        let path = config.jetstream.index_path.clone();
        let refused = |detail: String| SpoolError::Open {
            path: path.clone(),
            detail,
        };
        let link = patiently(&bridge, "provisioning", || {
            let settings = config.clone();
            let bridge = bridge.clone();
            async move {
                bridge
                    .run(async move { Provisioned::open(&settings, clock).await })
                    .await
                    .unwrap_or_else(|e| Err(JetStreamError::request("the JetStream runtime", e)))
            }
        })
        .await
        .map_err(|e| refused(e.to_string()))?;
        let stream = patiently(&bridge, "reading the stream", || {
            let (context, name) = (link.context().clone(), link.names().stream());
            let bridge = bridge.clone();
            async move {
                bridge
                    .run(async move { context.get_stream(name).await })
                    .await?
                    .map_err(|e| SpoolError::Unavailable(format!("reading the stream: {e}")))
            }
        })
        .await
        .map_err(|e| refused(e.to_string()))?;
        let identity = link.identity().clone();
        let index_path = path.clone();
        let index = tokio::task::spawn_blocking(move || Index::open(&index_path, &identity))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))??;
        let index = Arc::new(index);
        let fold = bridge.spawn(tail::run(
            link.context().clone(),
            link.names().clone(),
            index.clone(),
        ));
        let (naks, nak_task) = Naks::start(&bridge, link.client().clone(), index.clone());
        let outage = Arc::new(Outage::default());
        let probe_task = bridge.spawn(outage::probe(
            outage.clone(),
            stream.clone(),
            config.jetstream.request_timeout.0,
        ));
        let spool = Arc::new(JetStreamSpool {
            config: config.clone(),
            link,
            stream,
            bridge,
            index,
            routes: ArcSwap::from_pointee(routes),
            clock,
            consumers: Consumers::default(),
            naks,
            orphans: Orphans::default(),
            duties: Duties::default(),
            relay: ulid::Ulid::new().to_string(),
            writes: AtomicU64::new(0),
            outage,
            closed: AtomicBool::new(false),
            fold: Mutex::new(Some(fold)),
            nak_task: Mutex::new(Some(nak_task)),
            probe_task: Mutex::new(Some(probe_task)),
            last_id: Mutex::new(None),
            last_audit: Mutex::new(None),
        });
        // Nothing is read before the index holds what was there at open.
        // A fold whose consumer went with a lost node starts again by
        // itself; the open waits for it as for the other steps.
        patiently(&spool.bridge, "catching the index up", || spool.sync()).await?;
        // Subscriptions made through the API are routes before the relay
        // sets its own (their deliveries are not orphans), as on sled.
        let api: Vec<String> = spool
            .api_subscriptions()
            .into_iter()
            .map(|s| s.name)
            .collect();
        let routes = spool.routes.load().with_names(api.iter());
        spool.routes.store(Arc::new(routes));
        spool.reclaim_journal().await?;
        spool.count_orphans()?;
        // Made before anything is stored for them (a new consumer starts
        // with what comes next).
        let subscriptions: Vec<String> = spool.routes.load().names().map(str::to_owned).collect();
        for subscription in subscriptions {
            patiently(&spool.bridge, "making the consumers", || {
                spool.consumers_of(&subscription)
            })
            .await?;
        }
        Ok(spool)
    }

    pub(crate) fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Where this relay's own part of the spool is: its local index.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.config.jetstream.index_path
    }

    /// The stream and its servers, and this relay's index, for logs and
    /// the admin's status.
    pub(crate) fn location(&self) -> String {
        format!(
            "JetStream stream {} on {} (index {})",
            self.link.names().stream(),
            self.config.jetstream.servers.join(", "),
            self.path().display()
        )
    }

    /// What a 200 means on this spool, as found at open.
    pub(crate) fn promise(&self) -> String {
        self.link.durability().promise.clone()
    }

    /// The bytes the stream holds (on each of its replicas), as its leader
    /// answers within `request_timeout`.
    pub(crate) async fn size(&self) -> Result<u64, SpoolError> {
        let stream = self.stream.clone();
        let timeout = self.config.jetstream.request_timeout.0;
        let info = self
            .bridge
            .run(async move { tokio::time::timeout(timeout, stream.get_info()).await })
            .await?;
        match info {
            Ok(Ok(info)) => Ok(info.state.bytes),
            Ok(Err(e)) => Err(SpoolError::Unavailable(format!(
                "JetStream: reading the stream's size: {e}"
            ))),
            Err(_) => Err(SpoolError::Unavailable(format!(
                "JetStream: no answer about the stream within {timeout:?}"
            ))),
        }
    }

    /// Refuses a write at once while no server is connected, noting it.
    pub(super) fn connected(&self) -> Result<(), SpoolError> {
        let connected = outage::connected(self.link.client(), &self.config.jetstream.servers);
        self.outage.note(&connected, self.clock);
        connected
    }

    /// `Closed` once closed (or crashed).
    pub(super) fn open_for_writes(&self) -> Result<(), SpoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SpoolError::Closed);
        }
        Ok(())
    }

    /// An id for a record received at `received_ms`, after every id this
    /// relay handed out before (other relays' ids interleave by time).
    pub(super) fn next_id(&self, received_ms: i64) -> NotificationId {
        let mut last = self.last_id.lock().unwrap_or_else(|e| e.into_inner());
        let id = NotificationId::next_after(*last, received_ms);
        *last = Some(id);
        id
    }

    /// Waits until the index has folded in `sequence` (a write of this
    /// relay's), so the next read on this spool sees it. Bounded by the
    /// request timeout without progress: a long catch-up that moves goes
    /// on.
    pub(super) async fn caught_up(&self, sequence: u64) -> Result<(), SpoolError> {
        let mut applied = self.index.watch();
        let within = self.config.jetstream.request_timeout.0;
        let waited = self
            .bridge
            .run(async move {
                loop {
                    let before = *applied.borrow();
                    let waited =
                        tokio::time::timeout(within, applied.wait_for(|at| *at >= sequence))
                            .await
                            .map(|seen| seen.is_ok());
                    match waited {
                        Ok(open) => return Ok(open),
                        Err(_) if *applied.borrow() > before => continue,
                        Err(_) => return Err(before),
                    }
                }
            })
            .await?;
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(SpoolError::Closed),
            Err(at) => Err(SpoolError::Unavailable(format!(
                "the JetStream index stays at sequence {at}, short of {sequence}, for {within:?}"
            ))),
        }
    }

    /// Waits until the index has folded in everything the stream held
    /// before now, from any relay: publishes a marker to `P.m.sync` (one
    /// kept) and waits for the fold to pass it.
    pub(super) async fn sync(&self) -> Result<(), SpoolError> {
        let context = self.link.context().clone();
        let subject = self.link.names().sync();
        let within = self.config.jetstream.request_timeout.0;
        let acked = self
            .bridge
            .run(async move {
                let sent = async { context.publish(subject, Bytes::new()).await?.await };
                tokio::time::timeout(within, sent).await
            })
            .await?;
        match acked {
            Ok(Ok(ack)) => self.caught_up(ack.sequence).await,
            Ok(Err(e)) => Err(SpoolError::Unavailable(format!(
                "JetStream: the index's sync: {e}"
            ))),
            Err(_) => Err(SpoolError::Unavailable(format!(
                "JetStream: no acknowledgement of the index's sync within {within:?}"
            ))),
        }
    }

    /// Takes a reloaded config's subscriptions: stores from now on fan out
    /// to them, and a new one gets its consumer first.
    pub(crate) async fn set_routes(&self, routes: Routes) -> Result<(), SpoolError> {
        for subscription in routes.names() {
            self.consumers_of(subscription).await?;
        }
        self.routes.store(Arc::new(routes));
        self.count_orphans()
    }

    pub(crate) fn health(&self) -> Health {
        let closed = self.closed.load(Ordering::Acquire);
        let down = self.outage.down();
        let condition = if closed {
            Some("the spool is closed".to_owned())
        } else {
            down.as_ref().map(|down| down.condition.clone())
        };
        Health {
            writable: condition.is_none(),
            condition,
            since_ms: down.map(|down| down.since_ms),
            refused_writes: self.outage.refused(),
            orphans: self.orphans.now(),
            ..Health::default()
        }
    }

    /// The counts as the fold keeps them (`counts.rs`): exact as of the
    /// last message folded into this relay's index.
    pub(crate) fn counts(&self) -> Counts {
        self.index.counts.now()
    }

    /// Whether the servers answer a round trip within `within`.
    /// Whether this relay's own part answers: open, its fold running and
    /// its index read within `within`. The servers being out of reach is
    /// not this (it is [`Self::health`]'s condition): a watchdog that
    /// restarted every relay for it would mend nothing.
    pub(crate) async fn writer_alive(&self, within: Duration) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let fold_running = self
            .fold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|fold| !fold.is_finished());
        let index = self.index.clone();
        let read = tokio::task::spawn_blocking(move || index.counts.now());
        fold_running && matches!(tokio::time::timeout(within, read).await, Ok(Ok(_)))
    }

    /// Stops the fold, flushes what was sent and lets go of the connection
    /// and of the index's files.
    pub(crate) async fn close(&self) -> Result<(), SpoolError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Leases given back reach the servers before the connection goes.
        self.naks.settle(&self.bridge).await?;
        self.release_duties().await;
        self.stop_fold();
        let drained = {
            let client = self.link.client().clone();
            self.bridge.run(async move { client.drain().await }).await?
        };
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.close(true))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))??;
        drained.map_err(|e| SpoolError::Unavailable(format!("closing the NATS connection: {e}")))
    }

    /// Stops as a crash would: the fold aborted, nothing drained or
    /// flushed; the connection goes when the spool is dropped.
    #[cfg(test)]
    pub(crate) fn crash(&self) {
        self.closed.store(true, Ordering::Release);
        self.stop_fold();
        let _ = self.index.close(false);
    }

    /// sled's test hook; JetStream has no batches of its own to fail.
    #[cfg(test)]
    pub(crate) fn fail_next_batch(&self) {}

    fn stop_fold(&self) {
        for task in [&self.fold, &self.nak_task, &self.probe_task] {
            if let Some(task) = task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
    }
}

impl Drop for JetStreamSpool {
    fn drop(&mut self) {
        self.stop_fold();
    }
}
