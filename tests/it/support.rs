//! Shared test harness: the shared signature vectors and helpers to run the binary.

use std::path::PathBuf;
use std::sync::Arc;

pub const BIN: &str = env!("CARGO_BIN_EXE_cbgate");

/// One vector of `tests/data/signature.json` (a copy of `shared/vectors/`).
#[derive(serde::Deserialize, Clone, Debug)]
pub struct Vector {
    pub name: String,
    pub secret: String,
    pub payload_json: String,
    pub canonical: String,
    pub signature: String,
}

pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

pub fn vectors() -> Vec<Vector> {
    #[derive(serde::Deserialize)]
    struct File {
        vectors: Vec<Vector>,
    }
    let text = std::fs::read_to_string(data_path("signature.json")).expect("vectors file");
    let file: File = serde_json::from_str(&text).expect("vectors parse");
    assert!(file.vectors.len() >= 80, "the shared file holds 87 vectors");
    file.vectors
}

/// The callbacks of the seeds (the platform's own examples), without signatures.
pub fn seed_callbacks() -> Vec<Vector> {
    let v: Vec<_> = vectors()
        .into_iter()
        .filter(|v| v.name.starts_with("seed:") && v.name.contains("callback"))
        .collect();
    assert_eq!(v.len(), 11, "the seeds hold 11 callback examples");
    v
}

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 for a server a test starts later. Taken below the
/// kernel's ephemeral range (32768-60999), so the source port of some test's outgoing
/// connection can never take it in between, and never handed out twice by this
/// process; checked free by binding it once.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = fastrand::u16(0..SPAN);
    let _ = NEXT.compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire);
    loop {
        let port = FIRST + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// An answer's headers, names lower-cased, in order.
pub type Headers = Vec<(String, String)>;

/// One keep-alive HTTP/1.1 connection, blocking: enough to talk to cbgate.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request; returns status and body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        self.exchange(method, path, headers, body)
            .map(|(status, _, body)| (status, body))
    }

    /// As `request`, with the answer's headers (names lower-cased).
    pub fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Headers, Vec<u8>)> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: cbgate\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        let mut answer_headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                }
                answer_headers.push((k, v.trim().to_string()));
            }
        }
        let mut out = vec![0; len];
        self.reader.read_exact(&mut out)?;
        Ok((status, answer_headers, out))
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        self.request("POST", path, &[("Content-Type", "application/json")], body)
            .map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))
    }
}

/// One-shot request on a new connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (s, b) = Conn::open(addr)
        .and_then(|mut c| c.request(method, path, headers, body))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    (s, String::from_utf8_lossy(&b).into_owned())
}

/// The real `cbgate serve` on 127.0.0.1 ports with its own data directory.
pub struct Gateway {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub stderr_path: PathBuf,
    /// Extra environment for the process (e.g. `LD_PRELOAD`, a test hook), applied at
    /// each spawn; cleared for a restart without it.
    pub env: Vec<(String, String)>,
}

pub const ADMIN_TOKEN: &str = "test-admin-token";

impl Gateway {
    /// Starts cbgate with `projects` (TOML for `[[projects]]` and any other tables);
    /// the harness adds `[server]` ports, the admin token and `[storage] dir`.
    pub fn start(projects: &str) -> Gateway {
        Self::start_with(projects, "")
    }

    /// As `start`, with extra `[server]` keys.
    pub fn start_with(projects: &str, server_extra: &str) -> Gateway {
        Self::start_config(projects, server_extra, "")
    }

    /// As `start`, with extra `[server]` and `[storage]` keys.
    pub fn start_config(projects: &str, server_extra: &str, storage_extra: &str) -> Gateway {
        Self::start_env(projects, server_extra, storage_extra, &[])
    }

    /// As `start_config`, the process started with `env` set.
    pub fn start_env(
        projects: &str,
        server_extra: &str,
        storage_extra: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut g = Self::configure(projects, server_extra, storage_extra);
        g.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        g.spawn();
        g
    }

