//! The admin API's filter parsing (`GET /api/notifications?...`, bulk
//! replay) on any query string: a filter or a typed error, never a panic;
//! a filter that parses can be applied.
#![no_main]

use webhook_relay::admin::query::Filter;
use webhook_relay::spool::NotificationMeta;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    for bulk in [false, true] {
        let Ok(filter) = Filter::parse(query, 1_764_000_000_000, bulk) else {
            continue;
        };
        let meta = NotificationMeta {
            id: String::new(),
            source: "tusfacturas".into(),
            received_ms: 1_763_990_000_000,
            event_type: "facturacion.emitido".into(),
            subject: Some("0001-00000042".into()),
            dedup_key: String::new(),
            provider_time: None,
            content_type: None,
            headers: Vec::new(),
            peer: String::new(),
            subscriptions: vec!["billing".into()],
            flags: Vec::new(),
            status: webhook_relay::providers::InvoiceStatus::Accepted,
            superseded: false,
        };
        let _ = filter.matches_meta(&meta);
        let _ = filter.matches_deliveries(&[]);
        let _ = filter.past_since(meta.received_ms);
    }
});
