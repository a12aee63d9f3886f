//! Issue 12, knowing each invoice: the status in one vocabulary (sent as
//! `x-relay-status`, picked by a subscription's `statuses` and the API's
//! `status=`), on a running relay with real targets.

use std::time::Duration;

use crate::admin::{admin_section, Admin};
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

async fn post_tus(relay: &TestRelay, hook: &str, evento: &str) -> String {
    let (status, json) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            tusfacturas(hook, evento, 1),
        )
        .await;
    assert_eq!(status, 200, "{json}");
    json["id"].as_str().expect("an id").to_owned()
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_status_is_sent_picked_by_subscriptions_and_filtered_by_the_api() {
    let everything = Target::start(vec![]).await;
    let decided = Target::start(vec![]).await;
    let subs = [
        subscription("everything", &everything.url(), ""),
        subscription(
            "decided",
            &decided.url(),
            r#"statuses = ["accepted", "rejected"]"#,
        ),
    ]
    .concat();
    let relay = TestRelay::start(&format!("{}{subs}", admin_section())).await;
    let queued = post_tus(&relay, "h-st", "encolado").await;
    let issued = post_tus(&relay, "h-st", "emitido").await;

    let got = everything.wait_for(2, WAIT).await;
    let mut statuses: Vec<(&str, &str)> = got
        .iter()
        .map(|r| (header(r, "webhook-id"), header(r, "x-relay-status")))
        .collect();
    statuses.sort();
    let mut wanted = vec![(queued.as_str(), "queued"), (issued.as_str(), "accepted")];
    wanted.sort();
    assert_eq!(statuses, wanted);

    let got = decided.wait_for(1, WAIT).await;
    assert_eq!(header(&got[0], "webhook-id"), issued);
    assert_eq!(header(&got[0], "x-relay-status"), "accepted");
    // Fan-out decides at spool time: the queued one has no delivery to it.
    let admin = Admin::of(&relay);
    let shown = admin.get(&format!("/api/notifications/{queued}")).await;
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["deliveries"].as_array().unwrap().len(), 1);

    let page = admin.get("/api/notifications?status=accepted").await;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [issued.as_str()]);
    let (status, _) = admin
        .call(
            "GET",
            "/api/notifications?status=emitido",
            Some(crate::admin::ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(decided.count(), 1);
    relay.stop().await;
}
