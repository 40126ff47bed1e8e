//! Distinct signed callbacks as fast as the target takes them: oha sends one body
//! over and over (all duplicates after the first), so the accepted path needs this.
//! Usage: callback_load URL[,URL...] SECRET PROJECT [--connections 64] [--seconds 10]
//!        [--count N] [--start-op 1] [--stamp] [--rate R]
//! Prints one JSON line: sent, by-status counts, req/s, p50/p99/p99.9 latency.
//! With `--rate` the connections together send R requests/s on a fixed schedule, and
//! a request held back by a slow answer counts its latency from its scheduled time, so
//! a stall is not hidden by the requests it delayed. Several URLs (gateway nodes) share
//! the connections in turn.

#[path = "report.rs"]
mod report;

use std::time::{Duration, Instant};

use report::{Schedule, Tally, read_answer};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    url: String,
    secret: String,
    project: u64,
    connections: usize,
    seconds: u64,
    count: usize,
    start_op: u64,
    stamp: bool,
    rate: Option<f64>,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        url: it.next().expect("URL"),
        secret: it.next().expect("SECRET"),
        project: it.next().expect("PROJECT").parse().expect("project id"),
        connections: 64,
        seconds: 10,
        count: 400_000,
        start_op: 1,
        stamp: false,
        rate: None,
    };
    while let Some(flag) = it.next() {
        if flag == "--stamp" {
            a.stamp = true;
            continue;
        }
        let v = it.next().expect("flag value");
        match flag.as_str() {
            "--connections" => a.connections = v.parse().unwrap(),
            "--seconds" => a.seconds = v.parse().unwrap(),
            "--count" => a.count = v.parse().unwrap(),
            "--start-op" => a.start_op = v.parse().unwrap(),
            "--rate" => a.rate = Some(v.parse().unwrap()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// The seed's Kassa24 Terminal callback with operation `op` (each one distinct).
/// With `sent_ms` = 0 the body is pre-signed; `--stamp` signs each one as it is
/// sent, with the send time, so the merchant stub can measure delivery lag.
fn callback(project: u64, op: u64, secret: &str, sent_ms: u64) -> Vec<u8> {
    let body = format!(
        r#"{{"project_id":{project},"payment":{{"id":"pay-{op}","type":"purchase","status":"success","date":"2022-03-25T11:08:45+0000","method":"kassa24","sum":{{"amount":10000,"currency":"KZT"}},"description":"","sent_ms":{sent_ms}}},"account":{{"number":"123456"}},"customer":{{"id":"customer_123"}},"operation":{{"id":{op},"type":"sale","status":"success","date":"2022-03-25T11:08:45+0000","created_date":"2022-03-25T11:08:05+0000","request_id":"req-{op}","sum_initial":{{"amount":10000,"currency":"KZT"}},"sum_converted":{{"amount":10000,"currency":"KZT"}},"code":"0","message":"Success","provider":{{"id":12345,"payment_id":"123abc123-321","auth_code":""}}}}}}"#
    );
    cbgate::signature::attach(body.as_bytes(), secret).expect("valid JSON")
}

#[tokio::main]
async fn main() {
    let a = args();
    let targets: Vec<(String, String)> = a
        .url
        .split(',')
        .map(|url| {
            let rest = url.strip_prefix("http://").expect("http:// URL");
            rest.split_once('/')
                .map(|(h, p)| (h.to_string(), format!("/{p}")))
                .unwrap()
        })
        .collect();
    let bodies: Vec<Vec<u8>> = if a.stamp {
        Vec::new()
    } else {
        (0..a.count as u64)
            .map(|i| callback(a.project, a.start_op + i, &a.secret, 0))
            .collect()
    };
    let (project, secret, start_op, count, stamp) =
        (a.project, a.secret.clone(), a.start_op, a.count, a.stamp);
    let bodies = std::sync::Arc::new(bodies);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.connections)
        .map(|c| {
            let mut schedule = Schedule::new(a.rate, a.connections, c, started);
            let (host, path) = targets[c % targets.len()].clone();
            let (bodies, next, secret) = (bodies.clone(), next.clone(), secret.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let stream = TcpStream::connect(&host).await.expect("connect");
                stream.set_nodelay(true).unwrap();
                let mut conn = BufReader::new(stream);
                let mut line = String::new();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let stamped;
                    let body = if stamp {
                        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
                        stamped = callback(project, start_op + i as u64, &secret, now);
                        &stamped
                    } else {
                        &bodies[i]
                    };
                    let head = format!(
                        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    // One write, as curl and hyper clients send a small request.
                    let mut request = head.into_bytes();
                    request.extend_from_slice(body);
                    let t = schedule.next().await;
                    conn.get_mut().write_all(&request).await.unwrap();
                    let Some(answer) = read_answer(&mut conn, &mut line).await else {
                        tally.failed();
                        break;
                    };
                    tally.record(answer.status, t.elapsed());
                    if answer.close {
                        break;
                    }
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
