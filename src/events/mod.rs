//! The relay's own operational events (`relay.delivery.dead`,
//! `relay.subscription.failing`, `relay.subscription.recovered`,
//! `relay.quarantine.added`, `relay.spool.full`, `relay.spool.recovered`,
//! `relay.source.silent`, `relay.source.recovered`, `relay.invoice.stuck`,
//! `relay.invoice.unstuck`, `relay.certificate.renewed`,
//! `relay.certificate.failing`, `relay.reconcile.failing`,
//! `relay.reconcile.recovered`),
//! stored in the spool as notifications of the reserved source `relay` and
//! so delivered, signed and retried like invoices, to the subscriptions
//! that name them (`events = ["relay.*"]`, see `spool::routes`).
//!
//! - `event`: each event's type and body, pure.
//! - `streaks`: failed attempts in a row per subscription, pure.
//! - `burst`: the spool's reports counted into few events (one dead
//!   event per subscription per second with the count), pure.
//! - `audience`: which subscriptions may receive an event (a team hears
//!   of its own subscriptions only), pure.
//! - `silence`: sources that sent nothing for their `expect_every`, pure.
//! - `stuck`: invoices left `queued` past their `stuck_after`, pure.
//! - here: the spool hands each report (attempts recorded, bodies
//!   quarantined, see `Spool::observe`) to a `burst` counter as it records
//!   it, with no queue a burst could fill; one task takes the counts, looks
//!   at the spool's health, and stores the events, each for the
//!   subscriptions that ask for it and may see it. Among relays sharing
//!   a spool (JetStream) only the holder of the events duty hears the
//!   reports (every relay's) and runs the silent-source and stuck-invoice
//!   checks (`Spool::holds`); on sled that is always this relay.
//!
//! What it promises, and what not: an event is durable once stored, and
//! from then on delivered at least once. Between its cause and its store
//! it lives in memory (moments, or while the spool is full), so a crash
//! then loses it; its cause (a dead delivery, a quarantined body) is in
//! the spool either way. `relay.spool.full` cannot be stored in a full
//! spool: it waits in memory with what else comes meanwhile (up to
//! [`MAX_PENDING`]; the rest is dropped and counted) and is stored as soon
//! as the spool takes notifications again, followed by
//! `relay.spool.recovered`. Deliveries of relay events raise no events of
//! their own (a dead alert must not raise another alert, and so on), and
//! nothing here ever pauses or disables a subscription.

mod audience;
mod burst;
mod event;
pub mod silence;
mod streaks;
pub mod stuck;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{Config, RELAY_SOURCE};
use crate::metrics::Metrics;
use crate::providers::InvoiceStatus;
use crate::spool::{Duty, Invoice, NotificationId, Observe, Observed, Routes, Spool, SpoolError};
use audience::Audience;
use burst::Burst;
pub use event::RelayEvent;

/// Events kept in memory while the spool cannot store them.
pub const MAX_PENDING: usize = 1024;
/// How often the spool's health is looked at (and stores retried).
const TICK: Duration = Duration::from_millis(250);

/// The events' side of the relay: who wants them (from the config) and
/// the threshold for `relay.subscription.failing`. Shared with the task.
pub struct Events {
    routes: ArcSwap<Routes>,
    /// Who owns which subscription (a team, or the admins).
    audience: ArcSwap<Audience>,
    /// Where the spool's reports are counted, and the failing threshold.
    counted: Arc<Counted>,
    spool: Spool,
    metrics: Arc<Metrics>,
    /// Each source with `expect_every`, and it in ms.
    expected: ArcSwap<Vec<(String, i64)>>,
    /// Each source with a `stuck_after`, and it in ms.
    stuck_after: ArcSwap<Vec<(String, i64)>>,
    /// Raised by other parts (the ACME certificate's), taken at each tick.
    raised: Mutex<Vec<(RelayEvent, i64)>>,
}

