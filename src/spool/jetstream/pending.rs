//! The spool's calls the JetStream backend does not do yet (the later
//! steps of `docs/design/jetstream.md`). The relay refuses to serve on
//! this backend until none is left, so no operator meets them.

use super::JetStreamSpool;

impl JetStreamSpool {
    #[cfg(test)]
    pub(crate) fn fail_next_batch(&self) {}
}
