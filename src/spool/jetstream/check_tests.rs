//! `spool check` on JetStream (`check.rs`) through `Spool::check`, as the
//! CLI calls it: the counts made again from the stream equal the fold's,
//! and what the stream holds wrong is reported, not skipped silently.

use bytes::Bytes;

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use super::Names;
use crate::clock::Clock;
use crate::delivery::{Delivery, Outcome};
use crate::spool::contract::support::{attempt, lease_now, ok, received, routes, store_new};
use crate::spool::delivery_codec::encode_delivery;
use crate::spool::{CheckProblem, NotificationId, Spool, SubscriptionCounts};

#[tokio::test]
async fn the_check_recounts_the_stream_and_reports_damaged_and_stray_states() {
    if skip_without_nats() {
        return;
    }
    let fixture = JetStreamFixture::new();
    let config = fixture.config_for("index");
    let relay = fixture
        .open_relay("index", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let now = Clock::system().now_ms();
    let delivered = store_new(&relay, "delivered", now).await;
    let failed = store_new(&relay, "failed", now).await;
    let untouched = store_new(&relay, "untouched", now).await;
    let leases = lease_now(&relay, "erp", 2).await;
    attempt(&relay, &leases[0], ok(), now).await;
    attempt(&relay, &leases[1], Outcome::Connect, now).await;
    drop(leases);
    let mut junk = received(now);
    junk.body = Bytes::from_static(b"junk");
    relay
        .quarantine(junk, "not_json", "x".into())
        .await
        .unwrap();
    relay.close().await.unwrap();

    let report = Spool::check(&config, false).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        (report.notifications, report.quarantined, report.deliveries),
        (3, 1, 3)
    );
    assert_eq!(report.retries, 1, "the failed one waits for its retry");
    let counts = report.counts.clone().unwrap();
    assert_eq!(
        counts.subscriptions["erp"],
        SubscriptionCounts {
            waiting: 2,
            delivered: 1,
            ..SubscriptionCounts::default()
        }
    );
    assert_eq!(Some(counts), report.kept_counts);

    // A state whose body does not decode, and one of a notification the
    // stream does not hold.
    let names = Names::new(&config.jetstream.prefix);
    let stray = NotificationId::new(now);
    let js = async_nats::jetstream::new(async_nats::connect(fixture.url()).await.unwrap());
    let damaged = js
        .publish(
            names.delivery("erp", untouched),
            Bytes::from_static(b"junk"),
        )
        .await
        .unwrap();
    damaged.await.unwrap();
    let state = encode_delivery(&Delivery::new("erp", now)).unwrap();
    let written = js
        .publish(names.delivery("erp", stray), state.into())
        .await
        .unwrap();
    written.await.unwrap();

    let report = Spool::check(&config, false).await.unwrap();
    let problems: Vec<String> = report
        .problems
        .iter()
        .map(CheckProblem::to_string)
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains(&untouched.to_string()), "{problems:?}");
    assert!(problems[1].contains(&stray.to_string()), "{problems:?}");
    assert!(
        problems[1].contains("without its notification"),
        "{problems:?}"
    );
    let _ = (delivered, failed);
}
