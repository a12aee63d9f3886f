//! One request, from route to answer. Every failure is an [`IngressError`]
//! with the status that tells the provider the truth: 4xx for what will
//! never be accepted, 429/503 for "retry later", 200 only once on disk.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming as IncomingBody;

use super::{Ingress, Source};
use crate::config::OnInvalid;
use crate::metrics;
use crate::providers::Rejection;
use crate::spool::{Received, SpoolError, Stored};

/// Request headers worth keeping with a notification (for admins and audits).
const KEPT_HEADERS: [&str; 4] = ["user-agent", "x-forwarded-for", "x-real-ip", "x-request-id"];

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("no such endpoint")]
    NotFound,
    #[error("only POST is accepted")]
    MethodNotAllowed,
    #[error("an HTTP/1.1 request needs a Host header")]
    NoHost,
    #[error("transfer coding {0:?} is not supported; send the body plain or chunked")]
    UnsupportedTransferCoding(String),
    #[error(transparent)]
    Auth(#[from] super::AuthFailure),
    #[error("too many requests; retry in {} s", retry_after_secs(*.0))]
    RateLimited(Duration),
    #[error("body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("body did not arrive within {} s", .0.as_secs())]
    BodyTimeout(Duration),
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error("not accepted as a notification: {rejection}")]
    Invalid {
        rejection: Rejection,
        quarantine_id: String,
    },
    #[error("cannot store the notification now: {0}")]
    Unavailable(#[from] SpoolError),
}

impl IngressError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::NotFound => StatusCode::NOT_FOUND,
            IngressError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IngressError::NoHost => StatusCode::BAD_REQUEST,
            IngressError::UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            IngressError::Auth(failure) => failure.status(),
            IngressError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            IngressError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::BodyRead(_) => StatusCode::BAD_REQUEST,
            IngressError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IngressError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Short machine-readable name, the `error` field of the answer.
    pub fn kind(&self) -> &'static str {
        match self {
            IngressError::NotFound => "not_found",
            IngressError::MethodNotAllowed => "method_not_allowed",
            IngressError::NoHost => "no_host",
            IngressError::UnsupportedTransferCoding(_) => "unsupported_transfer_coding",
            IngressError::Auth(super::AuthFailure::AddressNotAllowed) => "forbidden",
            IngressError::Auth(_) => "unauthorized",
            IngressError::RateLimited(_) => "rate_limited",
            IngressError::TooLarge(_) => "payload_too_large",
            IngressError::BodyTimeout(_) => "body_timeout",
            IngressError::BodyRead(_) => "bad_body",
            IngressError::Invalid { .. } => "invalid_notification",
            IngressError::Unavailable(_) => "spool_unavailable",
        }
    }

    /// What the metrics count it as.
    fn metric(&self) -> metrics::Received {
        match self {
            IngressError::Auth(_) => metrics::Received::unauthorized,
            IngressError::RateLimited(_) => metrics::Received::rate_limited,
            IngressError::Invalid { .. } => metrics::Received::invalid,
            IngressError::Unavailable(_) => metrics::Received::spool_unavailable,
            _ => metrics::Received::refused,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut body = serde_json::json!({ "error": self.kind(), "detail": self.to_string() });
        if let IngressError::Invalid { quarantine_id, .. } = &self {
            body["quarantine_id"] = quarantine_id.clone().into();
        }
        let mut response = json(self.status(), &body);
        let headers = response.headers_mut();
        match &self {
            IngressError::RateLimited(wait) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*wait)),
                );
            }
            IngressError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            }
            IngressError::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            IngressError::Auth(super::AuthFailure::Basic) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"webhook-relay\""),
                );
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds for `Retry-After`, rounded up: a provider told to come back
/// sooner than the limiter allows would only be refused again.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) async fn handle(
    ingress: &Ingress,
    peer: SocketAddr,
    request: Request<IncomingBody>,
) -> Response<Full<Bytes>> {
    let peer_ip = super::auth::client_ip(
        peer.ip().to_canonical(),
        request.headers(),
        &ingress.trusted_proxies,
    );
    let path = loggable_path(request.uri().path());
    let started = std::time::Instant::now();
    // A label only for configured sources: the path is the client's to choose.
    let source = route(request.uri().path())
        .and_then(|(name, _)| ingress.sources.get_key_value(name))
        .map_or(metrics::UNKNOWN_SOURCE, |(name, _)| name.as_str());
    let source = source.to_owned();
    match accept(ingress, peer_ip, request).await {
        Ok(Answer { response, outcome }) => {
            ingress.metrics.received(&source, outcome);
            if matches!(
                outcome,
                metrics::Received::accepted | metrics::Received::duplicate
            ) {
                ingress.metrics.stored(
                    &source,
                    started.elapsed().as_secs_f64(),
                    ingress.clock.now_ms(),
                );
            }
            response
        }
        Err(err) => {
            ingress.metrics.received(&source, err.metric());
            let status = err.status();
            if matches!(err, IngressError::Unavailable(_)) {
                // The spool logs its own change of state once; not each refusal.
                tracing::debug!(%peer_ip, path, error = %err, "request not stored");
            } else if status.is_server_error() {
                tracing::error!(%peer_ip, path, error = %err, "request not stored");
            } else {
                tracing::info!(%peer_ip, path, status = status.as_u16(), error = %err, "request refused");
            }
            err.into_response()
        }
    }
}

