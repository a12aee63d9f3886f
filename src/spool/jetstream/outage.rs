//! Whether this relay can store now, as the servers last answered: the
//! JetStream side of [`Health`](crate::spool::Health)
//! (`docs/design/jetstream.md`, "Faults").
//!
//! A store or quarantine that got no acknowledgement (no quorum, servers
//! unreachable) marks the spool not writable, with why and since when: the
//! admin's `/readyz` names it and the watchdog's status line shows it. The
//! next write that lands clears it, and so does a probe made about once a
//! second while it lasts, so a relay a load balancer stopped sending to
//! still comes back by itself. While the client has no connection at all,
//! writes are refused at once instead of each waiting out `store_timeout`
//! (ingress answers them 503 with `Retry-After`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::stream::Stream;

use crate::clock::Clock;
use crate::spool::SpoolError;

/// How often the probe asks the stream while writes fail.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Why writes fail now, and since when (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Down {
    pub condition: String,
    pub since_ms: i64,
}

/// The last answer of the servers to this relay's writes.
#[derive(Debug, Default)]
pub(super) struct Outage {
    down: Mutex<Option<Down>>,
    refused: AtomicU64,
}

impl Outage {
    /// Notes what a write came to: an `Unavailable` marks the spool down
    /// (keeping the first condition's time), anything the servers answered
    /// marks it up.
    pub(super) fn note<T>(&self, result: &Result<T, SpoolError>, clock: Clock) {
        match result {
            Err(SpoolError::Unavailable(why)) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let mut down = self.lock();
                match down.as_mut() {
                    Some(down) => down.condition.clone_from(why),
                    None => {
                        tracing::warn!(condition = %why, "JetStream spool not writable: answering 503 until the servers acknowledge again");
                        *down = Some(Down {
                            condition: why.clone(),
                            since_ms: clock.now_ms(),
                        });
                    }
                }
            }
            // Refused for what it is (a bad id, a closed spool): the
            // servers are not at fault.
            Err(_) => {}
            Ok(_) => self.up(),
        }
    }

    /// The servers acknowledged again.
    pub(super) fn up(&self) {
        if let Some(was) = self.lock().take() {
            tracing::info!(condition = %was.condition, "JetStream spool writable again");
        }
    }

    /// Why writes fail now, if they do.
    pub(super) fn down(&self) -> Option<Down> {
        self.lock().clone()
    }

    /// Writes refused since the relay started.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Down>> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refuses a write at once while the client has no connection: it would
/// wait out `store_timeout` for an answer that cannot come. The refusal is
/// noted as any failed write is.
pub(super) fn connected(client: &async_nats::Client, servers: &[String]) -> Result<(), SpoolError> {
    match client.connection_state() {
        State::Disconnected => Err(SpoolError::Unavailable(format!(
            "JetStream: not connected to any of {} (reconnecting)",
            servers.join(", ")
        ))),
        State::Connected | State::Pending => Ok(()),
    }
}

/// While writes fail, asks the stream for its state about once a second
/// (its leader answers only with a quorum); an answer marks the spool up.
pub(super) async fn probe(outage: Arc<Outage>, stream: Stream, timeout: Duration) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if outage.down().is_none() {
            continue;
        }
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, stream.get_info()).await {
            outage.up();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_marks_the_spool_down_from_its_first_failure_until_one_lands() {
        let clock = Clock::manual(1_000);
        let outage = Outage::default();
        outage.note(
            &Err::<(), _>(SpoolError::Unavailable("no quorum".into())),
            clock,
        );
        clock.advance(Duration::from_secs(5));
        outage.note(
            &Err::<(), _>(SpoolError::Unavailable("no ack".into())),
            clock,
        );
        assert_eq!(
            outage.down(),
            Some(Down {
                condition: "no ack".into(),
                since_ms: 1_000
            })
        );
        // A write refused for what it is says nothing of the servers.
        outage.note(&Err::<(), _>(SpoolError::Closed), clock);
        assert!(outage.down().is_some());
        assert_eq!(outage.refused(), 2);
        outage.note(&Ok(()), clock);
        assert_eq!(outage.down(), None);
    }
}
