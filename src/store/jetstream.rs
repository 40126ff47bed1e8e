//! The JetStream engine: several cbgate nodes share dedup and the delivery queue
//! through one NATS JetStream cluster (R3, `sync_interval: always`); nothing is
//! replicated by cbgate's own code. Names below for `storage.stream = "CBGATE"`.
//!
//! - Intake (`intake.rs`): each callback is one message in stream `CBGATE` (limits,
//!   `max_age` = dedup window, discard new) on `cb.<partition>.<payment>.<dedup key>`,
//!   published with `Nats-Expected-Last-Subject-Sequence: 0`. Its ack makes it the
//!   dedup record and the queue entry at once: no crash window between them.
//! - Partitions: `hash(project/payment) % storage.partitions`, so one payment's events
//!   share one. Each partition has one owner at a time (`owner.rs`: heartbeats,
//!   rendezvous hashing, leases).
//! - Deliveries (`ledger.rs`): the owner reads a partition's messages in order, hands
//!   its events to this node's delivery engine (whose lanes keep per-payment order),
//!   and settles each message once every endpoint is done, dead, or parked in
//!   `CBGATE_DLV` with its attempt log; the partition's cursor (`cursor.rs`, in
//!   `CBGATE_CURSOR`) says how far that got. Dead letters, each with its event, are in
//!   `CBGATE_DEAD`, with any message no node could read (`qr.<seq>`, as found); a
//!   replay is a message `rp.<partition>.<seq>.<endpoint>` delivered through the
//!   partition's owner.
//! - Shared by all nodes: paused endpoints and endpoint states (`control.rs`), and
//!   check_deposit answers (`answers.rs`).
//!
//! At least once: a node that dies mid-delivery leaves each delivery parked (resumed
//! by the next owner, never sent again once recorded done) or its message open (read
//! again by the next owner from the partition's cursor). A merchant sees a duplicate
//! only for a delivery whose event was in flight on the dying node.

mod answers;
mod control;
mod cursor;
mod intake;
mod ledger;
pub mod names;
mod owner;
mod parked;
mod read;
pub mod record;
mod setup;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    Appended, BoxFuture, Cursor, DeadLetter, DeadPage, DeliveryState, EndpointKey, EndpointStatus,
    Event, EventView, Feed, Health, PaymentView, PendingPage, QuarantinePage, Settle,
    SharedAnswers, SignedRequest, StatusSource, Store, StoreError, merge_status,
};
use crate::callback::Callback;
use crate::clock::now_s;
use crate::config::Config;
use crate::dedup::{DedupKey, DedupSet};
use answers::Answers;
use control::Control;
use intake::Intake;
use ledger::Ledger;
use names::Names;
use owner::{Owner, View};
use setup::{REQUEST_TIMEOUT, Streams};

/// Parked deliveries read back at once.
const READ_CONCURRENCY: usize = 16;

pub struct JetStream {
    client: async_nats::Client,
    names: Names,
    partitions: u16,
    streams: Arc<Streams>,
    intake: Intake,
    ledger: Ledger,
    control: Control,
    answers: Arc<Answers>,
    view: Arc<Mutex<View>>,
    /// `Err(reason)` while callbacks cannot be stored.
    ready: Arc<Mutex<Result<(), String>>>,
    stop: CancellationToken,
    owner: Mutex<Option<JoinHandle<()>>>,
}

/// Connects, makes sure every stream and consumer is there, and starts this node's
/// share of the deliveries. Waits while NATS is unreachable or without quorum.
pub async fn open(config: &Config) -> Result<(Arc<dyn Store>, Feed), StoreError> {
    let storage = &config.storage;
    let names = Names::new(&storage.stream);
    let client = setup::connect(storage).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_ack_inflight(20_000)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let streams =
        Arc::new(setup::ensure(&js, &names, storage, config.terminal.idempotency_window).await?);
    {
        let (client, storage) = (client.clone(), storage.clone());
        tokio::spawn(async move { setup::report(&client, &storage).await });
    }
    let (arrivals_tx, arrivals) = crossbeam_channel::unbounded();
    let (notices_tx, notices) = tokio::sync::mpsc::unbounded_channel();
    let control = Control::start(streams.control.clone(), notices_tx.clone()).await?;
    let ledger = Ledger::start(
        js.clone(),
        streams.clone(),
        names.clone(),
        arrivals_tx,
        notices_tx,
    );
    let stop = CancellationToken::new();
    let view = Arc::new(Mutex::new(View::default()));
    let id = owner::node_id();
    tracing::info!(node = %id, "jetstream node started");
    let owner = tokio::spawn(
        Owner {
            id,
            kv: streams.nodes.clone(),
            ledger: ledger.clone(),
            partitions: storage.partitions,
            view: view.clone(),
        }
        .run(stop.clone()),
    );
    let known = Arc::new(DedupSet::default());
    tokio::spawn(sweep(known.clone(), stop.clone()));
    let ready = Arc::new(Mutex::new(Ok(())));
    tokio::spawn(watch_health(
        client.clone(),
        streams.events.clone(),
        ready.clone(),
        stop.clone(),
    ));
    let engine = JetStream {
        client,
        names,
        partitions: storage.partitions,
        intake: Intake {
            js: js.clone(),
            partitions: storage.partitions,
            window: storage.dedup_window,
            known,
        },
        answers: Arc::new(Answers {
            js,
            stream: streams.answers.clone(),
        }),
        streams,
        ledger,
        control,
        view,
        ready,
        stop,
        owner: Mutex::new(Some(owner)),
    };
    let feed = Feed {
        arrivals,
        notices,
        recovered: Vec::new(),
    };
    Ok((Arc::new(engine), feed))
}

