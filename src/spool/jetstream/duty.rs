//! The single-run duties' leases (`docs/design/jetstream.md` §1.5): a
//! duty `X` is held by the relay whose `create("duty.X", relay)` in the
//! KV bucket `P_locks` won; the holder renews it with `update(revision)`.
//! A clean stop deletes the keys it holds (at their revision), and the
//! bucket's max age (`DUTY_TTL`) expires the key of a holder that crashed;
//! either way another relay's `create` then wins.
//!
//! Renewals happen at each `maintain` call, not on a timer of their own:
//! a duty's work runs only inside that call, right after a renewal that
//! succeeded, and only until its [`Hold::until`] (a third of the TTL
//! before the key could expire). A renewal that fails (another relay took
//! the key after it expired: a stale revision) or comes later than that
//! margin stops the duty at once; the relay then tries `create` as any
//! other relay does. So when `maintain` runs less often than the TTL the
//! duty may change hands between calls, but it never runs on two relays
//! at once. Lateness is measured on real time ([`Instant`]), as the
//! servers expire the key on theirs, never on the spool's `Clock` (which
//! a test may pause or move on by hours).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;

use super::provision::DUTY_TTL;
use super::JetStreamSpool;
use crate::spool::SpoolError;

/// How long before the key could expire a holder stops its duty.
const MARGIN: Duration = Duration::from_secs(DUTY_TTL.as_secs() / 3);

/// The duty of retention (`maintain`).
pub(super) const RETENTION: &str = "duty.retention";
/// The duty of the operational events made of the spool's reports, and of
/// the silent-source and stuck-invoice checks (`reports.rs`).
pub(super) const EVENTS: &str = "duty.events";
/// The duty of the reconciler's automatic checks with the providers.
pub(super) const RECONCILE: &str = "duty.reconcile";

/// How often a duty asked at every tick ([`JetStreamSpool::duty_now`]) is
/// renewed, or tried when another relay holds it: well inside the
/// margin, and far fewer requests than the ticks.
const PACE: Duration = Duration::from_secs(DUTY_TTL.as_secs() / 6);

