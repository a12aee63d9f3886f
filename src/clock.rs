//! Wall-clock time as Unix milliseconds, advanced by tokio's clock.
//!
//! Persisted times (received_at, due times) are Unix milliseconds. Reading
//! them from `SystemTime` everywhere would make paused-clock tests lie, so the
//! relay reads the wall clock once and adds tokio's monotonic elapsed time.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_ms: i64,
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Clock {
            base_ms,
            base: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(elapsed)
    }

    /// The tokio instant at which Unix time `ms` is reached (now, if past).
    pub fn instant_at(&self, ms: i64) -> Instant {
        let ahead = u64::try_from(ms.saturating_sub(self.now_ms())).unwrap_or(0);
        Instant::now() + std::time::Duration::from_millis(ahead)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
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
        let clock = Clock::new();
        let start = clock.now_ms();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(clock.now_ms() - start, 3_600_000);
    }
}
