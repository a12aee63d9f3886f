//! Every provider's query answer reader on any bytes and any HTTP status
//! (the input's first two bytes, little-endian): an answer or a typed
//! error, never a panic; a final answer is a reconciled notification about
//! the given subject, safe to key, route and send in a header. The body
//! also goes through `query_keys` and, when it yields keys, `build_query`.
#![no_main]

mod common;

use webhook_relay::providers::query::{
    Answer, NubefactHeader, QueryCredentials, QueryKeys,
};
use webhook_relay::providers::{Flag, Provider};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (200, data),
    };
    let cases = [
        (
            Provider::NubeFact,
            QueryKeys::NubeFact {
                tipo: 2,
                serie: "BBB1".into(),
                numero: 105,
            },
            QueryCredentials::NubeFact {
                token: "token".into(),
                header: NubefactHeader::TokenQuoted,
            },
        ),
        (
            Provider::TusFacturas,
            QueryKeys::TusFacturas {
                external_reference: "17032".into(),
            },
            QueryCredentials::TusFacturas {
                apikey: "1134".into(),
                apitoken: "apitoken".into(),
                usertoken: "usertoken".into(),
            },
        ),
        (
            Provider::Datil,
            QueryKeys::Datil {
                id: "abcde1234567890abcde1234".into(),
            },
            QueryCredentials::Datil {
                api_key: "key".into(),
            },
        ),
    ];
    for (provider, keys, creds) in &cases {
        let subject = "subject-1";
        match provider.read_answer(keys, subject, status, body) {
            Ok(Answer::Final(n)) => {
                assert!(n.status.is_final(), "{n:?}");
                assert_eq!(n.subject.as_deref(), Some(subject));
                assert_eq!(n.flags.last(), Some(&Flag::Reconciled));
                let result = Ok(n);
                common::check_event_name(&result);
                common::check_notification(result, "reconciled:subject-1:");
            }
            Ok(Answer::Pending { said }) => {
                assert!(!said.chars().any(char::is_control), "{said:?}");
            }
            Err(e) => {
                assert!(!e.to_string().chars().any(char::is_control), "{e}");
                let _ = e.kind();
            }
        }
        if let Some(keys) = provider.query_keys(body) {
            let _ = provider.build_query(&keys, creds);
        }
    }
});