impl Events {
    /// Starts the task that stores events until `stop` turns true; it then
    /// stores what it holds (if the spool can) and ends. The stuck
    /// invoices the spool kept are listed (and counted) from the start.
    pub async fn start(
        config: &Config,
        spool: Spool,
        metrics: Arc<Metrics>,
        clock: Clock,
        stop: watch::Receiver<bool>,
    ) -> (Arc<Events>, tokio::task::JoinHandle<()>) {
        let counted = Arc::new(Counted {
            burst: Mutex::new(Burst::default()),
            clock,
        });
        let events = Arc::new(Events {
            routes: ArcSwap::from_pointee(Routes::default()),
            audience: ArcSwap::from_pointee(Audience::default()),
            counted: counted.clone(),
            spool: spool.clone(),
            metrics,
            expected: ArcSwap::from_pointee(Vec::new()),
            stuck_after: ArcSwap::from_pointee(Vec::new()),
            raised: Mutex::new(Vec::new()),
        });
        let observing = spool.observe(counted);
        events.reload(config);
        // Among relays sharing a spool, one runs the checks (always this
        // one on sled); a relay that takes the duty over later seeds again.
        let holding = spool.holds(Duty::Events).await;
        let stuck = events.seed_stuck().await;
        let task = tokio::spawn(run(
            events.clone(),
            observing,
            clock,
            stop,
            (stuck, holding),
        ));
        (events, task)
    }

    /// Takes a reloaded config's subscriptions and threshold; the spool
    /// reports only while some subscription wants relay events.
    pub fn reload(&self, config: &Config) {
        let routes = Routes::from_config(config);
        let wanted = ALL_TYPES.iter().any(|event_type| {
            !routes
                .matching(RELAY_SOURCE, event_type, InvoiceStatus::Unknown)
                .is_empty()
        });
        self.routes.store(Arc::new(routes));
        self.expected.store(Arc::new(expected_sources(config)));
        self.stuck_after
            .store(Arc::new(stuck_after_sources(config)));
        self.counted
            .burst()
            .set_failing_after(config.forwarder.failing_after);
        self.audience.store(Arc::new(Audience::new(
            config,
            &self.spool.api_subscriptions(),
        )));
        self.spool.set_observing(wanted);
    }

    /// The stuck check as the spool kept it, of the sources watched now
    /// (the others' marks go at the first save), published at once. A
    /// read that fails starts it empty: the invoices still stuck are then
    /// announced again rather than not at all.
    async fn seed_stuck(&self) -> stuck::Stuck {
        let marks = match self.spool.stuck_marks().await {
            Ok(marks) => marks,
            Err(err) => {
                tracing::warn!(error = %err, "stuck invoices kept in the spool not read; they may be announced again");
                return stuck::Stuck::default();
            }
        };
        let mut stuck = stuck::Stuck::seeded(marks);
        let watched: Vec<String> = self
            .stuck_after
            .load()
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        stuck.keep_sources(&watched);
        self.metrics.set_stuck(stuck.listed(), &watched);
        stuck
    }

    /// Raises an event seen elsewhere (at `at_ms`); it is stored at the
    /// next tick, like the task's own.
    pub fn raise(&self, event: RelayEvent, at_ms: i64) {
        self.raised
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((event, at_ms));
    }

    fn wanted(&self, event: &RelayEvent) -> bool {
        !self
            .routes
            .load()
            .matching(RELAY_SOURCE, event.event_type(), InvoiceStatus::Unknown)
            .is_empty()
    }
}

/// The spool's observer: each report is counted as it comes, under a
/// lock held for a few map operations, never queued.
struct Counted {
    burst: Mutex<Burst>,
    clock: Clock,
}

