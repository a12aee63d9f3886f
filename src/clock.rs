//! Wall-clock time as Unix milliseconds.
//!
//! Persisted times (received_at, due times) are Unix milliseconds. The relay
//! reads the system clock, so a clock corrected by NTP after start-up is
//! followed at once; tests can instead make a clock that follows tokio's
//! (paused) clock from a fixed wall-clock base, or a manual clock that
//! moves only when told (for code on threads of its own, outside any
//! runtime a test could pause).
//!
//! Deadlines are [`Instant`]s read from the same clock ([`Clock::instant_now`])
//! and waited for with [`Clock::sleep_until`], so a manual clock moves them
//! too. [`Stopwatch`] times progress shown to people (nothing decides on
//! it).
//!
//! This is the one place that reads the system clock: `.clippy.toml` refuses
//! `SystemTime::now`, `OffsetDateTime::now_utc` and `std::time::Instant::now`
//! elsewhere. Code that decides by the wall clock is given a [`Clock`];
//! timeouts and deadlines of the network side use `tokio::time::Instant`,
//! which a paused test runtime controls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// `Some`: Unix ms at a tokio instant, advanced by tokio's clock.
    tokio_base: Option<(i64, Instant)>,
    /// `Some`: a manual clock, moved only by [`Clock::advance`].
    manual: Option<&'static Manual>,
}

/// A manual clock's time: how far it was advanced from where it started.
#[derive(Debug)]
struct Manual {
    start_ms: i64,
    /// The instant it started at (monotonic readings are `origin + advanced`).
    origin: Instant,
    advanced: tokio::sync::watch::Sender<Duration>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock {
            tokio_base: None,
            manual: None,
        }
    }

    /// A clock that starts at the system time and then advances only with
    /// tokio's clock (for tests on a paused clock).
    pub fn following_tokio() -> Self {
        Self::following_tokio_from(system_ms())
    }

    /// A clock that reads `start_ms` now and then advances only with tokio's
    /// clock: on a paused runtime, only when the test advances it.
    pub fn following_tokio_from(start_ms: i64) -> Self {
        Clock {
            tokio_base: Some((start_ms, Instant::now())),
            manual: None,
        }
    }

    /// A clock at Unix time `start_ms` that moves only by [`Clock::advance`]
    /// (for tests of code whose deadlines run on threads of their own). Its
    /// few bytes are leaked, so that a `Clock` stays `Copy`.
    pub fn manual(start_ms: i64) -> Self {
        let manual = Box::leak(Box::new(Manual {
            start_ms,
            origin: system_instant(),
            advanced: tokio::sync::watch::Sender::new(Duration::ZERO),
        }));
        Clock {
            tokio_base: None,
            manual: Some(manual),
        }
    }

    /// Whether this clock advances with tokio's ([`Clock::following_tokio`]):
    /// a backend whose network client has timers of its own (JetStream)
    /// must then keep that client off the test's paused runtime, or tokio's
    /// auto-advance fires the client's timeouts.
    pub fn follows_tokio(&self) -> bool {
        self.tokio_base.is_some()
    }

    /// Moves a manual clock forward by `by`, waking whoever sleeps until a
    /// time now reached; other clocks ignore it.
    pub fn advance(&self, by: Duration) {
        if let Some(manual) = self.manual {
            manual.advanced.send_modify(|advanced| *advanced += by);
        }
    }

    pub fn now_ms(&self) -> i64 {
        if let Some(manual) = self.manual {
            let advanced = i64::try_from(manual.advanced.borrow().as_millis()).unwrap_or(i64::MAX);
            return manual.start_ms.saturating_add(advanced);
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
    /// On a manual clock, wait for it with [`Clock::sleep_until`].
    pub fn instant_at(&self, ms: i64) -> Instant {
        let ahead =
            Duration::from_millis(u64::try_from(ms.saturating_sub(self.now_ms())).unwrap_or(0));
        match self.manual {
            Some(_) => self.instant_now() + ahead,
            None => Instant::now() + ahead,
        }
    }

    /// A monotonic reading, for deadlines and throttles: the system's
    /// (whatever runtime, paused or not, the caller is on), tokio's for a
    /// clock that follows it, or a manual clock's.
    pub fn instant_now(&self) -> Instant {
        match (self.manual, self.tokio_base) {
            (Some(manual), _) => manual.origin + *manual.advanced.borrow(),
            (None, Some(_)) => Instant::now(),
            (None, None) => system_instant(),
        }
    }

    /// Waits until [`Clock::instant_now`] reaches `deadline`: on the
    /// current runtime's timer, or until a manual clock is advanced there.
    pub async fn sleep_until(&self, deadline: Instant) {
        match self.manual {
            Some(manual) => {
                let mut advanced = manual.advanced.subscribe();
                // The sender is never dropped (leaked): this ends only once reached.
                let _ = advanced
                    .wait_for(|advanced| manual.origin + *advanced >= deadline)
                    .await;
            }
            None => tokio::time::sleep_until(deadline).await,
        }
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

/// The system's monotonic clock, on no runtime or any (a paused one too).
// With `system_ms`, the one read of the system's clocks (see the module doc).
#[allow(clippy::disallowed_methods)]
fn system_instant() -> Instant {
    Instant::from_std(std::time::Instant::now())
}

// The one read of the system's wall clock (see the module doc).
#[allow(clippy::disallowed_methods)]
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
    fn only_a_clock_following_tokio_says_it_follows_tokio() {
        assert!(Clock::following_tokio_from(0).follows_tokio());
        assert!(!Clock::system().follows_tokio());
        assert!(!Clock::manual(0).follows_tokio());
    }

    #[test]
    fn a_stopwatch_counts_up() {
        let watch = Stopwatch::start();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(watch.elapsed() >= std::time::Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_following_tokio_starts_where_told_and_moves_only_with_tokio() {
        let clock = Clock::following_tokio_from(1_445_412_480_000);
        assert_eq!(clock.now_ms(), 1_445_412_480_000);
        tokio::time::advance(std::time::Duration::from_millis(1_500)).await;
        assert_eq!(clock.now_ms(), 1_445_412_481_500);
        let due = clock.instant_at(1_445_412_482_000);
        assert_eq!(due - Instant::now(), std::time::Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_ignores_tokio_time() {
        let clock = Clock::system();
        let start = clock.now_ms();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert!(clock.now_ms() - start < 60_000);
    }

    #[tokio::test]
    async fn a_manual_clock_moves_only_when_advanced_and_wakes_its_sleepers() {
        let clock = Clock::manual(1_000_000);
        let start = clock.instant_now();
        assert_eq!(clock.now_ms(), 1_000_000);
        let sleeper = tokio::spawn(async move {
            clock.sleep_until(start + Duration::from_millis(10)).await;
            clock.now_ms()
        });
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before the clock moved");
        clock.advance(Duration::from_millis(4));
        assert_eq!(clock.instant_now() - start, Duration::from_millis(4));
        clock.advance(Duration::from_millis(6));
        let woke_at = tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("the sleeper never woke")
            .unwrap();
        assert_eq!(woke_at, 1_000_010);
        assert_eq!(
            clock.instant_at(1_000_030) - clock.instant_now(),
            Duration::from_millis(20)
        );
    }

    #[test]
    fn the_system_clock_reads_instants_on_no_runtime() {
        let clock = Clock::system();
        let first = clock.instant_now();
        assert!(clock.instant_now() >= first);
        // Advancing is for manual clocks only.
        clock.advance(Duration::from_secs(3600));
        assert!(clock.instant_now() - first < Duration::from_secs(60));
    }
}
