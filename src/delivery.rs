//! Fan-out delivery: every accepted event to every endpoint it was routed to, at
//! least once, in acceptance order per payment, with retries, a circuit breaker per
//! endpoint and dead letters.
//!
//! Design
//! - One worker task per endpoint key (`worker.rs`). A dispatcher thread reads the
//!   journal's accepted channel (events arrive after their commit) and hands each
//!   event to the workers of its endpoints.
//! - Order: a worker keeps a FIFO lane per order key (`queue.rs`); only a lane's
//!   head is attempted, so a retrying event holds back later events of its payment
//!   and nothing else. A dead letter leaves its lane; a replayed one joins the back.
//! - Durability: each delivery is a `deliveries` row from the event's own commit.
//!   A 2xx queues `Done`, a failure `Retry` with the attempt log (`attempt::State`),
//!   a round past `give_up_after` `Dead`. A crash loses at most the updates of the
//!   last group commit: those deliveries are attempted again (at least once).
//! - Memory: a worker holds at most `delivery.max_queued` deliveries. Past that,
//!   arrivals stay in the store only, and the worker reads them back in seq order
//!   (`Store::pending`) as its queue drains; start-up recovery is the same read.
//! - An endpoint removed by a reload keeps its deliveries pending in the store; they
//!   wait (no attempt, no dead letter) until it is configured again.
//! - Pause is in memory only: a restart resumes every endpoint.

mod attempt;
mod queue;
mod retry;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use attempt::{Attempt, State, webhook_id};
pub use retry::Policy;

use crate::journal::{DeliveryUpdate, Event, Journal, JournalError, now_ms};
use crate::projects::{Endpoint, Projects};
use worker::{Cmd, Worker};

/// What every worker shares.
struct Shared {
    journal: Journal,
    projects: Arc<ArcSwap<Projects>>,
    policy: Policy,
    breaker: retry::BreakerSettings,
    max_queued: usize,
    client: Arc<crate::outbound::pool::Pool>,
    stop: CancellationToken,
}

impl Shared {
    /// The endpoint `key` ("project/name") in the running config.
    fn endpoint(&self, key: &str) -> Option<Arc<Endpoint>> {
        let project: u64 = key.split_once('/')?.0.parse().ok()?;
        self.projects
            .load()
            .get(project)?
            .endpoints
            .iter()
            .find(|e| e.key == key)
            .cloned()
    }
}

/// One endpoint's delivery state, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub endpoint: String,
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

/// The delivery engine's handle.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Cmd>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Pending rows per endpoint at start, for workers not started yet.
    recovered: Mutex<HashMap<String, u64>>,
}

impl Delivery {
    /// Starts a worker for every configured endpoint and every endpoint with
    /// `pending` deliveries (as recovered by the journal), and the dispatcher of
    /// `accepted`. Call within a tokio runtime.
    pub fn start(
        config: &crate::config::Delivery,
        journal: Journal,
        projects: Arc<ArcSwap<Projects>>,
        pending: &[(u64, String, Vec<u8>)],
        accepted: crossbeam_channel::Receiver<Arc<Event>>,
    ) -> Result<Delivery, String> {
        let mut recovered: HashMap<String, u64> = HashMap::new();
        for (_, key, _) in pending {
            *recovered.entry(key.clone()).or_default() += 1;
        }
        let mut keys: Vec<String> = recovered.keys().cloned().collect();
        for endpoint in projects.load().endpoints() {
            keys.push(endpoint.key.clone());
        }
        let shared = Arc::new(Shared {
            journal,
            projects,
            policy: Policy {
                schedule: config.schedule.clone(),
                repeat_every: config.repeat_every,
                give_up_after: config.give_up_after,
            },
            breaker: retry::BreakerSettings::from_config(config),
            max_queued: config.max_queued.max(1),
            client: Arc::new(crate::outbound::pool::Pool::new(
                crate::outbound::connector(config.connect_timeout, config.ca_file.as_deref())
                    .map_err(|e| format!("delivery.ca_file: {e}"))?,
            )),
            stop: CancellationToken::new(),
        });
        let delivery = Delivery {
            inner: Arc::new(Inner {
                shared,
                runtime: tokio::runtime::Handle::current(),
                workers: Mutex::default(),
                tasks: Mutex::default(),
                recovered: Mutex::new(recovered),
            }),
        };
        for key in keys {
            delivery.worker(&key);
        }
        let dispatcher = delivery.clone();
        std::thread::Builder::new()
            .name("delivery-dispatch".into())
            .spawn(move || {
                // Ends when the journal writer (the only sender) stops.
                for event in accepted.iter() {
                    for key in &event.endpoints {
                        dispatcher.send(key, Cmd::Event(event.clone()));
                    }
                }
            })
            .expect("the dispatcher thread starts");
        Ok(delivery)
    }

