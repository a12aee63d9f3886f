//! Reconciliation, the pure half: what each provider's query API needs
//! ([`QueryKeys`], read from a webhook body of the invoice), the request to
//! make ([`QueryRequest`], as data: the HTTP call lives in `reconcile`), and
//! what the answer says ([`Answer`] or a typed [`AnswerError`]). The
//! per-provider rules live in `nubefact/query.rs`, `tusfacturas/query.rs`
//! and `datil/query.rs`; `ask.rs` holds [`super::Provider`]'s methods that dispatch to them. Answers are
//! read with the same conventions as webhooks (see the `providers` doc):
//! BOM stripped, Windows-1252 fallback (flagged), `null` = absent, numbers
//! as strings or integers, booleans loose.
//!
//! Credentials never reach a `Debug` output: [`QueryCredentials`] and
//! [`QueryRequest`] implement it by hand, and credential header values are
//! marked sensitive.

use super::{parse_json, Flag, InvoiceStatus, Notification, Rejection};
use serde_json::{Map, Value};
use std::fmt;

/// What a provider's query needs, read from a webhook body of that invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKeys {
    NubeFact {
        tipo: u64,
        serie: String,
        numero: u64,
    },
    TusFacturas {
        external_reference: String,
    },
    Datil {
        id: String,
    },
}

impl QueryKeys {
    /// The provider these keys are for (its config name).
    pub fn provider_name(&self) -> &'static str {
        match self {
            QueryKeys::NubeFact { .. } => "nubefact",
            QueryKeys::TusFacturas { .. } => "tusfacturas",
            QueryKeys::Datil { .. } => "datil",
        }
    }
}

/// How NubeFact's token is sent in `Authorization`: its PHP sample and
/// most clients write `Token token="…"`, its manual the bare token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NubefactHeader {
    #[default]
    TokenQuoted,
    Bare,
}

/// Credentials as data (already read from their files by config).
#[derive(Clone, PartialEq, Eq)]
pub enum QueryCredentials {
    NubeFact {
        token: String,
        header: NubefactHeader,
    },
    TusFacturas {
        apikey: String,
        apitoken: String,
        usertoken: String,
    },
    Datil {
        api_key: String,
    },
}

impl QueryCredentials {
    /// The provider these credentials are for (its config name).
    pub fn provider_name(&self) -> &'static str {
        match self {
            QueryCredentials::NubeFact { .. } => "nubefact",
            QueryCredentials::TusFacturas { .. } => "tusfacturas",
            QueryCredentials::Datil { .. } => "datil",
        }
    }
}

const REDACTED: &str = "<redacted>";

impl fmt::Debug for QueryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryCredentials::NubeFact { header, .. } => f
                .debug_struct("NubeFact")
                .field("token", &REDACTED)
                .field("header", header)
                .finish(),
            QueryCredentials::TusFacturas { .. } => f
                .debug_struct("TusFacturas")
                .field("apikey", &REDACTED)
                .field("apitoken", &REDACTED)
                .field("usertoken", &REDACTED)
                .finish(),
            QueryCredentials::Datil { .. } => {
                f.debug_struct("Datil").field("api_key", &REDACTED).finish()
            }
        }
    }
}

/// An HTTP request to make, as data. The caller joins `path` to the
/// configured url: NubeFact's path is "" (a POST to the RUTA itself),
/// Dátil's `/invoices/<id>` (escaped), TusFacturas'
/// `/facturacion/consulta_avanzada`.
#[derive(Clone)]
pub struct QueryRequest {
    pub method: http::Method,
    pub path: String,
    /// Credential values are marked sensitive.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// May hold credentials (TusFacturas): `Debug` shows its length only.
    pub body: bytes::Bytes,
}