/// Forgets the keys this node remembered once their time is up.
async fn sweep(known: Arc<DedupSet>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let known = known.clone();
                let _ = tokio::task::spawn_blocking(move || known.sweep(now_s())).await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Keeps `ready` true to what intake can do: connected, and the events stream
/// answering (it has a leader, so a quorum).
async fn watch_health(
    client: async_nats::Client,
    events: jetstream::stream::Stream,
    ready: Arc<Mutex<Result<(), String>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = if client.connection_state() != async_nats::connection::State::Connected {
            Err("nats: not connected".to_string())
        } else {
            match tokio::time::timeout(Duration::from_secs(2), events.get_info()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!(
                    "jetstream: stream {} unavailable: {e}",
                    events.cached_info().config.name
                )),
                Err(_) => Err(format!(
                    "jetstream: stream {} did not answer (no quorum?)",
                    events.cached_info().config.name
                )),
            }
        };
        let mut ready = ready.lock().expect("ready lock");
        match (&*ready, &now) {
            (Ok(()), Err(reason)) => tracing::warn!(%reason, "not ready: callbacks get 503"),
            (Err(_), Ok(())) => tracing::info!("ready again: callbacks are stored"),
            _ => {}
        }
        *ready = now;
    }
}

impl JetStream {
    /// The parked delivery rows, read back with their events.
    async fn read_parked(
        &self,
        endpoint: &EndpointKey,
        rows: Vec<(u64, parked::Spot)>,
    ) -> Result<Vec<(Event, Vec<u8>)>, StoreError> {
        let streams = &self.streams;
        let reads = futures_util::stream::iter(rows.into_iter().map(|(seq, spot)| {
            ledger::fetch(streams, endpoint, seq, spot.partition, spot.body_seq)
        }))
        .buffered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut out = Vec::new();
        for read in reads {
            if let Some(row) = read? {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// The dead letters to replay: `(seq, state, event)`.
    async fn dead_of(
        &self,
        endpoint: &EndpointKey,
        seq: Option<u64>,
    ) -> Result<Vec<(u64, Vec<u8>, Event)>, StoreError> {
        let mut out = Vec::new();
        let mut keep = |msg: async_nats::jetstream::message::StreamMessage| {
            if let Some((seq, _)) = names::parse_dead(&msg.subject)
                && let Ok((state, event)) = record::decode_kept(seq, &msg.payload)
            {
                out.push((seq, state, event));
            }
        };
        match seq {
            Some(seq) => {
                let subject = names::dead_subject(seq, endpoint);
                if let Some(msg) = read::last(&self.streams.dead, &subject).await? {
                    keep(msg);
                }
            }
            None => {
                let filter = names::dead_filter(Some(endpoint));
                let mut from = 1;
                while let Some(msg) = read::next(&self.streams.dead, &filter, from).await? {
                    from = msg.sequence + 1;
                    keep(msg);
                }
            }
        }
        Ok(out)
    }

    /// Where `endpoint`'s delivery of `seq` stands, from the shared state alone.
    async fn delivery_state(
        &self,
        partition: u16,
        seq: u64,
        endpoint: &EndpointKey,
    ) -> Result<DeliveryState, StoreError> {
        let subject = names::delivery_subject(partition, seq, endpoint);
        if let Some(msg) = read::last(&self.streams.deliveries, &subject).await?
            && let Some(parked) = record::Parked::decode(&msg.payload)
        {
            return Ok(DeliveryState::Pending(parked.state));
        }
        let subject = names::dead_subject(seq, endpoint);
        if let Some(msg) = read::last(&self.streams.dead, &subject).await? {
            let (state, _) = record::decode_kept(seq, &msg.payload)?;
            return Ok(DeliveryState::Dead(state));
        }
        let cursor = ledger::read_cursor(&self.streams, partition).await?;
        Ok(if cursor.is_settled(seq) {
            DeliveryState::Delivered
        } else {
            DeliveryState::InFlight
        })
    }
}

impl Store for JetStream {
    fn known_duplicate(&self, key: DedupKey) -> bool {
        self.intake.known_duplicate(key)
    }

    fn append(&self, callback: Callback) -> BoxFuture<'_, Result<Appended, StoreError>> {
        Box::pin(async move {
            // Not connected: 503 at once rather than after the publish times out.
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return Err(StoreError::Unavailable("nats: not connected".into()));
            }
            self.intake.append(callback).await
        })
    }

    fn settle(
        &self,
        event: &Arc<Event>,
        endpoint: &EndpointKey,
        outcome: Settle,
    ) -> Result<(), StoreError> {
        self.ledger.settle(event, endpoint, outcome)
    }

    fn defer(&self, event: &Arc<Event>, endpoint: &EndpointKey) -> Result<(), StoreError> {
        self.ledger.defer(event, endpoint)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ledger.flush())
    }

