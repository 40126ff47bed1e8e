//! check_deposit idempotency once 100 k answers are remembered, all still in the window
//! (over 167 check_deposits/s for 10 minutes): a new request's cost with `Recent`
//! (arrival-ordered expiry, the oldest dropped over the bound), beside the former way
//! (a `retain` pass over the map whenever it was full).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dashmap::DashMap;
use tokio::sync::OnceCell;

use cbgate::terminal::recent::Recent;

const MAX: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(600);

fn key(i: u64) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, &i.to_le_bytes())
        .as_ref()
        .try_into()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut g = c.benchmark_group("idempotency_100k");
    let recent = Recent::<u32>::new(WINDOW, MAX);
    for i in 0..MAX as u64 {
        recent.slot(key(i), t0);
    }
    let mut i = MAX as u64;
    g.bench_function("recent_new_request", |b| {
        b.iter(|| {
            i += 1;
            black_box(recent.slot(key(i), t0 + Duration::from_secs(1)))
        })
    });
    type Slot = Arc<OnceCell<Option<u32>>>;
    let former: DashMap<[u8; 32], (Instant, Slot)> = DashMap::new();
    for i in 0..MAX as u64 {
        former.insert(key(i), (t0, Arc::default()));
    }
    g.bench_function("former_retain_when_full", |b| {
        b.iter(|| {
            i += 1;
            let now = t0 + Duration::from_secs(1);
            if former.len() >= MAX {
                former.retain(|_, (at, _)| now.duration_since(*at) < WINDOW);
            }
            let slot = former
                .entry(key(i))
                .or_insert_with(|| (now, Arc::default()))
                .1
                .clone();
            black_box(slot)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
