//! The memory budget of request bodies. A body is held in memory from its
//! first byte until its answer (an HMAC source's body must be read whole
//! before its signature can be checked), so the bytes held by all requests
//! together are bounded by `server.max_inflight_body`.
//!
//! A request reserves its bytes as they arrive (in steps), not what its
//! `Content-Length` promises, so a slow sender holds only what it sent.
//! The budget is split in two pools, so large bodies, authenticated or not,
//! never crowd out the small ones notifications are:
//! - the small-body pool (a quarter of the budget) holds the first
//!   [`SMALL_BODY`] bytes of bodies not declared larger than that;
//! - the large-body pool (the rest, at least `max_body`) holds the rest,
//!   and the whole of a body whose `Content-Length` is larger (hyper
//!   enforces a declared length, so a body cannot claim to be small).
//!
//! On top of that, a connection may hold an eighth of the budget (at least
//! `max_body`), so one HTTP/2 connection with many streams cannot take all.
//!
//! A step not granted within [`BUDGET_WAIT`] is [`Busy`]: the request is
//! answered 503 with `Retry-After`, and what it held is released.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bodies up to this size never draw from the large-body pool.
pub const SMALL_BODY: u64 = 64 * 1024;
/// Reservations grow by at least this much, to keep semaphore traffic low.
const STEP: u64 = 16 * 1024;
/// How long one request may wait, in all, for the budget.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// The budget was not granted in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many request bodies in memory; retry shortly")]
pub struct Busy;

/// The process-wide budget.
#[derive(Debug)]
pub struct BodyBudget {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
    per_connection: usize,
    max_body: u64,
    /// `max_inflight_body` and `max_body` it was made for.
    settings: (u64, u64),
}

impl BodyBudget {
    /// `total` is `max_inflight_body` (validated: `max_body..4GiB`).
    pub fn new(total: u64, max_body: u64) -> BodyBudget {
        let settings = (total, max_body);
        let total = usize::try_from(total).unwrap_or(usize::MAX >> 4);
        let max_body_usize = usize::try_from(max_body).unwrap_or(total);
        let small = total / 4;
        let large = (total - small).max(max_body_usize);
        BodyBudget {
            small: Arc::new(Semaphore::new(small)),
            large: Arc::new(Semaphore::new(large)),
            per_connection: (total / 8).max(max_body_usize),
            max_body,
            settings,
        }
    }

    /// Whether this budget was made for these settings.
    pub fn is_for(&self, total: u64, max_body: u64) -> bool {
        self.settings == (total, max_body)
    }

    /// A new connection's share.
    pub fn connection_share(&self) -> ConnectionShare {
        ConnectionShare(Arc::new(Semaphore::new(self.per_connection)))
    }

    /// Bytes not held by any request now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.small.available_permits() + self.large.available_permits()
    }

    /// Grows `held` to cover `needed` bytes of one body, waiting at most
    /// until `deadline`. `declared` is the body's `Content-Length`.
    pub async fn reserve(
        &self,
        held: &mut Held,
        share: &ConnectionShare,
        needed: u64,
        declared: Option<u64>,
        deadline: Instant,
    ) -> Result<(), Busy> {
        if needed <= held.bytes {
            return Ok(());
        }
        let target = needed.max(held.bytes + STEP).min(self.max_body.max(needed));
        let step = target - held.bytes;
        let small_cap = match declared {
            Some(len) if len > SMALL_BODY => 0,
            _ => SMALL_BODY,
        };
        let small_step = target.min(small_cap) - held.bytes.min(small_cap);
        let conn = acquire(&share.0, step, deadline).await?;
        let small = match small_step {
            0 => None,
            n => Some(acquire(&self.small, n, deadline).await?),
        };
        let large = match step - small_step {
            0 => None,
            n => Some(acquire(&self.large, n, deadline).await?),
        };
        merge(&mut held.conn, conn);
        if let Some(small) = small {
            merge(&mut held.small, small);
        }
        if let Some(large) = large {
            merge(&mut held.large, large);
        }
        held.bytes = target;
        Ok(())
    }
}

async fn acquire(
    pool: &Arc<Semaphore>,
    bytes: u64,
    deadline: Instant,
) -> Result<OwnedSemaphorePermit, Busy> {
    let n = u32::try_from(bytes).map_err(|_| Busy)?;
    match tokio::time::timeout_at(deadline, pool.clone().acquire_many_owned(n)).await {
        Ok(Ok(permit)) => Ok(permit),
        // Closed (never happens) or not in time.
        Ok(Err(_)) | Err(_) => Err(Busy),
    }
}

