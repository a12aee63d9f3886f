//! TusFacturas (Argentina): checks its webhook body
//! (`creado`, `evento`, `recurso`, `external_reference`, `intento`, `msg`,
//! `hook_id`) and names it `{recurso}.{evento}`, e.g. `facturacion.emitido`.
//!
//! What it needs is `recurso`, `evento` and `hook_id` (the dedup key) and
//! `external_reference` (the subject). The rest is informational and taken
//! in any form: `intento` as a number or a string, `msg` as a list or a
//! text. A `recurso` or `evento` the doc does not list (or in another case)
//! is accepted, named in lowercase with other characters as `_`, and
//! flagged [`Flag::UnknownResource`] / [`Flag::UnknownEvent`]. A `creado`
//! that cannot be read is left out and flagged [`Flag::UnreadableTime`].

#[cfg(test)]
use super::MAX_NAME;
use super::{
    field, invalid, non_empty, parse_object, required, safe_name, text, text_or_int, to_utc, Flag,
    InvoiceStatus, Notification, Rejection,
};
use serde_json::{Map, Value};
use time::macros::{format_description, offset};
use time::{OffsetDateTime, PrimitiveDateTime};

/// Reconciliation: the keys, request and answer of its query API.
pub(crate) mod query;

/// Checks a TusFacturas body.
pub fn check(body: &[u8]) -> Result<Notification, Rejection> {
    let mut flags = Vec::new();
    let obj = parse_object(body, &mut flags)?;
    let recurso = name_part(&obj, "recurso", RECURSOS, Flag::UnknownResource, &mut flags)?;
    let evento = name_part(&obj, "evento", EVENTOS, Flag::UnknownEvent, &mut flags)?;
    let external_reference = text_or_int(
        required(&obj, "external_reference", "external_reference")?,
        "external_reference",
    )?;
    let hook_id = non_empty(
        text_or_int(required(&obj, "hook_id", "hook_id")?, "hook_id")?,
        "hook_id",
    )?;
    let provider_time = match field(&obj, "creado").map(parse_creado) {
        Some(Ok(time)) => Some(time),
        Some(Err(_)) => {
            flags.push(Flag::UnreadableTime);
            None
        }
        None => None,
    };

    let event_type = format!("{recurso}.{evento}");
    Ok(Notification {
        status: status_of(&recurso, &evento),
        // `intento` stays out of the key: retries must dedup to the same key.
        dedup_key: format!("tusfacturas:{hook_id}:{event_type}"),
        event_type,
        // An empty reference is the sender's choice, not a broken body.
        subject: Some(external_reference).filter(|s| !s.is_empty()),
        provider_time,
        flags,
    })
}

/// The invoice's status a documented event tells; `unknown` for a
/// resource or an event the doc does not list.
pub(crate) fn status_of(recurso: &str, evento: &str) -> InvoiceStatus {
    match (recurso, evento) {
        ("facturacion", "encolado") => InvoiceStatus::Queued,
        ("facturacion", "emitido") => InvoiceStatus::Accepted,
        ("facturacion", "error") => InvoiceStatus::Rejected,
        ("facturacion", "eliminado") => InvoiceStatus::Deleted,
        _ => InvoiceStatus::Unknown,
    }
}

/// The resources and events the doc lists.
const RECURSOS: &[&str] = &["facturacion"];
const EVENTOS: &[&str] = &["encolado", "emitido", "error", "eliminado"];

