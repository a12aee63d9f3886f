//! The datil check on any bytes: an answer, never a panic, and what it
//! accepts is safe to key, route and send in a header.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let result = webhook_relay::providers::datil::check(data);
    common::check_event_name(&result);
    common::check_notification(result, "datil:");
});
