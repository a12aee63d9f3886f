//! The `[admin]` section: where the admin listener binds, the bearer tokens
//! that may use it and their roles, and the targets that subscriptions
//! created through the API may point at (`allowed_targets`).
//!
//! The admin listener speaks plain HTTP, so it may only bind to loopback or
//! a unix socket: anything else is a config error (put a TLS proxy in front
//! and bind it to loopback).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::KeyPath;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `"127.0.0.1:9090"` or `"unix:/run/webhook-relay/admin.sock"`; no
    /// admin listener when absent.
    pub listen: Option<AdminListen>,
    pub tokens: Vec<AdminToken>,
    /// Hosts and networks an API-created subscription's URL may name; none
    /// when absent, so no invoice leaves for a host the operator did not name.
    pub allowed_targets: Vec<AllowedTarget>,
}

/// One entry of `allowed_targets`: a network (`"10.0.0.0/8"`, `"127.0.0.1"`),
/// a host name (`"billing.internal"`), or every host under a domain
/// (`"*.apps.internal"`). Host names compare without case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedTarget {
    Network(ipnet::IpNet),
    Host(String),
    /// `*.apps.internal`: the text after `*.`, matched as a suffix after a dot.
    Domain(String),
}

impl AllowedTarget {
    pub fn parse(text: &str) -> Result<AllowedTarget, String> {
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            return Ok(AllowedTarget::Network(net));
        }
        if let Ok(ip) = text.parse::<std::net::IpAddr>() {
            return Ok(AllowedTarget::Network(ip.into()));
        }
        let (name, domain) = match text.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        // The same host syntax as a target URL's.
        if super::host_name_problem(name).is_some() {
            return Err(format!(
                "{text:?} is not a host name, \"*.\" and a domain, an IP address or a CIDR network \
                 (e.g. \"billing.internal\", \"*.apps.internal\", \"10.0.0.0/8\")"
            ));
        }
        let name = name.to_ascii_lowercase();
        Ok(if domain {
            AllowedTarget::Domain(name)
        } else {
            AllowedTarget::Host(name)
        })
    }

    /// Whether a URL's host (as `Url::host_str` gives it: an IPv6
    /// address in brackets) is this entry's.
    pub fn allows(&self, host: &str) -> bool {
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<std::net::IpAddr>();
        match (self, ip) {
            (AllowedTarget::Network(net), Ok(ip)) => net.contains(&ip),
            (AllowedTarget::Host(name), Err(_)) => host.eq_ignore_ascii_case(name),
            (AllowedTarget::Domain(domain), Err(_)) => {
                let host = host.to_ascii_lowercase();
                host.strip_suffix(domain.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            }
            _ => false,
        }
    }
}

impl fmt::Display for AllowedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedTarget::Network(net) => write!(f, "{net}"),
            AllowedTarget::Host(name) => f.write_str(name),
            AllowedTarget::Domain(domain) => write!(f, "*.{domain}"),
        }
    }
}

impl<'de> Deserialize<'de> for AllowedTarget {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        AllowedTarget::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Where the admin listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Tcp(addr) => write!(f, "{addr}"),
            AdminListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl AdminListen {
    pub fn parse(text: &str) -> Result<AdminListen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "`unix:` needs a socket path, e.g. \"unix:/run/webhook-relay/admin.sock\""
                        .into(),
                );
            }
            return Ok(AdminListen::Unix(PathBuf::from(path)));
        }
        text.parse().map(AdminListen::Tcp).map_err(|_| {
            format!(
                "{text:?} is neither an address with a port (\"127.0.0.1:9090\") nor \"unix:PATH\""
            )
        })
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        AdminListen::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages only the subscriptions it created.
    Subscriber,
    /// Reads everything, changes nothing.
    Viewer,
    /// Everything.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Subscriber => "subscriber",
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who uses it: the audit log records this name.
    pub name: String,
    pub token: Option<String>,
    /// A file holding the token (trailing newline ignored); read at load.
    pub token_file: Option<PathBuf>,
    pub role: Role,
}

/// Shortest token accepted: a guessable admin token is a way in.
const MIN_TOKEN_LEN: usize = 16;

impl AdminConfig {
    /// Whether an API-created subscription may send to `url`: its host is
    /// one of `allowed_targets`.
    pub fn allows_target(&self, url: &reqwest::Url) -> bool {
        url.host_str()
            .is_some_and(|host| self.allowed_targets.iter().any(|t| t.allows(host)))
    }

    pub(super) fn check(&self, at: &KeyPath, problems: &mut Vec<(KeyPath, String)>) {
        if let Some(AdminListen::Tcp(addr)) = &self.listen {
            if !addr.ip().is_loopback() {
                problems.push((
                    at.key("listen"),
                    format!(
                        "{addr} is not a loopback address: the admin listener speaks plain \
                         HTTP, so bind it to 127.0.0.1, ::1 or a unix socket (and put a TLS \
                         proxy in front to reach it from elsewhere)"
                    ),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, token) in self.tokens.iter().enumerate() {
            let at = at.key("tokens").index(i);
            if token.name.trim().is_empty() {
                problems.push((at.key("name"), "a token needs a name".into()));
            } else if !names.insert(token.name.as_str()) {
                problems.push((
                    at.key("name"),
                    format!("token name {:?} is used twice", token.name),
                ));
            }
            match (&token.token, &token.token_file) {
                (Some(_), Some(_)) => problems.push((
                    at.key("token_file"),
                    "set either token or token_file, not both".into(),
                )),
                (None, None) => {
                    problems.push((at.clone(), "set token or token_file".into()));
                }
                (Some(secret), None) if secret.len() < MIN_TOKEN_LEN => problems.push((
                    at.key("token"),
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                )),
                _ => {}
            }
        }
        let secrets: Vec<&str> = self
            .tokens
            .iter()
            .filter_map(|t| t.token.as_deref())
            .collect();
        for (i, secret) in secrets.iter().enumerate() {
            if secrets[..i].contains(secret) {
                problems.push((
                    at.key("tokens"),
                    "two tokens have the same value: the audit log could not tell them apart"
                        .into(),
                ));
                break;
            }
        }
    }

    /// Relative paths are taken from the config file's directory.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let Some(AdminListen::Unix(path)) = &mut self.listen {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        for token in &mut self.tokens {
            if let Some(path) = &mut token.token_file {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }

    /// Reads each `token_file` into `token`; problems name the file.
    pub(super) fn read_token_files(&mut self, at: &KeyPath) -> Vec<(KeyPath, String)> {
        let mut problems = Vec::new();
        for (i, token) in self.tokens.iter_mut().enumerate() {
            let Some(path) = &token.token_file else {
                continue;
            };
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
                    if secret.len() < MIN_TOKEN_LEN {
                        problems.push((
                            at.key("tokens").index(i).key("token_file"),
                            format!(
                                "{} holds fewer than {MIN_TOKEN_LEN} characters",
                                path.display()
                            ),
                        ));
                    }
                    token.token = Some(secret);
                }
                Err(err) => problems.push((
                    at.key("tokens").index(i).key("token_file"),
                    format!("cannot read {}: {err}", path.display()),
                )),
            }
        }
        problems
    }
}
