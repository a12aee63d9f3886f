//! A nats-server cluster on loopback (three nodes, or one alone) for the
//! tests that take a node away and for relay-bench: fixed ports (a node comes back where the relays look for
//! it), its own store per node, a SIGKILL of one node and its restart on
//! the same store. Each node runs under a shell that kills it when the
//! process that started it goes. Tooling, not the relay: it panics on
//! what it cannot do.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;

/// A loopback port free now (the test binds it a moment later; another
/// process taking it between is not worth more machinery here).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap()
}

/// One node's process, under its shell.
struct Node {
    shell: Child,
}

pub struct NatsCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_ports: Vec<u16>,
    nodes: Vec<Option<Node>>,
}

impl NatsCluster {
    /// Starts `size` nodes of one cluster (one is a server alone) and answers once JetStream has a
    /// meta leader (a bounded wait).
    pub async fn start(binary: &Path, size: usize) -> NatsCluster {
        NatsCluster::start_with(binary, size, "").await
    }

    /// [`NatsCluster::start`] with `jetstream` added to each node's
    /// `jetstream {}` block (e.g. `sync_interval: always`).
    pub async fn start_with(binary: &Path, size: usize, jetstream: &str) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        for i in 0..size {
            let routes: Vec<String> = (0..size)
                .filter(|&j| j != i)
                .map(|j| format!("nats-route://127.0.0.1:{}", route_ports[j]))
                .collect();
            let mut conf = std::fs::File::create(dir.path().join(format!("n{i}.conf"))).unwrap();
            write!(
                conf,
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n  {jetstream}\n}}\n",
                client_ports[i],
                dir.path().join(format!("n{i}")),
            )
            .unwrap();
            if size > 1 {
                write!(
                    conf,
                    "cluster {{\n  name: test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    route_ports[i],
                    routes.join(", "),
                )
                .unwrap();
            }
        }
        let mut cluster = NatsCluster {
            binary: binary.to_owned(),
            dir,
            client_ports,
            nodes: (0..size).map(|_| None).collect(),
        };
        for i in 0..size {
            cluster.restart(i);
        }
        cluster.await_meta_leader().await;
        cluster
    }

    /// Every node's client URL (the relays' `servers`).
    pub fn urls(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect()
    }

    /// Starts node `i` (again) on its ports and store; answers once it
    /// takes connections.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let conf = self.dir.path().join(format!("n{i}.conf"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{i}.log")))
            .unwrap();
        let shell = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -c "$1" & p=$!; echo $p > "$2"; cat >/dev/null; kill $p; wait $p"#)
            .arg(&self.binary)
            .arg(&conf)
            .arg(self.pid_file(i))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[i] = Some(Node { shell });
        for _ in 0..200 {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.client_ports[i])).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {i} took no connection in 10 s: {}", self.log(i));
    }

    /// SIGKILLs node `i`: no goodbye to its peers, nothing flushed.
    pub fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("node is running");
        let pid = std::fs::read_to_string(self.pid_file(i)).unwrap();
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -KILL {pid}");
        drop(node.shell.stdin.take());
        let _ = node.shell.wait();
    }

    /// The index of the node named `name` (`n0`, `n1`, ...).
    pub fn node_named(&self, name: &str) -> usize {
        name.strip_prefix('n')
            .and_then(|i| i.parse().ok())
            .filter(|&i: &usize| i < self.nodes.len())
            .unwrap_or_else(|| panic!("no node is named {name}"))
    }

    /// What node `i` logged, over its restarts.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{i}.log"))).unwrap_or_default()
    }

    fn pid_file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}.pid"))
    }

    async fn await_meta_leader(&self) {
        let servers: Vec<async_nats::ServerAddr> =
            self.urls().iter().map(|url| url.parse().unwrap()).collect();
        let client = async_nats::connect(servers).await.unwrap();
        let js = jetstream::new(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match js.query_account().await {
                Ok(_) => return,
                Err(err) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "the cluster elected no JetStream leader in 30 s: {err}\n{}",
                    self.log(0)
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            let mut shell = node.shell;
            drop(shell.stdin.take());
            let _ = shell.wait();
        }
    }
}
