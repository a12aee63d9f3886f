//! The pure state machine of one delivery and its retry schedule.
//!
//! A delivery is one notification on its way to one subscription. This
//! module owns its states (pending, in flight, waiting for a retry, delivered,
//! dead), the history of its attempts, and the retry decision. It does no
//! I/O and reads no clock: every function takes `now_ms` (Unix milliseconds,
//! because these values are persisted) and, where randomness is needed, a
//! sample drawn by the caller. That keeps every decision reproducible in tests.
//!
//! Guarantee 2 (delivered at least once, or dead where an admin sees it)
//! rests on two properties checked here: a non-final delivery always has a
//! due time or is in flight, and every attempt is kept in its history.

use std::time::Duration;

use serde::{Deserialize, Serialize};

// === Schedule ===

/// Waits after each failed attempt, e.g. `[5m, 30m, 3h, 6h, 12h]`.
///
/// Attempt 1 is immediate; attempt k+1 comes `waits[k-1]` after attempt k
/// fails; when the attempt that follows the last wait fails, the delivery is
/// dead. So `max_attempts() == waits.len() + 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    waits_ms: Vec<i64>,
    jitter: f64,
}

/// Why a schedule was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("a retry schedule needs at least one wait")]
    Empty,
    #[error("retry wait #{index} must be at least 1 ms")]
    TooShort { index: usize },
    #[error("retry wait #{index} is too long (over 100 years)")]
    TooLong { index: usize },
    #[error("a retry schedule has at most {max} waits, got {got}")]
    TooManyWaits { got: usize, max: usize },
    #[error("jitter must be between 0 and 1, got {0}")]
    JitterOutOfRange(f64),
}

/// Longest accepted wait. Far above any sane schedule, and low enough that
/// `now_ms + wait` (even doubled by jitter) can never overflow an `i64`.
const MAX_WAIT_MS: i64 = 100 * 366 * 24 * 3600 * 1000;
/// Most waits accepted; keeps attempt numbers comfortably inside `u32`.
const MAX_WAITS: usize = 1000;

impl Schedule {
    /// Validates a schedule: `waits` non-empty, each at least 1 ms (times are
    /// kept in milliseconds) and at most 100 years, `jitter` in `[0, 1]`.
    ///
    /// `jitter` is the fraction by which each wait may be stretched or shrunk
    /// at random, so that deliveries that failed together do not all retry
    /// in the same millisecond.
    pub fn try_new(waits: Vec<Duration>, jitter: f64) -> Result<Self, ScheduleError> {
        if waits.is_empty() {
            return Err(ScheduleError::Empty);
        }
        if waits.len() > MAX_WAITS {
            return Err(ScheduleError::TooManyWaits {
                got: waits.len(),
                max: MAX_WAITS,
            });
        }
        // `contains` is false for NaN too.
        if !(0.0..=1.0).contains(&jitter) {
            return Err(ScheduleError::JitterOutOfRange(jitter));
        }
        let waits_ms = waits
            .iter()
            .enumerate()
            .map(|(index, wait)| wait_ms(index, *wait))
            .collect::<Result<_, _>>()?;
        Ok(Self { waits_ms, jitter })
    }

    /// Attempts one run of the schedule makes before the delivery is dead.
    pub fn max_attempts(&self) -> u32 {
        // `try_new` caps the length at MAX_WAITS, so this never saturates.
        u32::try_from(self.waits_ms.len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }

    /// The longest wait; the cap on a target's `Retry-After`.
    pub fn longest_wait(&self) -> Duration {
        Duration::from_millis(self.longest_wait_ms().unsigned_abs())
    }

    /// The configured jitter fraction.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The configured waits.
    pub fn waits(&self) -> Vec<Duration> {
        self.waits_ms
            .iter()
            .map(|ms| Duration::from_millis(ms.unsigned_abs()))
            .collect()
    }

    fn longest_wait_ms(&self) -> i64 {
        self.waits_ms.iter().copied().max().unwrap_or(0)
    }

    /// The wait after failed attempt `attempt` (1-based), jittered.
    fn jittered_wait_ms(&self, attempt: u32, jitter_sample: f64) -> i64 {
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        let last = self.waits_ms.len().saturating_sub(1);
        let base = self.waits_ms[index.min(last)];
        // A NaN sample counts as "no jitter" rather than poisoning the time.
        let sample = if jitter_sample.is_nan() {
            0.0
        } else {
            jitter_sample.clamp(-1.0, 1.0)
        };
        let factor = 1.0 + self.jitter * sample;
        // Float to int casts saturate; the factor is in [0, 2], so this is exact enough.
        ((base as f64) * factor).round().max(0.0) as i64
    }
}

fn wait_ms(index: usize, wait: Duration) -> Result<i64, ScheduleError> {
    let ms = i64::try_from(wait.as_millis()).map_err(|_| ScheduleError::TooLong { index })?;
    match ms {
        0 => Err(ScheduleError::TooShort { index }),
        ms if ms > MAX_WAIT_MS => Err(ScheduleError::TooLong { index }),
        ms => Ok(ms),
    }
}

// === Outcome, Attempt, State ===

/// How one attempt ended, as the forwarder saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The target answered with an HTTP status.
    Status {
        code: u16,
        /// The target's `Retry-After`, in milliseconds, when it sent one.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        retry_after_ms: Option<u64>,
    },
    /// No complete response within the attempt's timeout.
    Timeout,
    /// Could not connect (refused, unreachable, DNS failure).
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// Connection reset or closed mid-response, or any other transport error.
    Io { detail: String },
}

