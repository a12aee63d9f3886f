//! The reconciler's errors: a check that cannot be made
//! ([`ReconcileError`]) and a source's `[reconcile]` that cannot be set up
//! ([`SetupError`]).

use super::client::ClientError;
use crate::spool::SpoolError;

// Written out rather than derived: thiserror would take the fields named
// `source` (the relay's source, a name) for the error's cause.
#[derive(Debug)]
pub enum ReconcileError {
    UnknownSource(String),
    NotConfigured(String),
    UnknownInvoice { source: String, subject: String },
    NoKeys { source: String, subject: String },
    Spool(SpoolError),
}

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReconcileError::UnknownSource(name) => write!(f, "no source {name:?}"),
            ReconcileError::NotConfigured(name) => {
                write!(f, "source {name:?} has no [sources.{name}.reconcile]")
            }
            ReconcileError::UnknownInvoice { source, subject } => {
                write!(f, "no invoice {subject:?} of source {source:?}")
            }
            ReconcileError::NoKeys { source, subject } => write!(
                f,
                "no notification of invoice {subject:?} of source {source:?} carries what its provider's query needs"
            ),
            ReconcileError::Spool(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ReconcileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReconcileError::Spool(err) => Some(err),
            _ => None,
        }
    }
}

impl From<SpoolError> for ReconcileError {
    fn from(err: SpoolError) -> Self {
        ReconcileError::Spool(err)
    }
}

/// A source's `[reconcile]` that cannot be set up (its `tls_ca`).
#[derive(Debug)]
pub struct SetupError {
    pub(super) name: String,
    pub(super) error: ClientError,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sources.{}.reconcile: {}", self.name, self.error)
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
