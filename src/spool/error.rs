//! What can go wrong at the spool's boundary, in the callers' words: a
//! spool locked, damaged or short of acknowledged notifications, a store
//! that cannot write now, a record that does not decode. A backend's own
//! error travels as the [`Cause`] underneath.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {} is in use by another process (a running relay?): {detail}", path.display())]
    Locked { path: PathBuf, detail: String },
    #[error("cannot open spool {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    /// The files are damaged: sled cannot open or read them.
    #[error("cannot open spool {}: {detail}", path.display())]
    Damaged { path: PathBuf, detail: String },
    /// Acknowledged notifications are missing: the spool lost data.
    #[error("spool {} lost acknowledged notifications: {detail}", path.display())]
    Lost { path: PathBuf, detail: String },
    #[error("spool storage error: {0}")]
    Storage(#[source] Cause),
    /// `step` names what failed (sled's flush, the fdatasync after it).
    #[error("spool flush failed: {step}: {source}")]
    Flush {
        step: &'static str,
        #[source]
        source: Cause,
    },
    /// The store cannot write now (disk full, I/O error); it retries by itself.
    #[error("spool cannot write now: {0}")]
    Unavailable(String),
    #[error("spool is closed")]
    Closed,
    /// A backend's task ended without an answer (it panicked).
    #[error("spool task failed: {0}")]
    Task(String),
    #[error("cannot encode record: {0}")]
    Encode(#[source] Cause),
    #[error("corrupt record in spool: {0}")]
    Corrupt(String),
    #[error("no notification {0} in the spool")]
    NotFound(String),
    #[error("delivery cannot be replayed: {0}")]
    NotReplayable(String),
    #[error("{0}")]
    NotOrphan(String),
    /// The backend does not do this call yet (the JetStream backend while
    /// it is built; the relay refuses to serve on it until then).
    #[error("the spool's backend cannot {0} yet")]
    Unsupported(&'static str),
}

/// The error under a [`SpoolError`] (a backend's, an encoder's, or a
/// message where there is none), shared so the error stays `Clone`.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// A [`Cause`] from an error or a message.
pub(crate) fn cause(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Cause {
    std::sync::Arc::from(err.into())
}
