//! When an invoice's next automatic check is due, pure: `after` past the
//! start of its wait (`since_ms`) for the first; then `every[n]` after the
//! last answered check, the last value repeating; and no more once
//! `give_up_after` has passed since `since_ms` (a last `GaveUp` is
//! recorded then, and the invoice stays stuck).
//!
//! Only checks the provider answered move an invoice along its schedule
//! (pending, or "not found": the provider was asked and said so). A
//! request that failed (credentials, 5xx, timeout, an unreadable answer)
//! says nothing of the invoice: the source's back-off
//! (`source_state`) paces those, and the invoice is asked again once its
//! source is.

use std::time::Duration;

/// What the stored checks of one invoice's current wait say, for its
/// schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    /// Checks the provider answered since the wait began.
    pub answered: usize,
    /// When the last of them was made (Unix ms).
    pub last_ms: Option<i64>,
    /// A `GaveUp` was recorded for this wait.
    pub gave_up: bool,
}

/// One invoice's schedule, from its source's `[reconcile]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub after: Duration,
    pub every: Vec<Duration>,
    pub give_up_after: Duration,
}

/// What is next for one invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Check it at this time (Unix ms; now, if past).
    CheckAt(i64),
    /// Its time is over: record `GaveUp` at this time (now, if past).
    GiveUpAt(i64),
    /// It gave up already: nothing more, automatically.
    Done,
}

impl Next {
    /// When something is to happen, if ever.
    pub fn at_ms(self) -> Option<i64> {
        match self {
            Next::CheckAt(at) | Next::GiveUpAt(at) => Some(at),
            Next::Done => None,
        }
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Plan {
    /// The next step of an invoice waiting since `since_ms`.
    pub fn next(&self, since_ms: i64, checked: Checked) -> Next {
        if checked.gave_up {
            return Next::Done;
        }
        let give_up_at = since_ms.saturating_add(ms(self.give_up_after));
        let due = match (checked.answered, checked.last_ms) {
            (0, _) | (_, None) => since_ms.saturating_add(ms(self.after)),
            (answered, Some(last_ms)) => {
                let wait = self
                    .every
                    .get(answered - 1)
                    .or(self.every.last())
                    .copied()
                    .unwrap_or(self.give_up_after);
                last_ms.saturating_add(ms(wait))
            }
        };
        if due < give_up_at {
            Next::CheckAt(due)
        } else {
            Next::GiveUpAt(give_up_at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINCE: i64 = 1_764_000_000_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn plan() -> Plan {
        Plan {
            after: Duration::from_secs(30 * 60),
            every: [1, 3, 6].map(|h| Duration::from_secs(h * 3600)).to_vec(),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }

    fn answered(answered: usize, last_ms: i64) -> Checked {
        Checked {
            answered,
            last_ms: Some(last_ms),
            gave_up: false,
        }
    }

    #[test]
    fn the_first_check_is_after_past_the_start_of_the_wait() {
        assert_eq!(
            plan().next(SINCE, Checked::default()),
            Next::CheckAt(SINCE + 30 * MIN)
        );
    }

    #[test]
    fn then_each_every_after_the_last_answer_the_last_value_repeating() {
        let plan = plan();
        // First answer late (the source was failing): the next counts from it.
        let first = SINCE + 50 * MIN;
        assert_eq!(
            plan.next(SINCE, answered(1, first)),
            Next::CheckAt(first + HOUR)
        );
        assert_eq!(
            plan.next(SINCE, answered(2, SINCE + 2 * HOUR)),
            Next::CheckAt(SINCE + 5 * HOUR)
        );
        assert_eq!(
            plan.next(SINCE, answered(3, SINCE + 5 * HOUR)),
            Next::CheckAt(SINCE + 11 * HOUR)
        );
        assert_eq!(
            plan.next(SINCE, answered(4, SINCE + 11 * HOUR)),
            Next::CheckAt(SINCE + 17 * HOUR),
            "6h again"
        );
    }

    #[test]
    fn it_gives_up_at_give_up_after_and_then_is_done() {
        let plan = plan();
        assert_eq!(
            plan.next(SINCE, answered(5, SINCE + 20 * HOUR)),
            Next::GiveUpAt(SINCE + 24 * HOUR),
            "20h + 6h is past 24h"
        );
        let gave_up = Checked {
            gave_up: true,
            ..answered(6, SINCE + 24 * HOUR)
        };
        assert_eq!(plan.next(SINCE, gave_up), Next::Done);
        assert_eq!(Next::Done.at_ms(), None);
        // An `after` as long as the whole wait: no check, straight to giving up.
        let late = Plan {
            after: Duration::from_secs(48 * 3600),
            ..plan
        };
        assert_eq!(
            late.next(SINCE, Checked::default()),
            Next::GiveUpAt(SINCE + 24 * HOUR)
        );
    }

    #[test]
    fn an_empty_every_checks_once_then_waits_to_give_up() {
        let plan = Plan {
            every: Vec::new(),
            ..plan()
        };
        assert_eq!(
            plan.next(SINCE, answered(1, SINCE + HOUR)),
            Next::GiveUpAt(SINCE + 24 * HOUR)
        );
    }

    #[test]
    fn huge_durations_saturate_instead_of_overflowing() {
        let plan = Plan {
            after: Duration::MAX,
            every: vec![Duration::MAX],
            give_up_after: Duration::MAX,
        };
        assert_eq!(
            plan.next(SINCE, Checked::default()),
            Next::GiveUpAt(i64::MAX)
        );
        assert_eq!(
            plan.next(SINCE, answered(1, SINCE)),
            Next::GiveUpAt(i64::MAX)
        );
    }
}
