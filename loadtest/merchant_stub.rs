//! A fast merchant backend for load tests. `POST /terminal` answers verify with
//! `{"code":0,"currency":"KZT"}` and check_deposit with a fresh payment id;
//! `POST /callbacks` counts deliveries (204) and the lag from the `sent_ms` the load
//! generator put in the body; `POST /v2/...` answers as the Gate API acknowledges a
//! request (for the merchant listener's proxy rows); `GET /stats` prints counts and
//! lag percentiles.
//! Usage: merchant_stub [ADDR]   (default 127.0.0.1:19000)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Default)]
struct Stats {
    ids: AtomicU64,
    deliveries: AtomicU64,
    lags_ms: Mutex<Vec<u64>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn handle(
    stats: Arc<Stats>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await?.to_bytes();
    let reply = |status: u16, text: String| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text)))
            .unwrap())
    };
    match path.as_str() {
        "/terminal" => {
            if memchr(&body, b"check_deposit") {
                let id = stats.ids.fetch_add(1, Ordering::Relaxed);
                reply(
                    200,
                    format!(r#"{{"code":0,"payment_id":"stub-{id}","description":"ok"}}"#),
                )
            } else {
                reply(
                    200,
                    r#"{"code":0,"currency":"KZT","additional_customer_id":"stub"}"#.into(),
                )
            }
        }
        "/callbacks" => {
            stats.deliveries.fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = find_number(&body, b"\"sent_ms\":") {
                stats
                    .lags_ms
                    .lock()
                    .unwrap()
                    .push(now_ms().saturating_sub(sent));
            }
            reply(204, String::new())
        }
        "/stats" => {
            let mut lags = stats.lags_ms.lock().unwrap().clone();
            lags.sort_unstable();
            let pct = |p: f64| {
                lags.get(((lags.len() as f64 * p) as usize).min(lags.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(0)
            };
            reply(
                200,
                format!(
                    r#"{{"deliveries":{},"payment_ids":{},"lag_p50_ms":{},"lag_p99_ms":{}}}"#,
                    stats.deliveries.load(Ordering::Relaxed),
                    stats.ids.load(Ordering::Relaxed),
                    pct(0.5),
                    pct(0.99)
                ),
            )
        }
        // The Gate API, for the merchant listener's proxy rows: acknowledged at once.
        p if p.starts_with("/v2/") => {
            reply(200, r#"{"status":"success","request_id":"stub"}"#.into())
        }
        _ => reply(404, "{}".into()),
    }
}

fn memchr(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn find_number(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = hay.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = hay[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:19000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let stats = Arc::new(Stats::default());
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        let stats = stats.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(stats.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
