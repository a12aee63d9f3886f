//! NubeFact's query: keys, both header forms, each answer state (one per
//! row of the status table) and each documented error shape.

use crate::providers::query::{Answer, AnswerError, NubefactHeader, QueryCredentials, QueryKeys};
use crate::providers::{Flag, InvoiceStatus, Notification, Provider};
use serde_json::{json, Value};

const SUBJECT: &str = "BBB1-105";

fn keys() -> QueryKeys {
    QueryKeys::NubeFact {
        tipo: 2,
        serie: "BBB1".into(),
        numero: 105,
    }
}

/// The documented answer of an accepted receipt.
fn accepted() -> Value {
    json!({
        "tipo_de_comprobante": 2,
        "serie": "BBB1",
        "numero": 105,
        "enlace": "https://www.nubefact.com/cpe/xxx",
        "enlace_del_pdf": "https://www.nubefact.com/cpe/xxx.pdf",
        "enlace_del_xml": "https://www.nubefact.com/cpe/xxx.xml",
        "enlace_del_cdr": "https://www.nubefact.com/cpe/xxx.cdr",
        "aceptada_por_sunat": true,
        "sunat_description": "La Boleta de Venta numero BBB1-105, ha sido aceptada",
        "sunat_note": null,
        "sunat_responsecode": "0",
        "sunat_soap_error": "",
        "anulado": false,
        "cadena_para_codigo_qr": "20600695771 | 03 | BBB1 | 000105 | ...",
        "codigo_hash": "xMLFMnbgp1/bHEy572RKRTE9hPY="
    })
}

fn with(changes: Value) -> Value {
    let mut v = accepted();
    for (k, x) in changes.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn read(status: u16, body: &Value) -> Result<Answer, AnswerError> {
    read_bytes(status, &serde_json::to_vec(body).unwrap())
}

fn read_bytes(status: u16, body: &[u8]) -> Result<Answer, AnswerError> {
    Provider::NubeFact.read_answer(&keys(), SUBJECT, status, body)
}

fn final_of(r: Result<Answer, AnswerError>) -> Notification {
    match r {
        Ok(Answer::Final(n)) => n,
        other => panic!("expected a final answer, got {other:?}"),
    }
}

fn pending_of(r: Result<Answer, AnswerError>) -> String {
    match r {
        Ok(Answer::Pending { said }) => said,
        other => panic!("expected pending, got {other:?}"),
    }
}

/// The keys of the webhook samples nubefact.rs's tests use.
#[test]
fn keys_from_the_webhook_samples() {
    let doc = br#"{"tipo_de_comprobante": 2, "serie": "BBB1", "numero": 105, "aceptada_por_sunat": true, "sunat_responsecode": "0"}"#;
    assert_eq!(Provider::NubeFact.query_keys(doc), Some(keys()));
    let as_text = br#"{"tipo_de_comprobante": "2", "serie": "BBB1", "numero": "0105", "aceptada_por_sunat": 1}"#;
    assert_eq!(Provider::NubeFact.query_keys(as_text), Some(keys()));
    let float = br#"{"tipo_de_comprobante": 2, "serie": "BBB1", "numero": 105.0, "aceptada_por_sunat": "false"}"#;
    assert_eq!(Provider::NubeFact.query_keys(float), Some(keys()));
    // Keys only: the acceptance is not needed to ask.
    let bare = br#"{"tipo_de_comprobante": 2, "serie": "BBB1", "numero": 105}"#;
    assert_eq!(Provider::NubeFact.query_keys(bare), Some(keys()));
    for no_keys in [
        &br#"{"serie": "BBB1", "numero": 105}"#[..],
        br#"{"tipo_de_comprobante": 2, "serie": "BB-1", "numero": 105}"#,
        b"not json",
    ] {
        assert_eq!(Provider::NubeFact.query_keys(no_keys), None);
    }
}

fn creds(header: NubefactHeader) -> QueryCredentials {
    QueryCredentials::NubeFact {
        token: "tok3n-abc".into(),
        header,
    }
}

#[test]
fn request_with_the_quoted_token_form_by_default() {
    let r = Provider::NubeFact
        .build_query(&keys(), &creds(NubefactHeader::default()))
        .unwrap();
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(r.path, "");
    let auth = &r.headers[0];
    assert_eq!(auth.0, http::header::AUTHORIZATION);
    assert_eq!(auth.1, "Token token=\"tok3n-abc\"");
    assert!(auth.1.is_sensitive());
    assert!(r
        .headers
        .iter()
        .any(|(n, v)| n == http::header::CONTENT_TYPE && v == "application/json"));
    // Numbers as JSON numbers.
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"operacion": "consultar_comprobante", "tipo_de_comprobante": 2, "serie": "BBB1", "numero": 105})
    );
    assert!(!format!("{r:?}").contains("tok3n"), "{r:?}");
}

#[test]
fn request_with_the_bare_token_form() {
    let r = Provider::NubeFact
        .build_query(&keys(), &creds(NubefactHeader::Bare))
        .unwrap();
    assert_eq!(r.headers[0].1, "tok3n-abc");
    assert!(!format!("{r:?}").contains("tok3n"), "{r:?}");
}

#[test]
fn a_token_that_cannot_be_a_header_is_refused_unnamed() {
    for (token, header) in [
        ("a\nb", NubefactHeader::Bare),
        ("a\"b", NubefactHeader::TokenQuoted),
    ] {
        let creds = QueryCredentials::NubeFact {
            token: token.into(),
            header,
        };
        let err = Provider::NubeFact.build_query(&keys(), &creds).unwrap_err();
        assert!(!err.to_string().contains(token), "{err}");
    }
}

