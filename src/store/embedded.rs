//! The embedded engine: one node, one redb file (`redb.rs`), no other process.
//!
//! Invariants
//! - A callback is answered only after the commit holding it returned, and a commit
//!   returns only after fdatasync (redb `Durability::Immediate`).
//! - Dedup key, event and its deliveries are written in one transaction: there is no
//!   instant at which a key is durable without its event, or the reverse.
//! - One writer thread group-commits whatever arrived while the previous commit ran.
//! - Delivery updates commit in the order they were queued; `flush` resolves once
//!   everything queued before it is durable.
//! - The dedup set in memory holds exactly the durable, unexpired keys: a hit is a
//!   duplicate without asking the writer.
//! - An event record that cannot be decoded never holds up its endpoint: recovery, a
//!   worker's read or a commit that meets it has the writer move it to the quarantine
//!   (`redb.rs`) with its pending deliveries, and the workers stop counting them.
//! - The writer is a critical thread (`watchdog`): if it dies, readiness turns red and
//!   the process exits for a restart.
//!
//! When the disk fails (`Mode`)
//! - A failed write (disk full): the group is answered 503, and so is every callback
//!   until a probe file can be written and synced again; then the file is reopened (redb
//!   recovers it to its last commit, which must be the writer's) and writes resume,
//!   without a restart. Delivery progress meanwhile is not written: it may be repeated.
//! - A failed fsync: the group is answered 503, and the journal is done for in this
//!   process. After a failed fsync the kernel may have dropped the pages it could not
//!   write while reporting them clean, so neither a second fsync nor a read-back proves
//!   anything (PostgreSQL's "fsyncgate"). The app exits non-zero; the next start drops
//!   the file's cached pages and recovers from what the disk holds.

pub mod disk;
pub mod redb;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::redb::{Committed, Group, Journal, Update};
use super::{
    Appended, BoxFuture, Cursor, DeadLetter, DeadPage, EndpointKey, Event, EventView, Feed, Health,
    Notice, PaymentView, PendingPage, QuarantinePage, Settle, SignedRequest, Store, StoreError,
    report_quarantined,
};
use crate::callback::Callback;
use crate::clock::{now_ms, now_s};
use crate::config::Storage;
use crate::dedup::{DedupKey, DedupSet};
use crate::metrics as m;
use crate::watchdog::{Guard, Tripwire, Watchdog};

/// How often expired dedup keys are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// After a failed write, the first look for free space, and the longest gap between looks.
const FIRST_PROBE: Duration = Duration::from_millis(100);
const MAX_PROBE: Duration = Duration::from_secs(2);

/// Whether the journal takes writes: set by the writer, read by the handle.
#[derive(Default)]
struct Condition {
    state: AtomicU8,
    /// Cancelled once the journal failed for good: the app shuts down and exits non-zero.
    failed: CancellationToken,
}

const WRITING: u8 = 0;
const BLOCKED: u8 = 1;
const FAILED: u8 = 2;

impl Condition {
    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        metrics::gauge!(m::JOURNAL_WRITABLE).set(if state == WRITING { 1.0 } else { 0.0 });
        if state == FAILED {
            self.failed.cancel();
        }
    }

    /// Why callbacks cannot be made durable now, if they cannot.
    fn refusal(&self) -> Option<&'static str> {
        match self.state.load(Ordering::Acquire) {
            WRITING => None,
            BLOCKED => Some("journal write failed (disk full?): waiting for space"),
            _ => Some("journal fsync failed: restart to recover from the disk"),
        }
    }
}

enum Op {
    Append(Callback, oneshot::Sender<Result<Appended, StoreError>>),
    Update(Update),
    Signed(SignedRequest, oneshot::Sender<Result<(), StoreError>>),
    Sweep(u32),
    /// Answer once everything queued before it is durable.
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Commit what is queued, then stop.
    Close,
}

/// The engine's handle: the writer's queue, the dedup set and the file for reads.
pub struct Embedded {
    tx: Queue,
    dedup: Arc<DedupSet>,
    journal: Arc<Journal>,
    notices: mpsc::UnboundedSender<Notice>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropped at close: stops the sweeper thread.
    sweeper: Mutex<Option<crossbeam_channel::Sender<()>>>,
    condition: Arc<Condition>,
}

