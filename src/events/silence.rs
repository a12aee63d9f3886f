//! Silent sources, pure: a source with `expect_every` that has sent
//! nothing for that long is silent (a break between the provider and the
//! edge, such as DNS, a certificate or a firewall, shows no failed attempt
//! anywhere else). Each source turns silent once and heard again once;
//! `now` and the last receipt are passed in.

use std::collections::BTreeMap;

/// Whether a source expected every `expect_every_ms` is silent at `now_ms`:
/// nothing since `last_ms`, or since `started_ms` when nothing came since
/// the relay started.
pub fn is_silent(now_ms: i64, started_ms: i64, expect_every_ms: i64, last_ms: Option<i64>) -> bool {
    let since = last_ms.map_or(started_ms, |last| last.max(started_ms));
    now_ms.saturating_sub(since) >= expect_every_ms
}

/// A source's turn, to be told once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    Silent {
        source: String,
        expect_every_ms: i64,
        last_ms: Option<i64>,
    },
    Heard {
        source: String,
        silent_since_ms: i64,
    },
}

/// The sources found silent, and since when (the look that found them).
#[derive(Debug, Default)]
pub struct Silence {
    silent: BTreeMap<String, i64>,
}

impl Silence {
    /// Looks at each `(source, expect_every_ms, last received ms)` and
    /// answers the turns since the last look. A source no longer expected
    /// (a reload dropped its `expect_every`) is forgotten without a turn.
    pub fn look(
        &mut self,
        now_ms: i64,
        started_ms: i64,
        sources: &[(String, i64, Option<i64>)],
    ) -> Vec<Turn> {
        self.silent
            .retain(|name, _| sources.iter().any(|(source, _, _)| source == name));
        let mut turns = Vec::new();
        for (source, expect_every_ms, last_ms) in sources {
            let silent = is_silent(now_ms, started_ms, *expect_every_ms, *last_ms);
            match (self.silent.get(source).copied(), silent) {
                (None, true) => {
                    self.silent.insert(source.clone(), now_ms);
                    turns.push(Turn::Silent {
                        source: source.clone(),
                        expect_every_ms: *expect_every_ms,
                        last_ms: *last_ms,
                    });
                }
                (Some(silent_since_ms), false) => {
                    self.silent.remove(source);
                    turns.push(Turn::Heard {
                        source: source.clone(),
                        silent_since_ms,
                    });
                }
                _ => {}
            }
        }
        turns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_source_is_silent_once_and_heard_once() {
        let mut silence = Silence::default();
        let start = 1_000 * HOUR;
        let expect = |last| vec![("tus".to_owned(), 6 * HOUR, last)];
        assert!(silence.look(start + HOUR, start, &expect(None)).is_empty());
        let turns = silence.look(start + 6 * HOUR, start, &expect(None));
        assert!(matches!(&turns[..], [Turn::Silent { source, .. }] if source == "tus"));
        // Told once, however often it is looked at.
        assert!(silence
            .look(start + 7 * HOUR, start, &expect(None))
            .is_empty());
        let heard = silence.look(start + 8 * HOUR, start, &expect(Some(start + 8 * HOUR)));
        assert_eq!(
            heard,
            [Turn::Heard {
                source: "tus".into(),
                silent_since_ms: start + 6 * HOUR
            }]
        );
        assert!(silence
            .look(start + 9 * HOUR, start, &expect(Some(start + 8 * HOUR)))
            .is_empty());
    }

    #[test]
    fn a_receipt_before_the_start_counts_from_the_start() {
        assert!(!is_silent(10, 5, 10, Some(0)));
        assert!(is_silent(15, 5, 10, Some(0)));
        assert!(!is_silent(15, 5, 10, Some(6)));
    }

    #[test]
    fn a_source_no_longer_expected_is_forgotten_quietly() {
        let mut silence = Silence::default();
        let sources = vec![("tus".to_owned(), 10, None)];
        assert_eq!(silence.look(20, 0, &sources).len(), 1);
        assert!(silence.look(30, 0, &[]).is_empty());
        // Expected again: silent again, told again.
        assert_eq!(silence.look(40, 0, &sources).len(), 1);
    }
}
