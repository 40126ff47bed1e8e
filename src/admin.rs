//! The operator listener (127.0.0.1 by default): `/healthz`, `/readyz`, `/metrics`
//! open; everything under `/admin/` behind `Authorization: Bearer <token>`,
//! compared in constant time: endpoints' delivery state, pause/resume, dead letters
//! (paged) and their replay, one event with its attempts, quarantined records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use ring::digest;

use serde_json::{Value, json as js};

use crate::delivery::{self, Delivery};
use crate::http::{Body, json, text};
use crate::metrics as m;
use crate::store::{Cursor, DeliveryState, EndpointKey, EventView, Store, StoreError};

pub struct Admin {
    pub token: Option<String>,
    pub metrics: PrometheusHandle,
    /// False while starting, recovering or draining.
    pub ready: Arc<AtomicBool>,
    /// Set once the store is open (the admin listener is up before that).
    pub store: OnceLock<Arc<dyn Store>>,
    /// Set with the store.
    pub delivery: OnceLock<Delivery>,
}

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let health = self.store.get().map(|s| s.health().ready);
                match (self.ready.load(Ordering::Acquire), health) {
                    (true, Some(Ok(()))) => text(StatusCode::OK, "ready\n"),
                    (_, Some(Err(reason))) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {reason}\n"),
                    ),
                    _ => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                }
            }
            "/metrics" => {
                if let Some(store) = self.store.get() {
                    let health = store.health();
                    metrics::gauge!(m::DEDUP_KEYS).set(health.dedup_keys as f64);
                    metrics::gauge!(m::JOURNAL_QUEUE_DEPTH).set(health.queued as f64);
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
                let (Some(store), Some(delivery)) = (self.store.get(), self.delivery.get()) else {
                    return json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"error":"the store is still opening"}"#,
                    );
                };
                let query = Query(req.uri().query().unwrap_or_default().to_string());
                let path = path.trim_start_matches("/admin/").to_string();
                match deliveries(req.method(), &path, &query, store.as_ref(), delivery).await {
                    Ok((status, body)) => json(status, body.to_string()),
                    Err(e) => {
                        let status = match e {
                            StoreError::Busy | StoreError::Unavailable(_) | StoreError::Closed => {
                                StatusCode::SERVICE_UNAVAILABLE
                            }
                            StoreError::Malformed(_) | StoreError::Refused(_) => {
                                StatusCode::INTERNAL_SERVER_ERROR
                            }
                        };
                        json(status, js!({ "error": e.to_string() }).to_string())
                    }
                }
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

