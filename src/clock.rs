//! Wall-clock time as Unix milliseconds.
//!
//! Persisted times (received_at, due times) are Unix milliseconds. The relay
//! reads the system clock, so a clock corrected by NTP after start-up is
//! followed at once; tests can instead make a clock that follows tokio's
//! (paused) clock from a fixed wall-clock base.
//!
//! This is the one place that reads the system clock: `.clippy.toml` refuses
//! `SystemTime::now`, `OffsetDateTime::now_utc` and `std::time::Instant::now`
//! elsewhere. Code that decides by the wall clock is given a [`Clock`];
//! timeouts and deadlines use `tokio::time::Instant`, which a paused test
//! runtime controls.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// `Some`: Unix ms at a tokio instant, advanced by tokio's clock.
    tokio_base: Option<(i64, Instant)>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { tokio_base: None }
    }

    /// A clock that starts at the system time and then advances only with
    /// tokio's clock (for tests on a paused clock).
    pub fn following_tokio() -> Self {
        Self::manual(system_ms())
    }

    /// A clock that reads `start_ms` now and then advances only with tokio's
    /// clock: on a paused runtime, only when the test advances it.
    pub fn manual(start_ms: i64) -> Self {
        Clock {
            tokio_base: Some((start_ms, Instant::now())),
        }
    }

    pub fn now_ms(&self) -> i64 {
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

    #[tokio::test(start_paused = true)]
    async fn a_manual_clock_starts_where_told_and_moves_only_with_tokio() {
        let clock = Clock::manual(1_445_412_480_000);
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
}
