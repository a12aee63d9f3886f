//! The scale-out promise on real processes (issue 19): three nats-servers
//! on loopback (a stream of three replicas), two built relays sharing it,
//! providers posting to both (every fourth notification to both at once)
//! while two targets fail a fifth of their requests. One NATS node is
//! SIGKILLed, then one relay; both come back. Nothing acknowledged is
//! lost, every notification reaches both subscriptions under one
//! `webhook-id`, and a resend is the same notification on either relay.
//!
//! Skipped with a notice where there is no nats-server; required in CI
//! (`REQUIRE_NATS=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use webhook_relay::spool::NatsCluster;

use crate::admin::ADMIN_TOKEN;
use crate::helpers::*;
use crate::process::*;

/// Notifications the providers send in all (bounded load).
const NOTIFICATIONS: usize = 200;
/// Concurrent providers; each sends its share one after another.
const PROVIDERS: usize = 4;
const WAIT: Duration = Duration::from_secs(180);

/// A relay's config on the three nodes, its spool named after `spool_of`.
fn config(dir: &Path, spool_of: &Path, nats: &NatsCluster, targets: [&Target; 2]) -> String {
    let retries =
        "schedule = [\"50ms\", \"50ms\", \"50ms\", \"100ms\", \"100ms\", \"200ms\", \"200ms\"]";
    format!(
        "{}{}{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntokens = [{{ name = \"ops\", token = \"{ADMIN_TOKEN}\", role = \"admin\" }}]\n",
        base_config_on_nats(dir, nats)
            .replace(&jetstream_prefix(dir), &jetstream_prefix(spool_of))
            .replace("replicas = 1", "replicas = 3")
            // A killed relay's leases not yet in its journal come back
            // after the ack wait: 60 s and this margin.
            .replace("\n[spool.jetstream]\n", "\n[spool.jetstream]\nack_margin = \"1s\"\n"),
        subscription("erp", &targets[0].url(), "").replace("schedule = [\"50ms\", \"100ms\", \"150ms\"]", retries),
        subscription("audit", &targets[1].url(), "").replace("schedule = [\"50ms\", \"100ms\", \"150ms\"]", retries),
    )
}

/// Where each relay listens now (`None` while it is down).
type Addresses = Arc<Mutex<[Option<SocketAddr>; 2]>>;