/// The delivery routes under `/admin/`, `path` without that prefix:
/// - `GET endpoints`: every endpoint's delivery state.
/// - `POST endpoints/{project}/{name}/pause` and `.../resume`.
/// - `POST endpoints/{project}/{name}/replay[/{seq}]`: all dead letters, or one.
/// - `GET dead-letters?endpoint=1234/ledger&after=1234/ledger:17&limit=100`.
/// - `GET events/{seq}`: the event, and per endpoint pending/dead/delivered with
///   its attempts.
/// - `GET payments/{project}/{payment_id}`: one payment's timeline: the requests
///   signed for it (merchant listener) and its callbacks with their deliveries.
/// - `GET quarantine?after=17&limit=100`: records the store could not read, moved out
///   of delivery, with why and their bytes as found (base64).
async fn deliveries(
    method: &Method,
    path: &str,
    query: &Query,
    store: &dyn Store,
    delivery: &Delivery,
) -> Result<(StatusCode, Value), StoreError> {
    let parts: Vec<&str> = path.split('/').collect();
    let not_found = |what: &str| Ok((StatusCode::NOT_FOUND, js!({ "error": what })));
    let endpoint = |project: &str, name: &str| {
        EndpointKey::parse(&format!("{project}/{name}")).filter(|k| delivery.knows(k))
    };
    match (method, parts.as_slice()) {
        (&Method::GET, ["endpoints"]) => Ok((StatusCode::OK, js!(delivery.status().await?))),
        (&Method::POST, ["endpoints", project, name, action @ ("pause" | "resume")]) => {
            let Some(key) = endpoint(project, name) else {
                return not_found("no such endpoint");
            };
            let paused = *action == "pause";
            delivery.pause(&key, paused).await?;
            Ok((StatusCode::OK, js!({ "endpoint": key, "paused": paused })))
        }
        (&Method::POST, ["endpoints", project, name, "replay", rest @ ..]) => {
            let seq = match rest {
                [] => None,
                [seq] => match seq.parse() {
                    Ok(s) => Some(s),
                    Err(_) => return not_found("no such event"),
                },
                _ => return not_found("no such admin route"),
            };
            let Some(key) = endpoint(project, name) else {
                return not_found("no such endpoint");
            };
            let replayed = delivery.replay(&key, seq).await?;
            if seq.is_some() && replayed == 0 {
                return not_found("no such dead letter");
            }
            Ok((
                StatusCode::OK,
                js!({ "endpoint": key, "replayed": replayed }),
            ))
        }
        (&Method::GET, ["dead-letters"]) => {
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize)
                .clamp(1, 1000);
            let after = query.get("after").map(Cursor);
            let endpoint = match query.get("endpoint") {
                None => None,
                Some(text) => match EndpointKey::parse(&text) {
                    Some(key) => Some(key),
                    None => return Ok((StatusCode::OK, js!({ "items": [], "next": null }))),
                },
            };
            let page = store.dead_letters(endpoint, after, limit).await?;
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|d| {
                    js!({
                        "endpoint": d.endpoint,
                        "seq": d.seq,
                        "state": delivery::State::decode(&d.state, 0),
                    })
                })
                .collect();
            Ok((
                StatusCode::OK,
                js!({ "items": items, "next": page.next.map(|c| c.0) }),
            ))
        }
        (&Method::GET, ["quarantine"]) => {
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize)
                .clamp(1, 1000);
            let after = match query.get("after") {
                None => None,
                Some(text) => match text.parse::<u64>() {
                    Ok(seq) => Some(seq),
                    Err(_) => {
                        return Ok((
                            StatusCode::BAD_REQUEST,
                            js!({ "error": "after: not a seq" }),
                        ));
                    }
                },
            };
            let page = store.quarantined(after, limit).await?;
            let next = page.next.map(|seq| seq.to_string());
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|r| {
                    js!({
                        "seq": r.seq,
                        "at_ms": r.at_ms,
                        "reason": r.reason,
                        "endpoints": r.endpoints,
                        "bytes": r.raw.len(),
                        "raw_base64": STANDARD.encode(&r.raw),
                    })
                })
                .collect();
            Ok((StatusCode::OK, js!({ "items": items, "next": next })))
        }
        (&Method::GET, ["events", seq]) => {
            let Ok(seq) = seq.parse::<u64>() else {
                return not_found("no such event");
            };
            let Some(view) = store.event(seq).await? else {
                return not_found("no such event (unknown, or delivered everywhere)");
            };
            Ok((StatusCode::OK, event_json(&view)))
        }
        (&Method::GET, ["payments", project, payment_id]) => {
            let Ok(project) = project.parse::<u64>() else {
                return not_found("no such project");
            };
            let payment_id = percent_encoding::percent_decode_str(payment_id)
                .decode_utf8_lossy()
                .into_owned();
            let view = store.payment(project, payment_id.clone()).await?;
            Ok((
                StatusCode::OK,
                js!({
                    "project": project,
                    "payment_id": payment_id,
                    "signed": view.signed,
                    "callbacks": view.events.iter().map(event_json).collect::<Vec<_>>(),
                }),
            ))
        }
        _ => not_found("no such admin route"),
    }
}

/// One event as the admin API shows it: the callback, its statuses and where each of
/// its deliveries stands, with the attempt log.
fn event_json(view: &EventView) -> Value {
    let event = &view.event;
    let deliveries: Vec<Value> = view
        .deliveries
        .iter()
        .map(|(ep, state)| match state {
            DeliveryState::Delivered => js!({ "endpoint": ep, "status": "delivered" }),
            DeliveryState::InFlight => js!({ "endpoint": ep, "status": "in_flight" }),
            DeliveryState::Pending(raw) | DeliveryState::Dead(raw) => js!({
                "endpoint": ep,
                "status": if matches!(state, DeliveryState::Dead(_)) { "dead" } else { "pending" },
                "state": delivery::State::decode(raw, event.accepted_ms),
            }),
        })
        .collect();
    let body = serde_json::from_slice::<Value>(&event.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&event.body).into()));
    js!({
        "seq": event.seq,
        "accepted_ms": event.accepted_ms,
        "project": event.project,
        "webhook_id": delivery::webhook_id(event),
        "order_key": event.order_key,
        "operation": {
            "type": body["operation"]["type"],
            "status": body["operation"]["status"],
        },
        "payment_status": body["payment"]["status"],
        "deliveries": deliveries,
        "body": body,
    })
}

/// A URL query string, form-decoded on lookup.
struct Query(String);

impl Query {
    fn get(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.0.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = Query("endpoint=1234%2Fledger&after=1234/ledger:17&limit=5&bad=%zz%".into());
        assert_eq!(q.get("endpoint").as_deref(), Some("1234/ledger"));
        assert_eq!(q.get("after").as_deref(), Some("1234/ledger:17"));
        assert_eq!(q.get("limit").as_deref(), Some("5"));
        assert_eq!(q.get("bad").as_deref(), Some("%zz%"));
        assert_eq!(q.get("missing"), None);
    }
}
