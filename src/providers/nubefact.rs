//! NubeFact (Peru): checks its webhook body (the standard receipt response:
//! `tipo_de_comprobante`, `serie`, `numero`, `aceptada_por_sunat`,
//! `sunat_responsecode`) and names it `comprobante.aceptado`,
//! `comprobante.rechazado` or `comprobante.pendiente`. Numbers may come as
//! strings or integral floats (`"105"`, `105.0`), the acceptance as
//! `true`, `"true"` or `1`.

use super::{
    boolish, field, invalid, non_empty, parse_object, required, text, text_or_int, unsigned,
    InvoiceStatus, Notification, Rejection,
};
use serde_json::{Map, Value};

/// Reconciliation: the keys, request and answer of its query API.
pub(crate) mod query;

/// Checks a NubeFact body.
pub fn check(body: &[u8]) -> Result<Notification, Rejection> {
    let mut flags = Vec::new();
    let obj = parse_object(body, &mut flags)?;
    let tipo = tipo(&obj)?;
    let serie = serie(&obj)?;
    let numero = numero(&obj)?;
    let accepted = aceptada(&obj)?;
    let code = response_code(&obj)?;
    let (suffix, status) = match (accepted, code.as_deref()) {
        (true, _) => ("aceptado", InvoiceStatus::Accepted),
        (false, Some(c)) if c != "0" => ("rechazado", InvoiceStatus::Rejected),
        (false, _) => ("pendiente", InvoiceStatus::Queued),
    };
    Ok(Notification {
        status,
        event_type: format!("comprobante.{suffix}"),
        subject: Some(format!("{serie}-{numero}")),
        dedup_key: format!(
            "nubefact:{tipo}:{serie}:{numero}:{suffix}:{}",
            code.as_deref().unwrap_or("-")
        ),
        provider_time: None,
        flags,
    })
}

/// SUNAT document type, 1..=99 (1 factura, 2 boleta, 3 nota de crédito...).
fn tipo(obj: &Map<String, Value>) -> Result<u64, Rejection> {
    const F: &str = "tipo_de_comprobante";
    match unsigned(required(obj, F, F)?, F)? {
        n @ 1..=99 => Ok(n),
        _ => Err(invalid(F, "expected 1..=99")),
    }
}

/// Series such as `F001` or `BBB1`: alphanumeric so it cannot break the key.
fn serie(obj: &Map<String, Value>) -> Result<String, Rejection> {
    let s = non_empty(text(required(obj, "serie", "serie")?, "serie")?, "serie")?;
    if !s.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid("serie", "expected letters and digits only"));
    }
    Ok(s)
}

/// Correlative number; `"0105"` and `105` are the same receipt.
fn numero(obj: &Map<String, Value>) -> Result<u64, Rejection> {
    match unsigned(required(obj, "numero", "numero")?, "numero")? {
        0 => Err(invalid("numero", "expected a positive integer")),
        n => Ok(n),
    }
}

fn aceptada(obj: &Map<String, Value>) -> Result<bool, Rejection> {
    const F: &str = "aceptada_por_sunat";
    boolish(required(obj, F, F)?, F)
}

