//! Which node delivers which partition. Every node writes a heartbeat `node.<id>` to
//! the nodes bucket each second; entries there live `ENTRY_TTL`. Rendezvous hashing
//! over the live nodes says who should own each partition, and a lease `lease.<p>`
//! (created only if absent, renewed by revision) makes one node at a time own it.
//!
//! Why leases and not pinned priority groups: pinning is not exclusive during failover
//! (ADR-42), every node would pull every partition, and the server's choice of pin
//! does not spread partitions over nodes. A lease is exclusive by construction: a
//! node that cannot renew stops delivering the partition after `LEASE_SAFE`, before
//! the lease can expire and another node take it.
//!
//! Handover: a node that should no longer own a partition (a node joined) parks what
//! it holds and writes the partition's cursor, then deletes the lease; the new owner
//! creates it, reads the parked deliveries and resumes from the cursor. A crashed
//! node's leases expire after `ENTRY_TTL`; the new owner resumes from the cursor it
//! last wrote.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use crate::metrics as m;

/// How long a heartbeat or lease lives in the bucket without renewal.
pub const ENTRY_TTL: Duration = Duration::from_secs(6);
/// How often heartbeats and leases are renewed.
const BEAT: Duration = Duration::from_secs(1);
/// A lease not renewed for this long is given up before it can expire.
const LEASE_SAFE: Duration = Duration::from_secs(4);

/// This node's identity: random at every start, so no config names it.
pub fn node_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Who this node believes alive, and the partitions it owns.
#[derive(Default)]
pub struct View {
    pub live: Vec<String>,
    pub owned: BTreeMap<u16, u64>,
}

pub struct Owner {
    pub id: String,
    pub kv: kv::Store,
    pub ledger: Ledger,
    pub partitions: u16,
    pub view: Arc<Mutex<View>>,
}

struct Lease {
    revision: u64,
    renewed: Instant,
}

impl Owner {
    /// Runs until `stop`, then hands every partition over and removes the heartbeat.
    pub async fn run(self, stop: CancellationToken) {
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let watcher = tokio::spawn(watch(self.kv.clone(), seen.clone()));
        let mut leases: BTreeMap<u16, Lease> = BTreeMap::new();
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let value = Bytes::from(
            serde_json::json!({
                "host": hostname(),
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
            })
            .to_string(),
        );
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            let beat =
                tokio::time::timeout(BEAT, self.kv.put(self.heartbeat_key(), value.clone())).await;
            if let Ok(Ok(_)) = beat {
                seen.lock()
                    .expect("seen lock")
                    .insert(self.id.clone(), Instant::now());
            }
            let live = live_nodes(&seen);
            self.renew(&mut leases).await;
            let want: Vec<u16> = (0..self.partitions)
                .filter(|p| rendezvous(&live, *p) == Some(self.id.as_str()))
                .collect();
            // Hand over first what this node should no longer own.
            let surplus: Vec<u16> = leases
                .keys()
                .filter(|p| !want.contains(p))
                .copied()
                .collect();
            for p in surplus {
                self.ledger.release(p, true).await;
                let _ = self.kv.delete(lease_key(p)).await;
                leases.remove(&p);
            }
            for p in want {
                if leases.contains_key(&p) {
                    continue;
                }
                if let Some(revision) = self.acquire(p).await {
                    match self.ledger.claim(p).await {
                        Ok(()) => {
                            leases.insert(
                                p,
                                Lease {
                                    revision,
                                    renewed: Instant::now(),
                                },
                            );
                        }
                        Err(e) => {
                            tracing::warn!(partition = p, error = %e, "partition not claimed; trying again");
                            let _ = self.kv.delete(lease_key(p)).await;
                        }
                    }
                }
            }
            metrics::gauge!(m::STORE_PARTITIONS_OWNED).set(leases.len() as f64);
            metrics::gauge!(m::STORE_NODES_LIVE).set(live.len() as f64);
            let mut view = self.view.lock().expect("view lock");
            view.live = live;
            view.owned = leases.iter().map(|(p, l)| (*p, l.revision)).collect();
        }
        for (p, _) in std::mem::take(&mut leases) {
            self.ledger.release(p, true).await;
            let _ = self.kv.delete(lease_key(p)).await;
        }
        let _ = self.kv.delete(self.heartbeat_key()).await;
        watcher.abort();
    }

    fn heartbeat_key(&self) -> String {
        format!("node.{}", self.id)
    }

    /// Renews every lease; one not renewed within `LEASE_SAFE` is given up at once
    /// (without writes: another node may own it already).
    async fn renew(&self, leases: &mut BTreeMap<u16, Lease>) {
        let renewals = leases.iter().map(|(p, lease)| {
            let update =
                self.kv
                    .update(lease_key(*p), Bytes::from(self.id.clone()), lease.revision);
            async move { (*p, tokio::time::timeout(BEAT, update).await) }
        });
        let results = futures_util::future::join_all(renewals).await;
        let now = Instant::now();
        for (p, result) in results {
            let Some(lease) = leases.get_mut(&p) else {
                continue;
            };
            match result {
                Ok(Ok(revision)) => {
                    lease.revision = revision;
                    lease.renewed = now;
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(
                        partition = p,
                        "lease taken by another node; partition given up"
                    );
                    self.ledger.release(p, false).await;
                    leases.remove(&p);
                }
                _ if now.duration_since(lease.renewed) >= LEASE_SAFE => {
                    tracing::warn!(
                        partition = p,
                        "lease not renewed in time; partition given up"
                    );
                    self.ledger.release(p, false).await;
                    leases.remove(&p);
                }
                _ => {}
            }
        }
    }

    /// Takes the lease of `p` if nobody holds it (or this node held it before an
    /// outage shorter than its life); returns its revision.
    async fn acquire(&self, p: u16) -> Option<u64> {
        let key = lease_key(p);
        let me = Bytes::from(self.id.clone());
        match tokio::time::timeout(BEAT, self.kv.create(&key, me.clone())).await {
            Ok(Ok(revision)) => Some(revision),
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = self.kv.entry(&key).await.ok()??;
                if entry.value != me {
                    return None;
                }
                self.kv.update(&key, me, entry.revision).await.ok()
            }
            _ => None,
        }
    }
}

