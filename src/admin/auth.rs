//! Who is calling the admin API: the bearer token of the `Authorization`
//! header, found among the configured tokens in constant time, and what its
//! role allows.

use http::{header, HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AdminConfig, Role};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs `Authorization: Bearer <token>`")]
    Missing,
    #[error("the token is not one of the relay's admin tokens")]
    Unknown,
    #[error("token {name:?} has role {role}; this needs {needed}")]
    Forbidden {
        name: String,
        role: Role,
        needed: Role,
    },
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Unknown => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// An authenticated caller: the audit log records its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// `Forbidden` unless the role is at least `needed` (admin > viewer >
    /// subscriber).
    pub fn require(&self, needed: Role) -> Result<(), AuthError> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                name: self.name.clone(),
                role: self.role,
                needed,
            })
        }
    }
}

struct Entry {
    name: String,
    /// SHA-256 of the token: equal lengths, so the comparison takes the
    /// same time whatever the caller sent.
    digest: [u8; 32],
    role: Role,
}

/// The configured tokens.
pub struct Tokens(Vec<Entry>);

impl Tokens {
    /// From a loaded config (token files already read into `token`).
    pub fn from_config(config: &AdminConfig) -> Tokens {
        Tokens(
            config
                .tokens
                .iter()
                .filter_map(|t| {
                    Some(Entry {
                        name: t.name.clone(),
                        digest: digest(t.token.as_deref()?),
                        role: t.role,
                    })
                })
                .collect(),
        )
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let text = value.to_str().map_err(|_| AuthError::Unknown)?;
        let token = match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(AuthError::Missing),
        };
        self.find(token)
    }

    /// The entry whose token is `token`.
    pub fn find(&self, token: &str) -> Result<Caller, AuthError> {
        self.find_digest(&digest(token))
    }

    /// The entry whose token's SHA-256 is `digest` (what a page session
    /// keeps instead of the token).
    pub fn find_digest(&self, digest: &[u8; 32]) -> Result<Caller, AuthError> {
        // Every entry is compared, so the time does not tell which matched.
        let mut found = None;
        for entry in &self.0 {
            if bool::from(entry.digest.ct_eq(digest)) {
                found = Some(entry);
            }
        }
        found
            .map(|entry| Caller {
                name: entry.name.clone(),
                role: entry.role,
            })
            .ok_or(AuthError::Unknown)
    }
}

/// SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminToken;

    fn tokens() -> Tokens {
        let token = |name: &str, secret: &str, role| AdminToken {
            name: name.into(),
            token: Some(secret.into()),
            token_file: None,
            role,
        };
        Tokens::from_config(&AdminConfig {
            listen: None,
            allowed_targets: Vec::new(),
            tokens: vec![
                token("ops", "admin-token-0123456789", Role::Admin),
                token("grafana", "viewer-token-0123456789", Role::Viewer),
            ],
        })
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_known_token_names_its_caller_and_role() {
        let caller = tokens()
            .authenticate(&bearer("Bearer viewer-token-0123456789"))
            .unwrap();
        assert_eq!(caller.name, "grafana");
        assert!(caller.require(Role::Viewer).is_ok());
        let refused = caller.require(Role::Admin).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(tokens()
            .authenticate(&bearer("bearer admin-token-0123456789"))
            .unwrap()
            .require(Role::Admin)
            .is_ok());
    }

    #[test]
    fn no_token_or_a_wrong_one_is_401() {
        for headers in [
            HeaderMap::new(),
            bearer("Basic b3BzOnNlY3JldA=="),
            bearer("Bearer admin-token-012345678"),
            bearer("Bearer "),
        ] {
            let err = tokens().authenticate(&headers).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{headers:?}");
        }
    }
}
