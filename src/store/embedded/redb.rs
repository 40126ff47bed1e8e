//! The journal's redb file: tables, one group commit, recovery and the reads delivery
//! and admin make.
//!
//! On disk (`{storage.dir}/cbgate.redb`, redb 4, one-phase commits: one fdatasync
//! each). Quick-repair is off: it doubles the fsyncs (two-phase commit) to make
//! recovery skip a full scan, but start-up verifies the whole file anyway
//! (`storage.verify_on_open`), so it would buy nothing (BENCHMARKS.md):
//! - `meta`: `"next_seq" -> u64`.
//! - `events`: `seq -> record` (`record.rs`), kept as long as its dedup key (for the
//!   payment's timeline), and after that while a delivery of it is pending or dead.
//! - `dedup_by_seq`: `(expires_s, seq) -> key`: ordered by expiry so a sweep deletes
//!   from the front (at most `SWEEP_CHUNK` keys per commit), and by seq within it so a
//!   commit appends at the tree's right edge
//!   (keyed by the digest, 64 inserts dirtied up to 64 random leaves: 2x slower).
//! - `deliveries`: `(seq, endpoint key) -> state` for every delivery not yet done.
//! - `dead`: `(endpoint key, seq) -> state` for deliveries that ran out of attempts.
//! - `events_by_lane`: `(order key, seq) -> ()` for every kept event: a payment's
//!   timeline without a scan.
//! - `signed`: `(at_ms, id) -> request` (JSON) for requests the merchant listener
//!   signed, kept for the dedup window and swept with the keys;
//!   `signed_by_lane`: `(order key, at_ms, id) -> ()`.
//! - `quarantine`: `seq -> entry` (JSON: when, why, the endpoints whose pending
//!   deliveries were dropped, the bytes as found in base64) for each event record
//!   that could not be decoded (or was missing under a pending delivery): moved out of
//!   `events` and `deliveries` so its endpoints' other deliveries go on, and kept
//!   until removed by hand. Its `events_by_lane` row, if any, stays: the lane of an
//!   unreadable record is unknown, and the row points at nothing.
//!
//! Plus `commit.mark`: the last committed `next_seq`, rewritten (not synced) after every
//! commit. If redb ever opens behind it (a damaged file repaired to an older commit),
//! start-up refuses instead of serving with silent loss.
//!
//! A failed write (disk full) leaves redb refusing every commit until the file is
//! reopened (`reopen`); the file goes through `disk::Watched`, which tells a failed
//! write from a failed fsync.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use super::disk::{self, Faults, Watched};

use crate::clock::now_ms;
use crate::dedup::DedupKey;
use crate::store::record;
use crate::store::{EndpointKey, Event, QuarantinePage, Quarantined, SignedRequest, StoreError};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const DEDUP: TableDefinition<(u32, u64), u128> = TableDefinition::new("dedup_by_seq");
const DELIVERIES: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("deliveries");
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");
const BY_LANE: TableDefinition<(&str, u64), ()> = TableDefinition::new("events_by_lane");
const SIGNED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("signed");
const SIGNED_BY_LANE: TableDefinition<(&str, u64, u64), ()> =
    TableDefinition::new("signed_by_lane");
const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");

/// The reason given for a pending delivery whose event record is not there at all.
const MISSING: &str = "its event record is missing";

macro_rules! storage_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Unavailable(format!("journal: {e}"))
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

/// A change to one delivery, made durable with the next group commit.
#[derive(Debug, Clone)]
pub enum Update {
    /// The endpoint took it: forget the delivery (and the event once none is left).
    Done { seq: u64, endpoint: EndpointKey },
    /// Still trying: keep the attempt log.
    Retry {
        seq: u64,
        endpoint: EndpointKey,
        state: Vec<u8>,
    },
    /// Out of attempts: move to the dead letters.
    Dead {
        seq: u64,
        endpoint: EndpointKey,
        state: Vec<u8>,
    },
    /// Replay a dead letter: back to pending with a fresh state.
    Revive {
        seq: u64,
        endpoint: EndpointKey,
        state: Vec<u8>,
    },
    /// Event `seq` cannot be read (`reason`): move it to the quarantine and drop every
    /// pending delivery of it.
    Quarantine { seq: u64, reason: String },
}

/// A record a read found unreadable, to be quarantined by the next commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    pub seq: u64,
    pub reason: String,
}

/// What a commit did beside writing its group.
#[derive(Debug, Default)]
pub struct Committed {
    /// Records quarantined for the first time.
    pub quarantined: Vec<Quarantined>,
    /// Pending deliveries dropped with a quarantined record.
    pub dropped: Vec<(u64, EndpointKey)>,
}

/// A quarantine entry as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    at_ms: u64,
    reason: String,
    endpoints: Vec<String>,
    raw_base64: String,
}

impl Entry {
    fn decode(raw: &[u8]) -> Entry {
        serde_json::from_slice(raw).unwrap_or_else(|_| Entry {
            at_ms: 0,
            reason: "the quarantine entry itself is unreadable".into(),
            endpoints: Vec::new(),
            raw_base64: STANDARD.encode(raw),
        })
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings and numbers serialise")
    }

    fn public(self, seq: u64) -> Quarantined {
        Quarantined {
            seq,
            at_ms: self.at_ms,
            reason: self.reason,
            endpoints: self.endpoints,
            raw: STANDARD.decode(&self.raw_base64).unwrap_or_default(),
        }
    }
}

