//! Many reports made into few events, pure. The spool hands every report
//! over as it records it; here they are counted, not queued: per
//! subscription its dead deliveries (how many, the first one, the first
//! [`FIRST_IDS`] ids) and its failing and recovered turns, per source its
//! quarantined bodies. What was counted is taken at most once per
//! [`WINDOW_MS`] (the first after a quiet spell at once), so a burst of
//! thousands of dead deliveries makes one `relay.delivery.dead` per
//! subscription per second whose counts add up to all of them.
//!
//! Memory is bounded by the keys (subscriptions and sources, both named in
//! the config), at most [`MAX_KEYS`] each; a report past that is counted
//! in [`Burst::dropped`] (the `event_reports_dropped_total` metric).

use std::collections::HashMap;

use super::event::{RelayEvent, FIRST_IDS};
use super::streaks::{Streaks, Turn};
use crate::config::RELAY_SOURCE;
use crate::delivery::State;
use crate::spool::Observed;

/// The shortest time between two takes that found something.
pub const WINDOW_MS: i64 = 1000;
/// Subscriptions, and sources, counted at once at most.
pub const MAX_KEYS: usize = 4096;
/// Turns kept per subscription per window; more fold into `flaps`.
const MAX_TURNS: usize = 2;

/// An event being counted: the order of its first report, and when.
struct Counting {
    seq: u64,
    at_ms: i64,
    event: RelayEvent,
}

/// What one subscription's reports made since the last take.
#[derive(Default)]
struct Window {
    turns: Vec<Counting>,
    dead: Option<Counting>,
}

/// The counts since the last take, and the failing streaks (kept across
/// takes).
pub struct Burst {
    failing_after: u32,
    streaks: Streaks,
    seq: u64,
    subscriptions: HashMap<String, Window>,
    quarantined: HashMap<String, Counting>,
    /// When the last take that found something was made.
    taken_ms: Option<i64>,
    dropped: u64,
}

impl Default for Burst {
    fn default() -> Self {
        Burst::new(1)
    }
}

impl Burst {
    pub fn new(failing_after: u32) -> Burst {
        Burst {
            failing_after: failing_after.max(1),
            streaks: Streaks::default(),
            seq: 0,
            subscriptions: HashMap::new(),
            quarantined: HashMap::new(),
            taken_ms: None,
            dropped: 0,
        }
    }

    /// Failed attempts in a row before `relay.subscription.failing`.
    pub fn set_failing_after(&mut self, failing_after: u32) {
        self.failing_after = failing_after.max(1);
    }

    /// Reports that could not be counted (more keys than [`MAX_KEYS`]).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Counts one report of the spool, made at `now_ms`.
    pub fn take(&mut self, report: Observed, now_ms: i64) {
        match report {
            // No events about the delivery of events.
            Observed::Attempted { notification, .. } if notification.source == RELAY_SOURCE => {}
            Observed::Attempted {
                notification,
                subscription,
                attempt,
                state,
            } => {
                let success = attempt.outcome.is_success();
                let turn = self
                    .streaks
                    .record(&subscription, success, self.failing_after);
                let dead = matches!(state, State::Dead { .. });
                if turn.is_none() && !dead {
                    return;
                }
                let (turn_seq, dead_seq) = (self.next_seq(), self.next_seq());
                let Some(window) = bounded_entry(&mut self.subscriptions, &subscription) else {
                    self.dropped += u64::from(turn.is_some()) + u64::from(dead);
                    return;
                };
                if let Some(turn) = turn {
                    let event = match turn {
                        Turn::Failing { failures } => RelayEvent::SubscriptionFailing {
                            subscription: subscription.clone(),
                            failures,
                            notification: notification.clone(),
                            last: attempt.clone(),
                            flaps: 0,
                        },
                        Turn::Recovered { failures } => RelayEvent::SubscriptionRecovered {
                            subscription: subscription.clone(),
                            failures,
                            notification: notification.clone(),
                            flaps: 0,
                        },
                    };
                    fold_turn(&mut window.turns, turn_seq, now_ms, event);
                }
                if !dead {
                    return;
                }
                match &mut window.dead {
                    Some(Counting {
                        event:
                            RelayEvent::DeliveryDead {
                                count,
                                ids,
                                last_ms,
                                ..
                            },
                        ..
                    }) => {
                        *count += 1;
                        if ids.len() < FIRST_IDS {
                            ids.push(notification.id);
                        }
                        *last_ms = now_ms;
                    }
                    counting => {
                        *counting = Some(Counting {
                            seq: dead_seq,
                            at_ms: now_ms,
                            event: RelayEvent::DeliveryDead {
                                subscription,
                                ids: vec![notification.id],
                                notification,
                                last: attempt,
                                count: 1,
                                last_ms: now_ms,
                            },
                        })
                    }
                }
            }
            Observed::Quarantined {
                id,
                source,
                reason_kind,
                reason,
                bytes,
            } => {
                let seq = self.next_seq();
                if let Some(Counting {
                    event: RelayEvent::QuarantineAdded { count, ids, .. },
                    ..
                }) = self.quarantined.get_mut(&source)
                {
                    *count += 1;
                    if ids.len() < FIRST_IDS {
                        ids.push(id);
                    }
                    return;
                }
                if self.quarantined.len() >= MAX_KEYS {
                    self.dropped += 1;
                    return;
                }
                let event = RelayEvent::QuarantineAdded {
                    id,
                    source: source.clone(),
                    reason_kind,
                    reason,
                    bytes,
                    count: 1,
                    ids: vec![id],
                };
                self.quarantined.insert(
                    source,
                    Counting {
                        seq,
                        at_ms: now_ms,
                        event,
                    },
                );
            }
        }
    }