    /// The command channel of `key`'s worker, started on first use.
    fn worker(&self, key: &str) -> mpsc::UnboundedSender<Cmd> {
        let mut workers = self.inner.workers.lock().expect("workers lock");
        if let Some(tx) = workers.get(key) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = self
            .inner
            .recovered
            .lock()
            .expect("recovered lock")
            .remove(key)
            .unwrap_or(0);
        let worker = Worker::new(key.to_string(), self.inner.shared.clone(), rx, pending);
        let task = self.inner.runtime.spawn(worker.run());
        self.inner.tasks.lock().expect("tasks lock").push(task);
        workers.insert(key.to_string(), tx.clone());
        tx
    }

    fn send(&self, key: &str, cmd: Cmd) {
        if self.inner.shared.stop.is_cancelled() {
            return;
        }
        // A closed worker only happens at shutdown; the delivery stays pending.
        let _ = self.worker(key).send(cmd);
    }

    /// True when `key` is configured or still has a worker (it may hold deliveries).
    pub fn knows(&self, key: &str) -> bool {
        self.inner.shared.endpoint(key).is_some()
            || self
                .inner
                .workers
                .lock()
                .expect("workers lock")
                .contains_key(key)
    }

    /// Stops or resumes sending to `key`. False for an unknown endpoint.
    pub fn pause(&self, key: &str, paused: bool) -> bool {
        if !self.knows(key) {
            return false;
        }
        self.send(key, Cmd::Pause(paused));
        true
    }

    /// Every endpoint's state, ordered by key.
    pub async fn status(&self) -> Vec<Status> {
        let senders: Vec<_> = self
            .inner
            .workers
            .lock()
            .expect("workers lock")
            .values()
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(senders.len());
        for tx in senders {
            let (reply, rx) = oneshot::channel();
            if tx.send(Cmd::Status(reply)).is_ok()
                && let Ok(status) = rx.await
            {
                out.push(status);
            }
        }
        out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        out
    }

    /// Moves dead letters of `key` back to pending with a new round: `seq` alone, or
    /// all of them. Returns how many; they are sent once durable again.
    pub async fn replay(&self, key: &str, seq: Option<u64>) -> Result<usize, JournalError> {
        let journal = self.inner.shared.journal.clone();
        let endpoint = key.to_string();
        let revived = tokio::task::spawn_blocking(move || revive(&journal, &endpoint, seq))
            .await
            .map_err(|e| JournalError::Storage(e.to_string()))??;
        if let Some(from) = revived.first {
            self.inner.shared.journal.flush().await?;
            self.send(key, Cmd::Rescan { from });
        }
        Ok(revived.count)
    }

    /// Stops starting attempts, lets those in flight finish until `grace` runs out
    /// (their outcomes are queued to the journal), then aborts the rest: those stay
    /// pending. Call before closing the journal.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shared.stop.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock"));
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let all = futures_join(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                ?grace,
                "deliveries still in flight after the grace; they stay pending"
            );
            for a in aborts {
                a.abort();
            }
        }
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

struct Revived {
    count: usize,
    first: Option<u64>,
}

/// Queues `Revive` for the dead letters of `endpoint` (one, or all page by page).
fn revive(journal: &Journal, endpoint: &str, seq: Option<u64>) -> Result<Revived, JournalError> {
    let store = journal.store();
    let now = now_ms();
    let mut out = Revived {
        count: 0,
        first: None,
    };
    let mut one = |seq: u64, raw: &[u8]| -> Result<(), JournalError> {
        let state = State::decode(raw, now).replayed(now);
        journal.update(DeliveryUpdate::Revive {
            seq,
            endpoint: endpoint.to_string(),
            state: state.encode(),
        })?;
        out.count += 1;
        out.first = Some(out.first.map_or(seq, |f: u64| f.min(seq)));
        Ok(())
    };
    match seq {
        Some(seq) => {
            if let Some((true, raw)) = store.delivery(seq, endpoint)? {
                one(seq, &raw)?;
            }
        }
        None => {
            let mut after = None;
            loop {
                let page = store.dead_letters(Some(endpoint), after.clone(), 1000)?;
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
    Ok(out)
}