/// The duties this relay holds: each one's key revision and when it was
/// last renewed.
#[derive(Debug, Default)]
pub(super) struct Duties(Mutex<HashMap<&'static str, (u64, Instant)>>, Lost);

/// When each duty was last tried and found held by another relay.
#[derive(Debug, Default)]
struct Lost(Mutex<HashMap<&'static str, Instant>>);

/// A duty held now: its work must stop at `until`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hold {
    pub until: Instant,
}

impl Hold {
    /// Whether the duty may still go on.
    pub(super) fn live(&self) -> bool {
        real_now() < self.until
    }
}

impl Duties {
    fn held(&self, duty: &'static str) -> Option<(u64, Instant)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(duty)
            .copied()
    }

    fn lost_since(&self, duty: &'static str) -> Option<Instant> {
        let lost = self.1 .0.lock().unwrap_or_else(|e| e.into_inner());
        lost.get(duty).copied()
    }

    fn set_lost(&self, duty: &'static str, at: Option<Instant>) {
        let mut lost = self.1 .0.lock().unwrap_or_else(|e| e.into_inner());
        match at {
            Some(at) => lost.insert(duty, at),
            None => lost.remove(duty),
        };
    }

    /// Every duty held, forgotten: what a stop gives back.
    fn take_all(&self) -> Vec<(&'static str, u64)> {
        let mut duties = self.0.lock().unwrap_or_else(|e| e.into_inner());
        duties
            .drain()
            .map(|(duty, (revision, _))| (duty, revision))
            .collect()
    }

    fn set(&self, duty: &'static str, held: Option<(u64, Instant)>) {
        let mut duties = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match held {
            Some(held) => duties.insert(duty, held),
            None => duties.remove(duty),
        };
    }
}

/// Now on the system's monotonic clock. The lease lives on the servers'
/// time, which neither a paused tokio clock nor the spool's `Clock` (a
/// test moves it on by hours) follows: the one decision taken on real
/// time, so deliberately not through `crate::clock`.
#[allow(clippy::disallowed_methods)]
pub(super) fn real_now() -> Instant {
    Instant::now()
}

/// What one try at the key gave.
enum Tried {
    Won(u64),
    Lost,
}

impl JetStreamSpool {
    /// Renews `duty` if this relay holds it, or takes it if no relay
    /// does; `None` when another relay holds it (or this one's lease
    /// lapsed and another may have it).
    pub(super) async fn hold_duty(&self, duty: &'static str) -> Result<Option<Hold>, SpoolError> {
        self.open_for_writes()?;
        let started = real_now();
        if let Some((revision, renewed)) = self.duties.held(duty) {
            if real_now().duration_since(renewed) < DUTY_TTL.saturating_sub(MARGIN) {
                if let Tried::Won(revision) = self.renew(duty, revision).await? {
                    return Ok(Some(self.won(duty, revision, started)));
                }
                tracing::warn!(duty, "a duty's lease was lost: it stops here");
            } else {
                tracing::warn!(duty, "a duty's lease was renewed too late: it stops here");
            }
            self.duties.set(duty, None);
        }
        match self.take(duty).await? {
            Tried::Won(revision) => {
                tracing::info!(duty, relay = %self.relay, "this relay took a duty");
                Ok(Some(self.won(duty, revision, started)))
            }
            Tried::Lost => Ok(None),
        }
    }

    /// [`JetStreamSpool::hold_duty`] for a caller that asks at every
    /// tick: a hold renewed less than [`PACE`] ago stands without a
    /// request (its `until` counts from that renewal), and a duty another
    /// relay held when last tried is tried again only after [`PACE`]. A
    /// takeover comes at most that much after the lease's TTL.
    pub(super) async fn duty_now(&self, duty: &'static str) -> Result<Option<Hold>, SpoolError> {
        let now = real_now();
        if let Some((_, renewed)) = self.duties.held(duty) {
            if now.duration_since(renewed) < PACE {
                return Ok(Some(Hold {
                    until: renewed + DUTY_TTL.saturating_sub(MARGIN),
                }));
            }
        } else if self
            .duties
            .lost_since(duty)
            .is_some_and(|at| now.duration_since(at) < PACE)
        {
            return Ok(None);
        }
        let hold = self.hold_duty(duty).await?;
        self.duties.set_lost(duty, hold.is_none().then_some(now));
        Ok(hold)
    }

    /// Gives back the duties this relay holds, so another relay takes
    /// them at its next try instead of after the lease's TTL. Only keys
    /// still at the revision this relay wrote are deleted (one that lapsed
    /// and was taken is left to its new holder). Called by a clean stop,
    /// once the duties' work has stopped; a failure only means the wait.
    pub(super) async fn release_duties(&self) {
        let held = self.duties.take_all();
        if held.is_empty() {
            return;
        }
        let bucket = self.link.names().locks();
        let context = self.link.context().clone();
        let released = self
            .bridge
            .run(async move {
                let store = locks(context, bucket).await?;
                for (duty, revision) in held {
                    match store.delete_expect_revision(duty, Some(revision)).await {
                        Ok(()) => tracing::info!(duty, "duty given back for another relay to take"),
                        Err(e) => tracing::debug!(duty, error = %e, "duty not given back; it lapses by itself"),
                    }
                }
                Ok::<(), String>(())
            })
            .await;
        let failed = match released {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        tracing::debug!(error = %failed, "duties not given back; they lapse by themselves");
    }

    fn won(&self, duty: &'static str, revision: u64, asked: Instant) -> Hold {
        // From when it was asked: the servers' clock started no earlier.
        self.duties.set(duty, Some((revision, asked)));
        Hold {
            until: asked + DUTY_TTL.saturating_sub(MARGIN),
        }
    }

    async fn take(&self, duty: &'static str) -> Result<Tried, SpoolError> {
        self.claim(duty, None).await
    }

    async fn renew(&self, duty: &'static str, revision: u64) -> Result<Tried, SpoolError> {
        self.claim(duty, Some(revision)).await
    }

    /// Writes this relay's name to `duty`'s key: a `create` that fails
    /// while another holds it, or with `revision` an `update` that fails
    /// when another took it since.
    async fn claim(&self, duty: &'static str, revision: Option<u64>) -> Result<Tried, SpoolError> {
        let bucket = self.link.names().locks();
        let context = self.link.context().clone();
        let holder = Bytes::from(self.relay.clone().into_bytes());
        let asked = self
            .bridge
            .run(async move {
                let store = locks(context, bucket).await?;
                match revision {
                    None => match store.create(duty, holder).await {
                        Ok(revision) => Ok(Tried::Won(revision)),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Tried::Lost),
                        Err(e) => Err(e.to_string()),
                    },
                    Some(revision) => match store.update(duty, holder, revision).await {
                        Ok(revision) => Ok(Tried::Won(revision)),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Tried::Lost),
                        Err(e) => Err(e.to_string()),
                    },
                }
            })
            .await?;
        let doing = if revision.is_some() {
            "renewing"
        } else {
            "taking"
        };
        asked.map_err(|e| SpoolError::Unavailable(format!("JetStream: {doing} {duty}: {e}")))
    }
}

/// The duties' bucket, opened by the client (on the bridge).
async fn locks(
    context: async_nats::jetstream::Context,
    bucket: String,
) -> Result<async_nats::jetstream::kv::Store, String> {
    context
        .get_key_value(bucket)
        .await
        .map_err(|e| e.to_string())
}
