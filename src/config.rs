//! The TOML configuration: serde types that refuse unknown keys, secret references
//! (`env:NAME`, `file:PATH`, literal) and a validation that reports every problem at
//! once, each naming the file, the key and what is wrong.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub terminal: TerminalSettings,
    #[serde(default)]
    pub log: Log,
    /// `[merchant]`: the merchant listener runs only when this table is present.
    #[serde(default)]
    pub merchant: Option<MerchantSettings>,
    #[serde(default)]
    pub projects: Vec<Project>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Platform-facing listener: `/callbacks`, `/terminal`.
    pub listen: SocketAddr,
    /// Operator listener: `/healthz`, `/readyz`, `/metrics`, `/admin/...`.
    pub admin_listen: SocketAddr,
    /// Bearer token for `/admin/...`; `None` disables the admin API routes.
    pub admin_token: Option<SecretRef>,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_connections: usize,
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// PEM certificate chain and private key: with both, the platform listener speaks
    /// https (HTTP/1.1 and HTTP/2 by ALPN); with neither, plain http.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Threads serving platform requests, each with its own runtime, fixed at start;
    /// 0 = one per core.
    pub worker_threads: usize,
    /// Signature checks on this many dedicated threads; 0 checks inline on the
    /// reactor threads (measured faster on 2 cores, see BENCHMARKS.md).
    pub verifier_threads: usize,
    /// Also accept the other SDKs' canonical orders when the PHP one fails.
    pub signature_fallback: bool,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            admin_listen: "127.0.0.1:9090".parse().expect("literal address"),
            admin_token: None,
            max_body_bytes: 64 * 1024,
            max_json_depth: crate::signature::DEFAULT_MAX_DEPTH,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            worker_threads: 0,
            verifier_threads: 0,
            signature_fallback: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Embedded,
    Jetstream,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub engine: Engine,
    pub dir: PathBuf,
    #[serde(deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// Most callbacks one group commit takes.
    pub max_batch: usize,
    /// Callbacks waiting for the journal beyond which ingress answers 503.
    pub max_pending: usize,
    /// Check every page of the journal at start; a damaged file is refused.
    pub verify_on_open: bool,
    /// Memory the journal may use for its page cache and write buffer.
    pub cache_bytes: usize,
    /// JetStream only: the NATS servers to reach (any of them; the client finds the rest).
    pub nats_urls: Vec<String>,
    /// One more NATS server, as the config key of earlier versions named it.
    pub nats_url: Option<String>,
    /// JetStream only: copies of every stream (3 for high availability; 1 is durable
    /// but not highly available).
    pub replicas: usize,
    /// JetStream only: delivery partitions, fixed for the stream's life.
    pub partitions: u16,
    /// JetStream only: the events stream; the other streams and buckets are named after it.
    pub stream: String,
    /// JetStream only: the events stream's size limit; past it callbacks get 503.
    #[serde(deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// JetStream only: a NATS credentials file (JWT and nkey seed).
    pub nats_creds: Option<PathBuf>,
    pub nats_token: Option<SecretRef>,
    pub nats_user: Option<SecretRef>,
    pub nats_password: Option<SecretRef>,
    /// JetStream only: PEM CA certificates trusted for `tls://` NATS servers.
    pub nats_ca_file: Option<PathBuf>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            engine: Engine::Embedded,
            dir: PathBuf::from("./data"),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            max_batch: 512,
            max_pending: 16_384,
            verify_on_open: true,
            cache_bytes: 256 << 20,
            nats_urls: Vec::new(),
            nats_url: None,
            replicas: 3,
            partitions: 64,
            stream: "CBGATE".into(),
            max_bytes: 50 << 30,
            nats_creds: None,
            nats_token: None,
            nats_user: None,
            nats_password: None,
            nats_ca_file: None,
        }
    }
}