/// Opens the journal in `storage.dir`, recovers it and starts the writer, watched by
/// `watchdog`. Blocking.
pub fn open(storage: &Storage, watchdog: &Watchdog) -> Result<(Embedded, Feed), StoreError> {
    let started = Instant::now();
    let journal = Arc::new(Journal::open(
        &storage.dir,
        storage.verify_on_open,
        storage.cache_bytes,
    )?);
    // Present from the start, so an alert on it has a series to watch.
    metrics::counter!(m::STORE_QUARANTINED_TOTAL).increment(0);
    let recovery = journal.recover(now_s())?;
    for record in &recovery.quarantined {
        report_quarantined(record);
    }
    let dedup = Arc::new(DedupSet::with_capacity(recovery.dedup.len()));
    for (key, expires) in &recovery.dedup {
        dedup.insert(*key, *expires);
    }
    let mut recovered: std::collections::BTreeMap<EndpointKey, u64> = Default::default();
    for (_, endpoint) in &recovery.pending {
        *recovered.entry(endpoint.clone()).or_default() += 1;
    }
    tracing::info!(
        next_seq = recovery.next_seq,
        dedup_keys = recovery.dedup.len(),
        pending_deliveries = recovery.pending.len(),
        quarantined = recovery.quarantined.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "journal recovered"
    );
    // Unbounded: the dispatcher moves events on at once to the endpoint workers, which
    // bound their own memory; a full channel would stall the writer.
    let (accepted, arrivals) = crossbeam_channel::unbounded();
    let (tx, rx) = crossbeam_channel::bounded(storage.max_pending);
    let condition = Arc::new(Condition::default());
    condition.set(WRITING);
    let (notices, notices_rx) = mpsc::unbounded_channel();
    let writer = Writer {
        _guard: watchdog.guard("journal-writer"),
        rx,
        dir: storage.dir.clone(),
        mode: Mode::Writing,
        condition: condition.clone(),
        unwritten: 0,
        journal: journal.clone(),
        dedup: dedup.clone(),
        next_seq: recovery.next_seq,
        max_batch: storage.max_batch,
        window: storage.dedup_window,
        signed_ids: crate::clock::now_ms(),
        accepted,
        notices: notices.clone(),
        tripwire: Tripwire::new("journal-writer"),
    };
    let writer = std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || writer.run())?;
    let (stop_sweeper, stopped) = crossbeam_channel::bounded::<()>(0);
    {
        let (tx, dedup) = (tx.clone(), dedup.clone());
        // A pass over every key (46 ms at 10 M): on its own thread, off the runtimes.
        std::thread::Builder::new()
            .name("dedup-sweeper".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(SWEEP_EVERY)
                {
                    let now = now_s();
                    if dedup.sweep(now) > 0 {
                        let _ = tx.try_send(Op::Sweep(now));
                    }
                }
            })?;
    }
    Ok((
        Embedded {
            tx: Queue(tx),
            dedup,
            journal,
            notices,
            writer: Mutex::new(Some(writer)),
            sweeper: Mutex::new(Some(stop_sweeper)),
            condition,
        },
        Feed {
            arrivals,
            notices: notices_rx,
            recovered: recovered.into_iter().collect(),
        },
    ))
}

/// The writer's queue, as delivery updates use it.
#[derive(Clone)]
struct Queue(crossbeam_channel::Sender<Op>);

impl Queue {
    /// Queues a delivery change for the next commit. Blocks while the queue is full:
    /// delivery progress is never dropped.
    fn update(&self, update: Update) -> Result<(), StoreError> {
        match self.0.try_send(Op::Update(update)) {
            Ok(()) => Ok(()),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
            Err(crossbeam_channel::TrySendError::Full(op)) => {
                // The writer is behind: wait for room without stalling the other tasks
                // of this reactor thread.
                let send = || self.0.send(op).map_err(|_| StoreError::Closed);
                match tokio::runtime::Handle::try_current() {
                    Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                        tokio::task::block_in_place(send)
                    }
                    _ => send(),
                }
            }
        }
    }

    /// Queues `Revive` for the dead letters of `endpoint` (one, or all page by page),
    /// each with the state `renew` makes of its old one; returns how many and the
    /// lowest seq.
    fn revive(
        &self,
        journal: &Journal,
        endpoint: &EndpointKey,
        seq: Option<u64>,
        renew: fn(&[u8]) -> Vec<u8>,
    ) -> Result<(usize, Option<u64>), StoreError> {
        let (mut count, mut first) = (0, None::<u64>);
        let mut one = |seq: u64, raw: &[u8]| -> Result<(), StoreError> {
            self.update(Update::Revive {
                seq,
                endpoint: endpoint.clone(),
                state: renew(raw),
            })?;
            count += 1;
            first = Some(first.map_or(seq, |f| f.min(seq)));
            Ok(())
        };
        match seq {
            Some(seq) => {
                if let Some((true, raw)) = journal.delivery(seq, endpoint.as_str())? {
                    one(seq, &raw)?;
                }
            }
            None => {
                let mut after = None;
                loop {
                    let page =
                        journal.dead_letters(Some(endpoint.as_str()), after.clone(), 1000)?;
                    let Some((ep, last, _)) = page.last() else {
                        break;
                    };
                    after = Some((ep.clone(), *last));
                    for (_, seq, raw) in &page {
                        one(*seq, raw)?;
                    }
                }
            }
        }
        Ok((count, first))
    }
}

