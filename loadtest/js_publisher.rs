//! The JetStream engine's floor: publishes what cbgate publishes per callback (one
//! message of the same size on its own subject, with
//! `Nats-Expected-Last-Subject-Sequence: 0`), from N concurrent publishers each
//! waiting for its ack, with no HTTP and no signature check in front.
//! Usage: js_publisher NATS_URL [--replicas 3] [--concurrency 64] [--seconds 10]
//!        [--bytes 1100] [--partitions 64] [--read]
//! With `--read` every partition is also read back as it is written, by one ordered
//! consumer each, as cbgate's partition owners read them for delivery.
//! Makes (or reuses) stream `RAWBENCH` on `raw.>` with the settings cbgate gives its
//! events stream, and prints one JSON line like `callback_load`: sent, req/s,
//! p50/p99/p99.9 latency.

#[path = "report.rs"]
#[allow(dead_code)] // only `print` here: the other parts are for HTTP tools
mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;

struct Args {
    url: String,
    replicas: usize,
    concurrency: usize,
    seconds: u64,
    bytes: usize,
    partitions: u64,
    read: bool,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        url: it.next().expect("NATS_URL"),
        replicas: 3,
        concurrency: 64,
        seconds: 10,
        bytes: 1100,
        partitions: 64,
        read: false,
    };
    while let Some(flag) = it.next() {
        if flag == "--read" {
            a.read = true;
            continue;
        }
        let v = it.next().expect("flag value");
        match flag.as_str() {
            "--replicas" => a.replicas = v.parse().unwrap(),
            "--concurrency" => a.concurrency = v.parse().unwrap(),
            "--seconds" => a.seconds = v.parse().unwrap(),
            "--bytes" => a.bytes = v.parse().unwrap(),
            "--partitions" => a.partitions = v.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

#[tokio::main]
async fn main() {
    let a = args();
    let client = async_nats::connect(&a.url).await.expect("connect");
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(20_000)
        .backpressure_on_inflight(true)
        .build(client);
    js.create_or_update_stream(stream::Config {
        name: "RAWBENCH".into(),
        subjects: vec!["raw.>".into()],
        max_age: Duration::from_secs(7 * 86_400),
        max_bytes: 1 << 30,
        discard: stream::DiscardPolicy::New,
        num_replicas: a.replicas,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("stream");
    let read = Arc::new(AtomicU64::new(0));
    if a.read {
        let events = js.get_stream("RAWBENCH").await.expect("stream");
        for p in 0..a.partitions {
            let (events, read) = (events.clone(), read.clone());
            tokio::spawn(async move {
                let c = events
                    .create_consumer(consumer::pull::OrderedConfig {
                        filter_subject: format!("raw.{p}.>"),
                        deliver_policy: consumer::DeliverPolicy::New,
                        ..Default::default()
                    })
                    .await
                    .expect("ordered consumer");
                let mut messages = c.messages().await.expect("messages");
                while let Some(Ok(_)) = messages.next().await {
                    read.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    let payload = Bytes::from(vec![b'x'; a.bytes]);
    // Distinct keys across runs on the same stream.
    let run = fastrand::u64(..);
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (js, payload, next) = (js.clone(), payload.clone(), next.clone());
            let partitions = a.partitions;
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let subject = format!(
                        "raw.{}.{:016x}.{:016x}{:016x}",
                        i % partitions,
                        i / 3,
                        run,
                        i
                    );
                    let publish = jetstream::message::PublishMessage::build()
                        .payload(payload.clone())
                        .expected_last_subject_sequence(0);
                    let t = Instant::now();
                    let acked = async { js.send_publish(subject, publish).await?.await }.await;
                    match acked {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let statuses = [
        format!("200:{}", lat.len()),
        format!("error:{errors}"),
        format!("read:{}", read.load(Ordering::Relaxed)),
    ];
    report::print(lat, &statuses, started);
}
