//! The `generic` provider: any JSON object, with the dedup key, event type
//! and subject found where the source's config ([`GenericRules`]) says.

use super::{
    invalid, json_type, non_empty, parse_object, text, InvoiceStatus, Notification, Rejection,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where a generic source keeps the parts of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GenericRules {
    /// JSON pointer (RFC 6901, e.g. "/id") to the dedup key
    pub dedup_pointer: Option<String>,
    /// header whose value is the dedup key (used when dedup_pointer is None)
    pub dedup_header: Option<http::HeaderName>,
    /// JSON pointer to the event type; else `default_event`
    pub event_pointer: Option<String>,
    /// JSON pointer to the subject
    pub subject_pointer: Option<String>,
    /// event type when there is no event_pointer (config default "generic";
    /// an empty one also means "generic")
    pub default_event: String,
}

/// Checks a body against a generic source's rules.
pub fn check(
    rules: &GenericRules,
    body: &[u8],
    headers: &http::HeaderMap,
) -> Result<Notification, Rejection> {
    let mut flags = Vec::new();
    let doc = Value::Object(parse_object(body, &mut flags)?);
    Ok(Notification {
        dedup_key: dedup_key(rules, &doc, body, headers)?,
        event_type: event_type(rules, &doc)?,
        subject: subject(rules, &doc)?,
        provider_time: None,
        // A generic body has no vocabulary the relay knows.
        status: InvoiceStatus::Unknown,
        flags,
    })
}

fn dedup_key(
    rules: &GenericRules,
    doc: &Value,
    body: &[u8],
    headers: &http::HeaderMap,
) -> Result<String, Rejection> {
    if let Some(ptr) = &rules.dedup_pointer {
        let value = at(doc, ptr).ok_or_else(|| Rejection::MissingField(ptr.clone()))?;
        return Ok(format!(
            "generic:ptr:{}",
            non_empty(scalar(value, ptr)?, ptr)?
        ));
    }
    if let Some(name) = &rules.dedup_header {
        return Ok(format!("generic:hdr:{}", header(headers, name)?));
    }
    // No id anywhere: the body itself (as received, bytes) is the identity.
    Ok(format!("generic:sha256:{}", hex(&Sha256::digest(body))))
}

/// A header's value; missing, empty, not UTF-8 or with control characters
/// all count as missing, as the source did not send a usable id.
fn header(headers: &http::HeaderMap, name: &http::HeaderName) -> Result<String, Rejection> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
        .map(str::to_owned)
        .ok_or_else(|| Rejection::MissingField(format!("header {name}")))
}

fn event_type(rules: &GenericRules, doc: &Value) -> Result<String, Rejection> {
    match &rules.event_pointer {
        Some(ptr) => {
            let value = at(doc, ptr).ok_or_else(|| Rejection::MissingField(ptr.clone()))?;
            non_empty(text(value, ptr)?, ptr)
        }
        None if rules.default_event.is_empty() => Ok("generic".to_owned()),
        None => Ok(rules.default_event.clone()),
    }
}

fn subject(rules: &GenericRules, doc: &Value) -> Result<Option<String>, Rejection> {
    let Some(ptr) = &rules.subject_pointer else {
        return Ok(None);
    };
    let subject = at(doc, ptr).map(|v| scalar(v, ptr)).transpose()?;
    Ok(subject.filter(|s| !s.is_empty()))
}

/// The value at a JSON pointer; `null` counts as absent.
fn at<'a>(doc: &'a Value, ptr: &str) -> Option<&'a Value> {
    doc.pointer(ptr).filter(|v| !v.is_null())
}

