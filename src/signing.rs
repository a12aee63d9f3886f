//! Standard Webhooks signatures for the requests the forwarder sends.
//!
//! This module owns the subscription secret format (`whsec_` + standard
//! base64 of 24 to 64 key bytes) and the `webhook-signature` header value:
//! `v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")).
//! It is pure: no clock, no randomness of its own. Checking that a
//! timestamp is recent enough is the caller's job, since that needs a clock.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const SECRET_PREFIX: &str = "whsec_";
const SIGNATURE_VERSION: &str = "v1,";
const MIN_KEY_LEN: usize = 24;
const MAX_KEY_LEN: usize = 64;

/// A subscription's signing key.
///
/// Holds the HMAC already keyed, so signing does not redo the key schedule
/// and so no fallible key setup is left for `sign`/`verify`.
#[derive(Clone)]
pub struct SigningKey {
    mac: HmacSha256,
}

/// Why a `whsec_` secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("secret must start with `whsec_`")]
    MissingPrefix,
    #[error("secret is not valid base64: {0}")]
    NotBase64(String),
    #[error("secret key must be 24 to 64 bytes, got {0}")]
    BadLength(usize),
}

// === impl SigningKey ===

impl SigningKey {
    /// Parses a `whsec_<standard base64>` secret.
    pub fn from_secret(secret: &str) -> Result<Self, SecretError> {
        let key = Self::key_bytes(secret)?;
        // HMAC accepts keys of any length, so this cannot fail; mapping the
        // error keeps the function free of panics all the same.
        let mac =
            HmacSha256::new_from_slice(&key).map_err(|_| SecretError::BadLength(key.len()))?;
        Ok(Self { mac })
    }

    /// The key bytes of a `whsec_<standard base64>` secret, checked.
    pub fn key_bytes(secret: &str) -> Result<Vec<u8>, SecretError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|e| SecretError::NotBase64(e.to_string()))?;
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        Ok(key)
    }

    /// Formats fresh key bytes as a secret. The caller supplies the
    /// randomness (from a CSPRNG) so that this module stays pure.
    pub fn generate_secret(random_bytes: [u8; 32]) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(random_bytes))
    }

    /// The `webhook-signature` header value for one message:
    /// `v1,` + base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")).
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.keyed(msg_id, timestamp, body).finalize().into_bytes();
        format!("{SIGNATURE_VERSION}{}", BASE64.encode(tag))
    }

    /// Checks a `webhook-signature` header value: a space-separated list of
    /// `v1,<base64>` entries (several while a key is being rotated). True if
    /// any entry matches, compared in constant time. Entries of other
    /// versions or that are not base64 are skipped, not errors.
    pub fn verify(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        // Hash the message once; each candidate only finalizes a clone.
        let keyed = self.keyed(msg_id, timestamp, body);
        header
            .split_ascii_whitespace()
            .filter_map(|entry| entry.strip_prefix(SIGNATURE_VERSION))
            .filter_map(|sig| BASE64.decode(sig).ok())
            // `any` stops at the first match; which entry matched is not secret.
            .any(|sig| keyed.clone().verify_slice(&sig).is_ok())
    }

    fn keyed(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn spec_key() -> SigningKey {
        SigningKey::from_secret(SPEC_SECRET).unwrap()
    }

    #[test]
    fn signs_the_spec_test_vector() {
        assert_eq!(
            spec_key().sign(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn verifies_the_spec_test_vector() {
        assert!(spec_key().verify(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, SPEC_SIGNATURE));
    }

    #[test]
    fn round_trip_with_a_generated_secret() {
        let secret = SigningKey::generate_secret([7; 32]);
        assert!(secret.starts_with("whsec_"));
        let key = SigningKey::from_secret(&secret).unwrap();
        let sig = key.sign("msg_1", 1_700_000_000, b"\x00binary\xffbody");
        assert!(key.verify("msg_1", 1_700_000_000, b"\x00binary\xffbody", &sig));
    }

    #[test]
    fn rejects_a_tampered_body_id_or_timestamp() {
        let key = spec_key();
        assert!(!key.verify(
            SPEC_MSG_ID,
            SPEC_TIMESTAMP,
            br#"{"test": 2432232315}"#,
            SPEC_SIGNATURE
        ));
        assert!(!key.verify("msg_other", SPEC_TIMESTAMP, SPEC_BODY, SPEC_SIGNATURE));
        assert!(!key.verify(SPEC_MSG_ID, SPEC_TIMESTAMP + 1, SPEC_BODY, SPEC_SIGNATURE));
    }

    #[test]
    fn rejects_a_wrong_key() {
        let other = SigningKey::from_secret(&SigningKey::generate_secret([1; 32])).unwrap();
        assert!(!other.verify(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, SPEC_SIGNATURE));
    }

    #[test]
    fn accepts_any_matching_entry_of_a_multi_signature_header() {
        let other = SigningKey::from_secret(&SigningKey::generate_secret([1; 32])).unwrap();
        let other_sig = other.sign(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let header = format!("v1a,c29tZXRoaW5n v1,not-base64!! {other_sig}  {SPEC_SIGNATURE}");
        assert!(spec_key().verify(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, &header));
        assert!(other.verify(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, &header));
    }

    #[test]
    fn rejects_headers_without_a_matching_v1_entry() {
        let key = spec_key();
        let bare = SPEC_SIGNATURE.trim_start_matches("v1,");
        for header in [
            "",
            "   ",
            "v1,",
            bare,
            &format!("v2,{bare}"),
            &format!("v1,{bare}AA"),
        ] {
            assert!(
                !key.verify(SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY, header),
                "{header:?}"
            );
        }
    }

    #[test]
    fn refuses_bad_secrets() {
        assert_eq!(
            SigningKey::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(),
            SecretError::MissingPrefix
        );
        assert!(matches!(
            SigningKey::from_secret("whsec_not base64!").unwrap_err(),
            SecretError::NotBase64(_)
        ));
        let short = format!("whsec_{}", BASE64.encode([0u8; 23]));
        assert_eq!(
            SigningKey::from_secret(&short).unwrap_err(),
            SecretError::BadLength(23)
        );
        let long = format!("whsec_{}", BASE64.encode([0u8; 65]));
        assert_eq!(
            SigningKey::from_secret(&long).unwrap_err(),
            SecretError::BadLength(65)
        );
        for len in [24, 64] {
            assert!(
                SigningKey::from_secret(&format!("whsec_{}", BASE64.encode(vec![0u8; len])))
                    .is_ok()
            );
        }
    }

    #[test]
    fn debug_never_prints_the_key() {
        let secret = SigningKey::generate_secret([0xAB; 32]);
        let shown = format!("{:?}", SigningKey::from_secret(&secret).unwrap());
        assert!(!shown.contains(secret.trim_start_matches("whsec_")));
        assert!(!shown.to_lowercase().contains("abab"));
        assert_eq!(shown, "SigningKey(<redacted>)");
    }
}