/// SUNAT's response code, if any. An empty string means "no answer yet",
/// like an absent field (pending boletas carry no code).
fn response_code(obj: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    const F: &str = "sunat_responsecode";
    let code = field(obj, F).map(|v| text_or_int(v, F)).transpose()?;
    Ok(code.filter(|c| !c.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The doc's example, verbatim.
    const DOC_EXAMPLE: &str = r#"{
  "tipo_de_comprobante": 2,
  "serie": "BBB1",
  "numero": 105,
  "enlace": "https://www.nubefact.com/cpe/...",
  "aceptada_por_sunat": true,
  "sunat_description": "La Boleta de Venta numero BBB1-105, ha sido aceptada",
  "sunat_responsecode": "0",
  "enlace_del_pdf": "https://www.nubefact.com/cpe/xxx.pdf",
  "enlace_del_xml": "https://www.nubefact.com/cpe/xxx.xml",
  "enlace_del_cdr": "https://www.nubefact.com/cpe/xxx.cdr",
  "codigo_hash": "xMLFMnbgp1/bHEy572RKRTE9hPY="
}
"#;

    fn with(changes: Value) -> Result<Notification, Rejection> {
        let mut v: Value = serde_json::from_str(DOC_EXAMPLE).unwrap();
        for (k, x) in changes.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
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
                event_type: "comprobante.aceptado".into(),
                subject: Some("BBB1-105".into()),
                dedup_key: "nubefact:2:BBB1:105:aceptado:0".into(),
                provider_time: None,
                status: InvoiceStatus::Accepted,
                flags: vec![],
            }
        );
    }

    #[test]
    fn numero_as_a_float_and_booleans_as_text_are_taken() {
        // The exact payload the issue saw refused.
        let body = br#"{"tipo_de_comprobante": 2, "serie": "BBB1", "numero": 105.0, "aceptada_por_sunat": "true", "sunat_responsecode": "0"}"#;
        let n = check(body).unwrap();
        assert_eq!(n.dedup_key, "nubefact:2:BBB1:105:aceptado:0");
        assert!(n.flags.is_empty());
        let as_text = br#"{"tipo_de_comprobante": "2.0", "serie": "BBB1", "numero": "105", "aceptada_por_sunat": 1, "sunat_responsecode": 0}"#;
        // "2.0" as a string is not digits: refused (only numbers may be floats).
        assert!(check(as_text).is_err());
        let as_text = br#"{"tipo_de_comprobante": "2", "serie": "BBB1", "numero": "105", "aceptada_por_sunat": 1, "sunat_responsecode": 0}"#;
        assert_eq!(check(as_text).unwrap().dedup_key, n.dedup_key);
        let pending = br#"{"tipo_de_comprobante": 2.0, "serie": "BBB1", "numero": 105, "aceptada_por_sunat": "false"}"#;
        assert_eq!(
            check(pending).unwrap().dedup_key,
            "nubefact:2:BBB1:105:pendiente:-"
        );
    }

    #[test]
    fn a_latin1_description_is_taken_and_flagged() {
        let body = b"{\"tipo_de_comprobante\": 1, \"serie\": \"F001\", \"numero\": 7, \"aceptada_por_sunat\": true, \"sunat_description\": \"La Factura n\xfamero F001-7, ha sido aceptada\"}";
        let n = check(body).unwrap();
        assert_eq!(n.flags, [super::super::Flag::Latin1Body]);
        assert_eq!(n.subject.as_deref(), Some("F001-7"));
    }

    #[test]
    fn rejected_and_pending() {
        let n = with(json!({"aceptada_por_sunat": false, "sunat_responsecode": 2017})).unwrap();
        assert_eq!(n.event_type, "comprobante.rechazado");
        assert_eq!(n.dedup_key, "nubefact:2:BBB1:105:rechazado:2017");
        let n = with(json!({"aceptada_por_sunat": false, "sunat_responsecode": null})).unwrap();
        assert_eq!(n.event_type, "comprobante.pendiente");
        assert_eq!(n.dedup_key, "nubefact:2:BBB1:105:pendiente:-");
        let n = with(json!({"aceptada_por_sunat": false, "sunat_responsecode": ""})).unwrap();
        assert_eq!(n.dedup_key, "nubefact:2:BBB1:105:pendiente:-");
        let n = with(json!({"aceptada_por_sunat": false})).unwrap();
        assert_eq!(n.dedup_key, "nubefact:2:BBB1:105:pendiente:0");
    }

    #[test]
    fn string_numbers_give_the_same_key() {
        let n =
            with(json!({"tipo_de_comprobante": "2", "numero": "0105", "sunat_responsecode": 0}));
        assert_eq!(n.unwrap(), check(DOC_EXAMPLE.as_bytes()).unwrap());
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(check(b"tipo=2").unwrap_err().kind(), "not_json");
        assert_eq!(check(b"\"x\""), Err(Rejection::NotObject("string")));
    }

    #[test]
    fn rejects_missing_fields() {
        for key in [
            "tipo_de_comprobante",
            "serie",
            "numero",
            "aceptada_por_sunat",
        ] {
            let r = with(json!({ key: null }));
            assert_eq!(r, Err(Rejection::MissingField(key.into())));
        }
    }

    #[test]
    fn rejects_wrong_types() {
        let cases = [
            ("tipo_de_comprobante", json!(0)),
            ("tipo_de_comprobante", json!(100)),
            ("tipo_de_comprobante", json!("2a")),
            ("serie", json!("")),
            ("serie", json!("BB-1")),
            ("serie", json!(1)),
            ("numero", json!(0)),
            ("numero", json!(-5)),
            ("numero", json!(1.5)),
            ("aceptada_por_sunat", json!("quizas")),
            ("aceptada_por_sunat", json!(2)),
            ("sunat_responsecode", json!([])),
        ];
        for (key, value) in cases {
            assert_eq!(invalid_field(with(json!({ key: value }))), key, "{value}");
        }
    }

    // === The status of each documented state: one row each of docs/receiving-and-forwarding.md's status table ===

    #[test]
    fn status_aceptada_por_sunat_is_accepted() {
        assert_eq!(with(json!({})).unwrap().status, InvoiceStatus::Accepted);
    }

    #[test]
    fn status_not_accepted_with_a_rejection_code_is_rejected() {
        let n = with(json!({"aceptada_por_sunat": false, "sunat_responsecode": "2017"})).unwrap();
        assert_eq!(n.status, InvoiceStatus::Rejected);
    }

    #[test]
    fn status_not_accepted_without_a_rejection_code_is_queued() {
        for code in [json!(null), json!(""), json!("0")] {
            let n = with(json!({"aceptada_por_sunat": false, "sunat_responsecode": code})).unwrap();
            assert_eq!(n.status, InvoiceStatus::Queued, "{code}");
        }
    }
}
