//! The shared types of reconciliation: kinds, keys, redaction, the
//! generic provider, mismatched keys.

use super::*;
use crate::providers::{GenericRules, Provider};

#[test]
fn kinds_and_keys() {
    assert_eq!(AnswerError::Unauthorized("x".into()).kind(), "unauthorized");
    assert_eq!(AnswerError::NotFound("x".into()).kind(), "not_found");
    let failed = AnswerError::Provider {
        status: 500,
        message: "x".into(),
    };
    assert_eq!(failed.kind(), "provider_error");
    assert_eq!(AnswerError::Unreadable("x".into()).kind(), "unreadable");
    assert_eq!(
        reconciled_key("BBB1-105", InvoiceStatus::Accepted),
        "reconciled:BBB1-105:accepted"
    );
}

#[test]
fn generic_has_no_query() {
    let generic = Provider::Generic(GenericRules::default());
    assert_eq!(
        generic.query_keys(br#"{"id": "1", "external_reference": "2"}"#),
        None
    );
    let keys = QueryKeys::Datil { id: "1".into() };
    let creds = QueryCredentials::Datil {
        api_key: "k".into(),
    };
    assert_eq!(
        generic.build_query(&keys, &creds).unwrap_err(),
        QueryBuildError::NoQueryApi("generic")
    );
    assert_eq!(
        generic
            .read_answer(&keys, "1", 200, b"{}")
            .unwrap_err()
            .kind(),
        "unreadable"
    );
}

#[test]
fn keys_or_credentials_of_another_provider_are_refused() {
    let datil_keys = QueryKeys::Datil { id: "1".into() };
    let nube_creds = QueryCredentials::NubeFact {
        token: "t".into(),
        header: NubefactHeader::default(),
    };
    let nube_keys = QueryKeys::NubeFact {
        tipo: 2,
        serie: "B1".into(),
        numero: 1,
    };
    assert_eq!(
        Provider::NubeFact
            .build_query(&datil_keys, &nube_creds)
            .unwrap_err()
            .to_string(),
        "keys of datil cannot query nubefact"
    );
    let datil_creds = QueryCredentials::Datil {
        api_key: "k".into(),
    };
    assert_eq!(
        Provider::NubeFact
            .build_query(&nube_keys, &datil_creds)
            .unwrap_err()
            .to_string(),
        "credentials of datil cannot query nubefact"
    );
    let body = br#"{"id": "1", "estado": "AUTORIZADO"}"#;
    let err = Provider::NubeFact.read_answer(&datil_keys, "1", 200, body);
    assert_eq!(err.unwrap_err().kind(), "unreadable");
}

#[test]
fn credentials_never_show_in_debug() {
    let creds = [
        QueryCredentials::NubeFact {
            token: "s3cret-nube".into(),
            header: NubefactHeader::Bare,
        },
        QueryCredentials::TusFacturas {
            apikey: "s3cret-key".into(),
            apitoken: "s3cret-tok".into(),
            usertoken: "s3cret-usr".into(),
        },
        QueryCredentials::Datil {
            api_key: "s3cret-datil".into(),
        },
    ];
    for c in creds {
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
    }
}

#[test]
fn said_is_short_and_clean() {
    assert_eq!(said(" a\r\nb\t"), "a  b");
    let long = said(&"é".repeat(500));
    assert_eq!(long.chars().count(), MAX_SAID + 1);
    assert_eq!(message_of(&serde_json::json!(["a", 1])), "a; 1");
}

#[test]
fn unparsable_answers_are_judged_by_status() {
    let flags = &mut Vec::new();
    let kind = |status, body: &[u8]| parse_answer(status, body, &mut Vec::new()).unwrap_err();
    assert_eq!(kind(200, b"<html>").kind(), "unreadable");
    assert_eq!(kind(200, b"[]").kind(), "unreadable");
    assert_eq!(kind(401, b"nope").kind(), "unauthorized");
    assert_eq!(kind(403, b"").kind(), "unauthorized");
    match kind(502, b"<html>bad gateway</html>") {
        AnswerError::Provider { status: 502, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(parse_answer(200, b"\xEF\xBB\xBF{}", flags).is_ok());
}
