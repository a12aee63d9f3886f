//! `app::run` in process, as `serve` calls it but with no signal: the relay
//! starts on the listeners and the clock it is handed, a reload trigger
//! re-reads its config file, and its shutdown future stops it cleanly.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use webhook_relay::app::{self, Start};
use webhook_relay::clock::{format_ms, Clock};
use webhook_relay::config::Config;
use webhook_relay::ingress::tls::SelfSigned;
use webhook_relay::listen::Listeners;
use webhook_relay::spool::Spool;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);
/// 2020-09-13T12:26:40Z: years from the machine's own time.
const SET_MS: i64 = 1_600_000_000_000;

#[tokio::test]
async fn app_run_serves_on_the_clock_it_is_given_reloads_on_a_trigger_and_stops_on_its_future() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let (erp, audit) = (Target::start(vec![]).await, Target::start(vec![]).await);
    let base = format!(
        "{}{}",
        base_config(dir.path()),
        subscription("erp", &erp.url(), "")
    );
    let config_path = dir.path().join("relay.toml");
    std::fs::write(&config_path, &base).unwrap();
    let config = Config::load(&config_path).unwrap();
    // The certificate made beforehand, so the client trusts it from the
    // first request (the relay loads the files it finds).
    let (cert, key) = config.self_signed_paths();
    SelfSigned::generate(&cert, &key).unwrap().write().unwrap();
    let client = provider_client(&cert);
    let listeners = Listeners::bind(config.server.listen).unwrap();
    let port = listeners.ingress.local_addr().unwrap().port();
    let spool_config = config.spool.clone();

    let clock = Clock::manual(SET_MS);
    let (stop, stopped) = oneshot::channel::<()>();
    let (reload, reloads) = mpsc::channel(1);
    let start = Start {
        config,
        config_path: config_path.clone(),
        listeners,
        clock,
        restart_in_place: None,
    };
    let running = tokio::spawn(app::run(
        start,
        async {
            let _ = stopped.await;
        },
        reloads,
    ));
    let post = |hook: String| {
        let request = client
            .post(format!(
                "https://localhost:{port}/hooks/tusfacturas/{TUS_TOKEN}"
            ))
            .header("content-type", "application/json")
            .body(tusfacturas(&hook, "facturacion.emitido", 1));
        async move { answer(request.send().await.expect("the relay answers")).await }
    };

    let (status, json) = post("hook-1".into()).await;
    assert_eq!(status, 200, "{json}");
    let received = erp.wait_for(1, WAIT).await;
    let headers = &received[0].headers;
    assert_eq!(
        headers["x-relay-received-at"].to_str().unwrap(),
        format_ms(SET_MS),
        "received at the manual clock's time"
    );
    assert_eq!(
        headers["webhook-timestamp"].to_str().unwrap(),
        (SET_MS / 1000).to_string(),
        "signed at the manual clock's time"
    );

    // A reload trigger re-reads the file: a second subscription from now on.
    clock.advance(Duration::from_secs(3600));
    std::fs::write(
        &config_path,
        format!("{base}{}", subscription("audit", &audit.url(), "")),
    )
    .unwrap();
    reload.send(()).await.unwrap();
    let mut reached_audit = false;
    for attempt in 0..300 {
        // Each a new notification (a repeated one would be a duplicate).
        let (status, json) = post(format!("hook-{}", attempt + 2)).await;
        assert_eq!(status, 200, "{json}");
        if audit
            .wait_until(Duration::from_millis(100), |t| t.count() > 0)
            .await
        {
            reached_audit = true;
            break;
        }
    }
    assert!(
        reached_audit,
        "the reloaded subscription gets notifications"
    );
    assert_eq!(
        audit.received()[0].headers["x-relay-received-at"]
            .to_str()
            .unwrap(),
        format_ms(SET_MS + 3_600_000),
        "the clock as the test moved it"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .expect("the shutdown future stops the relay")
        .expect("the relay's task ends")
        .expect("a clean stop");
    assert!(
        Spool::stopped_cleanly(&spool_config),
        "the spool was closed with its clean-stop mark"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the ingress no longer listens"
    );
}
