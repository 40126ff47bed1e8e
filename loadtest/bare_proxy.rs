//! The floor of cbgate's terminal path: its HTTP server (one current-thread runtime per
//! core) and its merchant connection pool, forwarding each body and relaying the answer
//! with no check at all. Beside nginx, it shows what the stack costs and what the checks add.
//! Usage: bare_proxy [ADDR] [UPSTREAM_URL]   (default 127.0.0.1:18084, http://127.0.0.1:19000/terminal)

use std::sync::Arc;
use std::time::Duration;

use cbgate::http::{self, Limits, json};
use cbgate::outbound::{self, pool::Pool};
use http_body_util::BodyExt;
use hyper::StatusCode;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or("127.0.0.1:18084".into());
    let upstream: hyper::Uri = args
        .next()
        .unwrap_or("http://127.0.0.1:19000/terminal".into())
        .parse()
        .expect("an upstream URL");
    let upstream = Arc::new(upstream);
    let connector = outbound::connector(Duration::from_secs(1), None).expect("a connector");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let handlers: Vec<_> = (0..threads)
        .map(|_| {
            let (pool, upstream) = (Arc::new(Pool::new(connector.clone())), upstream.clone());
            move |req: hyper::Request<hyper::body::Incoming>| {
                let (pool, upstream) = (pool.clone(), upstream.clone());
                async move {
                    let Ok(body) = req.into_body().collect().await else {
                        return json(StatusCode::BAD_REQUEST, "");
                    };
                    match pool.post(&upstream, body.to_bytes(), 16 * 1024).await {
                        Ok((status, answer)) => json(status, answer),
                        Err(_) => json(StatusCode::BAD_GATEWAY, ""),
                    }
                }
            }
        })
        .collect();
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    let limits = Limits {
        max_connections: 10_000,
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(10),
        max_body_bytes: 64 * 1024,
    };
    let serving = http::serve_per_thread(
        listener,
        handlers,
        None,
        limits,
        CancellationToken::new(),
        Duration::from_secs(1),
    )
    .expect("HTTP threads");
    serving.await;
}
