//! Dátil's query: keys, the request, each answer state (one per row of the
//! status table) and each error shape of query-apis.md.

use crate::providers::query::{Answer, AnswerError, QueryBuildError, QueryCredentials, QueryKeys};
use crate::providers::{Flag, InvoiceStatus, Notification, Provider};
use serde_json::{json, Value};

const ID: &str = "abcde1234567890abcde1234";

fn keys() -> QueryKeys {
    QueryKeys::Datil { id: ID.into() }
}

/// The invoice as the API answers it (and as the webhook sends it).
fn invoice(estado: &str) -> Value {
    json!({
        "id": ID,
        "secuencial": "1765",
        "clave_acceso": "2809201501099187643500110010010000017651234567810",
        "ambiente": 1,
        "estado": estado,
        "envio_sri": {"estado": "RECIBIDA", "mensajes": [], "fecha": "2015-09-28T19:28:50.000Z"},
        "autorizacion": {"estado": estado, "numero": "2907201515283909927125540017656314390",
            "fecha": "2015-09-28T19:28:56.782Z", "mensajes": []}
    })
}

fn read(status: u16, body: &Value) -> Result<Answer, AnswerError> {
    read_bytes(status, &serde_json::to_vec(body).unwrap())
}

fn read_bytes(status: u16, body: &[u8]) -> Result<Answer, AnswerError> {
    Provider::Datil.read_answer(&keys(), ID, status, body)
}

fn final_of(r: Result<Answer, AnswerError>) -> Notification {
    match r {
        Ok(Answer::Final(n)) => n,
        other => panic!("expected a final answer, got {other:?}"),
    }
}

/// The webhook samples datil.rs's tests use.
#[test]
fn keys_from_the_webhook_samples() {
    let doc = json!({"id": ID, "secuencial": "1765", "autorizacion": {"estado": "AUTORIZADO", "numero": "1"}});
    let doc = serde_json::to_vec(&doc).unwrap();
    assert_eq!(Provider::Datil.query_keys(&doc), Some(keys()));
    let numeric = br#"{"id": 42, "autorizacion": {"estado": "AUTORIZADO"}}"#;
    assert_eq!(
        Provider::Datil.query_keys(numeric),
        Some(QueryKeys::Datil { id: "42".into() })
    );
    let latin1 = b"{\"id\":\"r1\",\"comprador\":{\"razon_social\":\"Juan P\xe9rez\"},\"autorizacion\":{\"estado\":\"AUTORIZADO\",\"numero\":\"1\"}}";
    assert_eq!(
        Provider::Datil.query_keys(latin1),
        Some(QueryKeys::Datil { id: "r1".into() })
    );
    // The doc's bare "Devuelto" fragment, or a clave_acceso only: no lookup.
    let bare = br#"{"envio_sri": {"estado": "DEVUELTA"}}"#;
    assert_eq!(Provider::Datil.query_keys(bare), None);
    let clave = br#"{"clave_acceso": "2809", "autorizacion": {"estado": "AUTORIZADO"}}"#;
    assert_eq!(Provider::Datil.query_keys(clave), None);
}

#[test]
fn the_request_is_a_get_of_the_escaped_id_with_x_key() {
    let creds = QueryCredentials::Datil {
        api_key: "s3cret-key".into(),
    };
    let r = Provider::Datil.build_query(&keys(), &creds).unwrap();
    assert_eq!(r.method, http::Method::GET);
    assert_eq!(r.path, format!("/invoices/{ID}"));
    assert_eq!(r.headers[0].0, "x-key");
    assert_eq!(r.headers[0].1, "s3cret-key");
    assert!(r.headers[0].1.is_sensitive());
    assert!(r.body.is_empty());
    assert!(!format!("{r:?}").contains("s3cret"));
    let odd = QueryKeys::Datil {
        id: "a/b?c#d é.".into(),
    };
    let r = Provider::Datil.build_query(&odd, &creds).unwrap();
    assert_eq!(r.path, "/invoices/a%2Fb%3Fc%23d%20%C3%A9%2E");
    for dots in ["..", "."] {
        let keys = QueryKeys::Datil { id: dots.into() };
        let err = Provider::Datil.build_query(&keys, &creds).unwrap_err();
        assert!(matches!(err, QueryBuildError::BadKeys(_)), "{err:?}");
    }
    let bad = QueryCredentials::Datil {
        api_key: "a\nb".into(),
    };
    assert_eq!(
        Provider::Datil.build_query(&keys(), &bad).unwrap_err(),
        QueryBuildError::BadCredential("api_key")
    );
}

// === The status of each answer: one row each of docs/receiving-and-forwarding.md's status table ===

