//! The built binary as a child process: start it on a config file, read
//! its address and log, stop it with SIGTERM or SIGKILL, dump its spool.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;

pub const BINARY: &str = env!("CARGO_BIN_EXE_webhook-relay");
/// Log lines kept whole per process (the rest are counted, not kept).
const LOG_KEPT: usize = 20_000;

/// The built relay, started on a config file, with its ingress address.
pub struct RelayProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    /// Every line it logged (JSON), up to `LOG_KEPT`.
    log: Arc<Mutex<VecDeque<String>>>,
}

impl RelayProcess {
    pub async fn spawn(config: &Path) -> RelayProcess {
        let mut command = Command::new(BINARY);
        command.args(["serve", "--config"]).arg(config);
        RelayProcess::spawn_command(command).await
    }

    pub async fn spawn_command(mut command: Command) -> RelayProcess {
        let mut child = command
            .env("LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the relay binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let kept = log.clone();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                kept.lock().unwrap().push_back(line.clone());
                let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if log["fields"]["message"] == "ingress listening" {
                    return log["fields"]["addr"].as_str().unwrap().parse().unwrap();
                }
                assert_ne!(log["level"], "ERROR", "relay failed to start: {line}");
            }
            let log = kept.lock().unwrap().iter().cloned().collect::<Vec<_>>();
            panic!("relay exited before listening:\n{}", log.join("\n"));
        })
        .await
        .expect("relay listens within 30 s");
        // Keep draining its log so the pipe never blocks it.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = kept.lock().unwrap();
                if kept.len() == LOG_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        RelayProcess { child, addr, log }
    }

    /// Its log, for a task of the test that outlives a borrow.
    pub fn log_handle(&self) -> Arc<Mutex<VecDeque<String>>> {
        self.log.clone()
    }

    /// The log lines whose message contains `text`.
    pub fn logged(&self, text: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(text))
            .cloned()
            .collect()
    }

    /// Lines logged at `level` (e.g. "ERROR").
    pub fn count_level(&self, level: &str) -> usize {
        let pattern = format!("\"level\":\"{level}\"");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.contains(&pattern))
            .count()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The admin listener's address (`http://...`), from the start-up line.
    pub fn admin_url(&self) -> String {
        let line = self
            .logged("ingress listening")
            .pop()
            .expect("start-up line");
        let log: serde_json::Value = serde_json::from_str(&line).unwrap();
        format!("http://{}", log["fields"]["admin"].as_str().unwrap())
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_sigterm(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn sigkill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, and the exit status (within 30 s).
    pub async fn terminate(mut self) -> (std::process::ExitStatus, RelayProcess) {
        self.send_sigterm();
        let Ok(exit) = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await
        else {
            panic!(
                "the relay did not stop within 30 s of SIGTERM:\n{}",
                self.log_tail(30)
            );
        };
        let exit = exit.unwrap();
        // Let the log drainer read what was written before the exit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        (exit, self)
    }

    pub async fn sigterm(self) {
        let (exit, relay) = self.terminate().await;
        assert!(
            exit.success(),
            "clean stop after SIGTERM: {exit:?}; its last log lines:\n{}",
            relay.log_tail(40)
        );
    }
}

pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, format!("{}{extra}", base_config(dir))).unwrap();
    path
}

/// The notifications of a stopped relay's spool: id → body.
pub async fn dump(config: &Path) -> HashMap<String, String> {
    dump_records(config, &[])
        .await
        .into_iter()
        .map(|record| {
            (
                record["id"].as_str().unwrap().to_owned(),
                record["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `spool dump [options]` of a stopped relay's spool: one JSON record a
/// notification.
pub async fn dump_records(config: &Path, options: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(BINARY)
        .args(["spool", "dump"])
        .args(options)
        .arg("--config")
        .arg(config)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "spool dump: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
