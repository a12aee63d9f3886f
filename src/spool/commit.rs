//! Group commit: one flusher task makes many writes durable with one flush.
//!
//! A writer finishes its write, then takes a ticket (the count of writes so
//! far). The flusher reads the count *before* it starts a flush, so when
//! that flush (and the fdatasync after it) returns, every ticket up to the
//! count is durable. Only this task ever flushes: concurrent sled flushes can
//! deadlock (see CRATES.md).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use super::SpoolError;

#[derive(Debug, Clone, Default)]
struct Flushed {
    /// Every ticket up to this one is durable.
    through: u64,
    /// The last failed flush: the tickets up to it failed, and the error.
    failed: Option<(u64, String)>,
}

pub(super) struct GroupCommit {
    written: AtomicU64,
    wake: Notify,
    flushed: watch::Sender<Flushed>,
}

/// Flush and sync, run on a blocking thread.
pub(super) type FlushFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl GroupCommit {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(GroupCommit {
            written: AtomicU64::new(0),
            wake: Notify::new(),
            flushed: watch::Sender::new(Flushed::default()),
        })
    }

    /// Waits until a flush that began after this call has completed.
    pub(super) async fn durable(&self) -> Result<(), SpoolError> {
        let ticket = self.mark_dirty();
        let mut rx = self.flushed.subscribe();
        let state = rx
            .wait_for(|f| {
                f.through >= ticket || f.failed.as_ref().is_some_and(|(t, _)| *t >= ticket)
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        if state.through >= ticket {
            Ok(())
        } else {
            let detail = state
                .failed
                .as_ref()
                .map(|(_, e)| e.clone())
                .unwrap_or_default();
            Err(SpoolError::Flush(detail))
        }
    }

    /// Records a write that needs no acknowledgement (a delivery outcome):
    /// it rides on the next group flush.
    pub(super) fn mark_dirty(&self) -> u64 {
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        ticket
    }

    /// The flusher: runs until `shutdown` resolves, then makes a last flush.
    pub(super) async fn run(
        self: Arc<Self>,
        flush: FlushFn,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let stopping = tokio::select! {
                _ = self.wake.notified() => false,
                _ = &mut shutdown => true,
            };
            // Drain: keep flushing while writes arrived during the last flush.
            loop {
                let target = self.written.load(Ordering::SeqCst);
                if target <= self.flushed.borrow().through {
                    break;
                }
                let flush = flush.clone();
                let result = tokio::task::spawn_blocking(move || flush())
                    .await
                    .unwrap_or_else(|join| Err(format!("flush task failed: {join}")));
                match result {
                    Ok(()) => self.flushed.send_modify(|f| f.through = target),
                    Err(err) => {
                        tracing::error!(error = %err, "spool flush failed; answering 503 until a flush succeeds");
                        self.flushed.send_modify(|f| f.failed = Some((target, err)));
                        break;
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }
}

/// Flushes sled, then fdatasyncs its log file: sled's own flush uses
/// `sync_file_range` on Linux, which does not survive a power cut.
pub(super) fn flush_and_sync(db: sled::Db, log: Option<File>) -> FlushFn {
    Arc::new(move || {
        db.flush().map_err(|e| format!("sled flush: {e}"))?;
        if let Some(log) = &log {
            log.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn one_flush_covers_many_waiters_and_none_returns_before_its_flush() {
        let commit = GroupCommit::new();
        let flushes = Arc::new(AtomicUsize::new(0));
        let counter = flushes.clone();
        let flush: FlushFn = Arc::new(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let flusher = tokio::spawn(commit.clone().run(flush, async {
            let _ = stopped.await;
        }));
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let commit = commit.clone();
                let flushes = flushes.clone();
                tokio::spawn(async move {
                    let before = flushes.load(Ordering::SeqCst);
                    commit.durable().await.unwrap();
                    assert!(
                        flushes.load(Ordering::SeqCst) > before,
                        "acknowledged before any flush"
                    );
                })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let total = flushes.load(Ordering::SeqCst);
        assert!((1..50).contains(&total), "50 writes took {total} flushes");
        stop.send(()).unwrap();
        flusher.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_waiters_and_a_later_one_recovers() {
        let commit = GroupCommit::new();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let failing = fail.clone();
        let flush: FlushFn = Arc::new(move || {
            if failing.load(Ordering::SeqCst) {
                Err("No space left on device".into())
            } else {
                Ok(())
            }
        });
        tokio::spawn(commit.clone().run(flush, std::future::pending()));
        let err = commit.durable().await.unwrap_err();
        assert!(
            matches!(err, SpoolError::Flush(ref e) if e.contains("No space")),
            "{err:?}"
        );
        fail.store(false, Ordering::SeqCst);
        commit.durable().await.unwrap();
    }
}
