//! Terminal requests (`verify`, `check_deposit`) while a customer waits at a kiosk:
//! checked (signature, fields, KZT, amount limits), forwarded unchanged to the
//! merchant's `terminal_url`, and answered in the method's dialect before the budget.

pub mod answer;
pub mod dialect;
pub mod recent;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::http::{Body, json};
use crate::metrics as m;
use crate::outbound::{self, pool::Failure, pool::Pool};
use crate::projects::{Project, Projects};
use crate::signature::{self, Canonicalizer, Scalar};
use crate::store::SharedAnswers;
use crate::verifier::with_canonicalizer;
use answer::{relay, validate};
use dialect::Dialect;
use recent::Recent;

/// Kassa24 Terminal's limits per payment (seed: 1.00–500,000.00 KZT), minor units.
pub const KASSA24_LIMITS: (i64, i64) = (100, 50_000_000);

/// The answer is sent this long before the budget ends, at most (a tenth of short
/// budgets): the platform must have it before its own deadline.
const MARGIN: Duration = Duration::from_millis(50);

/// A merchant answer larger than this is malformed.
const MAX_ANSWER: usize = 16 * 1024;

/// What a check was about, for answers, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Verify,
    CheckDeposit,
    Unknown,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Verify => "verify",
            Kind::CheckDeposit => "check_deposit",
            Kind::Unknown => "unknown",
        }
    }
}

/// The request after parsing, before the merchant.
struct Checked {
    project: Arc<Project>,
    kind: Kind,
    dialect: Dialect,
    /// When the answer must be on its way: the project's budget from the check, less
    /// a margin for writing it.
    deadline: tokio::time::Instant,
}

/// The gateway's own refusal of a request, written in the method's dialect.
struct Refusal {
    dialect: Dialect,
    project: Option<u64>,
    kind: Kind,
    code: u16,
    reason: String,
}

/// A finished answer: the JSON and the protocol code in it.
#[derive(Clone)]
pub(crate) struct Answer {
    pub(crate) code: u16,
    pub(crate) body: Bytes,
}

impl Answer {
    /// An answer kept earlier (valid when kept): its code read back from it.
    fn kept(body: Bytes) -> Answer {
        #[derive(serde::Deserialize)]
        struct Code {
            code: u16,
        }
        let code = serde_json::from_slice::<Code>(&body).map_or(500, |c| c.code);
        Answer { code, body }
    }

    pub(crate) fn new(value: Value) -> Answer {
        let code = value.get("code").and_then(Value::as_u64).unwrap_or(500) as u16;
        Answer {
            code,
            body: Bytes::from(value.to_string()),
        }
    }
}

/// Terminal request handling for the connections of one HTTP thread.
pub struct Terminal {
    /// This thread's own pool: a merchant connection lives on the runtime that opened
    /// it, so sharing one pool across threads would hop threads on every request.
    pool: Pool,
    connector: outbound::Connector,
    /// check_deposit answers by SHA-256 of the body, shared by every thread, so a
    /// platform retry of the same request gets the same payment id; concurrent
    /// duplicates wait for the first.
    recent: Arc<Recent<Answer>>,
    /// The same answers shared with the other nodes (JetStream engine), so a kiosk's
    /// retry that lands on another node gets the first answer too.
    shared: Option<Arc<dyn SharedAnswers>>,
    fallback: bool,
    /// Latency and answers by (project, type[, code]); `None` is an unknown project.
    durations: m::Handles<(Option<u64>, Kind), metrics::Histogram>,
    answers: m::Handles<(Option<u64>, Kind, u16), metrics::Counter>,
}

impl Terminal {
    pub fn new(
        config: &crate::config::Config,
        shared: Option<Arc<dyn SharedAnswers>>,
    ) -> Result<Self, String> {
        let t = &config.terminal;
        let connector = outbound::connector(t.connect_timeout, t.ca_file.as_deref())
            .map_err(|e| format!("terminal.ca_file: {e}"))?;
        let recent = Recent::new(t.idempotency_window, t.idempotency_max_entries);
        Ok(Self::with_pool(
            connector,
            Arc::new(recent),
            shared,
            config.server.signature_fallback,
        ))
    }

    /// The same remembered answers with a connection pool of its own, for another
    /// HTTP thread.
    pub fn with_own_pool(&self) -> Self {
        Self::with_pool(
            self.connector.clone(),
            self.recent.clone(),
            self.shared.clone(),
            self.fallback,
        )
    }