// === The status of each answer: one row each of docs/receiving-and-forwarding.md's status table ===

#[test]
fn answer_aceptada_por_sunat_is_accepted() {
    let n = final_of(read(200, &accepted()));
    assert_eq!(
        n,
        Notification {
            event_type: "comprobante.aceptado".into(),
            subject: Some(SUBJECT.into()),
            dedup_key: "reconciled:BBB1-105:accepted".into(),
            provider_time: None,
            status: InvoiceStatus::Accepted,
            flags: vec![Flag::Reconciled],
        }
    );
}

#[test]
fn answer_not_accepted_with_a_response_code_is_rejected() {
    let n = final_of(read(
        200,
        &with(
            json!({"aceptada_por_sunat": false, "sunat_responsecode": "2017",
            "sunat_description": "El numero de RUC del receptor no existe"}),
        ),
    ));
    assert_eq!(n.event_type, "comprobante.rechazado");
    assert_eq!(n.status, InvoiceStatus::Rejected);
    assert_eq!(n.dedup_key, "reconciled:BBB1-105:rejected");
}

#[test]
fn answer_not_accepted_without_a_code_is_pending() {
    let said = pending_of(read(
        200,
        &with(
            json!({"aceptada_por_sunat": false, "sunat_responsecode": null, "sunat_description": null}),
        ),
    ));
    assert_eq!(said, "aceptada_por_sunat false, no response code");
    let said = pending_of(read(
        200,
        &with(json!({"aceptada_por_sunat": "false", "sunat_responsecode": "0"})),
    ));
    assert!(said.starts_with("aceptada_por_sunat false, sunat_responsecode 0: La Boleta"));
}

#[test]
fn answer_anulado_is_deleted() {
    let n = final_of(read(200, &with(json!({"anulado": true}))));
    assert_eq!(n.event_type, "comprobante.anulado");
    assert_eq!(n.status, InvoiceStatus::Deleted);
    assert_eq!(n.dedup_key, "reconciled:BBB1-105:deleted");
    assert_eq!(n.flags, [Flag::Reconciled]);
}

// === Errors ===

fn error_body(codigo: u64) -> Value {
    json!({"errors": "mensaje del error", "codigo": codigo})
}

#[test]
fn documented_errors_with_200_and_with_their_inferred_status() {
    let cases = [
        (10, 401, "unauthorized"),
        (11, 401, "unauthorized"),
        (12, 400, "provider_error"),
        (20, 400, "provider_error"),
        (21, 400, "provider_error"),
        (22, 400, "provider_error"),
        (23, 400, "provider_error"),
        (24, 400, "not_found"),
        (40, 500, "provider_error"),
        (50, 401, "provider_error"),
        (51, 401, "provider_error"),
    ];
    for (codigo, status, kind) in cases {
        for http_status in [200, status] {
            let err = read(http_status, &error_body(codigo)).unwrap_err();
            assert_eq!(err.kind(), kind, "codigo {codigo} with {http_status}");
            assert!(err
                .to_string()
                .contains(&format!("codigo {codigo}: mensaje")));
            if let AnswerError::Provider { status, .. } = err {
                assert_eq!(status, http_status);
            }
        }
    }
}

#[test]
fn error_shapes_without_a_code_or_as_text() {
    let err = read(400, &json!({"errors": ["a", "b"], "codigo": "24"})).unwrap_err();
    assert_eq!(err, AnswerError::NotFound("codigo 24: a; b".into()));
    let err = read(401, &json!({"errors": "token invalido"})).unwrap_err();
    assert_eq!(err.kind(), "unauthorized");
    let err = read(200, &json!({"errors": "algo"})).unwrap_err();
    assert_eq!(err.kind(), "provider_error");
    let err = read_bytes(500, b"<html>Internal Server Error</html>").unwrap_err();
    assert_eq!(err.kind(), "provider_error");
    let err = read(503, &accepted()).unwrap_err();
    assert_eq!(err.kind(), "provider_error");
}

#[test]
fn unreadable_answers() {
    for body in [
        &b"<html>ok</html>"[..],
        b"[]",
        br#"{"aceptada_por_sunat": "quizas"}"#,
        br#"{"serie": "BBB1"}"#,
        br#"{"aceptada_por_sunat": true, "anulado": 7}"#,
        br#"{"aceptada_por_sunat": true, "numero": 106}"#,
        br#"{"aceptada_por_sunat": true, "serie": "BBB2"}"#,
        br#"{"aceptada_por_sunat": true, "serie": "BB\nB1"}"#,
    ] {
        let err = read_bytes(200, body).unwrap_err();
        assert_eq!(
            err.kind(),
            "unreadable",
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn a_latin1_answer_with_a_bom_is_read_and_flagged() {
    let body = b"\xEF\xBB\xBF{\"tipo_de_comprobante\": \"2\", \"serie\": \"BBB1\", \"numero\": \"105\", \"aceptada_por_sunat\": 1, \"sunat_description\": \"n\xfamero aceptado\"}";
    // A BOM then Latin-1 is not UTF-8: read as Windows-1252 after the BOM.
    let n = final_of(read_bytes(200, body));
    assert_eq!(n.flags, [Flag::Latin1Body, Flag::Reconciled]);
    assert_eq!(n.status, InvoiceStatus::Accepted);
}
