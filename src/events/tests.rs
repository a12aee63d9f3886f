//! The events task on a real spool and a paused clock: a burst of dead
//! deliveries reported as `Spool::complete` reports them is stored as few events
//! whose counts add up to all of them, and none reaches a team's
//! subscription unless it is about that team's own.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::*;
use crate::config::Config;
use crate::delivery::{Outcome, Schedule};
use crate::spool::{ApiSubscription, Received, Settings};

fn config(dir: &std::path::Path) -> Config {
    Config::parse(&format!(
        r#"
[server]
self_signed = true

[spool]
path = "{}"

[forwarder]
failing_after = 3

[sources.tus]
provider = "tusfacturas"
token = "0123456789abcdef"

[admin]
tokens = [{{ name = "erp-team", token = "erp-token-0123456789", role = "subscriber" }}]

[[subscriptions]]
name = "billing"
url = "http://127.0.0.1:9/billing?apikey=s3cret"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[[subscriptions]]
name = "alerts"
url = "http://127.0.0.1:9/alerts"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
events = ["relay.*"]
"#,
        dir.join("spool").display()
    ))
    .unwrap()
}

fn invoice(n: usize, now_ms: i64) -> (Received, crate::providers::Notification) {
    (
        Received {
            source: "tus".into(),
            body: bytes::Bytes::from(format!("{{\"n\": {n}}}")),
            content_type: Some("application/json".into()),
            headers: Vec::new(),
            peer: "127.0.0.1".into(),
            received_ms: now_ms,
        },
        crate::providers::Notification {
            event_type: "facturacion.emitido".into(),
            subject: Some(format!("0001-{n}")),
            dedup_key: format!("k{n}"),
            provider_time: None,
            status: InvoiceStatus::Unknown,
            flags: Vec::new(),
        },
    )
}

/// The bodies of the relay's events stored for `subscription`.
async fn stored_events(spool: &Spool, subscription: &str) -> Vec<Value> {
    spool
        .notifications_newest_first(None)
        .collect()
        .await
        .unwrap()
        .into_iter()
        .filter(|record| {
            record.meta.source == RELAY_SOURCE
                && record.meta.subscriptions.iter().any(|s| s == subscription)
        })
        .map(|record| serde_json::from_slice(&record.body).unwrap())
        .collect()
}

/// Leases every due delivery of `billing` and makes each one dead (two
/// failed attempts on a schedule of one wait), as the forwarder would.
async fn kill_due(spool: &Spool, clock: Clock) -> usize {
    let schedule = Schedule::try_new(vec![Duration::from_millis(10)], 0.0).unwrap();
    let mut killed = 0;
    loop {
        let leases =
            match tokio::time::timeout(Duration::from_millis(1), spool.lease("billing", 256)).await
            {
                Ok(leases) => leases.unwrap(),
                Err(_) => return killed,
            };
        for lease in leases {
            let now = clock.now_ms();
            let mut delivery = lease.delivery().clone();
            for _ in 0..2 {
                delivery.start(now).unwrap();
                delivery
                    .finish(&schedule, Outcome::Connect, now + 1, 0.0)
                    .unwrap();
            }
            spool.complete(&lease, &delivery).await.unwrap();
            killed += 1;
        }
    }
}

