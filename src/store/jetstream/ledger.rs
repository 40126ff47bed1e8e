//! The deliveries of the partitions this node owns: one task (an actor) that reads
//! each owned partition's messages in order, hands events to the delivery engine, and
//! makes every outcome durable in JetStream.
//!
//! A message of a partition is **open** until each of its endpoints is done, dead or
//! parked; then it is **settled**. A delivery is in one of two places:
//! - **held**: in this node's memory only (first attempts, or waiting behind an earlier
//!   event of its payment). Its message is open.
//! - **parked**: a record `dlv.<partition>.<seq>.<endpoint>` holds its attempt log and
//!   where its body is. A failed attempt parks at once, and so does a delivery the
//!   worker has no room for (`defer`); one held longer than `PARK_AFTER` is parked as
//!   it stands.
//!
//! Each partition's **cursor** (`cursor.rs`: everything settled up to a watermark,
//! and what is settled above it) is written to the cursors bucket when it moved, at
//! most every `SAVE_EVERY` and one write at a time. A node that takes a partition over reads its parked records and resumes
//! from the cursor: a message open when its owner died is handled again (a duplicate
//! only for a delivery that was in flight), nothing settled is. Why not a durable
//! consumer acked per message: its per-message state is replicated in one Raft group
//! per partition, and at 64 partitions that cut intake on R3 from 5,686 to 412
//! publishes/s on this machine (BENCHMARKS.md); ordered consumers keep no such state.
//!
//! Order per payment: a worker takes a payment's deliveries in seq order, from the
//! partition or from the records. An event whose payment still has a delivery parked
//! at an endpoint is parked there too, behind it; and a worker reads the records a
//! claim found only once it has that claim's notice (`Spot::horizon`).
//!
//! Writes to one subject go out in the order they were made, on one connection: a
//! record and its later removal cannot be swapped. `flush` answers once every write
//! made before it was acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::cursor::Cursor;
use super::names::{self, Names};
use super::parked::{Index, Spot};
use super::read;
use super::record::{self, Parked};
use super::setup::{REQUEST_TIMEOUT, Streams};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::store::{
    EndpointKey, Event, Notice, Quarantined, Settle, StoreError, report_quarantined,
};

/// A delivery held this long without an outcome is parked, so its message settles.
const PARK_AFTER: Duration = Duration::from_secs(2);

/// A partition's cursor is written at most this often: what settled since its last
/// write is handled again after a crash.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// Open messages one partition may have in memory; its reading waits beyond.
const OPEN_PER_PARTITION: usize = 512;

/// Header on the marker that replaces a delivery record once the delivery is done.
const DONE: &str = "Cbgate-Done";

