//! The JetStream engine's records beside the event record (`store::record`):
//! - a delivery record (`dlv.`): `version u8 | body_seq u64 | lane (u16 len) | state`,
//!   `body_seq` being the events-stream sequence of the message that holds the event
//!   (its own `cb.` message, or the `rp.` message of a replay), `lane` its order key;
//! - a kept event (`dead.` dead letters, `rp.` replays): `version u8 | state len u32 |
//!   state | event record`;
//! - a quarantined message (`qr.`): `version u8 | at_ms u64 | reason (u16 len) |
//!   endpoint count u16 | each endpoint (u16 len) | the message's bytes as found`.
//!
//! Integers little-endian; decoding any bytes never panics.

use bytes::Bytes;

use crate::store::{EndpointKey, Event, Quarantined, StoreError, record};

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

/// A quarantine record; `seq` is in its subject.
pub fn encode_quarantined(q: &Quarantined) -> Bytes {
    fn text(out: &mut Vec<u8>, s: &str) {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(b);
    }
    let mut out = Vec::with_capacity(64 + q.reason.len() + q.raw.len());
    out.push(VERSION);
    out.extend_from_slice(&q.at_ms.to_le_bytes());
    text(&mut out, &q.reason);
    let endpoints = &q.endpoints[..q.endpoints.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(endpoints.len() as u16).to_le_bytes());
    for endpoint in endpoints {
        text(&mut out, endpoint);
    }
    out.extend_from_slice(&q.raw);
    out.into()
}

/// The quarantine record of message `seq`; `None` if `raw` is not one.
pub fn decode_quarantined(seq: u64, raw: &[u8]) -> Option<Quarantined> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head)
    }
    fn text(rest: &mut &[u8]) -> Option<String> {
        let len = u16::from_le_bytes(take(rest, 2)?.try_into().ok()?) as usize;
        Some(std::str::from_utf8(take(rest, len)?).ok()?.to_string())
    }
    let mut rest = raw;
    if take(&mut rest, 1)? != [VERSION] {
        return None;
    }
    let at_ms = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let reason = text(&mut rest)?;
    let count = u16::from_le_bytes(take(&mut rest, 2)?.try_into().ok()?);
    let endpoints = (0..count)
        .map(|_| text(&mut rest).filter(|e| EndpointKey::parse(e).is_some()))
        .collect::<Option<Vec<String>>>()?;
    Some(Quarantined {
        seq,
        at_ms,
        reason,
        endpoints,
        raw: rest.to_vec(),
    })
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

    #[test]
    fn quarantine_records_round_trip_and_damaged_ones_are_refused() {
        let q = Quarantined {
            seq: 12,
            at_ms: 1_700_000_000_000,
            reason: "stored record #12 is malformed".into(),
            endpoints: vec!["77/a".into()],
            raw: b"\x01torn".to_vec(),
        };
        let raw = encode_quarantined(&q);
        assert_eq!(decode_quarantined(12, &raw), Some(q.clone()));
        let fixed = raw.len() - q.raw.len();
        for cut in 0..fixed {
            assert_eq!(decode_quarantined(12, &raw[..cut]), None, "cut {cut}");
        }
        let empty = Quarantined {
            endpoints: Vec::new(),
            raw: Vec::new(),
            ..q
        };
        assert_eq!(
            decode_quarantined(12, &encode_quarantined(&empty)),
            Some(empty)
        );
    }
}
