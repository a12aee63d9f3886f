//! The spool's calls the JetStream backend does not do yet (the later
//! steps of `docs/design/jetstream.md`): each answers
//! [`SpoolError::Unsupported`] with its name, or, where the call cannot
//! fail, what an empty spool would answer. The relay refuses to serve on
//! this backend until none is left, so no operator meets them.

use super::JetStreamSpool;
use crate::spool::backup::{ArchiveCounts, ArchiveWriter, BackupError};
use crate::spool::{NotificationId, SpoolError};

fn unsupported<T>(call: &'static str) -> Result<T, SpoolError> {
    Err(SpoolError::Unsupported(call))
}

impl JetStreamSpool {
    pub(crate) fn backup<W: std::io::Write>(
        &self,
        _archive: &mut ArchiveWriter<W>,
        _progress: &mut dyn FnMut(&ArchiveCounts),
    ) -> Result<Option<NotificationId>, BackupError> {
        Ok(unsupported("back up")?)
    }

    #[cfg(test)]
    pub(crate) fn fail_next_batch(&self) {}
}
