//! Provider checks: pure functions that turn the raw body of a provider's
//! webhook into a [`Notification`] (event type, subject, dedup key, provider
//! time, the invoice's status) or a typed [`Rejection`]. One submodule per provider plus `generic`;
//! the JSON helpers they share live here. No I/O, no clock: callers pass the
//! bytes (and headers) and get a value back, so every rule is unit-testable.
//!
//! Conventions shared by all providers:
//! - Content-Type is never trusted; a UTF-8 BOM is stripped before parsing.
//! - A body that is not UTF-8 is read as Windows-1252 (which covers
//!   ISO-8859-1's letters), and the notification is flagged
//!   [`Flag::Latin1Body`]; the spool keeps the raw bytes.
//! - A field whose value is JSON `null` counts as absent.
//! - Identifiers and counters are taken as integers, integral floats
//!   (`105.0`) or strings of digits; booleans as `true`, `"true"`, `1`,
//!   `"1"` (and their opposites). Unknown fields are ignored.
//! - What a provider may plausibly send is accepted, and what the relay
//!   does not know (an unknown event, a date it cannot read) is flagged on
//!   the notification, never silently dropped or normalised. Rejection is
//!   kept for what cannot be that provider's notification.
//! - Text taken from the body is trimmed, and control characters are
//!   rejected, because it ends up in keys, logs and forwarded headers.

mod ask;
pub mod datil;
pub mod generic;
pub mod nubefact;
pub mod query;
pub mod status;
pub mod tusfacturas;

pub use generic::GenericRules;
pub use status::{InvoiceStatus, ALL_STATUSES};

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
    /// where the invoice stands, in the relay's words (see [`status`])
    pub status: InvoiceStatus,
    /// what was accepted though not as documented
    pub flags: Vec<Flag>,
}

/// Something about an accepted notification an admin or a target may
/// want to know: it was taken, but not exactly as the provider documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flag {
    /// The body was not UTF-8 and was read as Windows-1252/ISO-8859-1.
    Latin1Body,
    /// An event (TusFacturas `evento`) the provider does not document.
    UnknownEvent,
    /// A resource (TusFacturas `recurso`) the provider does not document.
    UnknownResource,
    /// A state (Dátil `estado`) the provider does not document.
    UnknownState,
    /// No receipt id came with it (Dátil's bare `envio_sri`): its dedup
    /// key is the body's hash.
    NoReceiptId,
    /// The provider's timestamp could not be read; it was left out.
    UnreadableTime,
    /// Made by the relay from the provider's answer to a query (see
    /// [`query`]), not received as a webhook.
    Reconciled,
}

impl Flag {
    /// The name kept in the spool and shown in answers and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Latin1Body => "latin1_body",
            Flag::UnknownEvent => "unknown_event",
            Flag::UnknownResource => "unknown_resource",
            Flag::UnknownState => "unknown_state",
            Flag::NoReceiptId => "no_receipt_id",
            Flag::UnreadableTime => "unreadable_time",
            Flag::Reconciled => "reconciled",
        }
    }
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

/// Parses a body as JSON (BOM stripped), whatever its top-level type. A
/// body that is not UTF-8 is decoded as Windows-1252 (every byte maps to a
/// character, so ISO-8859-1 text reads right) and flagged.
pub(crate) fn parse_json(body: &[u8], flags: &mut Vec<Flag>) -> Result<Value, Rejection> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if std::str::from_utf8(body).is_ok() {
        return serde_json::from_slice(body).map_err(|e| Rejection::NotJson(e.to_string()));
    }
    let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(body);
    let value = serde_json::from_str(&text)
        .map_err(|e| Rejection::NotJson(format!("{e} (read as Windows-1252, not UTF-8)")))?;
    flags.push(Flag::Latin1Body);
    Ok(value)
}

/// Parses a body that must be a JSON object.
pub(crate) fn parse_object(
    body: &[u8],
    flags: &mut Vec<Flag>,
) -> Result<Map<String, Value>, Rejection> {
    match parse_json(body, flags)? {
        Value::Object(map) => Ok(map),
        other => Err(Rejection::NotObject(json_type(&other))),
    }
}

/// A JSON number that is a whole non-negative number: `105` or `105.0`.
fn whole(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        let f = n.as_f64()?;
        // Below 2^53 every integer is exact in an f64.
        (f.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&f)).then_some(f as u64)
    })
}

