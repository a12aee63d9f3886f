//! The last hour of traffic, one bucket a minute, for the admin page's
//! chart: notifications received and deliveries made in each minute, and
//! the largest oldest-waiting age seen in it. Pure: every call is given
//! the time (from the injected clock), so a paused clock tests it.
//!
//! Sixty buckets in a ring, each tagged with the minute it counts: a
//! bucket reused for a newer minute starts again from zero, and a minute
//! in which nothing happened reads as zero. Memory only: a restart starts
//! an empty hour.

/// Minutes kept: the chart's hour.
pub const MINUTES: usize = 60;
const MINUTE_MS: i64 = 60_000;

/// What one minute saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minute {
    /// The minute it counts, as Unix ms at its start.
    pub start_ms: i64,
    /// Notifications stored (new, not duplicates).
    pub received: u64,
    /// Deliveries that reached their target.
    pub delivered: u64,
    /// The largest age of the oldest waiting delivery sampled in that
    /// minute (when a scrape or the page looked), in seconds; None when
    /// nobody looked.
    pub oldest_waiting_seconds: Option<f64>,
}

impl Minute {
    fn empty(minute: i64) -> Minute {
        Minute {
            start_ms: minute.saturating_mul(MINUTE_MS),
            received: 0,
            delivered: 0,
            oldest_waiting_seconds: None,
        }
    }
}

/// The ring of the last [`MINUTES`] minutes.
#[derive(Debug, Clone)]
pub struct History {
    /// Indexed by the minute modulo [`MINUTES`]; `minutes[i]` is the Unix
    /// minute bucket `i` counts now (i64::MIN: never used).
    minutes: [i64; MINUTES],
    buckets: [Minute; MINUTES],
}

impl Default for History {
    fn default() -> Self {
        History {
            minutes: [i64::MIN; MINUTES],
            buckets: [Minute::empty(0); MINUTES],
        }
    }
}

fn minute_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(MINUTE_MS)
}

fn slot_of(minute: i64) -> usize {
    // rem_euclid of a positive modulus is in 0..MINUTES.
    usize::try_from(minute.rem_euclid(MINUTES as i64)).unwrap_or(0)
}

impl History {
    /// The bucket of now's minute, emptied first if it held an older one.
    fn bucket(&mut self, now_ms: i64) -> &mut Minute {
        let minute = minute_of(now_ms);
        let slot = slot_of(minute);
        if self.minutes[slot] != minute {
            self.minutes[slot] = minute;
            self.buckets[slot] = Minute::empty(minute);
        }
        &mut self.buckets[slot]
    }

    /// A notification was stored at `now_ms`.
    pub fn received(&mut self, now_ms: i64) {
        self.bucket(now_ms).received += 1;
    }

    /// A delivery reached its target at `now_ms`.
    pub fn delivered(&mut self, now_ms: i64) {
        self.bucket(now_ms).delivered += 1;
    }

    /// The oldest waiting delivery was `age_seconds` old at `now_ms` (0
    /// when nothing waits); the minute keeps the largest it was told.
    pub fn sample_oldest_waiting(&mut self, now_ms: i64, age_seconds: f64) {
        let bucket = self.bucket(now_ms);
        let age = age_seconds.max(0.0);
        bucket.oldest_waiting_seconds =
            Some(bucket.oldest_waiting_seconds.map_or(age, |a| a.max(age)));
    }

    /// The [`MINUTES`] minutes that end with now's, oldest first; a minute
    /// with nothing recorded reads as zero (and not sampled).
    pub fn last_hour(&self, now_ms: i64) -> Vec<Minute> {
        let now = minute_of(now_ms);
        (0..MINUTES as i64)
            .rev()
            .map(|back| {
                let minute = now - back;
                let slot = slot_of(minute);
                if self.minutes[slot] == minute {
                    self.buckets[slot]
                } else {
                    Minute::empty(minute)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_000_000_000; // a minute boundary (2025-11-24T16:00:00Z)

    #[test]
    fn counts_fall_in_their_minute_and_the_hour_ends_with_now() {
        let mut history = History::default();
        history.received(T0);
        history.received(T0 + 59_999);
        history.delivered(T0 + 60_000);
        let hour = history.last_hour(T0 + 60_000);
        assert_eq!(hour.len(), MINUTES);
        let (before, now) = (hour[MINUTES - 2], hour[MINUTES - 1]);
        assert_eq!(
            (before.start_ms, before.received, before.delivered),
            (T0, 2, 0)
        );
        assert_eq!(
            (now.start_ms, now.received, now.delivered),
            (T0 + 60_000, 0, 1)
        );
        assert_eq!(hour[0].start_ms, T0 - 58 * 60_000);
        assert!(hour[..MINUTES - 2]
            .iter()
            .all(|m| m.received == 0 && m.delivered == 0));
    }

    #[test]
    fn a_minute_an_hour_old_is_forgotten_and_its_bucket_starts_again() {
        let mut history = History::default();
        history.received(T0);
        history.sample_oldest_waiting(T0, 30.0);
        // 59 minutes on, it is the first minute of the hour.
        let hour = history.last_hour(T0 + 59 * 60_000);
        assert_eq!((hour[0].start_ms, hour[0].received), (T0, 1));
        // 60 minutes on, it is gone, though its bucket was not reused.
        let hour = history.last_hour(T0 + 60 * 60_000);
        assert!(hour.iter().all(|m| m.received == 0), "{hour:?}");
        // Reused: the new minute does not inherit the old counts.
        history.delivered(T0 + 60 * 60_000);
        let hour = history.last_hour(T0 + 60 * 60_000);
        let now = hour[MINUTES - 1];
        assert_eq!(
            (now.received, now.delivered, now.oldest_waiting_seconds),
            (0, 1, None)
        );
    }

    #[test]
    fn the_oldest_waiting_age_keeps_the_largest_sample_of_its_minute() {
        let mut history = History::default();
        history.sample_oldest_waiting(T0 + 1_000, 12.0);
        history.sample_oldest_waiting(T0 + 2_000, 40.0);
        history.sample_oldest_waiting(T0 + 3_000, 5.0);
        let hour = history.last_hour(T0 + 3_000);
        assert_eq!(hour[MINUTES - 1].oldest_waiting_seconds, Some(40.0));
        assert_eq!(
            hour[MINUTES - 2].oldest_waiting_seconds,
            None,
            "not sampled"
        );
    }

    #[test]
    fn times_before_1970_do_not_panic() {
        let mut history = History::default();
        history.received(-1);
        assert_eq!(history.last_hour(-1)[MINUTES - 1].received, 1);
    }
}
