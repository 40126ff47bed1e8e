//! The merchant listener (`[merchant] listen`, internal): merchant backends get Payment
//! Page invocations signed (`POST /payment-page/sign`) and Gate API requests signed and
//! forwarded (`POST /gate/v2/...`), so the project secret lives in cbgate alone.
//!
//! Life of a request: route → bearer token present → body under the listener's limits
//! → one parse → the project named in the body → its `merchant_token` compared in
//! constant time → checks → signature (the project's first secret) → for Gate, the
//! platform's answer. Each request is counted and logged once (account and phone
//! numbers masked, the body never), and each signed one joins its payment's timeline.

pub mod gate;
pub mod members;
pub mod payment_page;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::{Config, MerchantSettings};
use crate::http::{self, Body, BodyError, Limits};
use crate::metrics as m;
use crate::projects::{Project, Projects};
use crate::store::{SignedRequest, Store};
use crate::verifier::with_canonicalizer;
use gate::Gate;

/// What the merchant listener needs; shared by its connections.
pub struct Merchant {
    projects: Arc<ArcSwap<Projects>>,
    gate: Option<Gate>,
    payment_page_url: Option<String>,
    limits: Limits,
    max_depth: usize,
    timeline: Timeline,
    requests: m::Handles<(Arc<str>, Option<u64>, u16), metrics::Counter>,
    durations: m::Handles<Arc<str>, metrics::Histogram>,
}

/// The route a request asked for.
#[derive(Clone)]
enum Route {
    PaymentPage,
    /// A Gate API path cbgate forwards (`/v2/...`).
    Gate(Arc<str>),
}

impl Route {
    /// The `path` label and timeline path: `payment-page` or the Gate API path.
    fn path(&self) -> Arc<str> {
        match self {
            Route::PaymentPage => Arc::from(PAYMENT_PAGE),
            Route::Gate(path) => path.clone(),
        }
    }
}

const PAYMENT_PAGE: &str = "payment-page";

/// Why a token was not accepted; the label of `cbgate_merchant_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer ...` header.
    Missing,
    /// The body names a project cbgate does not know.
    UnknownProject,
    /// The project has no `merchant_token`: nobody may sign for it here.
    NotEnabled,
    /// Not the project's token (perhaps another project's).
    Wrong,
}

impl AuthFailure {
    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::UnknownProject => "unknown_project",
            AuthFailure::NotEnabled => "not_enabled",
            AuthFailure::Wrong => "wrong",
        }
    }
}

/// A request's parameters cbgate will not sign; the sender's fault, answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Invalid {
    pub reason: String,
    /// Required parameters that are missing or empty, named in the answer.
    pub missing: Vec<&'static str>,
}

impl Invalid {
    pub fn new(reason: impl Into<String>) -> Self {
        Invalid {
            reason: reason.into(),
            missing: Vec::new(),
        }
    }
}

/// cbgate's own answer to a merchant request: the one place these become HTTP.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no such route: POST /payment-page/sign, or POST /gate plus a Gate API path")]
    NotFound,
    #[error("{0} is not configured in [merchant]")]
    NotConfigured(&'static str),
    #[error(
        "cbgate does not forward the Gate API path {0}: the Mobile Commerce paths and \
         [merchant] gate_paths only"
    )]
    UnknownGatePath(String),
    #[error("use POST")]
    MethodNotAllowed,
    #[error("missing or wrong bearer token for this project")]
    Unauthorized(AuthFailure),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("project {0} has no secret to sign with")]
    NoSecret(u64),
    #[error(transparent)]
    Gate(#[from] gate::Failure),
}

