//! What a 200 to a provider means under the stream's replicas and the
//! servers' `sync_interval` (the table in `docs/design/jetstream.md`,
//! "What 200 means durable means"), and whether that is what
//! `spool.jetstream.durability` asks. A client cannot see `sync_interval`:
//! only the servers' monitoring endpoint (`/jsz`) shows it, so with no
//! `monitor_urls` it is unknown, and `fsync` cannot be verified.

use std::time::Duration;

use async_nats::jetstream::stream;

use crate::config::Durability;

/// The servers' `sync_interval`, as their `/jsz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncSetting {
    /// `sync_interval: always` on every server asked: an fsync before each ack.
    Always,
    /// Written to the OS at once, fsynced every this long (the longest
    /// among the servers asked; 2 min by default).
    Interval(Duration),
    /// Not known: why.
    Unknown(String),
}

/// What the open found: the promise of a 200, and what falls short of
/// what was asked (logged as a warning at open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurabilityReport {
    /// The stream's replicas.
    pub replicas: usize,
    pub sync: SyncSetting,
    /// What a 200 means, in the operator's words.
    pub promise: String,
    /// How it falls short of `durability`, if it does.
    pub shortfall: Option<String>,
    /// Replicas that are not current (offline or catching up) at open.
    pub lagging: Vec<String>,
}

impl DurabilityReport {
    /// Logs the promise, and a warning for a shortfall or lagging replicas.
    pub(super) fn log(&self, stream: &str) {
        tracing::info!(
            stream,
            replicas = self.replicas,
            "JetStream spool: a 200 means {}",
            self.promise
        );
        if let Some(shortfall) = &self.shortfall {
            tracing::warn!(
                stream,
                "JetStream spool gives less than spool.jetstream.durability asks: {shortfall}"
            );
        }
        if !self.lagging.is_empty() {
            tracing::warn!(stream, replicas = ?self.lagging, "JetStream spool: replicas not current at start (offline or catching up)");
        }
    }
}

/// The promise of `info`'s stream under `sync`, against `asked`.
pub(super) fn assess(
    info: &stream::Info,
    sync: SyncSetting,
    asked: Durability,
) -> DurabilityReport {
    let replicas = info.config.num_replicas.max(1);
    let lagging = info
        .cluster
        .iter()
        .flat_map(|c| &c.replicas)
        .filter(|peer| !peer.current || peer.offline)
        .map(|peer| peer.name.clone())
        .collect();
    let (promise, shortfall) = promise(replicas, &sync, asked);
    DurabilityReport {
        replicas,
        sync,
        promise,
        shortfall,
        lagging,
    }
}

/// The promise of `replicas` copies under `sync`, and how it falls short
/// of `asked`.
pub(super) fn promise(
    replicas: usize,
    sync: &SyncSetting,
    asked: Durability,
) -> (String, Option<String>) {
    let quorum = replicas / 2 + 1;
    let on = if replicas == 1 {
        "one server".to_owned()
    } else {
        format!("{quorum} of {replicas} servers")
    };
    let promise = match sync {
        SyncSetting::Always => format!(
            "the notification is fsynced on {on}: it survives a power loss{}",
            if replicas == 1 { " (sled's promise); lost with that disk" } else { " of every machine" }
        ),
        SyncSetting::Interval(every) => format!(
            "the notification is written, not fsynced, on {on} (fsynced every {every:?}): it survives any process being killed{}",
            if replicas == 1 {
                "; lost if that machine loses power or crashes within the interval (weaker than sled)"
            } else {
                " and the loss of any one machine; lost if a quorum loses power within the interval"
            }
        ),
        SyncSetting::Unknown(why) => format!(
            "the notification is on {on}, fsynced or not as the servers' sync_interval says (unknown: {why})"
        ),
    };
    let shortfall = match asked {
        Durability::Quorum if replicas < 2 => Some(
            "durability = \"quorum\" wants copies on two or more servers, but the stream has one: set spool.jetstream.replicas = 3 on a 3-node cluster".to_owned(),
        ),
        Durability::Quorum => None,
        Durability::Fsync => match sync {
            SyncSetting::Always => None,
            SyncSetting::Interval(every) => Some(format!(
                "durability = \"fsync\" wants `sync_interval: always` in every server's jetstream block, but they fsync every {every:?}"
            )),
            SyncSetting::Unknown(why) => Some(format!(
                "durability = \"fsync\" cannot be verified ({why}): set spool.jetstream.monitor_urls to the servers' monitoring ports"
            )),
        },
    };
    (promise, shortfall)
}