impl Embedded {
    /// Runs a blocking read of the journal off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || f(&journal))
            .await
            .map_err(StoreError::unavailable)?
    }
}

impl Store for Embedded {
    fn known_duplicate(&self, key: DedupKey) -> bool {
        self.dedup.contains(key, now_s())
    }

    fn append(&self, callback: Callback) -> BoxFuture<'_, Result<Appended, StoreError>> {
        if let Some(why) = self.condition.refusal() {
            return Box::pin(async move { Err(StoreError::Unavailable(why.into())) });
        }
        let (reply, rx) = oneshot::channel();
        let queued = match self.tx.0.try_send(Op::Append(callback, reply)) {
            Ok(()) => Ok(rx),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(StoreError::Busy),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
        };
        Box::pin(async move { queued?.await.map_err(|_| StoreError::Closed)? })
    }

    fn settle(
        &self,
        event: &Arc<Event>,
        endpoint: &EndpointKey,
        outcome: Settle,
    ) -> Result<(), StoreError> {
        let (seq, endpoint) = (event.seq, endpoint.clone());
        self.tx.update(match outcome {
            Settle::Done => Update::Done { seq, endpoint },
            Settle::Retry(state) => Update::Retry {
                seq,
                endpoint,
                state,
            },
            Settle::Dead(state) => Update::Dead {
                seq,
                endpoint,
                state,
            },
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.tx
                .0
                .send(Op::Flush(tx))
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn pending(
        &self,
        endpoint: EndpointKey,
        from: u64,
        limit: usize,
        _horizon: u64,
    ) -> BoxFuture<'_, Result<PendingPage, StoreError>> {
        Box::pin(async move {
            let (page, damaged) = self
                .read(move |j| j.pending(endpoint.as_str(), from, limit))
                .await?;
            // The rows are left out of the page; the writer quarantines their events
            // and tells every worker that counted them (`Notice::Dropped`).
            for d in damaged {
                self.tx.update(Update::Quarantine {
                    seq: d.seq,
                    reason: d.reason,
                })?;
            }
            Ok(page)
        })
    }

    fn quarantined(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<QuarantinePage, StoreError>> {
        Box::pin(self.read(move |j| j.quarantined(after, limit)))
    }

    fn dead_letters(
        &self,
        endpoint: Option<EndpointKey>,
        after: Option<Cursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<DeadPage, StoreError>> {
        Box::pin(self.read(move |j| {
            // The cursor is "{endpoint}:{seq}" of the last row given.
            let after = after.and_then(|c| {
                let (ep, seq) = c.0.rsplit_once(':')?;
                Some((ep.to_string(), seq.parse().ok()?))
            });
            let rows = j.dead_letters(endpoint.as_ref().map(EndpointKey::as_str), after, limit)?;
            let next = (rows.len() == limit)
                .then(|| {
                    rows.last()
                        .map(|(ep, seq, _)| Cursor(format!("{ep}:{seq}")))
                })
                .flatten();
            let items = rows
                .into_iter()
                .filter_map(|(ep, seq, state)| {
                    Some(DeadLetter {
                        endpoint: EndpointKey::parse(&ep)?,
                        seq,
                        state,
                    })
                })
                .collect();
            Ok(DeadPage { items, next })
        }))
    }

    fn replay(
        &self,
        endpoint: EndpointKey,
        seq: Option<u64>,
        renew: fn(&[u8]) -> Vec<u8>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async move {
            let (queue, journal, ep) = (self.tx.clone(), self.journal.clone(), endpoint.clone());
            let (count, first) =
                tokio::task::spawn_blocking(move || queue.revive(&journal, &ep, seq, renew))
                    .await
                    .map_err(StoreError::unavailable)??;
            if let Some(from) = first {
                // Read back only once durable, or the read could miss them.
                self.flush().await?;
                let _ = self.notices.send(Notice::Rescan {
                    endpoint,
                    from,
                    added: count as u64,
                    horizon: 0,
                });
            }
            Ok(count)
        })
    }

    fn event(&self, seq: u64) -> BoxFuture<'_, Result<Option<EventView>, StoreError>> {
        Box::pin(self.read(move |j| j.view(seq)))
    }

    fn record_signed(&self, request: SignedRequest) -> BoxFuture<'_, Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        let queued = self
            .tx
            .0
            .try_send(Op::Signed(request, reply))
            .map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => StoreError::Busy,
                crossbeam_channel::TrySendError::Disconnected(_) => StoreError::Closed,
            });
        Box::pin(async move {
            queued?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn payment(
        &self,
        project: u64,
        payment_id: String,
    ) -> BoxFuture<'_, Result<PaymentView, StoreError>> {
        Box::pin(self.read(move |j| {
            let (seqs, signed) = j.lane(&super::lane(project, &payment_id))?;
            let mut events = Vec::new();
            for seq in seqs {
                match j.view(seq) {
                    Ok(view) => events.extend(view),
                    // One unreadable record does not hide the rest of the timeline.
                    Err(StoreError::Malformed(seq)) => {
                        tracing::warn!(seq, "timeline: an unreadable event left out")
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(PaymentView { signed, events })
        }))
    }

    fn set_paused(
        &self,
        endpoint: EndpointKey,
        paused: bool,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        // One node: pause lives in memory and a restart resumes every endpoint.
        let _ = self.notices.send(Notice::Pause { endpoint, paused });
        Box::pin(async { Ok(()) })
    }

    fn failed(&self) -> BoxFuture<'_, StoreError> {
        Box::pin(async move {
            self.condition.failed.cancelled().await;
            StoreError::Refused(self.condition.refusal().unwrap_or_default().into())
        })
    }

    fn health(&self) -> Health {
        let writing = self
            .writer
            .lock()
            .expect("writer lock")
            .as_ref()
            .is_some_and(|w| !w.is_finished());
        Health {
            ready: match self.condition.refusal() {
                _ if !writing => Err("the journal writer stopped".into()),
                None => Ok(()),
                Some(why) => Err(why.into()),
            },
            dedup_keys: self.dedup.len(),
            queued: self.tx.0.len(),
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.sweeper.lock().expect("sweeper lock").take();
            let _ = self.tx.0.send(Op::Close);
            let writer = self.writer.lock().expect("writer lock").take();
            if let Some(writer) = writer {
                let _ = tokio::task::spawn_blocking(move || writer.join()).await;
            }
        })
    }
}

/// What the writer does with what it is sent.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Writing,
    /// A write failed: refuse until the disk takes writes and the file reopens.
    Blocked {
        probe_at: Instant,
        gap: Duration,
    },
    /// An fsync failed, or the reopened file disagreed: refuse until the process ends.
    Failed,
}

