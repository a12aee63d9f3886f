//! The dedup window's rule, the same on every backend: a store is a
//! resend of an earlier copy of its key when it was received less than
//! the window after that copy, judged on the copies' `received_ms` (the
//! contract's rule), not on the clock of whoever stores it.

use crate::config::SpoolConfig;

/// The configured window, in ms.
pub(crate) fn window_ms(config: &SpoolConfig) -> i64 {
    i64::try_from(config.dedup_window.0.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a copy received at `received_ms` is a resend of one received
/// at `first_ms`.
pub(crate) fn is_resend(first_ms: i64, received_ms: i64, window_ms: i64) -> bool {
    received_ms.saturating_sub(first_ms) < window_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_is_one_received_less_than_the_window_after_the_first() {
        assert!(is_resend(1_000, 1_000, 60_000));
        assert!(is_resend(1_000, 60_999, 60_000));
        assert!(!is_resend(1_000, 61_000, 60_000));
        // Received before the first (clocks differ between relays): a resend.
        assert!(is_resend(1_000, 0, 60_000));
    }
}
