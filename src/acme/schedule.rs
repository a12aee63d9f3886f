//! When to renew, and how long to wait after a failure: pure functions of
//! the time given to them (Unix milliseconds), so tests need no clock.
//!
//! Renewal is due once a third of the certificate's lifetime is left (what
//! Let's Encrypt advises for 90-day certificates: 30 days before expiry),
//! or, where the CA publishes an ARI window (RFC 9773), at a point chosen
//! at random inside that window, which spreads a fleet's renewals as the CA
//! asks. A failed order is retried after an exponential back-off with
//! jitter, never later than the renewal's own deadline allows.

use std::time::Duration;

/// A certificate's validity, Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

/// The CA's suggested renewal window (ARI), Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// What to do about the certificate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Order a new certificate now.
    RenewNow,
    /// Nothing before this time (Unix ms).
    WaitUntil(i64),
}

/// The time to renew at. `jitter` is a sample in `[0, 1)`: the point of an
/// ARI window to renew at (a window that has already ended means now).
pub fn renew_at(validity: Validity, window: Option<RenewalWindow>, jitter: f64) -> i64 {
    match window {
        Some(window) if window.end_ms > window.start_ms => {
            let span = (window.end_ms - window.start_ms) as f64;
            window.start_ms + (span * jitter.clamp(0.0, 1.0)) as i64
        }
        Some(window) => window.start_ms,
        None => {
            let lifetime = validity.not_after_ms.saturating_sub(validity.not_before_ms);
            validity.not_after_ms.saturating_sub(lifetime / 3)
        }
    }
}

/// Whether to renew now, given the renewal time [`renew_at`] chose.
pub fn decide(now_ms: i64, renew_at_ms: i64) -> Decision {
    if now_ms >= renew_at_ms {
        Decision::RenewNow
    } else {
        Decision::WaitUntil(renew_at_ms)
    }
}

/// Bounds of the wait before asking a CA's ARI window again: its
/// Retry-After (Let's Encrypt says six hours), kept between these.
pub const ARI_RECHECK_MIN: Duration = Duration::from_secs(3600);
pub const ARI_RECHECK_MAX: Duration = Duration::from_secs(24 * 3600);

/// When to wake next while waiting to renew at `renew_at_ms`: then, or
/// sooner to ask the CA's ARI window again (it may move the renewal
/// earlier, e.g. before a mass revocation).
pub fn wake_at(now_ms: i64, renew_at_ms: i64, ari_recheck: Option<Duration>) -> i64 {
    match ari_recheck {
        None => renew_at_ms,
        Some(recheck) => {
            let recheck = recheck.clamp(ARI_RECHECK_MIN, ARI_RECHECK_MAX);
            let recheck_ms = i64::try_from(recheck.as_millis()).unwrap_or(i64::MAX);
            renew_at_ms.min(now_ms.saturating_add(recheck_ms))
        }
    }
}

/// Back-off after failed orders in a row, before jitter: doubles from
/// `FIRST_RETRY` up to `MAX_RETRY`.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const MAX_RETRY: Duration = Duration::from_secs(3600);

