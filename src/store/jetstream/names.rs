//! How the JetStream engine names things: streams and buckets after `storage.stream`,
//! the partition of a payment, and the subjects of events, replays, delivery records
//! and dead letters. Names are the on-disk format: changing one orphans stored data.

use crate::dedup::DedupKey;
use crate::store::EndpointKey;

/// Stream, bucket and subject names of one deployment.
#[derive(Debug, Clone)]
pub struct Names {
    /// Events and replays: `cb.>`, `rp.>`.
    pub events: String,
    /// Delivery records: `dlv.>`.
    pub deliveries: String,
    /// Dead letters: `dead.>`; quarantined messages: `qr.>`.
    pub dead: String,
    /// check_deposit answers: `term.>`.
    pub answers: String,
    /// Requests the merchant listener signed, for payment timelines: `sg.>`.
    pub signed: String,
    /// KV: node heartbeats and partition leases.
    pub nodes: String,
    /// KV: paused endpoints.
    pub control: String,
    /// KV: each partition's cursor.
    pub cursors: String,
    /// Core NATS subject on which every node answers for its endpoint states.
    pub status: String,
}

impl Names {
    pub fn new(stream: &str) -> Names {
        Names {
            events: stream.to_string(),
            deliveries: format!("{stream}_DLV"),
            dead: format!("{stream}_DEAD"),
            answers: format!("{stream}_TERM"),
            signed: format!("{stream}_SIGNED"),
            nodes: format!("{stream}_NODES"),
            control: format!("{stream}_CTL"),
            cursors: format!("{stream}_CURSOR"),
            status: format!("cbgate.{stream}.status"),
        }
    }
}

/// FNV-1a, 64 bits: stable across builds, platforms and nodes, which must all agree
/// on every payment's partition for the stream's life.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The partition of an order key (`project/payment`): every event of one payment
/// shares it, so one node delivers them in order.
pub fn partition(order_key: &str, partitions: u16) -> u16 {
    (fnv1a(order_key.as_bytes()) % u64::from(partitions.max(1))) as u16
}

/// `cb.<partition>.<payment>.<dedup key>`: one subject per dedup key, so the
/// expected-last-subject-sequence check decides duplicates. The payment token (a hash
/// of the order key) lets one payment's events be listed without a scan.
pub fn event_subject(partition: u16, order_key: &str, key: DedupKey) -> String {
    format!("cb.{partition}.{}.{:032x}", payment_token(order_key), key.0)
}

/// All events of one payment.
pub fn payment_filter(partition: u16, order_key: &str) -> String {
    format!("cb.{partition}.{}.*", payment_token(order_key))
}

/// A request signed for a payment, `id` making it unique.
pub fn signed_subject(partition: u16, order_key: &str, id: &str) -> String {
    format!("sg.{partition}.{}.{id}", payment_token(order_key))
}

/// Every request signed for one payment.
pub fn signed_filter(partition: u16, order_key: &str) -> String {
    format!("sg.{partition}.{}.*", payment_token(order_key))
}

fn payment_token(order_key: &str) -> String {
    format!("{:016x}", fnv1a(order_key.as_bytes()))
}

/// A replayed dead letter, delivered through its partition like an event.
pub fn replay_subject(partition: u16, seq: u64, endpoint: &EndpointKey) -> String {
    format!("rp.{partition}.{seq}.{}", endpoint_token(endpoint))
}

/// The delivery record of `seq` at `endpoint`.
pub fn delivery_subject(partition: u16, seq: u64, endpoint: &EndpointKey) -> String {
    format!("dlv.{partition}.{seq}.{}", endpoint_token(endpoint))
}

pub fn dead_subject(seq: u64, endpoint: &EndpointKey) -> String {
    format!("dead.{seq}.{}", endpoint_token(endpoint))
}

/// An events-stream message no node could read, kept as found (in the dead stream:
/// no age limit, one record per message however many nodes met it).
pub fn quarantine_subject(seq: u64) -> String {
    format!("qr.{seq}")
}

pub const QUARANTINE_FILTER: &str = "qr.>";

/// The events-stream seq of a `qr.` subject.
pub fn parse_quarantine(subject: &str) -> Option<u64> {
    subject.strip_prefix("qr.")?.parse().ok()
}

/// Dead letters of one endpoint, or all.
pub fn dead_filter(endpoint: Option<&EndpointKey>) -> String {
    match endpoint {
        Some(e) => format!("dead.*.{}", endpoint_token(e)),
        None => "dead.>".to_string(),
    }
}

/// An endpoint key as one subject token: hex, since names may hold dots.
pub fn endpoint_token(endpoint: &EndpointKey) -> String {
    endpoint
        .as_str()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn endpoint_from_token(token: &str) -> Option<EndpointKey> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    EndpointKey::parse(std::str::from_utf8(&bytes).ok()?)
}

/// `(partition, seq, endpoint)` of a `dlv.` or `rp.` subject.
pub fn parse_delivery(subject: &str) -> Option<(u16, u64, EndpointKey)> {
    let mut parts = subject.split('.');
    let _kind = parts.next()?;
    let partition = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let endpoint = endpoint_from_token(parts.next()?)?;
    parts.next().is_none().then_some((partition, seq, endpoint))
}

/// `(seq, endpoint)` of a `dead.` subject.
pub fn parse_dead(subject: &str) -> Option<(u64, EndpointKey)> {
    let rest = subject.strip_prefix("dead.")?;
    let (seq, token) = rest.split_once('.')?;
    Some((seq.parse().ok()?, endpoint_from_token(token)?))
}

/// The key of a check_deposit answer (SHA-256 of the request body).
pub fn answer_subject(key: &[u8; 32]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("term.{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_and_partitions_are_stable() {
        assert_eq!(parse_quarantine(&quarantine_subject(42)), Some(42));
        assert_eq!(parse_quarantine("qr.x"), None);
        let ep = EndpointKey::new(77, "led.ger-1");
        let token = endpoint_token(&ep);
        assert_eq!(endpoint_from_token(&token), Some(ep.clone()));
        assert_eq!(
            parse_delivery(&delivery_subject(5, 42, &ep)),
            Some((5, 42, ep.clone()))
        );
        assert_eq!(parse_delivery(&replay_subject(5, 42, &ep)).unwrap().1, 42);
        assert_eq!(parse_dead(&dead_subject(42, &ep)), Some((42, ep)));
        // Fixed for the stream's life: a change here moves payments between partitions.
        assert_eq!(partition("77/pay-1", 64), partition("77/pay-1", 64));
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let subject = event_subject(3, "77/pay-1", DedupKey(0xabc));
        assert!(subject.starts_with("cb.3."), "{subject}");
        assert_eq!(subject.split('.').count(), 4);
        assert_eq!(endpoint_from_token("zz"), None);
    }
}
