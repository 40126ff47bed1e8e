//! The engine for one endpoint: a task that owns the endpoint's queue, breaker and
//! attempts in flight, settles every outcome in the store, and refills its queue
//! from the store when the backlog is larger than memory allows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use super::Shared;
use super::attempt::{self, Attempt, Class, State};
use super::queue::{Job, Queue};
use super::retry::{Admit, Breaker, Next, Ticket, Transition};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::projects::Endpoint;
use crate::store::{EndpointKey, EndpointStatus, Event, Settle, StoreError};

/// What the engine tells a worker.
pub(super) enum Cmd {
    /// A newly accepted event routed to this endpoint (already durable).
    Event(Arc<Event>),
    /// Deliveries from `from` on wait in the store (revived dead letters, a partition
    /// taken over): read them from there; `added` were not counted yet.
    Rescan {
        from: u64,
        added: u64,
        horizon: u64,
    },
    /// This node no longer delivers these partitions: forget their deliveries.
    Release(Arc<[u16]>),
    Pause(bool),
    /// The store dropped this endpoint's pending delivery of event `seq` (its record
    /// was quarantined): it no longer counts.
    Dropped(u64),
    Status(oneshot::Sender<EndpointStatus>),
}

pub(super) struct Worker {
    key: EndpointKey,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    queue: Queue,
    breaker: Breaker,
    in_flight: JoinSet<(u64, Attempt)>,
    /// Each attempt in flight: its delivery and the breaker phase it started in.
    in_flight_seq: HashMap<Id, (u64, Ticket)>,
    paused: bool,
    /// The store holds pending rows of this endpoint that are not in memory, from
    /// `cursor` on; arrivals are left to the store until a refill catches up.
    spilled: bool,
    cursor: u64,
    /// Arrivals at or below this seq were committed before a complete store read,
    /// which already took them.
    floor: u64,
    /// Pending deliveries in memory and in the store (the queue-depth gauge).
    depth: u64,
    /// The newest store notice taken in (see `Store::pending`).
    horizon: u64,
    refill_after: Option<Instant>,
}