/// How long to wait after the `failures`-th failure in a row (1 for the
/// first), with `jitter` in `[0, 1)` taking off up to half, so relays that
/// failed together do not retry together. While a certificate is still
/// valid, the wait never goes past an eighth of the time it has left, so a
/// long back-off cannot outlast it.
pub fn retry_after(
    failures: u32,
    jitter: f64,
    now_ms: i64,
    valid_until_ms: Option<i64>,
) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let full = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
    let mut wait = full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0));
    if let Some(until) = valid_until_ms {
        let left = u64::try_from(until.saturating_sub(now_ms)).unwrap_or(0);
        let cap = Duration::from_millis(left / 8).max(FIRST_RETRY);
        wait = wait.min(cap);
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    const DAY: i64 = 86_400_000;

    fn ninety_days_from(start: i64) -> Validity {
        Validity {
            not_before_ms: start,
            not_after_ms: start + 90 * DAY,
        }
    }

    #[test]
    fn renews_with_a_third_of_the_lifetime_left() {
        let clock = Clock::manual(1_800_000_000_000);
        let validity = ninety_days_from(clock.now_ms());
        let at = renew_at(validity, None, 0.7);
        assert_eq!(at, validity.not_after_ms - 30 * DAY);
        assert_eq!(decide(clock.now_ms(), at), Decision::WaitUntil(at));
        clock.advance(Duration::from_millis((60 * DAY - 1) as u64));
        assert_eq!(decide(clock.now_ms(), at), Decision::WaitUntil(at));
        clock.advance(Duration::from_millis(1));
        assert_eq!(decide(clock.now_ms(), at), Decision::RenewNow);
    }

    #[test]
    fn an_ari_window_overrides_the_third_and_spreads_by_jitter() {
        let start = 1_800_000_000_000;
        let validity = ninety_days_from(start);
        let window = RenewalWindow {
            start_ms: start + 10 * DAY,
            end_ms: start + 12 * DAY,
        };
        assert_eq!(renew_at(validity, Some(window), 0.0), window.start_ms);
        assert_eq!(renew_at(validity, Some(window), 0.5), start + 11 * DAY);
        assert!(renew_at(validity, Some(window), 0.999_999) < window.end_ms);
        // A window in the past (the CA wants it replaced: revocation) means now.
        let past = RenewalWindow {
            start_ms: start - 2 * DAY,
            end_ms: start - DAY,
        };
        assert_eq!(
            decide(start, renew_at(validity, Some(past), 0.3)),
            Decision::RenewNow
        );
    }

    #[test]
    fn an_ari_window_is_asked_again_within_its_bounds() {
        let now = 1_800_000_000_000;
        let hour = 3_600_000;
        // No ARI: sleep until the renewal itself.
        assert_eq!(wake_at(now, now + 60 * DAY, None), now + 60 * DAY);
        // The CA's six hours.
        let six_hours = Some(Duration::from_secs(6 * 3600));
        assert_eq!(wake_at(now, now + 60 * DAY, six_hours), now + 6 * hour);
        // A Retry-After of seconds or of weeks is kept between 1 h and 24 h.
        assert_eq!(
            wake_at(now, now + 60 * DAY, Some(Duration::ZERO)),
            now + hour
        );
        assert_eq!(
            wake_at(now, now + 60 * DAY, Some(Duration::from_secs(30 * 86_400))),
            now + 24 * hour
        );
        // A renewal sooner than the next look wins.
        assert_eq!(wake_at(now, now + 10, six_hours), now + 10);
    }

    #[test]
    fn back_off_doubles_to_an_hour_and_jitter_takes_at_most_half() {
        assert_eq!(retry_after(1, 0.0, 0, None), Duration::from_secs(1));
        assert_eq!(retry_after(2, 0.0, 0, None), Duration::from_secs(2));
        assert_eq!(retry_after(5, 0.0, 0, None), Duration::from_secs(16));
        assert_eq!(retry_after(40, 0.0, 0, None), MAX_RETRY);
        assert_eq!(retry_after(40, 0.999_999, 0, None).as_secs(), 1800);
        for failures in 1..30 {
            for jitter in [0.0, 0.25, 0.5, 0.99] {
                let wait = retry_after(failures, jitter, 0, None);
                let full = retry_after(failures, 0.0, 0, None);
                assert!(wait <= full && wait >= full / 2, "{failures} {jitter}");
            }
        }
    }

    #[test]
    fn back_off_never_outlasts_a_valid_certificate() {
        let clock = Clock::manual(1_800_000_000_000);
        let until = clock.now_ms() + 8 * 60_000;
        assert_eq!(
            retry_after(40, 0.0, clock.now_ms(), Some(until)),
            Duration::from_secs(60)
        );
        clock.advance(Duration::from_secs(8 * 60));
        // Expired: retries at the first pace, not never.
        assert_eq!(
            retry_after(40, 0.0, clock.now_ms(), Some(until)),
            FIRST_RETRY
        );
    }
}
