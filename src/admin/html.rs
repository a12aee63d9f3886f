//! The page's HTML, shared by its parts (`page`, `record_page`,
//! `invoice_page`): the document around a page's body, HTML answers with
//! their security headers, redirects, an error as a page, and values made
//! safe as text.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::auth::Caller;
use super::csrf::CSRF_FIELD;
use super::respond::ApiError;
use super::style;

/// A browser logged in to the page: who, and the CSRF token its forms carry.
pub(super) struct LoggedIn {
    pub caller: Caller,
    pub csrf: String,
}

pub(super) fn html(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing here runs script or loads anything from elsewhere.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Text made safe inside HTML elements and attribute values.
pub(super) use super::humane::escape;

/// A JSON value as escaped text ("–" when absent).
pub(super) fn text(value: &Value) -> String {
    match value {
        Value::Null => "–".into(),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

pub(super) fn page(title: &str, user: Option<&LoggedIn>, body: &str) -> String {
    let who = user
        .map(|user| {
            format!(
                "<span class=muted>{} ({})</span><form class=inline method=post action=/logout>{}<button>log out</button></form>",
                escape(&user.caller.name),
                user.caller.role,
                csrf_input(user)
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{title} · webhook-relay</title>\
         <style>{style}</style></head><body><header><h1><a href=/>webhook-relay</a></h1>{who}</header>{body}</body></html>",
        title = escape(title),
        style = style::sheet(),
    )
}

/// The hidden field that carries the session's CSRF token in a form.
pub(super) fn csrf_input(user: &LoggedIn) -> String {
    format!(
        "<input type=hidden name={CSRF_FIELD} value=\"{}\">",
        escape(&user.csrf)
    )
}

pub(super) fn redirect(to: &str, cookie: Option<HeaderValue>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// An error as a page: the status and what went wrong.
pub(super) fn error_page(err: &ApiError) -> Response<Full<Bytes>> {
    html(
        err.status(),
        &page(
            "error",
            None,
            &format!(
                "<p class=dead>{}</p><p><a href=/>back</a></p>",
                escape(&err.to_string())
            ),
        ),
    )
}

/// A notification's flags (what its provider check accepted though not
/// as documented), each a badge; nothing when it has none.
pub(super) fn flags(value: &Value) -> String {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|flag| format!(" <span class=flag>{}</span>", text(flag)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(text(&Value::Null), "–");
        assert_eq!(text(&serde_json::json!("0001-<b>")), "0001-&lt;b&gt;");
    }
}