enum Cmd {
    Claim {
        partition: u16,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Scanned {
        partition: u16,
        cursor: Cursor,
        rows: Vec<(u64, EndpointKey, Parked)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Release {
        partition: u16,
        graceful: bool,
        reply: oneshot::Sender<()>,
    },
    /// The release's parks are written: write the cursor, then forget the partition.
    Parked {
        partition: u16,
        reply: oneshot::Sender<()>,
    },
    Forget {
        partition: u16,
        reply: oneshot::Sender<()>,
    },
    Message {
        partition: u16,
        msg: Box<jetstream::Message>,
        permit: OwnedSemaphorePermit,
    },
    Settle {
        event: Arc<Event>,
        endpoint: EndpointKey,
        outcome: Settle,
    },
    Defer {
        seq: u64,
        endpoint: EndpointKey,
    },
    Written {
        id: u64,
        ok: bool,
        then: Then,
    },
    Flush(oneshot::Sender<()>),
    Pending {
        endpoint: EndpointKey,
        from: u64,
        limit: usize,
        horizon: u64,
        reply: oneshot::Sender<ParkedPage>,
    },
    Tick,
    Save,
}

/// Parked deliveries of one endpoint as `(seq, spot)`, and whether that is all of them.
pub type ParkedPage = (Vec<(u64, Spot)>, bool);

/// What a write's success means.
enum Then {
    Nothing,
    /// `endpoint`'s delivery of held `seq` is recorded: it no longer needs the message.
    Recorded {
        seq: u64,
        endpoint: EndpointKey,
    },
    /// A replay's delivery record is written: drop its dead letter; the replay message
    /// (`body_seq`) is settled.
    Replayed {
        partition: u16,
        body_seq: u64,
        seq: u64,
        endpoint: EndpointKey,
        permit: OwnedSemaphorePermit,
    },
    /// A quarantine record is written (or failed): message `seq` is settled.
    Quarantined {
        partition: u16,
        seq: u64,
    },
    /// A partition's cursor is written (or, failing, still to write).
    Cursor {
        partition: u16,
    },
}

/// An open event message and the endpoints that still need it.
struct Held {
    partition: u16,
    lane: Arc<str>,
    since: Instant,
    /// Each endpoint still to settle, with its latest attempt log (empty: none yet).
    outstanding: HashMap<EndpointKey, Vec<u8>>,
    /// Endpoints whose record is being written.
    writing: HashSet<EndpointKey>,
    /// Its place among the partition's open messages.
    _permit: OwnedSemaphorePermit,
}

/// A partition this node delivers.
struct Owned {
    reader: Option<JoinHandle<()>>,
    cursor: Cursor,
    /// A write of the cursor is under way.
    saving: bool,
    /// Handing over: outcomes from workers no longer count, the parks of the handover do.
    releasing: bool,
}

/// The ledger's handle.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::UnboundedSender<Cmd>,
}

struct Actor {
    tx: mpsc::UnboundedSender<Cmd>,
    js: jetstream::Context,
    streams: Arc<Streams>,
    names: Names,
    owned: HashMap<u16, Owned>,
    held: HashMap<u64, Held>,
    /// Deliveries held, over all held messages.
    outstanding: usize,
    parked: Index,
    /// Claims so far: each claim's notices carry its number (`Spot::horizon`).
    claims: u64,
    next_write: u64,
    writing: BTreeSet<u64>,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    arrivals: crossbeam_channel::Sender<Arc<Event>>,
    notices: mpsc::UnboundedSender<Notice>,
}

impl Ledger {
    pub fn start(
        js: jetstream::Context,
        streams: Arc<Streams>,
        names: Names,
        arrivals: crossbeam_channel::Sender<Arc<Event>>,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Ledger {
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            tx: tx.clone(),
            js,
            streams,
            names,
            owned: HashMap::new(),
            held: HashMap::new(),
            outstanding: 0,
            parked: Index::default(),
            claims: 0,
            next_write: 0,
            writing: BTreeSet::new(),
            flushes: Vec::new(),
            arrivals,
            notices,
        };
        tokio::spawn(actor.run(rx));
        let ticks: [(Duration, fn() -> Cmd); 2] =
            [(PARK_AFTER / 4, || Cmd::Tick), (SAVE_EVERY, || Cmd::Save)];
        for (every, cmd) in ticks {
            let ticker = tx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if ticker.send(cmd()).is_err() {
                        return;
                    }
                }
            });
        }
        Ledger { tx }
    }

    /// Starts delivering `partition` (its lease is this node's): reads its cursor and
    /// parked deliveries, then its messages from the cursor on.
    pub async fn claim(&self, partition: u16) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Claim { partition, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops delivering `partition`. `graceful`: park what is held and write the cursor
    /// first, so the next owner starts where this one stopped; otherwise (the lease is
    /// lost) just forget it.
    pub async fn release(&self, partition: u16, graceful: bool) {
        let (reply, rx) = oneshot::channel();
        if self
            .send(Cmd::Release {
                partition,
                graceful,
                reply,
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    pub fn settle(
        &self,
        event: &Arc<Event>,
        endpoint: &EndpointKey,
        outcome: Settle,
    ) -> Result<(), StoreError> {
        self.send(Cmd::Settle {
            event: event.clone(),
            endpoint: endpoint.clone(),
            outcome,
        })
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Flush(reply))?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Up to `limit` parked deliveries of `endpoint` from `from` on that a worker
    /// which took in notices up to `horizon` may read, and whether that is all.
    pub async fn parked(
        &self,
        endpoint: EndpointKey,
        from: u64,
        limit: usize,
        horizon: u64,
    ) -> Result<ParkedPage, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Pending {
            endpoint,
            from,
            limit,
            horizon,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// The worker of `endpoint` has no room for held `seq`: park it now, so its next
    /// read of the store finds it.
    pub fn defer(&self, event: &Event, endpoint: &EndpointKey) -> Result<(), StoreError> {
        self.send(Cmd::Defer {
            seq: event.seq,
            endpoint: endpoint.clone(),
        })
    }

    fn send(&self, cmd: Cmd) -> Result<(), StoreError> {
        self.tx.send(cmd).map_err(|_| StoreError::Closed)
    }
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let held = metrics::gauge!(m::STORE_HELD_DELIVERIES);
        let unsaved = metrics::gauge!(m::STORE_UNSAVED_CURSORS);
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Claim { partition, reply } => self.claim(partition, reply),
                Cmd::Scanned {
                    partition,
                    cursor,
                    rows,
                    reply,
                } => self.scanned(partition, cursor, rows, reply),
                Cmd::Release {
                    partition,
                    graceful,
                    reply,
                } => self.release(partition, graceful, reply).await,
                Cmd::Parked { partition, reply } => {
                    if let Some(o) = self.owned.get(&partition) {
                        let record = o.cursor.encode();
                        self.write_cursor(partition, record).await;
                    }
                    self.after_writes(Cmd::Forget { partition, reply });
                }
                Cmd::Forget { partition, reply } => {
                    self.forget(partition);
                    let _ = reply.send(());
                }
                Cmd::Message {
                    partition,
                    msg,
                    permit,
                } => self.arrive(partition, *msg, permit).await,
                Cmd::Settle {
                    event,
                    endpoint,
                    outcome,
                } => self.settle(event, endpoint, outcome).await,
                Cmd::Defer { seq, endpoint } => self.park(seq, Some(&endpoint)).await,
                Cmd::Written { id, ok, then } => self.written(id, ok, then).await,
                Cmd::Flush(reply) => {
                    let upto = self.next_write;
                    self.flushes.push((upto, reply));
                    self.answer_flushes();
                }
                Cmd::Pending {
                    endpoint,
                    from,
                    limit,
                    horizon,
                    reply,
                } => {
                    let _ = reply.send(self.parked.page(&endpoint, from, limit, horizon));
                }
                Cmd::Tick => self.park_stale().await,
                Cmd::Save => self.write_cursors().await,
            }
            // Exact after every step: a test may wait for them to reach zero.
            held.set(self.outstanding as f64);
            let moved = self.owned.values().filter(|o| o.cursor.dirty || o.saving);
            unsaved.set(moved.count() as f64);
        }
    }

    /// True while this node delivers `partition` (not handing it over).
    fn delivers(&self, partition: u16) -> bool {
        self.owned.get(&partition).is_some_and(|o| !o.releasing)
    }

    fn claim(&mut self, partition: u16, reply: oneshot::Sender<Result<(), StoreError>>) {
        if self.owned.contains_key(&partition) {
            let _ = reply.send(Ok(()));
            return;
        }
        self.owned.insert(
            partition,
            Owned {
                reader: None,
                cursor: Cursor::default(),
                saving: false,
                releasing: false,
            },
        );
        let (tx, streams) = (self.tx.clone(), self.streams.clone());
        tokio::spawn(async move {
            let found = async {
                let cursor = read_cursor(&streams, partition).await?;
                let rows = scan(&streams.deliveries, partition).await?;
                Ok::<_, StoreError>((cursor, rows))
            };
            match found.await {
                Ok((cursor, rows)) => {
                    let _ = tx.send(Cmd::Scanned {
                        partition,
                        cursor,
                        rows,
                        reply,
                    });
                }
                Err(e) => {
                    // Not claimed after all: the owner tries again on its next round.
                    let _ = tx.send(Cmd::Forget {
                        partition,
                        reply: oneshot::channel().0,
                    });
                    let _ = reply.send(Err(e));
                }
            }
        });
    }

    fn scanned(
        &mut self,
        partition: u16,
        cursor: Cursor,
        rows: Vec<(u64, EndpointKey, Parked)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    ) {
        let Some(owned) = self
            .owned
            .get_mut(&partition)
            .filter(|o| o.reader.is_none() && !o.releasing)
        else {
            let _ = reply.send(Err(StoreError::Unavailable(format!(
                "partition {partition} released during its claim"
            ))));
            return;
        };
        let start = cursor.watermark + 1;
        owned.cursor = cursor;
        owned.reader = Some(tokio::spawn(read(
            self.streams.events.clone(),
            partition,
            start,
            self.tx.clone(),
        )));
        self.claims += 1;
        let horizon = self.claims;
        let mut found: BTreeMap<EndpointKey, (u64, u64)> = BTreeMap::new();
        for (seq, endpoint, record) in rows {
            let slot = found.entry(endpoint.clone()).or_insert((seq, 0));
            slot.0 = slot.0.min(seq);
            slot.1 += 1;
            let spot = Spot {
                partition,
                body_seq: record.body_seq,
                lane: record.lane.into(),
                horizon,
            };
            self.parked.insert(endpoint, seq, spot);
        }
        let parked: u64 = found.values().map(|(_, n)| n).sum();
        tracing::info!(partition, parked, from = start, "partition claimed");
        for (endpoint, (from, added)) in found {
            let _ = self.notices.send(Notice::Rescan {
                endpoint,
                from,
                added,
                horizon,
            });
        }
        let _ = reply.send(Ok(()));
    }

    async fn release(&mut self, partition: u16, graceful: bool, reply: oneshot::Sender<()>) {
        let Some(owned) = self.owned.get_mut(&partition) else {
            let _ = reply.send(());
            return;
        };
        owned.releasing = true;
        if let Some(reader) = owned.reader.take() {
            reader.abort();
        }
        let _ = self.notices.send(Notice::Release {
            partitions: vec![partition],
        });
        tracing::info!(partition, graceful, "partition released");
        if !graceful {
            // Another node may own it already: nothing more is written for it.
            self.forget(partition);
            let _ = reply.send(());
            return;
        }
        // Park what is held, then write the cursor: the next owner starts where this
        // one stopped, with nothing handled twice.
        for seq in self.held_of(partition) {
            self.park(seq, None).await;
        }
        self.after_writes(Cmd::Parked { partition, reply });
    }

    /// Sends `cmd` to the actor once every write made so far is acknowledged.
    fn after_writes(&mut self, cmd: Cmd) {
        let (done, wait) = oneshot::channel();
        self.flushes.push((self.next_write, done));
        self.answer_flushes();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = wait.await;
            let _ = tx.send(cmd);
        });
    }

    /// The messages of `partition` in hand.
    fn held_of(&self, partition: u16) -> Vec<u64> {
        self.held
            .iter()
            .filter(|(_, h)| h.partition == partition)
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Drops everything of `partition` from memory.
    fn forget(&mut self, partition: u16) {
        if let Some(owned) = self.owned.remove(&partition)
            && let Some(reader) = owned.reader
        {
            reader.abort();
        }
        for seq in self.held_of(partition) {
            if let Some(h) = self.held.remove(&seq) {
                self.outstanding -= h.outstanding.len();
            }
        }
        self.parked.drop_partition(partition);
    }

    /// `seq` of `partition` needs nothing more: its cursor moves.
    fn settled(&mut self, partition: u16, seq: u64) {
        if let Some(owned) = self.owned.get_mut(&partition) {
            owned.cursor.settle(seq);
        }
    }

    async fn arrive(
        &mut self,
        partition: u16,
        msg: jetstream::Message,
        permit: OwnedSemaphorePermit,
    ) {
        if !self.delivers(partition) {
            return;
        }
        let seq = match msg.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => {
                tracing::error!(error = %e, "jetstream message without delivery info; skipped");
                return;
            }
        };
        let cursor = &mut self.owned.get_mut(&partition).expect("delivered").cursor;
        if cursor.is_settled(seq) || self.held.contains_key(&seq) {
            // Settled before this node took over, or already in hand.
            return;
        }
        cursor.receive(seq);
        let subject = msg.subject.to_string();
        if subject.starts_with("rp.") {
            self.replayed(partition, seq, &subject, msg.message.payload, permit)
                .await;
            return;
        }
        let mut event = match record::decode_event(seq, &msg.message.payload) {
            Ok(event) => event,
            Err(e) => {
                let raw = msg.message.payload.to_vec();
                self.quarantine(partition, seq, e.to_string(), Vec::new(), raw)
                    .await;
                return;
            }
        };
        event.partition = partition;
        // Deliveries a previous owner parked are read from their records instead.
        event
            .endpoints
            .retain(|ep| self.parked.get(ep, seq).is_none());
        if event.endpoints.is_empty() {
            self.settled(partition, seq);
            return;
        }
        // Where an older event of this payment still waits in the store, this one
        // queues behind it there: handed over now, it could overtake.
        let (behind, now): (Vec<EndpointKey>, Vec<EndpointKey>) = event
            .endpoints
            .iter()
            .cloned()
            .partition(|ep| self.parked.has_lane(ep, &event.order_key));
        self.outstanding += event.endpoints.len();
        let lane: Arc<str> = event.order_key.as_str().into();
        self.held.insert(
            seq,
            Held {
                partition,
                lane,
                since: Instant::now(),
                outstanding: event
                    .endpoints
                    .iter()
                    .map(|e| (e.clone(), Vec::new()))
                    .collect(),
                writing: HashSet::new(),
                _permit: permit,
            },
        );
        for endpoint in behind {
            self.park(seq, Some(&endpoint)).await;
            let _ = self.notices.send(Notice::Rescan {
                endpoint,
                from: seq,
                added: 1,
                horizon: 0,
            });
        }
        if !now.is_empty() {
            event.endpoints = now;
            let _ = self.arrivals.send(Arc::new(event));
        }
    }

    /// A replayed dead letter: parked with its new round, then announced.
    async fn replayed(
        &mut self,
        partition: u16,
        body_seq: u64,
        subject: &str,
        payload: Bytes,
        permit: OwnedSemaphorePermit,
    ) {
        let Some((_, seq, endpoint)) = names::parse_delivery(subject) else {
            let reason = format!("replay message on unknown subject {subject}");
            self.quarantine(partition, body_seq, reason, Vec::new(), payload.to_vec())
                .await;
            return;
        };
        let (state, event) = match record::decode_kept(seq, &payload) {
            Ok(kept) => kept,
            Err(e) => {
                let endpoints = vec![endpoint.to_string()];
                self.quarantine(
                    partition,
                    body_seq,
                    e.to_string(),
                    endpoints,
                    payload.to_vec(),
                )
                .await;
                return;
            }
        };
        let spot = Spot {
            partition,
            body_seq,
            lane: event.order_key.as_str().into(),
            horizon: 0,
        };
        self.parked.insert(endpoint.clone(), seq, spot);
        let parked = Parked {
            body_seq,
            lane: event.order_key,
            state,
        };
        let subject = names::delivery_subject(partition, seq, &endpoint);
        self.write(
            subject,
            parked.encode(),
            None,
            Then::Replayed {
                partition,
                body_seq,
                seq,
                endpoint,
                permit,
            },
        )
        .await;
    }

    async fn settle(&mut self, event: Arc<Event>, endpoint: EndpointKey, outcome: Settle) {
        let (seq, partition) = (event.seq, event.partition);
        if !self.delivers(partition) {
            // Released: the node that owns it now decides.
            return;
        }
        let held = self
            .held
            .get_mut(&seq)
            .filter(|h| h.outstanding.contains_key(&endpoint));
        let is_held = held.is_some();
        let spot = self.parked.get(&endpoint, seq).cloned();
        let subject = names::delivery_subject(partition, seq, &endpoint);
        let then = || Then::Recorded {
            seq,
            endpoint: endpoint.clone(),
        };
        match outcome {
            Settle::Done => {
                // A record may exist (a retry, a park), or be on its way: end it after.
                if spot.is_some() || !is_held || held.is_some_and(|h| h.writing.contains(&endpoint))
                {
                    self.parked.remove(&endpoint, seq);
                    self.write(subject, Bytes::new(), Some(done_marker()), Then::Nothing)
                        .await;
                }
                if is_held {
                    self.recorded(seq, &endpoint);
                }
            }
            Settle::Retry(state) => {
                if let Some(h) = held {
                    h.outstanding.insert(endpoint.clone(), state.clone());
                    h.writing.insert(endpoint.clone());
                }
                let body_seq = spot.as_ref().map_or(seq, |s| s.body_seq);
                let spot = Spot {
                    partition,
                    body_seq,
                    lane: event.order_key.as_str().into(),
                    horizon: 0,
                };
                self.parked.insert(endpoint.clone(), seq, spot);
                let then = if is_held { then() } else { Then::Nothing };
                let record = Parked {
                    body_seq,
                    lane: event.order_key.clone(),
                    state,
                };
                self.write(subject, record.encode(), None, then).await;
            }
            Settle::Dead(state) => {
                if let Some(h) = held {
                    h.writing.insert(endpoint.clone());
                }
                let then = if is_held { then() } else { Then::Nothing };
                let kept = record::encode_kept(&state, &event);
                self.write(names::dead_subject(seq, &endpoint), kept, None, then)
                    .await;
                if self.parked.remove(&endpoint, seq).is_some() {
                    self.write(subject, Bytes::new(), Some(done_marker()), Then::Nothing)
                        .await;
                }
            }
        }
    }

    /// Message `seq` of `partition` cannot be delivered by any node: kept as found under
    /// `qr.<seq>` (`GET /admin/quarantine`), then settled so the partition moves on.
    /// Settled even if the record is not written: the message stays in the events
    /// stream for the dedup window, and the error is counted and logged.
    async fn quarantine(
        &mut self,
        partition: u16,
        seq: u64,
        reason: String,
        endpoints: Vec<String>,
        raw: Vec<u8>,
    ) {
        metrics::counter!(m::STORE_MALFORMED_TOTAL).increment(1);
        let record = Quarantined {
            seq,
            at_ms: now_ms(),
            reason,
            endpoints,
            raw,
        };
        report_quarantined(&record);
        let payload = record::encode_quarantined(&record);
        let then = Then::Quarantined { partition, seq };
        self.write(names::quarantine_subject(seq), payload, None, then)
            .await;
    }

    /// `endpoint` no longer needs held `seq`; the message settles once none does.
    fn recorded(&mut self, seq: u64, endpoint: &EndpointKey) {
        let Some(held) = self.held.get_mut(&seq) else {
            return;
        };
        if held.outstanding.remove(endpoint).is_some() {
            self.outstanding -= 1;
        }
        held.writing.remove(endpoint);
        if held.outstanding.is_empty()
            && let Some(held) = self.held.remove(&seq)
        {
            self.settled(held.partition, seq);
        }
    }

    /// Parks the outstanding deliveries of held `seq` as they stand (`only` one of them).
    async fn park(&mut self, seq: u64, only: Option<&EndpointKey>) {
        let Some(held) = self.held.get_mut(&seq) else {
            return;
        };
        let (partition, lane) = (held.partition, held.lane.clone());
        let todo: Vec<(EndpointKey, Vec<u8>)> = held
            .outstanding
            .iter()
            .filter(|(ep, _)| !held.writing.contains(*ep) && only.is_none_or(|o| o == *ep))
            .map(|(ep, state)| (ep.clone(), state.clone()))
            .collect();
        for (endpoint, state) in todo {
            if let Some(held) = self.held.get_mut(&seq) {
                held.writing.insert(endpoint.clone());
            }
            let spot = Spot {
                partition,
                body_seq: seq,
                lane: lane.clone(),
                horizon: 0,
            };
            self.parked.insert(endpoint.clone(), seq, spot);
            let subject = names::delivery_subject(partition, seq, &endpoint);
            let parked = Parked {
                body_seq: seq,
                lane: lane.to_string(),
                state,
            };
            self.write(
                subject,
                parked.encode(),
                None,
                Then::Recorded { seq, endpoint },
            )
            .await;
        }
    }

    async fn park_stale(&mut self) {
        let now = Instant::now();
        let stale: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) >= PARK_AFTER)
            .filter(|(_, h)| h.outstanding.len() > h.writing.len())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in stale {
            self.park(seq, None).await;
        }
    }

    /// Writes the cursor of every delivered partition that moved.
    async fn write_cursors(&mut self) {
        let moved: Vec<(u16, Vec<u8>)> = self
            .owned
            .iter_mut()
            .filter(|(_, o)| o.cursor.dirty && !o.saving && !o.releasing && o.reader.is_some())
            .map(|(p, o)| {
                o.cursor.dirty = false;
                o.saving = true;
                (*p, o.cursor.encode())
            })
            .collect();
        for (partition, record) in moved {
            self.write_cursor(partition, record).await;
        }
    }

    async fn write_cursor(&mut self, partition: u16, record: Vec<u8>) {
        let subject = format!("$KV.{}.{}", self.names.cursors, cursor_key(partition));
        self.write(subject, record.into(), None, Then::Cursor { partition })
            .await;
    }

    /// Publishes `payload` on `subject` (the stream is found by the subject) and
    /// reports the ack back to the actor with `then`.
    async fn write(
        &mut self,
        subject: String,
        payload: Bytes,
        headers: Option<HeaderMap>,
        then: Then,
    ) {
        let id = self.next_write;
        self.next_write += 1;
        self.writing.insert(id);
        let mut publish = jetstream::message::PublishMessage::build().payload(payload);
        if let Some(headers) = headers {
            publish = publish.headers(headers);
        }
        // Sent here, in the actor's order; only the ack is awaited elsewhere.
        let sent = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.js.send_publish(subject.clone(), publish),
        )
        .await;
        let tx = self.tx.clone();
        match sent {
            Ok(Ok(ack)) => {
                tokio::spawn(async move {
                    let ok = match ack.await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(subject, error = %e, "delivery record not written");
                            false
                        }
                    };
                    let _ = tx.send(Cmd::Written { id, ok, then });
                });
            }
            Ok(Err(e)) => {
                tracing::warn!(subject, error = %e, "delivery record not written");
                let _ = tx.send(Cmd::Written {
                    id,
                    ok: false,
                    then,
                });
            }
            Err(_) => {
                tracing::warn!(subject, "delivery record not written: publish timed out");
                let _ = tx.send(Cmd::Written {
                    id,
                    ok: false,
                    then,
                });
            }
        }
    }

    async fn written(&mut self, id: u64, ok: bool, then: Then) {
        self.writing.remove(&id);
        if !ok {
            metrics::counter!(m::STORE_WRITE_FAILURES_TOTAL).increment(1);
        }
        match then {
            Then::Nothing => {}
            Then::Recorded { seq, endpoint } => {
                if ok {
                    self.recorded(seq, &endpoint);
                } else if let Some(held) = self.held.get_mut(&seq) {
                    // Tried again by the next park sweep.
                    held.writing.remove(&endpoint);
                }
            }
            Then::Replayed {
                partition,
                body_seq,
                seq,
                endpoint,
                permit,
            } => {
                drop(permit);
                if ok {
                    let dead = self.streams.dead.clone();
                    let subject = names::dead_subject(seq, &endpoint);
                    tokio::spawn(async move {
                        if let Err(e) = dead.purge().filter(&subject).await {
                            tracing::warn!(subject, error = %e, "replayed dead letter not removed");
                        }
                    });
                    self.settled(partition, body_seq);
                    let _ = self.notices.send(Notice::Rescan {
                        endpoint,
                        from: seq,
                        added: 1,
                        horizon: 0,
                    });
                } else {
                    // Left open: the next owner of the partition replays it again.
                    self.parked.remove(&endpoint, seq);
                }
            }
            Then::Quarantined { partition, seq } => self.settled(partition, seq),
            Then::Cursor { partition } => {
                if let Some(owned) = self.owned.get_mut(&partition) {
                    owned.saving = false;
                    owned.cursor.dirty |= !ok;
                }
            }
        }
        self.answer_flushes();
    }

    fn answer_flushes(&mut self) {
        let lowest = self.writing.first().copied().unwrap_or(u64::MAX);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(upto, _)| lowest >= *upto);
        self.flushes = waiting;
        for (_, reply) in ready {
            let _ = reply.send(());
        }
    }
}