impl fmt::Debug for QueryRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // HeaderValue's own Debug prints "Sensitive" for sensitive values.
        f.debug_struct("QueryRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &self.headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// Why no request could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryBuildError {
    /// Keys or credentials of another provider (a wiring error).
    #[error("{given} of {of} cannot query {provider}")]
    Mismatch {
        provider: &'static str,
        given: &'static str,
        of: &'static str,
    },
    /// Keys that cannot make a request (e.g. a Dátil id of dots only).
    #[error("cannot query with {0}")]
    BadKeys(String),
    /// The provider has no query API (generic).
    #[error("provider {0} has no query API")]
    NoQueryApi(&'static str),
    /// A credential cannot be sent in a header (control characters,
    /// non-ASCII); the value is never named.
    #[error("credential `{0}` holds characters that cannot go in an HTTP header")]
    BadCredential(&'static str),
}

/// What the provider's answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Final: store it as a notification (body = the answer, byte for
    /// byte). Its flags hold [`Flag::Reconciled`]; its dedup key is
    /// [`reconciled_key`].
    Final(Notification),
    /// Still undecided (or a state the relay does not know); `said` is a
    /// short text of what the provider said.
    Pending { said: String },
}

/// Why an answer gives no [`Answer`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Credentials refused (NubeFact codigo 10/11, HTTP 401/403,
    /// TusFacturas errors about the credentials).
    #[error("credentials refused: {0}")]
    Unauthorized(String),
    /// The provider does not know the invoice (NubeFact 24, Dátil 404,
    /// TusFacturas total 0).
    #[error("the provider does not know the invoice: {0}")]
    NotFound(String),
    /// The provider says it failed (5xx, NubeFact 40/21/50/51, TusFacturas
    /// error "S").
    #[error("the provider failed (HTTP {status}): {message}")]
    Provider { status: u16, message: String },
    /// The answer cannot be read as this provider's (kept for the admin,
    /// never stored as a notification).
    #[error("unreadable answer: {0}")]
    Unreadable(String),
}

impl AnswerError {
    /// "unauthorized" | "not_found" | "provider_error" | "unreadable".
    pub fn kind(&self) -> &'static str {
        match self {
            AnswerError::Unauthorized(_) => "unauthorized",
            AnswerError::NotFound(_) => "not_found",
            AnswerError::Provider { .. } => "provider_error",
            AnswerError::Unreadable(_) => "unreadable",
        }
    }
}

/// A webhook-style rejection of a field in an answer: the answer is not
/// what this provider sends.
impl From<Rejection> for AnswerError {
    fn from(r: Rejection) -> Self {
        AnswerError::Unreadable(r.to_string())
    }
}

/// The dedup key of a reconciled notification: one per invoice and status,
/// so a later webhook of that state is recognised as the same.
pub fn reconciled_key(subject: &str, status: InvoiceStatus) -> String {
    format!("reconciled:{subject}:{status}")
}

// ---- shared by the providers' query modules -------------------------------

/// Longest provider text kept in a message.
const MAX_SAID: usize = 200;

/// Provider text made safe for a message: control characters as spaces,
/// trimmed, at most [`MAX_SAID`] characters.
pub(crate) fn said(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    match clean.char_indices().nth(MAX_SAID) {
        Some((at, _)) => format!("{}…", &clean[..at]),
        None => clean.to_owned(),
    }
}

/// A message value as text: a string, a list of strings joined by "; ",
/// else its JSON.
pub(crate) fn message_of(value: &Value) -> String {
    match value {
        Value::String(s) => said(s),
        Value::Array(items) => said(
            &items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        other => said(&other.to_string()),
    }
}

/// An answer that is not what the provider sends, judged by its HTTP
/// status: refused credentials, a provider failure, else unreadable.
pub(crate) fn by_status(http_status: u16, reason: &str) -> AnswerError {
    match http_status {
        401 | 403 => AnswerError::Unauthorized(format!("HTTP {http_status}: {reason}")),
        200..=299 => AnswerError::Unreadable(reason.to_owned()),
        _ => AnswerError::Provider {
            status: http_status,
            message: reason.to_owned(),
        },
    }
}

/// Parses an answer that must be a JSON object; anything else is judged by
/// its status ([`by_status`]).
pub(crate) fn parse_answer(
    http_status: u16,
    body: &[u8],
    flags: &mut Vec<Flag>,
) -> Result<Map<String, Value>, AnswerError> {
    match parse_json(body, flags) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(by_status(
            http_status,
            &format!("body is a JSON {}, not an object", super::json_type(&other)),
        )),
        Err(e) => Err(by_status(http_status, &e.to_string())),
    }
}

/// The final answer as a notification about `subject`.
pub(crate) fn final_answer(
    event_type: String,
    subject: &str,
    status: InvoiceStatus,
    mut flags: Vec<Flag>,
) -> Answer {
    flags.push(Flag::Reconciled);
    Answer::Final(Notification {
        event_type,
        subject: Some(subject.to_owned()),
        dedup_key: reconciled_key(subject, status),
        provider_time: None,
        status,
        flags,
    })
}

#[cfg(test)]
mod tests;
