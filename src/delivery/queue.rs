//! One endpoint's in-memory queue: a FIFO lane per order key (payment), and a timer
//! set holding only lane heads, so a retrying head holds back its own payment and
//! nothing else.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use super::attempt::State;
use crate::store::Event;

/// A pending delivery held in memory.
#[derive(Debug)]
pub struct Job {
    pub event: Arc<Event>,
    pub state: State,
    pub due: Instant,
}

#[derive(Debug, Default)]
pub struct Queue {
    lanes: HashMap<String, VecDeque<Job>>,
    /// `(due, seq)` of every lane head that waits for its time (not in flight).
    timers: BTreeSet<(Instant, u64)>,
    /// Every seq in memory → its lane.
    index: HashMap<u64, String>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.index.contains_key(&seq)
    }

    /// Puts `job` in its lane in acceptance (seq) order; it waits for the jobs before
    /// it. An earlier event can reach memory after a later one of its payment (read
    /// back from the store while the later one arrived fresh): it goes first, ahead of
    /// a head that waits, or right behind a head already in flight.
    pub fn push(&mut self, job: Job) {
        let seq = job.event.seq;
        if self.index.contains_key(&seq) {
            return;
        }
        let key = job.event.order_key.clone();
        let lane = self.lanes.entry(key.clone()).or_default();
        let at = lane
            .iter()
            .position(|j| j.event.seq > seq)
            .unwrap_or(lane.len());
        if at == 0 {
            match lane.front() {
                None => {
                    self.timers.insert((job.due, seq));
                    lane.push_back(job);
                }
                Some(head) if self.timers.remove(&(head.due, head.event.seq)) => {
                    self.timers.insert((job.due, seq));
                    lane.push_front(job);
                }
                Some(_) => lane.insert(1, job),
            }
        } else {
            lane.insert(at, job);
        }
        self.index.insert(seq, key);
    }

    /// The earliest waiting head: `(due, seq)`.
    pub fn next_due(&self) -> Option<(Instant, u64)> {
        self.timers.first().copied()
    }

    /// Takes the head `seq` off the timers (it goes in flight); it stays at the head
    /// of its lane until `finish` or `reschedule`.
    pub fn start(&mut self, seq: u64) -> Option<&Job> {
        let key = self.index.get(&seq)?;
        let job = self
            .lanes
            .get(key)?
            .front()
            .filter(|j| j.event.seq == seq)?;
        self.timers.remove(&(job.due, seq));
        Some(job)
    }

    /// The head `seq` is done (delivered or dead, in flight or not): its lane's next
    /// job becomes due.
    pub fn finish(&mut self, seq: u64) -> Option<Job> {
        let key = self.index.remove(&seq)?;
        let lane = self.lanes.get_mut(&key)?;
        debug_assert_eq!(lane.front().map(|j| j.event.seq), Some(seq));
        let job = lane.pop_front();
        if let Some(job) = &job {
            self.timers.remove(&(job.due, seq));
        }
        match lane.front() {
            Some(next) => {
                self.timers.insert((next.due, next.event.seq));
            }
            None => {
                self.lanes.remove(&key);
            }
        }
        job
    }

    /// The head `seq` waits until `due` again, with `state` (when it changed).
    pub fn reschedule(&mut self, seq: u64, due: Instant, state: Option<State>) {
        let Some(key) = self.index.get(&seq) else {
            return;
        };
        let Some(job) = self.lanes.get_mut(key).and_then(|l| l.front_mut()) else {
            return;
        };
        self.timers.remove(&(job.due, seq));
        job.due = due;
        if let Some(state) = state {
            job.state = state;
        }
        self.timers.insert((due, seq));
    }

    /// The head `seq` of its lane.
    pub fn job(&self, seq: u64) -> Option<&Job> {
        let key = self.index.get(&seq)?;
        self.lanes.get(key)?.front().filter(|j| j.event.seq == seq)
    }

    /// Drops every lane of these partitions (a lane is one order key, so one
    /// partition); returns how many jobs went.
    pub fn drop_partitions(&mut self, partitions: &[u16]) -> usize {
        let mut dropped = 0;
        self.lanes.retain(|_, lane| {
            let gone = lane
                .front()
                .is_some_and(|j| partitions.contains(&j.event.partition));
            if gone {
                for job in lane.iter() {
                    self.index.remove(&job.event.seq);
                    self.timers.remove(&(job.due, job.event.seq));
                }
                dropped += lane.len();
            }
            !gone
        });
        dropped
    }

    /// Acceptance time of the oldest event in memory (lane heads are the oldest of
    /// their lanes).
    pub fn oldest_accepted_ms(&self) -> Option<u64> {
        self.lanes
            .values()
            .filter_map(|l| l.front())
            .map(|j| j.event.accepted_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::DedupKey;
    use bytes::Bytes;
    use std::time::Duration;

    fn job(seq: u64, key: &str, due: Instant) -> Job {
        Job {
            event: Arc::new(Event {
                seq,
                accepted_ms: seq,
                project: 1,
                dedup: DedupKey(seq as u128),
                order_key: key.into(),
                partition: 0,
                endpoints: vec![crate::store::EndpointKey::new(1, "a")],
                body: Bytes::new(),
            }),
            state: State::default(),
            due,
        }
    }

    #[test]
    fn a_retrying_head_holds_back_its_payment_only() {
        let t = Instant::now();
        let mut q = Queue::default();
        q.push(job(1, "p/A", t));
        q.push(job(2, "p/B", t));
        q.push(job(3, "p/A", t));
        q.push(job(4, "p/B", t));
        assert_eq!(q.len(), 4);
        // Both heads are due; A's later event is not.
        assert_eq!(q.next_due(), Some((t, 1)));
        q.start(1);
        assert_eq!(q.next_due(), Some((t, 2)));
        q.start(2);
        assert_eq!(q.next_due(), None, "seq 3 and 4 wait behind their heads");
        // A fails and retries later; B succeeds and its next event is due at once.
        q.reschedule(1, t + Duration::from_secs(5), None);
        q.finish(2);
        assert_eq!(q.next_due(), Some((t, 4)));
        q.start(4);
        q.finish(4);
        assert_eq!(q.next_due(), Some((t + Duration::from_secs(5), 1)));
        q.start(1);
        assert_eq!(q.finish(1).map(|j| j.event.seq), Some(1));
        assert_eq!(q.next_due(), Some((t, 3)));
        assert_eq!(q.oldest_accepted_ms(), Some(3));
        q.start(3);
        q.finish(3);
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn a_head_finished_while_waiting_leaves_the_timers() {
        // A dead letter taken off while its circuit is open was never started.
        let t = Instant::now();
        let mut q = Queue::default();
        q.push(job(1, "p/A", t));
        q.push(job(2, "p/B", t + Duration::from_secs(1)));
        q.finish(1);
        assert_eq!(q.next_due(), Some((t + Duration::from_secs(1), 2)));
        assert!(q.start(1).is_none());
    }

    #[test]
    fn an_earlier_event_arriving_late_goes_before_a_waiting_head_and_behind_one_in_flight() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.push(job(3, "p", now));
        q.push(job(2, "p", now));
        assert_eq!(q.next_due(), Some((now, 2)));
        q.start(2).unwrap();
        q.push(job(1, "p", now));
        q.push(job(4, "p", now));
        assert_eq!(
            q.next_due(),
            None,
            "2 is in flight: nothing else of p is due"
        );
        q.finish(2).unwrap();
        let order: Vec<u64> = std::iter::from_fn(|| {
            let (_, seq) = q.next_due()?;
            q.finish(seq).map(|j| j.event.seq)
        })
        .collect();
        assert_eq!(order, [1, 3, 4]);
    }

    #[test]
    fn a_seq_already_held_is_not_queued_twice() {
        let t = Instant::now();
        let mut q = Queue::default();
        q.push(job(7, "p/A", t));
        q.push(job(7, "p/A", t));
        assert_eq!(q.len(), 1);
        assert!(q.contains(7));
    }
}
