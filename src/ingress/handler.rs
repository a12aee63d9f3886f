//! One request, from route to answer. Every failure is an [`IngressError`]
//! with the status that tells the provider the truth: 4xx for what will
//! never be accepted, 429/503 for "retry later", 200 only once on disk.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming as IncomingBody;

use super::answer::AnswerBody;
use super::budget::{Claimant, ConnectionShare, Held, Standing, BUDGET_WAIT};
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
    #[error("content coding {0:?} is not accepted; send the body uncompressed")]
    UnsupportedContentEncoding(String),
    #[error(transparent)]
    Busy(#[from] super::budget::Busy),
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
            IngressError::UnsupportedContentEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngressError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            IngressError::UnsupportedContentEncoding(_) => "unsupported_content_encoding",
            IngressError::Busy(_) => "busy",
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
            IngressError::Busy(_) => metrics::Received::busy,
            _ => metrics::Received::refused,
        }
    }

    fn into_response(self) -> Response<AnswerBody> {
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
            IngressError::Busy(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            IngressError::UnsupportedContentEncoding(_) => {
                headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
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

fn json(status: StatusCode, body: &serde_json::Value) -> Response<AnswerBody> {
    let mut response = Response::new(AnswerBody::new(Bytes::from(body.to_string())));
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
    share: &ConnectionShare,
    request: Request<IncomingBody>,
) -> Response<AnswerBody> {
    let peer_ip = super::auth::client_ip(
        peer.ip().to_canonical(),
        request.headers(),
        &ingress.trusted_proxies,
    );
    let path = loggable_path(request.uri().path());
    let started = tokio::time::Instant::now();
    // A label only for configured sources: the path is the client's to choose.
    let source = route(request.uri().path())
        .and_then(|(name, _)| ingress.sources.get_key_value(name))
        .map_or(metrics::UNKNOWN_SOURCE, |(name, _)| name.as_str());
    let source = source.to_owned();
    let (parts, mut body) = request.into_parts();
    let mut held = Held::default();
    let result = accept(ingress, peer_ip, share, &parts, &mut body, &mut held).await;
    drop(held);
    match result {
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
            if matches!(err, IngressError::Unavailable(_) | IngressError::Busy(_)) {
                // The spool logs its own change of state once; not each refusal.
                tracing::debug!(%peer_ip, path, error = %err, "request not stored");
            } else if status.is_server_error() {
                tracing::error!(%peer_ip, path, error = %err, "request not stored");
            } else {
                tracing::info!(%peer_ip, path, status = status.as_u16(), error = %err, "request refused");
            }
            // A slow or broken upload is not waited for; after any other
            // refusal the rest of the upload is read and dropped (bounded),
            // so the answer reaches the client rather than a reset. An
            // oversized upload passed the checks before its body, and its
            // client (curl, httpx, requests) sends it whole before reading
            // an answer: it gets the long drain, the others the short one.
            let keep = !matches!(
                err,
                IngressError::BodyTimeout(_) | IngressError::BodyRead(_)
            );
            let too_large = matches!(err, IngressError::TooLarge(_));
            if keep && !expects_continue(&parts) {
                let long = too_large.then(|| ingress.budget.long_drain()).flatten();
                let bound = match &long {
                    Some(long) => DrainBound {
                        bytes: long.bytes,
                        time: ingress.body_timeout,
                    },
                    None => DrainBound {
                        bytes: DRAIN_BYTES,
                        time: DRAIN_TIME,
                    },
                };
                drain(&parts.headers, &mut body, bound).await;
            }
            let mut response = err.into_response();
            if too_large && parts.version != http::Version::HTTP_2 {
                // Whatever was left unread, the connection ends here: said
                // in the answer, so the client does not send on it again.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            if keep {
                response.map(|answer| answer.keeping(body))
            } else {
                response
            }
        }
    }
}

/// Most of an unread upload read and dropped after an early refusal other
/// than 413 (and after a 413 when every long drain is taken).
pub const DRAIN_BYTES: u64 = 1 << 20;
/// Longest time spent on that.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// How much of an unread upload is read and dropped, and for how long.
#[derive(Debug, Clone, Copy)]
struct DrainBound {
    bytes: u64,
    time: Duration,
}

/// An HTTP/1.1 client that sent `Expect: 100-continue` has not sent its
/// body: an early answer needs no drain (and reading would invite the
/// body). Over HTTP/2 hyper never sends `100 Continue`, so the client
/// sends its body after its own wait, and it is drained like any other.
fn expects_continue(parts: &Parts) -> bool {
    parts.version != http::Version::HTTP_2
        && parts
            .headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and drops what is left of a refused upload, at most
/// `bound.bytes` for at most `bound.time`, holding no byte of it, so the
/// connection is not closed (HTTP/1.x: a reset that can destroy the answer
/// in the client's buffers) or the stream reset (HTTP/2: some clients,
/// curl 7.x among them, report the answer's `RST_STREAM(NO_ERROR)` as an
/// error) with data unread. An upload declared larger than the bound is
/// not read at all.
async fn drain(headers: &HeaderMap, body: &mut IncomingBody, bound: DrainBound) {
    use hyper::body::Body as _;
    let declared = declared_length(headers);
    if body.is_end_stream() || declared.is_some_and(|len| len > bound.bytes) {
        return;
    }
    let mut left = bound.bytes;
    let _ = tokio::time::timeout(bound.time, async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    })
    .await;
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
fn check_framing(request: &Parts) -> Result<(), IngressError> {
    if request.version == http::Version::HTTP_11 && !request.headers.contains_key(header::HOST) {
        return Err(IngressError::NoHost);
    }
    for value in request.headers.get_all(header::TRANSFER_ENCODING) {
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
    response: Response<AnswerBody>,
    outcome: metrics::Received,
}

/// Compressed bodies are refused rather than inflated: no provider sends
/// them, and inflating before authentication would let a small upload
/// claim a large share of memory.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), IngressError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("identity") {
                return Err(IngressError::UnsupportedContentEncoding(coding.to_owned()));
            }
        }
    }
    Ok(())
}