/// The sync setting of every server in `monitor_urls` (their `/jsz`).
pub(super) async fn read_sync(monitor_urls: &[String], timeout: Duration) -> SyncSetting {
    if monitor_urls.is_empty() {
        return SyncSetting::Unknown("no spool.jetstream.monitor_urls".into());
    }
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(client) => client,
        Err(e) => return SyncSetting::Unknown(format!("no HTTP client: {e}")),
    };
    let mut longest: Option<Duration> = None;
    for url in monitor_urls {
        let jsz = format!("{}/jsz", url.trim_end_matches('/'));
        let answer = match client.get(&jsz).send().await {
            Ok(answer) => answer.bytes().await,
            Err(e) => return SyncSetting::Unknown(format!("{jsz}: {e}")),
        };
        let parsed = answer.map_err(|e| e.to_string()).and_then(|body| {
            serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| e.to_string())
        });
        let config = match parsed {
            Ok(body) => body.get("config").cloned().unwrap_or_default(),
            Err(e) => return SyncSetting::Unknown(format!("{jsz}: {e}")),
        };
        match sync_of(&config) {
            Some(None) => {}
            Some(Some(every)) => longest = longest.max(Some(every)),
            None => return SyncSetting::Unknown(format!("{jsz} shows no sync_interval")),
        }
    }
    match longest {
        None => SyncSetting::Always,
        Some(every) => SyncSetting::Interval(every),
    }
}

/// One server's setting from its `/jsz` `config`: `Some(None)` for
/// always, `Some(Some(interval))`, or `None` when it does not say.
fn sync_of(config: &serde_json::Value) -> Option<Option<Duration>> {
    if config.get("sync_always").and_then(|v| v.as_bool()) == Some(true) {
        return Some(None);
    }
    let nanos = config.get("sync_interval")?.as_u64()?;
    Some(Some(Duration::from_nanos(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_promise_follows_the_replicas_and_the_sync_and_names_a_shortfall() {
        let two_min = SyncSetting::Interval(Duration::from_secs(120));
        let (promise, shortfall) = promise(3, &two_min, Durability::Quorum);
        assert!(promise.contains("2 of 3 servers"), "{promise}");
        assert!(promise.contains("loss of any one machine"), "{promise}");
        assert_eq!(shortfall, None);

        let (promise, shortfall) = super::promise(1, &two_min, Durability::Quorum);
        assert!(promise.contains("weaker than sled"), "{promise}");
        assert!(shortfall.unwrap().contains("quorum"));

        let (_, shortfall) = super::promise(3, &two_min, Durability::Fsync);
        assert!(shortfall.unwrap().contains("sync_interval: always"));
        let (promise, shortfall) = super::promise(1, &SyncSetting::Always, Durability::Fsync);
        assert!(promise.contains("sled's promise"), "{promise}");
        assert_eq!(shortfall, None);
        let unknown = SyncSetting::Unknown("no spool.jetstream.monitor_urls".into());
        let (_, shortfall) = super::promise(3, &unknown, Durability::Fsync);
        assert!(shortfall.unwrap().contains("cannot be verified"));
    }

    #[test]
    fn a_servers_sync_setting_is_read_from_its_jsz_config() {
        let always = serde_json::json!({"sync_interval": 120_000_000_000u64, "sync_always": true});
        assert_eq!(sync_of(&always), Some(None));
        let default = serde_json::json!({"sync_interval": 120_000_000_000u64});
        assert_eq!(sync_of(&default), Some(Some(Duration::from_secs(120))));
        assert_eq!(sync_of(&serde_json::json!({})), None);
    }
}
