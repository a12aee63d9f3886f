//! The offline spool commands on a spool the relay wrote: `spool check`
//! prints the counts it kept (and that a recount agrees with), `spool dump
//! --audit` the audit log with RFC 3339 times.

use std::time::Duration;

use webhook_relay::spool::AuditEntry;

use crate::helpers::*;

#[tokio::test]
async fn check_prints_the_counts_and_dump_prints_the_audit_log() {
    let target = Target::start(vec![]).await;
    let erp = subscription("erp", &target.url(), "");
    let relay = TestRelay::start(&erp).await;
    for n in 0..3 {
        let (status, _) = relay
            .post(
                &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
                tusfacturas(&format!("h-audit-{n}"), "emitido", 1),
            )
            .await;
        assert_eq!(status, 200);
    }
    target.wait_for(3, Duration::from_secs(10)).await;
    let spool = &relay.relay().spool;
    eventually(Duration::from_secs(10), "three delivered", || {
        spool
            .counts()
            .subscriptions
            .get("erp")
            .is_some_and(|c| c.delivered == 3)
    })
    .await;
    let id = spool
        .audit(AuditEntry {
            actor: "cli".into(),
            action: "replay".into(),
            target: "erp".into(),
            detail: serde_json::json!({"count": 3}),
        })
        .await
        .unwrap();
    let dir = relay.stop().await;
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, format!("{}{erp}", base_config(dir.path()))).unwrap();

    let check = relay_cli(&["spool", "check"], &config, &[]);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{report}");
    assert!(
        report.contains("counts (counted): 3 notifications, 0 quarantined"),
        "{report}"
    );
    assert!(
        report.contains("counts of \"erp\": 0 waiting, 0 dead, 3 delivered, 0 purged"),
        "{report}"
    );
    assert!(report.contains("1 audit records"), "{report}");
    assert!(!report.contains("repaired"), "kept counts agree: {report}");

    let dump = relay_cli(&["spool", "dump"], &config, &["--audit"]);
    assert!(dump.status.success(), "{dump:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["id"], id.to_string());
    assert_eq!(line["actor"], "cli");
    assert_eq!(line["action"], "replay");
    assert_eq!(line["detail"]["count"], 3);
    let at = line["at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
        "RFC 3339: {at}"
    );
    let both = relay_cli(&["spool", "dump"], &config, &["--audit", "--quarantine"]);
    assert_eq!(both.status.code(), Some(2), "one kind of record at a time");
}
