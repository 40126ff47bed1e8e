//! The JetStream engine's records beside the event record (`store::record`):
//! - a delivery record (`dlv.`): `version u8 | body_seq u64 | lane (u16 len) | state`,
//!   `body_seq` being the events-stream sequence of the message that holds the event
//!   (its own `cb.` message, or the `rp.` message of a replay), `lane` its order key;
//! - a kept event (`dead.` dead letters, `rp.` replays): `version u8 | state len u32 |
//!   state | event record`.
//!
//! Integers little-endian; decoding any bytes never panics.

use bytes::Bytes;

use crate::store::{Event, StoreError, record};

const VERSION: u8 = 1;

/// A parked delivery: where its event is, its lane, and its attempt log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub body_seq: u64,
    /// The event's order key: deliveries of one lane go in seq order.
    pub lane: String,
    pub state: Vec<u8>,
}

impl Parked {
    pub fn encode(&self) -> Bytes {
        let lane = &self.lane.as_bytes()[..self.lane.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(11 + lane.len() + self.state.len());
        out.push(VERSION);
        out.extend_from_slice(&self.body_seq.to_le_bytes());
        out.extend_from_slice(&(lane.len() as u16).to_le_bytes());
        out.extend_from_slice(lane);
        out.extend_from_slice(&self.state);
        out.into()
    }

    pub fn decode(raw: &[u8]) -> Option<Parked> {
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() < 10 {
            return None;
        }
        let (seq, rest) = rest.split_at(8);
        let (len, rest) = rest.split_at(2);
        let len = u16::from_le_bytes(len.try_into().ok()?) as usize;
        let lane = std::str::from_utf8(rest.get(..len)?).ok()?.to_string();
        Some(Parked {
            body_seq: u64::from_le_bytes(seq.try_into().ok()?),
            lane,
            state: rest[len..].to_vec(),
        })
    }
}

/// The event of a `cb.` message numbered `seq`; the body shares `raw`.
pub fn decode_event(seq: u64, raw: &Bytes) -> Result<Event, StoreError> {
    Ok(record::decode_shared(seq, raw)?)
}

/// An event kept with one delivery's state.
pub fn encode_kept(state: &[u8], event: &Event) -> Bytes {
    let event = record::encode(event);
    let mut out = Vec::with_capacity(5 + state.len() + event.len());
    out.push(VERSION);
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    out.extend_from_slice(state);
    out.extend_from_slice(&event);
    out.into()
}

/// `(state, event)` of a kept event numbered `seq`; the body shares `raw`.
pub fn decode_kept(seq: u64, raw: &Bytes) -> Result<(Vec<u8>, Event), StoreError> {
    let bad = || StoreError::Malformed(seq);
    let (&version, rest) = raw.split_first().ok_or_else(bad)?;
    if version != VERSION || rest.len() < 4 {
        return Err(bad());
    }
    let len = u32::from_le_bytes(rest[..4].try_into().map_err(|_| bad())?) as usize;
    let state = rest.get(4..4 + len).ok_or_else(bad)?.to_vec();
    let event = raw.slice(5 + len..);
    Ok((state, record::decode_shared(seq, &event)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::DedupKey;
    use crate::store::EndpointKey;

    #[test]
    fn records_round_trip_and_damaged_ones_are_refused() {
        let parked = Parked {
            body_seq: 7,
            lane: "77/pay-1".into(),
            state: b"{}".to_vec(),
        };
        let raw = parked.encode();
        assert_eq!(Parked::decode(&raw), Some(parked.clone()));
        for cut in 0..11 + parked.lane.len() {
            assert_eq!(Parked::decode(&raw[..cut]), None, "cut {cut}");
        }
        let event = Event {
            seq: 3,
            accepted_ms: 1,
            project: 77,
            dedup: DedupKey(9),
            order_key: "77/p".into(),
            partition: 0,
            endpoints: vec![EndpointKey::new(77, "a")],
            body: Bytes::from_static(b"{\"a\":1}"),
        };
        let kept = encode_kept(b"state", &event);
        let (state, back) = decode_kept(3, &kept).unwrap();
        assert_eq!(
            (state.as_slice(), &back.body[..]),
            (&b"state"[..], &b"{\"a\":1}"[..])
        );
        for cut in 0..kept.len() - event.body.len() {
            assert!(decode_kept(3, &kept.slice(..cut)).is_err(), "cut {cut}");
        }
    }
}
