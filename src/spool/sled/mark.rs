//! The acknowledged mark: a small fsynced file beside sled's,
//! `acknowledged`, naming the newest notification answered 200. A
//! truncated log looks to sled like a torn write and opens silently with
//! what is before the cut; at open that notification must be there.
//!
//! The writer notes the newest notification a sync made durable (the
//! lease watermark), once per upkeep tick; a thread of its own writes
//! the file (a new file, fsynced, renamed over the old one, the directory
//! fsynced), at most once a second: those syncs took 1-2 ms, and on the
//! writer's thread every request arriving meanwhile waited for them.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::sled::Tree;

use super::{keys, newest_notification, storage};
use crate::clock::{format_ms, Clock};
use crate::spool::{NotificationId, SpoolError};

const ACKNOWLEDGED_FILE: &str = "acknowledged";
/// The mark lags the newest acknowledged notification by at most this.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// The newest notification answered 200, as written to `acknowledged`.
#[derive(Clone)]
pub struct Acknowledged {
    /// What the file says (None: no file, or unreadable).
    pub(super) written: Option<NotificationId>,
    /// The newest acknowledged one known now.
    pub(super) newest: Option<NotificationId>,
    warned: bool,
}

impl Acknowledged {
    pub(super) fn read(path: &Path, newest: Option<NotificationId>) -> Acknowledged {
        let written = std::fs::read_to_string(path.join(ACKNOWLEDGED_FILE))
            .ok()
            .and_then(|text| {
                let mut lines = text.lines();
                (lines.next() == Some("webhook-relay acknowledged"))
                    .then(|| lines.next().and_then(NotificationId::parse))
                    .flatten()
            });
        Acknowledged {
            written,
            newest: newest.max(written),
            warned: false,
        }
    }

    /// What is missing, if the newest acknowledged notification is gone
    /// (and retention did not remove it).
    pub(super) fn missing(&self, tree: &Tree) -> Result<Option<String>, SpoolError> {
        let Some(id) = self.written else {
            return Ok(None);
        };
        if tree.get(keys::notification(id)).map_err(storage)?.is_some() {
            return Ok(None);
        }
        let removed_upto = tree
            .get(keys::REMOVED_UPTO)
            .map_err(storage)?
            .and_then(|v| NotificationId::from_bytes(&v));
        if removed_upto.is_some_and(|upto| id <= upto) {
            return Ok(None);
        }
        let newest = newest_notification(tree)?;
        Ok(Some(format!(
            "notification {id} (received {}) was answered 200 but is not in the spool; \
             the newest one there is {}",
            format_ms(id.ms()),
            newest.map_or_else(
                || "none (it is empty)".into(),
                |n| format!("{n} (received {})", format_ms(n.ms()))
            )
        )))
    }

    pub fn note(&mut self, id: NotificationId) {
        self.newest = self.newest.max(Some(id));
    }

    /// Writes the mark if it changed: a new file, fsynced, renamed over the
    /// old one, and the directory fsynced.
    pub fn persist(&mut self, path: &Path) {
        if self.newest == self.written {
            return;
        }
        let Some(newest) = self.newest else { return };
        match write_acknowledged(path, newest) {
            Ok(()) => {
                self.written = Some(newest);
                self.warned = false;
            }
            Err(err) if !self.warned => {
                self.warned = true;
                tracing::warn!(error = %err, "cannot update the spool's acknowledged mark; loss detection lags until it can");
            }
            Err(_) => {}
        }
    }
}

fn write_acknowledged(path: &Path, id: NotificationId) -> std::io::Result<()> {
    let tmp = path.join(format!("{ACKNOWLEDGED_FILE}.tmp"));
    let mut file = File::create(&tmp)?;
    writeln!(file, "webhook-relay acknowledged\n{id}")?;
    file.sync_data()?;
    std::fs::rename(&tmp, path.join(ACKNOWLEDGED_FILE))?;
    File::open(path)?.sync_all()
}

/// Removes the mark (a loss an operator accepted: nothing to compare with).
pub fn forget(path: &Path) {
    let _ = std::fs::remove_file(path.join(ACKNOWLEDGED_FILE));
}

/// The writer's side of the mark: notes what the syncs made durable and
/// hands it, at most once a second, to the thread that writes the file.
pub struct MarkKeeper {
    newest: Option<NotificationId>,
    handed: Option<NotificationId>,
    last_handed: Option<tokio::time::Instant>,
    /// The spool's clock, for the throttle.
    clock: Clock,
    path: PathBuf,
    /// `None` once finished, or if the thread could not be started (then
    /// the writer writes the file itself).
    thread: Option<(mpsc::Sender<NotificationId>, JoinHandle<Acknowledged>)>,
    inline: Option<Acknowledged>,
}