/// What one commit writes.
#[derive(Default)]
pub struct Group {
    /// New events, each with the expiry of its dedup key (seconds).
    pub events: Vec<(Event, u32)>,
    pub updates: Vec<Update>,
    pub sweep_before: Option<u32>,
    /// Signed requests to keep, each with its id.
    pub signed: Vec<(u64, SignedRequest)>,
    /// The dedup window's start (ms): signed requests made before it go (a chunk per
    /// commit), and so does an event accepted before it once its last delivery ends.
    pub window_start_ms: Option<u64>,
    pub next_seq: u64,
}

/// State found at start-up.
pub struct Recovery {
    pub next_seq: u64,
    pub dedup: Vec<(DedupKey, u32)>,
    /// `(seq, endpoint)` of every pending delivery, in seq order.
    pub pending: Vec<(u64, EndpointKey)>,
    /// Events found unreadable under pending deliveries, quarantined before delivery
    /// starts (their deliveries are not in `pending`).
    pub quarantined: Vec<Quarantined>,
}

/// One redb file.
pub struct Journal {
    /// `None` while the file is being reopened after a failed write.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    verify: bool,
    cache_bytes: usize,
    faults: Arc<Faults>,
    mark: File,
    /// A sweep left unfinished: the keys expiring before it still to drop.
    sweeping: std::sync::Mutex<Option<u32>>,
}

/// The seq the next event gets, as `tx` sees it.
fn next_seq_in(tx: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(tx
        .open_table(META)?
        .get("next_seq")?
        .map(|v| v.value())
        .unwrap_or(1))
}

fn reopening() -> StoreError {
    StoreError::Unavailable("journal: being reopened after a failed write".into())
}

/// Opens the file through `disk::Watched`, its cached pages dropped first so that what
/// is recovered is what the disk holds.
fn open_db(
    path: &Path,
    verify: bool,
    cache_bytes: usize,
    faults: &Arc<Faults>,
) -> Result<Database, redb::DatabaseError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    disk::drop_cached_pages(&file);
    Database::builder()
        .set_cache_size(cache_bytes)
        .set_check_integrity_on_open(verify)
        .create_with_backend(Watched::new(file, faults.clone())?)
}

/// Expired dedup keys (and the events they kept) dropped per commit at most: a
/// minute's keys at once (240 k at 4 k/s) held the writer for half a second.
pub const SWEEP_CHUNK: usize = 256;