impl Counted {
    fn burst(&self) -> std::sync::MutexGuard<'_, Burst> {
        // A panic mid-count leaves counts, not broken invariants.
        self.burst.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Observe for Counted {
    fn observe(&self, report: Observed) {
        let now_ms = self.clock.now_ms();
        self.burst().take(report, now_ms);
    }

    fn dropped(&self) -> u64 {
        self.burst().dropped()
    }
}

/// Each source with `expect_every`, and it in ms.
pub fn expected_sources(config: &Config) -> Vec<(String, i64)> {
    config
        .sources
        .iter()
        .filter_map(|(name, source)| {
            let every = source.expect_every?;
            Some((
                name.clone(),
                i64::try_from(every.0.as_millis()).unwrap_or(i64::MAX),
            ))
        })
        .collect()
}

/// Each source with a `stuck_after` (its own or its provider's), and it
/// in ms.
pub fn stuck_after_sources(config: &Config) -> Vec<(String, i64)> {
    config
        .sources
        .iter()
        .filter_map(|(name, source)| {
            let after = source.stuck_after()?;
            Some((
                name.clone(),
                i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            ))
        })
        .collect()
}

const ALL_TYPES: [&str; 14] = [
    "relay.delivery.dead",
    "relay.subscription.failing",
    "relay.subscription.recovered",
    "relay.quarantine.added",
    "relay.spool.full",
    "relay.spool.recovered",
    "relay.source.silent",
    "relay.source.recovered",
    "relay.invoice.stuck",
    "relay.invoice.unstuck",
    "relay.certificate.renewed",
    "relay.certificate.failing",
    "relay.reconcile.failing",
    "relay.reconcile.recovered",
];

/// Queued notifications one look walks per source, at most: a backlog
/// (a restart on a spool full of old queued notifications) is worked off
/// over a few ticks instead of holding one up.
const WALK_MAX: usize = 2048;

/// What one look at the spool found for the stuck check.
#[derive(Default)]
struct Looked {
    /// (source, subject, queued notification, the invoice now) of each
    /// queued notification that waited its `stuck_after`.
    waited: Vec<(String, String, NotificationId, Option<Invoice>)>,
    /// Each stuck invoice as it stands now.
    rechecked: Vec<(String, String, Option<Invoice>)>,
}

/// The spool reads of the stuck check: the time-ordered index of queued
/// notifications from where each source's walk stopped, and one seek per
/// candidate and per stuck invoice.
async fn look(
    spool: &Spool,
    now_ms: i64,
    sources: &[(String, i64, Option<NotificationId>)],
    stuck: Vec<(String, String)>,
) -> Result<Looked, SpoolError> {
    let mut looked = Looked::default();
    for (source, stuck_after_ms, walked) in sources {
        let until_ms = now_ms.saturating_sub(*stuck_after_ms);
        for (queued, subject) in spool.waiting(source, *walked, until_ms, WALK_MAX).await? {
            let current = spool.invoice_now(source, &subject).await?;
            looked
                .waited
                .push((source.clone(), subject, queued, current));
        }
    }
    for (source, subject) in stuck {
        let current = spool.invoice_now(&source, &subject).await?;
        looked.rechecked.push((source, subject, current));
    }
    Ok(looked)
}

/// What the task holds between two stores.
struct Held {
    /// Raised, not yet stored: (event, raised at).
    pending: VecDeque<(RelayEvent, i64)>,
    dropped: u64,
    /// Since when the spool refuses notifications, while it does.
    full_since: Option<i64>,
    /// The spool's count of refused writes, and the time, at the last look.
    refused_writes: u64,
    looked_ms: i64,
    silence: silence::Silence,
    started_ms: i64,
    stuck: stuck::Stuck,
    /// Whether this relay holds the events duty (the silent-source and
    /// stuck-invoice checks run only while it does).
    holding: bool,
}

impl Held {
    /// Asks for the events duty; a relay that just took it over starts
    /// its checks from the spool's stuck marks as the last holder left
    /// them, and hears every source afresh from now.
    async fn hold_duty(&mut self, events: &Events, now_ms: i64) {
        let holding = events.spool.holds(Duty::Events).await;
        if holding && !self.holding {
            tracing::info!("this relay runs the operational events' checks now");
            self.stuck = events.seed_stuck().await;
            self.silence = silence::Silence::default();
            self.started_ms = now_ms;
        }
        self.holding = holding;
    }

    fn take_raised(&mut self, events: &Events) {
        let raised =
            std::mem::take(&mut *events.raised.lock().unwrap_or_else(PoisonError::into_inner));
        for (event, at_ms) in raised {
            self.push(events, event, at_ms);
        }
    }

    fn push(&mut self, events: &Events, event: RelayEvent, at_ms: i64) {
        if !events.wanted(&event) {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            if self.dropped == 1 || self.dropped.is_power_of_two() {
                tracing::warn!(
                    event = event.event_type(),
                    dropped = self.dropped,
                    "operational event dropped: too many wait for the spool"
                );
            }
            return;
        }
        self.pending.push_back((event, at_ms));
    }

    /// Takes what the spool's reports counted (at most once per
    /// `burst::WINDOW_MS`, or all of it at the stop), while the spool can
    /// store it: while it cannot, the counts grow in place of a queue.
    fn take_counted(&mut self, events: &Events, now_ms: i64, all: bool) {
        if !all && !events.spool.health().writable {
            return;
        }
        let counted = {
            let mut burst = events.counted.burst();
            match all {
                true => burst.take_all(now_ms),
                false => burst.take_due(now_ms),
            }
        };
        for (event, at_ms) in counted {
            self.push(events, event, at_ms);
        }
    }

