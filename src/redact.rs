//! Target URLs as anyone but an admin may see them: scheme, host (and
//! port) and path, never the userinfo, query or fragment, where a target's
//! credentials tend to live (`…/drop?apikey=…`). Pure.
//!
//! Used wherever a target URL reaches text a non-admin can read: an
//! attempt's error detail (the HTTP client names the URL it failed on),
//! the operational events, the log lines, the API's answers and the audit.

use std::borrow::Cow;

/// `url` as scheme, host and path; text that is not a URL with a host is
/// cut at its first `?`, `#` or `@` instead (it shows no more than that).
pub fn target_url(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(parsed) if parsed.has_host() => {
            let host = parsed.host_str().unwrap_or_default();
            match parsed.port() {
                Some(port) => format!("{}://{host}:{port}{}", parsed.scheme(), parsed.path()),
                None => format!("{}://{host}{}", parsed.scheme(), parsed.path()),
            }
        }
        _ => {
            let end = url.find(['?', '#', '@']).unwrap_or(url.len());
            url[..end].to_owned()
        }
    }
}

/// `text` with every `http://` or `https://` URL in it redacted as
/// [`target_url`] does (a URL ends at white space, a quote or `<>`;
/// punctuation after it stays).
pub fn urls_in(text: &str) -> Cow<'_, str> {
    if !contains_url(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = next_url(rest) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let len = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
            .unwrap_or(tail.len());
        let (url, after) = tail[..len].split_at(url_end(&tail[..len]));
        out.push_str(&target_url(url));
        out.push_str(after);
        rest = &tail[len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Where a URL that runs to the end of `span` stops: punctuation at its
/// end is the text's ("for url (http://host/path?q): ..."), and so is a
/// `)` the URL did not open.
fn url_end(span: &str) -> usize {
    let mut end = span.len();
    loop {
        match span[..end].chars().next_back() {
            Some(',' | '.' | ';' | ':' | '!') => end -= 1,
            Some(')') if !span[..end].contains('(') => end -= 1,
            _ => return end,
        }
    }
}

fn contains_url(text: &str) -> bool {
    next_url(text).is_some()
}

/// Where the next URL starts in `text` (ASCII case-insensitive scheme).
fn next_url(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    [lower.find("http://"), lower.find("https://")]
        .into_iter()
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_keeps_its_scheme_host_port_and_path_only() {
        assert_eq!(
            target_url("https://user:pw@erp.apps.internal:8443/in/hook?apikey=s3cret#frag"),
            "https://erp.apps.internal:8443/in/hook"
        );
        assert_eq!(
            target_url("http://127.0.0.1/drop?apikey=x"),
            "http://127.0.0.1/drop"
        );
        assert_eq!(target_url("http://[::1]:9/a"), "http://[::1]:9/a");
        assert_eq!(target_url("not a url?key=1"), "not a url");
    }

    #[test]
    fn urls_in_text_are_redacted_and_the_rest_kept() {
        let detail = "error sending request for url (http://127.0.0.1:9/drop?apikey=s3cret): \
                      connection closed before message completed";
        assert_eq!(
            urls_in(detail),
            "error sending request for url (http://127.0.0.1:9/drop): \
             connection closed before message completed"
        );
        assert_eq!(
            urls_in("to HTTPS://a.test/x?k=1 and http://u:p@b.test/y#z."),
            "to https://a.test/x and http://b.test/y."
        );
        assert!(matches!(urls_in("no url here"), Cow::Borrowed(_)));
    }
}
