//! Provider checks: pure functions that turn the raw body of a provider's
//! webhook into a [`Notification`] (event type, subject, dedup key, provider
//! time) or a typed [`Rejection`]. One submodule per provider plus `generic`;
//! the JSON helpers they share live here. No I/O, no clock: callers pass the
//! bytes (and headers) and get a value back, so every rule is unit-testable.
//!
//! Conventions shared by all providers:
//! - Content-Type is never trusted; a UTF-8 BOM is stripped before parsing.
//! - A field whose value is JSON `null` counts as absent.
//! - Text taken from the body is trimmed, and control characters are
//!   rejected, because it ends up in keys, logs and forwarded headers.

pub mod datil;
pub mod generic;
pub mod nubefact;
pub mod tusfacturas;

pub use generic::GenericRules;

use serde_json::{Map, Value};
use time::{OffsetDateTime, UtcOffset};

/// What the relay learned from a provider's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// e.g. "facturacion.emitido"
    pub event_type: String,
    /// what the notification is about, e.g. the invoice number
    pub subject: Option<String>,
    /// identifies the notification and its state, never retry counters;
    /// already prefixed so keys of different kinds cannot collide
    pub dedup_key: String,
    /// the provider's own timestamp, converted to UTC
    pub provider_time: Option<OffsetDateTime>,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is a JSON {0}, not an object")]
    NotObject(&'static str),
    #[error("missing field `{0}`")]
    MissingField(String),
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: String, reason: String },
}

impl Rejection {
    /// Short machine-readable kind: "not_json" | "not_object" |
    /// "missing_field" | "invalid_field".
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::NotJson(_) => "not_json",
            Rejection::NotObject(_) => "not_object",
            Rejection::MissingField(_) => "missing_field",
            Rejection::InvalidField { .. } => "invalid_field",
        }
    }
}

/// The provider a source is configured as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    TusFacturas,
    Datil,
    NubeFact,
    Generic(GenericRules),
}

impl Provider {
    /// The config name: "tusfacturas" | "datil" | "nubefact" | "generic".
    pub fn name(&self) -> &'static str {
        match self {
            Provider::TusFacturas => "tusfacturas",
            Provider::Datil => "datil",
            Provider::NubeFact => "nubefact",
            Provider::Generic(_) => "generic",
        }
    }

    /// Checks a body. `headers` are the request's headers (only `generic`
    /// reads one, for its dedup key).
    pub fn check(&self, body: &[u8], headers: &http::HeaderMap) -> Result<Notification, Rejection> {
        match self {
            Provider::TusFacturas => tusfacturas::check(body),
            Provider::Datil => datil::check(body),
            Provider::NubeFact => nubefact::check(body),
            Provider::Generic(rules) => generic::check(rules, body, headers),
        }
    }
}

// ---- shared helpers -------------------------------------------------------

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// The JSON type name of a value, for messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parses a body as JSON (BOM stripped), whatever its top-level type.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, Rejection> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    serde_json::from_slice(body).map_err(|e| Rejection::NotJson(e.to_string()))
}

/// Parses a body that must be a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match parse_json(body)? {
        Value::Object(map) => Ok(map),
        other => Err(Rejection::NotObject(json_type(&other))),
    }
}

/// A field's value; `null` counts as absent.
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// A field that must be present (and not `null`). `path` names it in errors.
pub(crate) fn required<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<&'a Value, Rejection> {
    field(obj, name).ok_or_else(|| Rejection::MissingField(path.to_owned()))
}

/// Trimmed text, refused if it holds control characters (it ends up in
/// keys and headers).
fn clean_text(s: &str, path: &str) -> Result<String, Rejection> {
    let s = s.trim();
    if s.chars().any(char::is_control) {
        return Err(invalid(path, "contains control characters"));
    }
    Ok(s.to_owned())
}

/// A string value, trimmed; may be empty.
pub(crate) fn text(value: &Value, path: &str) -> Result<String, Rejection> {
    match value {
        Value::String(s) => clean_text(s, path),
        other => Err(invalid(
            path,
            format!("expected a string, got {}", json_type(other)),
        )),
    }
}

/// A string or integer value as text (integers in decimal); may be empty.
/// Floats are refused: an identifier sent as `1.0` is a sender bug.
pub(crate) fn text_or_int(value: &Value, path: &str) -> Result<String, Rejection> {
    match value {
        Value::String(s) => clean_text(s, path),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => Err(invalid(
            path,
            format!("expected a string or an integer, got {}", json_type(other)),
        )),
    }
}

/// Refuses empty text.
pub(crate) fn non_empty(s: String, path: &str) -> Result<String, Rejection> {
    if s.is_empty() {
        return Err(invalid(path, "is empty"));
    }
    Ok(s)
}

/// A non-negative integer given as a JSON integer or a string of ASCII
/// digits; both forms give the same number, so the same receipt gives the
/// same key however the sender encodes it.
pub(crate) fn unsigned(value: &Value, path: &str) -> Result<u64, Rejection> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| invalid(path, "expected a non-negative integer")),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(path, "expected a string of digits"));
            }
            s.parse().map_err(|_| invalid(path, "number is too large"))
        }
        other => Err(invalid(
            path,
            format!("expected an integer, got {}", json_type(other)),
        )),
    }
}

