//! The config loader on any text: a config or a list of problems with
//! their place, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match webhook_relay::config::Config::parse(text) {
        Ok(_) => {}
        Err(problems) => assert!(!problems.is_empty(), "an error with no problem"),
    }
});
