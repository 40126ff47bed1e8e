//! The durable journal: accepted callbacks, their dedup keys and delivery state.
//!
//! Invariants
//! - A callback is answered 200 only after the commit holding it returned, and a
//!   commit returns only after fdatasync (redb `Durability::Immediate`).
//! - Dedup key, event and its deliveries are written in one transaction: there is no
//!   instant at which a key is durable without its event, or the reverse.
//! - One writer thread group-commits whatever arrived while the previous commit ran.
//! - Delivery updates commit in the order they were queued; `flush` resolves once
//!   everything queued before it is durable.
//!
//! On disk (`{storage.dir}/cbgate.redb`, redb 4, one-phase commits: one fdatasync
//! each). Quick-repair is off: it doubles the fsyncs (two-phase commit) to make
//! recovery skip a full scan, but start-up verifies the whole file anyway
//! (`storage.verify_on_open`), so it would buy nothing (BENCHMARKS.md):
//! - `meta`: `"next_seq" -> u64`.
//! - `events`: `seq -> record` (see `Event::encode`), kept while a delivery of it is
//!   pending or dead; one that no endpoint wanted goes when its dedup key expires.
//! - `dedup_by_seq`: `(expires_s, seq) -> key`: ordered by expiry so a sweep deletes
//!   from the front (at most `SWEEP_CHUNK` keys per commit), and by seq within it so a
//!   commit appends at the tree's right edge
//!   (keyed by the digest, 64 inserts dirtied up to 64 random leaves: 2x slower).
//! - `deliveries`: `(seq, endpoint key) -> state` for every delivery not yet done.
//! - `dead`: `(endpoint key, seq) -> state` for deliveries that ran out of attempts.
//!
//! Plus `commit.mark`: the last committed `next_seq`, rewritten (not synced) after every
//! commit. If redb ever opens behind it (a damaged file repaired to an older commit),
//! start-up refuses instead of serving with silent loss.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::callback::Callback;
use crate::dedup::{DedupKey, DedupSet};
use crate::metrics as m;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DEDUP: TableDefinition<(u32, u64), u128> = TableDefinition::new("dedup_by_seq");
const DELIVERIES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("deliveries");
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage error: {0}")]
    Storage(String),
    #[error(
        "journal {path} is damaged: it holds commits up to #{found} but #{marked} was acknowledged; \
         restore it from a backup (the damaged file is left untouched)"
    )]
    Lost {
        path: PathBuf,
        found: u64,
        marked: u64,
    },
    #[error("journal is shutting down")]
    Closed,
    #[error("journal record #{0} is malformed")]
    Malformed(u64),
}

macro_rules! storage_err {
    ($($t:ty),*) => {$(
        impl From<$t> for JournalError {
            fn from(e: $t) -> Self {
                JournalError::Storage(e.to_string())
            }
        }
    )*};
}
storage_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    std::io::Error
);

/// An accepted callback as the journal keeps it.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub accepted_ms: u64,
    pub project: u64,
    pub dedup: DedupKey,
    pub order_key: String,
    /// Endpoint keys it was routed to when accepted.
    pub endpoints: Vec<String>,
    pub body: Bytes,
}

impl Event {
    const VERSION: u8 = 1;

    /// `version u8 | accepted_ms u64 | project u64 | dedup u128 | order_key (u16 len)
    /// | endpoint count u16, each (u16 len) | body`, integers little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.order_key.len() + self.body.len());
        out.push(Self::VERSION);
        out.extend_from_slice(&self.accepted_ms.to_le_bytes());
        out.extend_from_slice(&self.project.to_le_bytes());
        out.extend_from_slice(&self.dedup.0.to_le_bytes());
        put_str(&mut out, &self.order_key);
        out.extend_from_slice(&(self.endpoints.len() as u16).to_le_bytes());
        for e in &self.endpoints {
            put_str(&mut out, e);
        }
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(seq: u64, raw: &[u8]) -> Result<Event, JournalError> {
        Self::decode_with(seq, raw, Bytes::copy_from_slice)
    }

    /// Everything but the body, which is left empty: the journal's own bookkeeping
    /// needs no copy of it.
    fn decode_head(seq: u64, raw: &[u8]) -> Result<Event, JournalError> {
        Self::decode_with(seq, raw, |_| Bytes::new())
    }

