//! The memory budget of request bodies. A body is held in memory from its
//! first byte until its answer (an HMAC source's body must be read whole
//! before its signature can be checked), so the bytes held by all requests
//! together are bounded by `server.max_inflight_body`.
//!
//! A request reserves what has arrived, not what its `Content-Length`
//! promises: its first chunk exactly, then in steps that double what it
//! holds (up to [`STEP`]), so it never holds more than twice what it sent
//! and a stream that sent one byte holds one byte.
//! The budget is split in two pools, so large bodies, authenticated or not,
//! never crowd out the small ones notifications are:
//! - the small-body pool (a quarter of the budget) holds the first
//!   [`SMALL_BODY`] bytes of bodies not declared larger than that;
//! - the large-body pool (the rest, at least `max_body`) holds the rest,
//!   and the whole of a body whose `Content-Length` is larger (hyper
//!   enforces a declared length, so a body cannot claim to be small).
//!
//! Who may hold how much of it:
//! - a request whose source could not check it before its body
//!   ([`Standing::Unverified`]: HMAC) may draw on half of each pool (at
//!   least `max_body` of the large one), so sources checked by their URL,
//!   credentials or address always keep the other half;
//! - one connection may hold an eighth of the budget (at least `max_body`),
//!   so one HTTP/2 connection with many streams cannot take all;
//! - one client address (IPv6 by its /64) may hold a sixteenth (at least
//!   `max_body`), however many connections it opens.
//!
//! A step not granted within [`BUDGET_WAIT`] is [`Busy`]: the request is
//! answered 503 with `Retry-After`, and what it held is released.
//!
//! The budget also bounds the long drains of oversized uploads (see
//! `handler::drain`): they hold no memory, but each reads up to
//! [`LongDrain::bytes`] from its client, so at most [`MAX_LONG_DRAINS`]
//! run at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Bodies up to this size never draw from the large-body pool.
pub const SMALL_BODY: u64 = 64 * 1024;
/// Reservations past the first chunk grow by at most this much at once
/// (and at least by what they hold), to keep semaphore traffic low.
const STEP: u64 = 16 * 1024;
/// How long one request may wait, in all, for the budget.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Oversized uploads read and dropped at once (each at most
/// [`LongDrain::bytes`] within `body_timeout`), so a flood of them takes
/// a bounded share of the relay's bandwidth; one refused while all are
/// taken gets the short drain.
pub const MAX_LONG_DRAINS: usize = 16;
/// The least an oversized upload is read and dropped up to, whatever
/// `max_body` is: common clients send their whole body before they read
/// an answer, and this is what lets their 413 reach them.
const MIN_LONG_DRAIN: u64 = 16 << 20;

/// Leave to read and drop up to `bytes` of an oversized upload.
#[derive(Debug)]
pub struct LongDrain {
    pub bytes: u64,
    _slot: OwnedSemaphorePermit,
}

/// The budget was not granted in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many request bodies in memory; retry shortly")]
pub struct Busy;

/// Whether a request was authenticated before its body was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its source checked a token, credentials or its address.
    Authenticated,
    /// Its source can check it only once the body is read (HMAC).
    Unverified,
}

/// Whose body a reservation is for.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub connection: &'a ConnectionShare,
    /// The client's address (behind a trusted proxy, the forwarded one).
    pub address: IpAddr,
    pub standing: Standing,
    /// The body's `Content-Length`.
    pub declared: Option<u64>,
}

