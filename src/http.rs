//! HTTP server plumbing shared by the platform and admin listeners: the accept loop
//! with a connection cap and header-read timeout (on one runtime, or one per HTTP
//! thread), graceful drain on shutdown, and body reading under limits into one `Bytes`.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
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
    let connections = Connections::new(limits, None);
    accept_loop(&listener, &limits, &shutdown, |stream, permit| {
        connections.serve(stream, handler.clone(), permit);
    })
    .await;
    drop(listener);
    connections.drain(grace).await;
}

/// Serves on one thread per handler (`http-0`, `http-1`, ...), each a current-thread
/// runtime: a request, its journal wait and the merchant connection it uses stay on
/// one thread, with no wake-ups across threads (BENCHMARKS.md: terminal 1.30x req/s
/// at a quarter less CPU than one shared multi-thread runtime). The caller's runtime
/// accepts and hands each connection to the thread with the fewest open ones, so a
/// burst of connections cannot pile onto one thread. Starts the threads; the future
/// accepts until `shutdown` and resolves once every thread has drained.
pub fn serve_per_thread<H, F>(
    listener: TcpListener,
    handlers: Vec<H>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<impl Future<Output = ()>>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    type Handoff = (std::net::TcpStream, (OwnedSemaphorePermit, Open));
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for (i, handler) in handlers.into_iter().enumerate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
        let open = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tls = tls.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let connections = Connections::new(limits, tls);
                        // Ends when the acceptor drops its sender, at shutdown.
                        while let Some((stream, held)) = rx.recv().await {
                            match TcpStream::from_std(stream) {
                                Ok(s) => connections.serve(s, handler.clone(), held),
                                Err(e) => tracing::warn!(error = %e, "connection handoff failed"),
                            }
                        }
                        connections.drain(grace).await;
                    })
                })?,
        );
        workers.push((tx, open));
    }
    Ok(async move {
        accept_loop(&listener, &limits, &shutdown, |stream, permit| {
            let Some((tx, open)) = workers
                .iter()
                .min_by_key(|(_, open)| open.load(Ordering::Relaxed))
            else {
                return;
            };
            match stream.into_std() {
                Ok(std) => {
                    let _ = tx.send((std, (permit, Open::new(open))));
                }
                Err(e) => tracing::warn!(error = %e, "connection handoff failed"),
            }
        })
        .await;
        drop(listener);
        drop(workers);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    })
}

/// A connection counted against its HTTP thread while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts until `shutdown`, passing each connection within the cap on.
async fn accept_loop(
    listener: &TcpListener,
    limits: &Limits,
    shutdown: &CancellationToken,
    mut take: impl FnMut(TcpStream, OwnedSemaphorePermit),
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
            () = shutdown.cancelled() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REJECTED_TOTAL).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        take(stream, permit);
    }
}

/// Concurrent streams one HTTP/2 connection may open.
pub const H2_MAX_STREAMS: u32 = 100;
/// Bytes of request headers (HPACK-decoded) one HTTP/2 request may carry.
pub const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams a client may reset before the server accepts them, at once (rapid reset).
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for protocol errors before it ends the connection.
pub const H2_MAX_ERROR_RESETS: usize = 256;

/// The connections of one runtime: hyper's HTTP/1.1 (and HTTP/2) server with the
/// header-read timeout, behind TLS when configured, watched for a graceful drain.
struct Connections {
    /// Plain connections: HTTP/1.1, or HTTP/2 with prior knowledge (sniffed).
    builder: auto::Builder<TokioExecutor>,
    /// TLS connections, by the protocol ALPN chose: nothing left to sniff.
    h1_only: auto::Builder<TokioExecutor>,
    h2_only: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    graceful: hyper_util::server::graceful::GracefulShutdown,
    tls: Option<TlsAcceptor>,
    /// A TLS handshake gets as long as a client gets for its headers.
    handshake_timeout: Duration,
}

impl Connections {
    fn new(limits: Limits, tls: Option<TlsAcceptor>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // Answers are small: copying the body after the head and making one write
            // costs less than a two-part writev (BENCHMARKS.md: flat writes).
            .writev(false)
            .keep_alive(true);
        // HTTP/2 (https only, by ALPN) with its abuse limits stated rather than left to
        // library defaults: streams per connection, a 16 KiB header list, and reset
        // floods (CVE-2023-44487) answered with GOAWAY.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
            .keep_alive_interval(limits.header_read_timeout)
            .keep_alive_timeout(limits.header_read_timeout);
        Connections {
            h1_only: builder.clone().http1_only(),
            h2_only: builder.clone().http2_only(),
            builder,
            header_read_timeout: limits.header_read_timeout,
            graceful: hyper_util::server::graceful::GracefulShutdown::new(),
            tls,
            handshake_timeout: limits.header_read_timeout,
        }
    }

    /// Serves `stream` on this runtime, holding `held` (its slot under the cap) until
    /// the connection ends.
    fn serve<H, F>(&self, stream: TcpStream, handler: H, held: impl Send + 'static)
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let h = handler.clone();
            async move { Ok::<_, Infallible>(h(req).await) }
        });
        let (builder, watcher) = (self.builder.clone(), self.graceful.watcher());
        let (h1_only, h2_only) = (self.h1_only.clone(), self.h2_only.clone());
        let (tls, handshake_timeout) = (self.tls.clone(), self.handshake_timeout);
        let first_byte = self.header_read_timeout;
        tokio::spawn(async move {
            match tls {
                None => {
                    // The version sniff reads with no timeout of its own, and hyper's
                    // header timeout starts only after it: a client that never sends
                    // a byte would hold its slot under the cap forever.
                    if tokio::time::timeout(first_byte, stream.readable())
                        .await
                        .is_err()
                    {
                        metrics::counter!(m::IDLE_CONNECTIONS_CLOSED_TOTAL).increment(1);
                        drop(held);
                        return;
                    }
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(tls) => {
                    match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let builder = match stream.get_ref().1.alpn_protocol() {
                                Some(b"h2") => h2_only,
                                _ => h1_only,
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            let _ = watcher.watch(conn.into_owned()).await;
                        }
                        failed => {
                            metrics::counter!(m::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                            let error = failed.ok().and_then(Result::err);
                            tracing::debug!(?error, ?handshake_timeout, "TLS handshake failed");
                        }
                    }
                }
            }
            drop(held);
        });
    }

    /// Gives open connections `grace` to finish their requests.
    async fn drain(self, grace: Duration) {
        if tokio::time::timeout(grace, self.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "connections still open after the grace period");
        }
    }
}

/// The platform listener's TLS: the PEM chain in `cert` and key in `key`, HTTP/2 and
/// HTTP/1.1 offered by ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = crate::outbound::load_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| {
        format!(
            "{} and its key do not make a usable pair: {e}",
            cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
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