    /// Raises `relay.spool.full` and `relay.spool.recovered` as the spool's
    /// health turns. A fatal failure raises nothing: no event could be
    /// stored before the restart it needs. A full spell shorter than the
    /// time between two looks still shows in the count of refused writes
    /// (those 503s are what matters to the providers): it raises both.
    fn watch_health(&mut self, events: &Events, now_ms: i64) {
        let health = events.spool.health();
        let refused_since = health.refused_writes.saturating_sub(self.refused_writes);
        let looked_ms = std::mem::replace(&mut self.looked_ms, now_ms);
        self.refused_writes = health.refused_writes;
        match (self.full_since, health.writable) {
            (None, true) if refused_since > 0 => {
                let condition = format!(
                    "the spool refused {refused_since} notifications for lack of room, and was writable again at the next look"
                );
                self.push(events, RelayEvent::SpoolFull { condition }, looked_ms);
                let recovered = RelayEvent::SpoolRecovered {
                    full_since_ms: looked_ms,
                    refused_writes: health.refused_writes,
                    events_dropped: std::mem::take(&mut self.dropped),
                };
                self.push(events, recovered, now_ms);
            }
            (None, false) if !health.fatal => {
                let since = health.since_ms.unwrap_or(now_ms);
                self.full_since = Some(since);
                let condition = health.condition.unwrap_or_default();
                self.push(events, RelayEvent::SpoolFull { condition }, since);
            }
            (Some(full_since_ms), true) => {
                self.full_since = None;
                let recovered = RelayEvent::SpoolRecovered {
                    full_since_ms,
                    refused_writes: health.refused_writes,
                    events_dropped: std::mem::take(&mut self.dropped),
                };
                self.push(events, recovered, now_ms);
            }
            _ => {}
        }
    }

    /// Raises `relay.source.silent` and `relay.source.recovered` as
    /// sources with `expect_every` fall silent and are heard again (their
    /// last receipt from the metrics: memory, no spool read).
    fn watch_sources(&mut self, events: &Events, now_ms: i64) {
        let expected = events.expected.load();
        let sources: Vec<(String, i64, Option<i64>)> = expected
            .iter()
            .map(|(name, every)| {
                // Any relay's receipt counts where relays share the spool.
                let heard = events
                    .metrics
                    .last_received_ms(name)
                    .max(events.spool.last_received_ms(name));
                (name.clone(), *every, heard)
            })
            .collect();
        for turn in self.silence.look(now_ms, self.started_ms, &sources) {
            let event = match turn {
                silence::Turn::Silent {
                    source,
                    expect_every_ms,
                    last_ms,
                } => {
                    tracing::warn!(%source, "nothing received from this source for its expect_every");
                    RelayEvent::SourceSilent {
                        source,
                        expect_every_ms,
                        last_received_ms: last_ms,
                    }
                }
                silence::Turn::Heard {
                    source,
                    silent_since_ms,
                } => RelayEvent::SourceRecovered {
                    source,
                    silent_since_ms,
                },
            };
            self.push(events, event, now_ms);
        }
    }