/// The process-wide budget.
#[derive(Debug)]
pub struct BodyBudget {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
    /// What unverified requests may draw on, of each pool.
    unverified_small: Arc<Semaphore>,
    unverified_large: Arc<Semaphore>,
    per_connection: usize,
    addresses: Arc<AddressShares>,
    max_body: u64,
    long_drains: Arc<Semaphore>,
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
            unverified_small: Arc::new(Semaphore::new(small / 2)),
            unverified_large: Arc::new(Semaphore::new((large / 2).max(max_body_usize))),
            per_connection: (total / 8).max(max_body_usize),
            addresses: Arc::new(AddressShares {
                per_address: (total / 16).max(max_body_usize),
                held: Mutex::new(HashMap::new()),
            }),
            max_body,
            long_drains: Arc::new(Semaphore::new(MAX_LONG_DRAINS)),
            settings,
        }
    }

    /// Leave for a long drain (16 × `max_body`, at least 16 MiB), if fewer
    /// than [`MAX_LONG_DRAINS`] run now.
    pub fn long_drain(&self) -> Option<LongDrain> {
        let slot = self.long_drains.clone().try_acquire_owned().ok()?;
        Some(LongDrain {
            bytes: self.max_body.saturating_mul(16).max(MIN_LONG_DRAIN),
            _slot: slot,
        })
    }

    /// Whether this budget was made for these settings.
    pub fn is_for(&self, total: u64, max_body: u64) -> bool {
        self.settings == (total, max_body)
    }

    /// A new connection's share; `peer` is its address, whose share its
    /// requests draw on unless they come from another client behind it.
    pub fn connection_share(&self, peer: IpAddr) -> ConnectionShare {
        ConnectionShare {
            bytes: Arc::new(Semaphore::new(self.per_connection)),
            peer: Arc::new(self.addresses.hold(peer)),
        }
    }

    /// Bytes not held by any request now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.small.available_permits() + self.large.available_permits()
    }

    /// Grows `held` to cover `needed` bytes of one body, waiting at most
    /// until `deadline`.
    pub async fn reserve(
        &self,
        held: &mut Held,
        claimant: &Claimant<'_>,
        needed: u64,
        deadline: Instant,
    ) -> Result<(), Busy> {
        if needed <= held.bytes {
            return Ok(());
        }
        let growth = held.bytes.min(STEP);
        let target = needed
            .max(held.bytes + growth)
            .min(self.max_body.max(needed));
        let step = target - held.bytes;
        let small_cap = match claimant.declared {
            Some(len) if len > SMALL_BODY => 0,
            _ => SMALL_BODY,
        };
        let small_step = target.min(small_cap) - held.bytes.min(small_cap);
        let large_step = step - small_step;
        // Always in this order (connection, standing, address, pool), so
        // requests waiting on one another cannot wait in a circle; and the
        // unverified share before the address's, so unverified requests
        // waiting for theirs hold none of an address's share meanwhile.
        let conn = acquire(&claimant.connection.bytes, step, deadline).await?;
        let unverified = match claimant.standing {
            Standing::Authenticated => (None, None),
            Standing::Unverified => (
                acquire_some(&self.unverified_small, small_step, deadline).await?,
                acquire_some(&self.unverified_large, large_step, deadline).await?,
            ),
        };
        // The connection's own address (no lookup), else the client's
        // behind it (looked up once per request).
        let address = if claimant.address == claimant.connection.peer.address {
            &claimant.connection.peer.semaphore
        } else {
            &held
                .address
                .get_or_insert_with(|| self.addresses.hold(claimant.address))
                .semaphore
        };
        let address = acquire(address, step, deadline).await?;
        let small = acquire_some(&self.small, small_step, deadline).await?;
        let large = acquire_some(&self.large, large_step, deadline).await?;
        for (into, permit) in [
            (&mut held.conn, Some(conn)),
            (&mut held.address_bytes, Some(address)),
            (&mut held.unverified_small, unverified.0),
            (&mut held.unverified_large, unverified.1),
            (&mut held.small, small),
            (&mut held.large, large),
        ] {
            if let Some(permit) = permit {
                merge(into, permit);
            }
        }
        held.bytes = target;
        Ok(())
    }
}

/// `bytes` of `pool`, taken at once when free (the usual case: no timer),
/// else waited for until `deadline`.
async fn acquire(
    pool: &Arc<Semaphore>,
    bytes: u64,
    deadline: Instant,
) -> Result<OwnedSemaphorePermit, Busy> {
    let n = u32::try_from(bytes).map_err(|_| Busy)?;
    if let Ok(permit) = pool.clone().try_acquire_many_owned(n) {
        return Ok(permit);
    }
    match tokio::time::timeout_at(deadline, pool.clone().acquire_many_owned(n)).await {
        Ok(Ok(permit)) => Ok(permit),
        // Closed (never happens) or not in time.
        Ok(Err(_)) | Err(_) => Err(Busy),
    }
}