/// A string, or a number rendered as JSON.
fn scalar(value: &Value, ptr: &str) -> Result<String, Rejection> {
    match value {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(_) => text(value, ptr),
        other => Err(invalid(
            ptr,
            format!("expected a string or a number, got {}", json_type(other)),
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        br#"{"id": "evt_1", "n": 42, "type": "invoice.paid", "data": {"invoice": "F001-7"}}"#;

    fn rules() -> GenericRules {
        GenericRules {
            default_event: "generic".into(),
            ..GenericRules::default()
        }
    }

    fn no_headers() -> http::HeaderMap {
        http::HeaderMap::new()
    }

    #[test]
    fn defaults_hash_the_body() {
        let n = check(&rules(), b"{}", &no_headers()).unwrap();
        // SHA-256 of "{}".
        let sha = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        assert_eq!(
            n,
            Notification {
                event_type: "generic".into(),
                subject: None,
                dedup_key: format!("generic:sha256:{sha}"),
                provider_time: None,
                status: InvoiceStatus::Unknown,
                flags: vec![],
            }
        );
        let empty_default = GenericRules::default();
        assert_eq!(
            check(&empty_default, b"{}", &no_headers())
                .unwrap()
                .event_type,
            "generic"
        );
    }

    #[test]
    fn pointers() {
        let r = GenericRules {
            dedup_pointer: Some("/id".into()),
            event_pointer: Some("/type".into()),
            subject_pointer: Some("/data/invoice".into()),
            ..rules()
        };
        let n = check(&r, BODY, &no_headers()).unwrap();
        assert_eq!(n.dedup_key, "generic:ptr:evt_1");
        assert_eq!(n.event_type, "invoice.paid");
        assert_eq!(n.subject.as_deref(), Some("F001-7"));
        let r = GenericRules {
            dedup_pointer: Some("/n".into()),
            subject_pointer: Some("/n".into()),
            ..rules()
        };
        let n = check(&r, BODY, &no_headers()).unwrap();
        assert_eq!(
            (n.dedup_key.as_str(), n.subject.as_deref()),
            ("generic:ptr:42", Some("42"))
        );
    }

    #[test]
    fn header_key_is_used_when_no_pointer() {
        let r = GenericRules {
            dedup_header: Some(http::HeaderName::from_static("x-event-id")),
            ..rules()
        };
        let mut headers = no_headers();
        headers.insert("x-event-id", http::HeaderValue::from_static("abc-1"));
        assert_eq!(
            check(&r, BODY, &headers).unwrap().dedup_key,
            "generic:hdr:abc-1"
        );
        assert_eq!(
            check(&r, BODY, &no_headers()),
            Err(Rejection::MissingField("header x-event-id".into()))
        );
        let mut bad = no_headers();
        bad.insert(
            "x-event-id",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(check(&r, BODY, &bad).unwrap_err().kind(), "missing_field");
    }

    #[test]
    fn absent_subject_is_none() {
        let r = GenericRules {
            subject_pointer: Some("/nope".into()),
            ..rules()
        };
        assert_eq!(check(&r, BODY, &no_headers()).unwrap().subject, None);
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(
            check(&rules(), b"{,}", &no_headers()).unwrap_err().kind(),
            "not_json"
        );
        assert_eq!(
            check(&rules(), b"[{}]", &no_headers()),
            Err(Rejection::NotObject("array"))
        );
        assert_eq!(
            check(&rules(), b"7", &no_headers()),
            Err(Rejection::NotObject("number"))
        );
    }

    #[test]
    fn rejects_missing_and_wrong_types() {
        let missing = |r: GenericRules| check(&r, BODY, &no_headers());
        let dedup = |p: &str| GenericRules {
            dedup_pointer: Some(p.into()),
            ..rules()
        };
        let event = |p: &str| GenericRules {
            event_pointer: Some(p.into()),
            ..rules()
        };
        let subject = |p: &str| GenericRules {
            subject_pointer: Some(p.into()),
            ..rules()
        };
        assert_eq!(
            missing(dedup("/nope")),
            Err(Rejection::MissingField("/nope".into()))
        );
        assert_eq!(
            missing(event("/nope")),
            Err(Rejection::MissingField("/nope".into()))
        );
        assert_eq!(missing(dedup("/data")).unwrap_err().kind(), "invalid_field");
        assert_eq!(missing(event("/n")).unwrap_err().kind(), "invalid_field");
        assert_eq!(
            missing(subject("/data")).unwrap_err().kind(),
            "invalid_field"
        );
        let empty_type = br#"{"type": ""}"#;
        assert_eq!(
            check(&event("/type"), empty_type, &no_headers())
                .unwrap_err()
                .kind(),
            "invalid_field"
        );
    }
}
