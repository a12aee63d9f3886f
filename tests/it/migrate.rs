//! `spool migrate --to jetstream` through the built binary, against a
//! real nats-server on loopback and a sled spool a relay wrote: refused
//! (exit 75) while the relay holds the spool; once it stopped, the copy's
//! summary, the same notifications read back from JetStream, and a second
//! run that finds everything already there (skipped with a notice without
//! nats-server on the PATH, unless `REQUIRE_NATS=1`); a non-zero exit when
//! NATS is unreachable.

use std::path::Path;
use std::time::Duration;

use webhook_relay::clock::Clock;
use webhook_relay::config::Config;
use webhook_relay::spool::{NatsCluster, Routes};

use crate::helpers::*;
use crate::process::dump;

/// `[spool.jetstream]` on `servers`, its index in `dir` (the sled spool
/// stays the `[spool] backend`).
fn jetstream_table(servers: &[String], dir: &Path) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "\n[spool.jetstream]\nservers = [{}]\nreplicas = 1\nprefix = \"migrated\"\n\
         index_path = \"{}\"\nrequest_timeout = \"2s\"\nstore_timeout = \"2s\"\n",
        servers.join(", "),
        dir.join("jetstream-index").display()
    )
}

fn migrate(config: &Path) -> (Option<i32>, String, String) {
    let output = relay_cli(&["spool", "migrate", "--to", "jetstream"], config, &[]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_copies_a_stopped_spool_and_is_refused_while_a_relay_holds_it() {
    let Some(binary) =
        nats_server_or_skip("migrate_copies_a_stopped_spool_and_is_refused_while_a_relay_holds_it")
    else {
        return;
    };
    let nats = NatsCluster::start(&binary, 1).await;
    let target = Target::start(vec![]).await;
    let erp = subscription("erp", &target.url(), "");
    let relay = TestRelay::start(&erp).await;
    for n in 0..3 {
        let (status, _) = relay
            .post(
                &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
                tusfacturas(&format!("h-migrate-{n}"), "emitido", 1),
            )
            .await;
        assert_eq!(status, 200);
    }
    target.wait_for(3, Duration::from_secs(10)).await;
    let table = jetstream_table(&nats.urls(), relay.dir.path());
    let config = relay.dir.path().join("relay.toml");
    let text = format!("{}{erp}{table}", base_config(relay.dir.path()));
    std::fs::write(&config, &text).unwrap();

    let (code, _, stderr) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || migrate(&config)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(75), "refused while the relay runs: {stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");

    let dir = relay.stop().await;
    let (code, stdout, stderr) = migrate(&config);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("migrated "), "{stdout}");
    assert!(
        stdout.contains("verified: 3 notifications, 0 quarantined"),
        "{stdout}"
    );
    assert!(
        stdout.contains("verified \"erp\": 0 waiting, 0 dead, 3 delivered, 0 purged"),
        "{stdout}"
    );
    assert!(stderr.contains("3 of 3 notifications read"), "{stderr}");
    let (code, again, stderr) = migrate(&config);
    assert_eq!(code, Some(0), "{again}{stderr}");
    assert!(again.contains(": 0 records copied, "), "{again}");

    // JetStream holds the same notifications, by id, with their bodies.
    let sled = dump(&config).await;
    let loaded = Config::parse(&text).unwrap();
    let mut jetstream_config = loaded.spool.clone();
    jetstream_config.jetstream.index_path = dir.path().join("reader-index");
    jetstream_config.backend = webhook_relay::config::SpoolBackend::Jetstream;
    let copy = webhook_relay::spool::Spool::open(
        &jetstream_config,
        Routes::from_config(&loaded),
        Clock::system(),
    )
    .await
    .unwrap();
    let copied = copy.notifications().collect().await.unwrap();
    assert_eq!(copied.len(), 3);
    for record in &copied {
        assert_eq!(
            sled.get(&record.meta.id).map(String::as_str),
            std::str::from_utf8(&record.body).ok(),
            "{}",
            record.meta.id
        );
    }
    copy.close().await.unwrap();
}

