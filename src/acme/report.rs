//! `webhook-relay cert status`: the stored ACME certificate as an operator
//! reads it (a table, or JSON for scripts), from the files under the
//! state directory, so it works whether the relay runs or not.

use std::fmt::Write as _;

use serde::Serialize;

use super::certificate::Loaded;
use super::schedule::renew_at;
use super::store::Store;
use super::{state_dir, AcmeError};
use crate::clock::format_ms;
use crate::config::Config;

/// The ACME setup and its stored certificate.
#[derive(Debug, Serialize)]
pub struct CertStatus {
    pub directory: String,
    pub challenge: String,
    pub state_dir: String,
    /// `None` until the first certificate is issued.
    pub certificate: Option<CertReport>,
}

#[derive(Debug, Serialize)]
pub struct CertReport {
    pub domains: Vec<String>,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    /// When the relay renews it (a third of its lifetime left; a CA's ARI
    /// window, where it gives one, may move it).
    pub renews_at: String,
    /// `valid`, `renewal due` or `expired`.
    pub state: &'static str,
    /// Whether it names exactly the configured domains (if not, the relay
    /// orders one that does at its next start).
    pub matches_config: bool,
}

/// `None` when the config has no `[server.acme]`.
pub fn status(config: &Config, now_ms: i64) -> Result<Option<CertStatus>, AcmeError> {
    let Some(acme) = &config.server.acme else {
        return Ok(None);
    };
    let dir = state_dir(config);
    let certificate = match Store::new(dir.clone()).certificate()? {
        None => None,
        Some(stored) => {
            let loaded = Loaded::from_stored(&stored)?;
            let validity = loaded.info.validity;
            let renews_at_ms = renew_at(validity, None, 0.0);
            let state = if now_ms >= validity.not_after_ms {
                "expired"
            } else if now_ms >= renews_at_ms {
                "renewal due"
            } else {
                "valid"
            };
            Some(CertReport {
                matches_config: loaded.covers(&acme.domains),
                domains: loaded.info.domains,
                issuer: loaded.info.issuer,
                not_before: format_ms(validity.not_before_ms),
                not_after: format_ms(validity.not_after_ms),
                renews_at: format_ms(renews_at_ms),
                state,
            })
        }
    };
    Ok(Some(CertStatus {
        directory: acme.directory.clone(),
        challenge: acme.challenge.to_string(),
        state_dir: dir.display().to_string(),
        certificate,
    }))
}

impl CertStatus {
    /// The human form: one line per field.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |key: &str, value: &str| {
            let _ = writeln!(out, "{key:<12} {value}");
        };
        row("directory", &self.directory);
        row("challenge", &self.challenge);
        row("stored in", &self.state_dir);
        match &self.certificate {
            None => row("certificate", "none yet (the relay orders it when it runs)"),
            Some(cert) => {
                row("domains", &cert.domains.join(", "));
                row("issuer", &cert.issuer);
                row("not before", &cert.not_before);
                row("not after", &cert.not_after);
                row("renews at", &cert.renews_at);
                row("state", cert.state);
                if !cert.matches_config {
                    row(
                        "note",
                        "names other domains than the config: replaced at the next start",
                    );
                }
            }
        }
        out
    }
}
