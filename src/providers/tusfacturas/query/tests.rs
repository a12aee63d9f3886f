//! TusFacturas' query: keys, the request, each answer state (one per row of
//! the status table) and each error shape of query-apis.md.

use crate::providers::query::{Answer, AnswerError, QueryCredentials, QueryKeys};
use crate::providers::{Flag, InvoiceStatus, Notification, Provider};
use serde_json::{json, Value};

const REF: &str = "17032";

fn keys() -> QueryKeys {
    QueryKeys::TusFacturas {
        external_reference: REF.into(),
    }
}

fn entry(external_reference: &str, status: &str) -> Value {
    json!({
        "cliente": {"documento_tipo": "DNI", "documento_nro": "12345678", "razon_social": "Juan Pérez"},
        "comprobante": {
            "tipo": "FACTURA B", "punto_venta": "2", "numero": "6",
            "external_reference": external_reference,
            "status": status,
            "cae": if status == "EMITIDO" { "71234567890123" } else { " " },
            "vencimiento_cae": "28/03/2022",
            "comprobante_pdf_url": "https://www.tusfacturas.app/pdf/x.pdf",
            "afip_observaciones": []
        }
    })
}

fn answer(entries: Vec<Value>) -> Value {
    json!({"rta": "OK", "error": "N", "errores": [], "total": entries.len(), "comprobantes": entries})
}

fn read(status: u16, body: &Value) -> Result<Answer, AnswerError> {
    let body = serde_json::to_vec(body).unwrap();
    Provider::TusFacturas.read_answer(&keys(), REF, status, &body)
}

fn read_status(comprobante_status: &str) -> Result<Answer, AnswerError> {
    read(200, &answer(vec![entry(REF, comprobante_status)]))
}

fn final_of(r: Result<Answer, AnswerError>) -> Notification {
    match r {
        Ok(Answer::Final(n)) => n,
        other => panic!("expected a final answer, got {other:?}"),
    }
}

/// The webhook samples tusfacturas.rs's tests use.
#[test]
fn keys_from_the_webhook_samples() {
    let doc = br#"{"creado": "18/03/2022 15:58:11", "evento": "encolado", "recurso": "facturacion", "external_reference": "17032", "intento": 1, "msg": [], "hook_id": "xxxxx"}"#;
    assert_eq!(Provider::TusFacturas.query_keys(doc), Some(keys()));
    let as_int = br#"{"evento": "emitido", "recurso": "facturacion", "external_reference": 17032, "hook_id": 1}"#;
    assert_eq!(Provider::TusFacturas.query_keys(as_int), Some(keys()));
    let latin1 = b"{\"evento\":\"emitido\",\"external_reference\":\"N\xba 17032\"}";
    assert_eq!(
        Provider::TusFacturas.query_keys(latin1),
        Some(QueryKeys::TusFacturas {
            external_reference: "Nº 17032".into()
        })
    );
    for none in [
        &br#"{"external_reference": ""}"#[..],
        br#"{"external_reference": null}"#,
        br#"{"hook_id": "x"}"#,
        b"[]",
    ] {
        assert_eq!(Provider::TusFacturas.query_keys(none), None);
    }
}

#[test]
fn the_request_carries_the_credentials_in_its_body() {
    let creds = QueryCredentials::TusFacturas {
        apikey: "1134".into(),
        apitoken: "s3cret-apitoken".into(),
        usertoken: "s3cret-usertoken".into(),
    };
    let r = Provider::TusFacturas.build_query(&keys(), &creds).unwrap();
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(r.path, "/facturacion/consulta_avanzada");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"apikey": "1134", "apitoken": "s3cret-apitoken", "usertoken": "s3cret-usertoken",
            "busqueda_tipo": "EXT_REF", "pagina": 0, "limite": 100,
            "comprobante": {"external_reference": "17032", "operacion": "V"}})
    );
    let shown = format!("{r:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("1134"),
        "{shown}"
    );
}

// === The status of each answer: one row each of docs/receiving-and-forwarding.md's status table ===

#[test]
fn answer_emitido_is_accepted() {
    assert_eq!(
        final_of(read_status("EMITIDO")),
        Notification {
            event_type: "facturacion.emitido".into(),
            subject: Some(REF.into()),
            dedup_key: "reconciled:17032:accepted".into(),
            provider_time: None,
            status: InvoiceStatus::Accepted,
            flags: vec![Flag::Reconciled],
        }
    );
}

