//! check_deposit answers shared by every node: one message per request body on
//! `term.<sha256>` in a stream whose `max_age` is the idempotency window. The first
//! answer kept wins (expected last subject sequence 0); reads go to the leader.

use async_nats::jetstream::{self, context::PublishErrorKind, stream::Stream};
use bytes::Bytes;

use super::{names, read};
use crate::store::{BoxFuture, SharedAnswers, StoreError};

pub struct Answers {
    pub js: jetstream::Context,
    pub stream: Stream,
}

impl SharedAnswers for Answers {
    fn get(&self, key: [u8; 32]) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            let found = read::last(&self.stream, &names::answer_subject(&key)).await?;
            Ok(found.map(|m| m.payload))
        })
    }

    fn put(&self, key: [u8; 32], answer: Bytes) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        Box::pin(async move {
            let subject = names::answer_subject(&key);
            let publish = jetstream::message::PublishMessage::build()
                .payload(answer.clone())
                .expected_last_subject_sequence(0);
            let sent = async { self.js.send_publish(subject.clone(), publish).await?.await };
            match sent.await {
                Ok(_) => Ok(answer),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    let kept = read::last(&self.stream, &subject).await?;
                    Ok(kept.map_or(answer, |m| m.payload))
                }
                Err(e) => Err(StoreError::unavailable(format!("answer: {e}"))),
            }
        })
    }
}
