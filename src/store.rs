//! The storage interface: what ingress, delivery and admin need from a durable engine.
//! Intake answers accepted or duplicate only once the callback is durable; deliveries
//! are what is due on this node, settled attempt by attempt, with dead letters and
//! replay. `open` picks the engine: `embedded` (one node, a redb file) or `jetstream`
//! (several nodes sharing one NATS JetStream cluster).

pub mod embedded;
pub mod jetstream;
pub mod record;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::callback::Callback;
use crate::config::{Config, Engine};
use crate::dedup::DedupKey;
use crate::watchdog::Watchdog;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `"{project}/{name}"`: one merchant endpoint, unique across the gateway and the key
/// of its durable delivery state.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey(Arc<str>);

impl EndpointKey {
    pub fn new(project: u64, name: &str) -> Self {
        EndpointKey(format!("{project}/{name}").into())
    }

    /// `"{project}/{name}"` with a numeric project and a non-empty name.
    pub fn parse(text: &str) -> Option<Self> {
        let (project, name) = text.split_once('/')?;
        (!name.is_empty() && project.parse::<u64>().is_ok()).then(|| EndpointKey(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn project(&self) -> u64 {
        self.0
            .split_once('/')
            .and_then(|(p, _)| p.parse().ok())
            .unwrap_or_default()
    }
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for EndpointKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The order key ("lane") of a payment: every event of it shares one, so deliveries
/// keep its order and its timeline can be found.
pub fn lane(project: u64, payment_id: &str) -> String {
    format!("{project}/{payment_id}")
}

/// A request the merchant listener signed for a payment, kept for its timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRequest {
    pub at_ms: u64,
    pub project: u64,
    pub payment_id: String,
    /// What was signed: `payment-page`, or the Gate API path (`/v2/...`).
    pub path: String,
    /// The platform's HTTP status (0: no answer), or 200 for a Payment Page signature.
    pub status: u16,
    pub duration_ms: u64,
}

/// One payment's story: the requests signed for it and the callbacks accepted for it,
/// each with where its deliveries stand, oldest first.
pub struct PaymentView {
    pub signed: Vec<SignedRequest>,
    pub events: Vec<EventView>,
}

/// An accepted callback as the store keeps it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event's number in the store: the journal sequence, or the stream sequence.
    pub seq: u64,
    pub accepted_ms: u64,
    pub project: u64,
    pub dedup: DedupKey,
    /// Events with the same order key reach an endpoint in acceptance order.
    pub order_key: String,
    /// The partition of `order_key` (always 0 on the embedded engine).
    pub partition: u16,
    /// Endpoints it was routed to when accepted.
    pub endpoints: Vec<EndpointKey>,
    /// The body exactly as received.
    pub body: Bytes,
}

/// What intake answers for one callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Accepted(u64),
    Duplicate,
}

/// A stored event the engine could not read, taken out of the delivery path (its
/// pending deliveries dropped) and kept as found, for forensics (`GET /admin/quarantine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub seq: u64,
    /// When it was quarantined.
    pub at_ms: u64,
    /// Why it could not be read.
    pub reason: String,
    /// Endpoints whose pending delivery of it was dropped.
    pub endpoints: Vec<String>,
    /// The record's bytes as found; empty when the record itself was missing.
    pub raw: Vec<u8>,
}

/// Counts and logs a record just moved out of delivery. The embedded engine reports
/// each once; on JetStream a node taking a partition over before its cursor was saved
/// reports it again (one record is kept).
pub(crate) fn report_quarantined(record: &Quarantined) {
    metrics::counter!(crate::metrics::STORE_QUARANTINED_TOTAL).increment(1);
    tracing::error!(
        seq = record.seq,
        reason = %record.reason,
        endpoints = ?record.endpoints,
        bytes = record.raw.len(),
        "unreadable stored record quarantined (GET /admin/quarantine); its deliveries \
         are dropped, the other deliveries of its endpoints go on"
    );
}

/// A page of quarantined records.
pub struct QuarantinePage {
    pub items: Vec<Quarantined>,
    /// The `after` of the next page; set when more may follow.
    pub next: Option<u64>,
}

/// Record bytes one page of the quarantine listing holds at most (past the first
/// record): records can be as large as `server.max_body_bytes`, 16 MiB at most.
pub const QUARANTINE_PAGE_BYTES: usize = 8 << 20;

impl QuarantinePage {
    /// The first `limit` of `records` (in seq order), fewer once their bytes pass
    /// `QUARANTINE_PAGE_BYTES`.
    pub fn fill(
        records: impl Iterator<Item = Result<Quarantined, StoreError>>,
        limit: usize,
    ) -> Result<QuarantinePage, StoreError> {
        let mut page = QuarantinePage {
            items: Vec::new(),
            next: None,
        };
        let mut bytes = 0;
        for record in records {
            if page.items.len() >= limit || bytes > QUARANTINE_PAGE_BYTES {
                page.next = page.items.last().map(|q| q.seq);
                break;
            }
            let record = record?;
            bytes += record.raw.len();
            page.items.push(record);
        }
        Ok(page)
    }
}

