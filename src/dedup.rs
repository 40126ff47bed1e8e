//! The set of callbacks already made durable, by 128-bit key, each with its expiry.
//! Ingress reads it without the writer (a hit is a duplicate at once); only the
//! journal writer inserts, and only after the commit that made the key durable.

use std::hash::{BuildHasherDefault, Hasher};

use dashmap::DashMap;

/// First 16 bytes of SHA-256 over the dedup rule's fields (see `callback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey(pub u128);

impl DedupKey {
    pub fn from_digest(digest: &[u8]) -> Self {
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        DedupKey(u128::from_le_bytes(b))
    }
}

/// The key as stored: two u64 halves, so a bucket is 24 bytes (a u128 would align
/// it to 32); all 128 bits are kept.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stored(u64, u64);

impl From<DedupKey> for Stored {
    fn from(k: DedupKey) -> Self {
        Stored(k.0 as u64, (k.0 >> 64) as u64)
    }
}

impl std::hash::Hash for Stored {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0 ^ self.1);
    }
}

/// The keys are already uniform digests: hashing them again is wasted work.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Stored`; fold anything else so it stays total.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Durable keys with expiry in whole seconds since the Unix epoch (u32 lasts to 2106).
pub struct DedupSet {
    map: DashMap<Stored, u32, BuildHasherDefault<DigestHasher>>,
}

impl Default for DedupSet {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl DedupSet {
    /// The sweep holds one shard's lock at a time, and lookups and the writer's inserts
    /// into it wait. DashMap's default on 2 cores, 8 shards, held each for 6.3 ms at
    /// 10 M keys; 512 hold each for 0.09 ms (BENCHMARKS.md).
    pub const SHARDS: usize = 512;

    pub fn with_capacity(n: usize) -> Self {
        Self {
            map: DashMap::with_capacity_and_hasher_and_shard_amount(
                n,
                BuildHasherDefault::default(),
                Self::SHARDS,
            ),
        }
    }

    /// True when `key` is durable and not expired at `now`.
    pub fn contains(&self, key: DedupKey, now: u32) -> bool {
        self.map
            .get(&Stored::from(key))
            .is_some_and(|exp| *exp > now)
    }

    pub fn insert(&self, key: DedupKey, expires: u32) {
        self.map.insert(Stored::from(key), expires);
    }

    /// Forgets every key expired at `now`; returns how many.
    pub fn sweep(&self, now: u32) -> usize {
        let before = self.map.len();
        self.map.retain(|_, exp| *exp > now);
        before - self.map.len()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_sweep() {
        let s = DedupSet::default();
        s.insert(DedupKey(1), 100);
        s.insert(DedupKey(2), 200);
        assert!(s.contains(DedupKey(1), 99));
        assert!(!s.contains(DedupKey(1), 100));
        assert!(!s.contains(DedupKey(3), 0));
        assert_eq!(s.sweep(150), 1);
        assert_eq!(s.len(), 1);
    }
}