/// Follows every heartbeat in the bucket: when each node was last seen.
async fn watch(kv: kv::Store, seen: Arc<Mutex<HashMap<String, Instant>>>) {
    loop {
        match kv.watch_with_history("node.*").await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Ok(entry) = entry else { break };
                    let Some(id) = entry.key.strip_prefix("node.") else {
                        continue;
                    };
                    let mut seen = seen.lock().expect("seen lock");
                    match entry.operation {
                        kv::Operation::Put => {
                            seen.insert(id.to_string(), Instant::now());
                        }
                        kv::Operation::Delete | kv::Operation::Purge => {
                            seen.remove(id);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch node heartbeats; retrying"),
        }
        tokio::time::sleep(BEAT).await;
    }
}

fn live_nodes(seen: &Mutex<HashMap<String, Instant>>) -> Vec<String> {
    let mut seen = seen.lock().expect("seen lock");
    let now = Instant::now();
    seen.retain(|_, at| now.duration_since(*at) < ENTRY_TTL);
    let mut live: Vec<String> = seen.keys().cloned().collect();
    live.sort();
    live
}

/// The node that should own `partition`: the highest score of node and partition.
fn rendezvous(live: &[String], partition: u16) -> Option<&str> {
    live.iter()
        .max_by_key(|id| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in id.bytes().chain(partition.to_le_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            // FNV's low bits mix poorly: finish with a multiply-xorshift.
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^ (h >> 33)
        })
        .map(String::as_str)
}

fn lease_key(partition: u16) -> String {
    format!("lease.{partition}")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_partitions_and_moves_few_when_a_node_joins() {
        let two: Vec<String> = vec!["a1".into(), "b2".into()];
        let three: Vec<String> = vec!["a1".into(), "b2".into(), "c3".into()];
        let owner = |live: &[String], p| rendezvous(live, p).unwrap().to_string();
        let counts = |live: &[String]| {
            let mut c: HashMap<String, usize> = HashMap::new();
            for p in 0..64 {
                *c.entry(owner(live, p)).or_default() += 1;
            }
            c
        };
        assert!(
            counts(&three).values().all(|n| (12..=32).contains(n)),
            "{:?}",
            counts(&three)
        );
        // Only partitions moving to the new node change hands.
        for p in 0..64 {
            let after = owner(&three, p);
            assert!(after == owner(&two, p) || after == "c3");
        }
        assert_eq!(rendezvous(&[], 0), None);
    }
}
