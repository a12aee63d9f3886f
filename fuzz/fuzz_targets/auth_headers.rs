//! Authentication's parsing of what a client presents (Basic credentials,
//! an HMAC signature in hex or base64 with a prefix, X-Forwarded-For, the
//! path token) on any bytes. The input is `value \0 token \0 body`; the
//! value is sent as each of those headers, to each kind of source.
#![no_main]

use std::sync::OnceLock;

use webhook_relay::config::{Config, SourceConfig};

fn sources() -> &'static Vec<SourceConfig> {
    static SOURCES: OnceLock<Vec<SourceConfig>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let text = r#"
[server]
self_signed = true
[sources.token]
provider = "generic"
token = "0123456789abcdef"
allow_ips = ["127.0.0.0/8", "::1"]
[sources.basic]
provider = "generic"
basic = { user = "tf", password = "s3cret-password" }
[sources.hex]
provider = "generic"
hmac = { header = "x-signature", secret = "0123456789abcdef", prefix = "sha256=" }
[sources.base64]
provider = "generic"
hmac = { header = "x-signature", secret = "0123456789abcdef", encoding = "base64" }
"#;
        let mut config = Config::parse(text).expect("the fuzz target's config is valid");
        ["token", "basic", "hex", "base64"]
            .iter()
            .filter_map(|name| config.sources.remove(*name))
            .collect()
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let value = parts.next().unwrap_or_default();
    let token = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    for source in sources() {
        webhook_relay::ingress::fuzz_auth(source, value, &token, body);
    }
});