#[test]
fn answer_autorizado_is_accepted() {
    assert_eq!(
        final_of(read(200, &invoice("AUTORIZADO"))),
        Notification {
            event_type: "comprobante.autorizado".into(),
            subject: Some(ID.into()),
            dedup_key: format!("reconciled:{ID}:accepted"),
            provider_time: None,
            status: InvoiceStatus::Accepted,
            flags: vec![Flag::Reconciled],
        }
    );
}

#[test]
fn answer_no_autorizado_or_devuelto_is_rejected() {
    for (estado, event) in [
        ("NO AUTORIZADO", "comprobante.no_autorizado"),
        ("DEVUELTO", "comprobante.devuelto"),
        ("DEVUELTA", "comprobante.devuelto"),
    ] {
        let n = final_of(read(200, &invoice(estado)));
        assert_eq!(
            (n.event_type.as_str(), n.status),
            (event, InvoiceStatus::Rejected)
        );
        assert_eq!(n.dedup_key, format!("reconciled:{ID}:rejected"));
    }
}

#[test]
fn answer_error_is_rejected() {
    let n = final_of(read(200, &invoice("ERROR")));
    assert_eq!(
        (n.event_type.as_str(), n.status),
        ("comprobante.error", InvoiceStatus::Rejected)
    );
}

#[test]
fn answer_anulado_is_deleted() {
    let n = final_of(read(200, &invoice("ANULADO")));
    assert_eq!(
        (n.event_type.as_str(), n.status),
        ("comprobante.anulado", InvoiceStatus::Deleted)
    );
}

#[test]
fn answer_enviado_recibido_or_pre_autorizado_is_pending() {
    for estado in [
        "ENVIADO",
        "RECIBIDO",
        "RECIBIDA",
        "PRE-AUTORIZADO",
        "EN PROCESO",
    ] {
        assert_eq!(
            read(200, &invoice(estado)),
            Ok(Answer::Pending {
                said: format!("estado {estado}")
            })
        );
    }
}

#[test]
fn the_webhook_shape_without_a_top_level_estado_is_read() {
    let mut v = invoice("AUTORIZADO");
    v.as_object_mut().unwrap().remove("estado");
    assert_eq!(final_of(read(200, &v)).status, InvoiceStatus::Accepted);
    v.as_object_mut().unwrap().remove("autorizacion");
    v["envio_sri"]["estado"] = json!("DEVUELTA");
    assert_eq!(final_of(read(200, &v)).status, InvoiceStatus::Rejected);
}

// === Errors ===

#[test]
fn documented_error_shapes() {
    let body = |code: &str| json!({"message": "Something went wrong", "code": code, "details": null, "parameter": null, "value": null});
    let err = read(404, &body("not_found")).unwrap_err();
    assert_eq!(
        err,
        AnswerError::NotFound("HTTP 404, code not_found: Something went wrong".into())
    );
    for status in [401, 403] {
        assert_eq!(read(status, &body("x")).unwrap_err().kind(), "unauthorized");
    }
    for status in [400, 405, 406, 500, 503] {
        match read(status, &body("x")).unwrap_err() {
            AnswerError::Provider { status: s, .. } => assert_eq!(s, status),
            other => panic!("{status}: {other:?}"),
        }
    }
    // A bare 404 (no JSON) is still not found; a 401 page still refused.
    assert_eq!(
        read_bytes(404, b"Not Found"),
        Err(AnswerError::NotFound("HTTP 404".into()))
    );
    assert_eq!(read_bytes(401, b"").unwrap_err().kind(), "unauthorized");
}

#[test]
fn unreadable_answers() {
    let mut other_id = invoice("AUTORIZADO");
    other_id["id"] = json!("zzz");
    for body in [
        other_id,
        json!({"id": ID}),
        json!({"id": ID, "estado": "¿?"}),
        json!({"id": ID, "estado": 7}),
        json!({"id": ID, "autorizacion": "AUTORIZADO"}),
        json!({"id": ID, "estado": "AUTO\nRIZADO"}),
    ] {
        assert_eq!(read(200, &body).unwrap_err().kind(), "unreadable", "{body}");
    }
    assert_eq!(read_bytes(200, b"<html>").unwrap_err().kind(), "unreadable");
}

#[test]
fn a_latin1_answer_is_read_and_flagged() {
    let body = b"{\"id\":\"abcde1234567890abcde1234\",\"estado\":\"AUTORIZADO\",\"comprador\":{\"razon_social\":\"Juan P\xe9rez\"}}";
    let n = final_of(read_bytes(200, body));
    assert_eq!(n.flags, [Flag::Latin1Body, Flag::Reconciled]);
}
