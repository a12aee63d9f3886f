//! Dátil (Ecuador): checks a webhook body, which is the whole receipt
//! (comprobante) with its `autorizacion` and/or `envio_sri` result, and
//! names it `comprobante.<state>`, e.g. `comprobante.autorizado`.
//!
//! The documented states (AUTORIZADO, NO AUTORIZADO, DEVUELTA) carry no
//! flag; any other (RECIBIDA, EN PROCESO...) is accepted and flagged
//! [`Flag::UnknownState`]. The receipt's id may be a string or a number.
//! A body with no receipt id at all (the doc's "Devuelto" example is only
//! `envio_sri`) is accepted, keyed by the body's SHA-256 and flagged
//! [`Flag::NoReceiptId`]. A `fecha` that cannot be read is left out and
//! flagged [`Flag::UnreadableTime`].

use super::{
    field, invalid, non_empty, parse_object, required, safe_name, text, text_or_int, to_utc, Flag,
    InvoiceStatus, Notification, Rejection,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Reconciliation: the keys, request and answer of its query API.
pub(crate) mod query;

/// Checks a Dátil body.
pub fn check(body: &[u8]) -> Result<Notification, Rejection> {
    let mut flags = Vec::new();
    let receipt = parse_object(body, &mut flags)?;
    let autorizacion = sub_object(&receipt, "autorizacion")?;
    let envio_sri = sub_object(&receipt, "envio_sri")?;
    let (source, name) = match (autorizacion, envio_sri) {
        (Some(a), _) if field(a, "estado").is_some() => (a, "autorizacion"),
        (_, Some(e)) => (e, "envio_sri"),
        (Some(a), None) => (a, "autorizacion"),
        (None, None) => return Err(Rejection::MissingField("autorizacion".into())),
    };
    let state = state(source, name, &mut flags)?;
    let id = identifier(&receipt, autorizacion)?;
    let provider_time = match field(source, "fecha").map(|v| parse_fecha(v, name)) {
        Some(Ok(time)) => Some(time),
        Some(Err(_)) => {
            flags.push(Flag::UnreadableTime);
            None
        }
        None => None,
    };
    let dedup_key = match &id {
        Some(id) => format!("datil:{id}:{state}"),
        None => {
            flags.push(Flag::NoReceiptId);
            let hash: String = Sha256::digest(body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("datil:sha256:{hash}:{state}")
        }
    };
    Ok(Notification {
        status: status_of(&state),
        event_type: format!("comprobante.{state}"),
        dedup_key,
        subject: id,
        provider_time,
        flags,
    })
}

/// The invoice's status a state (as named here) tells. The doc shows the
/// three final ones; the SRI's own words for a receipt it has received but
/// not decided on (RECIBIDA, EN PROCESO) are taken as queued, though they
/// stay flagged as undocumented.
pub(crate) fn status_of(state: &str) -> InvoiceStatus {
    match state {
        "autorizado" => InvoiceStatus::Accepted,
        "no_autorizado" | "devuelto" => InvoiceStatus::Rejected,
        "recibida" | "en_proceso" => InvoiceStatus::Queued,
        _ => InvoiceStatus::Unknown,
    }
}

/// The states the doc shows, as named here.
const STATES: &[&str] = &["autorizado", "no_autorizado", "devuelto"];

/// An optional nested object; present but not an object is invalid.
fn sub_object<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, Rejection> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(invalid(name, "expected an object")),
    }
}

/// The normalized state: lowercase, words joined by `_`, the SRI's
/// feminine "DEVUELTA" named like the others (`devuelto`).
fn state(
    source: &Map<String, Value>,
    name: &str,
    flags: &mut Vec<Flag>,
) -> Result<String, Rejection> {
    let path = format!("{name}.estado");
    let raw = non_empty(text(required(source, "estado", &path)?, &path)?, &path)?;
    let state = match safe_name(&raw).as_deref() {
        Some("devuelta") => "devuelto".to_owned(),
        Some(other) => other.to_owned(),
        None => return Err(invalid(&path, "has no letter or digit")),
    };
    if !STATES.contains(&state.as_str()) {
        flags.push(Flag::UnknownState);
    }
    Ok(state)
}