/// Posts `body` until a relay answers 200, starting with relay `first`
/// and trying the other after each refusal, as a provider retries; the
/// id it was given.
async fn post_until_accepted(
    clients: &[reqwest::Client; 2],
    addresses: &Addresses,
    first: usize,
    body: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut relay = first;
    loop {
        let address = addresses.lock().unwrap()[relay];
        if let Some(address) = address {
            let url = format!(
                "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
                address.port()
            );
            let sent = clients[relay]
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await;
            if let Ok(response) = sent {
                if response.status() == 200 {
                    if let Ok((_, json)) = tokio::time::timeout(WAIT, answer(response)).await {
                        return json["id"].as_str().unwrap().to_owned();
                    }
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relay accepted a notification for {WAIT:?}"
        );
        relay = 1 - relay;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_relays_on_three_nats_nodes_lose_nothing_through_a_node_and_a_relay_killed() {
    let test = "two_relays_on_three_nats_nodes_lose_nothing_through_a_node_and_a_relay_killed";
    let Some(binary) = nats_server_or_skip(test) else {
        return;
    };
    init();
    let started = tokio::time::Instant::now();
    let mut nats = NatsCluster::start(&binary, 3).await;
    let targets = [Target::start(vec![]).await, Target::start(vec![]).await];
    for target in &targets {
        target.fail_randomly(0.2);
    }
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let configs: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let path = dir.path().join("relay.toml");
            let text = config(
                dir.path(),
                dirs[0].path(),
                &nats,
                [&targets[0], &targets[1]],
            );
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let mut relays = vec![
        Some(RelayProcess::spawn(&configs[0]).await),
        Some(RelayProcess::spawn(&configs[1]).await),
    ];
    let addresses: Addresses = Arc::new(Mutex::new([
        relays[0].as_ref().map(|r| r.addr),
        relays[1].as_ref().map(|r| r.addr),
    ]));
    let clients = Arc::new([
        provider_client(&dirs[0].path().join("tls/self-signed.crt")),
        provider_client(&dirs[1].path().join("tls/self-signed.crt")),
    ]);

    // The providers: notification n goes to relay n % 2 first, and every
    // fourth to both at once; each is sent until accepted.
    let accepted: Arc<Mutex<BTreeMap<usize, Vec<String>>>> = Arc::default();
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let providers: Vec<_> = (0..PROVIDERS)
        .map(|provider| {
            let (clients, addresses) = (clients.clone(), addresses.clone());
            let (accepted, count_tx) = (accepted.clone(), count_tx.clone());
            tokio::spawn(async move {
                for n in (provider..NOTIFICATIONS).step_by(PROVIDERS) {
                    let body = tusfacturas(&format!("cluster-{n}"), "emitido", 1)
                        .replace("\"17032\"", &format!("\"c-{n}\""));
                    let ids = if n % 4 == 0 {
                        let (a, b) = tokio::join!(
                            post_until_accepted(&clients, &addresses, 0, &body),
                            post_until_accepted(&clients, &addresses, 1, &body)
                        );
                        vec![a, b]
                    } else {
                        vec![post_until_accepted(&clients, &addresses, n % 2, &body).await]
                    };
                    accepted.lock().unwrap().insert(n, ids);
                    count_tx.send_modify(|c| *c += 1);
                }
            })
        })
        .collect();
    let reach = |count: &mut tokio::sync::watch::Receiver<usize>, n: usize| {
        let mut count = count.clone();
        async move {
            tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n))
                .await
                .expect("the providers go on")
                .unwrap();
        }
    };

    reach(&mut count, NOTIFICATIONS / 5).await;
    nats.kill(1);
    eprintln!("{test}: nats node 1 SIGKILLed at {:?}", started.elapsed());
    reach(&mut count, NOTIFICATIONS * 2 / 5).await;
    addresses.lock().unwrap()[1] = None;
    relays[1].take().unwrap().sigkill().await;
    eprintln!("{test}: relay 1 SIGKILLed at {:?}", started.elapsed());
    reach(&mut count, NOTIFICATIONS * 3 / 5).await;
    let again = RelayProcess::spawn(&configs[1]).await;
    addresses.lock().unwrap()[1] = Some(again.addr);
    relays[1] = Some(again);
    nats.restart(1);
    eprintln!(
        "{test}: nats node 1 and relay 1 back at {:?}",
        started.elapsed()
    );
    for provider in providers {
        provider.await.unwrap();
    }

    eprintln!(
        "{test}: every notification accepted at {:?}",
        started.elapsed()
    );
    // A resend to either relay is the same notification.
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), NOTIFICATIONS);
    let mut ids = BTreeSet::new();
    for (n, given) in &accepted {
        assert!(
            given.windows(2).all(|pair| pair[0] == pair[1]),
            "notification {n} was given two ids: {given:?}"
        );
        ids.insert(given[0].clone());
    }
    assert_eq!(ids.len(), NOTIFICATIONS, "one id per notification");

    // Every one reaches both subscriptions, each under its one id.
    for (name, target) in ["erp", "audit"].iter().zip(&targets) {
        let all = target
            .wait_until(WAIT, |target| ids.iter().all(|id| target.succeeded(id)))
            .await;
        let succeeded: BTreeSet<String> = target.successes().into_iter().collect();
        let missing: Vec<_> = ids.difference(&succeeded).collect();
        assert!(all, "{name}: {} not delivered: {missing:?}", missing.len());
        let extra: Vec<_> = succeeded.difference(&ids).collect();
        assert!(
            extra.is_empty(),
            "{name} got ids never acknowledged: {extra:?}"
        );
    }

    eprintln!(
        "{test}: every notification delivered at {:?}",
        started.elapsed()
    );
    // Either relay's admin sees the whole spool, each notification once.
    for relay in relays.iter().flatten() {
        let response = reqwest::Client::new()
            .get(format!("{}/api/stats", relay.admin_url()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let (_, stats) = answer(response).await;
        assert_eq!(stats["notifications"], NOTIFICATIONS, "{stats}");
    }
    for relay in relays.into_iter().flatten() {
        relay.sigterm().await;
    }
}
