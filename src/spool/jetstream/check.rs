//! `spool check` on JetStream (`docs/design/jetstream.md` §2, step 8): the
//! stream walked with bodies, reported as sled's check reports its files
//! ([`CheckReport`]).
//!
//! Two passes over the same stream. A relay with a scratch index (no
//! routes, a temporary directory beside the configured index, removed
//! after) folds it from the start: its counts are the `kept_counts` (what
//! every relay's fold keeps), its orphans (against no subscription, as
//! sled's check counts them) and audit records are reported. Then an
//! ordered consumer reads every message with its body, and the counts are
//! made again from what the stream holds, without the fold's rules: each
//! notification stored for its source, each delivery standing as its
//! state says (decoded from the body) or waiting when it has none yet,
//! each quarantined body for its source. Reported as problems: a
//! notification whose metadata cannot be read, a state whose body does
//! not decode, a state of a notification the stream does not hold.
//! `dedup_entries` is the notifications' count (a notification's subject
//! is its dedup entry). Nothing is repaired, and `accept_loss` has nothing
//! to record (the stream keeps no acknowledged mark).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt;

use super::counts::source_in;
use super::subjects::{name_of, Kind, META};
use super::JetStreamSpool;
use crate::clock::Clock;
use crate::config::SpoolConfig;
use crate::spool::delivery_codec::decode_delivery;
use crate::spool::standing::Standing;
use crate::spool::{
    CheckProblem, CheckReport, Counts, NotificationId, NotificationMeta, Routes, SpoolError,
};

/// The longest wait for the next message of the walk.
const QUIET: Duration = Duration::from_secs(10);

/// What the walk keeps of one message: little, so a large stream is
/// walked in little memory.
enum Seen {
    Notification {
        id: NotificationId,
        source: String,
        subscriptions: Vec<String>,
    },
    Quarantined(Option<String>),
    State {
        subscription: String,
        id: NotificationId,
        standing: Standing,
        retry: bool,
    },
    Problem(String),
    Nothing,
}

impl JetStreamSpool {
    /// Checks the spool `config` names (see the module doc); `clock` only
    /// paces the calls (a test's paused clock goes through the bridge).
    pub(crate) async fn check(
        config: &SpoolConfig,
        clock: Clock,
    ) -> Result<CheckReport, SpoolError> {
        let place = config.jetstream.index_path.parent().filter(|p| p.is_dir());
        let scratch = match place {
            Some(dir) => tempfile::Builder::new()
                .prefix(".relay-check-")
                .tempdir_in(dir),
            None => tempfile::Builder::new().prefix("relay-check-").tempdir(),
        }
        .map_err(|e| SpoolError::Open {
            path: config.jetstream.index_path.clone(),
            detail: format!("a scratch index for the check: {e}"),
        })?;
        let mut scratch_config = config.clone();
        scratch_config.jetstream.index_path = scratch.path().join("index");
        let none = Routes::default();
        let backend = JetStreamSpool::open(&scratch_config, none.clone(), clock).await?;
        let walked = backend.walk_the_stream().await;
        // The API's subscriptions (routes from open) are no orphans; the
        // CLI leaves out the configured ones, as on sled.
        let orphans = backend.orphans_against(&backend.routes.load());
        let audit_records = backend
            .index
            .audit_log(None, usize::MAX)
            .map(|all| all.len());
        let kept = backend.counts();
        let closed = backend.close().await;
        drop(backend);
        let _ = scratch.close();
        let mut report = walked?;
        closed?;
        report.orphans = orphans?;
        report.audit_records = u64::try_from(audit_records?).unwrap_or(u64::MAX);
        report.kept_counts = Some(kept);
        Ok(report)
    }

    /// The second pass: every message with its body, up to the stream's
    /// last sequence when the walk began.
    async fn walk_the_stream(&self) -> Result<CheckReport, SpoolError> {
        let stream = self.stream.clone();
        let names = self.link.names().clone();
        let unavailable = |e: &dyn std::fmt::Display| {
            SpoolError::Unavailable(format!("JetStream: the check's walk: {e}"))
        };
        let seen = self
            .bridge
            .run(async move {
                let mut stream = stream;
                let last = stream.info().await?.state.last_sequence;
                let mut seen = Vec::new();
                if last == 0 {
                    return Ok::<_, async_nats::Error>(seen);
                }
                let consumer = stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: names.subjects(),
                        deliver_policy: DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await?;
                let mut messages = consumer.messages().await?;
                loop {
                    let message = match tokio::time::timeout(QUIET, messages.next()).await {
                        Ok(Some(message)) => message?,
                        Ok(None) => return Err("the walk's consumer ended".into()),
                        Err(_) => return Err(format!("nothing came for {QUIET:?}").into()),
                    };
                    let sequence = message.info()?.stream_sequence;
                    seen.push(seen_in(&names, &message));
                    if sequence >= last {
                        return Ok(seen);
                    }
                }
            })
            .await?
            .map_err(|e| unavailable(&e))?;
        Ok(recount(seen))
    }
}

