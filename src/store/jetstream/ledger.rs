//! The deliveries of the partitions this node owns: one task (an actor) that pulls
//! each owned partition's consumer, hands events to the delivery engine, and makes
//! every outcome durable in JetStream before the message that carried it is acked.
//!
//! A delivery is in one of two places:
//! - **held**: its event message is unacked on this node (first attempts, or waiting
//!   behind an earlier event of its payment). The ack goes once every endpoint of the
//!   message is done, dead, or parked.
//! - **parked**: a record `dlv.<partition>.<seq>.<endpoint>` holds its attempt log and
//!   where its body is. A failed attempt parks at once, and so does a delivery the
//!   worker has no room for (`defer`); one held longer than `PARK_AFTER` is parked as
//!   it stands. So no message stays unacked for long (a failing endpoint never fills a
//!   partition's ack window), and a crash leaves every delivery either parked or
//!   unacked (sent again to the next owner after `ACK_WAIT`).
//!
//! Order per payment: a worker takes a payment's deliveries in seq order, from the
//! consumer or from the records. An event whose payment still has a delivery parked
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
use async_nats::jetstream::{self, consumer, message::Acker};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::names::{self, Names};
use super::parked::{Index, Spot};
use super::read;
use super::record::{self, Parked};
use super::setup::{REQUEST_TIMEOUT, Streams};
use crate::metrics as m;
use crate::store::{EndpointKey, Event, Notice, Settle, StoreError};

/// A delivery held this long without an outcome is parked, and its message acked.
const PARK_AFTER: Duration = Duration::from_secs(2);

/// Header on the marker that replaces a delivery record once the delivery is done.
const DONE: &str = "Cbgate-Done";

