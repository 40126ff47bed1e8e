//! The stored record of one event, the same for both engines (the journal's `events`
//! value, the payload of a JetStream event message):
//! `version u8 | accepted_ms u64 | project u64 | dedup u128 | order_key (u16 len)
//! | endpoint count u16, each (u16 len) | body`, integers little-endian. Decoding any
//! bytes never panics: a damaged record is a `RecordError` naming what is wrong, and
//! whatever decodes encodes back to the same bytes (fuzzed: `fuzz/`, `journal_record`).

use bytes::Bytes;

use crate::dedup::DedupKey;
use crate::store::{EndpointKey, Event, StoreError};

const VERSION: u8 = 1;

/// A record that does not decode: which one, and the first thing found wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stored record #{seq} is malformed: {what}")]
pub struct RecordError {
    pub seq: u64,
    pub what: &'static str,
}

impl From<RecordError> for StoreError {
    fn from(e: RecordError) -> Self {
        StoreError::Malformed(e.seq)
    }
}

pub fn encode(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + event.order_key.len() + event.body.len());
    out.push(VERSION);
    out.extend_from_slice(&event.accepted_ms.to_le_bytes());
    out.extend_from_slice(&event.project.to_le_bytes());
    out.extend_from_slice(&event.dedup.0.to_le_bytes());
    put_str(&mut out, &event.order_key);
    out.extend_from_slice(&(event.endpoints.len() as u16).to_le_bytes());
    for e in &event.endpoints {
        put_str(&mut out, e.as_str());
    }
    out.extend_from_slice(&event.body);
    out
}

/// The event `seq` recorded in `raw`, its body copied out.
pub fn decode(seq: u64, raw: &[u8]) -> Result<Event, RecordError> {
    decode_with(seq, raw, Bytes::copy_from_slice)
}

/// The event `seq` recorded in `raw`, its body a slice of `raw` (no copy).
pub fn decode_shared(seq: u64, raw: &Bytes) -> Result<Event, RecordError> {
    decode_with(seq, raw, |body| raw.slice_ref(body))
}

/// Everything but the body, which is left empty: the journal's own bookkeeping needs
/// no copy of it.
pub fn decode_head(seq: u64, raw: &[u8]) -> Result<Event, RecordError> {
    decode_with(seq, raw, |_| Bytes::new())
}

fn decode_with(
    seq: u64,
    raw: &[u8],
    body: impl FnOnce(&[u8]) -> Bytes,
) -> Result<Event, RecordError> {
    let bad = |what| move || RecordError { seq, what };
    let mut r = Reader(raw);
    match r.take(1).ok_or_else(bad("empty"))?[0] {
        VERSION => {}
        _ => return Err(bad("unknown version")()),
    }
    let short = bad("cut short in its head");
    let accepted_ms = u64::from_le_bytes(r.array().ok_or_else(short)?);
    let project = u64::from_le_bytes(r.array().ok_or_else(short)?);
    let dedup = DedupKey(u128::from_le_bytes(r.array().ok_or_else(short)?));
    let order_key = r
        .string()
        .ok_or_else(bad("order key cut short or not UTF-8"))?;
    let n = u16::from_le_bytes(r.array().ok_or_else(short)?);
    let endpoints = (0..n)
        .map(|_| {
            r.string()
                .and_then(|s| EndpointKey::parse(&s))
                .ok_or_else(bad("endpoint key cut short or not project/name"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Event {
        seq,
        accepted_ms,
        project,
        dedup,
        order_key,
        partition: 0,
        endpoints,
        body: body(r.0),
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn string(&mut self) -> Option<String> {
        let n = u16::from_le_bytes(self.array()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_every_cut_of_it_is_malformed() {
        let event = Event {
            seq: 9,
            accepted_ms: 1_700_000_000_000,
            project: 77,
            dedup: DedupKey(0xdead_beef),
            order_key: "77/pay-1".into(),
            partition: 0,
            endpoints: vec![EndpointKey::new(77, "a"), EndpointKey::new(77, "b.c")],
            body: Bytes::from_static(br#"{"x":1}"#),
        };
        let raw = encode(&event);
        let back = decode(9, &raw).unwrap();
        assert_eq!(back.endpoints, event.endpoints);
        assert_eq!(
            (back.order_key.as_str(), &back.body[..]),
            ("77/pay-1", &br#"{"x":1}"#[..])
        );
        // Cut anywhere inside the head: an error, never a panic.
        let head = raw.len() - event.body.len();
        for cut in 0..head {
            assert!(decode(9, &raw[..cut]).is_err(), "cut at {cut}");
        }
    }
}
