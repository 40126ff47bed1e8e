//! HTTP server plumbing shared by the platform and admin listeners: the accept loop
//! with a connection cap and header-read timeout (on one runtime, or one per HTTP
//! thread), graceful drain on shutdown, and body reading under limits into one `Bytes`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

pub type Body = Full<Bytes>;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_body_bytes: usize,
}

impl Limits {
    pub fn from_config(s: &crate::config::Server) -> Self {
        Self {
            max_connections: s.max_connections,
            header_read_timeout: s.header_read_timeout,
            body_read_timeout: s.body_read_timeout,
            max_body_bytes: s.max_body_bytes,
        }
    }
}

/// Serves `handler` on `listener` until `shutdown`, then stops accepting and gives
/// open connections `grace` to finish their requests.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    serve_with_slots(listener, limits, handler, shutdown, grace, slots).await;
}

/// `serve` with the connection cap `slots`, which several listeners may share.
async fn serve_with_slots<H, F>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
    slots: Arc<Semaphore>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REJECTED_TOTAL).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let h = handler.clone();
            async move { Ok::<_, Infallible>(h(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "connections still open after the grace period");
    }
}

/// Serves on one thread per handler (`http-0`, `http-1`, ...), each a current-thread
/// runtime accepting from `listener`: a request, its journal wait and the merchant
/// connection it uses stay on one thread, with no wake-ups across threads
/// (BENCHMARKS.md: terminal 1.18x req/s at a quarter less CPU than one shared
/// multi-thread runtime).
/// Starts the threads; the future resolves once every one has drained.
pub fn serve_per_thread<H, F>(
    listener: TcpListener,
    handlers: Vec<H>,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<impl Future<Output = ()>>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = listener.into_std()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut threads = Vec::new();
    for (i, handler) in handlers.into_iter().enumerate() {
        let (listener, shutdown, slots) = (listener.try_clone()?, shutdown.clone(), slots.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        threads.push(
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(l) => {
                                serve_with_slots(l, limits, handler, shutdown, grace, slots).await
                            }
                            Err(e) => tracing::error!(error = %e, "HTTP thread cannot listen"),
                        }
                    })
                })?,
        );
    }
    Ok(async move {
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    })
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body is over {0} bytes")]
    TooLarge(usize),
    #[error("body not received within {0:?}")]
    Timeout(Duration),
    #[error("body could not be read: {0}")]
    Broken(String),
}

/// Reads the whole body as one `Bytes` (no copy when it arrived in one frame).
pub async fn read_body(req: Request<Incoming>, limits: &Limits) -> Result<Bytes, BodyError> {
    let max = limits.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(limits.body_read_timeout, body.collect()).await {
        Err(_) => Err(BodyError::Timeout(limits.body_read_timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}
