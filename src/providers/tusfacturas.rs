//! TusFacturas (Argentina): checks its webhook body
//! (`creado`, `evento`, `recurso`, `external_reference`, `intento`, `msg`,
//! `hook_id`) and names it `{recurso}.{evento}`, e.g. `facturacion.emitido`.

use super::{
    event_name, field, invalid, json_type, non_empty, parse_object, required, text, text_or_int,
    to_utc, Notification, Rejection,
};
use serde_json::{Map, Value};
use time::macros::{format_description, offset};
use time::{OffsetDateTime, PrimitiveDateTime};

/// Checks a TusFacturas body.
pub fn check(body: &[u8]) -> Result<Notification, Rejection> {
    let obj = parse_object(body)?;
    let recurso = name_part(&obj, "recurso")?;
    let evento = name_part(&obj, "evento")?;
    let external_reference = text_or_int(
        required(&obj, "external_reference", "external_reference")?,
        "external_reference",
    )?;
    let hook_id = non_empty(
        text_or_int(required(&obj, "hook_id", "hook_id")?, "hook_id")?,
        "hook_id",
    )?;
    check_intento(&obj)?;
    check_msg(&obj)?;
    let provider_time = field(&obj, "creado").map(parse_creado).transpose()?;

    let event_type = format!("{recurso}.{evento}");
    Ok(Notification {
        // `intento` stays out of the key: retries must dedup to the same key.
        dedup_key: format!("tusfacturas:{hook_id}:{event_type}"),
        event_type,
        // An empty reference is the sender's choice, not a broken body.
        subject: Some(external_reference).filter(|s| !s.is_empty()),
        provider_time,
    })
}

/// `recurso` / `evento`: lowercased, then limited like every event name.
fn name_part(obj: &Map<String, Value>, name: &str) -> Result<String, Rejection> {
    let s = non_empty(text(required(obj, name, name)?, name)?, name)?;
    event_name(s.to_lowercase(), name)
}

/// `intento`, if present, is a positive integer (1 on the first send).
fn check_intento(obj: &Map<String, Value>) -> Result<(), Rejection> {
    match field(obj, "intento") {
        None => Ok(()),
        Some(v) if v.as_u64().is_some_and(|n| n >= 1) => Ok(()),
        Some(_) => Err(invalid("intento", "expected a positive integer")),
    }
}

/// `msg`, if present, is the (possibly empty) list of errors.
fn check_msg(obj: &Map<String, Value>) -> Result<(), Rejection> {
    match field(obj, "msg") {
        None | Some(Value::Array(_)) => Ok(()),
        Some(other) => Err(invalid(
            "msg",
            format!("expected an array, got {}", json_type(other)),
        )),
    }
}