impl Journal {
    /// Opens (or creates) the journal in `dir`, verifying the whole file when
    /// `verify` is set: a damaged file is refused, never half-trusted. redb caches
    /// pages and buffers writes in at most `cache_bytes` of memory.
    pub fn open(dir: &Path, verify: bool, cache_bytes: usize) -> Result<Journal, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("cbgate.redb");
        let faults = Arc::new(Faults::default());
        let db = open_db(&path, verify && path.exists(), cache_bytes, &faults)
            .map_err(|e| StoreError::Refused(format!("cannot open {}: {e}", path.display())))?;
        let mark = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("commit.mark"))?;
        let journal = Journal {
            db: RwLock::new(Some(db)),
            path,
            verify,
            cache_bytes,
            faults,
            mark,
            sweeping: std::sync::Mutex::new(None),
        };
        journal.init()?;
        let found = journal.next_seq()?;
        if let Some(marked) = journal.read_mark()?
            && found < marked
        {
            return Err(StoreError::Refused(format!(
                "journal {} is damaged: it holds commits up to #{found} but #{marked} was \
                 acknowledged; restore it from a backup (the damaged file is left untouched)",
                journal.path.display()
            )));
        }
        Ok(journal)
    }

    fn read_tx(&self) -> Result<ReadTransaction, StoreError> {
        match &*self.db.read().expect("journal lock") {
            Some(db) => Ok(db.begin_read()?),
            None => Err(reopening()),
        }
    }

    fn write_tx(&self) -> Result<WriteTransaction, StoreError> {
        match &*self.db.read().expect("journal lock") {
            Some(db) => Ok(db.begin_write()?),
            None => Err(reopening()),
        }
    }

    /// What failed since the file was (re)opened.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Closes the file and opens it again, which recovers it to its last durable commit:
    /// after a failed write, redb refuses every commit until then. That commit must be
    /// the one the writer knows of (`next_seq`); a file that disagrees is refused.
    pub fn reopen(&self, next_seq: u64) -> Result<(), StoreError> {
        let old = self.db.write().expect("journal lock").take();
        // An error here only repeats the failure that brought us here.
        drop(old.map(Database::close));
        self.faults.reset();
        // Readers meanwhile get "reopening" rather than wait on a lock for the
        // integrity check.
        let db = open_db(&self.path, self.verify, self.cache_bytes, &self.faults)?;
        *self.db.write().expect("journal lock") = Some(db);
        let found = self.next_seq()?;
        if found != next_seq {
            return Err(StoreError::Refused(format!(
                "journal {} reopened at #{found}, but #{next_seq} was expected",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn init(&self) -> Result<(), StoreError> {
        let mut tx = self.write_tx()?;
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
            tx.open_table(BY_LANE)?;
            tx.open_table(SIGNED)?;
            tx.open_table(SIGNED_BY_LANE)?;
            tx.open_table(QUARANTINE)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        next_seq_in(&self.read_tx()?)
    }

    /// The mark is `seq` twice (the second inverted): a torn mark reads as none.
    fn read_mark(&self) -> Result<Option<u64>, StoreError> {
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

    fn write_mark(&self, seq: u64) -> Result<(), StoreError> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&seq.to_le_bytes());
        b[8..].copy_from_slice(&(!seq).to_le_bytes());
        self.mark.write_all_at(&b, 0)?;
        Ok(())
    }

    /// Writes one group atomically and durably. An event record found unreadable on
    /// the way (releasing it) is quarantined, never an error: one damaged record must
    /// not stop every later commit.
    pub fn commit(&self, group: &Group) -> Result<Committed, StoreError> {
        // A newer sweep covers an unfinished one: `before` only grows.
        let mut sweeping = self.sweeping.lock().expect("sweep lock");
        let before = group.sweep_before.or(*sweeping);
        let mut unfinished = None;
        let mut committed = Committed::default();
        let mut tx = self.write_tx()?;
        tx.set_durability(Durability::Immediate)?;
        tx.set_quick_repair(false);
        {
            let mut events = tx.open_table(EVENTS)?;
            let mut dedup = tx.open_table(DEDUP)?;
            let mut deliveries = tx.open_table(DELIVERIES)?;
            let mut dead = tx.open_table(DEAD)?;
            let mut by_lane = tx.open_table(BY_LANE)?;
            let mut quarantine = tx.open_table(QUARANTINE)?;
            for (event, expires) in &group.events {
                events.insert(event.seq, record::encode(event).as_slice())?;
                by_lane.insert((event.order_key.as_str(), event.seq), ())?;
                dedup.insert((*expires, event.seq), event.dedup.0)?;
                for endpoint in &event.endpoints {
                    deliveries.insert((event.seq, endpoint.as_str()), [].as_slice())?;
                }
            }
            // Events that may have lost their last reason to stay.
            let mut released = Vec::new();
            let mut done = Vec::new();
            for update in &group.updates {
                match update {
                    Update::Done { seq, endpoint } => {
                        // The event stays for its payment's timeline until its key
                        // expires (the sweep below), or goes now if it already did.
                        deliveries.remove((*seq, endpoint.as_str()))?;
                        done.push(*seq);
                    }
                    Update::Retry {
                        seq,
                        endpoint,
                        state,
                    } => {
                        deliveries.insert((*seq, endpoint.as_str()), state.as_slice())?;
                    }
                    Update::Dead {
                        seq,
                        endpoint,
                        state,
                    } => {
                        deliveries.remove((*seq, endpoint.as_str()))?;
                        dead.insert((endpoint.as_str(), *seq), state.as_slice())?;
                    }
                    Update::Revive {
                        seq,
                        endpoint,
                        state,
                    } => {
                        dead.remove((endpoint.as_str(), *seq))?;
                        deliveries.insert((*seq, endpoint.as_str()), state.as_slice())?;
                    }
                    Update::Quarantine { seq, reason } => quarantine_event(
                        &mut events,
                        &mut deliveries,
                        &mut quarantine,
                        *seq,
                        reason,
                        &mut committed,
                    )?,
                }
            }
            if let Some(before) = before {
                // An event is kept for its dedup key: it goes with the key, unless a
                // delivery of it is still pending or dead.
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
            if let Some(start) = group.window_start_ms {
                for seq in done {
                    let accepted = match events.get(seq)? {
                        Some(raw) => record::decode_head(seq, raw.value()).map(|h| h.accepted_ms),
                        None => continue,
                    };
                    // An unreadable one goes too: the pass below quarantines it.
                    if !matches!(accepted, Ok(ms) if ms >= start) {
                        released.push(seq);
                    }
                }
            }
            // An event whose key expired goes once no delivery of it is pending and none
            // is dead. Dead letters are keyed by endpoint first, so each of the event's
            // endpoints is looked up (a scan of them all cost 5.6 ms per commit beside
            // 100 k).
            for seq in released {
                if deliveries.range((seq, "")..(seq + 1, ""))?.next().is_some() {
                    continue;
                }
                let head = match events.get(seq)? {
                    Some(raw) => record::decode_head(seq, raw.value()),
                    None => continue,
                };
                let head = match head {
                    Ok(head) => head,
                    Err(e) => {
                        // Without its endpoints its dead letters cannot be looked up:
                        // they stay listed, and a replay of one finds the quarantine.
                        quarantine_event(
                            &mut events,
                            &mut deliveries,
                            &mut quarantine,
                            seq,
                            &e.to_string(),
                            &mut committed,
                        )?;
                        continue;
                    }
                };
                let mut dead_any = false;
                for endpoint in &head.endpoints {
                    dead_any |= dead.get((endpoint.as_str(), seq))?.is_some();
                }
                if !dead_any {
                    events.remove(seq)?;
                    by_lane.remove((head.order_key.as_str(), seq))?;
                }
            }
            // Most groups carry no signed request and no sweep: the tables stay closed.
            let sweep_signed = group.window_start_ms.filter(|_| before.is_some());
            if (!group.signed.is_empty() || sweep_signed.is_some())
                && Self::commit_signed(&tx, &group.signed, sweep_signed)?
            {
                unfinished = before;
            }
            tx.open_table(META)?.insert("next_seq", group.next_seq)?;
        }
        tx.commit()?;
        *sweeping = unfinished;
        // The commit is durable whatever happens to the mark, and is answered as such
        // (a 503 here would give its sequence numbers out twice). A stale mark only
        // weakens the check at the next open.
        if let Err(e) = self.write_mark(group.next_seq) {
            tracing::warn!(error = %e, "commit mark not written");
        }
        Ok(committed)
    }

    /// Records signed requests and drops a chunk of those older than `sweep_before`
    /// (ms); true when more may be left to drop.
    fn commit_signed(
        tx: &redb::WriteTransaction,
        requests: &[(u64, SignedRequest)],
        sweep_before: Option<u64>,
    ) -> Result<bool, StoreError> {
        let mut signed = tx.open_table(SIGNED)?;
        let mut signed_by_lane = tx.open_table(SIGNED_BY_LANE)?;
        for (id, request) in requests {
            let lane = crate::store::lane(request.project, &request.payment_id);
            let raw = serde_json::to_vec(request).map_err(StoreError::unavailable)?;
            signed.insert((request.at_ms, *id), raw.as_slice())?;
            signed_by_lane.insert((lane.as_str(), request.at_ms, *id), ())?;
        }
        let Some(before) = sweep_before else {
            return Ok(false);
        };
        let old = signed
            .range((0, 0)..(before, 0))?
            .take(SWEEP_CHUNK)
            .map(|row| row.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        for ((at_ms, id), raw) in &old {
            signed.remove((*at_ms, *id))?;
            if let Ok(r) = serde_json::from_slice::<SignedRequest>(raw) {
                let lane = crate::store::lane(r.project, &r.payment_id);
                signed_by_lane.remove((lane.as_str(), *at_ms, *id))?;
            }
        }
        Ok(old.len() == SWEEP_CHUNK)
    }

    /// What start-up needs: the next sequence, live dedup keys, pending deliveries.
    /// Every event a pending delivery waits for is decoded once here: one that cannot
    /// be (whatever its bytes) is quarantined before delivery starts, never fatal.
    pub fn recover(&self, now_s: u32) -> Result<Recovery, StoreError> {
        let (next_seq, dedup, mut pending, damaged) = {
            let tx = self.read_tx()?;
            let next_seq = next_seq_in(&tx)?;
            let dedup: Vec<(DedupKey, u32)> = tx
                .open_table(DEDUP)?
                .range((now_s.saturating_add(1), 0)..)?
                .map(|r| r.map(|(k, v)| (DedupKey(v.value()), k.value().0)))
                .collect::<Result<_, _>>()?;
            let mut pending = Vec::new();
            for row in tx.open_table(DELIVERIES)?.iter()? {
                let (k, _) = row?;
                let (seq, endpoint) = k.value();
                match EndpointKey::parse(endpoint) {
                    Some(endpoint) => pending.push((seq, endpoint)),
                    None => tracing::error!(
                        seq,
                        endpoint,
                        "pending delivery with a malformed endpoint key; skipped"
                    ),
                }
            }
            let events = tx.open_table(EVENTS)?;
            let mut damaged = Vec::new();
            let mut last = None;
            // Rows are in seq order: each event is read once.
            for (seq, _) in &pending {
                if last.replace(*seq) == Some(*seq) {
                    continue;
                }
                let reason = match events.get(*seq)? {
                    Some(raw) => record::decode_head(*seq, raw.value())
                        .err()
                        .map(|e| e.to_string()),
                    None => Some(MISSING.to_string()),
                };
                if let Some(reason) = reason {
                    damaged.push(Damaged { seq: *seq, reason });
                }
            }
            (next_seq, dedup, pending, damaged)
        };
        let mut quarantined = Vec::new();
        if !damaged.is_empty() {
            pending.retain(|(seq, _)| damaged.binary_search_by_key(seq, |d| d.seq).is_err());
            let updates = damaged
                .into_iter()
                .map(|d| Update::Quarantine {
                    seq: d.seq,
                    reason: d.reason,
                })
                .collect();
            quarantined = self
                .commit(&Group {
                    updates,
                    next_seq,
                    ..Group::default()
                })?
                .quarantined;
        }
        Ok(Recovery {
            next_seq,
            dedup,
            pending,
            quarantined,
        })
    }

    /// Up to `limit` quarantined records with a seq above `after`, oldest first.
    pub fn quarantined(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<QuarantinePage, StoreError> {
        let start = match after {
            None => 0,
            Some(u64::MAX) => return QuarantinePage::fill(std::iter::empty(), limit),
            Some(after) => after + 1,
        };
        let tx = self.read_tx()?;
        let table = tx.open_table(QUARANTINE)?;
        let rows = table.range(start..)?.map(|row| -> Result<_, StoreError> {
            let (k, v) = row?;
            Ok(Entry::decode(v.value()).public(k.value()))
        });
        QuarantinePage::fill(rows, limit)
    }

    /// Event `seq` and where each of its deliveries stands.
    pub fn view(&self, seq: u64) -> Result<Option<crate::store::EventView>, StoreError> {
        use crate::store::DeliveryState;
        let Some(event) = self.event(seq)? else {
            return Ok(None);
        };
        let deliveries = event
            .endpoints
            .iter()
            .map(|ep| {
                let state = match self.delivery(seq, ep.as_str())? {
                    None => DeliveryState::Delivered,
                    Some((true, raw)) => DeliveryState::Dead(raw),
                    Some((false, raw)) => DeliveryState::Pending(raw),
                };
                Ok((ep.clone(), state))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(crate::store::EventView { event, deliveries }))
    }

    /// The seqs of the events kept for `lane`, and its signed requests, oldest first.
    pub fn lane(&self, lane: &str) -> Result<(Vec<u64>, Vec<SignedRequest>), StoreError> {
        let tx = self.read_tx()?;
        let seqs = tx
            .open_table(BY_LANE)?
            .range((lane, 0)..=(lane, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<Vec<_>, _>>()?;
        let signed = tx.open_table(SIGNED)?;
        let mut requests = Vec::new();
        for row in tx
            .open_table(SIGNED_BY_LANE)?
            .range((lane, 0, 0)..=(lane, u64::MAX, u64::MAX))?
        {
            let (_, at_ms, id) = row?.0.value();
            if let Some(raw) = signed.get((at_ms, id))?
                && let Ok(request) = serde_json::from_slice(raw.value())
            {
                requests.push(request);
            }
        }
        Ok((seqs, requests))
    }

    pub fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        let tx = self.read_tx()?;
        let events = tx.open_table(EVENTS)?;
        events
            .get(seq)?
            .map(|v| record::decode(seq, v.value()).map_err(StoreError::from))
            .transpose()
    }

    /// Dead letters after `after` (exclusive) as `(endpoint, seq, state)`; all endpoints
    /// when `endpoint` is `None`.
    pub fn dead_letters(
        &self,
        endpoint: Option<&str>,
        after: Option<(String, u64)>,
        limit: usize,
    ) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let tx = self.read_tx()?;
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

    /// The delivery state of `seq` at `endpoint`: `(dead, state)`, or none when it is
    /// neither pending nor dead.
    pub fn delivery(
        &self,
        seq: u64,
        endpoint: &str,
    ) -> Result<Option<(bool, Vec<u8>)>, StoreError> {
        let tx = self.read_tx()?;
        if let Some(v) = tx.open_table(DELIVERIES)?.get((seq, endpoint))? {
            return Ok(Some((false, v.value().to_vec())));
        }
        Ok(tx
            .open_table(DEAD)?
            .get((endpoint, seq))?
            .map(|v| (true, v.value().to_vec())))
    }

    /// Up to `limit` pending deliveries of `endpoint` with seq `>= from`, with their
    /// events; `floor` is the journal's `next_seq` at the read. Scans every pending row
    /// from `from` on (rows are keyed by seq first). A row whose event cannot be read
    /// is left out and reported, for the writer to quarantine.
    pub fn pending(
        &self,
        endpoint: &str,
        from: u64,
        limit: usize,
    ) -> Result<(crate::store::PendingPage, Vec<Damaged>), StoreError> {
        let tx = self.read_tx()?;
        let next_seq = next_seq_in(&tx)?;
        let deliveries = tx.open_table(DELIVERIES)?;
        let events = tx.open_table(EVENTS)?;
        let mut rows = Vec::new();
        let mut damaged = Vec::new();
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
            // Skipped, not an error: an error would stall the endpoint on this row.
            match events.get(seq)? {
                Some(raw) => match record::decode(seq, raw.value()) {
                    Ok(event) => rows.push((event, v.value().to_vec())),
                    Err(e) => damaged.push(Damaged {
                        seq,
                        reason: e.to_string(),
                    }),
                },
                None => damaged.push(Damaged {
                    seq,
                    reason: MISSING.into(),
                }),
            }
        }
        let page = crate::store::PendingPage {
            rows,
            complete,
            floor: next_seq,
        };
        Ok((page, damaged))
    }
}

/// A quarantine entry's bytes as the admin API shows them, for the fuzz target.
#[doc(hidden)]
pub fn quarantine_entry(raw: &[u8]) -> Quarantined {
    Entry::decode(raw).public(0)
}

#[cfg(test)]
impl Journal {
    /// Replaces event `seq`'s record with `raw` in a transaction of its own: redb's
    /// checksums hold, only the record is wrong (a bug, an old format, memory damage
    /// before the write).
    pub(crate) fn overwrite_record(&self, seq: u64, raw: &[u8]) {
        let tx = self.write_tx().unwrap();
        tx.open_table(EVENTS).unwrap().insert(seq, raw).unwrap();
        tx.commit().unwrap();
    }
}

/// Moves event `seq` from `events` to the quarantine and drops every pending delivery
/// of it; the first report makes the entry (counted in `out.quarantined`), a later
/// one adds the deliveries it dropped. Every dropped row is in `out.dropped`, so
/// the workers that counted it stop counting it.
fn quarantine_event(
    events: &mut Table<'_, u64, &'static [u8]>,
    deliveries: &mut Table<'_, (u64, &'static str), &'static [u8]>,
    quarantine: &mut Table<'_, u64, &'static [u8]>,
    seq: u64,
    reason: &str,
    out: &mut Committed,
) -> Result<(), StoreError> {
    let raw = events.remove(seq)?.map(|v| v.value().to_vec());
    let mut dropped = Vec::new();
    for row in deliveries.range((seq, "")..)? {
        let (k, _) = row?;
        let (at, endpoint) = k.value();
        if at != seq {
            break;
        }
        dropped.push(endpoint.to_string());
    }
    for endpoint in &dropped {
        deliveries.remove((seq, endpoint.as_str()))?;
    }
    let existing = quarantine.get(seq)?.map(|v| Entry::decode(v.value()));
    let fresh = existing.is_none();
    let mut entry = existing.unwrap_or_else(|| Entry {
        at_ms: now_ms(),
        reason: reason.to_string(),
        endpoints: Vec::new(),
        raw_base64: String::new(),
    });
    if let Some(raw) = raw
        && entry.raw_base64.is_empty()
    {
        entry.raw_base64 = STANDARD.encode(raw);
    }
    entry.endpoints.extend(dropped.iter().cloned());
    entry.endpoints.sort();
    entry.endpoints.dedup();
    quarantine.insert(seq, entry.encode().as_slice())?;
    if fresh {
        out.quarantined.push(entry.public(seq));
    }
    out.dropped.extend(
        dropped
            .iter()
            .filter_map(|e| EndpointKey::parse(e))
            .map(|e| (seq, e)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::Strategy as _;

    fn key(name: &str) -> EndpointKey {
        EndpointKey::new(1234, name)
    }

    fn event(seq: u64, endpoints: &[&str]) -> Event {
        Event {
            seq,
            accepted_ms: 0,
            project: 1234,
            dedup: DedupKey(u128::from(seq)),
            order_key: format!("pay-{seq}"),
            partition: 0,
            endpoints: endpoints.iter().map(|e| key(e)).collect(),
            body: Bytes::from_static(b"{}"),
        }
    }

    fn commit(
        journal: &Journal,
        events: Vec<(Event, u32)>,
        updates: Vec<Update>,
        sweep: Option<u32>,
    ) {
        let group = Group {
            events,
            updates,
            sweep_before: sweep,
            next_seq: 10,
            ..Group::default()
        };
        journal.commit(&group).unwrap();
    }

    #[test]
    fn a_reopen_finds_the_last_commit_or_refuses_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), true, 1 << 20).unwrap();
        commit(&journal, vec![(event(1, &["a"]), 100)], vec![], None);
        journal.reopen(10).unwrap();
        assert!(journal.event(1).unwrap().is_some());
        commit(&journal, vec![(event(2, &["a"]), 100)], vec![], None);
        // The writer believes in another commit than the file holds.
        assert!(matches!(journal.reopen(11), Err(StoreError::Refused(_))));
    }

    #[test]
    fn dead_letters_page_by_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), false, 1 << 20).unwrap();
        let dead = |seq, endpoint: &str| Update::Dead {
            seq,
            endpoint: key(endpoint),
            state: vec![],
        };
        commit(
            &journal,
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
        let page = |endpoint: Option<&str>, after: Option<(&str, u64)>, limit| {
            let endpoint = endpoint.map(|e| key(e).to_string());
            journal
                .dead_letters(
                    endpoint.as_deref(),
                    after.map(|(e, s)| (key(e).to_string(), s)),
                    limit,
                )
                .unwrap()
                .into_iter()
                .map(|(e, s, _)| format!("{}{s}", e.trim_start_matches("1234/")))
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
        let n = 2 * SWEEP_CHUNK as u64 + 10;
        let (_dir, journal) = journal_with((1..=n).map(|s| (event(s, &[]), 100)).collect());
        let left = || {
            (1..=n)
                .filter(|&s| journal.event(s).unwrap().is_some())
                .count()
        };
        commit(&journal, vec![], vec![], Some(200));
        assert_eq!(left(), n as usize - SWEEP_CHUNK);
        // Later commits carry the sweep on without being asked again.
        commit(&journal, vec![], vec![], None);
        commit(&journal, vec![], vec![], None);
        assert_eq!(left(), 0);
    }

    #[test]
    fn a_sweep_drops_the_events_only_their_expired_keys_kept() {
        let (_dir, journal) = journal_with(vec![
            (event(1, &[]), 100),         // unrouted
            (event(2, &["a"]), 100),      // still pending
            (event(3, &["a"]), 100),      // delivered below
            (event(4, &["b"]), 100),      // a dead letter below
            (event(5, &[]), 300),         // its key lives on
            (event(6, &["a", "b"]), 100), // delivered to a, dead at b
        ]);
        commit(
            &journal,
            vec![],
            vec![
                Update::Done {
                    seq: 3,
                    endpoint: key("a"),
                },
                Update::Dead {
                    seq: 4,
                    endpoint: key("b"),
                    state: vec![1],
                },
                Update::Dead {
                    seq: 6,
                    endpoint: key("b"),
                    state: vec![2],
                },
                Update::Done {
                    seq: 6,
                    endpoint: key("a"),
                },
            ],
            None,
        );
        assert!(
            journal.event(1).unwrap().is_some(),
            "kept while its key lives"
        );
        assert!(
            journal.event(3).unwrap().is_some(),
            "delivered: kept for the timeline while its key lives"
        );

        commit(&journal, vec![], vec![], Some(200));
        let left: Vec<u64> = (1..=6)
            .filter(|&s| journal.event(s).unwrap().is_some())
            .collect();
        assert_eq!(left, [2, 4, 5, 6]);
        let recovered = journal.recover(150).unwrap();
        assert_eq!(recovered.dedup, [(DedupKey(5), 300)]);
        assert_eq!(recovered.pending, [(2, key("a"))]);
    }

    #[test]
    fn a_sweep_of_signed_requests_goes_on_a_chunk_per_commit_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), false, 1 << 20).unwrap();
        let n = SWEEP_CHUNK as u64 + 10;
        let signed = (0..n)
            .map(|i| {
                let request = SignedRequest {
                    at_ms: 1_000 + i,
                    project: 1234,
                    payment_id: format!("p{i}"),
                    path: "/v2/payment/mobile/sale".into(),
                    status: 200,
                    duration_ms: 1,
                };
                (i, request)
            })
            .collect();
        let group = |signed, sweep_before| Group {
            signed,
            sweep_before,
            window_start_ms: Some(1_000_000),
            next_seq: 1,
            ..Group::default()
        };
        journal.commit(&group(signed, None)).unwrap();
        journal.commit(&group(vec![], Some(0))).unwrap();
        assert_eq!(journal.lane("1234/p0").unwrap().1.len(), 0);
        assert_eq!(
            journal.lane(&format!("1234/p{}", n - 1)).unwrap().1.len(),
            1
        );
        // No new sweep: the unfinished one carries on in the next commit.
        journal.commit(&group(vec![], None)).unwrap();
        assert_eq!(
            journal.lane(&format!("1234/p{}", n - 1)).unwrap().1.len(),
            0
        );
    }

    #[test]
    fn a_lane_lists_its_events_and_signed_requests_until_the_window_passes() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), false, 1 << 20).unwrap();
        let signed = |at_ms, payment: &str| SignedRequest {
            at_ms,
            project: 1234,
            payment_id: payment.into(),
            path: "/v2/payment/clarification".into(),
            status: 200,
            duration_ms: 3,
        };
        let mut e = event(1, &["a"]);
        e.order_key = "1234/p".into();
        e.accepted_ms = 1_000;
        journal
            .commit(&Group {
                events: vec![(e, 100)],
                signed: vec![(1, signed(5_000, "p")), (2, signed(6_000, "q"))],
                next_seq: 2,
                ..Group::default()
            })
            .unwrap();
        let (seqs, requests) = journal.lane("1234/p").unwrap();
        assert_eq!((seqs, requests.len()), (vec![1], 1));
        assert_eq!(requests[0].at_ms, 5_000);
        // The window now starts at 5.5 s and a sweep runs (no dedup key expired): the
        // old request goes, and the event goes with its last delivery, its acceptance
        // being before the window too.
        journal
            .commit(&Group {
                updates: vec![Update::Done {
                    seq: 1,
                    endpoint: key("a"),
                }],
                sweep_before: Some(0),
                window_start_ms: Some(5_500),
                next_seq: 2,
                ..Group::default()
            })
            .unwrap();
        assert_eq!(journal.lane("1234/p").unwrap(), (vec![], vec![]));
        assert_eq!(journal.lane("1234/q").unwrap().1.len(), 1);
        assert!(journal.event(1).unwrap().is_none());
    }

    /// A fresh journal in a directory of its own, holding `events`.
    fn journal_with(events: Vec<(Event, u32)>) -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), false, 1 << 20).unwrap();
        commit(&journal, events, vec![], None);
        (dir, journal)
    }

    fn overwrite(journal: &Journal, seq: u64, raw: &[u8]) {
        journal.overwrite_record(seq, raw);
    }

    fn seqs(rows: &[(Event, Vec<u8>)]) -> Vec<u64> {
        rows.iter().map(|(e, _)| e.seq).collect()
    }

    #[test]
    fn recovery_quarantines_an_unreadable_record_and_keeps_the_rest_pending() {
        let (_dir, journal) = journal_with(vec![
            (event(1, &["a"]), 100),
            (event(2, &["a", "b"]), 100),
            (event(3, &["a"]), 100),
        ]);
        let garbage = b"\x07 not a record".to_vec();
        overwrite(&journal, 2, &garbage);
        let recovered = journal.recover(0).unwrap();
        assert_eq!(recovered.pending, [(1, key("a")), (3, key("a"))]);
        assert_eq!(recovered.quarantined.len(), 1);
        let q = &recovered.quarantined[0];
        assert_eq!((q.seq, &q.raw), (2, &garbage));
        assert_eq!(q.endpoints, ["1234/a", "1234/b"]);
        assert!(q.reason.contains("unknown version"), "{}", q.reason);
        assert!(journal.event(2).unwrap().is_none());
        assert_eq!(
            journal.quarantined(None, 10).unwrap().items,
            recovered.quarantined
        );
        // Found once: the next start has nothing new to say.
        let again = journal.recover(0).unwrap();
        assert!(again.quarantined.is_empty());
        assert_eq!(again.pending.len(), 2);
        assert!(journal.quarantined(Some(2), 10).unwrap().items.is_empty());
        let first = journal.quarantined(None, 1).unwrap();
        assert_eq!(
            (first.items.len(), first.next),
            (1, None),
            "nothing after it"
        );
    }

    #[test]
    fn a_read_reports_an_unreadable_record_and_its_quarantine_drops_every_delivery_of_it() {
        let (_dir, journal) = journal_with(vec![
            (event(1, &["a"]), 100),
            (event(2, &["a", "b"]), 100),
            (event(3, &["a", "b"]), 100),
        ]);
        // Cut inside the order key: a torn record.
        let whole = record::encode(&event(2, &["a", "b"]));
        overwrite(&journal, 2, &whole[..37]);
        overwrite(&journal, 3, &[]);
        let (page, damaged) = journal.pending("1234/a", 0, 10).unwrap();
        assert_eq!(seqs(&page.rows), [1]);
        assert!(page.complete);
        assert_eq!(
            damaged.iter().map(|d| d.seq).collect::<Vec<_>>(),
            [2, 3],
            "{damaged:?}"
        );
        assert!(damaged[0].reason.contains("order key"), "{damaged:?}");
        assert!(damaged[1].reason.contains("empty"), "{damaged:?}");
        let quarantine = |seq, reason: &str| Update::Quarantine {
            seq,
            reason: reason.into(),
        };
        let group = |updates| Group {
            updates,
            next_seq: 10,
            ..Group::default()
        };
        let done = journal
            .commit(&group(vec![
                quarantine(2, &damaged[0].reason),
                quarantine(3, &damaged[1].reason),
            ]))
            .unwrap();
        assert_eq!(done.quarantined.len(), 2);
        assert_eq!(
            done.dropped,
            [(2, key("a")), (2, key("b")), (3, key("a")), (3, key("b"))]
        );
        // Another worker's report of the same record changes nothing.
        let again = journal
            .commit(&group(vec![quarantine(2, "again")]))
            .unwrap();
        assert!(again.quarantined.is_empty() && again.dropped.is_empty());
        assert!(journal.pending("1234/b", 0, 10).unwrap().0.rows.is_empty());
        let listed = journal.quarantined(None, 10).unwrap().items;
        assert_eq!(listed[0].raw, &whole[..37]);
        assert_eq!(listed[0].reason, damaged[0].reason);
        assert_eq!(listed[1].raw, b"");
        // A delivery whose event is missing altogether is reported too.
        let tx = journal.write_tx().unwrap();
        tx.open_table(EVENTS).unwrap().remove(1).unwrap();
        tx.commit().unwrap();
        let (page, damaged) = journal.pending("1234/a", 0, 10).unwrap();
        assert!(page.rows.is_empty());
        assert_eq!(
            damaged,
            [Damaged {
                seq: 1,
                reason: MISSING.into()
            }]
        );
    }

    #[test]
    fn a_sweep_quarantines_an_unreadable_record_instead_of_failing_every_commit() {
        let (_dir, journal) = journal_with(vec![(event(1, &[]), 100), (event(2, &["a"]), 100)]);
        overwrite(&journal, 1, b"\x01short");
        overwrite(&journal, 2, b"\x01short");
        // Its key expired: the sweep releases event 1, and the delivery of event 2 is
        // done past the window, which releases it too.
        let done = journal
            .commit(&Group {
                updates: vec![Update::Done {
                    seq: 2,
                    endpoint: key("a"),
                }],
                sweep_before: Some(200),
                window_start_ms: Some(1),
                next_seq: 10,
                ..Group::default()
            })
            .unwrap();
        let quarantined: Vec<u64> = done.quarantined.iter().map(|q| q.seq).collect();
        assert_eq!(quarantined, [1, 2]);
        assert!(done.dropped.is_empty());
        commit(&journal, vec![(event(3, &["a"]), 300)], vec![], Some(200));
        assert!(journal.event(3).unwrap().is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever bytes the records and delivery states hold, recovery and the reads
        /// after it answer: each record that decodes stays pending, each that does not
        /// is quarantined, and commits go on.
        #[test]
        fn recovery_never_fails_on_any_record_contents(
            records in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::num::u8::ANY, 0..80),
                    (0usize..200).prop_map(|cut| {
                        let whole = record::encode(&event(1, &["a", "b"]));
                        whole[..cut.min(whole.len())].to_vec()
                    }),
                ],
                1..6,
            ),
            state in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let n = records.len() as u64;
            let (_dir, journal) = journal_with((1..=n).map(|s| (event(s, &["a"]), 100)).collect());
            for (i, raw) in records.iter().enumerate() {
                overwrite(&journal, i as u64 + 1, raw);
            }
            let tx = journal.write_tx().unwrap();
            tx.open_table(DELIVERIES).unwrap().insert((1, "1234/a"), state.as_slice()).unwrap();
            tx.commit().unwrap();
            let readable: Vec<u64> = (1..=n)
                .filter(|&s| record::decode_head(s, &records[s as usize - 1]).is_ok())
                .collect();
            let recovered = journal.recover(0).unwrap();
            let pending: Vec<u64> = recovered.pending.iter().map(|(s, _)| *s).collect();
            proptest::prop_assert_eq!(&pending, &readable);
            proptest::prop_assert_eq!(recovered.quarantined.len() as u64, n - readable.len() as u64);
            let (page, damaged) = journal.pending("1234/a", 0, 100).unwrap();
            proptest::prop_assert!(damaged.is_empty());
            proptest::prop_assert_eq!(seqs(&page.rows), readable);
            for (event, raw) in &page.rows {
                let _ = crate::delivery::State::decode(raw, event.accepted_ms);
            }
            journal
                .commit(&Group { sweep_before: Some(200), window_start_ms: Some(1), next_seq: 10, ..Group::default() })
                .unwrap();
        }
    }
}
