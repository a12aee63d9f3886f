//! Where the backend's network calls run. In the relay, on the caller's
//! runtime, as plain async. Under a clock that follows tokio's (the
//! contract tests, often on a paused runtime), the NATS client and every
//! call to it live on a runtime of their own that keeps real time, reached
//! through `spawn_blocking`: tokio's auto-advance would otherwise fire the
//! client's timeouts at once (`docs/design/jetstream.md`, "Time
//! discipline"; verified in its spike, fact 15).

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::spool::SpoolError;

/// The real-time runtime for spools on a clock that follows tokio's: one
/// per process, made on first use.
fn real_time() -> Result<&'static Runtime, SpoolError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("jetstream-bridge")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| SpoolError::Task(format!("the JetStream bridge runtime: {e}")))
}

/// How this spool reaches its runtime.
#[derive(Debug, Clone)]
pub(super) struct Bridge {
    handle: Handle,
    /// Calls cross over through a blocking thread (the clock follows tokio's).
    across: bool,
}

impl Bridge {
    /// The bridge for a spool on `clock`, made inside the caller's runtime.
    pub(super) fn for_clock(clock: Clock) -> Result<Bridge, SpoolError> {
        if clock.follows_tokio() {
            Ok(Bridge {
                handle: real_time()?.handle().clone(),
                across: true,
            })
        } else {
            Ok(Bridge {
                handle: Handle::current(),
                across: false,
            })
        }
    }

    /// Runs `call` where the client lives, and answers its result.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, SpoolError> {
        if !self.across {
            return Ok(call.await);
        }
        let handle = self.handle.clone();
        tokio::task::spawn_blocking(move || handle.block_on(call))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))
    }

    /// Starts a background task where the client lives.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        self.handle.spawn(task)
    }

    /// Runs `call` to its end from a blocking thread (a walk's).
    pub(super) fn block_on<T>(&self, call: impl Future<Output = T>) -> T {
        self.handle.block_on(call)
    }
}
