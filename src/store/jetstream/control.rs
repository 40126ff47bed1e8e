//! What every node follows or answers beside deliveries: paused endpoints (a key
//! `pause.<endpoint>` in the control bucket, watched by all), and endpoint states,
//! gathered from every live node over core NATS request/reply.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};

use super::names;
use crate::store::{EndpointKey, EndpointStatus, Notice, StatusSource, StoreError};

/// How long the admin API waits for the other nodes' endpoint states.
const GATHER: Duration = Duration::from_millis(500);

pub struct Control {
    pub kv: kv::Store,
    /// The control bucket's revision this node has applied.
    pub applied: watch::Receiver<u64>,
}

impl Control {
    /// Starts following paused endpoints into `notices`. Resolves once the current
    /// state is applied, so no delivery starts before a standing pause is known.
    pub async fn start(
        kv: kv::Store,
        notices: mpsc::UnboundedSender<Notice>,
    ) -> Result<Control, StoreError> {
        let (applied_tx, applied) = watch::channel(0);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(follow(kv.clone(), notices, applied_tx, ready_tx));
        ready
            .await
            .map_err(|_| StoreError::Unavailable("paused endpoints not readable".into()))?;
        Ok(Control { kv, applied })
    }

    /// Writes the pause and waits until this node follows it.
    pub async fn set_paused(&self, endpoint: &EndpointKey, paused: bool) -> Result<(), StoreError> {
        let value = Bytes::from_static(if paused { b"1" } else { b"0" });
        let revision = self
            .kv
            .put(pause_key(endpoint), value)
            .await
            .map_err(|e| StoreError::unavailable(format!("pause: {e}")))?;
        let mut applied = self.applied.clone();
        let wait = applied.wait_for(|r| *r >= revision);
        match tokio::time::timeout(Duration::from_secs(2), wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unavailable(
                "pause written but not yet followed here".into(),
            )),
        }
    }
}

fn pause_key(endpoint: &EndpointKey) -> String {
    format!("pause.{}", names::endpoint_token(endpoint))
}

async fn follow(
    kv: kv::Store,
    notices: mpsc::UnboundedSender<Notice>,
    applied: watch::Sender<u64>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        match kv.watch_with_history("pause.*").await {
            Ok(mut entries) => {
                // An empty bucket sends nothing: its state is known at once.
                if kv.status().await.is_ok_and(|s| s.values() == 0)
                    && let Some(r) = ready.take()
                {
                    let _ = r.send(());
                }
                while let Some(Ok(entry)) = entries.next().await {
                    let endpoint = entry
                        .key
                        .strip_prefix("pause.")
                        .and_then(names::endpoint_from_token);
                    if let Some(endpoint) = endpoint {
                        let paused =
                            entry.operation == kv::Operation::Put && entry.value[..] == *b"1";
                        let _ = notices.send(Notice::Pause { endpoint, paused });
                    }
                    applied.send_modify(|r| *r = (*r).max(entry.revision));
                    if entry.delta == 0
                        && let Some(r) = ready.take()
                    {
                        let _ = r.send(());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow paused endpoints; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Answers every node's status requests with this node's endpoint states.
pub async fn answer_status(client: async_nats::Client, subject: String, source: StatusSource) {
    loop {
        match client.subscribe(subject.clone()).await {
            Ok(mut requests) => {
                while let Some(request) = requests.next().await {
                    let Some(reply) = request.reply else { continue };
                    let states = source().await;
                    let body = serde_json::to_vec(&states).unwrap_or_default();
                    let _ = client.publish(reply, body.into()).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot answer status requests; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every live node's endpoint states, this node's among them: each node answers the
/// request on `subject`. `None` when no node answered (NATS unreachable).
pub async fn gather(
    client: &async_nats::Client,
    subject: &str,
    nodes: usize,
) -> Option<Vec<EndpointStatus>> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.ok()?;
    client
        .publish_with_reply(subject.to_string(), inbox, Bytes::new())
        .await
        .ok()?;
    let deadline = tokio::time::Instant::now() + GATHER;
    let (mut answered, mut all) = (0, Vec::new());
    while answered < nodes.max(1) {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await else {
            break;
        };
        answered += 1;
        if let Ok(states) = serde_json::from_slice::<Vec<RemoteStatus>>(&msg.payload) {
            all.extend(states.into_iter().filter_map(RemoteStatus::into_status));
        }
    }
    (answered > 0).then_some(all)
}

/// An endpoint state as another node sent it.
#[derive(serde::Deserialize)]
struct RemoteStatus {
    endpoint: String,
    configured: bool,
    paused: bool,
    circuit_open: bool,
    pending: u64,
    in_memory: usize,
    in_flight: usize,
    spilled: bool,
}

impl RemoteStatus {
    fn into_status(self) -> Option<EndpointStatus> {
        Some(EndpointStatus {
            endpoint: EndpointKey::parse(&self.endpoint)?,
            configured: self.configured,
            paused: self.paused,
            circuit_open: self.circuit_open,
            pending: self.pending,
            in_memory: self.in_memory,
            in_flight: self.in_flight,
            spilled: self.spilled,
        })
    }
}
