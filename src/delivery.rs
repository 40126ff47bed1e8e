//! Fan-out delivery: every accepted event to every endpoint it was routed to, at
//! least once, in acceptance order per payment, with retries, a circuit breaker per
//! endpoint and dead letters.
//!
//! Design
//! - One worker task per endpoint key (`worker.rs`). A dispatcher thread reads the
//!   store's arrivals (events arrive once durable) and hands each event to the
//!   workers of its endpoints.
//! - Order: a worker keeps a FIFO lane per order key (`queue.rs`); only a lane's
//!   head is attempted, so a retrying event holds back later events of its payment
//!   and nothing else. A dead letter leaves its lane; a replayed one joins the back.
//! - Durability: the store holds every delivery not yet done. A 2xx settles `Done`,
//!   a failure `Retry` with the attempt log (`attempt::State`), a round past
//!   `give_up_after` `Dead`. A crash loses at most the settlements not yet durable:
//!   those deliveries are attempted again (at least once).
//! - Memory: a worker holds at most `delivery.max_queued` deliveries. Past that,
//!   arrivals stay in the store only, and the worker reads them back in seq order
//!   (`Store::pending`) as its queue drains; start-up recovery, a replay and a
//!   partition this node takes over are the same read (`Notice::Rescan`).
//! - An endpoint removed by a reload keeps its deliveries pending in the store; they
//!   wait (no attempt, no dead letter) until it is configured again.
//! - The dispatcher is a critical thread (`watchdog`): if it dies, readiness turns
//!   red and the process exits for a restart, which reads what it missed back.
//! - Pause goes through the store (`Store::set_paused`): on the embedded engine it is
//!   in memory and a restart resumes every endpoint; on JetStream every node follows it.

mod attempt;
mod queue;
mod retry;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use attempt::{Attempt, State, webhook_id};
pub use retry::Policy;

use crate::clock::now_ms;
use crate::projects::{Endpoint, Projects};
use crate::store::{EndpointKey, EndpointStatus, Feed, Notice, Store, StoreError};
use crate::watchdog::{Tripwire, Watchdog};
use worker::{Cmd, Worker};

/// What every worker shares.
struct Shared {
    store: Arc<dyn Store>,
    projects: Arc<ArcSwap<Projects>>,
    policy: Policy,
    breaker: retry::BreakerSettings,
    max_queued: usize,
    client: Arc<crate::outbound::pool::Pool>,
    stop: CancellationToken,
}

impl Shared {
    /// The endpoint `key` in the running config.
    fn endpoint(&self, key: &EndpointKey) -> Option<Arc<Endpoint>> {
        self.projects
            .load()
            .get(key.project())?
            .endpoints
            .iter()
            .find(|e| &e.key == key)
            .cloned()
    }
}

/// The delivery engine's handle.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    workers: Mutex<HashMap<EndpointKey, mpsc::UnboundedSender<Cmd>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Pending rows per endpoint at start, for workers not started yet.
    recovered: Mutex<HashMap<EndpointKey, u64>>,
}