    fn with_pool(
        connector: outbound::Connector,
        recent: Arc<Recent<Answer>>,
        shared: Option<Arc<dyn SharedAnswers>>,
        fallback: bool,
    ) -> Self {
        Terminal {
            pool: Pool::new(connector.clone()),
            connector,
            recent,
            shared,
            fallback,
            durations: Default::default(),
            answers: Default::default(),
        }
    }

    /// Answers one terminal request: always HTTP 200 with a protocol `code`.
    pub async fn handle(
        &self,
        projects: Arc<Projects>,
        body: Bytes,
        max_depth: usize,
    ) -> Response<Body> {
        let started = Instant::now();
        let checked = with_canonicalizer(max_depth, |canon| {
            check(canon, &body, &projects, self.fallback)
        });
        let (answer, project, kind) = match checked {
            Err(r) => (
                Answer::new(r.dialect.error(r.code, &r.reason)),
                r.project,
                r.kind,
            ),
            Ok(c) => {
                let answer = if c.kind == Kind::CheckDeposit {
                    self.once(&body, &c).await
                } else {
                    self.forward(&body, &c).await
                };
                (answer, Some(c.project.id), c.kind)
            }
        };
        let label = || {
            (
                project.map_or_else(|| "unknown".into(), |p| p.to_string()),
                kind.as_str(),
            )
        };
        self.durations
            .get((project, kind), || {
                let (p, t) = label();
                metrics::histogram!(m::TERMINAL_SECONDS, "project" => p, "type" => t)
            })
            .record(started.elapsed().as_secs_f64());
        let code = answer.code;
        self.answers
            .get((project, kind, code), || {
                let (p, t) = label();
                metrics::counter!(m::TERMINAL_ANSWERS_TOTAL, "project" => p, "type" => t, "code" => code.to_string())
            })
            .increment(1);
        json(StatusCode::OK, answer.body)
    }

