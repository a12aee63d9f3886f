//! `[spool.jetstream]`: the NATS JetStream backend's settings (issue 19;
//! the plan is `docs/design/jetstream.md`). Where the servers are, how the
//! relay proves who it is to them (one of a creds, nkey or token file; TLS
//! with a CA file), how many copies of the spool it asks for, the prefix of
//! the names it creates, its timeouts and what "durable" must mean.
//!
//! The rules of the table on its own are [`JetstreamConfig::check`]; the
//! server's side (its version, the stream's settings) is checked when the
//! spool opens (`spool::jetstream`).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::locate::KeyPath;
use super::HumanDuration;

/// The longest forwarding attempt (`timeout_first`, `timeout_retry`) a
/// subscription may have on this backend: each consumer's ack wait is this
/// plus `ack_margin`, so no lease is handed to a second relay while the
/// first may still be sending it (a duplicate send).
pub const LONGEST_ATTEMPT: Duration = Duration::from_secs(60);
/// The most copies a JetStream stream can have.
pub const MAX_REPLICAS: u8 = 5;
/// `store_timeout`'s bound: a provider waits for the answer to its post
/// (TusFacturas 5 s), so a longer wait only turns a 503 into its timeout.
const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_ACK_MARGIN: Duration = Duration::from_secs(3600);
/// `max_relays`' bound: far past any deployment, there to catch a slip.
const MAX_RELAYS: u32 = 64;
/// A prefix is one subject token and part of stream names: kept short.
const MAX_PREFIX_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetstreamConfig {
    /// The NATS servers, `nats://host:port` (or `tls://host:port`); one is
    /// enough to find the others of its cluster.
    pub servers: Vec<String>,
    /// A `.creds` file (JWT and nkey seed), as `nsc` writes it.
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    /// A file holding the server's auth token.
    pub token_file: Option<PathBuf>,
    /// `[spool.jetstream.tls]`: connect with TLS, trusting this CA.
    pub tls: Option<JetstreamTls>,
    /// How many servers keep a copy of the spool (the stream's R).
    pub replicas: u8,
    /// The first token of every subject and the start of every stream,
    /// consumer and bucket name the relay creates: relays sharing one spool
    /// share it, and two spools on one cluster differ in it.
    pub prefix: String,
    /// What a 200 to a provider must mean (see [`Durability`]); checked
    /// against the servers at start, with a warning when not met.
    pub durability: Durability,
    /// The servers' monitoring endpoints (`http://host:8222`): the only
    /// place their `sync_interval` shows, so `durability = "fsync"` can be
    /// verified only with these.
    pub monitor_urls: Vec<String>,
    /// The longest wait for JetStream's acknowledgement of a store before
    /// the provider gets 503: keep it under the providers' own timeout.
    pub store_timeout: HumanDuration,
    /// The longest wait for any other request to the servers (and for the
    /// connection at start).
    pub request_timeout: HumanDuration,
    /// Added to a subscription's forwarding timeout to make its consumer's
    /// ack wait, after which a dead relay's leases go to another.
    pub ack_margin: HumanDuration,
    /// This relay's local, rebuildable index of the shared spool.
    pub index_path: PathBuf,
    /// How many relays may share the spool (sizes each consumer's
    /// outstanding acks).
    pub max_relays: u32,
}

impl Default for JetstreamConfig {
    fn default() -> Self {
        JetstreamConfig {
            servers: Vec::new(),
            creds_file: None,
            nkey_file: None,
            token_file: None,
            tls: None,
            replicas: 3,
            prefix: "relay".to_owned(),
            durability: Durability::default(),
            monitor_urls: Vec::new(),
            store_timeout: HumanDuration(Duration::from_secs(4)),
            request_timeout: HumanDuration(Duration::from_secs(5)),
            ack_margin: HumanDuration(Duration::from_secs(30)),
            index_path: PathBuf::from("data/jetstream-index"),
            max_relays: 4,
        }
    }
}

/// `[spool.jetstream.tls]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetstreamTls {
    /// The CA (PEM) that signed the servers' certificates.
    pub ca_file: PathBuf,
}

/// What a 200 to a provider must mean on JetStream (`durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// In the memory of a quorum of the stream's replicas (two or more):
    /// survives the loss of any one machine.
    #[default]
    Quorum,
    /// fsynced before the acknowledgement (`sync_interval: always` on
    /// every server): survives a power loss, as sled does.
    Fsync,
}