/// `recurso` / `evento`: a documented value as it is; anything else
/// named safely ([`safe_name`]) and flagged.
fn name_part(
    obj: &Map<String, Value>,
    name: &str,
    known: &[&str],
    flag: Flag,
    flags: &mut Vec<Flag>,
) -> Result<String, Rejection> {
    let s = non_empty(text(required(obj, name, name)?, name)?, name)?;
    if known.contains(&s.as_str()) {
        return Ok(s);
    }
    let safe = safe_name(&s).ok_or_else(|| invalid(name, "has no letter or digit"))?;
    flags.push(flag);
    Ok(safe)
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
                status: InvoiceStatus::Queued,
                flags: vec![],
            }
        );
    }

    #[test]
    fn documented_eventos_carry_no_flag() {
        for e in ["encolado", "emitido", "error", "eliminado"] {
            let n = with("evento", json!(e)).unwrap();
            assert_eq!(n.event_type, format!("facturacion.{e}"));
            assert!(n.flags.is_empty(), "{e}");
        }
    }

    #[test]
    fn unknown_evento_and_recurso_are_accepted_with_a_flag() {
        let n = with("evento", json!("anulado")).unwrap();
        assert_eq!(n.event_type, "facturacion.anulado");
        assert_eq!(n.flags, [Flag::UnknownEvent]);
        // Another case is not silently taken as the documented value.
        let n = with("evento", json!("EMITIDO")).unwrap();
        assert_eq!(n.event_type, "facturacion.emitido");
        assert_eq!(n.flags, [Flag::UnknownEvent]);
        let n = with("evento", json!("Nota de Crédito")).unwrap();
        assert_eq!(n.event_type, "facturacion.nota_de_cr_dito");
        let n = check(
            br#"{"creado":"18/03/2022 15:58:11","evento":"emitido","recurso":"remitos","external_reference":"17032","intento":1,"msg":[],"hook_id":"xxxxx"}"#,
        )
        .unwrap();
        assert_eq!(n.event_type, "remitos.emitido");
        assert_eq!(n.flags, [Flag::UnknownResource]);
        let long = with("evento", json!("x".repeat(500))).unwrap();
        assert_eq!(long.event_type.len(), "facturacion.".len() + MAX_NAME);
    }

    #[test]
    fn intento_as_a_string_and_msg_as_text_are_taken() {
        // The exact payloads: `intento` quoted, `msg` a sentence.
        let quoted = br#"{"creado":"18/03/2022 15:58:11","evento":"error","recurso":"facturacion","external_reference":"17032","intento":"2","msg":"El CUIT del receptor no es valido","hook_id":"xxxxx"}"#;
        let n = check(quoted).unwrap();
        assert_eq!(n.dedup_key, "tusfacturas:xxxxx:facturacion.error");
        assert!(n.flags.is_empty());
        for intento in [json!(0), json!(2), json!("2"), json!(2.0), json!("x")] {
            assert!(with("intento", intento.clone()).is_ok(), "{intento}");
        }
        for msg in [json!(["a"]), json!("boom"), json!({"error": "x"}), json!(7)] {
            assert!(with("msg", msg.clone()).is_ok(), "{msg}");
        }
    }

    #[test]
    fn retry_keeps_key_and_other_evento_changes_it() {
        let first = check(DOC_EXAMPLE.as_bytes()).unwrap().dedup_key;
        assert_eq!(with("intento", json!(2)).unwrap().dedup_key, first);
        assert_eq!(with("intento", json!("5")).unwrap().dedup_key, first);
        assert_ne!(with("evento", json!("emitido")).unwrap().dedup_key, first);
    }

    #[test]
    fn integer_ids_and_optional_fields() {
        let n = with("hook_id", json!(123)).unwrap();
        assert_eq!(n.dedup_key, "tusfacturas:123:facturacion.encolado");
        assert_eq!(
            with("hook_id", json!(123.0)).unwrap().dedup_key,
            n.dedup_key
        );
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
        let extra = with("cuit", json!("20-12345678-9")).unwrap();
        assert!(extra.flags.is_empty());
    }

    #[test]
    fn a_latin1_body_is_taken_and_flagged() {
        // external_reference "Nº 17032" in ISO-8859-1 (º is 0xBA).
        let body = b"{\"creado\":\"18/03/2022 15:58:11\",\"evento\":\"emitido\",\"recurso\":\"facturacion\",\"external_reference\":\"N\xba 17032\",\"intento\":1,\"msg\":[],\"hook_id\":\"h1\"}";
        let n = check(body).unwrap();
        assert_eq!(n.subject.as_deref(), Some("Nº 17032"));
        assert_eq!(n.flags, [Flag::Latin1Body]);
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
    fn rejects_what_cannot_be_a_notification() {
        assert_eq!(invalid_field(with("evento", json!(""))), "evento");
        assert_eq!(invalid_field(with("evento", json!("!!"))), "evento");
        assert_eq!(invalid_field(with("evento", json!("a\nb"))), "evento");
        assert_eq!(invalid_field(with("recurso", json!(7))), "recurso");
        assert_eq!(invalid_field(with("hook_id", json!(""))), "hook_id");
        assert_eq!(invalid_field(with("hook_id", json!(1.5))), "hook_id");
        assert_eq!(
            invalid_field(with("external_reference", json!({}))),
            "external_reference"
        );
    }

    #[test]
    fn an_unreadable_date_is_left_out_and_flagged() {
        for bad in [
            json!("2022-03-18 15:58:11"),
            json!("31/02/2022 10:00:00"),
            json!("18/03/2022"),
            json!("18/03/2022 25:00:00"),
            json!(20220318),
            // At the edge of the supported range: refused, not panicked.
            json!("31/12/9999 23:00:00"),
        ] {
            let n = with("creado", bad.clone()).unwrap();
            assert_eq!(n.provider_time, None, "{bad}");
            assert_eq!(n.flags, [Flag::UnreadableTime], "{bad}");
        }
    }

    // === The status of each documented event: one row each of docs/receiving-and-forwarding.md's status table ===

    fn status_of_evento(evento: &str) -> InvoiceStatus {
        with("evento", json!(evento)).unwrap().status
    }

    #[test]
    fn status_encolado_is_queued() {
        assert_eq!(status_of_evento("encolado"), InvoiceStatus::Queued);
    }

    #[test]
    fn status_emitido_is_accepted() {
        assert_eq!(status_of_evento("emitido"), InvoiceStatus::Accepted);
    }

    #[test]
    fn status_error_is_rejected() {
        assert_eq!(status_of_evento("error"), InvoiceStatus::Rejected);
    }

    #[test]
    fn status_eliminado_is_deleted() {
        assert_eq!(status_of_evento("eliminado"), InvoiceStatus::Deleted);
    }

    #[test]
    fn status_of_an_undocumented_event_or_resource_is_unknown() {
        assert_eq!(status_of_evento("anulado"), InvoiceStatus::Unknown);
        // Another case is read as the documented word (and flagged).
        assert_eq!(status_of_evento("EMITIDO"), InvoiceStatus::Accepted);
        let remito = with("recurso", json!("remitos")).unwrap();
        assert_eq!(remito.status, InvoiceStatus::Unknown);
    }
}
