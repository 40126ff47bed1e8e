//! The dedup set at 10 million entries: lookup (hit, miss) and insert, and bytes per
//! entry, beside the naive choice (a Mutex<HashMap<String, u64>> of hex keys).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};

use cbgate::dedup::{DedupKey, DedupSet};

/// Counts live heap bytes, so bytes per entry is measured, not estimated.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: u64 = 10_000_000;

fn key(i: u64) -> DedupKey {
    let d = ring::digest::digest(&ring::digest::SHA256, &i.to_le_bytes());
    DedupKey::from_digest(d.as_ref())
}

fn bench(c: &mut Criterion) {
    let keys: Vec<DedupKey> = (0..N).map(key).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let set = DedupSet::default();
    for k in &keys {
        set.insert(*k, u32::MAX);
    }
    let per_entry = (LIVE.load(Ordering::Relaxed) - before) as f64 / N as f64;
    eprintln!("DedupSet (DashMap<(u64,u64),u32>): {per_entry:.1} bytes/entry at {N} entries");
    // The minute's sweep visits every key, one shard's lock at a time: while a shard
    // is held, lookups and the journal writer's inserts into it wait.
    let started = std::time::Instant::now();
    assert_eq!(set.sweep(0), 0);
    let sweep = started.elapsed();
    eprintln!(
        "DedupSet sweep over {N} entries: {:.1} ms, {} shards: {:.2} ms per shard held",
        sweep.as_secs_f64() * 1e3,
        DedupSet::SHARDS,
        sweep.as_secs_f64() * 1e3 / DedupSet::SHARDS as f64
    );

    let before = LIVE.load(Ordering::Relaxed);
    let naive = Mutex::new(HashMap::new());
    for k in &keys {
        naive
            .lock()
            .unwrap()
            .insert(format!("{:032x}", k.0), u64::MAX);
    }
    let naive_per_entry = (LIVE.load(Ordering::Relaxed) - before) as f64 / N as f64;
    eprintln!("naive Mutex<HashMap<String,u64>>: {naive_per_entry:.1} bytes/entry at {N} entries");

    let mut g = c.benchmark_group("dedup_10m");
    let mut i = 0usize;
    g.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(set.contains(keys[i], 0))
        })
    });
    let mut miss = N;
    g.bench_function("lookup_miss", |b| {
        b.iter(|| {
            miss += 1;
            black_box(set.contains(key(miss), 0))
        })
    });
    g.bench_function("digest_only_for_miss_baseline", |b| {
        b.iter(|| {
            miss += 1;
            black_box(key(miss))
        })
    });
    // Fresh digests made up front: real keys are uniform, sequential ones are not.
    let fresh: Vec<DedupKey> = (2 * N..2 * N + 3_000_000).map(key).collect();
    let mut f = 0usize;
    g.bench_function("insert", |b| {
        b.iter(|| {
            f = (f + 1) % fresh.len();
            set.insert(fresh[f], u32::MAX)
        })
    });
    g.bench_function("naive_lookup_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let hex = format!("{:032x}", keys[i].0);
            black_box(naive.lock().unwrap().contains_key(&hex))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
