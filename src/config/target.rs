//! A subscription's target URL and host names: one syntax for `relay.toml`,
//! the admin API (which checks what it is given as a subscription of
//! `relay.toml`) and `[admin] allowed_targets`.
//!
//! The `url` crate is lenient the way a browser's address bar is: it trims
//! spaces and control characters around a URL, drops tabs and newlines
//! inside it, and takes a host with an empty label (`x..apps.test`) or
//! characters no host name holds (`a!b`). The relay keeps the text it was
//! given and shows it; a text that only works after such repairs is
//! refused here, with what is wrong, rather than stored as it came.

/// Why a target URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetUrlError {
    #[error("{0:?} has spaces or control characters (a newline, a tab) around or inside it: write the URL alone")]
    Whitespace(String),
    #[error("{text:?} is not a URL: {reason}")]
    NotUrl { text: String, reason: String },
    #[error("{0:?} is not an http or https URL with a host")]
    NotHttp(String),
    #[error("{text:?}: {reason}")]
    BadHost { text: String, reason: String },
}

/// The URL a subscription delivers to: http or https with a host, written
/// as it is meant (no surrounding or inner whitespace), and a host that is
/// an IP address or a [`host_name_problem`]-free name.
pub fn target_url(text: &str) -> Result<reqwest::Url, TargetUrlError> {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TargetUrlError::Whitespace(text.to_owned()));
    }
    let url = reqwest::Url::parse(text).map_err(|err| TargetUrlError::NotUrl {
        text: text.to_owned(),
        reason: err.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TargetUrlError::NotHttp(text.to_owned()));
    }
    if url.host_str().is_none() {
        return Err(TargetUrlError::NotHttp(text.to_owned()));
    }
    // `domain` is the host unless it is an IP address.
    match url
        .domain()
        .and_then(|name| Some((name, host_name_problem(name)?)))
    {
        None => Ok(url),
        Some((name, reason)) => Err(TargetUrlError::BadHost {
            text: text.to_owned(),
            reason: format!("host {name:?} {reason}"),
        }),
    }
}

/// What is wrong with a host name, if anything: dot-separated labels of
/// ASCII letters, digits, `-` and `_` (DNS names and container service
/// names hold `_`), none empty, none longer than 63 nor starting or ending
/// with `-`, at most 253 characters in all, no trailing dot.
pub fn host_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.len() > 253 {
        return Some("is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some("has an empty label (two dots in a row, or a dot at an end)");
        }
        if label.len() > 63 {
            return Some("has a label longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("has a label that starts or ends with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some("may hold only letters, digits, '-', '_' and dots");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls_are_taken_as_written_or_refused() {
        for good in [
            "http://billing.internal/hooks",
            "https://erp.apps.test:8443/in?x=1",
            "http://my_service:8080/in",
            "http://127.0.0.1:9000/in",
            "http://[::1]:9000/in",
            "http://BILLING.Internal/",
        ] {
            assert!(target_url(good).is_ok(), "{good}");
        }
        let refused = |text: &str| target_url(text).expect_err(text);
        for spaced in [
            " http://billing.internal/in",
            "http://billing.internal/in\n",
            "http://billing.internal/in ",
            "\thttp://billing.internal/in",
            "http://billing.in\nternal/in",
            "http://billing.internal/a b",
        ] {
            assert!(
                matches!(refused(spaced), TargetUrlError::Whitespace(_)),
                "{spaced:?}"
            );
        }
        for bad_host in [
            "http://x..apps.test/in",
            "http://.apps.test/in",
            "http://apps.test./in",
            "http://-x.apps.test/in",
            "http://a!b.test/in",
            "http://a$b.test/in",
        ] {
            let err = refused(bad_host);
            assert!(
                matches!(err, TargetUrlError::BadHost { .. }),
                "{bad_host:?}: {err}"
            );
        }
        assert!(refused("http://x..apps.test/in")
            .to_string()
            .contains("empty label"));
        for not_http in [
            "ftp://billing.internal/",
            "file:///etc/passwd",
            "unix:/run/x",
        ] {
            assert!(
                matches!(refused(not_http), TargetUrlError::NotHttp(_)),
                "{not_http}"
            );
        }
        assert!(matches!(
            refused("billing.internal/in"),
            TargetUrlError::NotUrl { .. }
        ));
    }
}
