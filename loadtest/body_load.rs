//! One body to one URL over keep-alive connections, as fast as answers come or at a
//! fixed rate: the merchant listener's rows (Payment Page signing, the Gate API proxy)
//! and their baselines. A connection the server closes (`Connection: close`, as a
//! gunicorn sync worker does) is opened again, its connect time counted in the request.
//! Usage: body_load URL BODY_FILE [--header "Name: value"]... [--connections 64]
//!        [--seconds 10] [--rate R]
//! Prints one JSON line (row.py `load`): sent, by-status counts, req/s, p50/p99/p99.9.
//! With `--rate` the connections together send R requests/s on a fixed schedule, and a
//! request held back by a slow answer counts its latency from its scheduled time.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    url: String,
    body: Vec<u8>,
    headers: Vec<String>,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let url = it.next().expect("URL");
    let body = std::fs::read(it.next().expect("BODY_FILE")).expect("body file");
    let mut a = Args {
        url,
        body,
        headers: Vec::new(),
        connections: 64,
        seconds: 10,
        rate: None,
    };
    while let Some(flag) = it.next() {
        let v = it.next().expect("flag value");
        match flag.as_str() {
            "--header" => a.headers.push(v),
            "--connections" => a.connections = v.parse().unwrap(),
            "--seconds" => a.seconds = v.parse().unwrap(),
            "--rate" => a.rate = Some(v.parse().unwrap()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

async fn connect(host: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(host).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    BufReader::new(stream)
}

#[tokio::main]
async fn main() {
    let a = args();
    let rest = a.url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h.to_string(), format!("/{p}")))
        .expect("a URL with a path");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        a.body.len()
    );
    for h in &a.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    // One write per request, as curl and hyper clients send a small one.
    let mut request = request.into_bytes();
    request.extend_from_slice(&a.body);
    let request = std::sync::Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let gap = a
        .rate
        .map(|r| Duration::from_secs_f64(a.connections as f64 / r));
    let tasks: Vec<_> = (0..a.connections)
        .map(|c| {
            let mut due = gap.map(|g| started + g.mul_f64(c as f64 / a.connections as f64));
            let (host, request) = (host.clone(), request.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut line = String::new();
                while Instant::now() < deadline {
                    let t = match (&mut due, gap) {
                        (Some(due), Some(gap)) => {
                            let scheduled = *due;
                            *due += gap;
                            if Instant::now() >= scheduled {
                                scheduled
                            } else {
                                tokio::time::sleep_until(scheduled.into()).await;
                                Instant::now()
                            }
                        }
                        _ => Instant::now(),
                    };
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => conn.insert(connect(&host).await),
                    };
                    if c.get_mut().write_all(&request).await.is_err() {
                        conn = None;
                        *statuses.entry(0).or_default() += 1;
                        continue;
                    }
                    line.clear();
                    if c.read_line(&mut line).await.unwrap_or(0) == 0 {
                        conn = None;
                        *statuses.entry(0).or_default() += 1;
                        continue;
                    }
                    let status: u16 = line
                        .split(' ')
                        .nth(1)
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0);
                    let (mut len, mut close) = (0usize, false);
                    loop {
                        line.clear();
                        c.read_line(&mut line).await.unwrap();
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            } else if k.eq_ignore_ascii_case("connection") {
                                close = v.trim().eq_ignore_ascii_case("close");
                            }
                        }
                    }
                    let mut rest = vec![0; len];
                    c.read_exact(&mut rest).await.unwrap();
                    if close {
                        conn = None;
                    }
                    lat.push(t.elapsed());
                    *statuses.entry(status).or_default() += 1;
                }
                (lat, statuses)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for t in tasks {
        let (l, s) = t.await.unwrap();
        lat.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{{\"sent\":{},\"statuses\":{:?},\"rps\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"seconds\":{:.2}}}",
        lat.len(),
        statuses
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>(),
        lat.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        pct(0.999),
        elapsed
    );
}