enum Cmd {
    Claim {
        partition: u16,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Scanned {
        partition: u16,
        rows: Vec<(u64, EndpointKey, Parked)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Release {
        partition: u16,
        graceful: bool,
        reply: oneshot::Sender<()>,
    },
    Released {
        partition: u16,
        reply: oneshot::Sender<()>,
    },
    Message {
        partition: u16,
        msg: Box<jetstream::Message>,
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
    /// A replay's delivery record is written: drop its dead letter, ack the replay.
    Replayed {
        acker: Box<Acker>,
        seq: u64,
        endpoint: EndpointKey,
    },
}

/// An unacked event message and the endpoints that still need it.
struct Held {
    partition: u16,
    lane: Arc<str>,
    acker: Acker,
    since: Instant,
    /// Each endpoint still to settle, with its latest attempt log (empty: none yet).
    outstanding: HashMap<EndpointKey, Vec<u8>>,
    /// Endpoints whose record is being written.
    writing: HashSet<EndpointKey>,
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
    /// Owned partitions and the task pulling each one's consumer.
    owned: HashMap<u16, Option<JoinHandle<()>>>,
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
        let ticker = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PARK_AFTER / 4);
            loop {
                tick.tick().await;
                if ticker.send(Cmd::Tick).is_err() {
                    return;
                }
            }
        });
        Ledger { tx }
    }

    /// Starts delivering `partition` (its lease is this node's): reads its parked
    /// deliveries, then pulls its consumer.
    pub async fn claim(&self, partition: u16) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Claim { partition, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops delivering `partition`. `graceful`: park what is held first, so the next
    /// owner starts at once; otherwise (the lease is lost) just forget it.
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
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Cmd::Claim { partition, reply } => self.claim(partition, reply),
                Cmd::Scanned {
                    partition,
                    rows,
                    reply,
                } => self.scanned(partition, rows, reply),
                Cmd::Release {
                    partition,
                    graceful,
                    reply,
                } => self.release(partition, graceful, reply).await,
                Cmd::Released { partition, reply } => {
                    // What could not be parked goes back to the consumer now, for the
                    // next owner, rather than after the ack wait.
                    let gone: Vec<u64> = self
                        .held
                        .iter()
                        .filter(|(_, h)| h.partition == partition)
                        .map(|(seq, _)| *seq)
                        .collect();
                    for seq in gone {
                        if let Some(h) = self.held.remove(&seq) {
                            self.outstanding -= h.outstanding.len();
                            let _ = h.acker.ack_with(jetstream::AckKind::Nak(None)).await;
                        }
                    }
                    self.parked.drop_partition(partition);
                    let _ = reply.send(());
                }
                Cmd::Message { partition, msg } => self.arrive(partition, *msg).await,
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
            }
            // Exact after every step: a test may wait for it to reach zero.
            held.set(self.outstanding as f64);
        }
    }

    fn claim(&mut self, partition: u16, reply: oneshot::Sender<Result<(), StoreError>>) {
        if self.owned.contains_key(&partition) {
            let _ = reply.send(Ok(()));
            return;
        }
        self.owned.insert(partition, None);
        let (tx, deliveries) = (self.tx.clone(), self.streams.deliveries.clone());
        tokio::spawn(async move {
            match scan(&deliveries, partition).await {
                Ok(rows) => {
                    let _ = tx.send(Cmd::Scanned {
                        partition,
                        rows,
                        reply,
                    });
                }
                Err(e) => {
                    // Not claimed after all: the owner tries again on its next round.
                    let _ = tx.send(Cmd::Release {
                        partition,
                        graceful: false,
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
        rows: Vec<(u64, EndpointKey, Parked)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    ) {
        match self.owned.get_mut(&partition) {
            Some(task @ None) => {
                *task = Some(tokio::spawn(pull(
                    self.streams.events.clone(),
                    self.names.consumer(partition),
                    partition,
                    self.tx.clone(),
                )));
            }
            // Released while the scan ran.
            _ => {
                let _ = reply.send(Err(StoreError::Unavailable(format!(
                    "partition {partition} released during its claim"
                ))));
                return;
            }
        }
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
        tracing::info!(partition, parked, "partition claimed");
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
        let Some(task) = self.owned.remove(&partition) else {
            let _ = reply.send(());
            return;
        };
        if let Some(task) = task {
            task.abort();
        }
        let _ = self.notices.send(Notice::Release {
            partitions: vec![partition],
        });
        if graceful {
            // Park what is held, so the next owner finds it at once instead of after
            // the ack wait; what cannot be written is sent to it again.
            let seqs: Vec<u64> = self
                .held
                .iter()
                .filter(|(_, h)| h.partition == partition)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in seqs {
                self.park(seq, None).await;
            }
        }
        tracing::info!(partition, graceful, "partition released");
        // Once the parks are acknowledged (and their messages acked), forget the rest.
        let (done, wait) = oneshot::channel();
        self.flushes.push((self.next_write, done));
        self.answer_flushes();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let _ = wait.await;
            let _ = tx.send(Cmd::Released { partition, reply });
        });
    }

    async fn arrive(&mut self, partition: u16, msg: jetstream::Message) {
        if !self.owned.contains_key(&partition) {
            // Pulled just before a release: back to the consumer for the next owner.
            let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
            return;
        }
        let (seq, _delivered) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(e) => {
                tracing::error!(error = %e, "jetstream message without delivery info; skipped");
                return;
            }
        };
        if self.held.contains_key(&seq) {
            // Sent again while still held (a slow ack): the first copy is in hand.
            return;
        }
        let subject = msg.subject.to_string();
        let (msg, acker) = msg.split();
        if subject.starts_with("rp.") {
            self.replayed(seq, &subject, msg.payload, acker).await;
            return;
        }
        let mut event = match record::decode_event(seq, &msg.payload) {
            Ok(event) => event,
            Err(e) => {
                // Cannot be delivered by any node: taken off the queue, loudly.
                metrics::counter!(m::STORE_MALFORMED_TOTAL).increment(1);
                tracing::error!(seq, subject, error = %e, "malformed event message; terminated");
                let _ = acker.ack_with(jetstream::AckKind::Term).await;
                return;
            }
        };
        event.partition = partition;
        // Deliveries a previous owner parked are read from their records instead.
        event
            .endpoints
            .retain(|ep| self.parked.get(ep, seq).is_none());
        if event.endpoints.is_empty() {
            let _ = acker.ack().await;
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
                acker,
                since: Instant::now(),
                outstanding: event
                    .endpoints
                    .iter()
                    .map(|e| (e.clone(), Vec::new()))
                    .collect(),
                writing: HashSet::new(),
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
    async fn replayed(&mut self, body_seq: u64, subject: &str, payload: Bytes, acker: Acker) {
        let parsed = names::parse_delivery(subject)
            .and_then(|(p, seq, ep)| Some((p, seq, ep, record::decode_kept(seq, &payload).ok()?)));
        let Some((partition, seq, endpoint, (state, event))) = parsed else {
            tracing::error!(subject, "malformed replay message; terminated");
            let _ = acker.ack_with(jetstream::AckKind::Term).await;
            return;
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
                acker: Box::new(acker),
                seq,
                endpoint,
            },
        )
        .await;
    }

    async fn settle(&mut self, event: Arc<Event>, endpoint: EndpointKey, outcome: Settle) {
        let (seq, partition) = (event.seq, event.partition);
        if !self.owned.contains_key(&partition) {
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
                    self.recorded(seq, &endpoint).await;
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

    /// `endpoint` no longer needs held `seq`; the message is acked once none does.
    async fn recorded(&mut self, seq: u64, endpoint: &EndpointKey) {
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
            let _ = held.acker.ack().await;
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
                    self.recorded(seq, &endpoint).await;
                } else if let Some(held) = self.held.get_mut(&seq) {
                    // Tried again by the next park sweep.
                    held.writing.remove(&endpoint);
                }
            }
            Then::Replayed {
                acker,
                seq,
                endpoint,
            } => {
                if ok {
                    let dead = self.streams.dead.clone();
                    let subject = names::dead_subject(seq, &endpoint);
                    tokio::spawn(async move {
                        if let Err(e) = dead.purge().filter(&subject).await {
                            tracing::warn!(subject, error = %e, "replayed dead letter not removed");
                        }
                    });
                    let _ = acker.ack().await;
                    let _ = self.notices.send(Notice::Rescan {
                        endpoint,
                        from: seq,
                        added: 1,
                        horizon: 0,
                    });
                } else {
                    // Sent again: the replay is redone from the start.
                    let _ = acker.ack_with(jetstream::AckKind::Nak(None)).await;
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

/// Pulls `partition`'s consumer into the actor for as long as the task lives (it is
/// aborted on release); reconnects by itself.
async fn pull(
    events: jetstream::stream::Stream,
    consumer: String,
    partition: u16,
    tx: mpsc::UnboundedSender<Cmd>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let messages = async {
            let c: consumer::PullConsumer = events
                .get_consumer(&consumer)
                .await
                .map_err(|e| e.to_string())?;
            c.stream()
                .max_messages_per_batch(256)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match messages {
            Ok(mut messages) => {
                pause = Duration::from_millis(100);
                while let Some(next) = messages.next().await {
                    match next {
                        Ok(msg) => {
                            let msg = Box::new(msg);
                            if tx.send(Cmd::Message { partition, msg }).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(partition, error = %e, "partition pull interrupted");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(partition, error = %e, "cannot pull partition; retrying"),
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
