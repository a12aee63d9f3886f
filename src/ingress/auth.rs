//! Authentication of a source's requests. None of the providers signs its
//! requests, so a source is authenticated by what it can send: a secret path
//! token, HTTP Basic credentials, an HMAC header (generic sources that sign),
//! and/or the peer's address. Every secret is compared in constant time.

use std::net::IpAddr;

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{HmacEncoding, SourceConfig};

/// The address a request comes from: the peer, or, when the peer is a
/// trusted proxy, the nearest `X-Forwarded-For` hop that is not one (read
/// right to left, since only the hops our proxies appended can be believed).
/// A malformed hop stops the walk at the last believable address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| {
            let hops: Vec<&str> = value.to_str().unwrap_or("").split(',').collect();
            hops.into_iter().rev()
        });
    let mut client = peer;
    for hop in hops {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(&client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("peer address is not allowed for this source")]
    AddressNotAllowed,
    #[error("missing or wrong token")]
    Token,
    #[error("missing or wrong basic credentials")]
    Basic,
    #[error("missing or wrong HMAC signature")]
    Hmac,
}

impl AuthFailure {
    /// 403 for who is asking (the address), 401 for what they presented.
    pub fn status(self) -> http::StatusCode {
        match self {
            AuthFailure::AddressNotAllowed => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

#[derive(Debug)]
pub struct Auth {
    token: Option<[u8; 32]>,
    basic: Option<[u8; 32]>,
    hmac: Option<HmacRule>,
    networks: Vec<ipnet::IpNet>,
}

#[derive(Debug)]
struct HmacRule {
    header: http::HeaderName,
    secret: Vec<u8>,
    encoding: HmacEncoding,
    prefix: String,
}

/// Comparing digests keeps the comparison constant-time and hides the length.
fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn same(expected: &[u8; 32], presented: &[u8]) -> bool {
    expected.ct_eq(&digest(presented)).into()
}

impl Auth {
    pub fn new(source: &SourceConfig) -> Self {
        Auth {
            token: source.token.as_deref().map(|t| digest(t.as_bytes())),
            basic: source
                .basic
                .as_ref()
                .map(|b| digest(format!("{}:{}", b.user, b.password).as_bytes())),
            hmac: source.hmac.as_ref().map(|h| HmacRule {
                header: h.header.0.clone(),
                secret: h.secret.as_bytes().to_vec(),
                encoding: h.encoding,
                prefix: h.prefix.clone(),
            }),
            networks: source.allowed_networks(),
        }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether [`Auth::check_request`] authenticates a request on its own
    /// (a token, credentials or an address allowlist), before its body.
    pub fn checks_before_body(&self) -> bool {
        self.token.is_some() || self.basic.is_some() || !self.networks.is_empty()
    }

    /// Checks made before the body is read: address, token, basic credentials.
    pub fn check_request(
        &self,
        peer: IpAddr,
        path_token: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<(), AuthFailure> {
        if !self.networks.is_empty() && !self.networks.iter().any(|net| net.contains(&peer)) {
            return Err(AuthFailure::AddressNotAllowed);
        }
        if let Some(expected) = &self.token {
            if !path_token.is_some_and(|t| same(expected, t.as_bytes())) {
                return Err(AuthFailure::Token);
            }
        }
        if let Some(expected) = &self.basic {
            let presented = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b64| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .ok()
                });
            if !presented.is_some_and(|p| same(expected, &p)) {
                return Err(AuthFailure::Basic);
            }
        }
        Ok(())
    }

    /// The HMAC-SHA256 of the raw body, when the source signs.
    pub fn check_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), AuthFailure> {
        let Some(rule) = &self.hmac else {
            return Ok(());
        };
        let signature = headers
            .get(&rule.header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix(rule.prefix.as_str()))
            .and_then(|v| match rule.encoding {
                HmacEncoding::Hex => decode_hex(v),
                HmacEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(v).ok(),
            })
            .ok_or(AuthFailure::Hmac)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&rule.secret).map_err(|_| AuthFailure::Hmac)?;
        mac.update(body);
        mac.verify_slice(&signature).map_err(|_| AuthFailure::Hmac)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn source(extra: &str) -> SourceConfig {
        let text =
            format!("[server]\nself_signed = true\n[sources.s]\nprovider = \"generic\"\n{extra}\n");
        Config::parse(&text).unwrap().sources.remove("s").unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn token() {
        let auth = Auth::new(&source("token = \"0123456789abcdef\""));
        assert!(auth
            .check_request(LOCAL, Some("0123456789abcdef"), &HeaderMap::new())
            .is_ok());
        assert_eq!(
            auth.check_request(LOCAL, Some("0123456789abcdeX"), &HeaderMap::new()),
            Err(AuthFailure::Token)
        );
        assert_eq!(
            auth.check_request(LOCAL, None, &HeaderMap::new()),
            Err(AuthFailure::Token)
        );
    }

    #[test]
    fn basic() {
        let auth = Auth::new(&source("basic = { user = \"tf\", password = \"s3cret\" }"));
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("tf:s3cret")
        );
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("tf:guess")
        );
        assert!(auth
            .check_request(LOCAL, None, &headers(&[("authorization", &good)]))
            .is_ok());
        assert_eq!(
            auth.check_request(LOCAL, None, &headers(&[("authorization", &bad)])),
            Err(AuthFailure::Basic)
        );
        assert_eq!(
            auth.check_request(LOCAL, None, &HeaderMap::new()),
            Err(AuthFailure::Basic)
        );
    }

    #[test]
    fn allowlist() {
        let auth = Auth::new(&source("allow_ips = [\"203.0.113.0/24\", \"::1\"]"));
        assert!(auth
            .check_request("203.0.113.9".parse().unwrap(), None, &HeaderMap::new())
            .is_ok());
        assert!(auth
            .check_request("::1".parse().unwrap(), None, &HeaderMap::new())
            .is_ok());
        let outside = auth.check_request(LOCAL, None, &HeaderMap::new());
        assert_eq!(outside, Err(AuthFailure::AddressNotAllowed));
        assert_eq!(
            AuthFailure::AddressNotAllowed.status(),
            http::StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn hmac_hex_and_base64() {
        let body = b"{\"a\":1}";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(body);
        let sig = mac.finalize().into_bytes();
        let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        let auth = Auth::new(&source(
            "hmac = { header = \"x-sig\", secret = \"0123456789abcdef\", prefix = \"sha256=\" }",
        ));
        assert!(auth
            .check_body(&headers(&[("x-sig", &format!("sha256={hex}"))]), body)
            .is_ok());
        assert_eq!(
            auth.check_body(&headers(&[("x-sig", &format!("sha256={hex}"))]), b"{}"),
            Err(AuthFailure::Hmac)
        );
        assert_eq!(
            auth.check_body(&headers(&[("x-sig", &hex)]), body),
            Err(AuthFailure::Hmac)
        );
        assert_eq!(
            auth.check_body(&HeaderMap::new(), body),
            Err(AuthFailure::Hmac)
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
        let auth = Auth::new(&source(
            "hmac = { header = \"x-sig\", secret = \"0123456789abcdef\", encoding = \"base64\" }",
        ));
        assert!(auth.check_body(&headers(&[("x-sig", &b64)]), body).is_ok());
    }

    #[test]
    fn hex_decoding_refuses_odd_and_non_hex() {
        assert_eq!(decode_hex("0aff"), Some(vec![10, 255]));
        assert_eq!(decode_hex("0af"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é0"), None);
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_nearest_untrusted_hop() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let from = |peer: &str, xff: &[&str]| {
            let pairs: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
            client_ip(ip(peer), &headers(&pairs), &trusted)
        };
        // Not a trusted peer: its header is ignored.
        assert_eq!(from("198.51.100.7", &["203.0.113.1"]), ip("198.51.100.7"));
        // Through one balancer.
        assert_eq!(from("10.0.0.2", &["203.0.113.1"]), ip("203.0.113.1"));
        // A forged left-hand hop does not win over what our proxies saw.
        assert_eq!(
            from("10.0.0.2", &["1.2.3.4, 203.0.113.1, 10.0.0.9"]),
            ip("203.0.113.1")
        );
        // Hops split over several header lines read as one list.
        assert_eq!(
            from("10.0.0.2", &["1.2.3.4", "203.0.113.1"]),
            ip("203.0.113.1")
        );
        // Garbage stops the walk at the last believable address.
        assert_eq!(
            from("10.0.0.2", &["203.0.113.1, not-an-ip"]),
            ip("10.0.0.2")
        );
        // No header: the proxy itself.
        assert_eq!(from("10.0.0.2", &[]), ip("10.0.0.2"));
        // IPv4-mapped IPv6 is read as IPv4.
        assert_eq!(from("10.0.0.2", &["::ffff:203.0.113.1"]), ip("203.0.113.1"));
    }
}