impl Refusal {
    /// The log and metric outcome.
    fn as_str(&self) -> &'static str {
        match self {
            Refusal::NotFound | Refusal::NotConfigured(_) | Refusal::UnknownGatePath(_) => {
                "not_found"
            }
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Body(_) | Refusal::Invalid(_) => "invalid",
            Refusal::NoSecret(_) => "no_secret",
            Refusal::Gate(f) => f.as_str(),
        }
    }

    fn into_response(self) -> Response<Body> {
        let status = match &self {
            Refusal::NotFound | Refusal::NotConfigured(_) | Refusal::UnknownGatePath(_) => {
                StatusCode::NOT_FOUND
            }
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::Body(BodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Body(BodyError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Body(_) | Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
            Refusal::NoSecret(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Gate(f) => f.status(),
        };
        let body = match &self {
            Refusal::Invalid(Invalid { reason, missing }) if !missing.is_empty() => {
                json!({"status": "rejected", "reason": reason, "missing": missing})
            }
            Refusal::Gate(f) => {
                json!({"status": "error", "reason": self.to_string(), "sent": f.sent()})
            }
            _ => json!({"status": "rejected", "reason": self.to_string()}),
        };
        let mut response = http::json(status, body.to_string());
        let headers = response.headers_mut();
        // Gate API answers pass through unchanged; this tells cbgate's own apart.
        headers.insert(ORIGIN_HEADER, HeaderValue::from_static("cbgate"));
        match self {
            Refusal::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            Refusal::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"cbgate merchant\""),
                );
            }
            _ => {}
        }
        response
    }
}

/// Set on every answer cbgate writes itself, never on the platform's.
pub const ORIGIN_HEADER: &str = "cbgate-answer";

/// What one request was about, as far as it got: for its log line and metrics.
#[derive(Default)]
struct Note {
    project: Option<u64>,
    payment_id: Option<String>,
    /// Masked account or phone number.
    account: Option<String>,
    /// The platform's status (Gate API), for the timeline.
    platform_status: Option<u16>,
    /// A signature was made: the request joins its payment's timeline.
    signed: bool,
}

