//! Live reload of the built binary: SIGHUP re-reads relay.toml while a
//! provider keeps posting; a changed token and a new subscription apply at
//! once, nothing in flight is dropped, and a broken file changes nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::*;
use crate::process::{write_config, RelayProcess};

/// The longest an awaited condition may take: generous, since a loaded
/// machine is slow and a condition met returns at once.
const WAIT: Duration = Duration::from_secs(30);
const OLD_TOKEN: &str = "lenient-token-0123456789";
const NEW_TOKEN: &str = "lenient-token-rotated-42";

pub fn hup(relay: &RelayProcess) {
    let pid = relay.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until the relay has logged `text` `n` times.
async fn logged(relay: &RelayProcess, text: &str, n: usize) {
    eventually(WAIT, text, || relay.logged(text).len() >= n).await;
}

pub async fn post(client: &reqwest::Client, relay: &RelayProcess, path: &str, hook: &str) -> u16 {
    client
        .post(format!("https://localhost:{}{path}", relay.addr.port()))
        .header("content-type", "application/json")
        .body(tusfacturas(hook, "emitido", 1))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn sighup_swaps_a_token_and_adds_a_subscription_without_dropping_a_request() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let billing = Target::start(Vec::new()).await;
    let erp = Target::start(Vec::new()).await;
    let config = write_config(
        dir.path(),
        &(subscription("billing", &billing.url(), "") + &crate::admin::admin_section()),
    );
    let relay = Arc::new(RelayProcess::spawn(&config).await);
    let client = provider_client(&dir.path().join("tls/self-signed.crt"));

    // A provider posting in a loop on one kept-alive client, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let looping = {
        let (client, relay, stop, sent, statuses) = (
            client.clone(),
            relay.clone(),
            stop.clone(),
            sent.clone(),
            statuses.clone(),
        );
        tokio::spawn(async move {
            for i in 0..5_000 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let path = format!("/hooks/tusfacturas/{TUS_TOKEN}");
                let status = post(&client, &relay, &path, &format!("loop-{i}")).await;
                statuses.lock().unwrap().push(status);
                sent.fetch_add(1, Ordering::Release);
            }
        })
    };
    eventually(WAIT, "the loop to run", || {
        sent.load(Ordering::Acquire) >= 5
    })
    .await;

    let old_path = format!("/hooks/lenient/{OLD_TOKEN}");
    let new_path = format!("/hooks/lenient/{NEW_TOKEN}");
    assert_eq!(post(&client, &relay, &old_path, "before-old").await, 200);
    assert_ne!(post(&client, &relay, &new_path, "before-new").await, 200);

    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace(OLD_TOKEN, NEW_TOKEN)
        + &subscription("erp", &erp.url(), "");
    std::fs::write(&config, edited).unwrap();
    let before_reload = sent.load(Ordering::Acquire);
    hup(&relay);
    logged(&relay, "config reloaded", 1).await;

    assert_ne!(
        post(&client, &relay, &old_path, "after-old").await,
        200,
        "the old token is refused once reloaded"
    );
    assert_eq!(post(&client, &relay, &new_path, "after-new").await, 200);
    // Stored after the reload: both subscriptions get it.
    let (status, body) = {
        let response = client
            .post(format!(
                "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
                relay.addr.port()
            ))
            .body(tusfacturas("for-erp", "emitido", 1))
            .send()
            .await
            .unwrap();
        answer(response).await
    };
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(
        erp.wait_until(WAIT, |t| t.succeeded(&id)).await,
        "the new subscription delivers"
    );
    assert!(billing.wait_until(WAIT, |t| t.succeeded(&id)).await);

    // A broken file: logged, and the running config stays; the admin API
    // says why.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, "[server\nlisten = ").unwrap();
    hup(&relay);
    logged(&relay, "config not reloaded", 1).await;
    assert_eq!(post(&client, &relay, &new_path, "after-broken").await, 200);
    let admin = relay.admin_url();
    let admin_client = reqwest::Client::new();
    let reload = |client: &reqwest::Client| {
        client
            .post(format!("{admin}/api/reload"))
            .bearer_auth(crate::admin::ADMIN_TOKEN)
            .send()
    };
    let refused = reload(&admin_client).await.unwrap();
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("relay.toml"));
    std::fs::write(
        &config,
        good.replace(&subscription("erp", &erp.url(), ""), ""),
    )
    .unwrap();
    let done = reload(&admin_client).await.unwrap();
    assert_eq!(done.status(), 200);
    let report: serde_json::Value = serde_json::from_str(&done.text().await.unwrap()).unwrap();
    assert_eq!(report["subscriptions_removed"][0], "erp", "{report}");
    // Both reloads are in the audit log, each with who asked.
    let audit = admin_client
        .get(format!("{admin}/api/audit"))
        .bearer_auth(crate::admin::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let audit: serde_json::Value = serde_json::from_str(&audit.text().await.unwrap()).unwrap();
    let actors: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["actor"].as_str().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actors,
        [("ops", "config.reload"), ("SIGHUP", "config.reload")],
        "{audit}"
    );

    eventually(WAIT, "the loop to go on past the reloads", || {
        sent.load(Ordering::Acquire) >= before_reload + 5
    })
    .await;
    stop.store(true, Ordering::Release);
    looping.await.unwrap();
    let statuses = statuses.lock().unwrap().clone();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request of the loop got 200 across the reloads: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let Ok(relay) = Arc::try_unwrap(relay) else {
        panic!("the loop let go of the relay");
    };
    relay.sigterm().await;
}