struct Writer {
    /// First, so it is dropped (the death reported) before `accepted`, whose drop ends
    /// the dispatcher: the watchdog hears of the cause before its consequence.
    _guard: Guard,
    rx: crossbeam_channel::Receiver<Op>,
    /// The journal's directory, where a probe file tells when space is back.
    dir: std::path::PathBuf,
    mode: Mode,
    condition: Arc<Condition>,
    /// Delivery updates dropped while refusing writes.
    unwritten: u64,
    journal: Arc<Journal>,
    dedup: Arc<DedupSet>,
    next_seq: u64,
    max_batch: usize,
    window: Duration,
    /// The last id given to a signed request (unique within a millisecond's rows).
    signed_ids: u64,
    /// Accepted events go to the delivery engine after their commit.
    accepted: crossbeam_channel::Sender<Arc<Event>>,
    /// Deliveries dropped with a quarantined record, for the workers that count them.
    notices: mpsc::UnboundedSender<Notice>,
    tripwire: Tripwire,
}

type Reply = (oneshot::Sender<Result<Appended, StoreError>>, Appended);

impl Writer {
    fn quarantined(&self, committed: Committed) {
        for record in &committed.quarantined {
            report_quarantined(record);
        }
        for (seq, endpoint) in committed.dropped {
            let _ = self.notices.send(Notice::Dropped { endpoint, seq });
        }
    }