impl Merchant {
    pub fn new(
        settings: &MerchantSettings,
        config: &Config,
        projects: Arc<ArcSwap<Projects>>,
        store: Arc<dyn Store>,
    ) -> Result<Self, String> {
        let gate = settings
            .gate_url
            .as_deref()
            .map(|url| Gate::new(url, settings))
            .transpose()?;
        Ok(Merchant {
            projects,
            gate,
            payment_page_url: settings.payment_page_url.clone(),
            limits: Limits {
                max_connections: settings.max_connections,
                ..Limits::from_config(&config.server)
            },
            max_depth: config.server.max_json_depth,
            timeline: Timeline::new(store),
            requests: Default::default(),
            durations: Default::default(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let at_ms = crate::clock::now_ms();
        let route = self.route(req.uri().path());
        let path = route
            .as_ref()
            .map_or_else(|_| Arc::from("other"), Route::path);
        let mut note = Note::default();
        let result = match route {
            Ok(route) => self.serve(&route, req, &mut note).await,
            Err(refusal) => Err(refusal),
        };
        let (response, outcome, reason) = match result {
            Ok(response) => (response, "ok", None),
            Err(refusal) => {
                if let Refusal::Unauthorized(why) = &refusal {
                    metrics::counter!(m::MERCHANT_AUTH_FAILURES_TOTAL, "reason" => why.as_str())
                        .increment(1);
                }
                let reason = match &refusal {
                    Refusal::Unauthorized(why) => why.as_str().to_string(),
                    other => other.to_string(),
                };
                let outcome = refusal.as_str();
                (refusal.into_response(), outcome, Some(reason))
            }
        };
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        if note.signed
            && let (Some(project), Some(payment_id)) = (note.project, note.payment_id.clone())
        {
            self.timeline.record(SignedRequest {
                at_ms,
                project,
                payment_id,
                path: path.to_string(),
                status: note.platform_status.unwrap_or(status),
                duration_ms: elapsed.as_millis() as u64,
            });
        }
        // Only configured projects label the metrics: ids from bodies are anyone's to invent.
        let known = note
            .project
            .filter(|p| self.projects.load().get(*p).is_some());
        self.count(&path, known, status, elapsed);
        // One line per request; refusals for the token and failed exchanges with the
        // platform are warnings. Never the body, the token or the signature.
        let latency_us = elapsed.as_micros() as u64;
        let (project, payment_id) = (note.project, note.payment_id.as_deref());
        let account = note.account.as_deref();
        if outcome == "unauthorized" {
            tracing::warn!(target: "cbgate::merchant", path = &*path, project, payment_id, account, status, outcome, reason, latency_us, "merchant request refused");
        } else if outcome.starts_with("gate_") {
            tracing::warn!(target: "cbgate::merchant", path = &*path, project, payment_id, account, status, outcome, reason, latency_us, "Gate API exchange failed");
        } else {
            tracing::info!(target: "cbgate::merchant", path = &*path, project, payment_id, account, status, outcome, reason, latency_us);
        }
        response
    }

    /// The route of `path`, or why there is none.
    fn route(&self, path: &str) -> Result<Route, Refusal> {
        if path == "/payment-page/sign" {
            return Ok(Route::PaymentPage);
        }
        let Some(gate_path) = path.strip_prefix("/gate") else {
            return Err(Refusal::NotFound);
        };
        match &self.gate {
            None if gate_path.starts_with("/v2/") => Err(Refusal::NotConfigured("gate_url")),
            None => Err(Refusal::NotFound),
            Some(gate) => gate
                .path(gate_path)
                .map(Route::Gate)
                .ok_or_else(|| Refusal::UnknownGatePath(gate_path.chars().take(200).collect())),
        }
    }

    async fn serve(
        &self,
        route: &Route,
        req: Request<Incoming>,
        note: &mut Note,
    ) -> Result<Response<Body>, Refusal> {
        if req.method() != Method::POST {
            return Err(Refusal::MethodNotAllowed);
        }
        // Looked at before the body is read: without a token nothing else is.
        let token = bearer(&req)
            .ok_or(Refusal::Unauthorized(AuthFailure::Missing))?
            .to_vec();
        let body = http::read_body(req, &self.limits).await?;
        let projects = self.projects.load_full();
        match route {
            Route::PaymentPage => {
                let base = self.payment_page_url.as_deref();
                let answer = with_canonicalizer(self.max_depth, |canon| {
                    let params = payment_page::Params::parse(&body)?;
                    note.project = params.project_id().ok();
                    note.payment_id = params.get("payment_id").map(str::to_string);
                    note.account = params.get("customer_phone").map(mask);
                    let project = authorize(&projects, params.project_id()?, &token)?;
                    params.check()?;
                    let signature = params
                        .sign(canon, &project.secrets)?
                        .ok_or(Refusal::NoSecret(project.id))?;
                    note.signed = true;
                    Ok::<_, Refusal>(params.answer(&signature, base))
                })?;
                Ok(http::json(StatusCode::OK, answer))
            }
            Route::Gate(path) => {
                let gate = self.gate.as_ref().ok_or(Refusal::NotFound)?;
                let signed = with_canonicalizer(self.max_depth, |canon| {
                    let request = gate::Fields::read(canon, &body)?;
                    note.project = Some(request.project);
                    note.payment_id = request.payment_id.clone();
                    note.account = request.account.as_deref().map(mask);
                    let project = authorize(&projects, request.project, &token)?;
                    let signature = project
                        .secrets
                        .sign(request.canonical(canon))
                        .ok_or(Refusal::NoSecret(project.id))?;
                    Ok::<_, Refusal>(gate::with_signature(&body, &signature)?)
                })?;
                note.signed = true;
                let answer = gate.forward(path, Bytes::from(signed)).await;
                note.platform_status = Some(match &answer {
                    Ok(a) => a.status.as_u16(),
                    // The timeline says "no answer" rather than cbgate's own 502/504.
                    Err(_) => 0,
                });
                if let Err(failure) = &answer {
                    metrics::counter!(m::MERCHANT_GATE_ERRORS_TOTAL, "path" => path.to_string(), "error" => failure.as_str())
                        .increment(1);
                }
                Ok(answer?.into_response())
            }
        }
    }

    fn count(&self, path: &Arc<str>, project: Option<u64>, status: u16, elapsed: Duration) {
        self.requests
            .get((path.clone(), project, status), || {
                let route = match &**path {
                    PAYMENT_PAGE => "payment_page",
                    "other" => "other",
                    _ => "gate",
                };
                metrics::counter!(
                    m::MERCHANT_REQUESTS_TOTAL,
                    "route" => route,
                    "path" => path.to_string(),
                    "project" => project.map_or_else(|| "unknown".into(), |p| p.to_string()),
                    "status" => status.to_string()
                )
            })
            .increment(1);
        self.durations
            .get(
                path.clone(),
                || metrics::histogram!(m::MERCHANT_REQUEST_SECONDS, "path" => path.to_string()),
            )
            .record(elapsed.as_secs_f64());
    }

    /// Waits (at most `limit`) until every signed request recorded so far reached the
    /// store: called at shutdown, before the store closes.
    pub async fn drain(&self, limit: Duration) {
        self.timeline.drain(limit).await;
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case, RFC 7235).
fn bearer(req: &Request<Incoming>) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

/// The project `project_id` names, if `token` is its merchant token. Every refusal
/// is the same 401 to the caller; the reason is counted and logged.
fn authorize(projects: &Projects, project_id: u64, token: &[u8]) -> Result<Arc<Project>, Refusal> {
    let project = projects
        .get(project_id)
        .ok_or(Refusal::Unauthorized(AuthFailure::UnknownProject))?;
    let expected = project
        .merchant_token
        .as_ref()
        .ok_or(Refusal::Unauthorized(AuthFailure::NotEnabled))?;
    if !expected.matches(token) {
        return Err(Refusal::Unauthorized(AuthFailure::Wrong));
    }
    Ok(project.clone())
}

/// An account or phone number as logs may show it: the last four characters, the rest
/// starred (four or fewer: all starred).
pub fn mask(value: &str) -> String {
    let n = value.chars().count();
    let keep = if n > 4 { 4 } else { 0 };
    let mut out = "*".repeat(n - keep);
    out.extend(value.chars().skip(n - keep));
    out
}

/// Signed requests on their way to the store, in the background: the merchant's
/// answer never waits for them, and a store that fails or falls behind costs the
/// timeline an entry (counted, logged), never the request.
struct Timeline {
    store: Arc<dyn Store>,
    slots: Arc<Semaphore>,
}

/// Recordings in flight at most; past it a signed request is left out of its timeline.
const TIMELINE_IN_FLIGHT: usize = 4096;

impl Timeline {
    fn new(store: Arc<dyn Store>) -> Self {
        Timeline {
            store,
            slots: Arc::new(Semaphore::new(TIMELINE_IN_FLIGHT)),
        }
    }

    fn record(&self, request: SignedRequest) {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            metrics::counter!(m::MERCHANT_TIMELINE_FAILURES_TOTAL, "reason" => "full").increment(1);
            tracing::warn!(
                project = request.project,
                payment_id = %request.payment_id,
                "signed request left out of its timeline: {TIMELINE_IN_FLIGHT} recordings pending"
            );
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.record_signed(request.clone()).await {
                metrics::counter!(m::MERCHANT_TIMELINE_FAILURES_TOTAL, "reason" => "store")
                    .increment(1);
                tracing::warn!(
                    project = request.project,
                    payment_id = %request.payment_id,
                    %error,
                    "signed request left out of its timeline"
                );
            }
            drop(slot);
        });
    }

    async fn drain(&self, limit: Duration) {
        let all = self.slots.acquire_many(TIMELINE_IN_FLIGHT as u32);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(
                ?limit,
                "signed requests still on their way to the store at shutdown"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_keep_the_last_four() {
        assert_eq!(mask("71234567890"), "*******7890");
        assert_eq!(mask("+7 701 123"), "****** 123");
        assert_eq!(mask("1234"), "****");
        assert_eq!(mask(""), "");
        assert_eq!(mask("Жанна12345"), "******2345");
    }
}