/// The receipt's id, else its `clave_acceso`, else the authorization
/// number; `None` when the body carries none of them.
fn identifier(
    receipt: &Map<String, Value>,
    autorizacion: Option<&Map<String, Value>>,
) -> Result<Option<String>, Rejection> {
    let candidates = [
        (field(receipt, "id"), "id"),
        (field(receipt, "clave_acceso"), "clave_acceso"),
        (
            autorizacion.and_then(|a| field(a, "numero")),
            "autorizacion.numero",
        ),
    ];
    match candidates.into_iter().find(|(v, _)| v.is_some()) {
        Some((Some(v), path)) => non_empty(text_or_int(v, path)?, path).map(Some),
        _ => Ok(None),
    }
}

fn parse_fecha(value: &Value, name: &str) -> Result<OffsetDateTime, Rejection> {
    let path = &format!("{name}.fecha");
    let s = text(value, path)?;
    let t = OffsetDateTime::parse(&s, &Rfc3339)
        .map_err(|e| invalid(path, format!("expected an RFC 3339 date: {e}")))?;
    to_utc(t, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    /// A receipt as Dátil sends it, around one of the doc's fragments.
    fn receipt(result_key: &str, result: Value) -> Value {
        let mut r = json!({
            "id": "abcde1234567890abcde1234",
            "secuencial": "1765",
            "fecha_emision": "2015-09-28T14:00:00-05:00",
            "clave_acceso": "2809201501099187643500110010010000017651234567810",
            "ambiente": 1,
            "tipo_emision": 1,
            "moneda": "USD",
            "emisor": {"ruc": "0991876435001", "razon_social": "Dátil Cía. Ltda."},
            "comprador": {"razon_social": "Juan Pérez", "identificacion": "0921091010", "tipo_identificacion": "05"},
            "totales": {"total_sin_impuestos": 30.84, "importe_total": 34.54},
        });
        r[result_key] = result;
        r
    }

    fn autorizado() -> Value {
        receipt(
            "autorizacion",
            json!({
                "numero": "2907201515283909927125540017656314390",
                "fecha": "2015-09-28T19:28:56.782Z",
                "estado": "AUTORIZADO",
                "mensajes": []
            }),
        )
    }

    fn no_autorizado() -> Value {
        receipt(
            "autorizacion",
            json!({
                "numero": "2907201515283909927125540017656314390",
                "fecha": "2015-09-28T19:28:56.782Z",
                "estado": "NO AUTORIZADO",
                "mensajes": [{
                    "identificador": 46,
                    "mensaje": "RUC NO EXISTE",
                    "informacion_adicional": "El RUC debe tener 13 dígitos.",
                    "tipo": "ERROR"
                }]
            }),
        )
    }

    fn devuelto() -> Value {
        receipt(
            "envio_sri",
            json!({
                "fecha": "2015-09-28T19:28:56.782Z",
                "estado": "DEVUELTA",
                "mensajes": [{
                    "identificador": 45,
                    "mensaje": "ERROR EN DIFERENCIAS",
                    "informacion_adicional": "El total 34.54 no coincide con el calculado 34.65",
                    "tipo": "ERROR"
                }, {
                    "identificador": 69,
                    "mensaje": "IDENTIFICACION DEL RECEPTOR",
                    "informacion_adicional": "La cédula 0921091010 no tiene cumple con la validación del dígito verificador",
                    "tipo": "ADVERTENCIA"
                }]
            }),
        )
    }

    fn run(v: &Value) -> Result<Notification, Rejection> {
        check(&serde_json::to_vec(v).unwrap())
    }

    fn invalid_field(r: Result<Notification, Rejection>) -> String {
        match r {
            Err(Rejection::InvalidField { field, .. }) => field,
            other => panic!("expected InvalidField, got {other:?}"),
        }
    }

    const DOC_TIME: OffsetDateTime = datetime!(2015-09-28 19:28:56.782 UTC);

    #[test]
    fn doc_autorizado() {
        let n = run(&autorizado()).unwrap();
        assert_eq!(
            n,
            Notification {
                event_type: "comprobante.autorizado".into(),
                subject: Some("abcde1234567890abcde1234".into()),
                dedup_key: "datil:abcde1234567890abcde1234:autorizado".into(),
                provider_time: Some(DOC_TIME),
                status: InvoiceStatus::Accepted,
                flags: vec![],
            }
        );
    }

    #[test]
    fn doc_no_autorizado() {
        let n = run(&no_autorizado()).unwrap();
        assert_eq!(n.event_type, "comprobante.no_autorizado");
        assert_eq!(n.dedup_key, "datil:abcde1234567890abcde1234:no_autorizado");
        assert_eq!(n.provider_time, Some(DOC_TIME));
    }

    #[test]
    fn doc_devuelto() {
        let n = run(&devuelto()).unwrap();
        assert_eq!(n.event_type, "comprobante.devuelto");
        assert_eq!(n.dedup_key, "datil:abcde1234567890abcde1234:devuelto");
        assert_eq!(n.provider_time, Some(DOC_TIME));
    }

    #[test]
    fn autorizacion_wins_over_envio_sri() {
        let mut v = autorizado();
        v["envio_sri"] = json!({"estado": "RECIBIDA", "fecha": "2015-09-28T19:00:00Z"});
        let n = run(&v).unwrap();
        assert_eq!(n.event_type, "comprobante.autorizado");
        assert_eq!(n.provider_time, Some(DOC_TIME));
    }

    #[test]
    fn other_states_are_normalized_and_flagged() {
        for (estado, named) in [
            ("En Proceso", "en_proceso"),
            ("RECIBIDA", "recibida"),
            ("DEVOLUCIÓN", "devoluci_n"),
        ] {
            let mut v = autorizado();
            v["autorizacion"]["estado"] = json!(estado);
            let n = run(&v).unwrap();
            assert_eq!(n.event_type, format!("comprobante.{named}"));
            assert_eq!(n.flags, [Flag::UnknownState]);
        }
    }

    #[test]
    fn every_documented_state_in_a_full_receipt_carries_no_flag() {
        for v in [autorizado(), no_autorizado(), devuelto()] {
            assert!(run(&v).unwrap().flags.is_empty());
        }
    }

    #[test]
    fn the_doc_s_devuelto_example_alone_is_accepted_keyed_by_its_hash() {
        // The doc's "Devuelto" fragment exactly, with nothing around it.
        let body = r#"{
  "envio_sri": {
    "fecha": "2015-09-28T19:28:56.782Z",
    "estado": "DEVUELTA",
    "mensajes": [{
      "identificador": 45,
      "mensaje": "ERROR EN DIFERENCIAS",
      "informacion_adicional": "El total 34.54 no coincide con el calculado 34.65",
      "tipo": "ERROR"
    }, {
      "identificador": 69,
      "mensaje": "IDENTIFICACION DEL RECEPTOR",
      "informacion_adicional": "La cédula 0921091010 no tiene cumple con la validación del dígito verificador",
      "tipo": "ADVERTENCIA"
    }]
  }
}"#;
        let n = check(body.as_bytes()).unwrap();
        assert_eq!(n.event_type, "comprobante.devuelto");
        assert_eq!(n.subject, None);
        assert_eq!(n.flags, [Flag::NoReceiptId]);
        assert!(n.dedup_key.starts_with("datil:sha256:") && n.dedup_key.ends_with(":devuelto"));
        assert_eq!(n.provider_time, Some(DOC_TIME));
        // The same bytes again are the same notification.
        assert_eq!(check(body.as_bytes()).unwrap().dedup_key, n.dedup_key);
    }

    #[test]
    fn a_numeric_id_is_taken_as_text() {
        let mut v = autorizado();
        v["id"] = json!(42);
        let n = run(&v).unwrap();
        assert_eq!(n.dedup_key, "datil:42:autorizado");
        assert!(n.flags.is_empty());
    }

    #[test]
    fn a_windows_1252_receipt_is_taken_and_flagged() {
        let body = b"{\"id\":\"r1\",\"comprador\":{\"razon_social\":\"Juan P\xe9rez\"},\"autorizacion\":{\"estado\":\"AUTORIZADO\",\"numero\":\"1\"}}";
        let n = check(body).unwrap();
        assert_eq!(n.dedup_key, "datil:r1:autorizado");
        assert_eq!(n.flags, [Flag::Latin1Body]);
    }

    #[test]
    fn identifier_falls_back_and_time_is_converted() {
        let mut v = autorizado();
        v.as_object_mut().unwrap().remove("id");
        let clave = "2809201501099187643500110010010000017651234567810";
        assert_eq!(run(&v).unwrap().subject.as_deref(), Some(clave));
        v.as_object_mut().unwrap().remove("clave_acceso");
        v["autorizacion"]["fecha"] = json!("2015-09-28T14:28:56-05:00");
        let n = run(&v).unwrap();
        assert_eq!(
            n.dedup_key,
            "datil:2907201515283909927125540017656314390:autorizado"
        );
        assert_eq!(n.provider_time, Some(datetime!(2015-09-28 19:28:56 UTC)));
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(check(b"{").unwrap_err().kind(), "not_json");
        assert_eq!(check(b"[]"), Err(Rejection::NotObject("array")));
    }

    #[test]
    fn rejects_missing_fields() {
        let bare = receipt("x", json!(null));
        assert_eq!(
            run(&bare),
            Err(Rejection::MissingField("autorizacion".into()))
        );
        let mut v = devuelto();
        v["envio_sri"].as_object_mut().unwrap().remove("estado");
        assert_eq!(
            run(&v),
            Err(Rejection::MissingField("envio_sri.estado".into()))
        );
    }

    #[test]
    fn rejects_wrong_types() {
        let mut v = autorizado();
        v["autorizacion"] = json!("AUTORIZADO");
        assert_eq!(invalid_field(run(&v)), "autorizacion");
        let mut v = autorizado();
        v["id"] = json!({"a": 1});
        assert_eq!(invalid_field(run(&v)), "id");
        let mut v = autorizado();
        v["autorizacion"]["estado"] = json!("");
        assert_eq!(invalid_field(run(&v)), "autorizacion.estado");
        let mut v = autorizado();
        v["autorizacion"]["estado"] = json!("¿?");
        assert_eq!(invalid_field(run(&v)), "autorizacion.estado");
    }

    #[test]
    fn an_unreadable_date_is_left_out_and_flagged() {
        let mut v = autorizado();
        v["autorizacion"]["fecha"] = json!("28/09/2015 19:28:56");
        let n = run(&v).unwrap();
        assert_eq!(
            (n.provider_time, n.flags),
            (None, vec![Flag::UnreadableTime])
        );
        let mut v = devuelto();
        v["envio_sri"]["fecha"] = json!("9999-12-31T23:59:59-05:00");
        assert_eq!(run(&v).unwrap().flags, [Flag::UnreadableTime]);
    }

    // === The status of each documented state: one row each of docs/receiving-and-forwarding.md's status table ===

    #[test]
    fn status_autorizado_is_accepted() {
        assert_eq!(run(&autorizado()).unwrap().status, InvoiceStatus::Accepted);
    }

    #[test]
    fn status_no_autorizado_is_rejected() {
        assert_eq!(
            run(&no_autorizado()).unwrap().status,
            InvoiceStatus::Rejected
        );
    }

    #[test]
    fn status_devuelta_is_rejected() {
        assert_eq!(run(&devuelto()).unwrap().status, InvoiceStatus::Rejected);
    }

    #[test]
    fn status_recibida_or_en_proceso_is_queued() {
        for estado in ["RECIBIDA", "EN PROCESO"] {
            let mut v = devuelto();
            v["envio_sri"]["estado"] = json!(estado);
            let n = run(&v).unwrap();
            assert_eq!(n.status, InvoiceStatus::Queued, "{estado}");
            assert_eq!(n.flags, [Flag::UnknownState], "{estado}");
        }
    }

    #[test]
    fn status_of_any_other_state_is_unknown() {
        let mut v = autorizado();
        v["autorizacion"]["estado"] = json!("ANULADO");
        assert_eq!(run(&v).unwrap().status, InvoiceStatus::Unknown);
    }
}