/// `creado` is `dd/mm/yyyy HH:MM:SS` in Argentina time, fixed UTC−3 (no DST).
fn parse_creado(value: &Value) -> Result<OffsetDateTime, Rejection> {
    let s = text(value, "creado")?;
    let format = format_description!("[day]/[month]/[year] [hour]:[minute]:[second]");
    let local = PrimitiveDateTime::parse(&s, format)
        .map_err(|e| invalid("creado", format!("expected dd/mm/yyyy HH:MM:SS: {e}")))?;
    to_utc(local.assume_offset(offset!(-3)), "creado")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    /// The doc's example, verbatim.
    const DOC_EXAMPLE: &str = r#"{
	"creado": "18/03/2022 15:58:11",
	"evento": "encolado",
	"recurso": "facturacion",
	"external_reference": "17032",
	"intento": 1,
	"msg": [],
	"hook_id": "xxxxx"
} "#;

    fn doc() -> Value {
        serde_json::from_str(DOC_EXAMPLE).unwrap()
    }

    fn with(key: &str, value: Value) -> Result<Notification, Rejection> {
        let mut v = doc();
        v[key] = value;
        check(&serde_json::to_vec(&v).unwrap())
    }

    fn without(key: &str) -> Result<Notification, Rejection> {
        let mut v = doc();
        v.as_object_mut().unwrap().remove(key);
        check(&serde_json::to_vec(&v).unwrap())
    }

    fn invalid_field(r: Result<Notification, Rejection>) -> String {
        match r {
            Err(Rejection::InvalidField { field, .. }) => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    #[test]
    fn doc_example() {
        let n = check(DOC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            n,
            Notification {
                event_type: "facturacion.encolado".into(),
                subject: Some("17032".into()),
                dedup_key: "tusfacturas:xxxxx:facturacion.encolado".into(),
                provider_time: Some(datetime!(2022-03-18 18:58:11 UTC)),
            }
        );
    }

    #[test]
    fn known_and_unknown_eventos() {
        for e in ["encolado", "emitido", "error", "eliminado", "anulado"] {
            assert_eq!(
                with("evento", json!(e)).unwrap().event_type,
                format!("facturacion.{e}")
            );
        }
        assert_eq!(
            with("evento", json!("EMITIDO")).unwrap().event_type,
            "facturacion.emitido"
        );
    }

    #[test]
    fn retry_keeps_key_and_other_evento_changes_it() {
        let first = check(DOC_EXAMPLE.as_bytes()).unwrap().dedup_key;
        assert_eq!(with("intento", json!(2)).unwrap().dedup_key, first);
        assert_eq!(with("intento", json!(5)).unwrap().dedup_key, first);
        assert_ne!(with("evento", json!("emitido")).unwrap().dedup_key, first);
    }

    #[test]
    fn integer_ids_and_optional_fields() {
        let n = with("hook_id", json!(123)).unwrap();
        assert_eq!(n.dedup_key, "tusfacturas:123:facturacion.encolado");
        assert_eq!(
            with("external_reference", json!(17032))
                .unwrap()
                .subject
                .as_deref(),
            Some("17032")
        );
        assert_eq!(with("external_reference", json!("")).unwrap().subject, None);
        assert_eq!(without("creado").unwrap().provider_time, None);
        assert!(without("intento").is_ok() && without("msg").is_ok());
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(check(b"nope").unwrap_err().kind(), "not_json");
        assert_eq!(check(b"[]"), Err(Rejection::NotObject("array")));
    }

    #[test]
    fn rejects_missing_required_fields() {
        for key in ["recurso", "evento", "external_reference", "hook_id"] {
            assert_eq!(without(key), Err(Rejection::MissingField(key.into())));
        }
    }

    #[test]
    fn rejects_wrong_types() {
        assert_eq!(invalid_field(with("evento", json!(""))), "evento");
        assert_eq!(invalid_field(with("evento", json!("emi tido"))), "evento");
        assert_eq!(invalid_field(with("recurso", json!(7))), "recurso");
        assert_eq!(invalid_field(with("hook_id", json!(""))), "hook_id");
        assert_eq!(invalid_field(with("hook_id", json!(1.5))), "hook_id");
        assert_eq!(
            invalid_field(with("external_reference", json!({}))),
            "external_reference"
        );
        assert_eq!(invalid_field(with("intento", json!(0))), "intento");
        assert_eq!(invalid_field(with("intento", json!("2"))), "intento");
        assert_eq!(invalid_field(with("msg", json!("boom"))), "msg");
    }

    #[test]
    fn rejects_bad_dates() {
        for bad in [
            "2022-03-18 15:58:11",
            "31/02/2022 10:00:00",
            "18/03/2022",
            "18/03/2022 25:00:00",
        ] {
            assert_eq!(invalid_field(with("creado", json!(bad))), "creado");
        }
        assert_eq!(invalid_field(with("creado", json!(20220318))), "creado");
    }

    #[test]
    fn date_at_the_edge_of_the_range_is_refused_not_panicked() {
        assert_eq!(
            invalid_field(with("creado", json!("31/12/9999 23:00:00"))),
            "creado"
        );
    }
}