    /// Raises `relay.invoice.stuck` and `relay.invoice.unstuck` as invoices
    /// stay `queued` past their source's `stuck_after` and get their final
    /// status, and keeps the list and `webhook_relay_invoices_stuck`
    /// current (memory: nothing is read at scrape time).
    async fn watch_invoices(&mut self, events: &Events, now_ms: i64) {
        let watched = events.stuck_after.load_full();
        let names: Vec<String> = watched.iter().map(|(name, _)| name.clone()).collect();
        let mut turns = self.stuck.keep_sources(&names);
        let sources: Vec<_> = watched
            .iter()
            .map(|(name, after)| (name.clone(), *after, self.stuck.walked_to(name)))
            .collect();
        let stuck = self.stuck.keys();
        match look(&events.spool, now_ms, &sources, stuck).await {
            Ok(looked) => {
                for (source, subject, current) in looked.rechecked {
                    turns.extend(self.stuck.recheck(&source, &subject, current.as_ref()));
                }
                for (source, subject, queued, current) in looked.waited {
                    turns.extend(
                        self.stuck
                            .waited(&source, &subject, queued, current.as_ref()),
                    );
                }
            }
            // The spool closing, or a read it could not make: the next
            // tick looks again from the same point.
            Err(err) => tracing::warn!(error = %err, "stuck invoices not looked at"),
        }
        for turn in turns {
            let event = match turn {
                stuck::Turn::Stuck(invoice) => {
                    tracing::warn!(source = %invoice.source, subject = %invoice.subject, "invoice stuck: queued with no final status for its stuck_after");
                    let stuck_after_ms = watched
                        .iter()
                        .find(|(name, _)| *name == invoice.source)
                        .map_or(0, |(_, after)| *after);
                    RelayEvent::InvoiceStuck {
                        invoice,
                        stuck_after_ms,
                    }
                }
                stuck::Turn::Cleared {
                    was,
                    status,
                    latest,
                } => RelayEvent::InvoiceUnstuck {
                    was,
                    status,
                    latest,
                },
                stuck::Turn::Forgotten(_) => continue,
            };
            self.push(events, event, now_ms);
        }
        events.metrics.set_stuck(self.stuck.listed(), &names);
    }

    /// Saves what changed in the stuck check, once every event raised
    /// before is stored: a mark is never durable before its event, so a
    /// crash between the two tells the event again rather than never.
    /// A save that fails is tried again with the next changes.
    async fn save_stuck(&mut self, events: &Events) {
        if !self.holding || !self.pending.is_empty() {
            return;
        }
        let changes = self.stuck.take_changes();
        if changes.is_empty() {
            return;
        }
        if let Err(err) = events.spool.save_stuck(changes.clone()).await {
            tracing::warn!(error = %err, "stuck invoices not saved; tried again at the next look");
            self.stuck.unsaved(changes);
        }
    }

    /// Stores what waits, oldest first, while the spool takes it.
    async fn store(&mut self, events: &Events) {
        while let Some((event, at_ms)) = self.pending.pop_front() {
            if !events.spool.health().writable {
                self.pending.push_front((event, at_ms));
                return;
            }
            let asking = events.routes.load().matching(
                RELAY_SOURCE,
                event.event_type(),
                InvoiceStatus::Unknown,
            );
            let recipients = events.audience.load().recipients(&event, asking);
            if recipients.is_empty() {
                continue;
            }
            let (received, notification) = event.stored(at_ms, NotificationId::new(at_ms));
            match events
                .spool
                .store_to(received, notification, recipients)
                .await
            {
                Ok(_) => {
                    tracing::info!(event = event.event_type(), "operational event stored");
                }
                // Full, or closing: it waits for the next try.
                Err(SpoolError::Unavailable(_) | SpoolError::Closed) => {
                    self.pending.push_front((event, at_ms));
                    return;
                }
                Err(err) => {
                    tracing::error!(event = event.event_type(), error = %err, "operational event not stored");
                }
            }
        }
    }
}

async fn run(
    events: Arc<Events>,
    observing: bool,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
    (stuck, holding): (stuck::Stuck, bool),
) {
    if !observing {
        tracing::error!("the spool already has an observer: no operational events");
        return;
    }
    let mut held = Held {
        pending: VecDeque::new(),
        dropped: 0,
        full_since: None,
        refused_writes: events.spool.health().refused_writes,
        looked_ms: clock.now_ms(),
        silence: silence::Silence::default(),
        started_ms: clock.now_ms(),
        stuck,
        holding,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|stopped| *stopped) => true,
        };
        if stopping {
            // What the last attempts reported, then a last store.
            held.take_counted(&events, clock.now_ms(), true);
            held.take_raised(&events);
            held.watch_health(&events, clock.now_ms());
            held.store(&events).await;
            held.save_stuck(&events).await;
            if !held.pending.is_empty() {
                tracing::warn!(
                    left = held.pending.len(),
                    "operational events not stored at the stop"
                );
            }
            return;
        }
        held.hold_duty(&events, clock.now_ms()).await;
        held.take_counted(&events, clock.now_ms(), false);
        held.take_raised(&events);
        held.watch_health(&events, clock.now_ms());
        if held.holding {
            held.watch_sources(&events, clock.now_ms());
            held.watch_invoices(&events, clock.now_ms()).await;
        }
        held.store(&events).await;
        held.save_stuck(&events).await;
    }
}

#[cfg(test)]
mod tests;
