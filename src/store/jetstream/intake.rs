//! Intake: one publish per callback on its own subject with
//! `Nats-Expected-Last-Subject-Sequence: 0`. The publish ack is the dedup record and
//! the queue entry at once; a wrong last sequence (10071) is a duplicate; the same key
//! in flight elsewhere (10164) waits for that publish and answers as it did. Anything
//! else is "not now" (503): never a 200 without an ack.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, ErrorCode, context::PublishErrorKind};
use bytes::Bytes;

use super::names;
use super::setup::REQUEST_TIMEOUT;
use crate::callback::Callback;
use crate::clock::{now_ms, now_s};
use crate::dedup::{DedupKey, DedupSet};
use crate::store::{Appended, Event, StoreError, record};

/// Keys this node saw durable are answered "duplicate" without a round trip for this
/// long (or the dedup window, if shorter). Only an optimisation for hot retries: a key
/// not here is asked of JetStream.
const CACHE_FOR: Duration = Duration::from_secs(3600);

pub struct Intake {
    pub js: jetstream::Context,
    pub partitions: u16,
    pub window: Duration,
    /// Keys known durable, with when this node may stop saying so.
    pub known: Arc<DedupSet>,
}

impl Intake {
    pub fn known_duplicate(&self, key: DedupKey) -> bool {
        self.known.contains(key, now_s())
    }

    pub async fn append(&self, callback: Callback) -> Result<Appended, StoreError> {
        let partition = names::partition(&callback.order_key, self.partitions);
        let subject = names::event_subject(partition, &callback.order_key, callback.dedup);
        let event = Event {
            seq: 0,
            accepted_ms: now_ms(),
            project: callback.project,
            dedup: callback.dedup,
            order_key: callback.order_key,
            partition,
            endpoints: callback.endpoints.iter().map(|e| e.key.clone()).collect(),
            body: callback.body,
        };
        let payload = Bytes::from(record::encode(&event));
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let mut pause = Duration::from_millis(2);
        loop {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .expected_last_subject_sequence(0);
            let outcome = tokio::time::timeout_at(deadline, async {
                self.js.send_publish(subject.clone(), publish).await?.await
            })
            .await
            .map_err(|_| StoreError::Unavailable("no publish ack in time".into()))?;
            match outcome {
                Ok(ack) => {
                    self.remember(event.dedup);
                    return Ok(Appended::Accepted(ack.sequence));
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    self.remember(event.dedup);
                    return Ok(Appended::Duplicate);
                }
                Err(e) if in_flight_elsewhere(&e) => {
                    // The first publish of this key is being decided: ask again once it
                    // is, and answer as it did (duplicate if it was stored).
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(StoreError::Unavailable(
                            "the same callback is still being stored by another request".into(),
                        ));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(StoreError::unavailable(format!("publish: {e}"))),
            }
        }
    }

    fn remember(&self, key: DedupKey) {
        let ttl = CACHE_FOR.min(self.window).as_secs() as u32;
        self.known.insert(key, now_s().saturating_add(ttl));
    }
}

/// JetStream's 10164 (a publish of the same subject is being decided) or 10163 (a new
/// stream leader is still loading the subjects' last sequences): ask again shortly.
fn in_flight_elsewhere(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| {
            [
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
                ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY,
            ]
            .contains(&e.error_code())
        })
}