/// A name part of an event type: limited to `a-z 0-9 _ -` so event types
/// are safe to route on and never contain a dedup key's separators.
pub(crate) fn event_name(s: String, path: &str) -> Result<String, Rejection> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if !s.chars().all(allowed) {
        return Err(invalid(path, "allowed characters are a-z 0-9 _ -"));
    }
    Ok(s)
}

/// Converts to UTC without the panic `to_offset` has at the edge of the
/// supported date range.
pub(crate) fn to_utc(t: OffsetDateTime, path: &str) -> Result<OffsetDateTime, Rejection> {
    t.checked_to_offset(UtcOffset::UTC)
        .ok_or_else(|| invalid(path, "date is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_providers() -> Vec<Provider> {
        vec![
            Provider::TusFacturas,
            Provider::Datil,
            Provider::NubeFact,
            Provider::Generic(GenericRules {
                default_event: "generic".into(),
                ..GenericRules::default()
            }),
            Provider::Generic(GenericRules {
                dedup_pointer: Some("/id".into()),
                event_pointer: Some("/type".into()),
                subject_pointer: Some("/a/0".into()),
                ..GenericRules::default()
            }),
            Provider::Generic(GenericRules {
                dedup_header: Some(http::HeaderName::from_static("x-id")),
                ..GenericRules::default()
            }),
        ]
    }

    fn check_all(body: &[u8]) {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-id", http::HeaderValue::from_static("abc"));
        for p in all_providers() {
            let _ = p.check(body, &headers);
        }
    }

    #[test]
    fn names_are_the_config_names() {
        let names: Vec<_> = all_providers().iter().map(Provider::name).collect();
        assert_eq!(
            names,
            [
                "tusfacturas",
                "datil",
                "nubefact",
                "generic",
                "generic",
                "generic"
            ]
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(Rejection::NotJson("x".into()).kind(), "not_json");
        assert_eq!(Rejection::NotObject("array").kind(), "not_object");
        assert_eq!(Rejection::MissingField("a".into()).kind(), "missing_field");
        assert_eq!(invalid("a", "b").kind(), "invalid_field");
        assert_eq!(invalid("a", "b").to_string(), "field `a` is invalid: b");
    }

    #[test]
    fn bom_is_stripped_and_types_named() {
        assert_eq!(parse_object(b"\xEF\xBB\xBF{}"), Ok(Map::new()));
        assert_eq!(parse_object(b"[1]"), Err(Rejection::NotObject("array")));
        assert_eq!(parse_object(b"null"), Err(Rejection::NotObject("null")));
        assert_eq!(parse_object(b"").map_err(|e| e.kind()), Err("not_json"));
        assert_eq!(
            parse_object(b"\xff{}").map_err(|e| e.kind()),
            Err("not_json")
        );
    }

    #[test]
    fn unsigned_accepts_both_encodings() {
        assert_eq!(unsigned(&Value::from(105), "n"), Ok(105));
        assert_eq!(unsigned(&Value::from("0105"), "n"), Ok(105));
        assert!(unsigned(&Value::from("1e3"), "n").is_err());
        assert!(unsigned(&Value::from(-1), "n").is_err());
        assert!(unsigned(&Value::from("99999999999999999999999"), "n").is_err());
    }

    #[test]
    fn text_refuses_control_characters() {
        assert!(text(&Value::from("a\r\nb"), "f").is_err());
        assert_eq!(text_or_int(&Value::from(" x "), "f"), Ok("x".into()));
        assert!(text_or_int(&Value::from(1.5), "f").is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_all(&body);
        }

        #[test]
        fn never_panics_on_json_ish(body in r#"[\{\}\[\]":,0-9a-z_ .\-/+eE\\ÿ]{0,200}"#) {
            check_all(body.as_bytes());
        }

        #[test]
        fn never_panics_on_near_valid_objects(
            key in "(creado|evento|recurso|external_reference|intento|msg|hook_id|id|clave_acceso|autorizacion|envio_sri|tipo_de_comprobante|serie|numero|aceptada_por_sunat|sunat_responsecode|type|a)",
            value in r#"(null|true|false|-?[0-9]{1,25}(\.[0-9]+)?|"[^"\\]{0,30}"|\[\]|\{"estado":"[A-Z ]{0,12}","fecha":"[0-9T:Z.+\-]{0,30}"\})"#,
        ) {
            let base = r#"{"creado":"18/03/2022 15:58:11","evento":"emitido","recurso":"facturacion","external_reference":"1","hook_id":"h","id":"r","autorizacion":{"estado":"AUTORIZADO"},"tipo_de_comprobante":1,"serie":"F001","numero":1,"aceptada_por_sunat":false,"type":"t"}"#;
            let mut map: Map<String, Value> = serde_json::from_str(base).unwrap_or_default();
            let v: Value = serde_json::from_str(&value).unwrap_or(Value::Null);
            map.insert(key, v);
            let body = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
            check_all(&body);
        }
    }
}