impl Worker {
    /// A worker whose endpoint has `pending` deliveries in the store already.
    pub(super) fn new(
        key: EndpointKey,
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Cmd>,
        pending: u64,
    ) -> Self {
        let breaker = Breaker::new(shared.breaker);
        Self {
            key,
            shared,
            rx,
            queue: Queue::default(),
            breaker,
            in_flight: JoinSet::new(),
            in_flight_seq: HashMap::new(),
            paused: false,
            spilled: pending > 0,
            cursor: 0,
            floor: 0,
            depth: pending,
            horizon: 0,
            refill_after: None,
        }
    }

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // An endpoint removed by a reload keeps its deliveries durable and waits:
            // nothing is sent or read into memory until it is configured again.
            let endpoint = self.shared.endpoint(&self.key);
            if endpoint.is_some() && self.wants_refill() {
                if let Err(e) = self.refill().await {
                    tracing::warn!(endpoint = %self.key, error = %e, "cannot read pending deliveries; retrying in 1s");
                    self.refill_after = Some(Instant::now() + Duration::from_secs(1));
                }
                continue;
            }
            let wake = endpoint.and_then(|ep| self.start_due(&ep));
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                Some(joined) = self.in_flight.join_next_with_id() => self.finished(joined),
                () = sleep_until(wake) => {}
                _ = tick.tick() => self.report(),
                () = self.shared.stop.cancelled() => break,
            }
        }
        // Record what the attempts in flight find; the engine aborts this task when
        // the shutdown grace runs out, and those deliveries stay pending.
        while let Some(joined) = self.in_flight.join_next_with_id().await {
            self.finished(joined);
        }
        self.report();
    }

    fn low_water(&self) -> usize {
        (self.shared.max_queued / 2).max(1)
    }

    fn wants_refill(&self) -> bool {
        self.spilled
            && self.queue.len() < self.low_water()
            && self.refill_after.is_none_or(|t| Instant::now() >= t)
    }

    /// Reads the next page of this endpoint's pending deliveries from the store.
    async fn refill(&mut self) -> Result<(), StoreError> {
        // Our own Done/Dead settlements must be durable first, or the read could bring
        // back a delivery that was just delivered.
        self.shared.store.flush().await?;
        let room = self
            .shared
            .max_queued
            .saturating_sub(self.queue.len())
            .max(1);
        let page = self
            .shared
            .store
            .pending(self.key.clone(), self.cursor, room, self.horizon)
            .await?;
        tracing::debug!(endpoint = %self.key, from = self.cursor, rows = page.rows.len(), complete = page.complete, first = page.rows.first().map(|r| r.0.seq), "read pending deliveries back");
        for (event, raw) in page.rows {
            self.cursor = event.seq + 1;
            if self.queue.contains(event.seq) {
                continue;
            }
            let state = State::decode(&raw, event.accepted_ms);
            let due = instant_at(state.next_ms);
            self.queue.push(Job {
                event: Arc::new(event),
                state,
                due,
            });
        }
        if page.complete {
            self.spilled = false;
            self.floor = self.floor.max(page.floor.saturating_sub(1));
        }
        self.refill_after = None;
        Ok(())
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Event(event) => self.arrive(event),
            Cmd::Rescan {
                from,
                added,
                horizon,
            } => {
                self.horizon = self.horizon.max(horizon);
                tracing::debug!(endpoint = %self.key, from, added, spilled = self.spilled, cursor = self.cursor, "rescan");
                self.cursor = if self.spilled {
                    self.cursor.min(from)
                } else {
                    from
                };
                self.spilled = true;
                self.depth += added;
            }
            Cmd::Release(partitions) => {
                let dropped = self.queue.drop_partitions(&partitions);
                self.depth = self.depth.saturating_sub(dropped as u64);
            }
            Cmd::Dropped(seq) => {
                // One held in memory came by arrival, readable: it settles as usual,
                // and leaves the count then.
                if !self.queue.contains(seq) {
                    self.depth = self.depth.saturating_sub(1);
                }
            }
            Cmd::Pause(paused) => {
                self.paused = paused;
                tracing::info!(endpoint = %self.key, paused, "endpoint pause changed");
            }
            Cmd::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn arrive(&mut self, event: Arc<Event>) {
        self.depth += 1;
        if event.seq <= self.floor {
            return;
        }
        if !self.spilled && self.queue.len() >= self.shared.max_queued {
            // Memory is full: the store keeps the rest, read back as the queue drains.
            self.spilled = true;
            self.cursor = event.seq;
        }
        if self.spilled {
            // Arrivals from several partitions need not come in seq order.
            self.cursor = self.cursor.min(event.seq);
            if let Err(e) = self.shared.store.defer(&event, &self.key) {
                tracing::warn!(endpoint = %self.key, seq = event.seq, error = %e, "delivery not left to the store; it is sent again later");
            }
            return;
        }
        let state = State::decode(&[], event.accepted_ms);
        self.queue.push(Job {
            event,
            state,
            due: Instant::now() + self.shared.policy.base_delay(0),
        });
    }

    /// Starts every due attempt the caps allow; returns when to look again (`None`
    /// when only a command or a finished attempt can change anything).
    fn start_due(&mut self, endpoint: &Arc<Endpoint>) -> Option<Instant> {
        if self.paused || self.shared.stop.is_cancelled() {
            return None;
        }
        loop {
            let (due, seq) = self.queue.next_due()?;
            let now = Instant::now();
            if due > now {
                return Some(due);
            }
            if self.in_flight.len() >= endpoint.max_in_flight.max(1) {
                return None;
            }
            match self.breaker.admit(now) {
                Admit::Send(ticket) => self.launch(seq, endpoint, ticket),
                Admit::Wait => return None,
                Admit::OpenUntil(until) => self.hold(seq, until),
            }
        }
    }

    fn launch(&mut self, seq: u64, endpoint: &Arc<Endpoint>, ticket: Ticket) {
        let Some(job) = self.queue.start(seq) else {
            return;
        };
        let event = job.event.clone();
        let client = self.shared.client.clone();
        let endpoint = endpoint.clone();
        let handle = self.in_flight.spawn(async move {
            let attempt = attempt::send(&client, &endpoint, &event).await;
            (seq, attempt)
        });
        self.in_flight_seq.insert(handle.id(), (seq, ticket));
    }

    /// The circuit is open: the head waits for the probe, or is a dead letter if
    /// its round is over (no request is made for it).
    fn hold(&mut self, seq: u64, until: Instant) {
        let Some(job) = self.queue.job(seq) else {
            return;
        };
        let (event, mut state) = (job.event.clone(), job.state.clone());
        let now = now_ms();
        if self.shared.policy.expired(state.since_ms, now) {
            state.record(Attempt {
                at_ms: now,
                ms: 0,
                status: None,
                class: Class::CircuitOpen.as_str().into(),
                error: Some("circuit open: the endpoint kept failing".into()),
            });
            self.dead(&event, state);
        } else {
            self.queue.reschedule(seq, until, None);
        }
    }

    fn finished(&mut self, joined: Result<(Id, (u64, Attempt)), tokio::task::JoinError>) {
        let (seq, ticket, attempt) = match joined {
            Ok((id, (seq, attempt))) => {
                let Some((_, ticket)) = self.in_flight_seq.remove(&id) else {
                    return;
                };
                (seq, ticket, attempt)
            }
            Err(e) => {
                // Cancelled or panicked: the head retries as after any failure.
                let Some((seq, ticket)) = self.in_flight_seq.remove(&e.id()) else {
                    return;
                };
                let attempt = Attempt {
                    at_ms: now_ms(),
                    ms: 0,
                    status: None,
                    class: Class::Io.as_str().into(),
                    error: Some(format!("attempt task failed: {e}")),
                };
                (seq, ticket, attempt)
            }
        };
        let ok = attempt.succeeded();
        match self.breaker.record(ticket, ok, Instant::now()) {
            Some(Transition::Opened { rate, attempts }) => {
                tracing::warn!(endpoint = %self.key, failure_rate = rate, attempts, cooldown = ?self.shared.breaker.cooldown, "circuit opened");
            }
            Some(Transition::Closed) => {
                tracing::info!(endpoint = %self.key, "circuit closed");
            }
            None => {}
        }
        let key = self.key.to_string();
        metrics::counter!(m::DELIVERY_ATTEMPTS_TOTAL, "endpoint" => key.clone(), "result" => if ok { "success" } else { "failure" }).increment(1);
        metrics::histogram!(m::DELIVERY_SECONDS, "endpoint" => key.clone())
            .record(attempt.ms as f64 / 1000.0);
        if !ok {
            metrics::counter!(m::DELIVERY_FAILURES_TOTAL, "endpoint" => key, "class" => attempt.class.clone()).increment(1);
        }
        // Gone from the queue: its partition was released while the attempt ran, and
        // the node that took it over owns the outcome.
        let Some(job) = self.queue.job(seq) else {
            return;
        };
        let (event, mut state) = (job.event.clone(), job.state.clone());
        state.record(attempt);
        if ok {
            self.queue.finish(seq);
            self.depth = self.depth.saturating_sub(1);
            self.settle(&event, Settle::Done);
            return;
        }
        let now = now_ms();
        let next =
            self.shared
                .policy
                .after_failure(state.tries, state.since_ms, now, fastrand::f64());
        match next {
            Next::RetryIn(delay) => {
                state.next_ms = now + delay.as_millis() as u64;
                self.settle(&event, Settle::Retry(state.encode()));
                self.queue
                    .reschedule(seq, Instant::now() + delay, Some(state));
            }
            Next::GiveUp => self.dead(&event, state),
        }
    }

    fn dead(&mut self, event: &Arc<Event>, state: State) {
        let seq = event.seq;
        tracing::warn!(endpoint = %self.key, seq, attempts = state.tries, "delivery gave up; kept as a dead letter");
        metrics::counter!(m::DELIVERY_DEAD_TOTAL, "endpoint" => self.key.to_string()).increment(1);
        self.queue.finish(seq);
        self.depth = self.depth.saturating_sub(1);
        self.settle(event, Settle::Dead(state.encode()));
    }

    fn settle(&self, event: &Arc<Event>, outcome: Settle) {
        // Fails only once the store closed (shutdown) or lost its connection: the
        // delivery keeps its last durable state and is attempted again later.
        if let Err(e) = self.shared.store.settle(event, &self.key, outcome) {
            tracing::warn!(endpoint = %self.key, seq = event.seq, error = %e, "delivery outcome not recorded");
        }
    }

    fn report(&self) {
        let key = self.key.to_string();
        metrics::gauge!(m::DELIVERY_QUEUE_DEPTH, "endpoint" => key.clone()).set(self.depth as f64);
        let oldest = self
            .queue
            .oldest_accepted_ms()
            .map(|t| now_ms().saturating_sub(t) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(m::DELIVERY_OLDEST_SECONDS, "endpoint" => key.clone()).set(oldest);
        metrics::gauge!(m::DELIVERY_CIRCUIT_OPEN, "endpoint" => key)
            .set(if self.breaker.is_open() { 1.0 } else { 0.0 });
    }

    fn status(&self) -> EndpointStatus {
        EndpointStatus {
            endpoint: self.key.clone(),
            configured: self.shared.endpoint(&self.key).is_some(),
            paused: self.paused,
            circuit_open: self.breaker.is_open(),
            pending: self.depth,
            in_memory: self.queue.len(),
            in_flight: self.in_flight.len(),
            spilled: self.spilled,
        }
    }
}

/// The tokio instant of a wall-clock time (now when it has passed).
fn instant_at(at_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms()))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