    fn run(mut self) {
        let mut batch_keys = std::collections::HashSet::new();
        let mut closing = false;
        loop {
            if let Mode::Blocked { probe_at, .. } = self.mode
                && Instant::now() >= probe_at
            {
                self.try_reopen();
            }
            let first = if closing {
                match self.rx.try_recv() {
                    Ok(op) => op,
                    Err(_) => break,
                }
            } else if let Mode::Blocked { probe_at, .. } = self.mode {
                match self.rx.recv_deadline(probe_at) {
                    Ok(op) => op,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                }
            };
            if !matches!(self.mode, Mode::Writing) {
                closing |= self.refuse(first);
                continue;
            }
            let mut group = Group::default();
            let mut replies: Vec<Reply> = Vec::new();
            let mut flushes = Vec::new();
            let mut recorded = Vec::new();
            batch_keys.clear();
            let now = now_s();
            let expires = now.saturating_add(self.window.as_secs() as u32);
            let mut op = Some(first);
            while let Some(next) = op.take() {
                match next {
                    Op::Append(cb, reply) => {
                        self.tripwire.step();
                        // Duplicates of a durable key, or of one in this very group, are
                        // answered after this commit: never before the original is safe.
                        if self.dedup.contains(cb.dedup, now) || !batch_keys.insert(cb.dedup) {
                            replies.push((reply, Appended::Duplicate));
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
                                    partition: 0,
                                    endpoints: cb.endpoints.iter().map(|e| e.key.clone()).collect(),
                                    body: cb.body,
                                },
                                expires,
                            ));
                            replies.push((reply, Appended::Accepted(seq)));
                        }
                    }
                    Op::Update(u) => group.updates.push(u),
                    Op::Signed(request, reply) => {
                        self.signed_ids += 1;
                        group.signed.push((self.signed_ids, request));
                        recorded.push(reply);
                    }
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
                && group.signed.is_empty()
                && replies.is_empty()
            {
                // Only flushes: everything before them was committed by earlier groups.
                for reply in flushes {
                    let _ = reply.send(Ok(()));
                }
                continue;
            }
            // Signed requests are kept as long as dedup keys, a chunk per commit.
            group.window_start_ms = Some(now_ms().saturating_sub(self.window.as_millis() as u64));
            let started = Instant::now();
            let result = self.journal.commit(&group);
            metrics::histogram!(m::JOURNAL_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::histogram!(m::JOURNAL_BATCH_SIZE).record(group.events.len() as f64);
            match result {
                Ok(committed) => {
                    self.quarantined(committed);
                    for (event, expires) in &group.events {
                        self.dedup.insert(event.dedup, *expires);
                    }
                    for (reply, outcome) in replies {
                        let _ = reply.send(Ok(outcome));
                    }
                    for reply in flushes.into_iter().chain(recorded) {
                        let _ = reply.send(Ok(()));
                    }
                    // Unrouted events have nothing to deliver; sending them would only
                    // move their freeing to the dispatcher thread.
                    for (event, _) in group.events {
                        if !event.endpoints.is_empty() {
                            let _ = self.accepted.send(Arc::new(event));
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
                        let _ = reply.send(Err(StoreError::unavailable(&e)));
                    }
                    for reply in flushes.into_iter().chain(recorded) {
                        let _ = reply.send(Err(StoreError::unavailable(&e)));
                    }
                    self.after_failure();
                }
            }
        }
    }

    /// Decides, from what failed, whether the journal can be written again.
    fn after_failure(&mut self) {
        let faults = self.journal.faults();
        if faults.sync_failed() {
            self.fail("an fsync of the journal failed");
        } else if faults.io_failed() {
            // redb refuses every commit from now on, until the file is reopened.
            tracing::error!("journal write failed; answering 503 until the disk takes writes");
            self.mode = Mode::Blocked {
                probe_at: Instant::now() + FIRST_PROBE,
                gap: FIRST_PROBE,
            };
            self.condition.set(BLOCKED);
        }
        // Otherwise only that commit failed, and the next group tries again.
    }

    fn fail(&mut self, why: &str) {
        tracing::error!(
            why,
            "journal failed: answering 503 and exiting, so that a restart recovers it from the disk"
        );
        self.mode = Mode::Failed;
        self.condition.set(FAILED);
    }

    /// Answers `op` without writing; true for `Close`.
    fn refuse(&mut self, op: Op) -> bool {
        let why =
            || StoreError::Unavailable(self.condition.refusal().unwrap_or_default().to_string());
        match op {
            Op::Append(_, reply) => {
                let _ = reply.send(Err(why()));
            }
            Op::Signed(_, reply) => {
                let _ = reply.send(Err(why()));
            }
            Op::Flush(reply) => {
                let _ = reply.send(Err(why()));
            }
            Op::Update(_) => {
                // The row keeps its last durable state: at worst the delivery is repeated.
                self.unwritten += 1;
                metrics::counter!(m::JOURNAL_UNWRITTEN_UPDATES_TOTAL).increment(1);
            }
            Op::Sweep(_) => {}
            Op::Close => return true,
        }
        false
    }

    /// When the disk takes a probe file again, reopens the journal; else looks later.
    fn try_reopen(&mut self) {
        let Mode::Blocked { gap, .. } = self.mode else {
            return;
        };
        if disk::space_returned(&self.dir) {
            match self.journal.reopen(self.next_seq) {
                Ok(()) => {
                    tracing::info!(
                        unwritten_updates = self.unwritten,
                        "journal reopened: taking writes again"
                    );
                    self.mode = Mode::Writing;
                    self.condition.set(WRITING);
                    return;
                }
                Err(e)
                    if matches!(e, StoreError::Refused(_))
                        || self.journal.faults().sync_failed() =>
                {
                    tracing::error!(error = %e, "journal reopen");
                    self.fail("the journal could not be reopened as it was");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "journal reopen failed; trying again"),
            }
        }
        let gap = (gap * 2).min(MAX_PROBE);
        self.mode = Mode::Blocked {
            probe_at: Instant::now() + gap,
            gap,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn a_read_that_meets_an_unreadable_record_has_it_quarantined_and_every_worker_told() {
        let dir = tempfile::tempdir().unwrap();
        let key = |name: &str| EndpointKey::new(1234, name);
        {
            let journal = Journal::open(dir.path(), false, 1 << 20).unwrap();
            let events = (1..=3)
                .map(|seq| {
                    let event = Event {
                        seq,
                        accepted_ms: 0,
                        project: 1234,
                        dedup: DedupKey(u128::from(seq)),
                        order_key: "1234/pay".into(),
                        partition: 0,
                        endpoints: vec![key("a"), key("b")],
                        body: Bytes::from_static(b"{}"),
                    };
                    (event, u32::MAX)
                })
                .collect();
            let group = Group {
                events,
                next_seq: 4,
                ..Group::default()
            };
            journal.commit(&group).unwrap();
        }
        let storage = Storage {
            dir: dir.path().into(),
            verify_on_open: false,
            cache_bytes: 1 << 20,
            ..Storage::default()
        };
        let (store, mut feed) = open(&storage, &Watchdog::unwatched()).unwrap();
        assert_eq!(feed.recovered, [(key("a"), 3), (key("b"), 3)]);
        // Damaged after recovery looked (a replayed dead letter is read only now).
        store.journal.overwrite_record(2, b"\x01");
        let seqs = |page: PendingPage| page.rows.iter().map(|r| r.0.seq).collect::<Vec<_>>();
        let page = store.pending(key("a"), 0, 10, 0).await.unwrap();
        assert_eq!(seqs(page), [1, 3], "the rest of the endpoint goes on");
        store.flush().await.unwrap();
        let mut told = Vec::new();
        while let Ok(notice) = feed.notices.try_recv() {
            if let Notice::Dropped { endpoint, seq } = notice {
                told.push((endpoint, seq));
            }
        }
        assert_eq!(told, [(key("a"), 2), (key("b"), 2)], "each worker once");
        let listed = store.quarantined(None, 10).await.unwrap().items;
        assert_eq!((listed.len(), listed[0].raw.as_slice()), (1, &b"\x01"[..]));
        let page = store.pending(key("b"), 0, 10, 0).await.unwrap();
        assert_eq!(seqs(page), [1, 3]);
        store.close().await;
        assert!(store.health().ready.is_err(), "no writer, not ready");
    }
}