impl Storage {
    /// Every NATS server named, `nats_url` included.
    pub fn nats_servers(&self) -> Vec<String> {
        self.nats_urls
            .iter()
            .chain(self.nats_url.as_ref())
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Delay before each attempt; the first is usually `0s`.
    #[serde(deserialize_with = "durations")]
    pub schedule: Vec<Duration>,
    /// After the schedule, retry this often...
    #[serde(deserialize_with = "duration")]
    pub repeat_every: Duration,
    /// ...until this long after the event was accepted; then it is a dead letter.
    #[serde(deserialize_with = "duration")]
    pub give_up_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    pub max_in_flight: usize,
    /// Failures within `breaker_window` that can open an endpoint's circuit, at the
    /// least (before the failure rate: in a row).
    pub breaker_failures: u32,
    /// How long an open circuit sends nothing; then one probe, and a ramp.
    #[serde(deserialize_with = "duration")]
    pub breaker_cooldown: Duration,
    /// Share of failed attempts within `breaker_window` that opens the circuit...
    pub breaker_failure_rate: f64,
    /// ...once the window holds this many attempts.
    pub breaker_min_attempts: u32,
    #[serde(deserialize_with = "duration")]
    pub breaker_window: Duration,
    /// Deliveries one endpoint holds in memory; a larger backlog stays in the journal
    /// and is read back as the endpoint catches up.
    pub max_queued: usize,
    /// PEM CA certificates trusted for https endpoints beside the public web roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for Delivery {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            schedule: vec![s(0), s(5), s(30), s(120), s(600), s(1800), s(3600)],
            repeat_every: s(7200),
            give_up_after: s(3 * 24 * 3600),
            connect_timeout: s(2),
            timeout: s(10),
            max_in_flight: 64,
            breaker_failures: 5,
            breaker_cooldown: s(30),
            breaker_failure_rate: 0.8,
            breaker_min_attempts: 20,
            breaker_window: s(30),
            max_queued: 10_000,
            ca_file: None,
        }
    }
}

/// `[terminal]`: how terminal requests reach merchants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminalSettings {
    /// An identical check_deposit within this window gets the first answer again.
    #[serde(deserialize_with = "duration")]
    pub idempotency_window: Duration,
    /// check_deposit answers remembered at most: past it the oldest goes, even inside the
    /// window (counted in `cbgate_terminal_idempotency_evictions_total`).
    pub idempotency_max_entries: usize,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// PEM CA certificates trusted for https terminal_urls beside the public web roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for TerminalSettings {
    fn default() -> Self {
        Self {
            idempotency_window: Duration::from_secs(600),
            idempotency_max_entries: 100_000,
            connect_timeout: Duration::from_millis(500),
            ca_file: None,
        }
    }
}

/// `[merchant]`: the internal listener where merchant backends get Payment Page
/// invocations signed and Gate API requests signed and forwarded to the platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MerchantSettings {
    /// Internal only: whoever reaches it with a project's token moves that project's money.
    pub listen: SocketAddr,
    /// The platform's Gate API base URL; `POST /gate/v2/...` goes to it plus the path.
    /// Unset: `/gate/...` answers 404.
    pub gate_url: Option<String>,
    /// The Payment Page URL the signed parameters are appended to (`?...&signature=`).
    /// Unset: `/payment-page/sign` answers without a URL.
    pub payment_page_url: Option<String>,
    /// Gate API paths beside the five of the Mobile Commerce flow, each under `/v2/`.
    pub gate_paths: Vec<String>,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// The whole Gate API exchange: connect, send, and the platform's answer read whole.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// PEM CA certificates trusted for the Gate API beside the public web roots.
    pub ca_file: Option<PathBuf>,
    pub max_connections: usize,
}