impl MarkKeeper {
    pub fn start(acknowledged: Acknowledged, path: &Path, clock: Clock) -> MarkKeeper {
        let (newest, written) = (acknowledged.newest, acknowledged.written);
        let (tx, rx) = mpsc::channel::<NotificationId>();
        let mut on_thread = acknowledged.clone();
        let thread_path = path.to_owned();
        let spawned = std::thread::Builder::new()
            .name("spool-mark".into())
            .spawn(move || {
                while let Ok(id) = rx.recv() {
                    // Only the newest of what queued up while it wrote.
                    let id = rx.try_iter().fold(id, NotificationId::max);
                    on_thread.note(id);
                    on_thread.persist(&thread_path);
                }
                on_thread
            });
        let (thread, inline) = match spawned {
            Ok(handle) => (Some((tx, handle)), None),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the acknowledged mark's thread; the spool writer keeps it");
                (None, Some(acknowledged))
            }
        };
        MarkKeeper {
            newest,
            // After a crash the store may be ahead of the file: the
            // first hand-off writes what it holds.
            handed: written,
            last_handed: None,
            clock,
            path: path.to_owned(),
            thread,
            inline,
        }
    }

    /// `id` was made durable (flushed and fdatasynced).
    pub fn note(&mut self, id: NotificationId) {
        self.newest = self.newest.max(Some(id));
    }

    /// Hands the newest on if it changed and the last hand-off is a second old.
    pub fn maintain(&mut self) {
        let now = self.clock.instant_now();
        if self.newest == self.handed || self.last_handed.is_some_and(|at| now < at + PERSIST_EVERY)
        {
            return;
        }
        let Some(newest) = self.newest else { return };
        self.handed = Some(newest);
        self.last_handed = Some(now);
        match (&self.thread, &mut self.inline) {
            (Some((tx, _)), _) => {
                let _ = tx.send(newest);
            }
            (None, Some(acknowledged)) => {
                acknowledged.note(newest);
                acknowledged.persist(&self.path);
            }
            (None, None) => {}
        }
    }

    /// At a clean stop: waits for the thread, then writes the newest.
    pub fn finish(&mut self) {
        let mut acknowledged = match (self.thread.take(), self.inline.take()) {
            (Some((tx, handle)), _) => {
                drop(tx);
                match handle.join() {
                    Ok(acknowledged) => acknowledged,
                    Err(_) => Acknowledged::read(&self.path, None),
                }
            }
            (None, Some(acknowledged)) => acknowledged,
            (None, None) => return,
        };
        if let Some(newest) = self.newest {
            acknowledged.note(newest);
        }
        acknowledged.persist(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(path: &Path) -> Option<NotificationId> {
        Acknowledged::read(path, None).written
    }

    #[test]
    fn the_mark_is_written_off_the_writer_and_the_newest_at_finish() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::system();
        let mut keeper = MarkKeeper::start(Acknowledged::read(dir.path(), None), dir.path(), clock);
        let (first, second) = (NotificationId::new(1_000), NotificationId::new(2_000));
        keeper.note(first);
        keeper.maintain();
        // Another thread writes the file, and tells nobody: look for it.
        let deadline = clock.instant_now() + Duration::from_secs(10);
        while marked(dir.path()) != Some(first) {
            assert!(
                clock.instant_now() < deadline,
                "the thread never wrote the mark"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Within the second: noted, not handed on; a clean stop writes it.
        keeper.note(second);
        keeper.maintain();
        assert_eq!(keeper.handed, Some(first));
        keeper.finish();
        assert_eq!(marked(dir.path()), Some(second));
        // An older id never moves the mark back.
        let mut keeper = MarkKeeper::start(Acknowledged::read(dir.path(), None), dir.path(), clock);
        keeper.note(first);
        keeper.finish();
        assert_eq!(marked(dir.path()), Some(second));
    }

    #[test]
    fn the_mark_is_handed_on_at_most_once_a_second_of_the_spools_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::manual(1_000_000);
        let mut keeper = MarkKeeper::start(Acknowledged::read(dir.path(), None), dir.path(), clock);
        let (first, second) = (NotificationId::new(1_000), NotificationId::new(2_000));
        keeper.note(first);
        keeper.maintain();
        assert_eq!(keeper.handed, Some(first));
        keeper.note(second);
        clock.advance(PERSIST_EVERY - Duration::from_millis(1));
        keeper.maintain();
        assert_eq!(keeper.handed, Some(first), "handed on within the second");
        clock.advance(Duration::from_millis(1));
        keeper.maintain();
        assert_eq!(
            keeper.handed,
            Some(second),
            "not handed on once the second is over"
        );
        keeper.finish();
        assert_eq!(marked(dir.path()), Some(second));
    }
}