    /// check_deposit: one merchant call per identical body within the window.
    async fn once(&self, body: &Bytes, c: &Checked) -> Answer {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, body)
            .as_ref()
            .try_into()
            .expect("32 bytes");
        let cell = self.recent.slot(key, Instant::now());
        let mut fresh = None;
        let cached = cell
            .get_or_init(|| async {
                // Another node may have answered this very request already.
                if let Some(answer) = self.shared_get(key, c).await {
                    return Some(answer);
                }
                let (answer, definitive) = self.ask(body, c).await;
                let answer = match definitive {
                    true => self.shared_put(key, answer, c).await,
                    false => answer,
                };
                let kept = definitive.then(|| answer.clone());
                fresh = Some(answer);
                kept
            })
            .await
            .clone();
        match (fresh, cached) {
            (Some(answer), kept) => {
                // A timeout or a broken answer is not kept: a retry asks again.
                if kept.is_none() {
                    self.recent.forget(&key, &cell);
                }
                answer
            }
            (None, Some(answer)) => answer,
            // The first request's answer was not definitive: ask ourselves.
            (None, None) => self.forward(body, c).await,
        }
    }

    /// The answer another node kept for `key`; `None` when there is none, or the shared
    /// store does not answer in time (then this node alone remembers: counted).
    async fn shared_get(&self, key: [u8; 32], c: &Checked) -> Option<Answer> {
        let shared = self.shared.as_ref()?;
        let wait = (c.project.terminal_budget / 4).min(left(c));
        match tokio::time::timeout(wait, shared.get(key)).await {
            Ok(Ok(found)) => found.map(Answer::kept),
            Ok(Err(e)) => shared_fallback("get", &e.to_string()),
            Err(_) => shared_fallback("get", "timed out"),
        }
    }

    /// Keeps `answer` for every node; if another node kept one first, that one is the
    /// answer, so every retry of the request gets the same payment id.
    async fn shared_put(&self, key: [u8; 32], answer: Answer, c: &Checked) -> Answer {
        let Some(shared) = self.shared.as_ref() else {
            return answer;
        };
        let put = shared.put(key, answer.body.clone());
        // The merchant has answered: sharing it may take what is left of the budget, as
        // a retry on another node that misses it would ask the merchant a second time.
        match tokio::time::timeout(left(c), put).await {
            Ok(Ok(kept)) if kept == answer.body => answer,
            Ok(Ok(kept)) => Answer::kept(kept),
            Ok(Err(e)) => shared_fallback("put", &e.to_string()).unwrap_or(answer),
            Err(_) => shared_fallback("put", "timed out").unwrap_or(answer),
        }
    }

    async fn forward(&self, body: &Bytes, c: &Checked) -> Answer {
        self.ask(body, c).await.0
    }

    /// Asks the merchant within the budget. Returns the answer and whether it is the
    /// merchant's own definitive one (not a timeout, transport error or malformed).
    async fn ask(&self, body: &Bytes, c: &Checked) -> (Answer, bool) {
        let project = &c.project;
        let url = project.terminal_url.as_ref().expect("checked");
        let deadline = c.deadline;
        let label = || (project.id.to_string(), c.kind.as_str());
        let merchant_error = |kind: &'static str, reason: String| {
            let (p, t) = label();
            metrics::counter!(m::TERMINAL_MERCHANT_ERRORS_TOTAL, "project" => p, "type" => t, "error" => kind).increment(1);
            tracing::warn!(project = project.id, r#type = c.kind.as_str(), error = kind, %reason, "terminal merchant error");
            (Answer::new(c.dialect.error(500, &reason)), false)
        };
        let mut tries = 0;
        let (status, bytes) = loop {
            tries += 1;
            let sent = self.pool.post(url, body.clone(), MAX_ANSWER);
            match tokio::time::timeout_at(deadline, sent).await {
                Err(_) => {
                    let (p, t) = label();
                    metrics::counter!(m::TERMINAL_BUDGET_MISSES_TOTAL, "project" => p, "type" => t)
                        .increment(1);
                    return merchant_error("timeout", "merchant timeout".into());
                }
                Ok(Ok(answer)) => break answer,
                Ok(Err(Failure::Body(e))) => {
                    return merchant_error("malformed", format!("merchant answer unreadable: {e}"));
                }
                // verify is idempotent: one more try on any transport error; a
                // check_deposit only when the request never left.
                Ok(Err(f)) if tries == 1 && (c.kind == Kind::Verify || f.never_left()) => continue,
                Ok(Err(Failure::Connect(e) | Failure::Sent(e))) => {
                    return merchant_error("transport", format!("merchant unreachable: {e}"));
                }
            }
        };
        if !status.is_success() {
            return merchant_error(
                "http_status",
                format!("merchant answered HTTP {}", status.as_u16()),
            );
        }
        match validate(c.kind, &bytes).and_then(|valid| relay(c.dialect, valid, bytes)) {
            Ok(answer) => (answer, true),
            Err(reason) => {
                merchant_error("malformed", format!("malformed merchant answer: {reason}"))
            }
        }
    }
}

/// What is left of the request's budget.
fn left(c: &Checked) -> Duration {
    c.deadline
        .saturating_duration_since(tokio::time::Instant::now())
}

/// The shared answers could not be used: this node's own memory stands in, counted.
fn shared_fallback<T>(op: &'static str, error: &str) -> Option<T> {
    metrics::counter!(m::TERMINAL_IDEMPOTENCY_FALLBACK_TOTAL, "op" => op).increment(1);
    tracing::warn!(
        op,
        error,
        "shared check_deposit answers unavailable; this node's own memory answers"
    );
    None
}

