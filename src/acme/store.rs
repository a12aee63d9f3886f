//! The ACME state on disk, under the spool's state directory (`acme/`
//! beside the spool): the account (its key and URL, as the client
//! serialises them, with the directory it belongs to) and the certificate
//! with its key. Every file is written whole (a temporary file, synced,
//! then renamed) with mode 0600, in a directory of mode 0700.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use instant_acme::AccountCredentials;
use serde::{Deserialize, Serialize};

use super::AcmeError;

const ACCOUNT: &str = "account.json";
const CERTIFICATE: &str = "certificate.pem";
const KEY: &str = "certificate.key";

/// The stored account: its credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredAccount {
    pub(super) directory: String,
    pub(super) credentials: AccountCredentials,
}

/// A certificate chain and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCertificate {
    pub chain_pem: String,
    pub key_pem: String,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The account stored for `directory`, if any (one made for another
    /// directory, e.g. staging before production, is not reused).
    pub fn account(&self, directory: &str) -> Result<Option<AccountCredentials>, AcmeError> {
        let Some(bytes) = self.read(ACCOUNT)? else {
            return Ok(None);
        };
        let stored: StoredAccount =
            serde_json::from_slice(&bytes).map_err(|e| AcmeError::Stored {
                path: self.dir.join(ACCOUNT),
                detail: e.to_string(),
            })?;
        Ok((stored.directory == directory).then_some(stored.credentials))
    }

    pub fn save_account(
        &self,
        directory: &str,
        credentials: AccountCredentials,
    ) -> Result<(), AcmeError> {
        let stored = StoredAccount {
            directory: directory.to_owned(),
            credentials,
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|e| AcmeError::Stored {
            path: self.dir.join(ACCOUNT),
            detail: e.to_string(),
        })?;
        self.write(ACCOUNT, &bytes)
    }

    pub fn certificate(&self) -> Result<Option<StoredCertificate>, AcmeError> {
        match (self.read(CERTIFICATE)?, self.read(KEY)?) {
            (Some(chain), Some(key)) => {
                let text = |bytes: Vec<u8>, name: &str| {
                    String::from_utf8(bytes).map_err(|e| AcmeError::Stored {
                        path: self.dir.join(name),
                        detail: e.to_string(),
                    })
                };
                Ok(Some(StoredCertificate {
                    chain_pem: text(chain, CERTIFICATE)?,
                    key_pem: text(key, KEY)?,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The key first: a crash between the two leaves a new key with the
    /// old chain, which fails to load as a pair and is ordered again.
    pub fn save_certificate(&self, certificate: &StoredCertificate) -> Result<(), AcmeError> {
        self.write(KEY, certificate.key_pem.as_bytes())?;
        self.write(CERTIFICATE, certificate.chain_pem.as_bytes())
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AcmeError::Io { path, source }),
        }
    }

    fn write(&self, name: &str, contents: &[u8]) -> Result<(), AcmeError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AcmeError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!(".{name}.new"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io(&temporary))?;
        file.write_all(contents).map_err(io(&temporary))?;
        file.sync_all().map_err(io(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_certificate_round_trips_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("acme"));
        assert_eq!(store.certificate().unwrap(), None);
        let certificate = StoredCertificate {
            chain_pem: "chain".into(),
            key_pem: "key".into(),
        };
        store.save_certificate(&certificate).unwrap();
        assert_eq!(store.certificate().unwrap(), Some(certificate));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&store.dir().join(KEY)), 0o600);
        assert_eq!(mode(&store.dir().join(CERTIFICATE)), 0o600);
    }
}
