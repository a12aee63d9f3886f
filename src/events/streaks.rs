//! Which subscriptions are failing, pure: failed attempts in a row per
//! subscription, and the two turns worth an event (failing after N of
//! them, recovered at the first success after that). Kept in memory: after
//! a restart a failing target is reported again after N new failures.

use std::collections::HashMap;

/// A turn in a subscription's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The `failures`-th failed attempt in a row reached the threshold.
    Failing { failures: u32 },
    /// A success after it was reported failing, and `failures` before it.
    Recovered { failures: u32 },
}

#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    failures: u32,
    failing: bool,
}

/// Failed attempts in a row, by subscription. Only subscriptions with a
/// failure since their last success are kept.
#[derive(Debug, Default)]
pub struct Streaks {
    by_subscription: HashMap<String, Streak>,
}

impl Streaks {
    /// Records one attempt's outcome; the turn it makes, if any.
    pub fn record(
        &mut self,
        subscription: &str,
        success: bool,
        failing_after: u32,
    ) -> Option<Turn> {
        if success {
            let ended = self.by_subscription.remove(subscription)?;
            return ended.failing.then_some(Turn::Recovered {
                failures: ended.failures,
            });
        }
        let streak = self
            .by_subscription
            .entry(subscription.to_owned())
            .or_default();
        streak.failures = streak.failures.saturating_add(1);
        if streak.failing || streak.failures < failing_after {
            return None;
        }
        streak.failing = true;
        Some(Turn::Failing {
            failures: streak.failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_is_reported_once_at_the_threshold_and_recovered_at_the_next_success() {
        let mut streaks = Streaks::default();
        assert_eq!(streaks.record("billing", false, 3), None);
        assert_eq!(streaks.record("billing", false, 3), None);
        // Another subscription's success does not break billing's streak.
        assert_eq!(streaks.record("crm", true, 3), None);
        assert_eq!(
            streaks.record("billing", false, 3),
            Some(Turn::Failing { failures: 3 })
        );
        assert_eq!(streaks.record("billing", false, 3), None, "once");
        assert_eq!(
            streaks.record("billing", true, 3),
            Some(Turn::Recovered { failures: 4 })
        );
        assert_eq!(streaks.record("billing", true, 3), None);
    }

    #[test]
    fn a_success_before_the_threshold_starts_the_count_again_silently() {
        let mut streaks = Streaks::default();
        assert_eq!(streaks.record("billing", false, 2), None);
        assert_eq!(streaks.record("billing", true, 2), None);
        assert_eq!(streaks.record("billing", false, 2), None);
        assert_eq!(
            streaks.record("billing", false, 2),
            Some(Turn::Failing { failures: 2 })
        );
    }
}
