//! Reaching NATS and making sure every stream and bucket is there as this config
//! wants it. Idempotent: every node runs it at start. A stream made for another
//! partition count is refused, never reshaped (payments would change partitions).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::names::Names;
use crate::config::Storage;
use crate::store::StoreError;

/// How long one JetStream request or publish ack may take before the caller gives up
/// (a callback is answered 503 then, and the platform retries).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The metadata key that records a stream's partition count.
const PARTITIONS_KEY: &str = "cbgate.partitions";

/// Handles to everything the engine uses.
pub struct Streams {
    pub events: stream::Stream,
    pub deliveries: stream::Stream,
    pub dead: stream::Stream,
    pub answers: stream::Stream,
    pub signed: stream::Stream,
    /// The cursors bucket's stream, read from its leader, and the bucket's name.
    pub cursors: stream::Stream,
    pub cursors_bucket: String,
    pub nodes: kv::Store,
    pub control: kv::Store,
}

/// Connects to the NATS servers of `storage`; keeps reconnecting for ever once
/// connected (an outage makes the node unready, never stops it).
pub async fn connect(storage: &Storage) -> Result<async_nats::Client, StoreError> {
    let refused = |e: String| StoreError::Refused(format!("storage: {e}"));
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("cbgate {}", env!("CARGO_PKG_VERSION")))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(Duration::from_secs(10))
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(REQUEST_TIMEOUT))
        // Reconnect quickly: callbacks get 503 until the connection is back.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(1000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                other => tracing::info!(event = %other, "nats event"),
            }
        });
    if let Some(path) = &storage.nats_creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| refused(format!("nats_creds {}: {e}", path.display())))?;
    }
    if let Some(token) = &storage.nats_token {
        options = options.token(token.resolve().map_err(refused)?);
    }
    if let (Some(user), Some(password)) = (&storage.nats_user, &storage.nats_password) {
        options = options.user_and_password(
            user.resolve().map_err(refused)?,
            password.resolve().map_err(refused)?,
        );
    }
    if let Some(ca) = &storage.nats_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    let servers = storage
        .nats_servers()
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("nats_urls: {e}")))?;
    options
        .connect(servers)
        .await
        .map_err(|e| refused(format!("cannot connect to NATS: {e}")))
}