/// The checks, cheapest first: everything that can refuse a request
/// before its body is read runs before it (and before a rate-limit key
/// is made for the peer).
async fn accept(
    ingress: &Ingress,
    peer: IpAddr,
    share: &ConnectionShare,
    parts: &Parts,
    body: &mut IncomingBody,
    held: &mut Held,
) -> Result<Answer, IngressError> {
    check_framing(parts)?;
    let (source_name, token) = route(parts.uri.path()).ok_or(IngressError::NotFound)?;
    let source = ingress
        .sources
        .get(source_name)
        .ok_or(IngressError::NotFound)?;
    if token.is_some() && !source.auth.has_token() {
        return Err(IngressError::NotFound);
    }
    if parts.method != Method::POST {
        return Err(IngressError::MethodNotAllowed);
    }
    source.auth.check_request(peer, token, &parts.headers)?;
    check_content_encoding(&parts.headers)?;
    if let Some(limiter) = &source.limiter {
        limiter.check(peer).map_err(IngressError::RateLimited)?;
    }
    let claimant = Claimant {
        connection: share,
        address: peer,
        standing: if source.auth.checks_before_body() {
            Standing::Authenticated
        } else {
            Standing::Unverified
        },
        declared: declared_length(&parts.headers),
    };
    let body = read_body(ingress, &claimant, body, held).await?;
    source.auth.check_body(&parts.headers, &body)?;
    let received = Received {
        source: source_name.to_owned(),
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
            let flags: Vec<&str> = notification.flags.iter().map(|f| f.as_str()).collect();
            let source = received.source.clone();
            let stored = ingress.spool.store(received, notification).await?;
            let (id, duplicate) = match stored {
                Stored::New(id) => (id, false),
                Stored::Duplicate(id) => (id, true),
            };
            tracing::info!(%id, source, event, subject, duplicate, ?flags, "notification accepted");
            let mut answer = serde_json::json!({ "id": id.to_string(), "duplicate": duplicate });
            if !flags.is_empty() {
                answer["flags"] = flags.into();
            }
            Ok(Answer {
                response: json(StatusCode::OK, &answer),
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

/// Reads the body within `max_body` and `body_timeout`, holding budget for
/// the bytes as they arrive (see `budget.rs`).
async fn read_body(
    ingress: &Ingress,
    claimant: &Claimant<'_>,
    body: &mut IncomingBody,
    held: &mut Held,
) -> Result<Bytes, IngressError> {
    let limit = ingress.max_body;
    if claimant.declared.is_some_and(|len| len > limit) {
        return Err(IngressError::TooLarge(limit));
    }
    let started = tokio::time::Instant::now();
    let deadline = started + ingress.body_timeout;
    let budget_deadline = started + BUDGET_WAIT;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len: u64 = 0;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(IngressError::BodyTimeout(ingress.body_timeout)),
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(IngressError::BodyRead(err.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing we keep
        };
        len += data.len() as u64;
        if len > limit {
            return Err(IngressError::TooLarge(limit));
        }
        ingress
            .budget
            .reserve(held, claimant, len, budget_deadline)
            .await?;
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut whole = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
            for chunk in chunks {
                whole.extend_from_slice(&chunk);
            }
            whole.freeze()
        }
    })
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
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
            check_framing(&request(http11, &[]).into_parts().0),
            Err(IngressError::NoHost)
        ));
        assert!(check_framing(&request(http::Version::HTTP_10, &[]).into_parts().0).is_ok());
        assert!(check_framing(&request(http::Version::HTTP_2, &[]).into_parts().0).is_ok());
        let host = ("host", "relay.example");
        assert!(check_framing(&request(http11, &[host]).into_parts().0).is_ok());
        assert!(check_framing(
            &request(http11, &[host, ("transfer-encoding", "chunked")])
                .into_parts()
                .0
        )
        .is_ok());
        let gzip = check_framing(
            &request(http11, &[host, ("transfer-encoding", "gzip, chunked")])
                .into_parts()
                .0,
        );
        assert!(matches!(&gzip, Err(IngressError::UnsupportedTransferCoding(c)) if c == "gzip"));
        assert_eq!(gzip.unwrap_err().status(), StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn compressed_bodies_are_refused_with_415() {
        let headers = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(value));
            headers
        };
        assert!(check_content_encoding(&HeaderMap::new()).is_ok());
        assert!(check_content_encoding(&headers("identity")).is_ok());
        let gzip = check_content_encoding(&headers("gzip")).unwrap_err();
        assert!(matches!(&gzip, IngressError::UnsupportedContentEncoding(c) if c == "gzip"));
        assert_eq!(gzip.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(gzip.kind(), "unsupported_content_encoding");
        let response = gzip.into_response();
        assert_eq!(response.headers()[header::ACCEPT_ENCODING], "identity");
        assert!(check_content_encoding(&headers("identity, br")).is_err());
    }

    #[test]
    fn statuses_tell_the_truth() {
        let busy = IngressError::Busy(super::super::budget::Busy);
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.into_response().headers()[header::RETRY_AFTER], "5");
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
