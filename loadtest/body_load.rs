//! One body to one URL over keep-alive connections, as fast as answers come or at a
//! fixed rate: the merchant listener's rows (Payment Page signing, the Gate API proxy)
//! and their baselines. A connection the server closes (`Connection: close`, as a
//! gunicorn sync worker does) is opened again, its connect time counted in the request.
//! Usage: body_load URL BODY_FILE [--header "Name: value"]... [--connections 64]
//!        [--seconds 10] [--rate R]
//! Prints one JSON line (row.py `load`): sent, by-status counts, req/s, p50/p99/p99.9.
//! With `--rate` the connections together send R requests/s on a fixed schedule, and a
//! request held back by a slow answer counts its latency from its scheduled time.

#[path = "report.rs"]
mod report;

use std::time::{Duration, Instant};

use report::{Schedule, Tally, read_answer};
use tokio::io::{AsyncWriteExt, BufReader};
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
    let tasks: Vec<_> = (0..a.connections)
        .map(|c| {
            let mut schedule = Schedule::new(a.rate, a.connections, c, started);
            let (host, request) = (host.clone(), request.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut line = String::new();
                while Instant::now() < deadline {
                    let t = schedule.next().await;
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => conn.insert(connect(&host).await),
                    };
                    if c.get_mut().write_all(&request).await.is_err() {
                        conn = None;
                        tally.failed();
                        continue;
                    }
                    let Some(answer) = read_answer(c, &mut line).await else {
                        conn = None;
                        tally.failed();
                        continue;
                    };
                    if answer.close {
                        conn = None;
                    }
                    tally.record(answer.status, t.elapsed());
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for t in tasks {
        tally.merge(t.await.unwrap());
    }
    let labels = tally.labels();
    report::print(tally.lat, &labels, started);
}
