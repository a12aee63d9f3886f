//! A subscription's consumer on the server: paused and resumed with its
//! flag, and set right when a relay opens the spool and finds it as
//! another hand left it (an ack wait shorter than an attempt may last, a
//! pause the flag does not say).

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, FromConsumer};

use super::contract_tests::{skip_without_nats, JetStreamFixture};
use super::Names;
use crate::clock::Clock;
use crate::config::JETSTREAM_LONGEST_ATTEMPT;
use crate::spool::contract::support::routes;
use crate::spool::Spool;

/// Relay "a" opened on a new fixture (the consumer of `erp` made), and a
/// plain client's view of the spool's stream with that consumer's name.
async fn opened() -> (JetStreamFixture, Spool, jetstream::stream::Stream, String) {
    let fixture = JetStreamFixture::new();
    let a = fixture
        .open_relay("a", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let names = Names::new(&fixture.config_for("a").jetstream.prefix);
    let js = jetstream::new(async_nats::connect(fixture.url()).await.unwrap());
    let stream = js.get_stream(names.stream()).await.unwrap();
    let name = names.consumer("erp");
    (fixture, a, stream, name)
}

#[tokio::test]
async fn a_consumer_with_an_ack_wait_shorter_than_an_attempt_is_lengthened_at_open() {
    if skip_without_nats() {
        return;
    }
    let (fixture, a, stream, name) = opened().await;
    a.close().await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&name).await.unwrap();
    let wanted = JETSTREAM_LONGEST_ATTEMPT + fixture.config_for("a").jetstream.ack_margin.0;
    assert_eq!(consumer.cached_info().config.ack_wait, wanted);
    // Shortened by hand, below the longest attempt.
    let short = pull::Config {
        ack_wait: Duration::from_secs(10),
        ..pull::Config::try_from_consumer_config(consumer.cached_info().config.clone()).unwrap()
    };
    stream.update_consumer(short).await.unwrap();

    let b = fixture
        .open_relay("b", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&name).await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.ack_wait, wanted);
    let names = Names::new(&fixture.config_for("a").jetstream.prefix);
    assert_eq!(
        info.config.filter_subjects,
        [names.notifications()],
        "the rest as it was"
    );
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_pause_pauses_the_consumer_on_the_server_and_the_flag_wins_at_open() {
    if skip_without_nats() {
        return;
    }
    let (fixture, a, stream, name) = opened().await;
    let paused_on_server = || async {
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer(&name).await.unwrap();
        consumer.info().await.unwrap().paused
    };
    assert!(!paused_on_server().await);
    a.pause("erp", true).await.unwrap();
    assert!(paused_on_server().await);
    a.pause("erp", false).await.unwrap();
    assert!(!paused_on_server().await);
    // A subscription with no consumer has only its flag.
    a.pause("gone", true).await.unwrap();
    a.close().await.unwrap();

    // Paused by another hand while the flag says running: set by the flag.
    let until = time::macros::datetime!(2126-01-01 0:00 UTC);
    stream.pause_consumer(&name, until).await.unwrap();
    assert!(paused_on_server().await);
    let b = fixture
        .open_relay("b", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    assert!(!paused_on_server().await);
    assert!(b.is_paused("gone"));
    b.close().await.unwrap();
}

/// An earlier build made one consumer for first attempts and retries; the
/// retries have a consumer of their own now, so the old one would hand out
/// a `due` state the retry consumer hands out too: its filter is set to
/// first attempts only at open.
#[tokio::test]
async fn a_consumer_that_also_takes_retries_is_set_to_first_attempts_at_open() {
    if skip_without_nats() {
        return;
    }
    let (fixture, a, stream, name) = opened().await;
    a.close().await.unwrap();
    let names = Names::new(&fixture.config_for("a").jetstream.prefix);
    let consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&name).await.unwrap();
    let both = pull::Config {
        filter_subjects: vec![names.notifications(), names.deliveries_of("erp")],
        ..pull::Config::try_from_consumer_config(consumer.cached_info().config.clone()).unwrap()
    };
    stream.update_consumer(both).await.unwrap();

    let b = fixture
        .open_relay("b", routes(&["erp"]), Clock::system())
        .await
        .unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(&name).await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.filter_subjects, [names.notifications()]);
    let retries = names.retry_consumer("erp");
    let mut retries: jetstream::consumer::PullConsumer =
        stream.get_consumer(&retries).await.unwrap();
    let info = retries.info().await.unwrap();
    assert_eq!(info.config.filter_subjects, [names.deliveries_of("erp")]);
    b.close().await.unwrap();
}