/// Parses and checks a terminal request; an `Err` is the gateway's own answer.
///
/// Field types are the protocol's (`type`, `currency`, `payment_method` strings;
/// `customer_id` a string or an integer; `project_id` and `amount` integers), since the
/// body is forwarded unchanged and the merchant must read what was checked; a body with
/// a duplicate key is refused for the same reason (see `callback::Rejection`).
fn check(
    canon: &mut Canonicalizer,
    body: &[u8],
    projects: &Projects,
    fallback: bool,
) -> Result<Checked, Refusal> {
    let refuse = |reason: String| Refusal {
        dialect: Dialect::Kassa24,
        project: None,
        kind: Kind::Unknown,
        code: 500,
        reason,
    };
    canon.load(body).map_err(|e| refuse(e.to_string()))?;
    if let Some(key) = canon.duplicate_key() {
        return Err(refuse(format!(
            "duplicate key {}",
            String::from_utf8_lossy(key)
        )));
    }
    let string = |name: &[u8]| match canon.get_typed(name) {
        Some((Scalar::String, v)) => std::str::from_utf8(v).ok(),
        _ => None,
    };
    let kind = match string(b"type") {
        Some("verify") => Kind::Verify,
        Some("check_deposit") => Kind::CheckDeposit,
        _ => Kind::Unknown,
    };
    let project_id = canon.get_typed(b"project_id");
    let project = match project_id {
        Some((Scalar::Integer, id)) => projects.by_text(id).cloned(),
        _ => None,
    };
    // check_deposit names its method; verify speaks the project's.
    let dialect = Dialect::of(
        string(b"payment_method").or(project.as_ref().and_then(|p| p.method.as_deref())),
    );
    let fail = |code: u16, reason: String| {
        Err(Refusal {
            dialect,
            project: project.as_ref().map(|p| p.id),
            kind,
            code,
            reason,
        })
    };
    if kind == Kind::Unknown {
        return fail(500, "type must be verify or check_deposit".into());
    }
    let Some(project) = project.clone() else {
        return match project_id {
            None if !canon.has_children(b"project_id") => {
                fail(500, "missing field project_id".into())
            }
            Some((Scalar::Integer, id)) => fail(
                500,
                format!("unknown project {}", String::from_utf8_lossy(id)),
            ),
            _ => fail(500, "project_id must be an integer".into()),
        };
    };
    match signature::verify_loaded(canon, &project.secrets, fallback) {
        Ok(_) => {}
        Err(signature::VerifyError::Mismatch) => {
            return fail(400, "Signature is invalid".into());
        }
        Err(e) => return fail(400, e.to_string()),
    }
    // The fields are read again: the signature check needed the parser.
    let required: &[(&str, &[Scalar], &str)] = match kind {
        Kind::Verify => &[("customer_id", ID, "a string or an integer")],
        _ => &[
            ("customer_id", ID, "a string or an integer"),
            ("amount", &[Scalar::Integer], "an integer in minor units"),
            ("currency", &[Scalar::String], "a string"),
            ("payment_method", &[Scalar::String], "a string"),
        ],
    };
    for &(field, types, expected) in required {
        match canon.get_typed(field.as_bytes()) {
            Some((_, [])) => return fail(500, format!("missing field {field}")),
            Some((scalar, _)) if types.contains(&scalar) => {}
            None if !canon.has_children(field.as_bytes()) => {
                return fail(500, format!("missing field {field}"));
            }
            _ => return fail(500, format!("{field} must be {expected}")),
        }
    }
    if kind == Kind::CheckDeposit {
        let text = |name: &[u8]| canon.get(name).map(String::from_utf8_lossy);
        let currency = text(b"currency").unwrap_or_default();
        if currency != "KZT" {
            return fail(500, format!("currency must be KZT, not {currency}"));
        }
        let method = text(b"payment_method").unwrap_or_default();
        if !crate::config::TERMINAL_METHODS.contains(&method.as_ref()) {
            return fail(500, format!("unsupported payment_method {method}"));
        }
        let Some(amount) = text(b"amount").and_then(|a| a.parse::<i64>().ok()) else {
            return fail(500, "amount must be an integer in minor units".into());
        };
        let (min, max) = project.amount_limits(&method);
        if amount < min || amount > max {
            return fail(
                500,
                format!("amount {amount} is outside the limits {min}..={max} (minor units)"),
            );
        }
    }
    if project.terminal_url.is_none() {
        return fail(
            500,
            "terminal requests are not configured for this project".into(),
        );
    }
    let budget = project.terminal_budget;
    Ok(Checked {
        deadline: tokio::time::Instant::now() + budget - MARGIN.min(budget / 10),
        project,
        kind,
        dialect,
    })
}

/// `check` for the fuzz target: refusals and acceptances alike are fine, panics not.
#[doc(hidden)]
pub fn fuzz_check(canon: &mut Canonicalizer, body: &[u8], projects: &Projects) {
    let _ = check(canon, body, projects, true);
}

/// Account ids: kiosks send what the customer typed, as a string or as digits.
const ID: &[Scalar] = &[Scalar::String, Scalar::Integer];

/// `answer::validate` and `answer::relay` for the fuzz target.
#[doc(hidden)]
pub use answer::fuzz_answer;
