//! Ingest: each provider's documented payloads, duplicates, and every kind of
//! bad input, checked against what the spool holds.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use webhook_relay::spool::NotificationId;

use crate::helpers::*;

const NUBEFACT_DOC: &str = r#"{
  "tipo_de_comprobante": 2,
  "serie": "BBB1",
  "numero": 105,
  "enlace": "https://www.nubefact.com/cpe/...",
  "aceptada_por_sunat": true,
  "sunat_description": "La Boleta de Venta numero BBB1-105, ha sido aceptada",
  "sunat_responsecode": "0",
  "enlace_del_pdf": "https://www.nubefact.com/cpe/xxx.pdf",
  "enlace_del_xml": "https://www.nubefact.com/cpe/xxx.xml",
  "enlace_del_cdr": "https://www.nubefact.com/cpe/xxx.cdr",
  "codigo_hash": "xMLFMnbgp1/bHEy572RKRTE9hPY="
}"#;

fn datil(estado: &str) -> String {
    format!(
        r#"{{"id": "abc123", "secuencial": "17", "clave_acceso": "2907201501179214673900110010010000000171234567812",
  "autorizacion": {{"numero": "2907201515283909927125540017656314390", "fecha": "2015-09-28T19:28:56.782Z", "estado": "{estado}", "mensajes": []}}}}"#
    )
}

fn basic_nubefact() -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("nubefact:{NUBE_TOKEN}"));
    format!("Basic {auth}")
}

#[tokio::test]
async fn each_provider_s_documented_payload_is_spooled_with_its_event_and_subject() {
    let relay = TestRelay::start("").await;
    let tus = tusfacturas("hook-1", "emitido", 1);
    let (status, json) = relay
        .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), tus.clone())
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["duplicate"], false);
    let tus_id = NotificationId::parse(json["id"].as_str().unwrap()).expect("a ULID id");

    let (status, json) = relay
        .post(&format!("/hooks/datil/{DATIL_TOKEN}"), datil("AUTORIZADO"))
        .await;
    assert_eq!(status, 200, "{json}");

    let response = relay
        .client
        .post(relay.url("/hooks/nubefact"))
        .header("authorization", basic_nubefact())
        // Providers are careless with Content-Type: the body is judged, not the header.
        .header("content-type", "text/plain")
        .body(NUBEFACT_DOC)
        .send()
        .await
        .unwrap();
    let (status, json) = answer(response).await;
    assert_eq!(status, 200, "{json}");

    let spool = &relay.relay().spool;
    let records: Vec<_> = spool.notifications().collect().await.unwrap();
    let summary: Vec<(&str, &str, Option<&str>)> = records
        .iter()
        .map(|r| {
            (
                r.meta.source.as_str(),
                r.meta.event_type.as_str(),
                r.meta.subject.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("tusfacturas", "facturacion.emitido", Some("17032")),
            ("datil", "comprobante.autorizado", Some("abc123")),
            ("nubefact", "comprobante.aceptado", Some("BBB1-105")),
        ]
    );
    let first = spool
        .notification(tus_id)
        .await
        .unwrap()
        .expect("stored under the id it answered");
    assert_eq!(
        first.body.as_ref(),
        tus.as_bytes(),
        "body kept byte for byte"
    );
    assert_eq!(
        first.meta.provider_time.as_deref(),
        Some("2022-03-18T18:58:11Z")
    );
    assert!(first.meta.received_ms > 1_600_000_000_000);
    assert_eq!(records[2].meta.content_type.as_deref(), Some("text/plain"));
    relay.stop().await;
}

