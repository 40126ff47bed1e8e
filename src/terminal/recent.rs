//! check_deposit answers remembered by the SHA-256 of the request body, shared by every
//! HTTP thread: for the idempotency window, and at most `max` of them, the oldest
//! dropped first. Expiry follows the order of arrival, so each request does O(1) work.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::{DashMap, mapref::entry::Entry};
use tokio::sync::OnceCell;

use crate::metrics as m;

/// Filled once with the merchant's answer (`None`: not definitive, not kept).
pub type Slot<T> = Arc<OnceCell<Option<T>>>;

pub struct Recent<T> {
    map: DashMap<[u8; 32], (Instant, Slot<T>)>,
    /// Every slot made, oldest first, by the instant that names it in `map`.
    order: Mutex<VecDeque<(Instant, [u8; 32])>>,
    window: Duration,
    max: usize,
}

impl<T> Recent<T> {
    pub fn new(window: Duration, max: usize) -> Self {
        Recent {
            map: DashMap::new(),
            order: Mutex::default(),
            window,
            max: max.max(1),
        }
    }

    /// The slot for `key`: the remembered one, or a new one when there is none in the
    /// window.
    pub fn slot(&self, key: [u8; 32], now: Instant) -> Slot<T> {
        let (slot, made) = match self.map.entry(key) {
            Entry::Occupied(mut e) if now.duration_since(e.get().0) >= self.window => {
                let slot = Arc::new(OnceCell::new());
                e.insert((now, slot.clone()));
                (slot, true)
            }
            Entry::Occupied(e) => (e.get().1.clone(), false),
            Entry::Vacant(e) => {
                let slot = Arc::new(OnceCell::new());
                e.insert((now, slot.clone()));
                (slot, true)
            }
        };
        if made {
            self.expire(key, now);
        }
        slot
    }

    /// Records the new slot and drops what fell out of the window or over the bound.
    fn expire(&self, key: [u8; 32], now: Instant) {
        let mut order = self.order.lock().expect("recent order lock");
        order.push_back((now, key));
        while let Some(&(at, old)) = order.front() {
            let expired = now.duration_since(at) >= self.window;
            if !expired && order.len() <= self.max {
                break;
            }
            order.pop_front();
            // Only the slot made at `at`: a key asked again later has a newer one.
            let dropped = self.map.remove_if(&old, |_, (made, _)| *made == at);
            if dropped.is_some() && !expired {
                metrics::counter!(m::TERMINAL_IDEMPOTENCY_EVICTIONS_TOTAL).increment(1);
            }
        }
    }

    /// Forgets `slot` if it is still the one for `key` (its answer was not definitive).
    pub fn forget(&self, key: &[u8; 32], slot: &Slot<T>) {
        self.map.remove_if(key, |_, (_, s)| Arc::ptr_eq(s, slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> [u8; 32] {
        [i; 32]
    }

    #[test]
    fn a_body_gets_its_slot_again_within_the_window_and_a_new_one_after() {
        let r = Recent::<u32>::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let first = r.slot(key(1), t0);
        assert!(Arc::ptr_eq(
            &first,
            &r.slot(key(1), t0 + Duration::from_secs(9))
        ));
        let later = r.slot(key(1), t0 + Duration::from_secs(10));
        assert!(!Arc::ptr_eq(&first, &later));
        // The old slot's queue record no longer removes the new slot.
        r.slot(key(2), t0 + Duration::from_secs(12));
        assert!(Arc::ptr_eq(
            &later,
            &r.slot(key(1), t0 + Duration::from_secs(13))
        ));
        assert_eq!(r.map.len(), 2);
    }

    #[test]
    fn expired_slots_go_and_the_bound_drops_the_oldest() {
        let r = Recent::<u32>::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for i in 0..3 {
            r.slot(key(i), t0 + Duration::from_secs(i as u64));
        }
        // Over the bound: the oldest goes although it is still in the window.
        r.slot(key(3), t0 + Duration::from_secs(3));
        assert_eq!(r.map.len(), 3);
        let again = r.slot(key(1), t0 + Duration::from_secs(4));
        assert!(r.map.get(&key(0)).is_none());
        assert!(Arc::ptr_eq(&again, &r.map.get(&key(1)).unwrap().1));
        // Past the window every old slot goes with the next new one.
        r.slot(key(9), t0 + Duration::from_secs(30));
        assert_eq!(r.map.len(), 1);
    }

    #[test]
    fn a_forgotten_slot_is_made_again() {
        let r = Recent::<u32>::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        let first = r.slot(key(1), t0);
        r.forget(&key(1), &first);
        assert!(r.map.is_empty());
        let second = r.slot(key(1), t0 + Duration::from_secs(1));
        assert!(!Arc::ptr_eq(&first, &second));
    }
}
