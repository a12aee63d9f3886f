//! The HTTP-01 listener (`[server.acme] http_listen`, port 80 in
//! production): it answers `/.well-known/acme-challenge/<token>` for the
//! orders under way and redirects everything else to HTTPS. It serves
//! nothing else, so opening port 80 exposes no relay route.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::challenge::Challenges;

const PREFIX: &str = "/.well-known/acme-challenge/";

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, challenges: Arc<Challenges>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "the ACME HTTP-01 listener failed to accept");
                continue;
            }
        };
        let challenges = challenges.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let answer = answer(&challenges, &request);
                async move { Ok::<_, Infallible>(answer) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(error = %err, "ACME HTTP-01 connection ended");
            }
        });
    }
}

fn answer(challenges: &Challenges, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if let Some(token) = path.strip_prefix(PREFIX) {
        return match challenges.http(token) {
            Some(key_authorization) => Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(key_authorization))),
            None => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::new())),
        }
        .unwrap_or_default();
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name));
    match host {
        Some(host) => Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, format!("https://{host}{path}"))
            .body(Full::new(Bytes::new())),
        None => Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::new())),
    }
    .unwrap_or_default()
}
