//! An issued certificate read back: the key rustls serves, and what the
//! renewal and the operator need to know of it (names, issuer, validity,
//! and its ARI identifier).

use std::sync::Arc;

use instant_acme::CertificateIdentifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use super::schedule::Validity;
use super::store::StoredCertificate;
use super::AcmeError;
use crate::ingress::tls::provider;

/// What is known of the certificate being served.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    pub domains: Vec<String>,
    pub issuer: String,
    pub validity: Validity,
    /// Its ARI name, when the certificate carries an authority key id.
    pub id: Option<CertificateIdentifier<'static>>,
}

/// A certificate ready to serve.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertificateInfo,
}

impl Loaded {
    pub fn from_stored(stored: &StoredCertificate) -> Result<Loaded, AcmeError> {
        let bad = |detail: String| AcmeError::Certificate(detail);
        let chain = CertificateDer::pem_slice_iter(stored.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(bad("no certificate in the chain".into()));
        };
        let info = info(leaf)?;
        let key = PrivateKeyDer::from_pem_slice(stored.key_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let key =
            CertifiedKey::from_der(chain, key, &provider()).map_err(|e| bad(e.to_string()))?;
        Ok(Loaded {
            key: Arc::new(key),
            info,
        })
    }

    /// Whether it names exactly these domains (the config may have changed).
    pub fn covers(&self, domains: &[String]) -> bool {
        let mut wanted = domains.to_vec();
        let mut have = self.info.domains.clone();
        wanted.sort();
        have.sort();
        wanted == have
    }
}

fn info(leaf: &CertificateDer<'_>) -> Result<CertificateInfo, AcmeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| AcmeError::Certificate(e.to_string()))?;
    let validity = cert.validity();
    let mut domains = Vec::new();
    if let Ok(Some(names)) = cert.subject_alternative_name() {
        for name in &names.value.general_names {
            if let GeneralName::DNSName(name) = name {
                domains.push((*name).to_owned());
            }
        }
    }
    Ok(CertificateInfo {
        domains,
        issuer: cert.issuer().to_string(),
        validity: Validity {
            not_before_ms: validity.not_before.timestamp().saturating_mul(1000),
            not_after_ms: validity.not_after.timestamp().saturating_mul(1000),
        },
        id: CertificateIdentifier::try_from(leaf)
            .ok()
            .map(CertificateIdentifier::into_owned),
    })
}