#[test]
fn answer_en_cola_is_pending() {
    for status in [
        "APROBADO Y EN COLA. SE EMITE EL 20/03/2022",
        "EN COLA, ESPERANDO APROBACION",
    ] {
        assert_eq!(
            read_status(status),
            Ok(Answer::Pending {
                said: status.into()
            })
        );
    }
}

#[test]
fn answer_enviado_a_procesar_con_error_is_rejected() {
    let n = final_of(read_status("ENVIADO A PROCESAR - CON ERROR"));
    assert_eq!(n.event_type, "facturacion.error");
    assert_eq!(n.status, InvoiceStatus::Rejected);
    assert_eq!(n.dedup_key, "reconciled:17032:rejected");
}

#[test]
fn answer_in_an_undocumented_state_is_pending() {
    assert_eq!(
        read_status("ANULADO"),
        Ok(Answer::Pending {
            said: "ANULADO".into()
        })
    );
}

#[test]
fn the_comprobante_of_the_invoice_is_picked() {
    let body = answer(vec![
        entry("170321", "EMITIDO"),
        entry(REF, "ENVIADO A PROCESAR - CON ERROR"),
    ]);
    assert_eq!(final_of(read(200, &body)).status, InvoiceStatus::Rejected);
    // Issued again after the error: the issued one wins, in any order.
    let body = answer(vec![
        entry(REF, "ENVIADO A PROCESAR - CON ERROR"),
        entry(REF, "EMITIDO"),
    ]);
    assert_eq!(final_of(read(200, &body)).status, InvoiceStatus::Accepted);
    // A numeric external_reference is the same reference.
    let mut e = entry(REF, "EMITIDO");
    e["comprobante"]["external_reference"] = json!(17032);
    assert_eq!(
        final_of(read(200, &answer(vec![e]))).status,
        InvoiceStatus::Accepted
    );
}

// === Errors ===

#[test]
fn total_0_or_no_match_is_not_found() {
    let err = read(200, &answer(vec![])).unwrap_err();
    assert_eq!(err.kind(), "not_found");
    let err = read(
        200,
        &json!({"rta": "OK", "error": "N", "total": 0, "comprobantes": null}),
    )
    .unwrap_err();
    assert_eq!(err.kind(), "not_found");
    let err = read(200, &answer(vec![entry("99", "EMITIDO")])).unwrap_err();
    assert_eq!(err.kind(), "not_found");
}

#[test]
fn error_s_is_an_error_whatever_the_status() {
    let body = json!({"error": "S", "errores": ["El comprobante no pudo ser consultado"], "error_cod": [], "error_details": []});
    for status in [200, 400, 404, 405, 500, 524] {
        assert_eq!(
            read(status, &body),
            Err(AnswerError::Provider {
                status,
                message: "El comprobante no pudo ser consultado".into()
            })
        );
    }
    for status in [401, 403] {
        assert_eq!(read(status, &body).unwrap_err().kind(), "unauthorized");
    }
    let bad_token = json!({"error": "S", "errores": ["Apitoken invalido"]});
    assert_eq!(read(200, &bad_token).unwrap_err().kind(), "unauthorized");
    let bare = json!({"error": "S"});
    assert_eq!(
        read(200, &bare),
        Err(AnswerError::Provider {
            status: 200,
            message: "error S without errores".into()
        })
    );
}

#[test]
fn other_failures() {
    let err = Provider::TusFacturas.read_answer(&keys(), REF, 524, b"<html>timeout</html>");
    assert_eq!(err.unwrap_err().kind(), "provider_error");
    assert_eq!(
        read(500, &answer(vec![])).unwrap_err().kind(),
        "provider_error"
    );
    for body in [
        json!({"error": "X"}),
        json!({"error": "N", "comprobantes": {}}),
        json!({"error": "N", "comprobantes": [7]}),
        json!({"error": "N", "comprobantes": [{"comprobante": {"external_reference": REF}}]}),
        json!({"error": "N", "comprobantes": [{"comprobante": {"external_reference": REF, "status": "EMI\nTIDO"}}]}),
    ] {
        assert_eq!(read(200, &body).unwrap_err().kind(), "unreadable", "{body}");
    }
}

#[test]
fn a_latin1_answer_is_read_and_flagged() {
    let body = b"{\"error\":\"N\",\"total\":1,\"comprobantes\":[{\"cliente\":{\"razon_social\":\"Se\xf1or\"},\"comprobante\":{\"external_reference\":\"17032\",\"status\":\"EMITIDO\"}}]}";
    let n = final_of(Provider::TusFacturas.read_answer(&keys(), REF, 200, body));
    assert_eq!(n.flags, [Flag::Latin1Body, Flag::Reconciled]);
}