fn cursor_key(partition: u16) -> String {
    format!("p.{partition}")
}

/// The cursor the last owner of `partition` wrote (fresh if none), read from the
/// bucket's leader.
pub async fn read_cursor(streams: &Streams, partition: u16) -> Result<Cursor, StoreError> {
    let subject = format!("$KV.{}.{}", streams.cursors_bucket, cursor_key(partition));
    let found = read::last(&streams.cursors, &subject).await?;
    Ok(match found {
        Some(msg) => Cursor::decode(&msg.payload).unwrap_or_else(|| {
            tracing::error!(
                partition,
                "malformed partition cursor; starting from the stream's first message"
            );
            Cursor::default()
        }),
        None => Cursor::default(),
    })
}

fn done_marker() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Rollup", "sub");
    h.insert(DONE, "1");
    h
}

/// The parked deliveries of `partition`: `(seq, endpoint, body_seq)` of every record
/// that is not a done marker.
async fn scan(
    deliveries: &jetstream::stream::Stream,
    partition: u16,
) -> Result<Vec<(u64, EndpointKey, Parked)>, StoreError> {
    let filter = format!("dlv.{partition}.>");
    let consumer = deliveries
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| StoreError::unavailable(format!("scan of {filter}: {e}")))?;
    let mut consumer = consumer;
    let pending = consumer
        .info()
        .await
        .map_err(|e| StoreError::unavailable(format!("scan of {filter}: {e}")))?
        .num_pending;
    let mut rows = Vec::new();
    if pending == 0 {
        return Ok(rows);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| StoreError::unavailable(format!("scan of {filter}: {e}")))?;
    loop {
        let next = tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await;
        let msg = match next {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => {
                return Err(StoreError::unavailable(format!("scan of {filter}: {e}")));
            }
            Ok(None) | Err(_) => {
                return Err(StoreError::unavailable(format!(
                    "scan of {filter} ended early"
                )));
            }
        };
        let left = msg.info().map(|i| i.pending).unwrap_or(0);
        let done = msg.headers.as_ref().is_some_and(|h| h.get(DONE).is_some());
        if !done
            && let Some((_, seq, endpoint)) = names::parse_delivery(&msg.subject)
            && let Some(parked) = Parked::decode(&msg.payload)
        {
            rows.push((seq, endpoint, parked));
        }
        if left == 0 {
            return Ok(rows);
        }
    }
}