impl Delivery {
    /// Starts a worker for every configured endpoint and every endpoint with deliveries
    /// pending in the store, the dispatcher of `feed.arrivals` (watched by `watchdog`)
    /// and the reader of `feed.notices`. Call within a tokio runtime.
    pub fn start(
        config: &crate::config::Delivery,
        store: Arc<dyn Store>,
        projects: Arc<ArcSwap<Projects>>,
        feed: Feed,
        watchdog: &Watchdog,
    ) -> Result<Delivery, String> {
        let recovered: HashMap<EndpointKey, u64> = feed.recovered.into_iter().collect();
        let mut keys: Vec<EndpointKey> = recovered.keys().cloned().collect();
        for endpoint in projects.load().endpoints() {
            keys.push(endpoint.key.clone());
        }
        let shared = Arc::new(Shared {
            store,
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
        let arrivals = feed.arrivals;
        let guard = watchdog.guard("delivery-dispatch");
        let mut tripwire = Tripwire::new("delivery-dispatch");
        std::thread::Builder::new()
            .name("delivery-dispatch".into())
            .spawn(move || {
                let _guard = guard;
                // Ends when the store (the only sender) stops.
                for event in arrivals.iter() {
                    tripwire.step();
                    for key in &event.endpoints {
                        dispatcher.send(key, Cmd::Event(event.clone()));
                    }
                }
            })
            .expect("the dispatcher thread starts");
        let notified = delivery.clone();
        let mut notices = feed.notices;
        delivery.inner.runtime.spawn(async move {
            while let Some(notice) = notices.recv().await {
                notified.notice(notice);
            }
        });
        Ok(delivery)
    }

    fn notice(&self, notice: Notice) {
        match notice {
            Notice::Rescan {
                endpoint,
                from,
                added,
                horizon,
            } => self.send(
                &endpoint,
                Cmd::Rescan {
                    from,
                    added,
                    horizon,
                },
            ),
            Notice::Pause { endpoint, paused } => self.send(&endpoint, Cmd::Pause(paused)),
            Notice::Dropped { endpoint, seq } => self.send(&endpoint, Cmd::Dropped(seq)),
            Notice::Release { partitions } => {
                let partitions: Arc<[u16]> = partitions.into();
                for tx in self.senders() {
                    let _ = tx.send(Cmd::Release(partitions.clone()));
                }
            }
        }
    }

    /// The command channel of `key`'s worker, started on first use.
    fn worker(&self, key: &EndpointKey) -> mpsc::UnboundedSender<Cmd> {
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
        let worker = Worker::new(key.clone(), self.inner.shared.clone(), rx, pending);
        let task = self.inner.runtime.spawn(worker.run());
        self.inner.tasks.lock().expect("tasks lock").push(task);
        workers.insert(key.clone(), tx.clone());
        tx
    }

    fn senders(&self) -> Vec<mpsc::UnboundedSender<Cmd>> {
        self.inner
            .workers
            .lock()
            .expect("workers lock")
            .values()
            .cloned()
            .collect()
    }

    fn send(&self, key: &EndpointKey, cmd: Cmd) {
        if self.inner.shared.stop.is_cancelled() {
            return;
        }
        // A closed worker only happens at shutdown; the delivery stays pending.
        let _ = self.worker(key).send(cmd);
    }

    /// True when `key` is configured or still has a worker (it may hold deliveries).
    pub fn knows(&self, key: &EndpointKey) -> bool {
        self.inner.shared.endpoint(key).is_some()
            || self
                .inner
                .workers
                .lock()
                .expect("workers lock")
                .contains_key(key)
    }

    /// Stops or resumes sending to `key` on every node. False for an unknown endpoint.
    pub async fn pause(&self, key: &EndpointKey, paused: bool) -> Result<bool, StoreError> {
        if !self.knows(key) {
            return Ok(false);
        }
        self.inner
            .shared
            .store
            .set_paused(key.clone(), paused)
            .await?;
        Ok(true)
    }

    /// This node's endpoint states, ordered by key.
    pub async fn local_status(&self) -> Vec<EndpointStatus> {
        let mut out = Vec::new();
        for tx in self.senders() {
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

    /// Every endpoint's state over all nodes, ordered by key.
    pub async fn status(&self) -> Result<Vec<EndpointStatus>, StoreError> {
        let local = self.local_status().await;
        self.inner.shared.store.endpoint_status(local).await
    }

    /// Moves dead letters of `key` back to pending with a new round: `seq` alone, or
    /// all of them. Returns how many; they are sent once durable again.
    pub async fn replay(&self, key: &EndpointKey, seq: Option<u64>) -> Result<usize, StoreError> {
        self.inner
            .shared
            .store
            .replay(key.clone(), seq, renew)
            .await
    }

    /// Stops starting attempts, lets those in flight finish until `grace` runs out
    /// (their outcomes are settled in the store), then aborts the rest: those stay
    /// pending. Call before closing the store.
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

/// A replayed dead letter's state: its attempt log kept, a new round from now.
fn renew(raw: &[u8]) -> Vec<u8> {
    let now = now_ms();
    State::decode(raw, now).replayed(now).encode()
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
