//! Reads from a stream's leader (never a replica that may lag behind a write this
//! node just made), with "no such message" as `None`.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};

use crate::store::StoreError;

fn found(
    result: Result<StreamMessage, async_nats::jetstream::stream::LastRawMessageError>,
    what: &str,
) -> Result<Option<StreamMessage>, StoreError> {
    match result {
        Ok(msg) => Ok(Some(msg)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(StoreError::unavailable(format!("read {what}: {e}"))),
    }
}

/// The last message on `subject`.
pub async fn last(stream: &Stream, subject: &str) -> Result<Option<StreamMessage>, StoreError> {
    found(
        stream.get_last_raw_message_by_subject(subject).await,
        subject,
    )
}

/// The message at `seq`.
pub async fn at(stream: &Stream, seq: u64) -> Result<Option<StreamMessage>, StoreError> {
    found(stream.get_raw_message(seq).await, &format!("#{seq}"))
}

/// The first message matching `filter` at or after `from`.
pub async fn next(
    stream: &Stream,
    filter: &str,
    from: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    found(
        stream
            .raw_message_builder()
            .next_by_subject(filter.to_string())
            .sequence(from)
            .send()
            .await,
        filter,
    )
}