    /// What was counted, as events in the order of their first report with
    /// the time of it, unless the last take that found something was less
    /// than [`WINDOW_MS`] ago (then nothing yet).
    pub fn take_due(&mut self, now_ms: i64) -> Vec<(RelayEvent, i64)> {
        if self
            .taken_ms
            .is_some_and(|taken| now_ms.saturating_sub(taken) < WINDOW_MS)
        {
            return Vec::new();
        }
        self.take_all(now_ms)
    }

    /// What was counted, whatever the window (at the stop).
    pub fn take_all(&mut self, now_ms: i64) -> Vec<(RelayEvent, i64)> {
        let mut counted: Vec<Counting> = self
            .subscriptions
            .drain()
            .flat_map(|(_, window)| window.turns.into_iter().chain(window.dead))
            .chain(self.quarantined.drain().map(|(_, counting)| counting))
            .collect();
        if counted.is_empty() {
            return Vec::new();
        }
        self.taken_ms = Some(now_ms);
        counted.sort_by_key(|c| c.seq);
        counted.into_iter().map(|c| (c.event, c.at_ms)).collect()
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// `map[key]`, made if there is room for one more key.
fn bounded_entry<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> Option<&'a mut V> {
    if !map.contains_key(key) {
        if map.len() >= MAX_KEYS {
            return None;
        }
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key)
}

/// Keeps a turn; past [`MAX_TURNS`], the last kept turn and this one (they
/// alternate, so they undo each other) fold into the turn before as a flap:
/// the state the window ends in is still the one told last.
fn fold_turn(turns: &mut Vec<Counting>, seq: u64, at_ms: i64, event: RelayEvent) {
    if turns.len() < MAX_TURNS {
        turns.push(Counting { seq, at_ms, event });
        return;
    }
    turns.pop();
    if let Some(Counting {
        event:
            RelayEvent::SubscriptionFailing { flaps, .. }
            | RelayEvent::SubscriptionRecovered { flaps, .. },
        ..
    }) = turns.last_mut()
    {
        *flaps += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Attempt, Outcome};
    use crate::spool::{NotificationId, ObservedNotification};

    const AT: i64 = 1_764_000_000_000;

    fn attempted(n: i64, subscription: &str, success: bool, dead: bool) -> Observed {
        Observed::Attempted {
            notification: ObservedNotification {
                id: NotificationId::new(AT + n),
                source: "tusfacturas".into(),
                event_type: "facturacion.emitido".into(),
                subject: Some(format!("0001-{n}")),
                received_ms: AT + n,
            },
            subscription: subscription.into(),
            attempt: Attempt {
                number: 2,
                started_ms: AT + n,
                duration_ms: 1,
                outcome: match success {
                    true => Outcome::Status {
                        code: 200,
                        retry_after_ms: None,
                    },
                    false => Outcome::Connect,
                },
                answer: None,
            },
            state: match (success, dead) {
                (true, _) => State::Delivered { at_ms: AT + n },
                (false, true) => State::Dead { at_ms: AT + n },
                (false, false) => State::Waiting { until_ms: AT + n },
            },
        }
    }

    fn dead_counts(events: &[(RelayEvent, i64)], of: &str) -> (u64, usize) {
        events
            .iter()
            .filter_map(|(event, _)| match event {
                RelayEvent::DeliveryDead {
                    subscription,
                    count,
                    ids,
                    ..
                } if subscription == of => Some((*count, ids.len())),
                _ => None,
            })
            .fold((0, 0), |(c, n), (count, ids)| (c + count, n + ids))
    }

    #[test]
    fn thousands_of_dead_deliveries_make_one_event_per_subscription_with_their_count() {
        let mut burst = Burst::new(1_000_000);
        for n in 0..6000 {
            let subscription = if n % 3 == 0 { "crm" } else { "billing" };
            burst.take(attempted(n, subscription, false, true), AT + n);
        }
        let events = burst.take_due(AT + 6000);
        assert_eq!(events.len(), 2, "one per subscription");
        assert_eq!(dead_counts(&events, "billing"), (4000, FIRST_IDS));
        assert_eq!(dead_counts(&events, "crm"), (2000, FIRST_IDS));
        // crm's came first (0, 3, ... 5997).
        let RelayEvent::DeliveryDead {
            subscription,
            notification,
            ids,
            last_ms,
            ..
        } = &events[0].0
        else {
            panic!("{events:?}")
        };
        assert_eq!(subscription, "crm");
        assert_eq!(ids[0], notification.id, "the first is the one shown");
        assert_eq!(events[0].1, AT, "its time is the first one's");
        assert_eq!(*last_ms, AT + 5997);
        assert_eq!(burst.dropped(), 0);
        assert!(burst.take_all(AT + 9000).is_empty(), "taken once");
    }

    #[test]
    fn a_take_waits_a_window_after_one_that_found_something() {
        let mut burst = Burst::new(5);
        assert!(burst.take_due(AT).is_empty());
        burst.take(attempted(1, "billing", false, true), AT + 10);
        assert_eq!(burst.take_due(AT + 10).len(), 1, "at once after quiet");
        burst.take(attempted(2, "billing", false, true), AT + 20);
        burst.take(attempted(3, "billing", false, true), AT + 30);
        assert!(burst.take_due(AT + 10 + WINDOW_MS - 1).is_empty());
        let events = burst.take_due(AT + 10 + WINDOW_MS);
        assert_eq!(dead_counts(&events, "billing"), (2, 2));
        // Nothing counted meanwhile: the next one goes at once again.
        burst.take(attempted(4, "billing", false, true), AT + 5000);
        assert_eq!(burst.take_due(AT + 5000).len(), 1);
    }

    #[test]
    fn failing_comes_before_the_dead_it_preceded_and_recovered_after() {
        let mut burst = Burst::new(2);
        burst.take(attempted(1, "billing", false, false), AT);
        burst.take(attempted(1, "billing", false, false), AT + 1);
        burst.take(attempted(1, "billing", false, true), AT + 2);
        burst.take(attempted(2, "billing", true, false), AT + 3);
        // Relay events' own deliveries count for nothing.
        let mut own = attempted(3, "alerts", false, true);
        if let Observed::Attempted { notification, .. } = &mut own {
            notification.source = RELAY_SOURCE.into();
        }
        burst.take(own, AT + 4);
        let types: Vec<&str> = burst
            .take_all(AT + 5)
            .iter()
            .map(|(event, _)| event.event_type())
            .collect();
        assert_eq!(
            types,
            [
                "relay.subscription.failing",
                "relay.delivery.dead",
                "relay.subscription.recovered"
            ]
        );
    }

    #[test]
    fn a_flapping_target_folds_its_turns_and_ends_in_the_state_it_is_in() {
        let mut burst = Burst::new(1);
        // failing, recovered, failing, recovered, failing.
        for n in 0..5 {
            burst.take(attempted(n, "billing", n % 2 == 1, false), AT + n);
        }
        let events = burst.take_all(AT + 10);
        let told: Vec<(&str, u32)> = events
            .iter()
            .map(|(event, _)| match event {
                RelayEvent::SubscriptionFailing { flaps, .. }
                | RelayEvent::SubscriptionRecovered { flaps, .. } => (event.event_type(), *flaps),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(told, [("relay.subscription.failing", 2)]);
    }

    #[test]
    fn quarantined_bodies_are_counted_per_source_and_keys_are_bounded() {
        let mut burst = Burst::new(1_000_000);
        for n in 0..50 {
            burst.take(
                Observed::Quarantined {
                    id: NotificationId::new(AT + n),
                    source: "tusfacturas".into(),
                    reason_kind: "invalid_json".into(),
                    reason: "not JSON".into(),
                    bytes: 3,
                },
                AT + n,
            );
        }
        for n in 0..(MAX_KEYS as i64 + 2) {
            burst.take(attempted(n, &format!("s{n}"), false, true), AT);
        }
        assert_eq!(burst.dropped(), 2, "past the bound: counted");
        let events = burst.take_all(AT + 100);
        assert_eq!(events.len(), MAX_KEYS + 1);
        let RelayEvent::QuarantineAdded { count, ids, .. } = &events[0].0 else {
            panic!("{:?}", events[0]);
        };
        assert_eq!((*count, ids.len()), (50, FIRST_IDS));
    }
}
