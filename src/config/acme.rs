//! `[server.acme]`: a publicly trusted certificate ordered and renewed by
//! the relay itself (ACME, RFC 8555), instead of `tls_cert`/`tls_key` files
//! or `self_signed`. The ordering and renewal live in `crate::acme`; this
//! is only the schema and its rules.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::locate::KeyPath;
use super::target::host_name_problem;

/// Let's Encrypt's production directory: the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory: untrusted certificates, generous rate
/// limits; for trying a setup out.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The names the certificate covers; the first is its subject.
    pub domains: Vec<String>,
    /// Where the CA writes about expiry or problems: `ops@example.com` or
    /// `mailto:ops@example.com`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// The CA's ACME directory URL.
    #[serde(default = "default_directory")]
    pub directory: String,
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// PEM file of the CA that signs the directory's own HTTPS certificate,
    /// trusted instead of the system's roots (a private or test CA).
    pub directory_ca: Option<PathBuf>,
    /// With `challenge = "http-01"`: the listener that answers the CA's
    /// challenges (and redirects everything else to HTTPS).
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
}

/// How the CA checks that the relay holds the domain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    /// On the ingress listener itself (ALPN `acme-tls/1`): no port 80.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `http://<domain>/.well-known/acme-challenge/...` on `http_listen`.
    #[serde(rename = "http-01")]
    Http01,
}

impl fmt::Display for AcmeChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        })
    }
}

fn default_directory() -> String {
    LETS_ENCRYPT.to_owned()
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 80))
}

impl AcmeConfig {
    /// The contacts as the CA wants them (`mailto:` URLs).
    pub fn contact_urls(&self) -> Vec<String> {
        self.contact
            .iter()
            .map(|c| {
                if c.starts_with("mailto:") {
                    c.clone()
                } else {
                    format!("mailto:{c}")
                }
            })
            .collect()
    }

    /// The rules of the table on its own (`at` is `server.acme`).
    pub(super) fn check(&self, at: &KeyPath, found: &mut Vec<(KeyPath, String)>) {
        if self.domains.is_empty() {
            found.push((at.key("domains"), "names no domain".into()));
        }
        for (i, domain) in self.domains.iter().enumerate() {
            let problem = if domain.starts_with("*.") {
                Some("is a wildcard, which neither tls-alpn-01 nor http-01 can prove")
            } else if domain.parse::<std::net::IpAddr>().is_ok() {
                Some("is an IP address; name a domain")
            } else {
                host_name_problem(domain)
            };
            if let Some(problem) = problem {
                found.push((at.key("domains").index(i), format!("`{domain}` {problem}")));
            }
        }
        for (i, contact) in self.contact.iter().enumerate() {
            let address = contact.strip_prefix("mailto:").unwrap_or(contact);
            if !address.contains('@') || address.contains(char::is_whitespace) {
                found.push((
                    at.key("contact").index(i),
                    format!("`{contact}` is not an e-mail address"),
                ));
            }
        }
        if !self.directory.starts_with("https://") {
            found.push((
                at.key("directory"),
                format!("must be an https:// URL (Let's Encrypt: {LETS_ENCRYPT}, its staging: {LETS_ENCRYPT_STAGING})"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const SOURCE: &str =
        "\n[sources.tus]\nprovider = \"tusfacturas\"\ntoken = \"0123456789abcdef\"\n";

    fn with_server(server: &str) -> String {
        format!("[server]\n{server}{SOURCE}")
    }

    #[test]
    fn defaults_to_lets_encrypt_production_and_tls_alpn() {
        let text = with_server(
            "[server.acme]\ndomains = [\"relay.example.com\"]\ncontact = [\"ops@example.com\"]\n",
        );
        let config = Config::parse(&text).unwrap();
        let acme = config.server.acme.expect("[server.acme]");
        assert_eq!(acme.directory, LETS_ENCRYPT);
        assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(acme.contact_urls(), ["mailto:ops@example.com"]);
        assert_eq!(acme.http_listen.port(), 80);
    }

    #[test]
    fn http_01_with_its_listener_and_a_private_ca() {
        let text = with_server(
            "[server.acme]\ndomains = [\"relay.example.com\"]\nchallenge = \"http-01\"\nhttp_listen = \"127.0.0.1:8080\"\ndirectory = \"https://ca.internal/dir\"\ndirectory_ca = \"ca.pem\"\n",
        );
        let acme = Config::parse(&text).unwrap().server.acme.unwrap();
        assert_eq!(acme.challenge, AcmeChallenge::Http01);
        assert_eq!(acme.http_listen.port(), 8080);
        assert_eq!(acme.directory_ca, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn excludes_certificate_files_and_self_signed_with_line_and_key() {
        for other in [
            "self_signed = true\n",
            "tls_cert = \"a.crt\"\ntls_key = \"a.key\"\n",
            "tls = false\n",
        ] {
            let text = with_server(&format!(
                "{other}\n[server.acme]\ndomains = [\"relay.example.com\"]\n"
            ));
            let problems = Config::parse(&text).unwrap_err();
            assert_eq!(problems.len(), 1, "{other}: {problems:?}");
            assert_eq!(problems[0].key, "server.acme");
            assert!(problems[0].line.is_some());
            assert!(
                problems[0].message.contains("brings its own certificate"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn bad_values_are_located() {
        let text = with_server(
            "[server.acme]\ndomains = [\"relay.example.com\", \"*.example.com\", \"10.0.0.1\"]\ncontact = [\"nobody\"]\ndirectory = \"http://insecure/dir\"\n",
        );
        let problems = Config::parse(&text).unwrap_err();
        let keys: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            [
                ("server.acme.domains[1]", Some(3)),
                ("server.acme.domains[2]", Some(3)),
                ("server.acme.contact[0]", Some(4)),
                ("server.acme.directory", Some(5)),
            ],
            "{problems:?}"
        );
        let text = with_server("[server.acme]\ndomains = []\nchallenge = \"dns-01\"\n");
        let problems = Config::parse(&text).unwrap_err();
        assert_eq!(problems[0].key, "server.acme.domains", "{problems:?}");
        assert!(problems[0].message.contains("names no domain"));
        assert_eq!(problems[1].key, "server.acme.challenge", "{problems:?}");
        assert_eq!(problems[1].line, Some(4));
        assert!(problems[1].message.contains("tls-alpn-01"), "{problems:?}");
    }
}
