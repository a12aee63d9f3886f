//! Dátil (Ecuador): checks a webhook body, which is the whole receipt
//! (comprobante) with its `autorizacion` and/or `envio_sri` result, and
//! names it `comprobante.<state>`, e.g. `comprobante.autorizado`.

use super::{
    event_name, field, invalid, non_empty, parse_object, required, text, to_utc, Notification,
    Rejection,
};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Checks a Dátil body.
pub fn check(body: &[u8]) -> Result<Notification, Rejection> {
    let receipt = parse_object(body)?;
    let autorizacion = sub_object(&receipt, "autorizacion")?;
    let envio_sri = sub_object(&receipt, "envio_sri")?;
    let (source, name) = match (autorizacion, envio_sri) {
        (Some(a), _) if field(a, "estado").is_some() => (a, "autorizacion"),
        (_, Some(e)) => (e, "envio_sri"),
        (Some(a), None) => (a, "autorizacion"),
        (None, None) => return Err(Rejection::MissingField("autorizacion".into())),
    };
    let state = state(source, name)?;
    let id = identifier(&receipt, autorizacion)?;
    let provider_time = field(source, "fecha")
        .map(|v| parse_fecha(v, &format!("{name}.fecha")))
        .transpose()?;
    Ok(Notification {
        event_type: format!("comprobante.{state}"),
        dedup_key: format!("datil:{id}:{state}"),
        subject: Some(id),
        provider_time,
    })
}

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
fn state(source: &Map<String, Value>, name: &str) -> Result<String, Rejection> {
    let path = format!("{name}.estado");
    let raw = non_empty(text(required(source, "estado", &path)?, &path)?, &path)?;
    let words: Vec<&str> = raw.split_whitespace().collect();
    let state = match words.join("_").to_lowercase().as_str() {
        "devuelta" => "devuelto".to_owned(),
        other => other.to_owned(),
    };
    event_name(state, &path)
}

/// The receipt's id, else its `clave_acceso`, else the authorization number.
fn identifier(
    receipt: &Map<String, Value>,
    autorizacion: Option<&Map<String, Value>>,
) -> Result<String, Rejection> {
    let candidates = [
        (field(receipt, "id"), "id"),
        (field(receipt, "clave_acceso"), "clave_acceso"),
        (
            autorizacion.and_then(|a| field(a, "numero")),
            "autorizacion.numero",
        ),
    ];
    match candidates.into_iter().find(|(v, _)| v.is_some()) {
        Some((Some(v), path)) => non_empty(text(v, path)?, path),
        _ => Err(Rejection::MissingField("id".into())),
    }
}

fn parse_fecha(value: &Value, path: &str) -> Result<OffsetDateTime, Rejection> {
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
    fn other_states_are_normalized() {
        let mut v = autorizado();
        v["autorizacion"]["estado"] = json!("En Proceso");
        assert_eq!(run(&v).unwrap().event_type, "comprobante.en_proceso");
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
        let mut v = devuelto();
        for key in ["id", "clave_acceso"] {
            v.as_object_mut().unwrap().remove(key);
        }
        assert_eq!(run(&v), Err(Rejection::MissingField("id".into())));
    }

    #[test]
    fn rejects_wrong_types_and_bad_dates() {
        let mut v = autorizado();
        v["autorizacion"] = json!("AUTORIZADO");
        assert_eq!(invalid_field(run(&v)), "autorizacion");
        let mut v = autorizado();
        v["id"] = json!(42);
        assert_eq!(invalid_field(run(&v)), "id");
        let mut v = autorizado();
        v["autorizacion"]["estado"] = json!("");
        assert_eq!(invalid_field(run(&v)), "autorizacion.estado");
        let mut v = autorizado();
        v["autorizacion"]["fecha"] = json!("28/09/2015 19:28:56");
        assert_eq!(invalid_field(run(&v)), "autorizacion.fecha");
        let mut v = devuelto();
        v["envio_sri"]["fecha"] = json!("9999-12-31T23:59:59-05:00");
        assert_eq!(invalid_field(run(&v)), "envio_sri.fecha");
    }
}