    fn decode_with(
        seq: u64,
        raw: &[u8],
        body: impl FnOnce(&[u8]) -> Bytes,
    ) -> Result<Event, JournalError> {
        let bad = || JournalError::Malformed(seq);
        let mut r = Reader(raw);
        if r.take(1).ok_or_else(bad)?[0] != Self::VERSION {
            return Err(bad());
        }
        let accepted_ms = u64::from_le_bytes(r.array().ok_or_else(bad)?);
        let project = u64::from_le_bytes(r.array().ok_or_else(bad)?);
        let dedup = DedupKey(u128::from_le_bytes(r.array().ok_or_else(bad)?));
        let order_key = r.string().ok_or_else(bad)?;
        let n = u16::from_le_bytes(r.array().ok_or_else(bad)?);
        let endpoints = (0..n)
            .map(|_| r.string().ok_or_else(bad))
            .collect::<Result<_, _>>()?;
        Ok(Event {
            seq,
            accepted_ms,
            project,
            dedup,
            order_key,
            endpoints,
            body: body(r.0),
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn string(&mut self) -> Option<String> {
        let n = u16::from_le_bytes(self.array()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// A change to one delivery, made durable with the next group commit.
#[derive(Debug, Clone)]
pub enum DeliveryUpdate {
    /// The endpoint took it: forget the delivery (and the event once none is left).
    Done { seq: u64, endpoint: String },
    /// Still trying: keep the attempt log.
    Retry {
        seq: u64,
        endpoint: String,
        state: Vec<u8>,
    },
    /// Out of attempts: move to the dead letters.
    Dead {
        seq: u64,
        endpoint: String,
        state: Vec<u8>,
    },
    /// Replay a dead letter: back to pending with a fresh state.
    Revive {
        seq: u64,
        endpoint: String,
        state: Vec<u8>,
    },
}

/// Pending deliveries of one endpoint, read in one transaction.
pub struct PendingPage {
    /// `(event, state)` in seq order.
    pub rows: Vec<(Event, Vec<u8>)>,
    /// Rows scanned (matching or not) ended before `limit` was reached: nothing
    /// further is pending for the endpoint as of this read.
    pub complete: bool,
    /// The journal's `next_seq` at this read: every seq below it was committed.
    pub next_seq: u64,
}

/// What one commit writes.
#[derive(Default)]
pub struct Group {
    pub events: Vec<(Event, u32)>,
    pub updates: Vec<DeliveryUpdate>,
    pub sweep_before: Option<u32>,
    pub next_seq: u64,
}

/// State found at start-up.
pub struct Recovery {
    pub next_seq: u64,
    pub dedup: Vec<(DedupKey, u32)>,
    /// `(seq, endpoint key, state)` of every pending delivery, in seq order.
    pub pending: Vec<(u64, String, Vec<u8>)>,
}

/// A durable engine behind the writer. The embedded redb file is one; a shared
/// NATS JetStream engine is the other the design plans for.
pub trait Store: Send + Sync + 'static {
    /// Writes one group atomically and durably.
    fn commit(&self, group: &Group) -> Result<(), JournalError>;
    /// What start-up needs: the next sequence, live dedup keys, pending deliveries.
    fn recover(&self, now_s: u32) -> Result<Recovery, JournalError>;
    fn event(&self, seq: u64) -> Result<Option<Event>, JournalError>;
    /// Dead letters after `after` (exclusive) as `(endpoint, seq, state)`; all endpoints
    /// when `endpoint` is `None`.
    fn dead_letters(
        &self,
        endpoint: Option<&str>,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>, JournalError>;
    /// The delivery state of `seq` at `endpoint`, pending or dead.
    fn delivery(&self, seq: u64, endpoint: &str) -> Result<Option<(bool, Vec<u8>)>, JournalError>;
    /// Up to `limit` pending deliveries of `endpoint` with seq `>= from`, with their
    /// events. Scans every pending row from `from` on (rows are keyed by seq first).
    fn pending(&self, endpoint: &str, from: u64, limit: usize)
    -> Result<PendingPage, JournalError>;
}

/// The embedded engine: one redb file.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    mark: File,
    /// A sweep left unfinished: the keys expiring before it still to drop.
    sweeping: std::sync::Mutex<Option<u32>>,
}

/// Expired dedup keys (and the events they kept) dropped per commit at most: a
/// minute's keys at once (240 k at 4 k/s) held the writer for half a second.
const SWEEP_CHUNK: usize = 256;

impl RedbStore {
    /// Opens (or creates) the journal in `dir`, verifying the whole file when
    /// `verify` is set: a damaged file is refused, never half-trusted. redb caches
    /// pages and buffers writes in at most `cache_bytes` of memory.
    pub fn open(dir: &Path, verify: bool, cache_bytes: usize) -> Result<RedbStore, JournalError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("cbgate.redb");
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(verify && path.exists())
            .create(&path)
            .map_err(|e| JournalError::Storage(format!("cannot open {}: {e}", path.display())))?;
        let mark_path = dir.join("commit.mark");
        let mark = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&mark_path)?;
        let store = RedbStore {
            db,
            path,
            mark,
            sweeping: std::sync::Mutex::new(None),
        };
        store.init()?;
        let found = store.next_seq()?;
        if let Some(marked) = store.read_mark()?
            && found < marked
        {
            return Err(JournalError::Lost {
                path: store.path.clone(),
                found,
                marked,
            });
        }
        Ok(store)
    }

    fn init(&self) -> Result<(), JournalError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.set_quick_repair(false);
        {
            let mut meta = tx.open_table(META)?;
            if meta.get("next_seq")?.is_none() {
                meta.insert("next_seq", 1)?;
            }
            tx.open_table(EVENTS)?;
            tx.open_table(DEDUP)?;
            tx.open_table(DELIVERIES)?;
            tx.open_table(DEAD)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn next_seq(&self) -> Result<u64, JournalError> {
        let tx = self.db.begin_read()?;
        Ok(tx
            .open_table(META)?
            .get("next_seq")?
            .map(|v| v.value())
            .unwrap_or(1))
    }

    /// The mark is `seq` twice (the second inverted): a torn mark reads as none.
    fn read_mark(&self) -> Result<Option<u64>, JournalError> {
        let mut b = [0u8; 16];
        match self.mark.read_exact_at(&mut b, 0) {
            Ok(()) => {
                let seq = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                let check = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
                Ok((seq == !check).then_some(seq))
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write_mark(&self, seq: u64) -> Result<(), JournalError> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&seq.to_le_bytes());
        b[8..].copy_from_slice(&(!seq).to_le_bytes());
        self.mark.write_all_at(&b, 0)?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn commit(&self, group: &Group) -> Result<(), JournalError> {
        // A newer sweep covers an unfinished one: `before` only grows.
        let mut sweeping = self.sweeping.lock().expect("sweep lock");
        let before = group.sweep_before.or(*sweeping);
        let mut unfinished = None;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.set_quick_repair(false);
        {
            let mut events = tx.open_table(EVENTS)?;
            let mut dedup = tx.open_table(DEDUP)?;
            let mut deliveries = tx.open_table(DELIVERIES)?;
            let mut dead = tx.open_table(DEAD)?;
            for (event, expires) in &group.events {
                events.insert(event.seq, event.encode().as_slice())?;
                dedup.insert((*expires, event.seq), event.dedup.0)?;
                for endpoint in &event.endpoints {
                    deliveries.insert((event.seq, endpoint.as_str()), [].as_slice())?;
                }
            }
            // Events that may have lost their last reason to stay.
            let mut released = Vec::new();
            for update in &group.updates {
                match update {
                    DeliveryUpdate::Done { seq, endpoint } => {
                        deliveries.remove((*seq, endpoint.as_str()))?;
                        released.push(*seq);
                    }
                    DeliveryUpdate::Retry {
                        seq,
                        endpoint,
                        state,
                    } => {
                        deliveries.insert((*seq, endpoint.as_str()), state.as_slice())?;
                    }
                    DeliveryUpdate::Dead {
                        seq,
                        endpoint,
                        state,
                    } => {
                        deliveries.remove((*seq, endpoint.as_str()))?;
                        dead.insert((endpoint.as_str(), *seq), state.as_slice())?;
                    }
                    DeliveryUpdate::Revive {
                        seq,
                        endpoint,
                        state,
                    } => {
                        dead.remove((endpoint.as_str(), *seq))?;
                        deliveries.insert((*seq, endpoint.as_str()), state.as_slice())?;
                    }
                }
            }
            if let Some(before) = before {
                // An unrouted event (or one every endpoint took while its key lived) is
                // kept only for its dedup key: it goes with the key.
                let expired = dedup
                    .range((0, 0)..(before, 0))?
                    .take(SWEEP_CHUNK)
                    .map(|row| row.map(|(k, _)| k.value()))
                    .collect::<Result<Vec<_>, _>>()?;
                for key in &expired {
                    dedup.remove(key)?;
                    released.push(key.1);
                }
                if expired.len() == SWEEP_CHUNK {
                    unfinished = Some(before);
                }
            }
            // An event goes once no delivery of it is pending and none is dead. Dead
            // letters are keyed by endpoint first, so each of the event's endpoints is
            // looked up (a scan of them all cost 5.6 ms per commit beside 100 k).
            for seq in released {
                if deliveries.range((seq, "")..(seq + 1, ""))?.next().is_some() {
                    continue;
                }
                let endpoints = match events.get(seq)? {
                    Some(raw) => Event::decode_head(seq, raw.value())?.endpoints,
                    None => continue,
                };
                let mut dead_any = false;
                for endpoint in &endpoints {
                    dead_any |= dead.get((endpoint.as_str(), seq))?.is_some();
                }
                if !dead_any {
                    events.remove(seq)?;
                }
            }
            tx.open_table(META)?.insert("next_seq", group.next_seq)?;
        }
        tx.commit()?;
        *sweeping = unfinished;
        self.write_mark(group.next_seq)?;
        Ok(())
    }

    fn recover(&self, now_s: u32) -> Result<Recovery, JournalError> {
        let tx = self.db.begin_read()?;
        let next_seq = tx
            .open_table(META)?
            .get("next_seq")?
            .map(|v| v.value())
            .unwrap_or(1);
        let dedup = tx
            .open_table(DEDUP)?
            .range((now_s.saturating_add(1), 0)..)?
            .map(|r| r.map(|(k, v)| (DedupKey(v.value()), k.value().0)))
            .collect::<Result<_, _>>()?;
        let pending = tx
            .open_table(DELIVERIES)?
            .iter()?
            .map(|r| {
                r.map(|(k, v)| {
                    let (seq, endpoint) = k.value();
                    (seq, endpoint.to_string(), v.value().to_vec())
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Recovery {
            next_seq,
            dedup,
            pending,
        })
    }

    fn event(&self, seq: u64) -> Result<Option<Event>, JournalError> {
        let tx = self.db.begin_read()?;
        let events = tx.open_table(EVENTS)?;
        events
            .get(seq)?
            .map(|v| Event::decode(seq, v.value()))
            .transpose()
    }

    fn dead_letters(
        &self,
        endpoint: Option<&str>,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>, JournalError> {
        let tx = self.db.begin_read()?;
        let dead = tx.open_table(DEAD)?;
        let mut start = after
            .map(|(e, s)| (e, s.saturating_add(1)))
            .unwrap_or_default();
        if let Some(want) = endpoint {
            start = start.max((want.to_string(), 0));
        }
        let mut out = Vec::new();
        for row in dead.range((start.0.as_str(), start.1)..)? {
            let (k, v) = row?;
            let (ep, seq) = k.value();
            if endpoint.is_some_and(|want| want != ep) {
                // Keyed by endpoint first: its rows are all behind.
                break;
            }
            out.push((ep.to_string(), seq, v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn delivery(&self, seq: u64, endpoint: &str) -> Result<Option<(bool, Vec<u8>)>, JournalError> {
        let tx = self.db.begin_read()?;
        if let Some(v) = tx.open_table(DELIVERIES)?.get((seq, endpoint))? {
            return Ok(Some((false, v.value().to_vec())));
        }
        Ok(tx
            .open_table(DEAD)?
            .get((endpoint, seq))?
            .map(|v| (true, v.value().to_vec())))
    }

    fn pending(
        &self,
        endpoint: &str,
        from: u64,
        limit: usize,
    ) -> Result<PendingPage, JournalError> {
        self.pending_rows(endpoint, from, limit)
    }
}

impl RedbStore {
    fn pending_rows(
        &self,
        endpoint: &str,
        from: u64,
        limit: usize,
    ) -> Result<PendingPage, JournalError> {
        let tx = self.db.begin_read()?;
        let next_seq = tx
            .open_table(META)?
            .get("next_seq")?
            .map(|v| v.value())
            .unwrap_or(1);
        let deliveries = tx.open_table(DELIVERIES)?;
        let events = tx.open_table(EVENTS)?;
        let mut rows = Vec::new();
        let mut complete = true;
        for row in deliveries.range((from, "")..)? {
            let (k, v) = row?;
            let (seq, ep) = k.value();
            if ep != endpoint {
                continue;
            }
            if rows.len() >= limit {
                complete = false;
                break;
            }
            // A pending row without its event would be a journal bug; skip it loudly
            // rather than stall the endpoint.
            match events.get(seq)? {
                Some(raw) => rows.push((Event::decode(seq, raw.value())?, v.value().to_vec())),
                None => tracing::error!(seq, endpoint, "pending delivery without its event"),
            }
        }
        Ok(PendingPage {
            rows,
            complete,
            next_seq,
        })
    }
}

/// What the writer answers for one callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted(u64),
    Duplicate,
}

/// Why a callback was not taken. Both answer 503: the platform retries.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("journal queue is full")]
    Busy,
    #[error(transparent)]
    Journal(#[from] JournalError),
}

enum Op {
    Append(Callback, oneshot::Sender<Result<Outcome, SubmitError>>),
    Update(DeliveryUpdate),
    Sweep(u32),
    /// Answer once everything queued before it is durable.
    Flush(oneshot::Sender<Result<(), JournalError>>),
    /// Commit what is queued, then stop.
    Close,
}

/// A running journal: its handle, the pending deliveries found at recovery
/// (`(seq, endpoint key, state)`), and the writer thread.
pub type Started = (
    Journal,
    Vec<(u64, String, Vec<u8>)>,
    std::thread::JoinHandle<()>,
);

/// Accepted events go to the delivery engine after their commit.
pub type Accepted = crossbeam_channel::Sender<Arc<Event>>;

/// The handle ingress and delivery use to reach the writer thread.
#[derive(Clone)]
pub struct Journal {
    tx: crossbeam_channel::Sender<Op>,
    dedup: Arc<DedupSet>,
    store: Arc<dyn Store>,
    window: Duration,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_s() -> u32 {
    (now_ms() / 1000) as u32
}

impl Journal {
    /// Recovers `store` and starts the writer thread. Returns the handle, the
    /// pending deliveries found, and the writer's join handle (it ends when every
    /// handle is dropped, after a last commit).
    pub fn start(
        store: Arc<dyn Store>,
        window: Duration,
        max_batch: usize,
        max_pending: usize,
        accepted: Option<Accepted>,
    ) -> Result<Started, JournalError> {
        let started = Instant::now();
        let recovery = store.recover(now_s())?;
        let dedup = Arc::new(DedupSet::with_capacity(recovery.dedup.len()));
        for (key, expires) in &recovery.dedup {
            dedup.insert(*key, *expires);
        }
        tracing::info!(
            next_seq = recovery.next_seq,
            dedup_keys = recovery.dedup.len(),
            pending_deliveries = recovery.pending.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "journal recovered"
        );
        let (tx, rx) = crossbeam_channel::bounded(max_pending);
        let writer = Writer {
            rx,
            store: store.clone(),
            dedup: dedup.clone(),
            next_seq: recovery.next_seq,
            max_batch,
            window,
            accepted,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run())?;
        Ok((
            Journal {
                tx,
                dedup,
                store,
                window,
            },
            recovery.pending,
            handle,
        ))
    }

    /// A duplicate of something already durable, answerable without the writer.
    pub fn is_durable_duplicate(&self, key: DedupKey) -> bool {
        self.dedup.contains(key, now_s())
    }

    /// Queues `callback` for the next group commit; the receiver resolves once it is
    /// durable (or known a duplicate of something durable).
    pub fn submit(
        &self,
        callback: Callback,
    ) -> Result<oneshot::Receiver<Result<Outcome, SubmitError>>, SubmitError> {
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(Op::Append(callback, tx)) {
            Ok(()) => Ok(rx),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(SubmitError::Busy),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                Err(SubmitError::Journal(JournalError::Closed))
            }
        }
    }

    /// Records a delivery change with the next commit. Blocks while the queue is full
    /// (delivery progress must never be dropped).
    pub fn update(&self, update: DeliveryUpdate) -> Result<(), JournalError> {
        match self.tx.try_send(Op::Update(update)) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(JournalError::Closed),
            Err(crossbeam_channel::TrySendError::Full(op)) => {
                // The writer is behind: wait for room without stalling the other
                // tasks of this reactor thread.
                let send = || self.tx.send(op).map_err(|_| JournalError::Closed);
                match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(send)
                    }
                    _ => send(),
                }
            }
        }
    }

    /// Resolves once every update queued before this call is durable (or failed).
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Flush(tx))
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Asks the writer to commit everything queued and stop (shutdown, after ingress
    /// stopped taking callbacks). Later submissions answer 503.
    pub fn close(&self) {
        let _ = self.tx.send(Op::Close);
    }

    /// Forgets dedup keys that expired.
    pub fn sweep(&self) {
        let now = now_s();
        let gone = self.dedup.sweep(now);
        if gone > 0 {
            let _ = self.tx.try_send(Op::Sweep(now));
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

struct Writer {
    rx: crossbeam_channel::Receiver<Op>,
    store: Arc<dyn Store>,
    dedup: Arc<DedupSet>,
    next_seq: u64,
    max_batch: usize,
    window: Duration,
    accepted: Option<Accepted>,
}

type Reply = (oneshot::Sender<Result<Outcome, SubmitError>>, Outcome);

impl Writer {
    fn run(mut self) {
        let mut batch_keys = std::collections::HashSet::new();
        let mut closing = false;
        loop {
            let first = if closing {
                match self.rx.try_recv() {
                    Ok(op) => op,
                    Err(_) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                }
            };
            let mut group = Group::default();
            let mut replies: Vec<Reply> = Vec::new();
            let mut flushes = Vec::new();
            batch_keys.clear();
            let now = now_s();
            let expires = now.saturating_add(self.window.as_secs() as u32);
            let mut op = Some(first);
            while let Some(next) = op.take() {
                match next {
                    Op::Append(cb, reply) => {
                        // Duplicates of a durable key, or of one in this very group, are
                        // answered after this commit: never before the original is safe.
                        if self.dedup.contains(cb.dedup, now) || !batch_keys.insert(cb.dedup) {
                            replies.push((reply, Outcome::Duplicate));
                        } else {
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            group.events.push((
                                Event {
                                    seq,
                                    accepted_ms: now_ms(),
                                    project: cb.project,
                                    dedup: cb.dedup,
                                    order_key: cb.order_key,
                                    endpoints: cb.endpoints.iter().map(|e| e.key.clone()).collect(),
                                    body: cb.body,
                                },
                                expires,
                            ));
                            replies.push((reply, Outcome::Accepted(seq)));
                        }
                    }
                    Op::Update(u) => group.updates.push(u),
                    Op::Sweep(before) => group.sweep_before = Some(before),
                    Op::Flush(reply) => flushes.push(reply),
                    Op::Close => closing = true,
                }
                if replies.len() + group.updates.len() < self.max_batch {
                    op = self.rx.try_recv().ok();
                }
            }
            group.next_seq = self.next_seq;
            if group.events.is_empty()
                && group.updates.is_empty()
                && group.sweep_before.is_none()
                && replies.is_empty()
            {
                // Only flushes: everything before them was committed by earlier groups.
                for reply in flushes {
                    let _ = reply.send(Ok(()));
                }
                continue;
            }
            let started = Instant::now();
            let result = self.store.commit(&group);
            metrics::histogram!(m::JOURNAL_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::histogram!(m::JOURNAL_BATCH_SIZE).record(group.events.len() as f64);
            match result {
                Ok(()) => {
                    for (event, expires) in &group.events {
                        self.dedup.insert(event.dedup, *expires);
                    }
                    for (reply, outcome) in replies {
                        let _ = reply.send(Ok(outcome));
                    }
                    for reply in flushes {
                        let _ = reply.send(Ok(()));
                    }
                    if let Some(accepted) = &self.accepted {
                        // Unrouted events have nothing to deliver; sending them would only
                        // move their freeing to the dispatcher thread.
                        for (event, _) in group.events {
                            if !event.endpoints.is_empty() {
                                let _ = accepted.send(Arc::new(event));
                            }
                        }
                    }
                }
                Err(e) => {
                    metrics::counter!(m::JOURNAL_ERRORS_TOTAL).increment(1);
                    tracing::error!(error = %e, events = group.events.len(), "journal commit failed; answering 503");
                    // Nothing of this group is durable: take back the sequence numbers.
                    // Its delivery updates are lost: those rows keep their last durable
                    // state, so at worst a delivery is repeated after a restart.
                    self.next_seq -= group.events.len() as u64;
                    for (reply, _) in replies {
                        let _ = reply.send(Err(SubmitError::Journal(JournalError::Storage(
                            e.to_string(),
                        ))));
                    }
                    for reply in flushes {
                        let _ = reply.send(Err(JournalError::Storage(e.to_string())));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, endpoints: &[&str]) -> Event {
        Event {
            seq,
            accepted_ms: 0,
            project: 1234,
            dedup: DedupKey(u128::from(seq)),
            order_key: format!("pay-{seq}"),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            body: Bytes::from_static(b"{}"),
        }
    }

    fn commit(
        store: &RedbStore,
        events: Vec<(Event, u32)>,
        updates: Vec<DeliveryUpdate>,
        sweep: Option<u32>,
    ) {
        let group = Group {
            events,
            updates,
            sweep_before: sweep,
            next_seq: 10,
        };
        store.commit(&group).unwrap();
    }

    #[test]
    fn dead_letters_page_by_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), false, 1 << 20).unwrap();
        let dead = |seq, endpoint: &str| DeliveryUpdate::Dead {
            seq,
            endpoint: endpoint.into(),
            state: vec![],
        };
        commit(
            &store,
            vec![],
            vec![
                dead(1, "a"),
                dead(2, "c"),
                dead(3, "a"),
                dead(4, "c"),
                dead(5, "a"),
            ],
            None,
        );
        let page = |endpoint, after: Option<(&str, u64)>, limit| {
            store
                .dead_letters(endpoint, after.map(|(e, s)| (e.to_string(), s)), limit)
                .unwrap()
                .into_iter()
                .map(|(e, s, _)| format!("{e}{s}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(page(Some("a"), None, 2), ["a1", "a3"]);
        assert_eq!(page(Some("a"), Some(("a", 3)), 2), ["a5"]);
        assert_eq!(page(Some("c"), None, 10), ["c2", "c4"]);
        assert!(page(Some("b"), None, 10).is_empty());
        assert_eq!(page(None, Some(("a", 5)), 10), ["c2", "c4"]);
        assert_eq!(page(None, None, 10).len(), 5);
    }

    #[test]
    fn a_long_sweep_goes_a_chunk_per_commit_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), false, 1 << 20).unwrap();
        let n = 2 * SWEEP_CHUNK as u64 + 10;
        commit(
            &store,
            (1..=n).map(|s| (event(s, &[]), 100)).collect(),
            vec![],
            None,
        );
        let left = || {
            (1..=n)
                .filter(|&s| store.event(s).unwrap().is_some())
                .count()
        };
        commit(&store, vec![], vec![], Some(200));
        assert_eq!(left(), n as usize - SWEEP_CHUNK);
        // Later commits carry the sweep on without being asked again.
        commit(&store, vec![], vec![], None);
        commit(&store, vec![], vec![], None);
        assert_eq!(left(), 0);
    }

    #[test]
    fn a_sweep_drops_the_events_only_their_expired_keys_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), false, 1 << 20).unwrap();
        let dead = || DeliveryUpdate::Dead {
            seq: 4,
            endpoint: "b".into(),
            state: vec![1],
        };
        commit(
            &store,
            vec![
                (event(1, &[]), 100),         // unrouted
                (event(2, &["a"]), 100),      // still pending
                (event(3, &["a"]), 100),      // delivered below
                (event(4, &["b"]), 100),      // a dead letter below
                (event(5, &[]), 300),         // its key lives on
                (event(6, &["a", "b"]), 100), // delivered to a, dead at b
            ],
            vec![],
            None,
        );
        commit(
            &store,
            vec![],
            vec![
                DeliveryUpdate::Done {
                    seq: 3,
                    endpoint: "a".into(),
                },
                dead(),
                DeliveryUpdate::Dead {
                    seq: 6,
                    endpoint: "b".into(),
                    state: vec![2],
                },
                DeliveryUpdate::Done {
                    seq: 6,
                    endpoint: "a".into(),
                },
            ],
            None,
        );
        assert!(
            store.event(1).unwrap().is_some(),
            "kept while its key lives"
        );
        assert!(store.event(3).unwrap().is_none(), "delivered: gone at once");

        commit(&store, vec![], vec![], Some(200));
        let left: Vec<u64> = (1..=6)
            .filter(|&s| store.event(s).unwrap().is_some())
            .collect();
        assert_eq!(left, [2, 4, 5, 6]);
        let recovered = store.recover(150).unwrap();
        assert_eq!(recovered.dedup, [(DedupKey(5), 300)]);
        assert_eq!(recovered.pending, [(2, "a".to_string(), vec![])]);
    }
}
