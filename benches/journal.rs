//! Durable records per second of the journal's redb store alone, beside the disk's
//! raw group-commit limit measured in the same run (append the same bytes to a file
//! and fdatasync once per batch): the floor any durable store pays. And what releasing
//! delivered events costs beside many dead letters.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use cbgate::dedup::DedupKey;
use cbgate::store::embedded::redb::{Group, Journal, Update};
use cbgate::store::{EndpointKey, Event};

fn event(seq: u64, body: &Bytes) -> Event {
    Event {
        seq,
        accepted_ms: 0,
        project: 1234,
        dedup: DedupKey(seq as u128 * 0x9E37_79B9_7F4A_7C15),
        order_key: format!("1234/pay-{seq}"),
        partition: 0,
        endpoints: vec![EndpointKey::new(1234, "ledger")],
        body: body.clone(),
    }
}

fn bench(c: &mut Criterion) {
    let body = Bytes::from(vec![b'x'; 1000]);
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("journal_commit");
    g.measurement_time(Duration::from_secs(8));
    for batch in [1usize, 64, 512] {
        g.throughput(Throughput::Elements(batch as u64));
        let mut raw = File::create(dir.path().join(format!("raw-{batch}"))).unwrap();
        let bytes = vec![b'x'; 1060 * batch];
        g.bench_with_input(
            BenchmarkId::new("raw_write_fdatasync", batch),
            &batch,
            |b, _| {
                b.iter(|| {
                    raw.write_all(&bytes).unwrap();
                    raw.sync_data().unwrap();
                })
            },
        );
        let store =
            Journal::open(&dir.path().join(format!("redb-{batch}")), false, 256 << 20).unwrap();
        let mut seq = 1u64;
        g.bench_with_input(
            BenchmarkId::new("redb_store", batch),
            &batch,
            |b, &batch| {
                b.iter(|| {
                    let mut group = Group::default();
                    for _ in 0..batch {
                        group.events.push((event(seq, &body), u32::MAX));
                        seq += 1;
                    }
                    group.next_seq = seq;
                    store.commit(black_box(&group)).unwrap();
                })
            },
        );
    }
    g.finish();
}

/// A commit of 32 delivered events (each `Done` releases its event), beside 0 or 100 k
/// dead letters of another endpoint: the release must not cost more with more dead
/// letters, or one endpoint's outage slows every other endpoint's deliveries.
fn release(c: &mut Criterion) {
    let body = Bytes::from(vec![b'x'; 1000]);
    let mut g = c.benchmark_group("journal_release");
    g.measurement_time(Duration::from_secs(5));
    for dead in [0u64, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Journal::open(dir.path(), false, 256 << 20).unwrap();
        let outage = Group {
            updates: (0..dead)
                .map(|i| Update::Dead {
                    seq: 1_000_000_000 + i,
                    endpoint: EndpointKey::new(1234, "crm"),
                    state: vec![],
                })
                .collect(),
            next_seq: 1,
            ..Group::default()
        };
        store.commit(&outage).unwrap();
        let mut seq = 1u64;
        g.bench_with_input(BenchmarkId::new("dead_letters", dead), &dead, |b, _| {
            b.iter_batched(
                || {
                    let events = (seq..seq + 32)
                        .map(|s| (event(s, &body), u32::MAX))
                        .collect();
                    store
                        .commit(&Group {
                            events,
                            next_seq: seq + 32,
                            ..Group::default()
                        })
                        .unwrap();
                    let done = Group {
                        updates: (seq..seq + 32)
                            .map(|s| Update::Done {
                                seq: s,
                                endpoint: EndpointKey::new(1234, "ledger"),
                            })
                            .collect(),
                        next_seq: seq + 32,
                        ..Group::default()
                    };
                    seq += 32;
                    done
                },
                |done| store.commit(black_box(&done)).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench, release);
criterion_main!(benches);
