//! The parked deliveries of the partitions this node owns, as the ledger indexes them:
//! by endpoint and seq (what a worker reads back, in order), and by lane (whether a
//! payment still has a delivery waiting, so a newer event of it queues behind).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::store::EndpointKey;

/// Where a parked delivery's record and event are.
#[derive(Debug, Clone)]
pub struct Spot {
    pub partition: u16,
    /// Events-stream sequence of the message holding the event.
    pub body_seq: u64,
    pub lane: Arc<str>,
    /// The claim that found it (0: parked on this node). A worker reads it only once
    /// it has taken in that claim's notice: reading it earlier, through another
    /// partition's notice, could pass over an older event of its payment still
    /// announced later.
    pub horizon: u64,
}

#[derive(Default)]
pub struct Index {
    rows: BTreeMap<(EndpointKey, u64), Spot>,
    lanes: HashMap<(EndpointKey, Arc<str>), usize>,
}

impl Index {
    pub fn insert(&mut self, endpoint: EndpointKey, seq: u64, spot: Spot) {
        let lane = (endpoint.clone(), spot.lane.clone());
        if self.rows.insert((endpoint, seq), spot).is_none() {
            *self.lanes.entry(lane).or_default() += 1;
        }
    }

    pub fn remove(&mut self, endpoint: &EndpointKey, seq: u64) -> Option<Spot> {
        let spot = self.rows.remove(&(endpoint.clone(), seq))?;
        let lane = (endpoint.clone(), spot.lane.clone());
        if let Some(n) = self.lanes.get_mut(&lane) {
            *n -= 1;
            if *n == 0 {
                self.lanes.remove(&lane);
            }
        }
        Some(spot)
    }

    pub fn get(&self, endpoint: &EndpointKey, seq: u64) -> Option<&Spot> {
        self.rows.get(&(endpoint.clone(), seq))
    }

    /// True while a delivery of `lane` to `endpoint` is parked.
    pub fn has_lane(&self, endpoint: &EndpointKey, lane: &str) -> bool {
        self.lanes
            .contains_key(&(endpoint.clone(), Arc::from(lane)))
    }

    /// Up to `limit` rows of `endpoint` from `from` on that a worker having taken in
    /// notices up to `horizon` may read, as `(seq, spot)`; and whether that is all.
    pub fn page(
        &self,
        endpoint: &EndpointKey,
        from: u64,
        limit: usize,
        horizon: u64,
    ) -> (Vec<(u64, Spot)>, bool) {
        let mut rows = Vec::new();
        for ((ep, seq), spot) in self.rows.range((endpoint.clone(), from)..) {
            if ep != endpoint {
                break;
            }
            if spot.horizon > horizon {
                continue;
            }
            if rows.len() >= limit {
                return (rows, false);
            }
            rows.push((*seq, spot.clone()));
        }
        (rows, true)
    }

    /// Forgets every row of `partition` (released).
    pub fn drop_partition(&mut self, partition: u16) {
        let gone: Vec<(EndpointKey, u64)> = self
            .rows
            .iter()
            .filter(|(_, s)| s.partition == partition)
            .map(|(k, _)| k.clone())
            .collect();
        for (endpoint, seq) in gone {
            self.remove(&endpoint, seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spot(lane: &str, horizon: u64) -> Spot {
        Spot {
            partition: 1,
            body_seq: 0,
            lane: lane.into(),
            horizon,
        }
    }

    #[test]
    fn lanes_count_their_rows_and_pages_respect_the_horizon() {
        let (a, b) = (EndpointKey::new(1, "a"), EndpointKey::new(1, "b"));
        let mut p = Index::default();
        p.insert(a.clone(), 31, spot("1/pay-0", 2));
        p.insert(a.clone(), 41, spot("1/pay-0", 1));
        p.insert(b.clone(), 31, spot("1/pay-0", 0));
        assert!(p.has_lane(&a, "1/pay-0"));
        // A worker that has taken in claim 1 only does not see claim 2's row yet.
        let (rows, complete) = p.page(&a, 0, 10, 1);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [41]);
        assert!(complete);
        let (rows, complete) = p.page(&a, 0, 1, 2);
        assert_eq!((rows.len(), complete), (1, false));
        p.remove(&a, 31);
        p.remove(&a, 41);
        assert!(!p.has_lane(&a, "1/pay-0"));
        assert!(p.has_lane(&b, "1/pay-0"));
        p.drop_partition(1);
        assert!(p.get(&b, 31).is_none());
    }
}