#[tokio::test]
async fn a_provider_retry_is_a_duplicate_and_a_new_state_is_not() {
    let relay = TestRelay::start("").await;
    let path = format!("/hooks/tusfacturas/{TUS_TOKEN}");
    let (_, first) = relay
        .post(&path, tusfacturas("hook-7", "encolado", 1))
        .await;
    let (status, retry) = relay
        .post(&path, tusfacturas("hook-7", "encolado", 2))
        .await;
    assert_eq!(status, 200);
    assert_eq!(retry["duplicate"], true);
    assert_eq!(
        retry["id"], first["id"],
        "a duplicate answers the first one's id"
    );
    let (_, emitted) = relay.post(&path, tusfacturas("hook-7", "emitido", 1)).await;
    assert_eq!(emitted["duplicate"], false);

    let datil_path = format!("/hooks/datil/{DATIL_TOKEN}");
    let (_, a) = relay.post(&datil_path, datil("AUTORIZADO")).await;
    let (_, again) = relay.post(&datil_path, datil("AUTORIZADO")).await;
    let (_, other) = relay.post(&datil_path, datil("NO AUTORIZADO")).await;
    assert_eq!(again["id"], a["id"]);
    assert_eq!(other["duplicate"], false);
    assert_eq!(relay.relay().spool.notifications().count().await, 4);
    relay.stop().await;
}

#[tokio::test]
async fn concurrent_copies_of_one_notification_store_it_once() {
    let relay = TestRelay::start("").await;
    let path = format!("/hooks/tusfacturas/{TUS_TOKEN}");
    let posts =
        (1..=16).map(|intento| relay.post(&path, tusfacturas("hook-c", "emitido", intento)));
    let answers = futures_util::future::join_all(posts).await;
    let ids: std::collections::HashSet<_> =
        answers.iter().map(|(s, j)| (*s, j["id"].clone())).collect();
    assert_eq!(
        ids.len(),
        1,
        "every copy answers 200 with the same id: {answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|(_, j)| j["duplicate"] == false)
            .count(),
        1
    );
    assert_eq!(relay.relay().spool.notifications().count().await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn bad_input_gets_its_status_and_stores_nothing() {
    let relay = TestRelay::start("").await;
    let tus = tusfacturas("hook-x", "emitido", 1);
    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("unknown source", "/hooks/ghost/abc", 404, "not_found"),
        (
            "wrong token",
            "/hooks/tusfacturas/wrong-token-000000",
            401,
            "unauthorized",
        ),
        ("missing token", "/hooks/tusfacturas", 401, "unauthorized"),
        ("not under /hooks", "/other", 404, "not_found"),
        (
            "no basic credentials",
            "/hooks/nubefact",
            401,
            "unauthorized",
        ),
        ("address not allowed", "/hooks/office", 403, "forbidden"),
        ("unsigned", "/hooks/signed", 401, "unauthorized"),
    ];
    for (what, path, expected, kind) in cases {
        let (status, json) = relay.post(path, tus.clone()).await;
        assert_eq!(status, expected, "{what}: {json}");
        assert_eq!(json["error"], kind, "{what}");
        assert!(json["detail"].is_string(), "{what}");
    }
    let response = relay
        .client
        .get(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let too_big = format!("{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let (status, json) = relay
        .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), too_big)
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    let spool = &relay.relay().spool;
    assert_eq!(spool.notifications().count().await, 0);
    assert_eq!(
        spool.quarantined().count().await,
        0,
        "unauthenticated bodies are not kept"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_body_too_large_without_content_length_is_cut_off_at_the_limit() {
    let relay = TestRelay::start("").await;
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = (0..20)
        .map(|_| {
            Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                b' ';
                8 * 1024
            ])))
        })
        .collect();
    let body = reqwest::Body::wrap(http_body_util::StreamBody::new(futures_util::stream::iter(
        chunks,
    )));
    let (status, _) = relay
        .post(&format!("/hooks/tusfacturas/{TUS_TOKEN}"), body)
        .await;
    assert_eq!(status, 413);
    relay.stop().await;
}