/// As [`acquire`]; nothing for nothing.
async fn acquire_some(
    pool: &Arc<Semaphore>,
    bytes: u64,
    deadline: Instant,
) -> Result<Option<OwnedSemaphorePermit>, Busy> {
    match bytes {
        0 => Ok(None),
        n => acquire(pool, n, deadline).await.map(Some),
    }
}

fn merge(into: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
    match into {
        Some(held) => held.merge(permit),
        None => *into = Some(permit),
    }
}

/// One connection's share of the budget, and its peer's address share
/// (held as long as the connection).
#[derive(Debug, Clone)]
pub struct ConnectionShare {
    bytes: Arc<Semaphore>,
    peer: Arc<AddressHold>,
}

/// The shares of the client addresses that hold budget now: an address
/// has an entry only while one of its requests holds some, so there are
/// never more than requests under way.
#[derive(Debug)]
struct AddressShares {
    per_address: usize,
    held: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl AddressShares {
    /// Joins (or opens) the share of `address`: once per connection, and
    /// once per request from another client than the connection's peer.
    fn hold(self: &Arc<Self>, address: IpAddr) -> AddressHold {
        let key = super::limits::limit_key(address);
        let semaphore = self
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_address)))
            .clone();
        AddressHold {
            shares: self.clone(),
            address,
            key,
            semaphore,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Arc<Semaphore>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.lock().len()
    }
}

/// A connection's or a request's membership of its address's share; the
/// last to leave removes the entry. (Holds are made only under the lock,
/// and a permit only by a live hold, so a count of two there, the map's
/// and this one, means no one else holds it.)
#[derive(Debug)]
struct AddressHold {
    shares: Arc<AddressShares>,
    address: IpAddr,
    key: IpAddr,
    semaphore: Arc<Semaphore>,
}

impl Drop for AddressHold {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        if Arc::strong_count(&self.semaphore) == 2 {
            held.remove(&self.key);
        }
    }
}

/// What one request holds; released when dropped.
#[derive(Debug, Default)]
pub struct Held {
    bytes: u64,
    conn: Option<OwnedSemaphorePermit>,
    // (Declared before `address`: its permits go back before the entry
    // is looked at.)
    address_bytes: Option<OwnedSemaphorePermit>,
    unverified_small: Option<OwnedSemaphorePermit>,
    unverified_large: Option<OwnedSemaphorePermit>,
    small: Option<OwnedSemaphorePermit>,
    large: Option<OwnedSemaphorePermit>,
    address: Option<AddressHold>,
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

    /// The connections' peer in these tests: a proxy, its clients others.
    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A client address of the test net, `n` apart.
    fn address(n: u16) -> IpAddr {
        IpAddr::from([198, 51, (n >> 8) as u8, n as u8])
    }

