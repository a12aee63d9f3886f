//! Connection slots: at most `max_connections` connections are served at
//! once, and each knows whether a request is under way on it. Both
//! listeners use them: the providers' ingress and the admin listener.
//!
//! A connection with no request under way is closed after `idle_timeout`.
//! And when every slot is taken, a new connection does not wait for that:
//! the connection idle longest (for at least [`EVICT_AFTER`], TLS handshake
//! included) is closed to make room, so clients that connect and then send
//! nothing cannot lock providers out even for an idle timeout. Connections
//! with a request under way are never closed for room; when all are busy a
//! new connection waits for a slot, up to the handshake timeout.
//! [`serve_while_wanted`] runs a connection under those rules.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A connection idle for less than this is not closed to make room, so a
/// client between its handshake and its first request is safe while
/// older idle connections exist.
pub const EVICT_AFTER: Duration = Duration::from_millis(250);
/// How often a waiting connection looks again for one to close.
const RETRY: Duration = Duration::from_millis(50);

pub struct Slots {
    permits: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

impl Slots {
    pub fn new(max_connections: usize) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(max_connections)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// A slot for a new connection, making room if all are taken; `None`
    /// if none came free within `wait`.
    pub async fn take(self: &Arc<Self>, wait: Duration) -> Option<Slot> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return Some(self.register(permit));
            }
            self.evict_longest_idle();
            let until = (Instant::now() + RETRY).min(deadline);
            if let Ok(Ok(permit)) =
                tokio::time::timeout_at(until, self.permits.clone().acquire_owned()).await
            {
                return Some(self.register(permit));
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Slot {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        self.lock().insert(id, activity.clone());
        Slot {
            slots: self.clone(),
            id,
            activity,
            _permit: permit,
        }
    }

    /// Asks the connection idle longest (past [`EVICT_AFTER`]) to close.
    fn evict_longest_idle(&self) {
        let open = self.lock();
        let longest = open
            .values()
            .filter(|a| a.is_idle() && !a.evicting.load(Ordering::Acquire))
            .filter(|a| a.last_end().elapsed() >= EVICT_AFTER)
            .min_by_key(|a| a.last_end());
        if let Some(activity) = longest {
            activity.evicting.store(true, Ordering::Release);
            activity.evict.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's slot; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

/// Whether a connection has a request under way, and since when it has
/// had none.
pub struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
    evicting: AtomicBool,
    evict: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    /// Marks a request under way until the guard is dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestUnderWay {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestUnderWay(self.clone())
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    fn last_end(&self) -> Instant {
        *self.last_end.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves once no request has been under way for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            tokio::time::sleep_until(self.last_end() + timeout).await;
            if self.is_idle() && self.last_end().elapsed() >= timeout {
                return;
            }
            if !self.is_idle() {
                // Look again once it could have become idle.
                tokio::time::sleep(timeout).await;
            }
        }
    }

    /// Resolves when the connection is asked to close to make room. The
    /// caller closes it only if it is still idle; otherwise it may be
    /// asked again later.
    pub async fn evicted(&self) {
        self.evict.notified().await;
        self.evicting.store(false, Ordering::Release);
    }
}

pub struct RequestUnderWay(Arc<Activity>);

impl Drop for RequestUnderWay {
    fn drop(&mut self) {
        *self
            .0
            .last_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `connection` (a hyper connection) until it ends, until it has had
/// no request under way for `idle_timeout`, or until it is asked to make
/// room while idle: dropping it then closes it. `peer` names it in the log.
pub async fn serve_while_wanted<E: Display>(
    connection: impl Future<Output = Result<(), E>>,
    activity: &Activity,
    idle_timeout: Duration,
    peer: &(dyn Display + Sync),
) {
    tokio::pin!(connection);
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            // Dropping the connection closes it: nothing is under way on it.
            () = activity.idle_for(idle_timeout) => {
                tracing::debug!(%peer, "closing a connection idle for {idle_timeout:?}");
                return;
            }
            () = activity.evicted() => {
                if activity.is_idle() {
                    tracing::debug!(%peer, "closing an idle connection to make room");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_house_closes_the_connection_idle_longest() {
        let slots = Arc::new(Slots::new(3));
        let oldest = slots.take(Duration::ZERO).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy = slots.take(Duration::ZERO).await.unwrap();
        let _request = busy.activity().request_started();
        tokio::time::advance(Duration::from_secs(1)).await;
        let younger = slots.take(Duration::ZERO).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        // The connection tasks: each closes (drops its slot) when asked.
        let closing = |slot: Slot| {
            tokio::spawn(async move {
                slot.activity().evicted().await;
                drop(slot);
            })
        };
        let (oldest_task, younger_task) = (closing(oldest), closing(younger));
        let fourth = slots.take(Duration::from_secs(5)).await;
        assert!(fourth.is_some());
        assert!(oldest_task.is_finished(), "the oldest idle one made room");
        assert!(!younger_task.is_finished());
        // Now the young one is the only idle one: it goes next, the busy
        // one never does.
        let fifth = slots.take(Duration::from_secs(5)).await;
        assert!(fifth.is_some() && younger_task.is_finished());
        let sixth = slots.take(Duration::from_secs(1)).await;
        assert!(sixth.is_none(), "busy connections keep their slots");
        drop(busy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_just_made_is_not_closed_for_room() {
        let slots = Arc::new(Slots::new(1));
        let first = slots.take(Duration::ZERO).await.unwrap();
        let asked = tokio::spawn({
            let activity = first.activity().clone();
            async move { activity.evicted().await }
        });
        let started = Instant::now();
        // Nothing is idle past EVICT_AFTER yet: it waits until one is.
        let (second, ()) = tokio::join!(slots.take(Duration::from_secs(5)), async {
            asked.await.unwrap();
            drop(first);
        });
        assert!(second.is_some());
        assert!(started.elapsed() >= EVICT_AFTER);
    }
}