impl JetstreamConfig {
    /// The names of the auth keys set, in the file's spelling.
    fn auth_keys(&self) -> Vec<&'static str> {
        [
            ("creds_file", self.creds_file.is_some()),
            ("nkey_file", self.nkey_file.is_some()),
            ("token_file", self.token_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// Its relative paths resolved against `base` (the config's directory).
    pub(super) fn resolve_paths(&mut self, base: &std::path::Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.index_path);
        for file in [
            &mut self.creds_file,
            &mut self.nkey_file,
            &mut self.token_file,
        ] {
            file.as_mut().map(resolve);
        }
        if let Some(tls) = self.tls.as_mut() {
            resolve(&mut tls.ca_file);
        }
    }

    /// The rules of the table on its own (`at` is `spool.jetstream`).
    pub(super) fn check(&self, at: &KeyPath, found: &mut Vec<(KeyPath, String)>) {
        if self.servers.is_empty() {
            found.push((
                at.key("servers"),
                "names no server: list the NATS servers, e.g. [\"nats://10.0.0.1:4222\"]".into(),
            ));
        }
        for (i, server) in self.servers.iter().enumerate() {
            if let Some(problem) = server_problem(server) {
                found.push((at.key("servers").index(i), format!("`{server}` {problem}")));
            }
        }
        for (i, url) in self.monitor_urls.iter().enumerate() {
            if let Some(problem) = monitor_problem(url) {
                found.push((
                    at.key("monitor_urls").index(i),
                    format!("`{url}` {problem}"),
                ));
            }
        }
        let auth = self.auth_keys();
        if auth.len() > 1 {
            found.push((
                at.key(auth[1]),
                format!(
                    "set with `{}`: the relay authenticates one way, keep one of creds_file, nkey_file and token_file",
                    auth[0]
                ),
            ));
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            found.push((
                at.key("replicas"),
                format!(
                    "must be 1 to {MAX_REPLICAS} (a JetStream stream has at most {MAX_REPLICAS} copies)"
                ),
            ));
        }
        if let Some(problem) = prefix_problem(&self.prefix) {
            found.push((at.key("prefix"), format!("{:?} {problem}", self.prefix)));
        }
        let millisecond = Duration::from_millis(1);
        if let Some(problem) = self.store_timeout.outside(millisecond, MAX_STORE_TIMEOUT) {
            found.push((at.key("store_timeout"), problem));
        }
        if let Some(problem) = self
            .request_timeout
            .outside(millisecond, MAX_REQUEST_TIMEOUT)
        {
            found.push((at.key("request_timeout"), problem));
        }
        if let Some(problem) = self
            .ack_margin
            .outside(Duration::from_secs(1), MAX_ACK_MARGIN)
        {
            found.push((at.key("ack_margin"), problem));
        }
        if !(1..=MAX_RELAYS).contains(&self.max_relays) {
            found.push((at.key("max_relays"), format!("must be 1 to {MAX_RELAYS}")));
        }
        if self.index_path.as_os_str().is_empty() {
            found.push((at.key("index_path"), "must name a directory".into()));
        }
    }
}

/// What is wrong with a `servers` entry, if anything: it must be a
/// `nats://` or `tls://` URL with a host, no credentials (they go in a
/// file) and nothing after the port. Parsed as the client parses it.
fn server_problem(server: &str) -> Option<&'static str> {
    let Some((scheme, _)) = server.split_once("://") else {
        return Some("is not a URL: write nats://host:port");
    };
    if !matches!(scheme, "nats" | "tls") {
        return Some("must start with nats:// or tls://");
    }
    let Ok(addr) = async_nats::ServerAddr::from_str(server) else {
        return Some("is not a URL: write nats://host:port");
    };
    let url = addr.into_inner();
    if url.host_str().is_none_or(str::is_empty) {
        Some("names no host")
    } else if !url.username().is_empty() || url.password().is_some() {
        Some("carries credentials: put them in creds_file, nkey_file or token_file")
    } else if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        Some("has more than a host and a port")
    } else {
        None
    }
}

/// What is wrong with a `monitor_urls` entry, if anything.
fn monitor_problem(url: &str) -> Option<&'static str> {
    match reqwest::Url::parse(url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => None,
        Ok(_) => Some("must be an http:// or https:// URL with a host"),
        Err(_) => Some("is not a URL: write http://host:8222"),
    }
}

