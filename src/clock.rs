//! Wall-clock time as Unix milliseconds.
//!
//! Persisted times (received_at, due times) are Unix milliseconds. The relay
//! reads the system clock, so a clock corrected by NTP after start-up is
//! followed at once; tests can instead make a clock that follows tokio's
//! (paused) clock from a fixed wall-clock base, or one they set by hand
//! ([`SettableClock`]) for a relay serving real sockets. [`Stopwatch`] times
//! progress shown to people (nothing decides on it).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// `Some`: Unix ms at a tokio instant, advanced by tokio's clock.
    tokio_base: Option<(i64, Instant)>,
    /// `Some`: Unix ms as a test sets them ([`SettableClock`]).
    settable: Option<&'static AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock::default()
    }

    /// A clock that starts at the system time and then advances only with
    /// tokio's clock (for tests on a paused clock).
    pub fn following_tokio() -> Self {
        Clock {
            tokio_base: Some((system_ms(), Instant::now())),
            settable: None,
        }
    }

    pub fn now_ms(&self) -> i64 {
        if let Some(settable) = self.settable {
            return settable.load(Ordering::Acquire);
        }
        match self.tokio_base {
            None => system_ms(),
            Some((base_ms, base)) => {
                let elapsed = i64::try_from(base.elapsed().as_millis()).unwrap_or(i64::MAX);
                base_ms.saturating_add(elapsed)
            }
        }
    }

    /// The tokio instant at which Unix time `ms` is reached (now, if past).
    pub fn instant_at(&self, ms: i64) -> Instant {
        let ahead = u64::try_from(ms.saturating_sub(self.now_ms())).unwrap_or(0);
        Instant::now() + std::time::Duration::from_millis(ahead)
    }
}

/// A clock a test sets by hand: the relay started on [`SettableClock::clock`]
/// reads the time set here, while tokio's timers run on their own, so
/// sockets and timeouts behave as in service (a paused tokio clock would
/// fire them whenever the runtime waits on a socket).
#[derive(Debug, Clone, Copy)]
pub struct SettableClock {
    now: &'static AtomicI64,
}

impl SettableClock {
    /// A clock at Unix ms `ms`. Each one keeps its eight bytes for the
    /// process's life (a [`Clock`] is `Copy`, held by every part of a
    /// relay): a test makes a few.
    pub fn starting_at(ms: i64) -> SettableClock {
        SettableClock {
            now: Box::leak(Box::new(AtomicI64::new(ms))),
        }
    }

    /// The clock to hand to the relay.
    pub fn clock(&self) -> Clock {
        Clock {
            tokio_base: None,
            settable: Some(self.now),
        }
    }

    pub fn set(&self, ms: i64) {
        self.now.store(ms, Ordering::Release);
    }

    pub fn advance(&self, by: std::time::Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ms| {
                Some(ms.saturating_add(by))
            });
    }
}

/// Time elapsed since a start, for progress shown to people (a backup's
/// "12.0 MiB received (3 s)"); nothing decides on it.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    // Elapsed time for a person, never a decision (see `.clippy.toml`).
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Stopwatch {
        Stopwatch(std::time::Instant::now())
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.0.elapsed()
    }
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T19:06:03.120Z`.
pub fn format_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_milliseconds_in_utc() {
        assert_eq!(format_ms(1_647_629_891_007), "2022-03-18T18:58:11.007Z");
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock() {
        let clock = Clock::following_tokio();
        let start = clock.now_ms();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(clock.now_ms() - start, 3_600_000);
    }

    #[test]
    fn a_settable_clock_moves_only_when_set() {
        let settable = SettableClock::starting_at(1_600_000_000_000);
        let clock = settable.clock();
        assert_eq!(clock.now_ms(), 1_600_000_000_000);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(clock.now_ms(), 1_600_000_000_000, "not the system's time");
        settable.advance(std::time::Duration::from_secs(300));
        assert_eq!(clock.now_ms(), 1_600_000_300_000);
        settable.set(1_700_000_000_000);
        assert_eq!(clock.now_ms(), 1_700_000_000_000);
    }

    #[tokio::test]
    async fn a_settable_clock_times_instants_from_its_own_now() {
        let settable = SettableClock::starting_at(1_000_000);
        let clock = settable.clock();
        let before = Instant::now();
        let at = clock.instant_at(1_060_000);
        assert!(at - before >= std::time::Duration::from_secs(60));
        assert!(at - before < std::time::Duration::from_secs(61));
    }

    #[test]
    fn a_stopwatch_counts_up() {
        let watch = Stopwatch::start();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(watch.elapsed() >= std::time::Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_ignores_tokio_time() {
        let clock = Clock::system();
        let start = clock.now_ms();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert!(clock.now_ms() - start < 60_000);
    }
}
