//! Per-source rate limits keyed by the peer's address (IPv6 by its /64, since
//! one host gets a whole /64). A key is made only for a request that passed
//! the checks that need no body (source, token, basic credentials, address
//! allowlist), so unauthenticated traffic makes none. governor never evicts
//! keys by itself, so [`PeerLimiter::sweep`] runs on a timer, and the count
//! is bounded: at [`MAX_KEYS`] the limiter sweeps at once (at most once a
//! second), and if it is still full, peers it does not know share one
//! overflow quota until keys are freed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::Rate;

/// Most keys one source's limiter holds (about 42 bytes each).
pub const MAX_KEYS: usize = 100_000;
/// The key peers share while the limiter is full (not a peer address).
const OVERFLOW: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Least time between two sweeps forced by a full limiter.
const FORCED_SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct PeerLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    max_keys: usize,
    last_forced_sweep: Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for PeerLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLimiter")
            .field("keys", &self.limiter.len())
            .finish()
    }
}

impl PeerLimiter {
    pub fn new(rate: Rate, burst: Option<u32>) -> Option<Self> {
        Self::with_max_keys(rate, burst, MAX_KEYS)
    }

    fn with_max_keys(rate: Rate, burst: Option<u32>, max_keys: usize) -> Option<Self> {
        let burst = NonZeroU32::new(burst.unwrap_or(rate.count))?;
        let quota = Quota::with_period(rate.replenish_interval())?.allow_burst(burst);
        Some(PeerLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            max_keys,
            last_forced_sweep: Mutex::new(None),
        })
    }

    /// `Err(wait)` when `peer` must wait before its next request.
    pub fn check(&self, peer: IpAddr) -> Result<(), Duration> {
        let mut key = limit_key(peer);
        if self.limiter.len() >= self.max_keys {
            self.forced_sweep();
            if self.limiter.len() >= self.max_keys {
                key = OVERFLOW;
            }
        }
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn forced_sweep(&self) {
        let mut last = self
            .last_forced_sweep
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < FORCED_SWEEP_EVERY) {
            return;
        }
        *last = Some(tokio::time::Instant::now());
        drop(last);
        self.sweep();
    }

    /// Forgets peers whose quota is full again; returns how many remain.
    pub fn sweep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }
}

/// The key of `peer`: its address, IPv6 by its /64.
pub(super) fn limit_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_wait_per_peer() {
        let limiter = PeerLimiter::new(
            Rate {
                count: 1,
                per: Duration::from_secs(60),
            },
            Some(2),
        )
        .unwrap();
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(limiter.check(b).is_ok(), "another peer has its own quota");
    }

    #[test]
    fn ipv6_peers_share_their_64() {
        let limiter = PeerLimiter::new(
            Rate {
                count: 1,
                per: Duration::from_secs(60),
            },
            Some(1),
        )
        .unwrap();
        assert!(limiter.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(limiter.check("2001:db8::2".parse().unwrap()).is_err());
        assert!(limiter.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        assert_eq!(limiter.sweep(), 2);
    }

    #[test]
    fn the_key_count_is_bounded_and_a_full_limiter_shares_one_overflow_quota() {
        let limiter = PeerLimiter::with_max_keys(
            Rate {
                count: 1,
                per: Duration::from_secs(3600),
            },
            Some(1),
            3,
        )
        .unwrap();
        for i in 1..=3u8 {
            assert!(limiter.check(IpAddr::from([192, 0, 2, i])).is_ok());
        }
        // Full, and nothing is old enough to sweep: newcomers share one quota.
        assert!(limiter.check("192.0.2.10".parse().unwrap()).is_ok());
        assert!(limiter.check("192.0.2.11".parse().unwrap()).is_err());
        assert!(limiter.check("192.0.2.12".parse().unwrap()).is_err());
        assert_eq!(limiter.limiter.len(), 4, "three peers and the overflow key");
    }
}