impl Outcome {
    /// True for a 2xx status: the target has the notification.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            Outcome::Status {
                code: 200..=299,
                ..
            }
        )
    }

    /// The `Retry-After` to honour: only a 429 or 503 asks to be left alone.
    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Outcome::Status {
                code: 429 | 503,
                retry_after_ms,
            } => *retry_after_ms,
            _ => None,
        }
    }
}

/// One attempt, kept in the delivery's history whatever its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based over the delivery's whole life (it keeps counting after a replay).
    pub number: u32,
    pub started_ms: i64,
    pub duration_ms: u64,
    pub outcome: Outcome,
    /// The start of the target's answer body ([`answer_excerpt`]); absent
    /// when it sent none, when it sent no answer at all, and in records
    /// written before attempts kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// Most bytes of a target's answer kept in an attempt: enough for an error
/// message, small enough that a delivery's history stays a few KiB a try.
pub const ANSWER_KEPT: usize = 4096;

/// What an attempt keeps of an answer body: its first [`ANSWER_KEPT`]
/// bytes as text (invalid UTF-8 replaced, a character cut at the end
/// dropped); None for an empty body.
pub fn answer_excerpt(body: &[u8]) -> Option<String> {
    let kept = &body[..body.len().min(ANSWER_KEPT)];
    let whole = match std::str::from_utf8(kept) {
        // Only the end is incomplete: the cut went through a character.
        Err(err) if err.error_len().is_none() => &kept[..err.valid_up_to()],
        _ => kept,
    };
    (!whole.is_empty()).then(|| String::from_utf8_lossy(whole).into_owned())
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Created, never attempted: due at `created_ms`.
    Pending,
    /// An attempt is being made. Only the forwarder's copy is ever in this
    /// state: the spool keeps the state from before the attempt, so after a
    /// crash the delivery is simply due again.
    InFlight { attempt: u32, since_ms: i64 },
    /// Due again at `until_ms`: after a failure or a replay.
    Waiting { until_ms: i64 },
    /// A 2xx answer ended it.
    Delivered { at_ms: i64 },
    /// The schedule ran out; an admin may replay it.
    Dead { at_ms: i64 },
    /// An admin gave it up (a bulk purge, or its subscription was removed
    /// from the config); kept with its history, and it may still be replayed.
    Purged { at_ms: i64 },
}

/// What happens after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// Try again at this time (Unix ms), never earlier than the decision.
    RetryAt(i64),
    Dead,
}

/// The retry decision, pure: after attempt `attempt` (1-based, counted from
/// the start of the current schedule run) ended with `outcome` at `now_ms`.
///
/// Success (2xx) → `Delivered`. Else, if `attempt >= max_attempts` → `Dead`.
/// Else the wait is `waits[attempt-1]` scaled by `1 + jitter * jitter_sample`
/// (the sample is clamped to `[-1, 1]`); a 429 or 503 whose `Retry-After` is
/// later than that wait gets its `Retry-After` instead, capped at the longest
/// wait (a target may ask for patience, not to be dropped for days). A
/// `Retry-After` never shortens the wait.
pub fn decide(
    schedule: &Schedule,
    attempt: u32,
    outcome: &Outcome,
    now_ms: i64,
    jitter_sample: f64,
) -> Decision {
    if outcome.is_success() {
        return Decision::Delivered;
    }
    if attempt >= schedule.max_attempts() {
        return Decision::Dead;
    }
    let mut wait = schedule.jittered_wait_ms(attempt, jitter_sample);
    if let Some(retry_after) = outcome.retry_after_ms() {
        let asked = i64::try_from(retry_after).unwrap_or(i64::MAX);
        wait = wait.max(asked.min(schedule.longest_wait_ms()));
    }
    Decision::RetryAt(now_ms.saturating_add(wait.max(0)))
}

// === Delivery ===

/// Why a transition was refused; the delivery is left unchanged.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("delivery is already final (delivered or dead)")]
    AlreadyFinal,
    #[error("delivery already has attempt {0} in flight")]
    AlreadyInFlight(u32),
    #[error("delivery has no attempt in flight")]
    NotInFlight,
    #[error("only a delivered or dead delivery can be replayed")]
    NotFinal,
}

/// One notification's delivery to one subscription, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub subscription: String,
    pub state: State,
    /// Every finished attempt, in order, across replays.
    pub attempts: Vec<Attempt>,
    pub created_ms: i64,
    /// Attempts made before the last replay: the current schedule run counts
    /// attempts from here, so a replayed delivery gets a full schedule again.
    #[serde(default)]
    pub schedule_base: u32,
    /// When an admin replayed it, oldest first; part of its history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replayed_ms: Vec<i64>,
}