/// What one message holds for the recount.
fn seen_in(names: &super::Names, message: &async_nats::jetstream::Message) -> Seen {
    let meta = message
        .headers
        .as_ref()
        .and_then(|h| h.get(META))
        .map(|v| v.as_str().to_owned());
    match names.parse(message.subject.as_str()) {
        Kind::Notification(id) => {
            let Some(meta) = meta else {
                return Seen::Problem(format!("notification {id}: no metadata"));
            };
            match serde_json::from_str::<NotificationMeta>(&meta) {
                Ok(meta) => Seen::Notification {
                    id,
                    source: meta.source,
                    subscriptions: meta.subscriptions,
                },
                Err(e) => Seen::Problem(format!("notification {id}: its metadata: {e}")),
            }
        }
        // A quarantined body; without metadata, its tombstone.
        Kind::Quarantine(_) => match meta {
            Some(meta) => Seen::Quarantined(source_in(meta.as_bytes())),
            None => Seen::Nothing,
        },
        Kind::Delivery { subscription, id } => {
            let Some(name) = name_of(&subscription) else {
                return Seen::Problem(format!(
                    "a delivery state of {id} for an unreadable subscription {subscription}"
                ));
            };
            match decode_delivery(&message.payload) {
                Ok(delivery) => Seen::State {
                    retry: delivery.due_at().is_some(),
                    standing: Standing::of(&delivery.state),
                    subscription: name,
                    id,
                },
                Err(e) => Seen::Problem(format!("the delivery state of {id} for {name}: {e}")),
            }
        }
        _ => Seen::Nothing,
    }
}

/// The report's counts made from what the stream holds.
fn recount(seen: Vec<Seen>) -> CheckReport {
    let mut report = CheckReport::default();
    let mut counts = Counts::default();
    let mut fanned: BTreeMap<NotificationId, Vec<String>> = BTreeMap::new();
    let mut states: BTreeMap<(NotificationId, String), Standing> = BTreeMap::new();
    for seen in seen {
        match seen {
            Seen::Notification {
                id,
                source,
                subscriptions,
            } => {
                report.notifications += 1;
                counts.notifications += 1;
                counts.sources.entry(source).or_default().stored += 1;
                fanned.insert(id, subscriptions);
            }
            Seen::Quarantined(source) => {
                report.quarantined += 1;
                counts.quarantined += 1;
                if let Some(source) = source {
                    counts.sources.entry(source).or_default().quarantined += 1;
                }
            }
            Seen::State {
                subscription,
                id,
                standing,
                retry,
            } => {
                report.retries += u64::from(retry);
                states.insert((id, subscription), standing);
            }
            Seen::Problem(problem) => report.problems.push(CheckProblem::Record(problem)),
            Seen::Nothing => {}
        }
    }
    let mut counted = BTreeSet::new();
    for ((id, subscription), standing) in &states {
        if !fanned.contains_key(id) {
            report.problems.push(CheckProblem::Record(format!(
                "a delivery state of {id} for {subscription} without its notification"
            )));
            continue;
        }
        count(&mut counts, subscription, *standing);
        counted.insert((*id, subscription.as_str()));
    }
    // A delivery with no state yet waits for its first attempt.
    for (id, subscriptions) in &fanned {
        for subscription in subscriptions {
            if !counted.contains(&(*id, subscription.as_str())) {
                count(&mut counts, subscription, Standing::Waiting);
            }
        }
    }
    report.deliveries = counts
        .subscriptions
        .values()
        .map(|c| c.waiting + c.dead + c.delivered + c.purged)
        .sum();
    report.dedup_entries = report.notifications;
    report.counts = Some(counts);
    report
}

fn count(counts: &mut Counts, subscription: &str, standing: Standing) {
    let of = counts
        .subscriptions
        .entry(subscription.to_owned())
        .or_default();
    match standing {
        Standing::Waiting => of.waiting += 1,
        Standing::Dead => of.dead += 1,
        Standing::Delivered => of.delivered += 1,
        Standing::Purged => of.purged += 1,
    }
}