/// Why the store could not do something. Busy, Unavailable and Closed mean "not now":
/// ingress answers 503 and the platform retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage queue is full")]
    Busy,
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("storage is shutting down")]
    Closed,
    #[error("stored record #{0} is malformed")]
    Malformed(u64),
    /// Found at start: serving would hide a loss or break an invariant.
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    pub fn unavailable(e: impl fmt::Display) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The outcome of one delivery attempt, made durable by `Store::settle`.
#[derive(Debug, Clone)]
pub enum Settle {
    /// The endpoint took it.
    Done,
    /// Still trying: the attempt log (`delivery::State`), which says when.
    Retry(Vec<u8>),
    /// Out of attempts: a dead letter with its attempt log.
    Dead(Vec<u8>),
}

/// Pending deliveries of one endpoint, read back into memory.
pub struct PendingPage {
    /// `(event, state)` in seq order.
    pub rows: Vec<(Event, Vec<u8>)>,
    /// The read ended before `limit`: nothing further is pending as of this read.
    pub complete: bool,
    /// Arrivals with a seq below this were committed before the read, which took them.
    pub floor: u64,
}

/// Where a dead-letter listing continues; opaque to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub String);

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub endpoint: EndpointKey,
    pub seq: u64,
    pub state: Vec<u8>,
}

pub struct DeadPage {
    pub items: Vec<DeadLetter>,
    /// Set when more may follow.
    pub next: Option<Cursor>,
}

/// Where one delivery of an event stands.
#[derive(Debug, Clone)]
pub enum DeliveryState {
    Pending(Vec<u8>),
    Dead(Vec<u8>),
    Delivered,
    /// Not recorded as pending or dead, and not known delivered: its first attempt is
    /// under way on the node that owns it.
    InFlight,
}

pub struct EventView {
    pub event: Event,
    pub deliveries: Vec<(EndpointKey, DeliveryState)>,
}

/// One endpoint's delivery state on a node, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub endpoint: EndpointKey,
    /// False once a reload removed it: its deliveries wait in the store.
    pub configured: bool,
    pub paused: bool,
    pub circuit_open: bool,
    /// Deliveries not yet done or dead, in memory and in the store.
    pub pending: u64,
    pub in_memory: usize,
    pub in_flight: usize,
    /// Part of the backlog is only in the store.
    pub spilled: bool,
}

/// What the store tells this node's delivery engine, beside new arrivals.
#[derive(Debug)]
pub enum Notice {
    /// Deliveries of `endpoint` from seq `from` on wait in the store and not in memory:
    /// read them back with `Store::pending`. `added` of them were not counted before.
    Rescan {
        endpoint: EndpointKey,
        from: u64,
        added: u64,
        /// The read may take these deliveries once the worker has taken in this
        /// notice (passed back to `Store::pending`); 0 for ones it may take at once.
        horizon: u64,
    },
    Pause {
        endpoint: EndpointKey,
        paused: bool,
    },
    /// The pending delivery of event `seq` at `endpoint` left the store without an
    /// outcome (the event could not be read and was quarantined): it counts no more.
    Dropped {
        endpoint: EndpointKey,
        seq: u64,
    },
    /// This node no longer delivers these partitions: drop their deliveries from
    /// memory (the store keeps them for the node that does).
    Release {
        partitions: Vec<u16>,
    },
}

/// What a node's delivery engine reads from the store.
pub struct Feed {
    /// Events to deliver, once durable, with the endpoints still to take them.
    pub arrivals: crossbeam_channel::Receiver<Arc<Event>>,
    pub notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    /// Pending deliveries per endpoint found at start.
    pub recovered: Vec<(EndpointKey, u64)>,
}

/// Readiness and gauges for `/readyz` and `/metrics`.
pub struct Health {
    /// `Err(reason)` while callbacks cannot be made durable.
    pub ready: Result<(), String>,
    pub dedup_keys: usize,
    pub queued: usize,
}

/// A node's own endpoint states, asked for by the admin API of any node.
pub type StatusSource = Arc<dyn Fn() -> BoxFuture<'static, Vec<EndpointStatus>> + Send + Sync>;

/// check_deposit answers shared by every node (the kiosk's retry may land on another).
pub trait SharedAnswers: Send + Sync {
    /// The answer remembered for `key`, if any.
    fn get(&self, key: [u8; 32]) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;
    /// Remembers `answer` unless one is there already; returns the one that stays.
    fn put(&self, key: [u8; 32], answer: Bytes) -> BoxFuture<'_, Result<Bytes, StoreError>>;
}

