//! Whether a state-changing request of the page comes from the page itself:
//! its `Origin` (or `Sec-Fetch-Site`) names the page's own origin, and its
//! form carries the session's CSRF token. Pure: headers and strings in, a
//! verdict out.
//!
//! `SameSite=Strict` alone is not enough: a site is a host without its
//! port, so a page served from another port of the same host (or another
//! loopback service) is "same-site" and the browser sends the cookie with
//! its forms. The origin includes the port; the token is what no other
//! page can read.

use http::{header, HeaderMap, Uri};
use subtle::ConstantTimeEq;

/// The form field that carries the session's CSRF token.
pub const CSRF_FIELD: &str = "csrf";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("the request names no host, so its origin cannot be checked")]
    NoHost,
    #[error(
        "a request from {origin} may not change anything here (the page is {expected}; \
         behind a proxy, pass the Host header and X-Forwarded-Proto)"
    )]
    CrossOrigin { origin: String, expected: String },
    #[error("a request the browser calls {0:?} may not change anything here")]
    CrossSite(String),
    #[error("the request says neither where it comes from (Origin) nor Sec-Fetch-Site")]
    NoOrigin,
    #[error("the form's CSRF token is missing or not this session's; reload the page")]
    BadToken,
}

/// The page's own origin as the browser sees it: `scheme://host[:port]`
/// of the request's Host (its authority under HTTP/2). The listener speaks
/// plain HTTP; a TLS proxy in front says so with `X-Forwarded-Proto`
/// (which a form on another site cannot set).
pub fn own_origin(uri: &Uri, headers: &HeaderMap) -> Result<String, CsrfError> {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .filter(|h| !h.is_empty())
        .ok_or(CsrfError::NoHost)?;
    let scheme = if is_https(headers) { "https" } else { "http" };
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host = host.strip_suffix(default_port).unwrap_or(&host);
    Ok(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// Whether the browser reached the page over HTTPS (through a TLS proxy
/// that says so): the session cookie is then `Secure`.
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// Refuses a request that another origin may have sent: an `Origin` must
/// be the page's own, a `Sec-Fetch-Site` must be `same-origin`, and at
/// least one of the two must be there (every browser sends one with a
/// POST).
pub fn check_origin(uri: &Uri, headers: &HeaderMap) -> Result<(), CsrfError> {
    let expected = own_origin(uri, headers)?;
    let text = |name| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let fetch_site = text("sec-fetch-site");
    if let Some(site) = &fetch_site {
        if !site.eq_ignore_ascii_case("same-origin") {
            return Err(CsrfError::CrossSite(site.clone()));
        }
    }
    match text("origin") {
        Some(origin) if origin.eq_ignore_ascii_case(&expected) => Ok(()),
        Some(origin) => Err(CsrfError::CrossOrigin { origin, expected }),
        None if fetch_site.is_some() => Ok(()),
        None => Err(CsrfError::NoOrigin),
    }
}

/// Whether the form's token is the session's, in constant time.
pub fn check_token(expected: &str, sent: Option<&str>) -> Result<(), CsrfError> {
    match sent {
        Some(sent) if bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) => Ok(()),
        _ => Err(CsrfError::BadToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    fn path() -> Uri {
        "/s/billing/pause".parse().unwrap()
    }

    #[test]
    fn the_pages_own_origin_passes() {
        let same = headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
        ]);
        assert_eq!(check_origin(&path(), &same), Ok(()));
        let browser = headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(check_origin(&path(), &browser), Ok(()));
        // Sec-Fetch-Site alone (a browser that leaves Origin out).
        let fetch_only = headers(&[("host", "relay.local"), ("sec-fetch-site", "same-origin")]);
        assert_eq!(check_origin(&path(), &fetch_only), Ok(()));
        // Host names compare without case; a default port is no port.
        let default_port = headers(&[("host", "Relay.Local:80"), ("origin", "http://relay.local")]);
        assert_eq!(check_origin(&path(), &default_port), Ok(()));
        // HTTP/2 names the host in the authority.
        let h2: Uri = "http://127.0.0.1:9090/s/billing/pause".parse().unwrap();
        let origin = headers(&[("origin", "http://127.0.0.1:9090")]);
        assert_eq!(check_origin(&h2, &origin), Ok(()));
    }

    #[test]
    fn another_port_scheme_or_site_is_refused() {
        let host = ("host", "127.0.0.1:9090");
        for origin in [
            "http://127.0.0.1:8081",
            "http://evil.example",
            "https://127.0.0.1:9090",
            "http://127.0.0.1:9090.evil.example",
            "null",
        ] {
            let err = check_origin(&path(), &headers(&[host, ("origin", origin)])).unwrap_err();
            assert!(
                matches!(err, CsrfError::CrossOrigin { .. }),
                "{origin}: {err}"
            );
        }
        for site in ["same-site", "cross-site", "none"] {
            // Even with a matching Origin (as a same-site page cannot send,
            // but a check must not depend on which header it reads first).
            let sent = headers(&[
                host,
                ("origin", "http://127.0.0.1:9090"),
                ("sec-fetch-site", site),
            ]);
            assert_eq!(
                check_origin(&path(), &sent),
                Err(CsrfError::CrossSite(site.into()))
            );
        }
        assert_eq!(
            check_origin(&path(), &headers(&[host])),
            Err(CsrfError::NoOrigin),
            "neither header: refused"
        );
        assert_eq!(
            check_origin(&path(), &headers(&[("origin", "http://127.0.0.1:9090")])),
            Err(CsrfError::NoHost)
        );
    }

    #[test]
    fn behind_a_tls_proxy_the_origin_is_https() {
        let proxied = headers(&[
            ("host", "relay.example.com"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://relay.example.com"),
        ]);
        assert!(is_https(&proxied));
        assert_eq!(check_origin(&path(), &proxied), Ok(()));
        let downgraded = headers(&[
            ("host", "relay.example.com"),
            ("x-forwarded-proto", "https"),
            ("origin", "http://relay.example.com"),
        ]);
        assert!(check_origin(&path(), &downgraded).is_err());
        assert!(!is_https(&headers(&[("host", "relay.example.com")])));
    }

    #[test]
    fn only_the_sessions_own_token_passes() {
        let token = "Zm9vYmFyYmF6cXV4MDEyMzQ1Njc4OWFiY2RlZmdoaWo";
        assert_eq!(check_token(token, Some(token)), Ok(()));
        for sent in [None, Some(""), Some(&token[1..]), Some("x")] {
            assert_eq!(
                check_token(token, sent),
                Err(CsrfError::BadToken),
                "{sent:?}"
            );
        }
        let mut other = token.to_owned();
        other.replace_range(0..1, "A");
        assert_eq!(check_token(token, Some(&other)), Err(CsrfError::BadToken));
    }
}
