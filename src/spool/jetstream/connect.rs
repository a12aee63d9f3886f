//! The connection: the auth file and TLS CA of `[spool.jetstream]`, the
//! gate on the server's version, and the start-up probe of the one server
//! rule the dedup stands on (a compare-and-set over a subject wildcard,
//! which 2.10 ignores without an error).

use std::path::Path;
use std::str::FromStr;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::{jetstream, ConnectOptions, HeaderMap, ServerAddr};

use super::error::JetStreamError;
use super::Names;
use crate::config::JetstreamConfig;
use crate::spool::cause;

/// The oldest nats-server the relay runs on (see `docs/design/jetstream.md`,
/// "Versions"): 2.10 ignores `Nats-Expected-Last-Subject-Sequence-Subject`,
/// so a resend would be stored twice, and cannot pause a consumer.
pub(super) const MIN_SERVER: (u64, u64, u64) = (2, 11, 0);
const MIN_SERVER_TEXT: &str = "2.11.0";

/// The server the connection reached, for messages.
#[derive(Debug, Clone)]
pub(super) struct Server {
    pub name: String,
    pub version: String,
}

/// Connects with the configured auth and TLS; fails at once (no retry
/// loop) when no server answers within `request_timeout`.
pub(super) async fn connect(
    config: &JetstreamConfig,
) -> Result<async_nats::Client, JetStreamError> {
    let timeout = config.request_timeout.0;
    let mut options = ConnectOptions::new()
        .name("webhook-relay")
        .connection_timeout(timeout)
        .request_timeout(Some(timeout));
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| file_error("creds_file", path, e))?;
    }
    if let Some(path) = &config.nkey_file {
        options = options.nkey(read_secret("nkey_file", path)?);
    }
    if let Some(path) = &config.token_file {
        options = options.token(read_secret("token_file", path)?);
    }
    let tls_in_urls = config.servers.iter().any(|s| s.starts_with("tls://"));
    if let Some(tls) = &config.tls {
        // Read here, so a missing CA is named as such, not as a failed handshake.
        std::fs::metadata(&tls.ca_file).map_err(|e| file_error("tls.ca_file", &tls.ca_file, e))?;
        options = options.add_root_certificates(tls.ca_file.clone());
    }
    if config.tls.is_some() || tls_in_urls {
        options = options.require_tls(true);
    }
    let servers = config.servers.join(", ");
    let addrs = config
        .servers
        .iter()
        .map(|s| ServerAddr::from_str(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JetStreamError::Connect {
            servers: servers.clone(),
            source: cause(e),
        })?;
    options
        .connect(addrs)
        .await
        .map_err(|e| JetStreamError::Connect {
            servers,
            source: cause(e),
        })
}

/// A secret file's first line (trimmed), as `token_file` and `nkey_file` hold.
fn read_secret(key: &'static str, path: &Path) -> Result<String, JetStreamError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(key, path, e))?;
    let secret = text.lines().next().unwrap_or("").trim().to_owned();
    if secret.is_empty() {
        return Err(file_error(key, path, "the file is empty"));
    }
    Ok(secret)
}

fn file_error(
    key: &'static str,
    path: &Path,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> JetStreamError {
    JetStreamError::File {
        key,
        path: path.to_owned(),
        source: cause(source),
    }
}

/// Refuses a server older than [`MIN_SERVER`] (or one whose version
/// cannot be read); the server reached, otherwise.
pub(super) fn check_version(client: &async_nats::Client) -> Result<Server, JetStreamError> {
    let info = client.server_info();
    let server = Server {
        name: if info.server_name.is_empty() {
            format!("{}:{}", info.host, info.port)
        } else {
            info.server_name.clone()
        },
        version: info.version.clone(),
    };
    match parse_version(&server.version) {
        Some(version) if version >= MIN_SERVER => Ok(server),
        _ => Err(JetStreamError::TooOld {
            server: server.name,
            version: server.version,
            minimum: MIN_SERVER_TEXT,
        }),
    }
}

/// `major.minor.patch` of a server version such as `2.11.0`, `v2.12.0-RC.1`
/// or `2.10.26+build`; `None` when it is not one.
pub(super) fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let text = text.trim().trim_start_matches('v');
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// The header that makes a publish's expected last sequence apply to
/// every subject matching a wildcard (the dedup's compare-and-set).
pub(super) const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";

/// Publishes twice under one wildcard, each expecting nothing there yet:
/// the second must be refused, or the server ignores the rule the dedup
/// needs (as 2.10 does, silently). The probe's messages are purged after.
pub(super) async fn probe(
    context: &jetstream::Context,
    names: &Names,
    server: &Server,
) -> Result<(), JetStreamError> {
    let base = names.probe(&ulid::Ulid::new().to_string());
    let expect_none_under = |wildcard: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, wildcard);
        headers
    };
    let wildcard = format!("{base}.*");
    let mut outcomes = Vec::new();
    for key in ["a", "b"] {
        let ack = context
            .publish_with_headers(
                format!("{base}.{key}"),
                expect_none_under(&wildcard),
                "probe".into(),
            )
            .await
            .map_err(|e| JetStreamError::request("the start-up probe's publish", e))?
            .await;
        outcomes.push(ack);
    }
    let stream = context
        .get_stream(names.stream())
        .await
        .map_err(|e| JetStreamError::request("reading the stream for the probe", e))?;
    stream
        .purge()
        .filter(wildcard)
        .await
        .map_err(|e| JetStreamError::request("purging the start-up probe", e))?;
    let failed = |detail: String| JetStreamError::Probe {
        server: server.name.clone(),
        version: server.version.clone(),
        detail,
    };
    match (&outcomes[0], &outcomes[1]) {
        (Ok(_), Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(()),
        (Ok(_), Ok(_)) => Err(failed(format!(
            "it stored a second message under one key although `{EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT}` forbade it, so a provider's resend would be stored twice"
        ))),
        (Err(e), _) | (Ok(_), Err(e)) => Err(failed(format!("a probe publish failed: {e}"))),
    }
}
