//! The operator listener (127.0.0.1 by default): `/healthz`, `/readyz`, `/metrics`
//! open; everything under `/admin/` behind `Authorization: Bearer <token>`,
//! compared in constant time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use ring::digest;

use crate::http::{Body, json, text};
use crate::journal::Journal;
use crate::metrics as m;

pub struct Admin {
    pub token: Option<String>,
    pub metrics: PrometheusHandle,
    /// False while starting, recovering or draining.
    pub ready: Arc<AtomicBool>,
    /// Set once the journal is recovered (the admin listener is up before that).
    pub journal: OnceLock<Journal>,
}

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/metrics" => {
                if let Some(journal) = self.journal.get() {
                    metrics::gauge!(m::DEDUP_KEYS).set(journal.dedup_len() as f64);
                    metrics::gauge!(m::JOURNAL_QUEUE_DEPTH).set(journal.queued() as f64);
                }
                let mut r = text(StatusCode::OK, self.metrics.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            path if path.starts_with("/admin/") => {
                if !self.authorized(&req) {
                    return json(
                        StatusCode::UNAUTHORIZED,
                        r#"{"error":"missing or wrong bearer token"}"#,
                    );
                }
                json(StatusCode::NOT_FOUND, r#"{"error":"no such admin route"}"#)
            }
            _ => json(StatusCode::NOT_FOUND, r#"{"error":"no such route"}"#),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }
}

/// Compares digests of both sides, so neither length nor content leaks by timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let da = digest::digest(&digest::SHA256, a);
    let db = digest::digest(&digest::SHA256, b);
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}