#[tokio::test]
async fn an_authenticated_invalid_body_is_quarantined_with_its_reason() {
    let relay = TestRelay::start("").await;
    let path = format!("/hooks/tusfacturas/{TUS_TOKEN}");
    let invalid: Vec<(&str, &str)> = vec![
        ("<xml>not json</xml>", "not_json"),
        ("[1, 2]", "not_object"),
        (
            r#"{"evento": "emitido", "recurso": "facturacion"}"#,
            "missing_field",
        ),
        (
            r#"{"evento": "emitido", "recurso": "facturacion", "external_reference": "1", "hook_id": 1.5}"#,
            "invalid_field",
        ),
    ];
    for (body, _) in &invalid {
        let (status, json) = relay.post(&path, *body).await;
        assert_eq!(status, 422, "{body}: {json}");
        assert_eq!(json["error"], "invalid_notification");
        assert!(json["quarantine_id"].is_string());
    }
    let spool = &relay.relay().spool;
    assert_eq!(spool.notifications().count().await, 0);
    let kept: Vec<_> = spool.quarantined().collect().await.unwrap();
    let kinds: Vec<&str> = kept.iter().map(|q| q.meta.reason_kind.as_str()).collect();
    assert_eq!(kinds, invalid.iter().map(|(_, k)| *k).collect::<Vec<_>>());
    assert_eq!(kept[0].body.as_ref(), invalid[0].0.as_bytes());

    // A source that accepts invalid bodies answers 200 so the provider stops retrying.
    let (status, json) = relay
        .post("/hooks/lenient/lenient-token-0123456789", "{oops")
        .await;
    assert_eq!(status, 200);
    assert_eq!(json["quarantined"], true);
    assert_eq!(spool.quarantined().count().await, 5);
    assert_eq!(spool.notifications().count().await, 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_rate_limited_peer_gets_429_with_retry_after() {
    let relay = TestRelay::start("").await;
    let path = "/hooks/limited/limited-token-0123456789";
    for i in 0..2 {
        let (status, json) = relay.post(path, format!("{{\"n\": {i}}}")).await;
        assert_eq!(status, 200, "{json}");
    }
    let response = relay
        .client
        .post(relay.url(path))
        .body("{\"n\": 3}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(relay.relay().spool.notifications().count().await, 2);
    relay.stop().await;
}

#[tokio::test]
async fn a_generic_source_verifies_its_hmac_and_dedups_by_pointer() {
    let relay = TestRelay::start("").await;
    let body = r#"{"id": "evt-1", "type": "invoice.paid"}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(b"generic-secret-0123456789").unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for expected_duplicate in [false, true] {
        let response = relay
            .client
            .post(relay.url("/hooks/signed"))
            .header("x-signature", format!("sha256={hex}"))
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, json) = answer(response).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["duplicate"], expected_duplicate);
    }
    let tampered = relay
        .client
        .post(relay.url("/hooks/signed"))
        .header("x-signature", format!("sha256={hex}"))
        .body(r#"{"id": "evt-2", "type": "invoice.paid"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 401);
    let records: Vec<_> = relay.relay().spool.notifications().collect().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].meta.event_type, "invoice.paid");
    relay.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_and_served() {
    let relay = TestRelay::start("").await;
    let response = relay
        .client
        .post(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
        .body(tusfacturas("hook-h2", "emitido", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    relay.stop().await;
}

/// Reads until the peer closes; returns how long that took.
async fn time_until_closed(mut stream: impl tokio::io::AsyncRead + Unpin) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the relay kept a stalled connection open"),
        }
    }
}

#[tokio::test]
async fn stalled_handshakes_and_slow_headers_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let relay = TestRelay::start("").await;
    let addr = relay.relay().ingress_addr;
    // A TCP connection that never starts TLS: closed after handshake_timeout (1 s).
    let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let waited = time_until_closed(idle).await;
    assert!(waited >= Duration::from_millis(900), "{waited:?}");

    // Slowloris: TLS done, headers never finished: closed after header_timeout (1 s).
    let mut stream = tls_connect(&relay, b"http/1.1").await;
    stream
        .write_all(b"POST /hooks/tusfacturas HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let waited = time_until_closed(stream).await;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    relay.stop().await;
}

/// A raw TLS connection to the relay offering `alpn`.
pub(crate) async fn tls_connect(
    relay: &TestRelay,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cert = relay.dir.path().join("tls/self-signed.crt");
    tls_connect_to(relay.relay().ingress_addr, &cert, alpn)
        .await
        .expect("TLS handshake")
}

