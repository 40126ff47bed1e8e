//! Keep-alive connections to merchants, kept per host and reused last-in first-out.
//! Each HTTP thread has a pool of its own for terminal requests; delivery shares one.
//! A task is spawned per new connection only, never per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, StatusCode, Uri};
use tower_service::Service;

use super::{Connector, error_chain};

type Sender = http1::SendRequest<Full<Bytes>>;

/// An idle connection is closed after this long unused, so a quiet host holds no sockets.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an exchange failed, and whether the request can have reached the merchant.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made: the request never left.
    Connect(String),
    /// The request was written or may have been: resending it could repeat it.
    Sent(String),
    /// The answer's head came but its body could not be read within the limit.
    Body(String),
}

impl Failure {
    pub fn never_left(&self) -> bool {
        matches!(self, Failure::Connect(_))
    }
}

type Key = (Option<Scheme>, Option<Authority>);

fn key(url: &Uri) -> Key {
    (url.scheme().cloned(), url.authority().cloned())
}

/// One host's idle connections, most recently used last.
struct Host {
    host: HeaderValue,
    idle: Vec<(Sender, Instant)>,
}

impl Host {
    /// Closes the connections idle for longer than `IDLE_TIMEOUT` (the oldest first).
    fn expire(&mut self, now: Instant) {
        let stale = self
            .idle
            .iter()
            .take_while(|(_, since)| now - *since > IDLE_TIMEOUT)
            .count();
        self.idle.drain(..stale);
    }
}

struct Hosts {
    by_key: HashMap<Key, Host>,
    /// When every host's stale connections were last closed.
    expired: Instant,
}

/// A pooled connection lent for one exchange.
pub struct Lease<'a> {
    pool: &'a Pool,
    url: &'a Uri,
    sender: Sender,
}

impl Lease<'_> {
    /// Gives the connection back: call once the answer's body has been read whole.
    pub fn release(self) {
        self.pool.put(self.url, self.sender);
    }
}

pub struct Pool {
    connector: Connector,
    hosts: Mutex<Hosts>,
}

impl Pool {
    pub fn new(connector: Connector) -> Self {
        Pool {
            connector,
            hosts: Mutex::new(Hosts {
                by_key: HashMap::new(),
                expired: Instant::now(),
            }),
        }
    }

    /// POSTs `body` as JSON to `url` and reads the answer, at most `max_answer` bytes.
    pub async fn post(
        &self,
        url: &Uri,
        body: Bytes,
        max_answer: usize,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let request = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a valid URI and a static header");
        let (response, lease) = self.send(url, request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), max_answer)
            .collect()
            .await
            .map_err(|e| Failure::Body(error_chain(&*e)))?
            .to_bytes();
        lease.release();
        Ok((status, body))
    }

    /// Sends `request` to `url`'s host, on a pooled connection or a new one. The
    /// connection comes back through `Lease::release` once the answer's body is read
    /// whole; if the lease is dropped instead, the connection is closed.
    pub async fn send<'a>(
        &'a self,
        url: &'a Uri,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease<'a>), Failure> {
        // A connection to the host takes the origin form: the path, with the host
        // in its header. Built from parts: `http://h?x=1` has the path-and-query
        // `?x=1`, which does not parse as a URI of its own.
        let mut origin = hyper::http::uri::Parts::default();
        origin.path_and_query = Some(
            url.path_and_query()
                .filter(|p| p.as_str().starts_with('/'))
                .cloned()
                .map_or_else(
                    || format!("/{}", url.path_and_query().map_or("", |p| p.as_str())).parse(),
                    Ok,
                )
                .map_err(|e| Failure::Connect(format!("bad path in {url}: {e}")))?,
        );
        *request.uri_mut() = Uri::from_parts(origin)
            .map_err(|e| Failure::Connect(format!("bad path in {url}: {e}")))?;
        let (mut sender, host) = self.checkout(url).await?;
        request.headers_mut().insert(header::HOST, host);
        loop {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        pool: self,
                        url,
                        sender,
                    };
                    return Ok((response, lease));
                }
                // Closed before the request was written: another connection may
                // send it without any risk of sending it twice.
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        request = back;
                        sender = self.checkout(url).await?.0;
                    }
                    None => return Err(Failure::Sent(error_chain(e.error()))),
                },
            }
        }
    }

    /// A ready idle connection to `url`'s host, or a new one, with the Host header.
    async fn checkout(&self, url: &Uri) -> Result<(Sender, HeaderValue), Failure> {
        loop {
            let taken = {
                let mut hosts = self.hosts.lock().expect("pool lock");
                hosts
                    .by_key
                    .get_mut(&key(url))
                    .map(|h| (h.idle.pop(), h.host.clone()))
            };
            match taken {
                Some((Some((mut sender, _)), host)) => {
                    // Not ready yet only while its last answer is being wound up.
                    if sender.ready().await.is_ok() {
                        return Ok((sender, host));
                    }
                }
                Some((None, host)) => return Ok((self.connect(url).await?, host)),
                None => {
                    let host = HeaderValue::from_str(url.authority().map_or("", |a| a.as_str()))
                        .map_err(|e| Failure::Connect(format!("bad host in {url}: {e}")))?;
                    let mut hosts = self.hosts.lock().expect("pool lock");
                    let idle = Vec::new();
                    hosts.by_key.entry(key(url)).or_insert(Host { host, idle });
                }
            }
        }
    }

    async fn connect(&self, url: &Uri) -> Result<Sender, Failure> {
        let mut connector = self.connector.clone();
        let failed = |e: &(dyn std::error::Error + 'static)| Failure::Connect(error_chain(e));
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| failed(&*e))?;
        let io = connector.call(url.clone()).await.map_err(|e| failed(&*e))?;
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| failed(&e))?;
        // On the caller's runtime: a terminal pool's connections stay on its HTTP thread.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "merchant connection ended");
            }
        });
        Ok(sender)
    }

    fn put(&self, url: &Uri, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut hosts = self.hosts.lock().expect("pool lock");
        // Now and then, every host: one that went quiet keeps no sockets open.
        if now - hosts.expired > IDLE_TIMEOUT {
            hosts.by_key.values_mut().for_each(|h| h.expire(now));
            hosts.expired = now;
        }
        if let Some(h) = hosts.by_key.get_mut(&key(url)) {
            h.expire(now);
            h.idle.push((sender, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL without a path but with a query used to reach an `expect`.
    #[tokio::test]
    async fn a_url_with_a_query_and_no_path_is_sent_without_a_panic() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let pool = Pool::new(crate::outbound::connector(Duration::from_secs(1), None).unwrap());
        let url: Uri = format!("http://{addr}?x=1").parse().unwrap();
        let (status, _) = pool
            .post(&url, Bytes::from_static(b"{}"), 1024)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(server.await.unwrap().starts_with("POST /?x=1 HTTP/1.1"));
    }
}