impl Delivery {
    /// A new delivery, due at once.
    pub fn new(subscription: impl Into<String>, now_ms: i64) -> Self {
        Self {
            subscription: subscription.into(),
            state: State::Pending,
            attempts: Vec::new(),
            created_ms: now_ms,
            schedule_base: 0,
            replayed_ms: Vec::new(),
        }
    }

    /// When the scheduler should start the next attempt; `None` while one is
    /// in flight or once final.
    pub fn due_at(&self) -> Option<i64> {
        match self.state {
            State::Pending => Some(self.created_ms),
            State::Waiting { until_ms } => Some(until_ms),
            State::InFlight { .. }
            | State::Delivered { .. }
            | State::Dead { .. }
            | State::Purged { .. } => None,
        }
    }

    /// The number the next attempt will carry (1-based, whole life).
    pub fn next_attempt_number(&self) -> u32 {
        u32::try_from(self.attempts.len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }

    /// Pending or Waiting → InFlight, whatever the due time (the scheduler
    /// decides when). Returns the attempt number to send.
    pub fn start(&mut self, now_ms: i64) -> Result<u32, TransitionError> {
        match self.state {
            State::Pending | State::Waiting { .. } => {
                let attempt = self.next_attempt_number();
                self.state = State::InFlight {
                    attempt,
                    since_ms: now_ms,
                };
                Ok(attempt)
            }
            State::InFlight { attempt, .. } => Err(TransitionError::AlreadyInFlight(attempt)),
            State::Delivered { .. } | State::Dead { .. } | State::Purged { .. } => {
                Err(TransitionError::AlreadyFinal)
            }
        }
    }

    /// InFlight → Delivered, Waiting or Dead per [`decide`]; records the
    /// attempt in the history and returns the decision.
    pub fn finish(
        &mut self,
        schedule: &Schedule,
        outcome: Outcome,
        now_ms: i64,
        jitter_sample: f64,
    ) -> Result<Decision, TransitionError> {
        let State::InFlight { attempt, since_ms } = self.state else {
            return Err(TransitionError::NotInFlight);
        };
        let run_attempt = attempt.saturating_sub(self.schedule_base);
        let decision = decide(schedule, run_attempt, &outcome, now_ms, jitter_sample);
        self.attempts.push(Attempt {
            number: attempt,
            started_ms: since_ms,
            // A clock stepped backwards gives 0, not a wrapped huge number.
            duration_ms: u64::try_from(now_ms.saturating_sub(since_ms)).unwrap_or(0),
            outcome,
            answer: None,
        });
        self.state = match decision {
            Decision::Delivered => State::Delivered { at_ms: now_ms },
            Decision::RetryAt(until_ms) => State::Waiting { until_ms },
            Decision::Dead => State::Dead { at_ms: now_ms },
        };
        Ok(decision)
    }

    /// Keeps the target's answer ([`answer_excerpt`]) with the attempt
    /// [`Delivery::finish`] recorded last.
    pub fn keep_answer(&mut self, answer: Option<String>) {
        if let Some(last) = self.attempts.last_mut() {
            last.answer = answer;
        }
    }

    /// An admin's "retry now": a delivery waiting for a later retry is due
    /// at `now_ms` instead, its schedule and attempts unchanged. Other
    /// states are left alone (false).
    pub fn bring_forward(&mut self, now_ms: i64) -> bool {
        match self.state {
            State::Waiting { until_ms } if until_ms > now_ms => {
                self.state = State::Waiting { until_ms: now_ms };
                true
            }
            _ => false,
        }
    }

    /// An admin's replay of a Dead, Delivered or Purged delivery: due now, with a
    /// full schedule again. The history is kept whole; the replay time is
    /// added to `replayed_ms`.
    pub fn replay(&mut self, now_ms: i64) -> Result<(), TransitionError> {
        if !self.is_final() {
            return Err(TransitionError::NotFinal);
        }
        self.schedule_base = self.next_attempt_number().saturating_sub(1);
        self.replayed_ms.push(now_ms);
        self.state = State::Waiting { until_ms: now_ms };
        Ok(())
    }

    /// Attempts made in the current schedule run (since creation or the last replay).
    pub fn attempts_in_run(&self) -> u32 {
        self.next_attempt_number()
            .saturating_sub(1)
            .saturating_sub(self.schedule_base)
    }

    /// Delivered, Dead or Purged: nothing more happens without an admin.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            State::Delivered { .. } | State::Dead { .. } | State::Purged { .. }
        )
    }

    /// An admin gives up a delivery that is not final: it will not be sent.
    pub fn purge(&mut self, now_ms: i64) -> Result<(), TransitionError> {
        if self.is_final() {
            return Err(TransitionError::AlreadyFinal);
        }
        self.state = State::Purged { at_ms: now_ms };
        Ok(())
    }

    /// An admin's bulk purge gives up a dead delivery, or one that is not
    /// final: it will not be sent (a replay may still bring it back).
    /// Delivered and already purged ones are left as they are.
    pub fn give_up(&mut self, now_ms: i64) -> Result<(), TransitionError> {
        if matches!(self.state, State::Dead { .. }) {
            self.state = State::Purged { at_ms: now_ms };
            return Ok(());
        }
        self.purge(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const T0: i64 = 1_700_000_000_000;

    fn standard() -> Schedule {
        Schedule::try_new(
            [5 * MIN, 30 * MIN, 3 * HOUR, 6 * HOUR, 12 * HOUR]
                .map(|ms| Duration::from_millis(ms as u64))
                .to_vec(),
            0.0,
        )
        .unwrap()
    }

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after_ms: None,
        }
    }

    fn retry_after(code: u16, ms: i64) -> Outcome {
        Outcome::Status {
            code,
            retry_after_ms: Some(ms as u64),
        }
    }

    // --- Schedule ---

    #[test]
    fn schedule_reports_its_shape() {
        let s = standard();
        assert_eq!(s.max_attempts(), 6);
        assert_eq!(s.longest_wait(), Duration::from_secs(12 * 3600));
        assert_eq!(s.waits().len(), 5);
    }

    #[test]
    fn schedule_refuses_bad_input() {
        let ok = || vec![Duration::from_secs(1)];
        assert_eq!(Schedule::try_new(vec![], 0.0), Err(ScheduleError::Empty));
        assert_eq!(
            Schedule::try_new(vec![Duration::from_secs(1), Duration::ZERO], 0.0),
            Err(ScheduleError::TooShort { index: 1 })
        );
        assert_eq!(
            Schedule::try_new(vec![Duration::from_micros(999)], 0.0),
            Err(ScheduleError::TooShort { index: 0 })
        );
        assert_eq!(
            Schedule::try_new(vec![Duration::MAX], 0.0),
            Err(ScheduleError::TooLong { index: 0 })
        );
        assert!(matches!(
            Schedule::try_new(vec![Duration::from_millis(1); MAX_WAITS + 1], 0.0),
            Err(ScheduleError::TooManyWaits { .. })
        ));
        for jitter in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Schedule::try_new(ok(), jitter),
                Err(ScheduleError::JitterOutOfRange(_))
            ));
        }
        assert!(Schedule::try_new(ok(), 0.0).is_ok());
        assert!(Schedule::try_new(ok(), 1.0).is_ok());
    }

    // --- decide ---

    #[test]
    fn any_2xx_is_delivered_even_on_the_last_attempt() {
        let s = standard();
        for code in [200, 201, 204, 299] {
            assert_eq!(decide(&s, 1, &status(code), T0, 0.0), Decision::Delivered);
            assert_eq!(decide(&s, 6, &status(code), T0, 0.0), Decision::Delivered);
        }
    }

    #[test]
    fn failures_wait_per_the_schedule() {
        let s = standard();
        let expected = [5 * MIN, 30 * MIN, 3 * HOUR, 6 * HOUR, 12 * HOUR];
        for (i, wait) in expected.iter().enumerate() {
            let attempt = i as u32 + 1;
            assert_eq!(
                decide(&s, attempt, &status(500), T0, 0.0),
                Decision::RetryAt(T0 + wait)
            );
        }
    }

    #[test]
    fn non_2xx_statuses_and_transport_errors_retry() {
        let s = standard();
        let outcomes = [
            status(100),
            status(301),
            status(400),
            status(404),
            status(500),
            status(599),
            Outcome::Timeout,
            Outcome::Connect,
            Outcome::Tls,
            Outcome::Io {
                detail: "connection reset".into(),
            },
        ];
        for outcome in outcomes {
            assert_eq!(
                decide(&s, 1, &outcome, T0, 0.0),
                Decision::RetryAt(T0 + 5 * MIN),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn the_last_attempt_failing_is_dead() {
        let s = standard();
        assert_eq!(decide(&s, 6, &status(500), T0, 0.0), Decision::Dead);
        assert_eq!(decide(&s, 6, &Outcome::Timeout, T0, 0.0), Decision::Dead);
        assert_eq!(decide(&s, 7, &status(503), T0, 0.0), Decision::Dead);
    }

    #[test]
    fn later_retry_after_on_429_or_503_is_used() {
        let s = standard();
        for code in [429, 503] {
            assert_eq!(
                decide(&s, 1, &retry_after(code, 20 * MIN), T0, 0.0),
                Decision::RetryAt(T0 + 20 * MIN)
            );
        }
    }

    #[test]
    fn retry_after_is_capped_at_the_longest_wait() {
        let s = standard();
        assert_eq!(
            decide(&s, 1, &retry_after(429, 48 * HOUR), T0, 0.0),
            Decision::RetryAt(T0 + 12 * HOUR)
        );
        assert_eq!(
            decide(
                &s,
                1,
                &Outcome::Status {
                    code: 503,
                    retry_after_ms: Some(u64::MAX)
                },
                T0,
                0.0
            ),
            Decision::RetryAt(T0 + 12 * HOUR)
        );
    }

    #[test]
    fn earlier_retry_after_is_ignored() {
        let s = standard();
        assert_eq!(
            decide(&s, 2, &retry_after(503, MIN), T0, 0.0),
            Decision::RetryAt(T0 + 30 * MIN)
        );
    }

    #[test]
    fn retry_after_on_other_statuses_is_ignored() {
        let s = standard();
        for code in [500, 502, 504, 400] {
            assert_eq!(
                decide(&s, 1, &retry_after(code, 2 * HOUR), T0, 0.0),
                Decision::RetryAt(T0 + 5 * MIN)
            );
        }
    }

    #[test]
    fn retry_after_never_shortens_a_jittered_wait() {
        // Jitter 1 at +1 doubles the 12 h wait; a capped 12 h Retry-After must not cut it.
        let s = Schedule::try_new(vec![Duration::from_secs(12 * 3600)], 1.0).unwrap();
        assert_eq!(
            decide(&s, 1, &retry_after(429, 48 * HOUR), T0, 1.0),
            Decision::RetryAt(T0 + 24 * HOUR)
        );
    }

    #[test]
    fn jitter_scales_the_wait_within_bounds() {
        let s = Schedule::try_new(vec![Duration::from_millis(10_000)], 0.2).unwrap();
        let at = |sample| decide(&s, 1, &status(500), T0, sample);
        assert_eq!(at(0.0), Decision::RetryAt(T0 + 10_000));
        assert_eq!(at(1.0), Decision::RetryAt(T0 + 12_000));
        assert_eq!(at(-1.0), Decision::RetryAt(T0 + 8_000));
        assert_eq!(at(0.5), Decision::RetryAt(T0 + 11_000));
        // Out-of-range samples are clamped; NaN means no jitter.
        assert_eq!(at(7.0), Decision::RetryAt(T0 + 12_000));
        assert_eq!(at(-7.0), Decision::RetryAt(T0 + 8_000));
        assert_eq!(at(f64::NAN), Decision::RetryAt(T0 + 10_000));
    }

    #[test]
    fn full_jitter_never_schedules_before_now() {
        let s = Schedule::try_new(vec![Duration::from_millis(1)], 1.0).unwrap();
        assert_eq!(decide(&s, 1, &status(500), T0, -1.0), Decision::RetryAt(T0));
    }

    // --- Delivery transitions ---

    #[test]
    fn a_new_delivery_is_due_at_creation() {
        let d = Delivery::new("billing", T0);
        assert_eq!(d.state, State::Pending);
        assert_eq!(d.due_at(), Some(T0));
        assert_eq!(d.next_attempt_number(), 1);
        assert!(!d.is_final());
    }

    #[test]
    fn success_on_the_first_attempt() {
        let s = standard();
        let mut d = Delivery::new("billing", T0);
        assert_eq!(d.start(T0 + 10), Ok(1));
        assert_eq!(
            d.state,
            State::InFlight {
                attempt: 1,
                since_ms: T0 + 10
            }
        );
        assert_eq!(d.due_at(), None);
        assert_eq!(
            d.finish(&s, status(204), T0 + 60, 0.0),
            Ok(Decision::Delivered)
        );
        assert_eq!(d.state, State::Delivered { at_ms: T0 + 60 });
        assert_eq!(
            d.attempts,
            vec![Attempt {
                number: 1,
                started_ms: T0 + 10,
                duration_ms: 50,
                outcome: status(204),
                answer: None,
            }]
        );
        assert!(d.is_final());
        assert_eq!(d.due_at(), None);
    }

    #[test]
    fn a_failure_waits_then_starts_again() {
        let s = standard();
        let mut d = Delivery::new("billing", T0);
        d.start(T0).unwrap();
        assert_eq!(
            d.finish(&s, status(502), T0 + 100, 0.0),
            Ok(Decision::RetryAt(T0 + 100 + 5 * MIN))
        );
        assert_eq!(
            d.state,
            State::Waiting {
                until_ms: T0 + 100 + 5 * MIN
            }
        );
        assert_eq!(d.due_at(), Some(T0 + 100 + 5 * MIN));
        assert_eq!(d.start(T0 + 100 + 5 * MIN), Ok(2));
    }

    #[test]
    fn a_full_fail_sequence_keeps_every_attempt() {
        let s = standard();
        let mut d = Delivery::new("billing", T0);
        let mut now = T0;
        while !d.is_final() {
            now = d.due_at().unwrap();
            d.start(now).unwrap();
            d.finish(&s, Outcome::Timeout, now + 30_000, 0.0).unwrap();
        }
        assert_eq!(
            d.state,
            State::Dead {
                at_ms: now + 30_000
            }
        );
        let numbers: Vec<u32> = d.attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
        assert!(d
            .attempts
            .iter()
            .all(|a| a.outcome == Outcome::Timeout && a.duration_ms == 30_000));
        assert!(d
            .attempts
            .windows(2)
            .all(|w| w[0].started_ms < w[1].started_ms));
    }

    #[test]
    fn final_states_refuse_start_and_finish() {
        let s = standard();
        for state in [State::Delivered { at_ms: T0 }, State::Dead { at_ms: T0 }] {
            let mut d = Delivery::new("billing", T0);
            d.state = state;
            let before = d.clone();
            assert_eq!(d.start(T0), Err(TransitionError::AlreadyFinal));
            assert_eq!(
                d.finish(&s, status(500), T0, 0.0),
                Err(TransitionError::NotInFlight)
            );
            assert_eq!(d, before);
        }
    }

    #[test]
    fn only_an_in_flight_delivery_finishes_and_only_once() {
        let s = standard();
        let mut d = Delivery::new("billing", T0);
        assert_eq!(
            d.finish(&s, status(200), T0, 0.0),
            Err(TransitionError::NotInFlight)
        );
        d.start(T0).unwrap();
        assert_eq!(d.start(T0), Err(TransitionError::AlreadyInFlight(1)));
        d.finish(&s, status(500), T0, 0.0).unwrap();
        assert_eq!(
            d.finish(&s, status(500), T0, 0.0),
            Err(TransitionError::NotInFlight)
        );
        assert_eq!(d.attempts.len(), 1);
    }

    #[test]
    fn replay_of_a_dead_delivery_gives_a_full_schedule_again() {
        let s = standard();
        let mut d = Delivery::new("billing", T0);
        let mut now = T0;
        let run = |d: &mut Delivery, now: &mut i64| {
            let mut waits = Vec::new();
            while !d.is_final() {
                let due = d.due_at().unwrap();
                waits.push(due - *now);
                *now = due;
                d.start(*now).unwrap();
                d.finish(&s, status(500), *now, 0.0).unwrap();
            }
            waits
        };
        run(&mut d, &mut now);
        assert_eq!(d.replay(now + HOUR), Ok(()));
        assert_eq!(d.due_at(), Some(now + HOUR));
        assert_eq!(d.replayed_ms, vec![now + HOUR]);
        assert_eq!(d.attempts_in_run(), 0);
        now += HOUR;
        let waits = run(&mut d, &mut now);
        assert_eq!(
            waits,
            vec![0, 5 * MIN, 30 * MIN, 3 * HOUR, 6 * HOUR, 12 * HOUR]
        );
        assert!(matches!(d.state, State::Dead { .. }));
        let numbers: Vec<u32> = d.attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn replay_of_a_delivered_one_and_refusal_of_a_live_one() {
        let s = standard();
        let mut d = Delivery::new("billing", T0);
        assert_eq!(d.replay(T0), Err(TransitionError::NotFinal));
        d.start(T0).unwrap();
        assert_eq!(d.replay(T0), Err(TransitionError::NotFinal));
        d.finish(&s, status(200), T0, 0.0).unwrap();
        d.replay(T0 + 1).unwrap();
        assert_eq!(d.start(T0 + 1), Ok(2));
        assert_eq!(
            d.finish(&s, status(500), T0 + 1, 0.0),
            Ok(Decision::RetryAt(T0 + 1 + 5 * MIN))
        );
    }

    #[test]
    fn a_purged_delivery_is_final_keeps_its_history_and_can_be_replayed() {
        let s = standard();
        let mut d = Delivery::new("billing", T0);
        d.start(T0).unwrap();
        d.finish(&s, status(500), T0, 0.0).unwrap();
        d.purge(T0 + 1).unwrap();
        assert!(d.is_final());
        assert_eq!(d.due_at(), None);
        assert_eq!(d.attempts.len(), 1);
        assert_eq!(d.purge(T0 + 2), Err(TransitionError::AlreadyFinal));
        assert_eq!(d.start(T0 + 2), Err(TransitionError::AlreadyFinal));
        d.replay(T0 + 3).unwrap();
        assert_eq!(d.due_at(), Some(T0 + 3));
    }

    #[test]
    fn a_bulk_purge_gives_up_dead_and_waiting_deliveries_but_not_delivered_ones() {
        let s = Schedule::try_new(vec![Duration::from_millis(10)], 0.0).unwrap();
        let mut dead = Delivery::new("billing", T0);
        for at in [T0, T0 + 10] {
            dead.start(at).unwrap();
            dead.finish(&s, status(500), at, 0.0).unwrap();
        }
        assert!(matches!(dead.state, State::Dead { .. }), "{:?}", dead.state);
        dead.give_up(T0 + 20).unwrap();
        assert_eq!(dead.state, State::Purged { at_ms: T0 + 20 });
        assert_eq!(dead.attempts.len(), 2, "the history stays");

        let mut waiting = Delivery::new("billing", T0);
        waiting.start(T0).unwrap();
        waiting.finish(&s, status(500), T0, 0.0).unwrap();
        waiting.give_up(T0 + 1).unwrap();
        assert_eq!(waiting.due_at(), None);

        let mut delivered = Delivery::new("billing", T0);
        delivered.start(T0).unwrap();
        delivered.finish(&s, status(200), T0, 0.0).unwrap();
        assert_eq!(
            delivered.give_up(T0 + 1),
            Err(TransitionError::AlreadyFinal)
        );
        assert_eq!(waiting.give_up(T0 + 2), Err(TransitionError::AlreadyFinal));
    }

    #[test]
    fn an_answer_is_kept_cut_to_a_few_kib_as_text() {
        assert_eq!(answer_excerpt(b""), None);
        assert_eq!(
            answer_excerpt(b"{\"error\":\"no such invoice\"}").as_deref(),
            Some("{\"error\":\"no such invoice\"}")
        );
        // Cut inside a two-byte character: the half is dropped.
        let mut long = vec![b'a'; ANSWER_KEPT - 1];
        long.extend_from_slice("ñ and more".as_bytes());
        let kept = answer_excerpt(&long).unwrap();
        assert_eq!(kept.len(), ANSWER_KEPT - 1);
        assert!(kept.bytes().all(|b| b == b'a'));
        // Not UTF-8 at all: replaced, not refused.
        assert_eq!(
            answer_excerpt(&[0xff, b'o', b'k']).as_deref(),
            Some("\u{fffd}ok")
        );
    }

    #[test]
    fn an_attempt_written_before_answers_were_kept_still_reads() {
        let old = r#"{"number":1,"started_ms":5,"duration_ms":2,"outcome":{"kind":"timeout"}}"#;
        let attempt: Attempt = serde_json::from_str(old).unwrap();
        assert_eq!(attempt.answer, None);
        assert_eq!(
            serde_json::to_string(&attempt).unwrap(),
            old,
            "no field added when empty"
        );
        let mut d = Delivery::new("billing", T0);
        d.start(T0).unwrap();
        d.finish(&standard(), status(500), T0 + 3, 0.0).unwrap();
        d.keep_answer(Some("busy".into()));
        assert_eq!(d.attempts[0].answer.as_deref(), Some("busy"));
    }

    #[test]
    fn serde_shape_is_stable() {
        let mut d = Delivery::new("billing", T0);
        d.start(T0).unwrap();
        d.finish(&standard(), retry_after(429, 1000), T0 + 5, 0.0)
            .unwrap();
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json["state"],
            serde_json::json!({"state": "waiting", "until_ms": T0 + 5 + 5 * MIN})
        );
        assert_eq!(
            json["attempts"][0]["outcome"],
            serde_json::json!({"kind": "status", "code": 429, "retry_after_ms": 1000})
        );
        assert_eq!(
            serde_json::to_value(status(500)).unwrap(),
            serde_json::json!({"kind": "status", "code": 500})
        );
        assert_eq!(
            serde_json::to_value(Outcome::Tls).unwrap(),
            serde_json::json!({"kind": "tls"})
        );
        // Records written before `schedule_base`/`replayed_ms` existed still load.
        let old = serde_json::json!({"subscription": "s", "state": {"state": "pending"}, "attempts": [], "created_ms": 1});
        let loaded: Delivery = serde_json::from_value(old).unwrap();
        assert_eq!(loaded, Delivery::new("s", 1));
    }

    // --- a scheduler on a paused clock ---

    #[tokio::test(start_paused = true)]
    async fn a_scheduler_on_a_paused_clock_walks_the_whole_schedule() {
        let schedule = standard();
        let clock = crate::clock::Clock::following_tokio_from(T0);
        let now_ms = || clock.now_ms();
        let mut d = Delivery::new("billing", now_ms());
        let mut started = Vec::new();

        while let Some(due) = d.due_at() {
            tokio::time::sleep_until(clock.instant_at(due)).await;
            let now = now_ms();
            assert_eq!(now, due, "woke exactly when due");
            d.start(now).unwrap();
            started.push(now);
            d.finish(&schedule, status(500), now_ms(), 0.0).unwrap();
        }

        assert!(matches!(d.state, State::Dead { .. }));
        assert_eq!(d.attempts.len(), 6);
        let spacing: Vec<i64> = started.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            spacing,
            vec![5 * MIN, 30 * MIN, 3 * HOUR, 6 * HOUR, 12 * HOUR]
        );
        assert_eq!(now_ms() - T0, 5 * MIN + 30 * MIN + 21 * HOUR);
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_paused_clock_retry_after_moves_the_next_attempt_up_to_the_cap() {
        let schedule = standard();
        let clock = crate::clock::Clock::following_tokio_from(T0);
        let now_ms = || clock.now_ms();
        // 429 asking for 1 h (later than the 5 min wait: honoured), 503 asking
        // for 2 days (capped at the longest wait, 12 h), 500 (the schedule's
        // third wait, 3 h), then 200.
        let mut answers = vec![
            retry_after(429, HOUR),
            retry_after(503, 48 * HOUR),
            status(500),
            status(200),
        ]
        .into_iter();
        let mut d = Delivery::new("billing", now_ms());
        let mut started = Vec::new();
        while let Some(due) = d.due_at() {
            tokio::time::sleep_until(clock.instant_at(due)).await;
            d.start(now_ms()).unwrap();
            started.push(now_ms());
            let answer = answers.next().expect("no attempt past success");
            d.finish(&schedule, answer, now_ms(), 0.0).unwrap();
        }
        assert!(matches!(d.state, State::Delivered { .. }));
        let spacing: Vec<i64> = started.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(spacing, vec![HOUR, 12 * HOUR, 3 * HOUR]);
        assert_eq!(d.attempts.len(), 4);
    }

    // --- properties ---

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn schedule() -> impl Strategy<Value = Schedule> {
            (
                prop::collection::vec(1u64..=24 * 3_600_000, 1..8),
                0.0..=1.0f64,
            )
                .prop_map(|(waits, jitter)| {
                    Schedule::try_new(
                        waits.into_iter().map(Duration::from_millis).collect(),
                        jitter,
                    )
                    .unwrap()
                })
        }

        fn outcome() -> impl Strategy<Value = Outcome> {
            let retry_after = prop::option::of(0u64..=48 * 3_600_000);
            prop_oneof![
                4 => (100u16..600, retry_after.clone())
                    .prop_map(|(code, retry_after_ms)| Outcome::Status { code, retry_after_ms }),
                2 => (prop_oneof![Just(429u16), Just(503u16)], retry_after)
                    .prop_map(|(code, retry_after_ms)| Outcome::Status { code, retry_after_ms }),
                1 => Just(Outcome::Timeout),
                1 => Just(Outcome::Connect),
                1 => Just(Outcome::Tls),
                1 => "[a-z ]{0,12}".prop_map(|detail| Outcome::Io { detail }),
            ]
        }

        /// One step of the scheduler's loop: (outcome, jitter sample, how
        /// late the scheduler is, how long the request took, whether the
        /// relay crashes once with this attempt in flight first).
        fn steps() -> impl Strategy<Value = Vec<(Outcome, f64, i64, i64, bool)>> {
            prop::collection::vec(
                (
                    outcome(),
                    -2.0..2.0f64,
                    0i64..10_000,
                    0i64..60_000,
                    prop::bool::weighted(0.2),
                ),
                9,
            )
        }

        fn assert_round_trips(d: &Delivery) {
            let json = serde_json::to_string(d).unwrap();
            assert_eq!(&serde_json::from_str::<Delivery>(&json).unwrap(), d);
        }

        /// Drives one schedule run to a final state; returns the outcomes used.
        fn run(
            s: &Schedule,
            d: &mut Delivery,
            now: &mut i64,
            steps: &[(Outcome, f64, i64, i64, bool)],
        ) -> Vec<Outcome> {
            let mut used = Vec::new();
            let mut steps = steps.iter();
            while !d.is_final() {
                // The state is never lost: not final and not in flight means due.
                let due = d.due_at().expect("a non-final delivery has a due time");
                let (outcome, sample, late, took, crash) =
                    steps.next().expect("ran past max_attempts");
                *now = (*now).max(due) + late;
                // What the spool holds while the attempt is made: the
                // started state lives only in the forwarder's memory.
                let persisted = d.clone();
                let number = d.start(*now).unwrap();
                if *crash {
                    // Restarted with this attempt in flight: the record is
                    // the one from before the attempt, due already, nothing
                    // recorded, and the attempt is made again under the same
                    // number (the path production runs: the due index).
                    *d = persisted;
                    *now += took;
                    assert_round_trips(d);
                    assert!(d.due_at().is_some_and(|due| due <= *now));
                    assert_eq!(d.start(*now).unwrap(), number);
                }
                assert_eq!(d.due_at(), None);
                assert!(matches!(d.state, State::InFlight { .. }));
                assert_round_trips(d);
                *now += took;
                let decision = d.finish(s, outcome.clone(), *now, *sample).unwrap();
                if let Decision::RetryAt(at) = decision {
                    assert!(at >= *now, "retry at {at} before decision at {now}");
                }
                used.push(outcome.clone());
                assert!(d.attempts_in_run() <= s.max_attempts());
                assert_round_trips(d);
            }
            used
        }

        fn check_end(s: &Schedule, d: &Delivery, used: &[Outcome]) {
            let successes = used.iter().filter(|o| o.is_success()).count();
            if successes > 0 {
                assert!(matches!(d.state, State::Delivered { .. }));
                assert_eq!(successes, 1);
                assert!(used.last().is_some_and(Outcome::is_success));
            } else {
                assert!(matches!(d.state, State::Dead { .. }));
                assert_eq!(used.len(), s.max_attempts() as usize);
            }
        }

        proptest! {
            #[test]
            fn driving_a_delivery_keeps_its_promises(
                s in schedule(),
                first in steps(),
                second in steps(),
            ) {
                let mut d = Delivery::new("sub", T0);
                let mut now = T0;
                let used = run(&s, &mut d, &mut now, &first);
                check_end(&s, &d, &used);

                // A replay gets a full schedule again and keeps the history.
                now += 1;
                d.replay(now).unwrap();
                let used_again = run(&s, &mut d, &mut now, &second);
                check_end(&s, &d, &used_again);
                prop_assert_eq!(d.attempts.len(), used.len() + used_again.len());
                let numbers: Vec<u32> = d.attempts.iter().map(|a| a.number).collect();
                prop_assert_eq!(numbers, (1..=d.attempts.len() as u32).collect::<Vec<_>>());
            }
        }
    }
}