#[tokio::test]
async fn migrate_exits_non_zero_when_nats_is_unreachable() {
    let target = Target::start(vec![]).await;
    let erp = subscription("erp", &target.url(), "");
    let relay = TestRelay::start(&erp).await;
    let (status, _) = relay
        .post(
            &format!("/hooks/tusfacturas/{TUS_TOKEN}"),
            tusfacturas("h-unreachable", "emitido", 1),
        )
        .await;
    assert_eq!(status, 200);
    let dir = relay.stop().await;
    let nowhere = format!("nats://127.0.0.1:{}", closed_port().await);
    let config = dir.path().join("relay.toml");
    let table = jetstream_table(&[nowhere], dir.path());
    std::fs::write(&config, format!("{}{erp}{table}", base_config(dir.path()))).unwrap();
    let (code, stdout, stderr) = migrate(&config);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("the JetStream spool"), "{stderr}");
}

/// Notifications in the big spool of the SIGKILL test: enough that the
/// copy takes a while to kill it in the middle of.
const MANY: usize = 20_000;

/// Stores `MANY` notifications in a new sled spool for `config`, as
/// ingress would, many at a time.
async fn big_spool(config: &Config) {
    use webhook_relay::providers::{InvoiceStatus, Notification};
    use webhook_relay::spool::{Received, Spool};
    let spool = Spool::open(&config.spool, Routes::from_config(config), Clock::system())
        .await
        .unwrap();
    let now = Clock::system().now_ms();
    for batch in 0..MANY / 1_000 {
        let stores = (0..1_000).map(|i| {
            let n = batch * 1_000 + i;
            let spool = spool.clone();
            async move {
                let received = Received {
                    source: "tusfacturas".into(),
                    body: bytes::Bytes::from(format!("{{\"hook_id\": \"big-{n}\"}}")),
                    content_type: Some("application/json".into()),
                    headers: vec![],
                    peer: "127.0.0.1".into(),
                    received_ms: now,
                };
                let notification = Notification {
                    event_type: "facturacion.emitido".into(),
                    subject: Some(format!("{n}")),
                    dedup_key: format!("big-{n}"),
                    provider_time: None,
                    status: InvoiceStatus::Unknown,
                    flags: vec![],
                };
                spool.store(received, notification).await.unwrap();
            }
        });
        futures_util::future::join_all(stores).await;
    }
    spool.close().await.unwrap();
}

/// How many messages the migration's stream holds (0 before it exists).
async fn messages_in(client: &async_nats::Client) -> u64 {
    let jetstream = async_nats::jetstream::new(client.clone());
    match jetstream.get_stream("migrated_spool").await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_killed_mid_way_then_run_again_copies_each_record_once() {
    let Some(binary) =
        nats_server_or_skip("a_migration_killed_mid_way_then_run_again_copies_each_record_once")
    else {
        return;
    };
    let nats = NatsCluster::start(&binary, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let erp = subscription("erp", "http://127.0.0.1:9/", "");
    let table = jetstream_table(&nats.urls(), dir.path());
    let text = format!("{}{erp}{table}", base_config(dir.path()));
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, &text).unwrap();
    big_spool(&Config::parse(&text).unwrap()).await;

    let mut first = tokio::process::Command::new(crate::process::BINARY)
        .args(["spool", "migrate", "--to", "jetstream", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("first.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = async_nats::connect(nats.urls()[0].as_str()).await.unwrap();
    let limit = tokio::time::Instant::now() + Duration::from_secs(60);
    // Killed once a part of the spool is copied, far from the end.
    while messages_in(&client).await < (MANY / 4) as u64 {
        assert!(
            tokio::time::Instant::now() < limit,
            "the copy makes no progress"
        );
        if let Some(exit) = first.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
            panic!("done before it was killed ({exit}):\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let copied_before = messages_in(&client).await;
    assert!(
        copied_before < MANY as u64,
        "killed mid-way: {copied_before}"
    );

    let started = tokio::time::Instant::now();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || migrate(&config))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("verified: {MANY} notifications")),
        "{stdout}"
    );
    let summary = stdout.lines().next().unwrap_or_default();
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [.., copied, already] = numbers[..] else {
        panic!("{summary}");
    };
    assert!(
        already > 0,
        "the rerun found the first run's records: {summary}"
    );
    // Each notification once (the stream keeps one message per subject,
    // and the counts were verified equal): what the rerun copied and found
    // add up to the spool's records.
    assert_eq!(copied + already, MANY as u64, "{summary}");
    eprintln!("the rerun copied {copied} and found {already} already there in {took:?}");
}
