//! Answering the CA's challenges, and the certificate resolver of the
//! ingress listener when ACME is on.
//!
//! TLS-ALPN-01 (RFC 8737): the CA opens a TLS connection to the domain
//! offering only the ALPN protocol `acme-tls/1`; the resolver answers it
//! with a self-signed certificate for the domain that carries the key
//! authorization's digest, and every other handshake with the issued
//! certificate (none before the first one: the handshake fails).
//! HTTP-01: the tokens' key authorizations, served by [`super::http01`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::AcmeError;
use crate::ingress::tls::{provider, ACME_TLS_ALPN};

/// The challenges under way.
#[derive(Debug, Default)]
pub struct Challenges {
    /// Domain to its TLS-ALPN-01 certificate.
    tls: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 token to its key authorization.
    http: Mutex<HashMap<String, String>>,
}

impl Challenges {
    /// Answers TLS-ALPN-01 for `domain` with `digest` (the SHA-256 of the
    /// key authorization).
    pub fn set_tls(&self, domain: &str, digest: &[u8]) -> Result<(), AcmeError> {
        let certificate = alpn_certificate(domain, digest)?;
        lock(&self.tls).insert(domain.to_owned(), Arc::new(certificate));
        Ok(())
    }

    pub fn set_http(&self, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_owned(), key_authorization.to_owned());
    }

    /// The key authorization of an HTTP-01 token under way.
    pub fn http(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    pub fn forget_tls(&self, domain: &str) {
        lock(&self.tls).remove(domain);
    }

    pub fn forget_http(&self, token: &str) {
        lock(&self.http).remove(token);
    }

    /// Forgets every challenge (the order is over, won or lost).
    pub fn clear(&self) {
        lock(&self.tls).clear();
        lock(&self.http).clear();
    }

    fn tls(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls).get(domain).cloned()
    }
}

/// A poisoned lock only means another thread panicked while inserting into
/// a map; the map itself is still whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The RFC 8737 certificate: self-signed, for `domain` only, with the
/// critical `acmeIdentifier` extension holding `digest`.
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    if digest.len() != 32 {
        return Err(AcmeError::Challenge(format!(
            "a TLS-ALPN-01 digest has 32 bytes, not {}",
            digest.len()
        )));
    }
    let fail = |e: rcgen::Error| AcmeError::Challenge(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its check of the pair parses the
    // certificate with webpki, which refuses the critical acmeIdentifier.
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| AcmeError::Challenge(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// The ingress listener's certificates under ACME.
#[derive(Debug)]
pub struct AcmeResolver {
    current: ArcSwapOption<CertifiedKey>,
    challenges: Arc<Challenges>,
}

impl AcmeResolver {
    pub fn new(challenges: Arc<Challenges>) -> Arc<AcmeResolver> {
        Arc::new(AcmeResolver {
            current: ArcSwapOption::empty(),
            challenges,
        })
    }

    /// Serves `key` from the next handshake on; handshakes under way and
    /// open connections keep the one they had.
    pub fn install(&self, key: Arc<CertifiedKey>) {
        self.current.store(Some(key));
    }

    pub fn has_certificate(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let is_challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if is_challenge {
            return self.challenges.tls(hello.server_name()?);
        }
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_certificate_carries_the_digest_for_its_domain_only() {
        let challenges = Challenges::default();
        challenges.set_tls("relay.example.com", &[7; 32]).unwrap();
        let key = challenges.tls("relay.example.com").expect("set");
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let extension = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(extension.critical);
        assert!(extension.value.ends_with(&[7; 32]));
        assert!(challenges.tls("other.example.com").is_none());
        assert!(challenges.set_tls("relay.example.com", &[7; 31]).is_err());
        challenges.clear();
        assert!(challenges.tls("relay.example.com").is_none());
    }
}
