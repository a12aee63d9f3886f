//! Per-source rate limits keyed by the peer's address (IPv6 by its /64, since
//! one host gets a whole /64). governor never evicts keys by itself, so
//! [`PeerLimiter::sweep`] runs periodically.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::Rate;

pub struct PeerLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
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
        let burst = NonZeroU32::new(burst.unwrap_or(rate.count))?;
        let quota = Quota::with_period(rate.replenish_interval())?.allow_burst(burst);
        Some(PeerLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        })
    }

    /// `Err(wait)` when `peer` must wait before its next request.
    pub fn check(&self, peer: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&limit_key(peer))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets peers whose quota is full again; returns how many remain.
    pub fn sweep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }
}

fn limit_key(peer: IpAddr) -> IpAddr {
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
}
