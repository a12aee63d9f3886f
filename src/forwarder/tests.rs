//! The real forwarder, driven on a paused clock: the providers' schedule
//! (5 m, 30 m, 3 h, 6 h, 12 h) runs in milliseconds of real time.

use std::time::Duration;

use bytes::Bytes;

use super::Forwarder;
use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::State;
use crate::providers::Notification;
use crate::spool::{Received, Routes, Spool, Stored};

const MIN: i64 = 60_000;

fn config(dir: &std::path::Path, target: &str) -> Config {
    let text = format!(
        r#"
[server]
tls = false

[spool]
path = "{}"
min_free = "0"

[sources.tus]
provider = "tusfacturas"
token = "tok-0123456789abcdef"

[[subscriptions]]
name = "erp"
url = "{target}"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
jitter = 0.0
"#,
        dir.join("spool").display()
    );
    Config::parse(&text).expect("test config")
}

#[tokio::test(start_paused = true)]
async fn a_failing_delivery_is_retried_on_the_providers_schedule_then_dead() {
    let dir = tempfile::tempdir().unwrap();
    // A closed port on loopback: every attempt fails at once.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = config(dir.path(), &format!("http://127.0.0.1:{port}/hook"));
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config.spool, Routes::from_config(&config), clock)
        .await
        .unwrap();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let (forwarder, _targets) = Forwarder::new(&config, spool.consumer(), clock, metrics).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(forwarder.run(async {
        let _ = stopped.await;
    }));

    let received_ms = clock.now_ms();
    let stored = spool
        .store(
            Received {
                source: "tus".into(),
                body: Bytes::from_static(b"{}"),
                content_type: None,
                headers: vec![],
                peer: "127.0.0.1".into(),
                received_ms,
            },
            Notification {
                event_type: "facturacion.emitido".into(),
                subject: None,
                dedup_key: "k".into(),
                provider_time: None,
                status: crate::providers::InvoiceStatus::Unknown,
                flags: vec![],
            },
        )
        .await
        .unwrap();
    let Stored::New(id) = stored else {
        panic!("{stored:?}")
    };
    // A day of tokio time, a second at a time, until the delivery is dead.
    let mut delivery = None;
    for _ in 0..24 * 3600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = spool.deliveries_of(id).await.unwrap().remove(0);
        if matches!(now.state, State::Dead { .. }) {
            delivery = Some(now);
            break;
        }
    }
    let delivery = delivery.expect("dead within a day");
    let starts: Vec<i64> = delivery.attempts.iter().map(|a| a.started_ms).collect();
    assert_eq!(starts.len(), 6, "one attempt and five retries");
    assert!(
        (starts[0] - received_ms) < 1_000,
        "first attempt at once, not after {} ms",
        starts[0] - received_ms
    );
    let waits = [5 * MIN, 30 * MIN, 180 * MIN, 360 * MIN, 720 * MIN];
    for (k, wait) in waits.iter().enumerate() {
        let previous = &delivery.attempts[k];
        let ended = previous.started_ms + previous.duration_ms as i64;
        let gap = starts[k + 1] - ended;
        // The test looks once a second, and the spool's writer answers on
        // its own thread while tokio's clock may move on: a second of slack.
        assert!(
            (*wait..=*wait + 1_000).contains(&gap),
            "retry {} came {gap} ms after the failure, not {wait}",
            k + 1
        );
    }
    let _ = stop.send(());
    running.await.unwrap();
    spool.close().await.unwrap();
}

/// A loopback target that answers 200 to each request and hands back
/// each request's head, lowercased.
async fn recording_target() -> (String, tokio::sync::mpsc::Receiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (seen, heads) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = [0u8; 4096];
                // Until the end of the head; the bodies here are tiny.
                while !read.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = seen
                    .send(String::from_utf8_lossy(&read).to_lowercase())
                    .await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, heads)
}

/// The header on the wire, from the real target's `send`: a record the
/// spool flagged `reconciled` (made from a provider's query API) carries
/// `x-relay-origin: reconcile`; one received from the provider does not.
#[tokio::test]
async fn a_reconciled_notification_is_sent_with_its_origin_and_a_received_one_without() {
    let (url, mut heads) = recording_target().await;
    let config: crate::config::SubscriptionConfig = toml::from_str(&format!(
        "name = \"erp\"\nurl = \"{url}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
    ))
    .unwrap();
    let target = super::target::Target::new(&config).unwrap();
    let clock = Clock::system();
    let record = |flags: Vec<String>| crate::spool::NotificationRecord {
        meta: crate::spool::NotificationMeta {
            id: crate::spool::NotificationId::new(clock.now_ms()).to_string(),
            source: "nube".into(),
            received_ms: clock.now_ms(),
            event_type: "comprobante.aceptado".into(),
            subject: Some("03-BBB1-105".into()),
            dedup_key: "k".into(),
            provider_time: None,
            content_type: Some("application/json".into()),
            headers: vec![("x-relay-origin".into(), "reconcile".into())],
            peer: "reconcile".into(),
            subscriptions: vec!["erp".into()],
            flags,
            status: crate::providers::InvoiceStatus::Accepted,
            superseded: false,
        },
        body: Bytes::from_static(b"{}"),
    };
    let (outcome, _) = target
        .send(
            &record(vec!["reconciled".into()]),
            1,
            clock.now_ms(),
            &clock,
        )
        .await;
    assert!(
        matches!(outcome, crate::delivery::Outcome::Status { code: 200, .. }),
        "{outcome:?}"
    );
    let head = heads.recv().await.unwrap();
    assert!(head.contains("\r\nx-relay-origin: reconcile\r\n"), "{head}");
    target
        .send(&record(vec![]), 1, clock.now_ms(), &clock)
        .await;
    let head = heads.recv().await.unwrap();
    assert!(!head.contains("x-relay-origin"), "{head}");
}
