//! The generic check, under the three kinds of rules (body hash, JSON
//! pointers, a header), on any bytes; the first line of the input is the
//! dedup header's value.
#![no_main]

mod common;

use webhook_relay::providers::{GenericRules, Provider};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(header) {
        headers.insert("x-id", value);
    }
    let providers = [
        Provider::Generic(GenericRules {
            default_event: "generic".into(),
            ..GenericRules::default()
        }),
        Provider::Generic(GenericRules {
            dedup_pointer: Some("/id".into()),
            event_pointer: Some("/type".into()),
            subject_pointer: Some("/data/0/name".into()),
            ..GenericRules::default()
        }),
        Provider::Generic(GenericRules {
            dedup_header: Some(http::HeaderName::from_static("x-id")),
            ..GenericRules::default()
        }),
    ];
    for provider in &providers {
        common::check_notification(provider.check(body, &headers), "generic:");
    }
});
