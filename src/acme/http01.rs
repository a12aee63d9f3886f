//! The HTTP-01 listener (`[server.acme] http_listen`, port 80 in
//! production): it answers `/.well-known/acme-challenge/<token>` for the
//! orders under way and redirects everything else to HTTPS. It serves
//! nothing else, so opening port 80 exposes no relay route.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
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
                let host = request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok());
                let answer = answer(&challenges, request.uri().path(), host);
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

fn answer(challenges: &Challenges, path: &str, host: Option<&str>) -> Response<Full<Bytes>> {
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
    match host.map(without_port) {
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

/// `relay.example.com:80` to `relay.example.com`; `[::1]:80` to `[::1]`.
fn without_port(host: &str) -> &str {
    match host.rfind(']') {
        Some(end) => &host[..=end],
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_tokens_under_way_and_redirects_the_rest() {
        let challenges = Challenges::default();
        challenges.set_http("tok", "tok.thumb");
        let found = answer(&challenges, "/.well-known/acme-challenge/tok", None);
        assert_eq!(found.status(), StatusCode::OK);
        let missing = answer(&challenges, "/.well-known/acme-challenge/other", None);
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        for (host, location) in [
            ("relay.example.com", "https://relay.example.com/hooks/x"),
            ("relay.example.com:80", "https://relay.example.com/hooks/x"),
            ("[::1]:80", "https://[::1]/hooks/x"),
            ("[::1]", "https://[::1]/hooks/x"),
        ] {
            let moved = answer(&challenges, "/hooks/x", Some(host));
            assert_eq!(moved.status(), StatusCode::PERMANENT_REDIRECT);
            assert_eq!(moved.headers()[header::LOCATION], location, "{host}");
        }
        let no_host = answer(&challenges, "/hooks/x", None);
        assert_eq!(no_host.status(), StatusCode::BAD_REQUEST);
    }
}