    fn pending(
        &self,
        endpoint: EndpointKey,
        from: u64,
        limit: usize,
        horizon: u64,
    ) -> BoxFuture<'_, Result<PendingPage, StoreError>> {
        Box::pin(async move {
            let (rows, complete) = self
                .ledger
                .parked(endpoint.clone(), from, limit, horizon)
                .await?;
            let rows = self.read_parked(&endpoint, rows).await?;
            // Arrivals come from the partitions' consumers, never from this read: no
            // floor below which they may be skipped.
            Ok(PendingPage {
                rows,
                complete,
                floor: 0,
            })
        })
    }

    fn dead_letters(
        &self,
        endpoint: Option<EndpointKey>,
        after: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<DeadPage, StoreError>> {
        Box::pin(async move {
            // The cursor is the dead-letter stream's sequence of the last row given.
            let mut from = after
                .and_then(|c| c.0.parse::<u64>().ok())
                .map_or(1, |s| s + 1);
            let filter = names::dead_filter(endpoint.as_ref());
            let mut items = Vec::new();
            let mut last = 0;
            while items.len() < limit {
                let Some(msg) = read::next(&self.streams.dead, &filter, from).await? else {
                    break;
                };
                from = msg.sequence + 1;
                last = msg.sequence;
                if let Some((seq, endpoint)) = names::parse_dead(&msg.subject)
                    && let Ok((state, _)) = record::decode_kept(seq, &msg.payload)
                {
                    items.push(DeadLetter {
                        endpoint,
                        seq,
                        state,
                    });
                }
            }
            let next = (items.len() == limit).then(|| Cursor(last.to_string()));
            Ok(DeadPage { items, next })
        })
    }

    fn quarantined(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<QuarantinePage, StoreError>> {
        Box::pin(async move {
            // Records arrive in the order nodes met them, not by seq: all are read and
            // sorted (a quarantine is an anomaly, a handful at most).
            let mut found = Vec::new();
            let mut from = 1;
            while let Some(msg) =
                read::next(&self.streams.dead, names::QUARANTINE_FILTER, from).await?
            {
                from = msg.sequence + 1;
                let record = names::parse_quarantine(&msg.subject)
                    .and_then(|seq| record::decode_quarantined(seq, &msg.payload));
                match record {
                    Some(record) if after.is_none_or(|a| record.seq > a) => found.push(record),
                    Some(_) => {}
                    None => {
                        tracing::error!(subject = %msg.subject, "malformed quarantine record; not listed")
                    }
                }
            }
            found.sort_by_key(|q| q.seq);
            QuarantinePage::fill(found.into_iter().map(Ok), limit)
        })
    }

    fn replay(
        &self,
        endpoint: EndpointKey,
        seq: Option<u64>,
        renew: fn(&[u8]) -> Vec<u8>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let dead = self.dead_of(&endpoint, seq).await?;
            let mut count = 0;
            for (seq, state, mut event) in dead {
                event.endpoints = vec![endpoint.clone()];
                let partition = names::partition(&event.order_key, self.partitions);
                let subject = names::replay_subject(partition, seq, &endpoint);
                let payload = record::encode_kept(&renew(&state), &event);
                let publish = jetstream::message::PublishMessage::build().payload(payload);
                self.intake
                    .js
                    .send_publish(subject, publish)
                    .await
                    .map_err(StoreError::unavailable)?
                    .await
                    .map_err(StoreError::unavailable)?;
                count += 1;
            }
            Ok(count)
        })
    }

    fn event(&self, seq: u64) -> BoxFuture<'_, Result<Option<EventView>, StoreError>> {
        Box::pin(async move {
            let Some(msg) = read::at(&self.streams.events, seq).await? else {
                return Ok(None);
            };
            let Some(partition) = msg
                .subject
                .strip_prefix("cb.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|p| p.parse::<u16>().ok())
            else {
                // A replay message, not an event.
                return Ok(None);
            };
            let mut event = record::decode_event(seq, &msg.payload)?;
            event.partition = partition;
            let mut deliveries = Vec::new();
            for endpoint in &event.endpoints {
                let state = self.delivery_state(partition, seq, endpoint).await?;
                deliveries.push((endpoint.clone(), state));
            }
            Ok(Some(EventView { event, deliveries }))
        })
    }

    fn record_signed(&self, request: SignedRequest) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let lane = super::lane(request.project, &request.payment_id);
            let partition = names::partition(&lane, self.partitions);
            let id = format!("{}{:08x}", request.at_ms, fastrand::u32(..));
            let subject = names::signed_subject(partition, &lane, &id);
            let payload = serde_json::to_vec(&request).map_err(StoreError::unavailable)?;
            self.intake
                .js
                .send_publish(
                    subject,
                    jetstream::message::PublishMessage::build().payload(payload.into()),
                )
                .await
                .map_err(StoreError::unavailable)?
                .await
                .map_err(StoreError::unavailable)?;
            Ok(())
        })
    }

    fn payment(
        &self,
        project: u64,
        payment_id: String,
    ) -> BoxFuture<'_, Result<PaymentView, StoreError>> {
        Box::pin(async move {
            let lane = super::lane(project, &payment_id);
            let partition = names::partition(&lane, self.partitions);
            let mut signed = Vec::new();
            let filter = names::signed_filter(partition, &lane);
            let mut from = 1;
            while let Some(msg) = read::next(&self.streams.signed, &filter, from).await? {
                from = msg.sequence + 1;
                if let Ok(request) = serde_json::from_slice::<SignedRequest>(&msg.payload)
                    && request.project == project
                    && request.payment_id == payment_id
                {
                    signed.push(request);
                }
            }
            let mut events = Vec::new();
            let filter = names::payment_filter(partition, &lane);
            let mut from = 1;
            while let Some(msg) = read::next(&self.streams.events, &filter, from).await? {
                from = msg.sequence + 1;
                let mut event = record::decode_event(msg.sequence, &msg.payload)?;
                // The token is a hash: another payment may share it.
                if event.order_key != lane {
                    continue;
                }
                event.partition = partition;
                let mut deliveries = Vec::new();
                for endpoint in &event.endpoints {
                    let state = self.delivery_state(partition, event.seq, endpoint).await?;
                    deliveries.push((endpoint.clone(), state));
                }
                events.push(EventView { event, deliveries });
            }
            Ok(PaymentView { signed, events })
        })
    }

    fn set_paused(
        &self,
        endpoint: EndpointKey,
        paused: bool,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.control.set_paused(&endpoint, paused).await })
    }

    fn endpoint_status(
        &self,
        local: Vec<EndpointStatus>,
    ) -> BoxFuture<'_, Result<Vec<EndpointStatus>, StoreError>> {
        Box::pin(async move {
            let nodes = self.view.lock().expect("view lock").live.len();
            Ok(
                match control::gather(&self.client, &self.names.status, nodes).await {
                    Some(all) => merge_status(all),
                    None => local,
                },
            )
        })
    }

    fn serve_status(&self, source: StatusSource) {
        tokio::spawn(control::answer_status(
            self.client.clone(),
            self.names.status.clone(),
            source,
        ));
    }

    fn shared_answers(&self) -> Option<Arc<dyn SharedAnswers>> {
        Some(self.answers.clone())
    }

    fn health(&self) -> Health {
        Health {
            ready: self.ready.lock().expect("ready lock").clone(),
            dedup_keys: self.intake.known.len(),
            queued: 0,
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Hands every partition over (parking what is held), then leaves.
            self.stop.cancel();
            let owner = self.owner.lock().expect("owner lock").take();
            if let Some(owner) = owner {
                let _ = owner.await;
            }
            let _ = self.ledger.flush().await;
            let _ = self.client.flush().await;
        })
    }
}
