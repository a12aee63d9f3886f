//! What every admin handler answers with, below the router and the page
//! alike: [`ApiError`] and its JSON, the JSON answers, the parameter
//! checks shared by the routes, the audit record of a change, and
//! [`Call`], what the route table hands a handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::auth::{AuthError, Caller};
use super::query::QueryError;
use super::Admin;
use crate::listen::slots::RequestUnderWay;
use crate::spool::{AuditEntry, NotificationId, SpoolError};

/// What a JSON handler answers.
pub(super) type Answer = Result<Response<Full<Bytes>>, ApiError>;

/// A handler's answer, to come: what the route table holds a handler as.
pub(super) type Reply<B> = Pin<Box<dyn Future<Output = Result<Response<B>, ApiError>> + Send>>;

/// An authenticated request to a route of the table, its role already
/// checked against the route's.
pub(super) struct Call {
    pub admin: Arc<Admin>,
    pub caller: Caller,
    /// The path's `{…}` segments in order, as sent (not decoded).
    pub params: Vec<String>,
    /// The query string, `""` when none.
    pub query: String,
    pub request: Request<Incoming>,
    /// Held while the request is answered (a streamed answer keeps it
    /// until its body ends).
    pub under_way: RequestUnderWay,
}

impl Call {
    /// The `n`th `{…}` segment of the path (the table's pattern has it).
    pub fn param(&self, n: usize) -> &str {
        self.params.get(n).map_or("", String::as_str)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("no such endpoint")]
    NoRoute,
    #[error("{0} is not allowed here")]
    Method(Method),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A request that is well formed but cannot be done as asked (a
    /// subscription whose target is not allowed, a setting out of range).
    #[error("{0}")]
    Unprocessable(String),
    /// A config that did not load: the old one stays.
    #[error("{0}")]
    Invalid(String),
    #[error("the spool cannot answer now: {0}")]
    Spool(SpoolError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<SpoolError> for ApiError {
    fn from(err: SpoolError) -> Self {
        match err {
            SpoolError::NotFound(what) => ApiError::NotFound(what),
            SpoolError::NotReplayable(why) => ApiError::Conflict(why),
            other => ApiError::Spool(other),
        }
    }
}

impl ApiError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(err) => err.status(),
            ApiError::NoRoute | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Query(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid(_) | ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Spool(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::Auth(AuthError::Forbidden { .. }) => "forbidden",
            ApiError::Auth(_) => "unauthorized",
            ApiError::NoRoute | ApiError::NotFound(_) => "not_found",
            ApiError::Method(_) => "method_not_allowed",
            ApiError::Query(_) => "bad_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::Invalid(_) => "invalid_config",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::Spool(_) => "spool_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(
            self.status(),
            &json!({ "error": self.kind(), "detail": self.to_string() }),
        );
        if matches!(
            self,
            ApiError::Auth(AuthError::Missing | AuthError::Unknown)
        ) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"webhook-relay admin\""),
            );
        }
        response
    }
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn ok(body: Value) -> Result<Response<Full<Bytes>>, ApiError> {
    Ok(json_response(StatusCode::OK, &body))
}

pub(super) fn parse_id(text: &str) -> Result<NotificationId, ApiError> {
    text.parse().map_err(|why: crate::spool::IdError| {
        ApiError::Query(QueryError::Invalid {
            name: "id",
            value: text.to_owned(),
            reason: format!("not a notification id: {why}"),
        })
    })
}

/// For an endpoint that takes no parameter: a misspelt filter is refused
/// rather than silently ignored.
pub(super) fn no_parameters(query: &str) -> Result<(), ApiError> {
    match form_urlencoded::parse(query.as_bytes()).next() {
        Some((name, _)) => Err(QueryError::Unknown(name.into_owned()).into()),
        None => Ok(()),
    }
}

/// The one parameter an endpoint takes, if given; any other is an error.
pub(super) fn single_parameter(
    query: &str,
    name: &'static str,
) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != name {
            return Err(QueryError::Unknown(key.into_owned()).into());
        }
        if found.replace(value.into_owned()).is_some() {
            return Err(QueryError::Repeated(name.into()).into());
        }
    }
    Ok(found)
}

/// A path segment as the client meant it (`%2F` and the like decoded).
pub(super) fn decode_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Records a change in the spool's audit log (durably, before answering).
pub(super) async fn audit(
    admin: &Admin,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: Value,
) -> Result<(), ApiError> {
    admin
        .spool
        .audit(AuditEntry {
            actor: caller.name.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail,
        })
        .await?;
    Ok(())
}
