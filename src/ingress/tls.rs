//! TLS for the ingress listener: rustls with the aws-lc-rs provider, ALPN
//! `h2` and `http/1.1`, and a certificate that can be swapped while running
//! (SIGHUP re-reads the files) through an `ArcSwap`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {}: {detail}", path.display())]
    Certificate { path: PathBuf, detail: String },
    #[error("cannot read private key {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
    #[error("certificate and key do not fit together: {0}")]
    Mismatch(String),
    #[error("cannot create the self-signed certificate in {}: {detail}", path.display())]
    SelfSigned { path: PathBuf, detail: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The one crypto provider of the whole process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadableCert {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl ReloadableCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let key = read_pair(cert_path, key_path)?;
        Ok(Arc::new(ReloadableCert {
            current: ArcSwap::from_pointee(key),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        }))
    }

    /// A self-signed certificate made in memory; a reload reads its files,
    /// once [`SelfSigned::write`] has written them.
    pub fn from_self_signed(generated: &SelfSigned) -> Result<Arc<Self>, TlsError> {
        let cert_err = |detail: String| TlsError::Certificate {
            path: generated.cert_path.clone(),
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(generated.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(generated.key_pem.as_bytes()).map_err(|e| {
            TlsError::Key {
                path: generated.key_path.clone(),
                detail: e.to_string(),
            }
        })?;
        let key = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| TlsError::Mismatch(e.to_string()))?;
        Ok(Arc::new(ReloadableCert {
            current: ArcSwap::from_pointee(key),
            cert_path: generated.cert_path.clone(),
            key_path: generated.key_path.clone(),
        }))
    }

    /// Re-reads the files; on error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = read_pair(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(key));
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |detail: String| TlsError::Certificate {
        path: cert_path.to_owned(),
        detail,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.to_owned(),
        detail: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch(e.to_string()))
}

/// The rustls server config over a reloadable certificate.
pub fn server_config(cert: Arc<ReloadableCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(Arc::new(resolved_by(cert)?))
}

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737), which the ingress offers
/// under ACME and `acme` answers.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The rustls server config under ACME: the resolver also answers the CA's
/// TLS-ALPN-01 handshakes, whose ALPN protocol is offered last (only the
/// CA's validator asks for it).
pub fn acme_server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = resolved_by(resolver)?;
    config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    Ok(Arc::new(config))
}

fn resolved_by(cert: Arc<dyn ResolvesServerCert>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    // `http/1.0` too: a client that offers only it (curl --http1.0) would
    // otherwise fail the handshake; it is served as HTTP/1.x.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(config)
}

/// Makes a self-signed certificate for localhost the first time, then reuses
/// it, so clients that pinned it keep working across restarts.
pub fn ensure_self_signed(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    if cert_path.exists() && key_path.exists() {
        return Ok(());
    }
    SelfSigned::generate(cert_path, key_path)?.write()
}

/// A self-signed certificate for localhost, made in memory: a start writes
/// it to its files only once nothing else can fail, so a failed start
/// leaves nothing behind.
pub struct SelfSigned {
    cert_pem: String,
    key_pem: String,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl SelfSigned {
    pub fn generate(cert_path: &Path, key_path: &Path) -> Result<SelfSigned, TlsError> {
        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let generated =
            rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::SelfSigned {
                path: cert_path.parent().unwrap_or(Path::new(".")).to_owned(),
                detail: e.to_string(),
            })?;
        Ok(SelfSigned {
            cert_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Writes the key (mode 0600) and the certificate.
    pub fn write(&self) -> Result<(), TlsError> {
        let fail = |detail: String| TlsError::SelfSigned {
            path: self.cert_path.parent().unwrap_or(Path::new(".")).to_owned(),
            detail,
        };
        if let Some(dir) = self.cert_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        write_private(&self.key_path, self.key_pem.as_bytes()).map_err(|e| fail(e.to_string()))?;
        std::fs::write(&self.cert_path, &self.cert_pem).map_err(|e| fail(e.to_string()))?;
        tracing::info!(cert = %self.cert_path.display(), "generated a self-signed certificate for localhost");
        Ok(())
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