    fn claimant(
        connection: &ConnectionShare,
        address: IpAddr,
        standing: Standing,
        declared: Option<u64>,
    ) -> Claimant<'_> {
        Claimant {
            connection,
            address,
            standing,
            declared,
        }
    }

    /// Reserves `bytes` for one new request on a connection of its own;
    /// what it holds if granted.
    async fn one_body(
        budget: &BodyBudget,
        from: IpAddr,
        standing: Standing,
        bytes: u64,
    ) -> Result<Held, Busy> {
        let share = budget.connection_share(LOOPBACK);
        let mut held = Held::default();
        let who = claimant(&share, from, standing, None);
        budget.reserve(&mut held, &who, bytes, soon()).await?;
        Ok(held)
    }

    #[test]
    fn long_drains_are_bounded_in_bytes_and_in_number() {
        let budget = BodyBudget::new(64 << 20, 1 << 20);
        let drains: Vec<LongDrain> = std::iter::from_fn(|| budget.long_drain())
            .take(MAX_LONG_DRAINS + 1)
            .collect();
        assert_eq!(drains.len(), MAX_LONG_DRAINS, "no more at once");
        assert!(drains.iter().all(|d| d.bytes == 16 << 20));
        drop(drains);
        assert!(budget.long_drain().is_some(), "slots come back");
        let large = BodyBudget::new(64 << 20, 4 << 20);
        assert_eq!(large.long_drain().map(|d| d.bytes), Some(64 << 20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_holds_what_arrived_and_gives_it_back() {
        let budget = BodyBudget::new(1 << 20, 256 * 1024);
        assert_eq!(budget.available(), 1 << 20);
        let share = budget.connection_share(LOOPBACK);
        let who = claimant(&share, address(1), Standing::Authenticated, None);
        let mut held = Held::default();
        budget.reserve(&mut held, &who, 1, soon()).await.unwrap();
        assert_eq!(held.bytes(), 1, "one byte arrived, one byte held");
        budget.reserve(&mut held, &who, 100, soon()).await.unwrap();
        assert_eq!(held.bytes(), 100);
        // Past the first chunk it grows by what it holds: never more than
        // twice what arrived.
        budget.reserve(&mut held, &who, 101, soon()).await.unwrap();
        assert_eq!(held.bytes(), 200);
        budget
            .reserve(&mut held, &who, 100_000, soon())
            .await
            .unwrap();
        assert_eq!(held.bytes(), 100_000);
        budget
            .reserve(&mut held, &who, 100_001, soon())
            .await
            .unwrap();
        assert_eq!(held.bytes(), 100_000 + STEP);
        assert_eq!(budget.available(), (1 << 20) - 100_000 - STEP as usize);
        drop(held);
        assert_eq!(budget.available(), 1 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_that_sent_one_byte_hold_one_byte_each() {
        // 2 MiB: a small-body pool of 512 KiB, which 16 KiB steps would
        // have filled with 32 such streams.
        let budget = BodyBudget::new(2 << 20, 1 << 20);
        let mut streams = Vec::new();
        for n in 0..34 * 64 {
            let from = address(n % 300);
            streams.push(
                one_body(&budget, from, Standing::Unverified, 1)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(budget.available(), (2 << 20) - 34 * 64);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_budget_a_body_is_busy_after_a_short_wait() {
        // 256 KiB: 64 KiB for small bodies, 192 KiB for large ones.
        let budget = BodyBudget::new(256 * 1024, 128 * 1024);
        let (a, b) = (
            budget.connection_share(LOOPBACK),
            budget.connection_share(LOOPBACK),
        );
        let mut small = Held::default();
        let first = claimant(&a, address(1), Standing::Authenticated, Some(64 * 1024));
        budget
            .reserve(&mut small, &first, 64 * 1024, soon())
            .await
            .unwrap();
        let mut another = Held::default();
        let second = claimant(&b, address(2), Standing::Authenticated, None);
        let started = Instant::now();
        let refused = budget.reserve(&mut another, &second, 10, soon()).await;
        assert_eq!(refused, Err(Busy));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(small);
        assert!(budget
            .reserve(&mut another, &second, 10, soon())
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn large_bodies_leave_room_for_small_ones() {
        // 1 MiB budget: 256 KiB for small bodies, 768 KiB for large ones.
        let budget = BodyBudget::new(1 << 20, 512 * 1024);
        let mut large = Vec::new();
        for n in 0..4 {
            let share = budget.connection_share(LOOPBACK);
            let len = 300 * 1024;
            let who = claimant(&share, address(n), Standing::Authenticated, Some(len));
            let mut held = Held::default();
            if budget.reserve(&mut held, &who, len, soon()).await.is_ok() {
                large.push(held);
            }
        }
        assert_eq!(large.len(), 2, "a third 300 KiB body passes 768 KiB");
        // Every small body still fits, up to the small pool.
        let mut small = Vec::new();
        for n in 10..26 {
            let len = 16 * 1024;
            let share = budget.connection_share(LOOPBACK);
            let who = claimant(&share, address(n), Standing::Authenticated, Some(len));
            let mut held = Held::default();
            budget.reserve(&mut held, &who, len, soon()).await.unwrap();
            small.push(held);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_connection_holds_at_most_its_share() {
        // 8 MiB budget, 256 KiB bodies: a connection's share is 1 MiB. Its
        // streams come from several clients (as behind a trusted proxy),
        // so no address's share is what stops them.
        let budget = BodyBudget::new(8 << 20, 256 * 1024);
        let share = budget.connection_share(LOOPBACK);
        let mut streams = Vec::new();
        for n in 0..6 {
            let who = claimant(&share, address(n), Standing::Authenticated, None);
            let mut held = Held::default();
            if budget
                .reserve(&mut held, &who, 256 * 1024, soon())
                .await
                .is_ok()
            {
                streams.push(held);
            }
        }
        assert_eq!(streams.len(), 4);
        let other = budget.connection_share(LOOPBACK);
        let who = claimant(&other, address(9), Standing::Authenticated, None);
        let mut held = Held::default();
        assert!(budget
            .reserve(&mut held, &who, 256 * 1024, soon())
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_holds_at_most_its_share_over_all_its_connections() {
        // 8 MiB budget, 256 KiB bodies: an address's share is 512 KiB.
        let budget = BodyBudget::new(8 << 20, 256 * 1024);
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            if let Ok(body) = one_body(&budget, v4, Standing::Authenticated, 256 * 1024).await {
                held.push(body);
            }
        }
        assert_eq!(held.len(), 2, "each on its own connection");
        // IPv6: one /64 is one client.
        let (a, b) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        held.push(
            one_body(&budget, a, Standing::Authenticated, 512 * 1024)
                .await
                .unwrap(),
        );
        assert_eq!(
            one_body(&budget, b, Standing::Authenticated, 1).await.err(),
            Some(Busy)
        );
        let other_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        held.push(
            one_body(&budget, other_64, Standing::Authenticated, 1)
                .await
                .unwrap(),
        );
        assert_eq!(budget.addresses.addresses(), 3);
        // An address's entry lives only while it holds budget.
        drop(held);
        assert_eq!(budget.addresses.addresses(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_from_one_peer_share_its_address_share() {
        // 8 MiB budget, 256 KiB bodies: an address's share is 512 KiB.
        let budget = BodyBudget::new(8 << 20, 256 * 1024);
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        let connections: Vec<ConnectionShare> =
            (0..3).map(|_| budget.connection_share(peer)).collect();
        let mut held = Vec::new();
        for connection in &connections {
            let who = claimant(connection, peer, Standing::Authenticated, None);
            let mut body = Held::default();
            if budget
                .reserve(&mut body, &who, 256 * 1024, soon())
                .await
                .is_ok()
            {
                held.push(body);
            }
        }
        assert_eq!(held.len(), 2);
        // The peer's entry lives as long as its connections.
        drop(held);
        assert_eq!(budget.addresses.addresses(), 1);
        drop(connections);
        assert_eq!(budget.addresses.addresses(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unverified_bodies_leave_half_of_each_pool_to_authenticated_ones() {
        // 2 MiB, 1 MiB bodies: 512 KiB for small bodies, of which 256 KiB
        // for unverified ones; 1.5 MiB for large bodies, 1 MiB unverified.
        let budget = BodyBudget::new(2 << 20, 1 << 20);
        let step = 16 * 1024;
        let mut held = Vec::new();
        for n in 0..16 {
            held.push(
                one_body(&budget, address(n), Standing::Unverified, step)
                    .await
                    .unwrap(),
            );
        }
        let refused = one_body(&budget, address(100), Standing::Unverified, step).await;
        assert_eq!(refused.err(), Some(Busy), "half the small pool is theirs");
        for n in 200..216 {
            held.push(
                one_body(&budget, address(n), Standing::Authenticated, step)
                    .await
                    .unwrap(),
            );
        }
        let full = one_body(&budget, address(300), Standing::Authenticated, step).await;
        assert_eq!(full.err(), Some(Busy), "and the small pool is full");
        drop(held);
        // One unverified body of max_body fits (its first 64 KiB small),
        // a second does not; an authenticated one still does.
        let max = 1 << 20;
        let large = one_body(&budget, address(1), Standing::Unverified, max)
            .await
            .unwrap();
        let second = one_body(&budget, address(2), Standing::Unverified, 256 * 1024).await;
        assert_eq!(second.err(), Some(Busy));
        let authenticated =
            one_body(&budget, address(3), Standing::Authenticated, 400 * 1024).await;
        assert!(authenticated.is_ok());
        drop((large, authenticated));
        assert_eq!(budget.available(), 2 << 20);
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
        let len = 1 << 20;
        for standing in [Standing::Authenticated, Standing::Unverified] {
            let share = budget.connection_share(LOOPBACK);
            let who = claimant(&share, address(1), standing, Some(len));
            let mut held = Held::default();
            assert!(budget.reserve(&mut held, &who, len, soon()).await.is_ok());
        }
    }
}