    /// As `start_config`, without starting the process (`spawn` starts it).
    pub fn configure(projects: &str, server_extra: &str, storage_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let admin = free_addr();
        let config = format!(
            "[server]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n{server_extra}\n\
             [storage]\ndir = \"{}\"\n{storage_extra}\n\n[log]\nlevel = \"info\"\n\n{projects}\n",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("cbgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let stderr_path = dir.path().join("cbgate.log");
        Gateway {
            child: None,
            addr,
            admin,
            dir,
            config_path,
            stderr_path,
            env: Vec::new(),
        }
    }

    /// Posts a callback that must be answered accepted (with the log when it is not).
    pub fn accept_callback(&self, body: &[u8]) {
        assert_eq!(
            self.post("/callbacks", body),
            (200, r#"{"status":"accepted"}"#.into()),
            "{}",
            self.log()
        );
    }

    /// Starts the process on the same config and data (after `kill` or `stop`) and
    /// waits until it is ready.
    pub fn spawn(&mut self) {
        self.launch();
        self.wait_ready(Duration::from_secs(30));
    }

    /// Starts the process without waiting for it to be ready.
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config", self.config_path.to_str().unwrap()])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cbgate starts");
        self.child = Some(child);
    }

    pub fn wait_ready(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("cbgate exited with {status} before ready:\n{}", self.log());
            }
            if let Ok(mut c) = Conn::open(self.admin)
                && let Ok((200, _)) = c.request("GET", "/readyz", &[], b"")
            {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "cbgate not ready in {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "cbgate did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn post(&self, path: &str, body: &[u8]) -> (u16, String) {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body,
        )
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        request(self.admin, "GET", path, &[("Authorization", &auth)], b"")
    }

    pub fn admin_post(&self, path: &str) -> (u16, String) {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        request(self.admin, "POST", path, &[("Authorization", &auth)], b"")
    }

    /// Polls until every endpoint worker has nothing pending and nothing in flight:
    /// from then on nothing more is sent until a new event or replay arrives. The
    /// event a test waits on before asserting "nothing more arrived".
    pub fn wait_idle(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let (status, text) = self.admin_get("/admin/endpoints");
            assert_eq!(status, 200, "{text}");
            let endpoints: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
            if endpoints
                .iter()
                .all(|e| e["pending"] == 0 && e["in_flight"] == 0 && e["in_memory"] == 0)
            {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "deliveries still pending after {limit:?}: {text}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until `metric(name, labels)` satisfies `done`; panics after `limit`.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        limit: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        let started = Instant::now();
        loop {
            let value = self.metric(name, labels);
            if done(value) {
                return value;
            }
            assert!(
                started.elapsed() < limit,
                "{name}{labels:?} is {value} after {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One sample of a metric from `/metrics`, summed over label sets containing
    /// every `labels` pair.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = request(self.admin, "GET", "/metrics", &[], b"");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                (metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
            })
            .sum()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A signed copy of a vector's payload with `project_id` set to `project`.
pub fn signed_for(project: u64, payload_json: &str, secret: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(payload_json).unwrap();
    v["project_id"] = serde_json::Value::from(project);
    cbgate::signature::attach(v.to_string().as_bytes(), secret).unwrap()
}

/// A private CA and a certificate it signed for `localhost` and 127.0.0.1: https test servers use
/// `server`; cbgate trusts them only through `ca_file`.
pub struct TestTls {
    pub server: Arc<rustls::ServerConfig>,
    dir: tempfile::TempDir,
}

impl TestTls {
    pub fn new() -> TestTls {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "cbgate test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        TestTls {
            server: Arc::new(server),
            dir,
        }
    }

    /// The CA certificate (PEM), for a `ca_file` key.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate and key (PEM), for cbgate's own `tls_cert`/`tls_key`.
    pub fn server_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.pem"),
            self.dir.path().join("server.key"),
        )
    }

    /// One HTTP/1.1 request over TLS to `addr`, trusting only this CA; the raw answer.
    pub fn request(&self, addr: SocketAddr, path: &str, body: &[u8]) -> std::io::Result<String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in cbgate::outbound::load_certificates(&self.ca_file()).unwrap() {
            roots.add(cert).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes())?;
        tls.write_all(body)?;
        let mut answer = Vec::new();
        // A peer that closes without close_notify is fine once the answer is in.
        let _ = tls.read_to_end(&mut answer);
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}

/// An accepted connection, plain or TLS (the handshake runs on first read); a peer
/// silent for 30 s is dropped so no test thread waits forever.
pub fn accept(
    stream: TcpStream,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Box<dyn ReadWrite + Send> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    match tls {
        None => Box::new(stream),
        Some(config) => Box::new(rustls::StreamOwned::new(
            rustls::ServerConnection::new(config.clone()).unwrap(),
            stream,
        )),
    }
}

pub trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}
