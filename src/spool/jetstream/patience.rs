//! Start-up's patience with a cluster that is busy electing: a relay that
//! starts just after a NATS node died or came back finds the stream's or a
//! consumer's Raft group without a leader for a few seconds, and its
//! requests time out or are told "no suitable peers" (or its fold, whose
//! consumer went with the node, falls behind while it starts again). Those
//! steps are tried again for a bounded while ([`START_PATIENCE`]), each
//! failure logged, before the open gives up (systemd's start timeout is
//! 90 s). What cannot mend by waiting (no server reachable at all, a
//! stream with unsafe settings, a server too old) is not retried.

use std::future::Future;
use std::time::Duration;

use super::bridge::Bridge;
use super::error::JetStreamError;
use crate::spool::SpoolError;

/// How long, in waits between tries, a step of the open is retried.
pub(super) const START_PATIENCE: Duration = Duration::from_secs(30);
const FIRST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(4);

/// Whether waiting may mend an error of the open.
pub(super) trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for JetStreamError {
    fn transient(&self) -> bool {
        // Replicas: right after an election the meta leader may not yet
        // know every peer; a cluster truly too small fails after the wait.
        matches!(
            self,
            JetStreamError::Request { .. } | JetStreamError::Replicas { .. }
        )
    }
}

impl Transient for SpoolError {
    fn transient(&self) -> bool {
        matches!(self, SpoolError::Unavailable(_))
    }
}

/// Runs `step` until it succeeds, fails for good, or the waits between
/// tries add up to [`START_PATIENCE`]. The waits run on the bridge (real
/// time even when the caller's clock is paused); the clock is not read.
pub(super) async fn patiently<T, E, F, Fut>(
    bridge: &Bridge,
    what: &str,
    mut step: F,
) -> Result<T, E>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waited = Duration::ZERO;
    let mut wait = FIRST_WAIT;
    loop {
        match step().await {
            Ok(done) => return Ok(done),
            Err(err) if err.transient() && waited < START_PATIENCE => {
                tracing::warn!(
                    step = what,
                    error = %err,
                    retry_in = ?wait,
                    "JetStream did not answer at start (a leader election after a node stopped or \
                     came back?); trying again"
                );
                // A bridge that cannot wait still counts the wait: bounded.
                let _ = bridge.run(tokio::time::sleep(wait)).await;
                waited += wait;
                wait = (wait * 2).min(LONGEST_WAIT);
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::clock::Clock;

    fn timed_out() -> JetStreamError {
        JetStreamError::request("reading the stream", "timed out")
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_that_times_out_twice_is_tried_until_it_answers() {
        let bridge = Bridge::for_clock(Clock::system()).unwrap();
        let tries = AtomicU32::new(0);
        let answer = patiently(&bridge, "test", || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(timed_out()),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_failure_gives_up_after_the_patience_and_a_fatal_one_at_once() {
        let bridge = Bridge::for_clock(Clock::system()).unwrap();
        let tries = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let answer: Result<(), _> = patiently(&bridge, "test", || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(timed_out())
        })
        .await;
        assert!(matches!(answer, Err(JetStreamError::Request { .. })));
        let waited = started.elapsed();
        assert!(
            waited >= START_PATIENCE && waited < START_PATIENCE + LONGEST_WAIT,
            "{waited:?}"
        );
        assert!(tries.load(Ordering::SeqCst) > 2);

        let tries = AtomicU32::new(0);
        let answer: Result<(), _> = patiently(&bridge, "test", || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(JetStreamError::Identity {
                stream: "s".into(),
                detail: "not ours".into(),
            })
        })
        .await;
        assert!(matches!(answer, Err(JetStreamError::Identity { .. })));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