fn merge(into: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
    match into {
        Some(held) => held.merge(permit),
        None => *into = Some(permit),
    }
}

/// One connection's share of the budget.
#[derive(Debug, Clone)]
pub struct ConnectionShare(Arc<Semaphore>);

/// What one request holds; released when dropped.
#[derive(Debug, Default)]
pub struct Held {
    bytes: u64,
    conn: Option<OwnedSemaphorePermit>,
    small: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
}

impl Held {
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_holds_what_arrived_and_gives_it_back() {
        let budget = BodyBudget::new(1 << 20, 256 * 1024);
        assert_eq!(budget.available(), 1 << 20);
        let share = budget.connection_share();
        let mut held = Held::default();
        budget
            .reserve(&mut held, &share, 100, None, soon())
            .await
            .unwrap();
        assert_eq!(held.bytes(), STEP);
        budget
            .reserve(&mut held, &share, 100_000, None, soon())
            .await
            .unwrap();
        assert_eq!(held.bytes(), 100_000);
        assert_eq!(budget.available(), (1 << 20) - 100_000);
        drop(held);
        assert_eq!(budget.available(), 1 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_budget_a_body_is_busy_after_a_short_wait() {
        // 256 KiB: 64 KiB for small bodies, 192 KiB for large ones.
        let budget = BodyBudget::new(256 * 1024, 128 * 1024);
        let (a, b) = (budget.connection_share(), budget.connection_share());
        let mut small = Held::default();
        budget
            .reserve(&mut small, &a, 64 * 1024, Some(64 * 1024), soon())
            .await
            .unwrap();
        let mut another = Held::default();
        let started = Instant::now();
        let refused = budget.reserve(&mut another, &b, 10, None, soon()).await;
        assert_eq!(refused, Err(Busy));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(small);
        assert!(budget
            .reserve(&mut another, &b, 10, None, soon())
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn large_bodies_leave_room_for_small_ones() {
        // 1 MiB budget: 256 KiB for small bodies, 768 KiB for large ones.
        let budget = BodyBudget::new(1 << 20, 512 * 1024);
        let mut large = Vec::new();
        for _ in 0..4 {
            let share = budget.connection_share();
            let mut held = Held::default();
            let len = 300 * 1024;
            if budget
                .reserve(&mut held, &share, len, Some(len), soon())
                .await
                .is_ok()
            {
                large.push(held);
            }
        }
        assert_eq!(large.len(), 2, "a third 300 KiB body passes 768 KiB");
        // Every small body still fits, up to the small pool.
        let mut small = Vec::new();
        for _ in 0..16 {
            let share = budget.connection_share();
            let mut held = Held::default();
            budget
                .reserve(&mut held, &share, 16 * 1024, Some(16 * 1024), soon())
                .await
                .unwrap();
            small.push(held);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_connection_holds_at_most_its_share() {
        // 8 MiB budget, 256 KiB bodies: a connection's share is 1 MiB.
        let budget = BodyBudget::new(8 << 20, 256 * 1024);
        let share = budget.connection_share();
        let mut streams = Vec::new();
        for _ in 0..6 {
            let mut held = Held::default();
            if budget
                .reserve(&mut held, &share, 256 * 1024, None, soon())
                .await
                .is_ok()
            {
                streams.push(held);
            }
        }
        assert_eq!(streams.len(), 4);
        let other = budget.connection_share();
        let mut held = Held::default();
        assert!(budget
            .reserve(&mut held, &other, 256 * 1024, None, soon())
            .await
            .is_ok());
    }

    #[test]
    fn the_budget_must_hold_one_whole_body() {
        let parse = |server: &str| {
            crate::config::Config::parse(&format!(
                "[server]\nself_signed = true\n{server}\n[sources.s]\nprovider = \"generic\"\ntoken = \"0123456789abcdef\"\n"
            ))
        };
        let problems = parse("max_body = \"1MiB\"\nmax_inflight_body = \"512KiB\"").unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.key.ends_with("max_inflight_body")),
            "{problems:?}"
        );
        let config = parse("").unwrap();
        assert_eq!(config.server.max_inflight_body.0, 64 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_of_max_body_still_takes_one_whole_body() {
        let budget = BodyBudget::new(1 << 20, 1 << 20);
        let share = budget.connection_share();
        let mut held = Held::default();
        let len = 1 << 20;
        assert!(budget
            .reserve(&mut held, &share, len, Some(len), soon())
            .await
            .is_ok());
    }
}