/// Creates or checks every stream and bucket. Retries while NATS is
/// unreachable or has no quorum (logging why); refuses a stream of another shape.
pub async fn ensure(
    js: &jetstream::Context,
    names: &Names,
    storage: &Storage,
    idempotency_window: Duration,
) -> Result<Streams, StoreError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match try_ensure(js, names, storage, idempotency_window).await {
            Ok(streams) => return Ok(streams),
            Err(Setup::Fatal(e)) => return Err(StoreError::Refused(e)),
            Err(Setup::Retry(e)) => {
                tracing::warn!(error = %e, retry_in = ?delay, "JetStream not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum Setup {
    Retry(String),
    Fatal(String),
}

fn retry(e: impl std::fmt::Display) -> Setup {
    Setup::Retry(e.to_string())
}

async fn try_ensure(
    js: &jetstream::Context,
    names: &Names,
    storage: &Storage,
    idempotency_window: Duration,
) -> Result<Streams, Setup> {
    let replicas = storage.replicas;
    let partitions = storage.partitions;
    if let Ok(mut existing) = js.get_stream(&names.events).await {
        let info = existing.info().await.map_err(retry)?;
        let found = info.config.metadata.get(PARTITIONS_KEY).cloned();
        if found.as_deref() != Some(partitions.to_string().as_str()) {
            return Err(Setup::Fatal(format!(
                "storage.partitions = {partitions}, but stream {} was made with {}; the partition \
                 count is fixed for a stream's life (set it back, or migrate to a new \
                 storage.stream)",
                names.events,
                found.unwrap_or_else(|| "no cbgate partition count".into())
            )));
        }
    }
    let events = stream::Config {
        name: names.events.clone(),
        description: Some("cbgate: accepted callbacks (dedup records and delivery queue)".into()),
        subjects: vec!["cb.>".into(), "rp.>".into()],
        retention: stream::RetentionPolicy::Limits,
        max_age: storage.dedup_window,
        max_bytes: i64::try_from(storage.max_bytes).unwrap_or(i64::MAX),
        // A full stream refuses new callbacks (503) rather than dropping old ones.
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        allow_direct: true,
        metadata: HashMap::from([(PARTITIONS_KEY.to_string(), partitions.to_string())]),
        ..Default::default()
    };
    let deliveries = stream::Config {
        name: names.deliveries.clone(),
        description: Some("cbgate: state of deliveries not yet done".into()),
        subjects: vec!["dlv.>".into()],
        max_messages_per_subject: 1,
        allow_rollup: true,
        max_age: storage.dedup_window,
        num_replicas: replicas,
        ..Default::default()
    };
    let dead = stream::Config {
        name: names.dead.clone(),
        description: Some("cbgate: dead letters, each with its event; quarantined messages".into()),
        subjects: vec!["dead.>".into(), super::names::QUARANTINE_FILTER.into()],
        max_messages_per_subject: 1,
        allow_rollup: true,
        num_replicas: replicas,
        ..Default::default()
    };
    let answers = stream::Config {
        name: names.answers.clone(),
        description: Some("cbgate: check_deposit answers within the idempotency window".into()),
        subjects: vec!["term.>".into()],
        max_messages_per_subject: 1,
        max_age: idempotency_window,
        num_replicas: replicas,
        ..Default::default()
    };
    let signed = stream::Config {
        name: names.signed.clone(),
        description: Some("cbgate: requests signed for merchants, for payment timelines".into()),
        subjects: vec!["sg.>".into()],
        max_age: storage.dedup_window,
        num_replicas: replicas,
        ..Default::default()
    };
    for config in [events, deliveries, dead, answers, signed] {
        let name = config.name.clone();
        js.create_or_update_stream(config).await.map_err(|e| {
            let text = e.to_string();
            if text.contains("subjects overlap") {
                Setup::Fatal(format!(
                    "stream {name}: its subjects are taken by another stream in this NATS \
                     account ({text}); one cbgate deployment per account"
                ))
            } else {
                retry(format!("stream {name}: {text}"))
            }
        })?;
    }
    let nodes = js
        .create_or_update_key_value(kv::Config {
            bucket: names.nodes.clone(),
            description: "cbgate: node heartbeats and partition leases".into(),
            history: 1,
            max_age: super::owner::ENTRY_TTL,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| retry(format!("bucket {}: {e}", names.nodes)))?;
    let control = js
        .create_or_update_key_value(kv::Config {
            bucket: names.control.clone(),
            description: "cbgate: paused endpoints".into(),
            history: 1,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| retry(format!("bucket {}: {e}", names.control)))?;
    let get = |name: &str| {
        let name = name.to_string();
        async move {
            js.get_stream(&name)
                .await
                .map_err(|e| retry(format!("stream {name}: {e}")))
        }
    };
    js.create_or_update_key_value(kv::Config {
        bucket: names.cursors.clone(),
        description: "cbgate: how far each partition's deliveries got".into(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| retry(format!("bucket {}: {e}", names.cursors)))?;
    Ok(Streams {
        events: get(&names.events).await?,
        deliveries: get(&names.deliveries).await?,
        dead: get(&names.dead).await?,
        answers: get(&names.answers).await?,
        signed: get(&names.signed).await?,
        cursors: get(&format!("KV_{}", names.cursors)).await?,
        cursors_bucket: names.cursors.clone(),
        nodes,
        control,
    })
}

/// Logs what durability the servers give: their version, the replica count, and
/// whether each fsyncs every write (asked of the system account; a user without it
/// gets a reminder instead).
pub async fn report(client: &async_nats::Client, storage: &Storage) {
    let info = client.server_info();
    tracing::info!(
        server = %info.server_name,
        version = %info.version,
        replicas = storage.replicas,
        partitions = storage.partitions,
        stream = %storage.stream,
        "jetstream storage ready"
    );
    if !version_at_least(&info.version, (2, 15)) {
        tracing::warn!(version = %info.version, "nats-server older than 2.15: use 2.15 or later (earlier versions fsync less or decide duplicates less safely)");
    }
    let inbox = client.new_inbox();
    let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
        return;
    };
    if client
        .publish_with_reply("$SYS.REQ.SERVER.PING.VARZ", inbox, "{}".into())
        .await
        .is_err()
    {
        return;
    }
    let mut answered = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    use futures_util::StreamExt as _;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        if msg.status.is_some() {
            // No responders: this user cannot reach the system account.
            break;
        }
        answered += 1;
        let varz: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
        let name = varz["server"]["name"].as_str().unwrap_or("?").to_string();
        let always = varz["data"]["jetstream"]["config"]["sync_always"].as_bool();
        match always {
            Some(true) => {
                tracing::info!(server = %name, "nats server fsyncs every write (sync_interval: always)")
            }
            _ => {
                tracing::warn!(server = %name, "nats server does not fsync every write: set jetstream {{ sync_interval: always }}, or a power cut can lose callbacks already answered 200")
            }
        }
    }
    if answered == 0 {
        tracing::warn!(
            "cannot read the servers' sync_interval (no system account access): make sure every nats-server runs with jetstream {{ sync_interval: always }}"
        );
    }
}

fn version_at_least(version: &str, want: (u32, u32)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= want
}