/// A boolean as senders write one: `true`, `"true"`, `1`, `"1"`, `"si"`
/// and their opposites (case and spaces ignored).
pub(crate) fn boolish(value: &Value, path: &str) -> Result<bool, Rejection> {
    let refuse = || invalid(path, "expected true or false");
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match whole(n) {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(refuse()),
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "si" | "sí" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(refuse()),
        },
        _ => Err(refuse()),
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

/// A string or integer value as text (integers in decimal, an integral
/// float such as `17032.0` as the integer); may be empty. Other floats
/// are refused: `1.5` is no identifier.
pub(crate) fn text_or_int(value: &Value, path: &str) -> Result<String, Rejection> {
    match value {
        Value::String(s) => clean_text(s, path),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Value::Number(n) if whole(n).is_some() => Ok(whole(n).unwrap_or_default().to_string()),
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

/// A non-negative integer given as a JSON integer, an integral float
/// (`105.0`) or a string of ASCII digits; every form gives the same
/// number, so the same receipt gives the same key however it is encoded.
pub(crate) fn unsigned(value: &Value, path: &str) -> Result<u64, Rejection> {
    match value {
        Value::Number(n) => {
            whole(n).ok_or_else(|| invalid(path, "expected a non-negative integer"))
        }
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

/// Longest name part kept in an event type.
pub(crate) const MAX_NAME: usize = 64;

/// A value the relay does not know, as a safe event-name part: lowercase,
/// words joined by `_`, any character outside `a-z 0-9 _ -` as `_`, at
/// most [`MAX_NAME`] characters; `None` if no letter or digit is left.
pub(crate) fn safe_name(s: &str) -> Option<String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let safe: String = words
        .join("_")
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .take(MAX_NAME)
        .collect();
    safe.chars()
        .any(|c| c.is_ascii_alphanumeric())
        .then_some(safe)
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
    use serde_json::json;

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
    fn flag_names() {
        let all = [
            Flag::Latin1Body,
            Flag::UnknownEvent,
            Flag::UnknownResource,
            Flag::UnknownState,
            Flag::NoReceiptId,
            Flag::UnreadableTime,
            Flag::Reconciled,
        ];
        let names: std::collections::BTreeSet<_> = all.iter().map(|f| f.as_str()).collect();
        assert_eq!(names.len(), all.len());
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
        let flags = &mut Vec::new();
        assert_eq!(parse_object(b"\xEF\xBB\xBF{}", flags), Ok(Map::new()));
        assert_eq!(
            parse_object(b"[1]", flags),
            Err(Rejection::NotObject("array"))
        );
        assert_eq!(
            parse_object(b"null", flags),
            Err(Rejection::NotObject("null"))
        );
        assert_eq!(
            parse_object(b"", flags).map_err(|e| e.kind()),
            Err("not_json")
        );
        assert_eq!(
            parse_object(b"\xff{}", flags).map_err(|e| e.kind()),
            Err("not_json")
        );
        assert!(flags.is_empty());
    }

    #[test]
    fn a_latin1_body_is_read_and_flagged() {
        // "Factura Nº 12, señor" in ISO-8859-1: º is 0xBA, ñ is 0xF1.
        let body = b"{\"a\":\"Factura N\xba 12, se\xf1or\"}";
        let flags = &mut Vec::new();
        let map = parse_object(body, flags).unwrap();
        assert_eq!(map["a"], "Factura Nº 12, señor");
        assert_eq!(flags, &[Flag::Latin1Body]);
        // Windows-1252's own letters (0x80 is the euro sign) too.
        let flags = &mut Vec::new();
        let map = parse_object(b"{\"a\":\"\x80 5\"}", flags).unwrap();
        assert_eq!(map["a"], "€ 5");
    }

    #[test]
    fn booleans_as_senders_write_them() {
        for yes in [
            json!(true),
            json!("true"),
            json!("TRUE "),
            json!(1),
            json!("1"),
            json!(1.0),
        ] {
            assert_eq!(boolish(&yes, "b"), Ok(true), "{yes}");
        }
        for no in [json!(false), json!("false"), json!(0), json!("0")] {
            assert_eq!(boolish(&no, "b"), Ok(false), "{no}");
        }
        for neither in [json!(2), json!("maybe"), json!([]), json!({})] {
            assert!(boolish(&neither, "b").is_err(), "{neither}");
        }
    }

    #[test]
    fn identifiers_as_integral_floats() {
        assert_eq!(unsigned(&json!(105.0), "n"), Ok(105));
        assert!(unsigned(&json!(105.5), "n").is_err());
        assert!(unsigned(&json!(-1.0), "n").is_err());
        assert!(unsigned(&json!(1e300), "n").is_err());
        assert_eq!(text_or_int(&json!(17032.0), "f"), Ok("17032".into()));
        assert!(text_or_int(&json!(1.5), "f").is_err());
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