/// Reads `partition`'s messages from `start` on into the actor, in order, for as long
/// as the task lives (aborted on release); at most `OPEN_PER_PARTITION` are open at
/// once. An ordered consumer: nothing is replicated per message.
async fn read(
    events: jetstream::stream::Stream,
    partition: u16,
    start: u64,
    tx: mpsc::UnboundedSender<Cmd>,
) {
    let open = Arc::new(Semaphore::new(OPEN_PER_PARTITION));
    let mut next = start.max(1);
    let mut pause = Duration::from_millis(100);
    loop {
        let messages = async {
            events
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subjects: vec![format!("cb.{partition}.>"), format!("rp.{partition}.>")],
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .messages()
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match messages {
            Ok(mut messages) => {
                pause = Duration::from_millis(100);
                while let Some(item) = messages.next().await {
                    match item {
                        Ok(msg) => {
                            if let Ok(info) = msg.info() {
                                next = info.stream_sequence + 1;
                            }
                            let Ok(permit) = open.clone().acquire_owned().await else {
                                return;
                            };
                            let msg = Box::new(msg);
                            if tx
                                .send(Cmd::Message {
                                    partition,
                                    msg,
                                    permit,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(partition, error = %e, "partition read interrupted");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(partition, error = %e, "cannot read partition; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// A delivery record read back: its state and event, or `None` when it is gone (done
/// meanwhile) or its event expired (counted: the dedup window ran out first).
pub async fn fetch(
    streams: &Streams,
    endpoint: &EndpointKey,
    seq: u64,
    partition: u16,
    body_seq: u64,
) -> Result<Option<(Event, Vec<u8>)>, StoreError> {
    let subject = names::delivery_subject(partition, seq, endpoint);
    let Some(msg) = read::last(&streams.deliveries, &subject).await? else {
        return Ok(None);
    };
    if msg.headers.get(DONE).is_some() {
        return Ok(None);
    }
    let Some(parked) = Parked::decode(&msg.payload) else {
        metrics::counter!(m::STORE_MALFORMED_TOTAL).increment(1);
        tracing::error!(subject, "malformed delivery record; skipped");
        return Ok(None);
    };
    let Some(body) = read::at(&streams.events, parked.body_seq).await? else {
        metrics::counter!(m::DELIVERY_EXPIRED_TOTAL, "endpoint" => endpoint.to_string())
            .increment(1);
        tracing::error!(seq, %endpoint, "a pending delivery's event expired with the dedup window; it cannot be sent");
        return Ok(None);
    };
    let mut event = if body.subject.starts_with("rp.") {
        record::decode_kept(seq, &body.payload)?.1
    } else {
        record::decode_event(seq, &body.payload)?
    };
    event.seq = seq;
    event.partition = partition;
    let _ = body_seq;
    Ok(Some((event, parked.state)))
}
