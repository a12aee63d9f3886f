//! What can go wrong opening the JetStream spool, each with what the
//! operator should do; the client's own error travels as the [`Cause`].

use std::path::PathBuf;

use crate::spool::Cause;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum JetStreamError {
    /// An auth or CA file named in `[spool.jetstream]` cannot be read.
    #[error("cannot read spool.jetstream.{key} {}: {source}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        servers: String,
        #[source]
        source: Cause,
    },
    /// The server is older than the relay needs, or says no version.
    #[error("nats-server {version} ({server}) is older than {minimum}, which the relay needs (the dedup's compare-and-set on a subject wildcard and consumer pause came in 2.11.0): upgrade nats-server")]
    TooOld {
        server: String,
        version: String,
        minimum: &'static str,
    },
    /// The server claims a version but does not keep the rule the dedup
    /// stands on.
    #[error("nats-server {version} ({server}) failed the start-up probe: {detail}")]
    Probe {
        server: String,
        version: String,
        detail: String,
    },
    /// The existing stream or bucket has settings that would break a
    /// guarantee of the spool (each problem says which and how to fix it).
    #[error("JetStream stream {stream} cannot keep the spool's promises: {}", problems.join("; "))]
    Unsafe {
        stream: String,
        problems: Vec<String>,
    },
    /// The servers cannot hold the copies asked for.
    #[error("JetStream cannot make stream {stream} with {replicas} replicas: {detail}; set spool.jetstream.replicas to at most the number of servers in the NATS cluster, or add servers")]
    Replicas {
        stream: String,
        replicas: u8,
        detail: String,
    },
    /// A request to JetStream failed (`what` names it).
    #[error("JetStream: {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: Cause,
    },
    /// The spool's identity record is not one the relay wrote.
    #[error("JetStream stream {stream} holds an unreadable identity record ({detail}): is the prefix shared with something else?")]
    Identity { stream: String, detail: String },
}

impl JetStreamError {
    /// A failed request, named.
    pub(super) fn request(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> JetStreamError {
        JetStreamError::Request {
            what: what.into(),
            source: crate::spool::cause(source),
        }
    }
}

/// At the spool's boundary a failed request is a write that cannot be
/// made now (ingress answers 503 with Retry-After).
impl From<JetStreamError> for crate::spool::SpoolError {
    fn from(err: JetStreamError) -> crate::spool::SpoolError {
        crate::spool::SpoolError::Unavailable(err.to_string())
    }
}
