//! The HTTP call to a provider's query API, the one impure step of a
//! check (the request is built and the answer read by the provider
//! module, `providers::query`). Like the forwarder's clients: no redirects
//! (a query API that redirects is misconfigured, and its credentials must
//! not follow), no proxy from the environment, a timeout that covers the
//! answer's body, an optional extra CA (`tls_ca`). The answer is read up
//! to [`MAX_ANSWER`]: a provider's answer about one invoice is a few KiB.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};

/// The most of an answer read; a longer one is a failure (`unreadable`).
pub const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("tls_ca {path}: {detail}")]
    TlsCa { path: String, detail: String },
    #[error("the query API's client: {0}")]
    Build(String),
}

/// A request that got no answer to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Not sent, or no answer (connection, TLS, an invalid URL).
    #[error("{0}")]
    Unreachable(String),
    /// An answer longer than [`MAX_ANSWER`].
    #[error("an answer of more than {MAX_ANSWER} bytes")]
    TooLarge { status: u16 },
}

impl SendError {
    /// Its name in the checks and the metrics' `outcome`.
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::Timeout(_) => "timeout",
            SendError::Unreachable(_) => "unreachable",
            SendError::TooLarge { .. } => "unreadable",
        }
    }
}

/// One source's client for its provider's query API.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    client: reqwest::Client,
    timeout: Duration,
}

impl ProviderClient {
    pub fn new(timeout: Duration, tls_ca: Option<&Path>) -> Result<ProviderClient, ClientError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout)
            .pool_max_idle_per_host(2)
            .user_agent(concat!("webhook-relay/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = tls_ca {
            let fail = |detail: String| ClientError::TlsCa {
                path: path.display().to_string(),
                detail,
            };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?
            {
                builder = builder.tls_certs_merge([cert]);
            }
        }
        let client = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(ProviderClient { client, timeout })
    }

    /// Sends one request to `url`; the answer's status and body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<(u16, Bytes), SendError> {
        let url = reqwest::Url::parse(url).map_err(|e| SendError::Unreachable(e.to_string()))?;
        let mut request = self.client.request(method, url).timeout(self.timeout);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if !body.is_empty() {
            request = request.body(body);
        }
        let mut response = request.send().await.map_err(|e| self.failure(&e))?;
        let status = response.status().as_u16();
        let mut answer = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(&e))? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return Err(SendError::TooLarge { status });
            }
            answer.extend_from_slice(&chunk);
        }
        Ok((status, answer.freeze()))
    }

    fn failure(&self, err: &reqwest::Error) -> SendError {
        if err.is_timeout() {
            return SendError::Timeout(self.timeout);
        }
        // The URL (the NubeFact RUTA is a secret of sorts) stays out.
        let mut text = err.without_url_text();
        let mut cause = err.source();
        while let Some(next) = cause {
            text.push_str(": ");
            text.push_str(&next.to_string());
            cause = next.source();
        }
        SendError::Unreachable(text)
    }
}

/// An error's own text, without the URL reqwest adds to it.
trait WithoutUrl {
    fn without_url_text(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_text(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(url) => text.replace(&format!(" for url ({url})"), ""),
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback server that answers each connection with `answer`
    /// (after `delay`), and hands back what it read.
    async fn serve(
        answer: &'static str,
        delay: Duration,
    ) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, requests) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut read = vec![0u8; 16 << 10];
                    let n = socket.read(&mut read).await.unwrap_or(0);
                    let _ = seen
                        .send(String::from_utf8_lossy(&read[..n]).into_owned())
                        .await;
                    tokio::time::sleep(delay).await;
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (url, requests)
    }

    #[tokio::test]
    async fn it_sends_the_request_as_built_and_reads_status_and_body() {
        let (url, mut requests) = serve(
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 30\r\nconnection: close\r\n\r\n{\"errors\":\"token\",\"codigo\":10}",
            Duration::ZERO,
        )
        .await;
        let client = ProviderClient::new(Duration::from_secs(5), None).unwrap();
        let headers = [(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Token token=\"t\""),
        )];
        let (status, body) = client
            .send(
                Method::POST,
                &format!("{url}/api/v1/x"),
                &headers,
                Bytes::from_static(b"{\"a\":1}"),
            )
            .await
            .unwrap();
        assert_eq!(status, 401);
        assert_eq!(&body[..], b"{\"errors\":\"token\",\"codigo\":10}");
        let request = requests.recv().await.unwrap();
        assert!(
            request.starts_with("POST /api/v1/x HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("authorization: Token token=\"t\"\r\n"),
            "{request}"
        );
        assert!(request.ends_with("{\"a\":1}"), "{request}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let (url, mut requests) = serve(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let client = ProviderClient::new(Duration::from_secs(5), None).unwrap();
        let (status, _) = client
            .send(Method::GET, &format!("{url}/invoices/1"), &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(status, 302);
        assert!(requests.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_slow_answer_is_a_timeout_and_a_closed_port_unreachable_without_the_url() {
        let (url, _requests) = serve("HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(30)).await;
        let client = ProviderClient::new(Duration::from_millis(100), None).unwrap();
        let err = client
            .send(Method::GET, &url, &[], Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(err, SendError::Timeout(Duration::from_millis(100)));
        assert_eq!(err.kind(), "timeout");
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = client
            .send(
                Method::POST,
                &format!("http://127.0.0.1:{closed}/api/v1/secret-ruta"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "unreachable");
        assert!(!err.to_string().contains("secret-ruta"), "{err}");
    }

    #[tokio::test]
    async fn an_answer_dribbling_past_the_timeout_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut read = vec![0u8; 16 << 10];
            let _ = socket.read(&mut read).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                .await;
            // A byte every 20 ms: each read is quick, the whole is not.
            for _ in 0..100_000 {
                if socket.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let client = ProviderClient::new(Duration::from_millis(300), None).unwrap();
        let started = tokio::time::Instant::now();
        let err = client
            .send(Method::GET, &url, &[], Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(err, SendError::Timeout(Duration::from_millis(300)));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_is_refused_without_reading_it_all() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut read = vec![0u8; 16 << 10];
            let _ = socket.read(&mut read).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
            // Endless: the client must stop reading on its own.
            while socket.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let client = ProviderClient::new(Duration::from_secs(10), None).unwrap();
        let err = client
            .send(Method::GET, &url, &[], Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(err, SendError::TooLarge { status: 200 });
        assert_eq!(err.kind(), "unreadable");
    }

    #[test]
    fn an_unreadable_tls_ca_is_a_setup_error() {
        let err = ProviderClient::new(
            Duration::from_secs(1),
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