/// Sends raw bytes on a new HTTP/1.x connection offering `alpn`; returns
/// the status line of the answer.
async fn raw_exchange(relay: &TestRelay, alpn: &[u8], request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tls_connect(relay, alpn).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn http_framing_gets_the_status_http_asks_for() {
    let relay = TestRelay::start("").await;
    let body = tusfacturas("h-framing", "emitido", 1);
    let path = format!("/hooks/tusfacturas/{TUS_TOKEN}");
    let len = body.len();
    // An HTTP/1.1 request without Host: 400.
    let no_host =
        format!("POST {path} HTTP/1.1\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}");
    assert_eq!(
        raw_exchange(&relay, b"http/1.1", &no_host).await,
        "HTTP/1.1 400 Bad Request"
    );
    // A transfer coding other than chunked: 501, nothing stored.
    let gzip = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n{len:x}\r\n{body}\r\n0\r\n\r\n"
    );
    assert_eq!(
        raw_exchange(&relay, b"http/1.1", &gzip).await,
        "HTTP/1.1 501 Not Implemented"
    );
    assert_eq!(relay.relay().spool.notifications().count().await, 0);
    // A client that offers only ALPN http/1.0 (curl --http1.0) is served.
    let http10 = format!("POST {path} HTTP/1.0\r\nContent-Length: {len}\r\n\r\n{body}");
    assert_eq!(
        raw_exchange(&relay, b"http/1.0", &http10).await,
        "HTTP/1.0 200 OK"
    );
    assert_eq!(relay.relay().spool.notifications().count().await, 1);
    relay.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_and_a_request_under_way_is_not() {
    use tokio::io::AsyncWriteExt;
    let relay = TestRelay::start("").await;
    let connect = |alpn: &'static [u8]| tls_connect(&relay, alpn);
    // TLS done, then nothing: closed after idle_timeout (1 s), over either protocol.
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let silent = connect(alpn).await;
        let waited = time_until_closed(silent).await;
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
    // A keep-alive connection after its request: closed once idle too.
    let mut used = connect(b"http/1.1").await;
    let body = tusfacturas("h-idle", "emitido", 1);
    let request = format!(
        "POST /hooks/tusfacturas/{TUS_TOKEN} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    used.write_all(request.as_bytes()).await.unwrap();
    let waited = time_until_closed(used).await;
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    // A body that takes longer than idle_timeout (but less than
    // body_timeout) is a request under way: it gets its answer.
    let mut slow = connect(b"http/1.1").await;
    let body = tusfacturas("h-slow-body", "emitido", 1);
    let (head, tail) = body.split_at(10);
    slow.write_all(
        format!(
            "POST /hooks/tusfacturas/{TUS_TOKEN} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{head}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Time must pass here, not a condition: the connection is not closed
    // though its body takes longer than idle_timeout (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    slow.write_all(tail.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut slow, &mut answer)
        .await
        .expect("an answer, not a closed connection");
    assert_eq!(&answer, b"HTTP/1.1 200");
    relay.stop().await;
}

#[tokio::test]
async fn past_max_connections_the_connection_idle_longest_makes_room_and_busy_ones_keep_theirs() {
    use tokio::io::AsyncWriteExt;
    let relay = TestRelay::start_edited(|base| {
        base.replace(
            "handshake_timeout = \"1s\"",
            "handshake_timeout = \"30s\"\nmax_connections = 2",
        )
        .replace("body_timeout = \"2s\"", "body_timeout = \"20s\"")
    })
    .await;
    let addr = relay.relay().ingress_addr;
    let post = |hook: &str, timeout: Duration| {
        relay
            .client
            .post(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
            .body(tusfacturas(hook, "emitido", 1))
            .timeout(timeout)
            .send()
    };
    // Two connections that never start TLS hold both slots, idle: a third
    // is served all the same, in place of one of them.
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let served = post("h-room", Duration::from_secs(10)).await.unwrap();
    assert_eq!(served.status(), 200);
    drop((first, second));

    // Two connections each with a request under way (a body still coming)
    // are never closed for room: a third waits...
    let path = format!("/hooks/tusfacturas/{TUS_TOKEN}");
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = tls_connect(&relay, b"http/1.1").await;
        stream
            .write_all(
                format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        // hyper sends 100 Continue once the handler reads the body: the
        // request is under way.
        let mut interim = [0u8; 25];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut interim)
            .await
            .unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(b"{").await.unwrap();
        stream.flush().await.unwrap();
        busy.push(stream);
    }
    // Past the 250 ms a connection must be idle before it is closed for room
    // (time must pass, not a condition: what follows proves the busy ones
    // are not closed even then).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unserved = post("h-busy", Duration::from_millis(800)).await;
    assert!(
        unserved.as_ref().is_err_and(reqwest::Error::is_timeout),
        "a busy connection was closed for room: {unserved:?}"
    );
    // ...and is served once one of them ends.
    busy.pop();
    let served = post("h-busy-2", Duration::from_secs(10)).await.unwrap();
    assert_eq!(served.status(), 200);
    // A connection waiting for its handshake does not hold the stop for its
    // 30 s, nor for the drain of open requests.
    let waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stopping = tokio::time::Instant::now();
    drop(busy);
    relay.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stop waited for a handshake: {:?}",
        stopping.elapsed()
    );
    drop(waiting);
}

#[tokio::test]
async fn the_spool_refuses_a_second_opener_while_the_relay_runs() {
    let relay = TestRelay::start("").await;
    let config = webhook_relay::config::Config::parse(&base_config(relay.dir.path())).unwrap();
    let err = webhook_relay::spool::Spool::open(
        &config.spool,
        webhook_relay::spool::Routes::from_config(&config),
        webhook_relay::clock::Clock::system(),
    )
    .await
    .err()
    .expect("locked");
    assert!(err.to_string().contains("in use"), "{err}");

    // The offline CLI says so too, and exits 75 (EX_TEMPFAIL): try later.
    let config_path = relay.dir.path().join("relay.toml");
    std::fs::write(&config_path, base_config(relay.dir.path())).unwrap();
    let dump = relay_cli(&["spool", "dump"], &config_path, &[]);
    assert_eq!(dump.status.code(), Some(75), "{dump:?}");
    assert!(
        String::from_utf8_lossy(&dump.stderr).contains("in use"),
        "{dump:?}"
    );
    assert!(dump.stdout.is_empty(), "nothing dumped from a locked spool");
    relay.stop().await;
}

#[test]
fn a_bad_config_exits_64_naming_file_line_and_key_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    // A taken port: if `serve` bound before checking, the error would be
    // about the address, not the config.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = base_config(dir.path())
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", taken.local_addr().unwrap()),
        )
        .replace("dedup_window = \"72h\"", "dedup_window = \"0s\"")
        .replace(
            "shutdown_grace = \"2s\"",
            "shutdown_grace = \"2s\"\nmax_in_flight = 0",
        );
    std::fs::write(&path, &text).unwrap();
    let line_of = |needle: &str| 1 + text.lines().position(|l| l.contains(needle)).unwrap();
    for command in ["check-config", "serve"] {
        let run = relay_cli(&[command], &path, &[]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(64), "{command}: {stderr}");
        for (key, needle) in [
            ("spool.dedup_window", "dedup_window ="),
            ("forwarder.max_in_flight", "max_in_flight ="),
        ] {
            let expected = format!("{}:{}:", path.display(), line_of(needle));
            assert!(
                stderr.contains(&expected) && stderr.contains(key),
                "{command} names {key} at {expected}: {stderr}"
            );
        }
        assert!(
            !stderr.contains("listen"),
            "{command} bound first: {stderr}"
        );
    }

    // An unknown key is an error too, located.
    std::fs::write(
        &path,
        base_config(dir.path()).replace("[spool]\n", "[spool]\nflush_evrey = 5\n"),
    )
    .unwrap();
    let run = relay_cli(&["check-config"], &path, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("flush_evrey"), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_address_is_checked() {
    let post_as = |relay: &TestRelay, forwarded: Option<&'static str>| {
        let mut request = relay
            .client
            .post(relay.url("/hooks/office"))
            .body(r#"{"id": "1"}"#);
        if let Some(address) = forwarded {
            request = request.header("x-forwarded-for", address);
        }
        async move { answer(request.send().await.unwrap()).await.0 }
    };
    // The office source allows 192.0.2.0/24; the test's peer is 127.0.0.1.
    let relay = TestRelay::start_edited(|base| {
        base.replace(
            "[server]\n",
            "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        )
    })
    .await;
    assert_eq!(post_as(&relay, Some("192.0.2.10")).await, 200);
    assert_eq!(post_as(&relay, Some("192.0.2.10, 198.51.100.1")).await, 403);
    assert_eq!(post_as(&relay, None).await, 403);
    relay.stop().await;

    // Without trusted_proxies, anyone could write that header: it is ignored.
    let relay = TestRelay::start("").await;
    assert_eq!(post_as(&relay, Some("192.0.2.10")).await, 403);
    relay.stop().await;
}

#[tokio::test]
async fn early_refusals_reach_an_http2_client_with_their_status() {
    let relay = TestRelay::start("").await;
    let medium = "y".repeat(40 * 1024);
    let big = "x".repeat(200 * 1024);
    let cases = [
        (
            "/hooks/tusfacturas/wrong-token-000000".to_owned(),
            medium.clone(),
            401,
        ),
        ("/hooks/ghost".to_owned(), medium.clone(), 404),
        ("/hooks/signed".to_owned(), medium.clone(), 401),
        (format!("/hooks/tusfacturas/{TUS_TOKEN}"), big.clone(), 413),
    ];
    // A race between the answer and the stream's reset shows only some of
    // the time: each case, many times, on one HTTP/2 connection and on new ones.
    for round in 0..10 {
        for (path, body, expected) in &cases {
            let response = relay
                .client
                .post(relay.url(path))
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path} round {round}: {e:?}"));
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            assert_eq!(response.status(), *expected, "{path} round {round}");
            let (status, _) = answer(response).await;
            assert_eq!(status, *expected);
        }
    }
    let fresh = provider_client(&relay.dir.path().join("tls/self-signed.crt"));
    for _ in 0..10 {
        let response = fresh
            .post(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413);
    }
    // The connection is still good for a notification afterwards.
    let (status, _) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            tusfacturas("h-after-refusals", "emitido", 1),
        )
        .await;
    assert_eq!(status, 200);
    relay.stop().await;
}

#[tokio::test]
async fn an_oversized_chunked_upload_gets_413_before_the_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = TestRelay::start("").await;
    let path = format!("/hooks/tusfacturas/{TUS_TOKEN}");
    for _ in 0..10 {
        let mut stream = tls_connect(&relay, b"http/1.1").await;
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        // 160 KiB in 8 KiB chunks, past max_body (64 KiB); every write must
        // succeed (no reset) and the answer must be a 413.
        let chunk = format!("2000\r\n{}\r\n", "z".repeat(8192));
        for _ in 0..20 {
            stream
                .write_all(chunk.as_bytes())
                .await
                .expect("no reset while uploading");
        }
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        stream.flush().await.unwrap();
        let mut head = vec![0u8; 12];
        stream.read_exact(&mut head).await.expect("an answer");
        assert_eq!(&head, b"HTTP/1.1 413");
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_compressed_body_gets_415_and_nothing_is_stored() {
    let relay = TestRelay::start("").await;
    let response = relay
        .client
        .post(relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}")))
        .header("content-encoding", "gzip")
        .body(vec![
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(response.headers()["accept-encoding"], "identity");
    let (_, json) = answer(response).await;
    assert_eq!(json["error"], "unsupported_content_encoding");
    assert_eq!(relay.relay().spool.notifications().count().await, 0);
    assert_eq!(relay.relay().spool.quarantined().count().await, 0);
    relay.stop().await;
}

/// The relay with the default `max_body` (1 MiB), as an operator runs it.
async fn relay_with_default_max_body() -> TestRelay {
    TestRelay::start_edited(|base| {
        base.replace("max_body = \"64KiB\"\n", "")
            .replace("body_timeout = \"2s\"", "body_timeout = \"20s\"")
    })
    .await
}

/// An upload four times the default `max_body`: past the short drain
/// (1 MiB), within the long one (16 MiB).
const FOUR_MIB: usize = 4 << 20;

#[tokio::test]
async fn a_4_mib_upload_over_http11_is_read_and_answered_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = relay_with_default_max_body().await;
    let path = format!("/hooks/tusfacturas/{TUS_TOKEN}");
    let chunk = vec![b'x'; 64 * 1024];
    for chunked in [false, true] {
        let mut stream = tls_connect(&relay, b"http/1.1").await;
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_owned()
        } else {
            format!("Content-Length: {FOUR_MIB}")
        };
        stream
            .write_all(
                format!("POST {path} HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        // The whole body before reading anything, as curl and Python
        // requests do: every write must succeed (no reset).
        for _ in 0..FOUR_MIB / chunk.len() {
            if chunked {
                stream
                    .write_all(b"10000\r\n")
                    .await
                    .expect("no reset while uploading");
            }
            stream
                .write_all(&chunk)
                .await
                .expect("no reset while uploading");
            if chunked {
                stream
                    .write_all(b"\r\n")
                    .await
                    .expect("no reset while uploading");
            }
        }
        if chunked {
            stream.write_all(b"0\r\n\r\n").await.unwrap();
        }
        stream.flush().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
            .await
            .expect("the relay closes after its answer")
            .expect("the answer, not a reset");
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(
            text.starts_with("http/1.1 413"),
            "chunked {chunked}: {text}"
        );
        assert!(text.contains("connection: close"), "{text}");
        assert!(text.contains("payload_too_large"), "{text}");
    }
    relay.stop().await;
}

/// curl (libcurl with OpenSSL and nghttp2, installed by `.ci/run`) over
/// HTTP/1.1 and HTTP/2: it sends a 4 MiB upload whole before it reads,
/// and must exit 0 with the 413.
#[tokio::test]
async fn curl_gets_413_for_a_4_mib_upload_over_http11_and_http2() {
    let relay = relay_with_default_max_body().await;
    let big = relay.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; FOUR_MIB]).unwrap();
    let cert = relay.dir.path().join("tls/self-signed.crt");
    let url = relay.url(&format!("/hooks/tusfacturas/{TUS_TOKEN}"));
    for protocol in ["--http1.1", "--http2"] {
        let args: Vec<String> = vec![
            "-sS".into(),
            protocol.into(),
            "--max-time".into(),
            "20".into(),
            "--cacert".into(),
            cert.display().to_string(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code} %{http_version}".into(),
            "--data-binary".into(),
            format!("@{}", big.display()),
            url.clone(),
        ];
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl").args(&args).output()
        })
        .await
        .unwrap()
        .expect("curl is needed (.ci/run installs it)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{protocol}: curl {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let expected_version = if protocol == "--http2" { "2" } else { "1.1" };
        assert_eq!(stdout, format!("413 {expected_version}"), "{protocol}");
    }
    relay.stop().await;
}

/// A connection whose ALPN named `h2` is HTTP/2 from its first byte: an
/// HTTP/1.1 request on it is a bad connection preface, answered with a
/// connection error (hyper: its SETTINGS, then the close), never with HTTP/1.1
/// (h2spec's "3.5. HTTP/2 Connection Preface").
#[tokio::test]
async fn a_bad_preface_after_alpn_h2_gets_a_goaway_not_http11() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = TestRelay::start("").await;
    let mut stream = tls_connect(&relay, b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the relay closes the connection");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "an HTTP/1 answer on an h2 connection: {}",
        String::from_utf8_lossy(&answer)
    );
    // Whatever came is HTTP/2 frames (9-byte header, then the payload).
    let mut types = Vec::new();
    let mut rest = &answer[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        types.push(rest[3]);
        rest = rest.get(9 + len..).expect("a whole frame");
    }
    assert!(rest.is_empty(), "frames, then nothing: {answer:?}");
    // The server's SETTINGS (0x4), maybe a GOAWAY (0x7), then the close
    // (h2spec takes a GOAWAY or a close as the connection error).
    assert!(
        types.iter().all(|t| [0x4, 0x7].contains(t)),
        "SETTINGS, a GOAWAY or the close, got frame types {types:?}"
    );
    relay.stop().await;
}