/// The request path as logs may show it: a source token is a secret (and a
/// provider may post to a mistyped path), so only the first two segments
/// are shown, whatever follows is masked, and the rest is cut short.
fn loggable_path(path: &str) -> String {
    const MAX: usize = 64;
    let mut segments = path.splitn(4, '/');
    let shown = match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(""), Some(first), Some(second), Some(_)) => format!("/{first}/{second}/***"),
        _ => path.to_owned(),
    };
    match shown.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &shown[..cut]),
        None => shown,
    }
}

/// What hyper lets through but HTTP says no to: an HTTP/1.1 request with no
/// `Host` (RFC 9112 §3.2: 400), and a transfer coding other than chunked,
/// whose body hyper would otherwise read as if it were plain (RFC 9112
/// §6.1: 501).
fn check_framing<B>(request: &Request<B>) -> Result<(), IngressError> {
    if request.version() == http::Version::HTTP_11 && !request.headers().contains_key(header::HOST)
    {
        return Err(IngressError::NoHost);
    }
    for value in request.headers().get_all(header::TRANSFER_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(IngressError::UnsupportedTransferCoding(coding.to_owned()));
            }
        }
    }
    Ok(())
}

/// `/hooks/{source}` or `/hooks/{source}/{token}`.
fn route(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/hooks/")?;
    let mut parts = rest.split('/');
    let source = parts.next().filter(|s| !s.is_empty())?;
    let token = parts.next();
    if parts.next().is_some() || token == Some("") {
        return None;
    }
    Some((source, token))
}

/// A request's answer and what the metrics count it as.
struct Answer {
    response: Response<Full<Bytes>>,
    outcome: metrics::Received,
}

async fn accept(
    ingress: &Ingress,
    peer: IpAddr,
    request: Request<IncomingBody>,
) -> Result<Answer, IngressError> {
    check_framing(&request)?;
    let (source_name, token) = route(request.uri().path()).ok_or(IngressError::NotFound)?;
    let source = ingress
        .sources
        .get(source_name)
        .ok_or(IngressError::NotFound)?;
    if token.is_some() && !source.auth.has_token() {
        return Err(IngressError::NotFound);
    }
    if request.method() != Method::POST {
        return Err(IngressError::MethodNotAllowed);
    }
    if let Some(limiter) = &source.limiter {
        limiter.check(peer).map_err(IngressError::RateLimited)?;
    }
    source.auth.check_request(peer, token, request.headers())?;
    let source_name = source_name.to_owned();
    let (parts, body) = request.into_parts();
    let body = read_body(ingress, &parts.headers, body).await?;
    source.auth.check_body(&parts.headers, &body)?;
    let received = Received {
        source: source_name,
        content_type: content_type(&parts.headers),
        headers: kept_headers(&parts.headers),
        peer: peer.to_string(),
        received_ms: ingress.clock.now_ms(),
        body,
    };
    match source.provider.check(&received.body, &parts.headers) {
        Ok(notification) => {
            let (event, subject) = (
                notification.event_type.clone(),
                notification.subject.clone(),
            );
            let source = received.source.clone();
            let stored = ingress.spool.store(received, notification).await?;
            let (id, duplicate) = match stored {
                Stored::New(id) => (id, false),
                Stored::Duplicate(id) => (id, true),
            };
            tracing::info!(%id, source, event, subject, duplicate, "notification accepted");
            Ok(Answer {
                response: json(
                    StatusCode::OK,
                    &serde_json::json!({ "id": id.to_string(), "duplicate": duplicate }),
                ),
                outcome: if duplicate {
                    metrics::Received::duplicate
                } else {
                    metrics::Received::accepted
                },
            })
        }
        Err(rejection) => quarantine(ingress, source, received, rejection).await,
    }
}

