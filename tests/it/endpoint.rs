//! A merchant endpoint for delivery tests: a real HTTP/1.1 server on 127.0.0.1
//! (keep-alive, a thread per connection) that records every request and answers as
//! the test's closure tells it: a status, slowly, not at all, by closing, or once the
//! test opens a gate (so tests wait on events, never on the machine's speed).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::support::{ReadWrite, accept};

/// A latch a test opens: requests answered with `Reply::Block` wait on it.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    fn wait(&self) {
        let mut open = self.0.0.lock().unwrap();
        while !*open {
            open = self.0.1.wait(open).unwrap();
        }
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// Answer after a pause.
    Slow(Duration, u16),
    /// Hold the connection without answering, then close it.
    Hang(Duration),
    /// Close the connection without answering.
    Close,
    /// Answer, then close the connection (an idle keep-alive connection gone).
    Last(u16),
    /// Answer once the gate is open. Recorded when answered (`status`), or with no
    /// status when the peer went away meanwhile (the answer cannot have arrived).
    Block(Gate, u16),
    /// Answer with a body of this many bytes, written in pieces `pause` apart.
    Body(u16, usize, Duration),
    /// Answer with a redirect to this gateway-unknown location.
    Redirect(u16),
}

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What it was answered; `None` when it was not.
    pub status: Option<u16>,
    pub answered_at: Option<Instant>,
}

impl Received {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

type Behave = dyn Fn(usize, &[u8]) -> Reply + Send + Sync;

pub struct Endpoint {
    pub addr: SocketAddr,
    scheme: &'static str,
    log: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    arrived: Arc<AtomicUsize>,
}

impl Endpoint {
    /// An endpoint that answers 200 to everything.
    pub fn ok() -> Endpoint {
        Self::start(|_, _| Reply::Status(200))
    }

    /// `behave(n, body)` decides the answer to the `n`th request (from 0).
    pub fn start(behave: impl Fn(usize, &[u8]) -> Reply + Send + Sync + 'static) -> Endpoint {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behave)
    }

    pub fn start_on(
        addr: SocketAddr,
        behave: impl Fn(usize, &[u8]) -> Reply + Send + Sync + 'static,
    ) -> Endpoint {
        Self::listen(addr, None, Arc::new(behave))
    }

    /// An https endpoint that answers 200 to everything.
    pub fn ok_tls(tls: Arc<rustls::ServerConfig>) -> Endpoint {
        Self::listen(
            "127.0.0.1:0".parse().unwrap(),
            Some(tls),
            Arc::new(|_, _| Reply::Status(200)),
        )
    }

    fn listen(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        behave: Arc<Behave>,
    ) -> Endpoint {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let arrived = count.clone();
        {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let Ok(raw) = stream.try_clone() else {
                        continue;
                    };
                    let stream = accept(stream, tls.as_ref());
                    let (log, stop, behave, count) =
                        (log.clone(), stop.clone(), behave.clone(), count.clone());
                    std::thread::spawn(move || serve(stream, raw, &log, &stop, &*behave, &count));
                }
            });
        }
        Endpoint {
            addr,
            scheme,
            log,
            stop,
            arrived,
        }
    }

    /// Requests read so far, answered or not (a blocked one counts at once).
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::Acquire)
    }

    /// Polls until `n` requests have arrived, answered or not.
    pub fn wait_arrived(&self, n: usize, limit: Duration) -> bool {
        let started = Instant::now();
        while self.arrived() < n {
            if started.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    pub fn url(&self) -> String {
        format!("{}://{}/hooks", self.scheme, self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Bodies answered 2xx, in the order they were answered.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let mut ok: Vec<_> = self.requests().into_iter().filter(Received::ok).collect();
        ok.sort_by_key(|r| r.answered_at);
        ok.into_iter().map(|r| r.body).collect()
    }

    /// Polls until `done(requests)` holds; false after `limit`.
    pub fn wait(&self, limit: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            if done(&self.log.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Polls until `n` distinct bodies were answered 2xx.
    pub fn wait_delivered(&self, n: usize, limit: Duration) -> bool {
        self.wait(limit, |reqs| {
            let mut seen: Vec<&[u8]> = reqs
                .iter()
                .filter(|r| r.ok())
                .map(|r| r.body.as_slice())
                .collect();
            seen.sort();
            seen.dedup();
            seen.len() >= n
        })
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    stream: Box<dyn ReadWrite + Send>,
    raw: TcpStream,
    log: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
    behave: &Behave,
    count: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || stop.load(Ordering::Acquire) {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let n = count.fetch_add(1, Ordering::AcqRel);
        let reply = behave(n, &body);
        let status = match &reply {
            Reply::Status(s) | Reply::Last(s) | Reply::Body(s, ..) | Reply::Redirect(s) => Some(*s),
            Reply::Slow(pause, s) => {
                std::thread::sleep(*pause);
                Some(*s)
            }
            Reply::Hang(pause) => {
                std::thread::sleep(*pause);
                None
            }
            Reply::Close => None,
            Reply::Block(gate, s) => {
                gate.wait();
                // The gateway may have been killed while this waited: then it never
                // reads this answer, and it must not count as delivered.
                (!peer_gone(&raw)).then_some(*s)
            }
        };
        log.lock().unwrap().push(Received {
            at,
            headers,
            body,
            status,
            answered_at: status.map(|_| Instant::now()),
        });
        let Some(status) = status else { return };
        let written = match &reply {
            Reply::Body(_, size, pause) => write_body(reader.get_mut(), status, *size, *pause),
            Reply::Redirect(_) => reader
                .get_mut()
                .write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n"
                    )
                    .as_bytes(),
                ),
            _ => reader
                .get_mut()
                .write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes()),
        };
        if written.is_err() || matches!(reply, Reply::Last(_)) {
            return;
        }
    }
}

/// A `size`-byte answer body in 16 KiB pieces, `pause` between them.
fn write_body(
    out: &mut Box<dyn ReadWrite + Send>,
    status: u16,
    size: usize,
    pause: Duration,
) -> std::io::Result<()> {
    out.write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: {size}\r\n\r\n").as_bytes())?;
    let piece = vec![b'x'; 16 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(piece.len());
        out.write_all(&piece[..n])?;
        out.flush()?;
        left -= n;
        if left > 0 && !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}

/// True when the peer closed its side (a killed process's sockets are closed by the
/// kernel): a peek finds end-of-file or an error. A live peer waiting for its answer
/// sends nothing, so the peek waits out a short timeout (the FIN of a peer that was
/// killed just before is in by then).
fn peer_gone(raw: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    let _ = raw.set_read_timeout(Some(Duration::from_millis(200)));
    let gone = match raw.peek(&mut probe) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    let _ = raw.set_read_timeout(Some(Duration::from_secs(30)));
    gone
}