/// A durable engine. Implementations: `embedded::Embedded`, `jetstream::JetStream`.
pub trait Store: Send + Sync + 'static {
    /// True when `key` is known durable: a duplicate, answerable at once. A node may
    /// not know every key; only `append` decides that a callback is new.
    fn known_duplicate(&self, key: DedupKey) -> bool;

    /// Makes `callback` durable, or finds it a duplicate of something durable.
    fn append(&self, callback: Callback) -> BoxFuture<'_, Result<Appended, StoreError>>;

    /// Records an attempt's outcome for `event` at `endpoint`. Never lost silently:
    /// an error means the delivery keeps its last durable state.
    fn settle(
        &self,
        event: &Arc<Event>,
        endpoint: &EndpointKey,
        outcome: Settle,
    ) -> Result<(), StoreError>;

    /// The worker of `endpoint` has no room for this arrival and leaves it to the store:
    /// its next `pending` read must find it. (The embedded journal already holds every
    /// delivery from the event's own commit.)
    fn defer(&self, _event: &Arc<Event>, _endpoint: &EndpointKey) -> Result<(), StoreError> {
        Ok(())
    }

    /// Resolves once everything settled before the call is durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Up to `limit` pending deliveries of `endpoint` on this node from seq `from` on,
    /// of those announced by `Notice::Rescan` up to `horizon` (the newest the worker
    /// has taken in).
    fn pending(
        &self,
        endpoint: EndpointKey,
        from: u64,
        limit: usize,
        horizon: u64,
    ) -> BoxFuture<'_, Result<PendingPage, StoreError>>;

    /// Dead letters of `endpoint` (all endpoints when `None`) after `after`.
    fn dead_letters(
        &self,
        endpoint: Option<EndpointKey>,
        after: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<DeadPage, StoreError>>;

    /// Puts dead letters of `endpoint` (`seq` alone, or all) back to pending, each with
    /// the state `renew` makes of its old one (a new round); returns how many. They
    /// reach the endpoint once durable again.
    fn replay(
        &self,
        endpoint: EndpointKey,
        seq: Option<u64>,
        renew: fn(&[u8]) -> Vec<u8>,
    ) -> BoxFuture<'_, Result<usize, StoreError>>;

    /// Up to `limit` quarantined records with a seq above `after`, oldest first (fewer
    /// when their bytes fill `QUARANTINE_PAGE_BYTES`).
    fn quarantined(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<QuarantinePage, StoreError>>;

    /// One event and where each of its deliveries stands.
    fn event(&self, seq: u64) -> BoxFuture<'_, Result<Option<EventView>, StoreError>>;

    /// Keeps `request` for its payment's timeline, as long as the dedup window.
    fn record_signed(&self, request: SignedRequest) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The timeline of payment `payment_id` of `project`.
    fn payment(
        &self,
        project: u64,
        payment_id: String,
    ) -> BoxFuture<'_, Result<PaymentView, StoreError>>;

    /// Stops or resumes delivery to `endpoint` on every node.
    fn set_paused(
        &self,
        endpoint: EndpointKey,
        paused: bool,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Endpoint states of every node, merged, given this node's own.
    fn endpoint_status(
        &self,
        local: Vec<EndpointStatus>,
    ) -> BoxFuture<'_, Result<Vec<EndpointStatus>, StoreError>> {
        Box::pin(async move { Ok(local) })
    }

    /// Lets other nodes ask this one for its endpoint states.
    fn serve_status(&self, _source: StatusSource) {}

    /// check_deposit answers shared across nodes, where the engine has them.
    fn shared_answers(&self) -> Option<Arc<dyn SharedAnswers>> {
        None
    }

    fn health(&self) -> Health;

    /// Resolves once the store failed in a way only a restart can clear (the embedded
    /// journal after a failed fsync); the app then shuts down and exits non-zero.
    fn failed(&self) -> BoxFuture<'_, StoreError> {
        Box::pin(std::future::pending())
    }

    /// Makes everything queued durable and stops; later calls answer `Closed`. Called
    /// after delivery stopped.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Opens the engine `config.storage` names. Returns it and what this node's delivery
/// engine reads.
/// Its critical threads report to `watchdog`.
pub async fn open(
    config: &Config,
    watchdog: &Watchdog,
) -> Result<(Arc<dyn Store>, Feed), StoreError> {
    match config.storage.engine {
        Engine::Embedded => {
            let (storage, watchdog) = (config.storage.clone(), watchdog.clone());
            let (store, feed) =
                tokio::task::spawn_blocking(move || embedded::open(&storage, &watchdog))
                    .await
                    .map_err(|e| StoreError::Refused(format!("journal open failed: {e}")))??;
            Ok((Arc::new(store), feed))
        }
        Engine::Jetstream => jetstream::open(config).await,
    }
}

/// Merges endpoint states reported by several nodes into one per endpoint.
pub fn merge_status(all: impl IntoIterator<Item = EndpointStatus>) -> Vec<EndpointStatus> {
    let mut by_key: std::collections::BTreeMap<EndpointKey, EndpointStatus> = Default::default();
    for s in all {
        match by_key.get_mut(&s.endpoint) {
            None => {
                by_key.insert(s.endpoint.clone(), s);
            }
            Some(m) => {
                m.configured |= s.configured;
                m.paused |= s.paused;
                m.circuit_open |= s.circuit_open;
                m.pending += s.pending;
                m.in_memory += s.in_memory;
                m.in_flight += s.in_flight;
                m.spilled |= s.spilled;
            }
        }
    }
    by_key.into_values().collect()
}
