//! One source's health as its provider's query API answers, pure: after a
//! failed request (credentials refused, a 5xx, a timeout, an answer that
//! cannot be read) the source's automatic checks wait `failure_backoff[n]`
//! (the n-th failure in a row, the last value repeating), so a wrong
//! token or a provider down costs a handful of requests an hour, never a
//! loop. The first failure of a spell turns it failing and the first
//! answer after turns it recovered: each turn is told once
//! (`relay.reconcile.failing`, `relay.reconcile.recovered`).
//!
//! The state lives in memory, and is rebuilt at start from the checks
//! stored on the source's invoices ([`SourceState::replayed`]), so a
//! restart continues a spell's back-off instead of asking at once.

use std::time::Duration;

/// What a stored check says of its source's query API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The provider answered (whatever it said of the invoice).
    Answered,
    /// The request failed (refused, 5xx, timeout, unreadable).
    Failed,
}

/// A turn of a source, to be told once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// The first failure of a spell.
    Failing,
    /// The first answer after a spell of `failures` failed requests that
    /// began at `since_ms`.
    Recovered { since_ms: i64, failures: u32 },
}

/// One source's failures in a row, and until when it rests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceState {
    failures: u32,
    /// When the spell of failures began.
    failing_since_ms: Option<i64>,
    /// No automatic request before this time (Unix ms).
    resting_until_ms: Option<i64>,
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl SourceState {
    /// Whether an automatic request may be made at `now_ms`.
    pub fn may_ask(&self, now_ms: i64) -> bool {
        self.resting_until_ms.is_none_or(|until| now_ms >= until)
    }

    /// Until when it rests after failures, if it does.
    pub fn resting_until_ms(&self) -> Option<i64> {
        self.resting_until_ms
    }

    /// Failed requests in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn is_failing(&self) -> bool {
        self.failing_since_ms.is_some()
    }

    /// A request failed at `now_ms`: it rests for the next step of
    /// `backoff` (none if empty). [`Turn::Failing`] on the first of a spell.
    pub fn failed(&mut self, now_ms: i64, backoff: &[Duration]) -> Option<Turn> {
        self.failures = self.failures.saturating_add(1);
        let step = usize::try_from(self.failures - 1).unwrap_or(usize::MAX);
        let wait = backoff
            .get(step)
            .or(backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO);
        self.resting_until_ms = Some(now_ms.saturating_add(ms(wait)));
        match self.failing_since_ms {
            Some(_) => None,
            None => {
                self.failing_since_ms = Some(now_ms);
                Some(Turn::Failing)
            }
        }
    }

    /// The source is asked another way now (a reload changed its url,
    /// credentials, CA or timeout): the rest ends, so a fixed token is
    /// tried at once rather than after the rest the old one earned. The
    /// spell goes on: one failing turn, one recovered when it answers.
    pub fn reconfigured(&mut self) {
        self.resting_until_ms = None;
    }

    /// The state after the requests `asked` (when, and how it went; in any
    /// order, e.g. the checks of every invoice of the source), as if the
    /// relay had made them without stopping: the failures in a row since
    /// the last answer, resting from the last of them, the spell already
    /// told (a restart does not tell `failing` again).
    pub fn replayed(mut asked: Vec<(i64, Asked)>, backoff: &[Duration]) -> SourceState {
        asked.sort_by_key(|(at_ms, _)| *at_ms);
        let mut state = SourceState::default();
        for (at_ms, asked) in asked {
            match asked {
                Asked::Failed => {
                    state.failed(at_ms, backoff);
                }
                Asked::Answered => {
                    state.answered();
                }
            }
        }
        state
    }

    /// The provider answered (whatever it said of the invoice): the rest
    /// ends. [`Turn::Recovered`] if it was failing.
    pub fn answered(&mut self) -> Option<Turn> {
        let failures = std::mem::take(&mut self.failures);
        self.resting_until_ms = None;
        let since_ms = self.failing_since_ms.take()?;
        Some(Turn::Recovered { since_ms, failures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_000_000_000;
    const MIN: i64 = 60_000;

    fn backoff() -> Vec<Duration> {
        [1, 5, 30].map(|m| Duration::from_secs(m * 60)).to_vec()
    }

    #[test]
    fn failures_rest_the_source_along_the_backoff_the_last_step_repeating() {
        let mut state = SourceState::default();
        assert!(state.may_ask(T0));
        assert_eq!(state.failed(T0, &backoff()), Some(Turn::Failing));
        assert!(!state.may_ask(T0 + MIN - 1));
        assert!(state.may_ask(T0 + MIN));
        assert_eq!(state.failed(T0 + MIN, &backoff()), None, "told once");
        assert_eq!(state.resting_until_ms(), Some(T0 + 6 * MIN));
        assert_eq!(state.failed(T0 + 6 * MIN, &backoff()), None);
        assert_eq!(state.resting_until_ms(), Some(T0 + 36 * MIN));
        assert_eq!(state.failed(T0 + 36 * MIN, &backoff()), None);
        assert_eq!(state.resting_until_ms(), Some(T0 + 66 * MIN), "30m again");
        assert_eq!(state.failures(), 4);
        assert!(state.is_failing());
    }

    #[test]
    fn the_first_answer_after_a_spell_recovers_once_and_ends_the_rest() {
        let mut state = SourceState::default();
        assert_eq!(state.answered(), None, "nothing to recover from");
        state.failed(T0, &backoff());
        state.failed(T0 + MIN, &backoff());
        assert_eq!(
            state.answered(),
            Some(Turn::Recovered {
                since_ms: T0,
                failures: 2
            })
        );
        assert!(state.may_ask(T0 + MIN));
        assert_eq!(state.answered(), None, "told once");
        // A new spell starts from the first step, and is told again.
        assert_eq!(state.failed(T0 + 10 * MIN, &backoff()), Some(Turn::Failing));
        assert_eq!(state.resting_until_ms(), Some(T0 + 11 * MIN));
    }

    /// Requests a source with wrong credentials makes in a window, when the
    /// engine asks as soon as it may: the first, then one per step.
    #[test]
    fn a_failing_source_asks_no_more_than_the_backoff_allows() {
        let mut state = SourceState::default();
        let mut requests = Vec::new();
        // Looks every second for two hours.
        for now in (T0..T0 + 120 * MIN).step_by(1000) {
            if state.may_ask(now) {
                requests.push(now);
                state.failed(now, &backoff());
            }
        }
        let offsets: Vec<i64> = requests.iter().map(|at| (at - T0) / MIN).collect();
        assert_eq!(offsets, [0, 1, 6, 36, 66, 96]);
    }

    #[test]
    fn the_stored_checks_of_a_spell_rebuild_its_backoff_and_its_told_turn() {
        // Two invoices' checks, read one invoice after the other.
        let asked = vec![
            (T0 + MIN, Asked::Failed),
            (T0 + 36 * MIN, Asked::Failed),
            (T0 - MIN, Asked::Answered),
            (T0, Asked::Failed),
            (T0 + 6 * MIN, Asked::Failed),
        ];
        let state = SourceState::replayed(asked, &backoff());
        assert_eq!(state.failures(), 4);
        assert_eq!(
            state.resting_until_ms(),
            Some(T0 + 66 * MIN),
            "30m after the last"
        );
        assert!(!state.may_ask(T0 + 66 * MIN - 1));
        let mut uninterrupted = SourceState::default();
        for at in [T0, T0 + MIN, T0 + 6 * MIN, T0 + 36 * MIN] {
            uninterrupted.failed(at, &backoff());
        }
        assert_eq!(state, uninterrupted, "as if it had not stopped");
        let mut state = state;
        assert_eq!(
            state.failed(T0 + 66 * MIN, &backoff()),
            None,
            "told already"
        );
        assert_eq!(
            state.answered(),
            Some(Turn::Recovered {
                since_ms: T0,
                failures: 5
            })
        );
    }

    #[test]
    fn an_answer_after_the_failures_ends_the_spell_and_no_checks_leave_it_well() {
        let asked = vec![
            (T0, Asked::Failed),
            (T0 + MIN, Asked::Failed),
            (T0 + 2 * MIN, Asked::Answered),
        ];
        assert_eq!(
            SourceState::replayed(asked, &backoff()),
            SourceState::default()
        );
        assert_eq!(
            SourceState::replayed(Vec::new(), &backoff()),
            SourceState::default()
        );
        // A new spell after the answer counts from its own first failure.
        let asked = vec![
            (T0, Asked::Failed),
            (T0 + MIN, Asked::Answered),
            (T0 + 2 * MIN, Asked::Failed),
        ];
        let state = SourceState::replayed(asked, &backoff());
        assert_eq!(state.failures(), 1);
        assert_eq!(state.resting_until_ms(), Some(T0 + 3 * MIN));
    }

    #[test]
    fn an_empty_backoff_does_not_rest() {
        let mut state = SourceState::default();
        state.failed(T0, &[]);
        assert!(state.may_ask(T0));
    }
}