/// What is wrong with a prefix, if anything: one subject token that is
/// also valid in stream names.
fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        Some("is empty".into())
    } else if prefix.len() > MAX_PREFIX_LEN {
        Some(format!("is longer than {MAX_PREFIX_LEN} characters"))
    } else if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Some("may use only A-Z, a-z, 0-9, '-' and '_' (it is one NATS subject token)".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, Problem, SpoolBackend};

    /// A config on this backend with `table` in its section; lines: 8
    /// [spool], 9 backend, 10 [spool.jetstream], 11 on.
    fn with_table(table: &str) -> String {
        format!(
            "[server]\nself_signed = true\n\n[sources.tus]\nprovider = \"tusfacturas\"\ntoken = \"0123456789abcdef\"\n\n[spool]\nbackend = \"jetstream\"\n[spool.jetstream]\n{table}"
        )
    }

    /// The problems of `text` (none when it loads).
    fn problems_of(text: &str) -> Vec<Problem> {
        Config::parse(text).err().unwrap_or_default()
    }

    #[test]
    fn the_table_is_read_with_its_defaults() {
        let text = with_table("servers = [\"nats://10.0.0.1:4222\", \"tls://nats.internal:4222\"]\ncreds_file = \"relay.creds\"\n[spool.jetstream.tls]\nca_file = \"ca.pem\"\n");
        assert_eq!(problems_of(&text), []);
        // The section as the loader reads it, before paths are resolved.
        let table: toml::Table = toml::from_str(&text).unwrap();
        let spool: crate::config::SpoolConfig = table["spool"].clone().try_into().unwrap();
        assert_eq!(spool.backend, SpoolBackend::Jetstream);
        let mut js = spool.jetstream;
        assert_eq!(js.servers.len(), 2);
        assert_eq!(js.replicas, 3);
        assert_eq!(js.prefix, "relay");
        assert_eq!(js.durability, Durability::Quorum);
        assert_eq!(js.store_timeout.0, Duration::from_secs(4));
        assert_eq!(js.ack_margin.0, Duration::from_secs(30));
        js.resolve_paths(Path::new("/etc/relay"));
        assert_eq!(
            js.creds_file.as_deref(),
            Some(Path::new("/etc/relay/relay.creds"))
        );
        assert_eq!(js.tls.map(|t| t.ca_file), Some("/etc/relay/ca.pem".into()));
        assert_eq!(js.index_path, Path::new("/etc/relay/data/jetstream-index"));
    }

    #[test]
    fn the_backend_loads_and_sled_ignores_the_table() {
        let text = with_table("servers = [\"nats://127.0.0.1:4222\"]\n");
        assert_eq!(problems_of(&text), []);
        // sled needs none of it: a [spool.jetstream] table beside sled is fine.
        let sled = text.replace("backend = \"jetstream\"", "backend = \"sled\"");
        assert!(Config::parse(&sled).is_ok());
    }

    #[test]
    fn each_bad_setting_is_named_at_its_line() {
        let text = with_table(concat!(
            "servers = [\"nats://127.0.0.1:4222\", \"http://127.0.0.1:4222\", \"nats://user:pw@127.0.0.1:4222\"]\n", // 11
            "creds_file = \"a.creds\"\n",  // 12
            "token_file = \"token\"\n",    // 13
            "replicas = 7\n",              // 14
            "prefix = \"relay.a\"\n",      // 15
            "store_timeout = \"2m\"\n",    // 16
            "ack_margin = \"0s\"\n",       // 17
            "max_relays = 0\n",            // 18
            "monitor_urls = [\"nats://127.0.0.1:8222\"]\n", // 19
        ));
        let found: Vec<(Option<usize>, String)> = problems_of(&text)
            .into_iter()
            .map(|p| (p.line, p.key))
            .collect();
        let expected: Vec<(Option<usize>, String)> = [
            (11, "spool.jetstream.servers[1]"),
            (11, "spool.jetstream.servers[2]"),
            (13, "spool.jetstream.token_file"),
            (14, "spool.jetstream.replicas"),
            (15, "spool.jetstream.prefix"),
            (16, "spool.jetstream.store_timeout"),
            (17, "spool.jetstream.ack_margin"),
            (18, "spool.jetstream.max_relays"),
            (19, "spool.jetstream.monitor_urls[0]"),
        ]
        .into_iter()
        .map(|(line, key)| (Some(line), key.to_owned()))
        .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn servers_must_be_listed_and_durability_is_a_word() {
        let problems = problems_of(&with_table(""));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "spool.jetstream.servers");
        let problems = problems_of(&with_table(
            "servers = [\"nats://127.0.0.1:4222\"]\ndurability = \"always\"\n",
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(12));
        assert!(problems[0].message.contains("quorum"), "{problems:?}");
    }

    #[test]
    fn an_attempt_longer_than_a_lease_is_refused_on_this_backend_only() {
        let subscription = "\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\ntimeout_first = \"61s\"\ntimeout_retry = \"1m\"\n";
        let text = with_table(&format!(
            "servers = [\"nats://127.0.0.1:4222\"]\n{subscription}"
        ));
        let problems = problems_of(&text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "subscriptions[0].timeout_first");
        assert_eq!(problems[0].line, Some(17));
        assert!(problems[0].message.contains("sent twice"), "{problems:?}");
        // On sled an attempt may last up to 10 minutes.
        let sled = text.replace("backend = \"jetstream\"", "backend = \"sled\"");
        assert!(Config::parse(&sled).is_ok());
    }

    #[test]
    fn a_server_url_is_checked_as_the_client_reads_it() {
        assert_eq!(server_problem("nats://127.0.0.1:4222"), None);
        assert_eq!(server_problem("tls://nats.internal"), None);
        assert!(server_problem("127.0.0.1:4222").is_some());
        assert!(server_problem("nats://127.0.0.1:4222/x").is_some());
        assert!(server_problem("nats://").is_some());
        assert_eq!(prefix_problem("relay_2-b"), None);
        assert!(prefix_problem("a b").is_some());
        assert!(prefix_problem("").is_some());
    }
}
