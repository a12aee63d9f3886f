//! The spool's decoders of what it reads back (notification and quarantine
//! records, deliveries, index keys) on any bytes: damage is an error, never
//! a panic. And a record made from the input decodes to itself.
#![no_main]

use bytes::Bytes;
use webhook_relay::spool::{NotificationId, NotificationMeta, NotificationRecord, Record};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    webhook_relay::spool::fuzz_decode(data);

    let text = String::from_utf8_lossy(data.get(..data.len().min(64)).unwrap_or_default());
    let record = Record {
        meta: NotificationMeta {
            id: String::new(),
            source: text.to_string(),
            received_ms: i64::from(data.first().copied().unwrap_or(0)),
            event_type: "facturacion.emitido".into(),
            subject: Some(text.to_string()),
            dedup_key: text.to_string(),
            provider_time: None,
            content_type: None,
            headers: vec![("user-agent".into(), text.to_string())],
            peer: "127.0.0.1".into(),
            subscriptions: vec![],
            flags: vec![],
            status: webhook_relay::providers::InvoiceStatus::Accepted,
            superseded: false,
        },
        body: Bytes::copy_from_slice(data),
    };
    let mut bytes = record.encode().expect("a record encodes");
    let id = NotificationId::new(1_700_000_000_000);
    webhook_relay::spool::record::stamp_id(&mut bytes, id);
    let decoded = NotificationRecord::decode(&bytes).expect("a record decodes");
    assert_eq!(decoded.body, record.body);
    assert_eq!(decoded.meta.id, id.to_string());
    assert_eq!(decoded.meta.source, record.meta.source);
    webhook_relay::spool::fuzz_decode(&bytes);
});
