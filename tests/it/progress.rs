//! Waits bounded by progress, not by total time: on a machine loaded by
//! other work a relay that keeps moving is slow, not stuck, so these fail
//! only when nothing has moved for a while, never because the whole took
//! longer than a fixed time.

use std::time::Duration;

use tokio::time::Instant;

/// How long a wait may see no progress at all before it fails: far longer
/// than any pause a loaded machine makes in a live relay (seen: a few
/// seconds at a load of 15 on 2 cores), far shorter than a test's timeout.
pub const STALL: Duration = Duration::from_secs(30);

/// Looks with `look` until it answers `Ok`, and returns that; `Err(n)` is
/// how far along it is (a count that grows while things move). Fails when
/// `n` has not grown for [`STALL`]: it proves the relay gets there, however
/// slowly the machine lets it.
pub async fn while_progressing<T>(what: &str, look: impl AsyncFnMut() -> Result<T, u64>) -> T {
    match until_stalled(what, STALL, look).await {
        Ok(done) => done,
        Err(stuck) => panic!("{what}: no progress for {STALL:?} (stuck at {stuck})"),
    }
}

/// [`while_progressing`] that returns `Err` with the last count instead of
/// failing once `stall` passed with no progress.
pub async fn until_stalled<T>(
    what: &str,
    stall: Duration,
    mut look: impl AsyncFnMut() -> Result<T, u64>,
) -> Result<T, u64> {
    let started = Instant::now();
    let (mut best, mut moved_at) = (None::<u64>, started);
    loop {
        let progress = match look().await {
            Ok(done) => {
                println!("{what}: done in {:?}", started.elapsed());
                return Ok(done);
            }
            Err(progress) => progress,
        };
        if best.is_none_or(|best| progress > best) {
            (best, moved_at) = (Some(progress), Instant::now());
        }
        if moved_at.elapsed() >= stall {
            println!(
                "{what}: stalled at {progress} after {:?}",
                started.elapsed()
            );
            return Err(progress);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