async fn quarantine(
    ingress: &Ingress,
    source: &Source,
    received: Received,
    rejection: Rejection,
) -> Result<Answer, IngressError> {
    let source_name = received.source.clone();
    let id = ingress
        .spool
        .quarantine(received, rejection.kind(), rejection.to_string())
        .await?;
    tracing::warn!(source = %source_name, quarantine_id = %id, reason = %rejection, "body quarantined");
    match source.on_invalid {
        OnInvalid::Reject => Err(IngressError::Invalid {
            rejection,
            quarantine_id: id.to_string(),
        }),
        OnInvalid::Accept => Ok(Answer {
            response: json(
                StatusCode::OK,
                &serde_json::json!({ "id": id.to_string(), "duplicate": false, "quarantined": true, "detail": rejection.to_string() }),
            ),
            outcome: metrics::Received::invalid,
        }),
    }
}

async fn read_body(
    ingress: &Ingress,
    headers: &HeaderMap,
    body: IncomingBody,
) -> Result<Bytes, IngressError> {
    let limit = ingress.max_body;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(IngressError::TooLarge(limit));
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(ingress.body_timeout, limited.collect()).await {
        Err(_) => Err(IngressError::BodyTimeout(ingress.body_timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            Err(IngressError::TooLarge(limit))
        }
        Ok(Err(err)) => Err(IngressError::BodyRead(err.to_string())),
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/hooks/tus"), Some(("tus", None)));
        assert_eq!(route("/hooks/tus/abc"), Some(("tus", Some("abc"))));
        assert_eq!(route("/hooks/tus/"), None);
        assert_eq!(route("/hooks/"), None);
        assert_eq!(route("/hooks/tus/abc/def"), None);
        assert_eq!(route("/other/tus"), None);
    }

    #[test]
    fn logged_paths_never_show_a_token() {
        assert_eq!(loggable_path("/hooks/tus/s3cret-token"), "/hooks/tus/***");
        assert_eq!(loggable_path("/hooks/tus/a/b"), "/hooks/tus/***");
        assert_eq!(loggable_path("/hooks/tus"), "/hooks/tus");
        assert_eq!(loggable_path("/metrics"), "/metrics");
        assert_eq!(loggable_path("/hook/tus/s3cret"), "/hook/tus/***");
        assert_eq!(loggable_path("/hooks/tus/"), "/hooks/tus/***");
        let long = format!("/{}", "é".repeat(100));
        assert_eq!(loggable_path(&long).chars().count(), 64 + 3);
    }

    #[test]
    fn framing_hyper_lets_through_is_refused() {
        let request = |version, headers: &[(&str, &str)]| {
            let mut builder = Request::builder()
                .method("POST")
                .uri("/hooks/tus")
                .version(version);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(()).unwrap()
        };
        let http11 = http::Version::HTTP_11;
        assert!(matches!(
            check_framing(&request(http11, &[])),
            Err(IngressError::NoHost)
        ));
        assert!(check_framing(&request(http::Version::HTTP_10, &[])).is_ok());
        assert!(check_framing(&request(http::Version::HTTP_2, &[])).is_ok());
        let host = ("host", "relay.example");
        assert!(check_framing(&request(http11, &[host])).is_ok());
        assert!(check_framing(&request(http11, &[host, ("transfer-encoding", "chunked")])).is_ok());
        let gzip = check_framing(&request(
            http11,
            &[host, ("transfer-encoding", "gzip, chunked")],
        ));
        assert!(matches!(&gzip, Err(IngressError::UnsupportedTransferCoding(c)) if c == "gzip"));
        assert_eq!(gzip.unwrap_err().status(), StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn statuses_tell_the_truth() {
        assert_eq!(
            IngressError::Unavailable(SpoolError::Closed).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            IngressError::TooLarge(1).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let response = IngressError::RateLimited(Duration::from_millis(1500)).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(retry_after_secs(Duration::from_millis(3)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(4)), 4);
    }
}
