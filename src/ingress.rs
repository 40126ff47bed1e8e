//! The platform-facing listener: `POST /callbacks` and `POST /terminal`.
//! A callback goes size limit → one parse → project → signature → dedup → durable
//! store → 200, its body one `Bytes` from the socket to the disk.

pub mod response;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use crate::callback::Rejection;
use crate::http::{self, Body, Limits};
use crate::metrics as m;
use crate::projects::Projects;
use crate::store::{Appended, Store};
use crate::terminal::Terminal;
use crate::verifier::Verifier;
use response::Answer;

/// Everything a platform request needs.
pub struct Ingress {
    pub projects: Arc<ArcSwap<Projects>>,
    pub verifier: Verifier,
    pub store: Arc<dyn Store>,
    pub terminal: Terminal,
    pub limits: Limits,
    /// Write one access line per request.
    pub access_log: bool,
    pub handles: IngressHandles,
}

/// This thread's metric handles for the per-request series.
pub struct IngressHandles {
    requests: m::Handles<(&'static str, &'static str), metrics::Counter>,
    durations: m::Handles<&'static str, metrics::Histogram>,
    unrouted: m::Handles<u64, metrics::Counter>,
    dedup_hits: metrics::Counter,
}

impl IngressHandles {
    /// Made after the recorder is installed: the unlabelled series registers here.
    pub fn registered() -> Self {
        IngressHandles {
            requests: Default::default(),
            durations: Default::default(),
            unrouted: Default::default(),
            dedup_hits: metrics::counter!(m::DEDUP_HITS_TOTAL),
        }
    }
}

impl Ingress {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let route = req.uri().path();
        if route == "/terminal" {
            if req.method() != Method::POST {
                return Answer::MethodNotAllowed.into_response();
            }
            let response = match http::read_body(req, &self.limits).await {
                Ok(body) => {
                    self.terminal
                        .handle(self.projects.load_full(), body, self.verifier.max_depth())
                        .await
                }
                Err(e) => Answer::Body(e).into_response(),
            };
            let status = response.status().as_u16();
            self.record("terminal", "answered", status, None, started);
            return response;
        }
        let (answer, project) = match (req.method(), route) {
            (&Method::POST, "/callbacks") => self.callback(req).await,
            (_, "/callbacks") => (Answer::MethodNotAllowed, None),
            _ => (Answer::NotFound, None),
        };
        let outcome = answer.as_str();
        if let Answer::Rejected(Rejection::Signature { project, .. }) = &answer {
            metrics::counter!(m::SIGNATURE_FAILURES_TOTAL, "project" => project.to_string())
                .increment(1);
        }
        let response = answer.into_response();
        self.record(
            "callbacks",
            outcome,
            response.status().as_u16(),
            project,
            started,
        );
        response
    }

    /// The callback pipeline; returns the answer and the project when known.
    async fn callback(&self, req: Request<Incoming>) -> (Answer, Option<u64>) {
        let body = match http::read_body(req, &self.limits).await {
            Ok(body) => body,
            Err(e) => return (Answer::Body(e), None),
        };
        let callback = match self.verifier.verify(body, self.projects.load_full()).await {
            Err(_) => {
                return (
                    Answer::Unavailable("signature verifier queue is full"),
                    None,
                );
            }
            Ok(Err(rejection)) => {
                let project = match &rejection {
                    Rejection::Signature { project, .. } => Some(*project),
                    _ => None,
                };
                return (Answer::Rejected(rejection), project);
            }
            Ok(Ok(cb)) => cb,
        };
        let project = Some(callback.project);
        (self.store(callback).await, project)
    }

    async fn store(&self, callback: crate::callback::Callback) -> Answer {
        if callback.matched != crate::signature::Order::Php {
            metrics::counter!(m::SIGNATURE_FALLBACK_TOTAL, "order" => callback.matched.as_str())
                .increment(1);
        }
        if self.store.known_duplicate(callback.dedup) {
            self.handles.dedup_hits.increment(1);
            return Answer::KnownDuplicate;
        }
        if callback.endpoints.is_empty() {
            let project = callback.project;
            self.handles
                .unrouted
                .get(
                    project,
                    || metrics::counter!(m::UNROUTED_TOTAL, "project" => project.to_string()),
                )
                .increment(1);
        }
        match self.store.append(callback).await {
            Ok(outcome) => {
                if outcome == Appended::Duplicate {
                    self.handles.dedup_hits.increment(1);
                }
                Answer::Stored(outcome)
            }
            Err(e) => {
                metrics::counter!(m::BACKPRESSURE_TOTAL).increment(1);
                Answer::from_store(e)
            }
        }
    }
}

impl Ingress {
    fn record(
        &self,
        route: &'static str,
        outcome: &'static str,
        status: u16,
        project: Option<u64>,
        started: Instant,
    ) {
        let elapsed = started.elapsed();
        let h = &self.handles;
        h.requests
            .get(
                (route, outcome),
                || metrics::counter!(m::REQUESTS_TOTAL, "route" => route, "outcome" => outcome),
            )
            .increment(1);
        h.durations
            .get(
                route,
                || metrics::histogram!(m::REQUEST_SECONDS, "route" => route),
            )
            .record(elapsed.as_secs_f64());
        if self.access_log {
            tracing::info!(
                target: "cbgate::access",
                route,
                project,
                outcome,
                status,
                latency_us = elapsed.as_micros() as u64
            );
        }
    }
}
