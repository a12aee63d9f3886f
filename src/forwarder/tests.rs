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
