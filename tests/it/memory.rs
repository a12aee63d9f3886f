//! Guarantee 5: memory stays bounded whatever the backlog. The built relay
//! takes notifications for two subscriptions whose target holds every
//! request, so nearly all of them wait in the spool; its resident memory
//! must not grow with that backlog. (`relay-bench backlog` shows the same
//! at a million waiting deliveries, release build.)

use std::time::Duration;

use crate::helpers::*;
use crate::process::*;

/// Bytes of padding per notification: a relay that kept waiting work in
/// memory would grow by at least this per notification.
const PADDING: usize = 4096;
/// Past this backlog sled's cache and the allocator have reached their
/// working size (measured: 73 MiB at 1,500, 86 at 15,000, then 87-92 up to
/// 75,000, in a debug build).
const SMALL_BACKLOG: usize = 10_000;
const LARGE_BACKLOG: usize = 40_000;
/// Allowed growth from the small backlog to the large one (4-12 MiB
/// measured: sled's page table and segments grow with the spool). Holding
/// the extra 30,000 bodies alone would take more than 110 MiB.
const ALLOWED_GROWTH_KIB: u64 = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_memory_does_not_grow_with_the_backlog() {
    init();
    let hang = Reply::Hang(Duration::from_secs(600));
    let target = Target::start(vec![hang; 64]).await;
    let dir = tempfile::tempdir().unwrap();
    let held = |name: &str| {
        format!(
            "\n[[subscriptions]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nschedule = [\"1h\"]\ntimeout_first = \"300s\"\nmax_in_flight = 4\n",
            target.url()
        )
    };
    // A small sled cache, so that sled's own (bounded) growth as the spool
    // grows stays well below what holding the backlog would take.
    let config = base_config(dir.path()).replace(
        "[spool]\n",
        "[spool]\ncache_capacity = \"4MiB\"\nsync_data = false\n",
    ) + &held("erp")
        + &held("archive");
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config).unwrap();
    let relay = RelayProcess::spawn(&path).await;
    let client = provider_client(&dir.path().join("tls/self-signed.crt"));
    let url = format!(
        "https://localhost:{}/hooks/tusfacturas/{TUS_TOKEN}",
        relay.addr.port()
    );

    post_padded(&client, &url, 0..SMALL_BACKLOG).await;
    let small = resident_kib(&relay);
    post_padded(&client, &url, SMALL_BACKLOG..LARGE_BACKLOG).await;
    let large = resident_kib(&relay);
    // The backlog is real: the target holds at most 4 requests per
    // subscription, everything else waits.
    assert!(
        target.count() <= 8,
        "{} requests reached the target",
        target.count()
    );
    eprintln!(
        "resident memory: {small} KiB with {} deliveries waiting, {large} KiB with {}",
        SMALL_BACKLOG * 2,
        LARGE_BACKLOG * 2
    );
    assert!(
        large.saturating_sub(small) < ALLOWED_GROWTH_KIB,
        "resident memory grew from {small} KiB to {large} KiB with the backlog"
    );
    relay.sigkill().await;
}

/// Posts notifications `numbers`, 16 at a time, each answered 200.
async fn post_padded(client: &reqwest::Client, url: &str, numbers: std::ops::Range<usize>) {
    let padding = "x".repeat(PADDING);
    let numbers: Vec<usize> = numbers.collect();
    for chunk in numbers.chunks(16) {
        let posts = chunk.iter().map(|n| {
            let body = format!(
                r#"{{"creado": "18/03/2022 15:58:11", "evento": "emitido", "recurso": "facturacion", "external_reference": "{n}", "intento": 1, "msg": ["{padding}"], "hook_id": "mem-{n}"}}"#
            );
            async move { client.post(url).body(body).send().await }
        });
        for response in futures_util::future::join_all(posts).await {
            let response = response.expect("the relay answers");
            assert_eq!(response.status(), 200, "{:?}", response.text().await);
        }
    }
}

/// The relay's resident set (VmRSS), in KiB.
fn resident_kib(relay: &RelayProcess) -> u64 {
    let pid = relay.child.id().expect("the relay runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}