impl Default for MerchantSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8081".parse().expect("literal address"),
            gate_url: None,
            payment_page_url: None,
            gate_paths: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            ca_file: None,
            max_connections: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `cbgate=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// One `cbgate::access` line per platform request (route, project, outcome, latency).
    pub access: bool,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
            access: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub id: u64,
    pub secrets: Vec<SecretRef>,
    /// Payment method of the project's terminal: sets the dialect of `verify`.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub terminal_url: Option<String>,
    #[serde(default = "default_budget", deserialize_with = "duration")]
    pub terminal_budget: Duration,
    /// check_deposit amount limits in minor units; Kassa24 Terminal defaults to
    /// 100..=50000000 (1.00–500,000.00 KZT), other methods to no limit.
    #[serde(default)]
    pub terminal_amount_min: Option<i64>,
    #[serde(default)]
    pub terminal_amount_max: Option<i64>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Bearer token of this project's merchant backends on the merchant listener.
    #[serde(default)]
    pub merchant_token: Option<SecretRef>,
}

fn default_budget() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    /// `whsec_...` key for Standard Webhooks signatures.
    pub secret: SecretRef,
    /// Filters; absent means every value passes.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub operation_types: Option<Vec<String>>,
    #[serde(default)]
    pub statuses: Option<Vec<String>>,
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
}

/// Where a secret comes from. Resolved at load; the value is never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Literal(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Literal(_) => f.write_str("<literal>"),
        }
    }
}

impl SecretRef {
    pub fn parse(spec: &str) -> Self {
        if let Some(name) = spec.strip_prefix("env:") {
            SecretRef::Env(name.to_string())
        } else if let Some(path) = spec.strip_prefix("file:") {
            SecretRef::File(PathBuf::from(path))
        } else {
            SecretRef::Literal(spec.to_string())
        }
    }

    pub fn is_literal(&self) -> bool {
        matches!(self, SecretRef::Literal(_))
    }

    /// The secret's value; a file's trailing newline is not part of it.
    pub fn resolve(&self) -> Result<String, String> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            SecretRef::File(path) => read_secret_file(path)?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            SecretRef::Literal(value) => value.clone(),
        };
        if value.is_empty() {
            return Err(format!("{self:?} is empty"));
        }
        Ok(value)
    }
}

/// Secret files larger than this are refused: a secret is a line, and a path such as
/// `/dev/zero` must not be read without end.
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let cannot = |e: &dyn fmt::Display| format!("cannot read secret file {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let meta = file.metadata().map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(cannot(&"not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| cannot(&e))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(cannot(&format_args!("larger than {MAX_SECRET_FILE} bytes")));
    }
    Ok(text)
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SecretRef::parse(&String::deserialize(d)?))
    }
}

fn parse_duration<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
    humantime::parse_duration(text).map_err(|e| {
        E::custom(format!(
            "`{text}` is not a duration ({e}); write it like \"500ms\", \"2s\", \"10m\", \"7d\""
        ))
    })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s))
        .transpose()
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a size ({e}); write it like \"512MiB\" or \"50GiB\""
                ))
            }),
    }
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_duration(s))
        .collect()
}

/// Every problem found in a config file, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The largest `server.max_body_bytes`: platform messages are a few KiB, and the
/// canonicaliser's offsets are 32-bit (its string is bounded at 8x the body).
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Terminal budgets outside this range are refused: below it no merchant can answer,
/// above it the platform has long given up.
pub const BUDGET_RANGE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(30));

/// Merchant tokens shorter than this are refused.
pub const MIN_MERCHANT_TOKEN: usize = 16;

/// A Gate API path cbgate may forward: under `/v2/`, plain segments of letters, digits,
/// `_`, `-` and `.`, no empty or dot segment (it is appended to `gate_url` as written).
pub fn check_gate_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err(format!("`{path}` must start with /v2/"));
    };
    let plain = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    };
    if path.len() > 200 || !rest.split('/').all(plain) {
        return Err(format!(
            "`{path}` must be /v2/ followed by segments of letters, digits, '_', '-' or '.'"
        ));
    }
    Ok(())
}

/// Payment methods whose terminal dialect cbgate knows.
pub const TERMINAL_METHODS: [&str; 3] = ["kassa24", "kassa24_bvu", "terminal/paydala"];

impl Config {
    /// Reads, parses and validates `path`; secrets must resolve.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Problems(vec![format!("{name}: cannot read: {e}")]))?;
        Self::from_toml(&name, &text)
    }

    /// Parses and validates TOML text; `name` prefixes every problem.
    pub fn from_toml(name: &str, text: &str) -> Result<Config, Problems> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let span = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Problems(vec![format!("{name}{span}: {}", e.message().trim_end())])
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Problems(
                problems
                    .into_iter()
                    .map(|p| format!("{name}: {p}"))
                    .collect(),
            ))
        }
    }

    /// Semantic checks serde cannot make, as `key: what is wrong`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let s = &self.server;
        if s.max_body_bytes < 256 || s.max_body_bytes > MAX_BODY_BYTES {
            out.push(format!(
                "server.max_body_bytes: {} is out of range 256..={MAX_BODY_BYTES}",
                s.max_body_bytes
            ));
        }
        if !(2..=256).contains(&s.max_json_depth) {
            out.push(format!(
                "server.max_json_depth: {} is out of range 2..=256",
                s.max_json_depth
            ));
        }
        if s.max_connections == 0 {
            out.push("server.max_connections: must be at least 1".into());
        }
        for (key, threads) in [
            ("worker_threads", s.worker_threads),
            ("verifier_threads", s.verifier_threads),
        ] {
            if threads > 1024 {
                out.push(format!("server.{key}: {threads} is more than 1024"));
            }
        }
        match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => {
                if let Err(e) = crate::http::tls_acceptor(cert, key) {
                    out.push(format!("server.tls_cert/tls_key: {e}"));
                }
            }
            (None, None) => {}
            _ => out.push("server.tls_cert and server.tls_key: set both or neither".into()),
        }
        if let Some(token) = &s.admin_token
            && let Err(e) = token.resolve()
        {
            out.push(format!("server.admin_token: {e}"));
        }
        if self.storage.engine == Engine::Jetstream {
            out.extend(self.jetstream_problems());
        }
        if self.storage.dedup_window < Duration::from_secs(60) {
            out.push(
                "storage.dedup_window: shorter than 1m would let platform retries through".into(),
            );
        }
        if self.storage.max_batch == 0 || self.storage.max_pending == 0 {
            out.push("storage.max_batch and storage.max_pending: must be at least 1".into());
        }
        if self.storage.cache_bytes < 1 << 20 {
            out.push(format!(
                "storage.cache_bytes: {} is less than 1 MiB (1048576)",
                self.storage.cache_bytes
            ));
        }
        let d = &self.delivery;
        if d.schedule.is_empty() {
            out.push("delivery.schedule: needs at least one attempt".into());
        }
        if d.repeat_every.is_zero() {
            out.push("delivery.repeat_every: must be more than 0s".into());
        }
        if d.max_in_flight == 0 {
            out.push("delivery.max_in_flight: must be at least 1".into());
        }
        if d.max_queued == 0 {
            out.push("delivery.max_queued: must be at least 1".into());
        }
        if d.breaker_failures == 0 || d.breaker_min_attempts == 0 {
            out.push(
                "delivery.breaker_failures and delivery.breaker_min_attempts: must be at least 1"
                    .into(),
            );
        }
        if !(d.breaker_failure_rate > 0.0 && d.breaker_failure_rate <= 1.0) {
            out.push(format!(
                "delivery.breaker_failure_rate: {} is not in (0, 1] (a share: 0.8 = 80%)",
                d.breaker_failure_rate
            ));
        }
        if d.breaker_window < Duration::from_secs(1) {
            out.push("delivery.breaker_window: must be at least 1s".into());
        }
        for (key, ca_file) in [
            ("delivery.ca_file", &d.ca_file),
            ("terminal.ca_file", &self.terminal.ca_file),
        ] {
            if let Some(path) = ca_file
                && let Err(e) = crate::outbound::load_certificates(path)
            {
                out.push(format!("{key}: {e}"));
            }
        }
        out.extend(self.merchant_problems());
        let mut ids = HashSet::new();
        for (i, p) in self.projects.iter().enumerate() {
            let at = format!("projects[{i}] (id {})", p.id);
            if !ids.insert(p.id) {
                out.push(format!("{at}.id: duplicate project id {}", p.id));
            }
            if p.secrets.is_empty() {
                out.push(format!("{at}.secrets: at least one secret is required"));
            }
            for (j, secret) in p.secrets.iter().enumerate() {
                if let Err(e) = secret.resolve() {
                    out.push(format!("{at}.secrets[{j}]: {e}"));
                }
            }
            if let Some(m) = &p.method
                && p.terminal_url.is_some()
                && !TERMINAL_METHODS.contains(&m.as_str())
            {
                out.push(format!(
                    "{at}.method: `{m}` has no terminal dialect (one of {})",
                    TERMINAL_METHODS.join(", ")
                ));
            }
            if let Some(url) = &p.terminal_url
                && let Err(e) = check_url(url)
            {
                out.push(format!("{at}.terminal_url: {e}"));
            }
            if p.terminal_budget < BUDGET_RANGE.0 || p.terminal_budget > BUDGET_RANGE.1 {
                out.push(format!(
                    "{at}.terminal_budget: {:?} is out of range {:?}..={:?}",
                    p.terminal_budget, BUDGET_RANGE.0, BUDGET_RANGE.1
                ));
            }
            let mut names = HashSet::new();
            for (j, e) in p.endpoints.iter().enumerate() {
                let at = format!("{at}.endpoints[{j}] ({})", e.name);
                if e.name.is_empty()
                    || !e
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    out.push(format!("{at}.name: use letters, digits, '-', '_' or '.'"));
                }
                if !names.insert(e.name.as_str()) {
                    out.push(format!(
                        "{at}.name: duplicate endpoint name in this project"
                    ));
                }
                if let Err(err) = check_url(&e.url) {
                    out.push(format!("{at}.url: {err}"));
                }
                match e.secret.resolve() {
                    Ok(v) if crate::webhook::Key::parse(&v).is_none() => out.push(format!(
                        "{at}.secret: not a Standard Webhooks secret (whsec_ followed by base64)"
                    )),
                    Ok(_) => {}
                    Err(err) => out.push(format!("{at}.secret: {err}")),
                }
            }
        }
        out
    }

    /// `[merchant]` and the projects' merchant tokens, checked.
    fn merchant_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = &self.merchant {
            for (key, url) in [
                ("gate_url", &m.gate_url),
                ("payment_page_url", &m.payment_page_url),
            ] {
                let Some(url) = url else { continue };
                match check_url(url) {
                    // The path is appended to it, and the SDKs append `?` and the query.
                    Ok(uri) if uri.query().is_some() || url.contains('#') => out.push(format!(
                        "merchant.{key}: `{url}` must have no query or fragment"
                    )),
                    Ok(_) => {}
                    Err(e) => out.push(format!("merchant.{key}: {e}")),
                }
            }
            for path in &m.gate_paths {
                if let Err(e) = check_gate_path(path) {
                    out.push(format!("merchant.gate_paths: {e}"));
                }
            }
            if m.connect_timeout.is_zero() || m.timeout.is_zero() {
                out.push(
                    "merchant.connect_timeout and merchant.timeout: must be more than 0s".into(),
                );
            }
            if m.connect_timeout > m.timeout {
                out.push(format!(
                    "merchant.connect_timeout: {:?} is longer than merchant.timeout ({:?}), which \
                     bounds the whole exchange",
                    m.connect_timeout, m.timeout
                ));
            }
            if m.max_connections == 0 {
                out.push("merchant.max_connections: must be at least 1".into());
            }
            if let Some(path) = &m.ca_file
                && let Err(e) = crate::outbound::load_certificates(path)
            {
                out.push(format!("merchant.ca_file: {e}"));
            }
            if m.listen == self.server.listen || m.listen == self.server.admin_listen {
                out.push(format!(
                    "merchant.listen: {} is also server.listen or server.admin_listen",
                    m.listen
                ));
            }
        }
        let mut tokens: Vec<(String, u64)> = Vec::new();
        for (i, p) in self.projects.iter().enumerate() {
            let Some(token) = &p.merchant_token else {
                continue;
            };
            let at = format!("projects[{i}] (id {}).merchant_token", p.id);
            match token.resolve() {
                Err(e) => out.push(format!("{at}: {e}")),
                Ok(t) if t.len() < MIN_MERCHANT_TOKEN => out.push(format!(
                    "{at}: shorter than {MIN_MERCHANT_TOKEN} characters; it lets its holder \
                     move the project's money (e.g. `openssl rand -hex 32`)"
                )),
                Ok(t) => match tokens.iter().find(|(other, _)| *other == t) {
                    Some((_, other)) => out.push(format!(
                        "{at}: the same token as project {other}: a token names one project"
                    )),
                    None => tokens.push((t, p.id)),
                },
            }
        }
        out
    }

    /// The `[storage]` keys the JetStream engine needs, checked.
    fn jetstream_problems(&self) -> Vec<String> {
        let st = &self.storage;
        let mut out = Vec::new();
        let servers = st.nats_servers();
        if servers.is_empty() {
            out.push(
                "storage.nats_urls: the jetstream engine needs at least one NATS server".into(),
            );
        }
        for url in &servers {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                out.push(format!("storage.nats_urls: `{url}` is not a NATS URL: {e}"));
            }
        }
        if !(1..=5).contains(&st.replicas) {
            out.push(format!(
                "storage.replicas: {} is out of range 1..=5",
                st.replicas
            ));
        }
        if !(1..=1024).contains(&st.partitions) {
            out.push(format!(
                "storage.partitions: {} is out of range 1..=1024",
                st.partitions
            ));
        }
        if st.stream.is_empty()
            || st.stream.len() > 32
            || !st
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            out.push(format!(
                "storage.stream: `{}` must be 1 to 32 letters, digits, '-' or '_'",
                st.stream
            ));
        }
        if st.max_bytes < 1 << 20 {
            out.push(format!(
                "storage.max_bytes: {} is less than 1 MiB",
                st.max_bytes
            ));
        }
        if let Some(path) = &st.nats_creds
            && let Err(e) = std::fs::read_to_string(path)
        {
            out.push(format!(
                "storage.nats_creds: cannot read {}: {e}",
                path.display()
            ));
        }
        for (key, secret) in [
            ("nats_token", &st.nats_token),
            ("nats_user", &st.nats_user),
            ("nats_password", &st.nats_password),
        ] {
            if let Some(secret) = secret
                && let Err(e) = secret.resolve()
            {
                out.push(format!("storage.{key}: {e}"));
            }
        }
        if st.nats_user.is_some() != st.nats_password.is_some() {
            out.push("storage.nats_user and storage.nats_password: set both or neither".into());
        }
        let ways = [
            st.nats_creds.is_some(),
            st.nats_token.is_some(),
            st.nats_user.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            out.push(
                "storage.nats_creds, nats_token, nats_user: choose one way to authenticate".into(),
            );
        }
        if let Some(path) = &st.nats_ca_file
            && let Err(e) = crate::outbound::load_certificates(path)
        {
            out.push(format!("storage.nats_ca_file: {e}"));
        }
        // Events leave the stream when their dedup key expires: a delivery still
        // retrying then would lose its body.
        if self.delivery.give_up_after >= st.dedup_window {
            out.push(format!(
                "delivery.give_up_after: {:?} must be shorter than storage.dedup_window ({:?}) \
                 on the jetstream engine, which keeps each event for the dedup window",
                self.delivery.give_up_after, st.dedup_window
            ));
        }
        out
    }

    /// What is accepted but worth a warning at start, one line each.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .literal_secrets()
            .into_iter()
            .map(|key| format!("{key} is a literal secret; use env: or file: in production"))
            .collect();
        if self.storage.engine == Engine::Jetstream && self.storage.replicas < 3 {
            out.push(format!(
                "storage.replicas = {}: callbacks are durable but not highly available; a NATS \
                 server's loss stops intake (use 3)",
                self.storage.replicas
            ));
        }
        if self.storage.nats_url.is_some() {
            out.push("storage.nats_url is read as one more entry of storage.nats_urls".into());
        }
        let tokens = self.projects.iter().filter(|p| p.merchant_token.is_some());
        match (&self.merchant, tokens.count()) {
            (None, n) if n > 0 => out.push(
                "projects set merchant_token but there is no [merchant] table: no listener uses them"
                    .into(),
            ),
            (Some(_), 0) => out.push(
                "[merchant] is set but no project has a merchant_token: every request gets 401"
                    .into(),
            ),
            _ => {}
        }
        out
    }

    /// Literal secrets, named for a warning at start.
    pub fn literal_secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self
            .server
            .admin_token
            .as_ref()
            .is_some_and(SecretRef::is_literal)
        {
            out.push("server.admin_token".to_string());
        }
        for p in &self.projects {
            if p.secrets.iter().any(SecretRef::is_literal) {
                out.push(format!("projects (id {}).secrets", p.id));
            }
            if p.merchant_token.as_ref().is_some_and(SecretRef::is_literal) {
                out.push(format!("projects (id {}).merchant_token", p.id));
            }
            for e in &p.endpoints {
                if e.secret.is_literal() {
                    out.push(format!(
                        "projects (id {}).endpoints ({}).secret",
                        p.id, e.name
                    ));
                }
            }
        }
        out
    }
}

/// An http(s) URL with a host.
pub fn check_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_durations() {
        let c = Config::from_toml(
            "t.toml",
            r#"
            [storage]
            dedup_window = "3d"
            [[projects]]
            id = 7
            secrets = ["dev-secret"]
            terminal_budget = "1500ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.storage.dedup_window, Duration::from_secs(3 * 86400));
        assert_eq!(c.projects[0].terminal_budget, Duration::from_millis(1500));
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.literal_secrets(),
            vec!["projects (id 7).secrets".to_string()]
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Config::from_toml(
            "bad.toml",
            r#"
            [server]
            tls_cert = "/nonexistent/cbgate.pem"
            [storage]
            cache_bytes = 4096
            [delivery]
            breaker_failure_rate = 1.5
            breaker_window = "100ms"
            breaker_min_attempts = 0
            [[projects]]
            id = 1
            secrets = ["env:CBGATE_TEST_SURELY_UNSET"]
            terminal_url = "ftp://x"
            terminal_budget = "1h"
            [[projects]]
            id = 1
            secrets = []
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "CBGATE_TEST_SURELY_UNSET is not set",
            "terminal_url",
            "terminal_budget",
            "duplicate project id 1",
            "at least one secret",
            "storage.cache_bytes: 4096 is less than 1 MiB",
            "server.tls_cert and server.tls_key: set both or neither",
            "delivery.breaker_failure_rate: 1.5 is not in (0, 1]",
            "delivery.breaker_window: must be at least 1s",
            "delivery.breaker_failures and delivery.breaker_min_attempts: must be at least 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(text.lines().all(|l| l.starts_with("bad.toml: ")));
    }

    #[test]
    fn merchant_settings_and_tokens_are_checked() {
        let ok = Config::from_toml(
            "m.toml",
            r#"
            [merchant]
            gate_url = "https://api.platform.test/"
            gate_paths = ["/v2/payment/mobile/status"]
            [[projects]]
            id = 1
            secrets = ["s"]
            merchant_token = "0123456789abcdef0123"
            "#,
        )
        .unwrap();
        let m = ok.merchant.as_ref().unwrap();
        assert_eq!(m.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(m.timeout, Duration::from_secs(30));
        assert_eq!(
            ok.warnings(),
            [
                "projects (id 1).secrets is a literal secret; use env: or file: in production",
                "projects (id 1).merchant_token is a literal secret; use env: or file: in production"
            ]
        );
        assert!(Config::from_toml("n.toml", "").unwrap().merchant.is_none());
        let text = Config::from_toml(
            "bad.toml",
            r#"
            [merchant]
            listen = "127.0.0.1:8080"
            gate_url = "ftp://x"
            payment_page_url = "https://pp.test/payment?x=1"
            gate_paths = ["/v1/x", "/v2/../admin", "/v2/a//b", "/v2/ok"]
            connect_timeout = "5s"
            timeout = "1s"
            [[projects]]
            id = 1
            secrets = ["s"]
            merchant_token = "short"
            [[projects]]
            id = 2
            secrets = ["s"]
            merchant_token = "0123456789abcdef"
            [[projects]]
            id = 3
            secrets = ["s"]
            merchant_token = "0123456789abcdef"
            "#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "merchant.listen: 127.0.0.1:8080 is also server.listen",
            "merchant.gate_url: `ftp://x` must start with http:// or https://",
            "merchant.payment_page_url: `https://pp.test/payment?x=1` must have no query",
            "merchant.gate_paths: `/v1/x` must start with /v2/",
            "merchant.gate_paths: `/v2/../admin` must be /v2/ followed by segments",
            "merchant.gate_paths: `/v2/a//b` must be /v2/",
            "merchant.connect_timeout: 5s is longer than merchant.timeout",
            "projects[0] (id 1).merchant_token: shorter than 16 characters",
            "projects[2] (id 3).merchant_token: the same token as project 2",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(!text.contains("/v2/ok"), "{text}");
        let orphan = Config::from_toml(
            "o.toml",
            "[[projects]]\nid = 1\nsecrets = [\"s\"]\nmerchant_token = \"0123456789abcdef\"\n",
        )
        .unwrap();
        assert!(
            orphan
                .warnings()
                .iter()
                .any(|w| w.contains("no [merchant] table")),
            "{:?}",
            orphan.warnings()
        );
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let toml = format!(
            "[delivery]\nca_file = \"{}\"\n[terminal]\nca_file = \"{}\"\n",
            empty.display(),
            missing.display()
        );
        let text = Config::from_toml("t.toml", &toml).unwrap_err().to_string();
        assert!(
            text.contains("delivery.ca_file:") && text.contains("holds no PEM certificate"),
            "{text}"
        );
        assert!(
            text.contains("terminal.ca_file: cannot read certificates from"),
            "{text}"
        );
    }

    #[test]
    fn a_secret_file_must_be_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("secret");
        std::fs::write(&good, "s3cret\n").unwrap();
        assert_eq!(SecretRef::File(good).resolve().unwrap(), "s3cret");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE as usize + 1]).unwrap();
        let err = SecretRef::File(big).resolve().unwrap_err();
        assert!(err.contains("larger than 65536 bytes"), "{err}");
        let err = SecretRef::File("/dev/zero".into()).resolve().unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        let err = SecretRef::File(dir.path().into()).resolve().unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let err = Config::from_toml(
            "x.toml",
            "[server]\nlisten = \"127.0.0.1:1\"\nlissten = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.toml (line 3)"), "{err}");
        assert!(err.contains("lissten"), "{err}");
    }
}