/// What `Spool::complete` hands the observer for a delivery that died.
fn dead_report(n: usize, now_ms: i64, failures: u32) -> Observed {
    Observed::Attempted {
        notification: crate::spool::ObservedNotification {
            id: NotificationId::new(now_ms),
            source: "tus".into(),
            event_type: "facturacion.emitido".into(),
            subject: Some(format!("0001-{n}")),
            received_ms: now_ms,
        },
        subscription: "billing".into(),
        attempt: crate::delivery::Attempt {
            number: failures,
            started_ms: now_ms,
            duration_ms: 1,
            outcome: Outcome::Io {
                detail: "error sending request for url (http://127.0.0.1:9/billing?apikey=s3cret)"
                    .into(),
            },
            answer: None,
        },
        state: crate::delivery::State::Dead { at_ms: now_ms },
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_dead_deliveries_is_stored_as_few_events_that_count_them_all() {
    const DEAD: usize = 6000;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config.spool, Routes::from_config(&config), clock)
        .await
        .unwrap();
    let (stop, stopped) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let (events, task) = Events::start(&config, spool.clone(), metrics, clock, stopped).await;

    // 6,000 dead deliveries in three seconds, reported as the spool
    // records them (no queue between: none can be dropped for lack of room).
    let started_ms = clock.now_ms();
    for n in 0..DEAD {
        events.counted.observe(dead_report(n, clock.now_ms(), 2));
        if n % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let spell = Duration::from_millis(u64::try_from(clock.now_ms() - started_ms).unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    task.await.unwrap();

    let stored = stored_events(&spool, "alerts").await;
    let dead: Vec<&Value> = stored
        .iter()
        .filter(|e| e["type"] == "relay.delivery.dead")
        .collect();
    let counted: u64 = dead.iter().filter_map(|e| e["count"].as_u64()).sum();
    assert_eq!(counted, DEAD as u64, "every dead delivery counted once");
    // One per second at most (and one at once after the quiet start).
    let most = spell.as_millis() as usize / 1000 + 2;
    assert!(
        (2..=most).contains(&dead.len()),
        "{} events in {spell:?}",
        dead.len()
    );
    for event in &dead {
        let ids = event["ids"].as_array().unwrap();
        let count = event["count"].as_u64().unwrap();
        assert_eq!(ids.len() as u64, count.min(FIRST_IDS_USED));
        assert_eq!(ids[0], event["notification"]["id"]);
        assert!(!event.to_string().contains("s3cret"), "{event}");
    }
    let failing: Vec<&Value> = stored
        .iter()
        .filter(|e| e["type"] == "relay.subscription.failing")
        .collect();
    assert_eq!(failing.len(), 1, "once, until it recovers");
    assert_eq!(failing[0]["consecutive_failures"], 3);
    assert_eq!(spool.observed_dropped(), 0, "nothing dropped");
    spool.close().await.unwrap();
}

const FIRST_IDS_USED: u64 = event::FIRST_IDS as u64;

#[tokio::test(start_paused = true)]
async fn a_teams_subscription_hears_only_of_its_own_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    let clock = Clock::following_tokio();
    let spool = Spool::open(&config.spool, Routes::from_config(&config), clock)
        .await
        .unwrap();
    // erp-team's own alerts, created through the API.
    let erp_alerts = ApiSubscription {
        name: "erp-alerts".into(),
        url: "http://127.0.0.1:9/erp".into(),
        sources: None,
        events: Some(vec!["relay.*".into()]),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        previous: None,
        settings: Settings::default(),
        created_by: "erp-team".into(),
        created_ms: clock.now_ms(),
    };
    let created = crate::spool::AuditEntry {
        actor: "erp-team".into(),
        action: "subscription.create".into(),
        target: "erp-alerts".into(),
        detail: serde_json::Value::Null,
    };
    spool
        .put_subscription(erp_alerts.clone(), created)
        .await
        .unwrap();
    config.subscriptions.push(erp_alerts.to_config().unwrap());
    spool
        .set_routes(Routes::from_config(&config))
        .await
        .unwrap();
    let (stop, stopped) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let (_events, task) = Events::start(&config, spool.clone(), metrics, clock, stopped).await;

    let (received, notification) = invoice(1, clock.now_ms());
    spool.store(received, notification).await.unwrap();
    assert_eq!(kill_due(&spool, clock).await, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(true).unwrap();
    task.await.unwrap();

    let admins = stored_events(&spool, "alerts").await;
    assert_eq!(admins.len(), 1, "{admins:?}");
    assert_eq!(admins[0]["subscription"], "billing");
    assert!(
        stored_events(&spool, "erp-alerts").await.is_empty(),
        "relay.toml's billing is not erp-team's"
    );
    spool.close().await.unwrap();
}
