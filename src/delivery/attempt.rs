//! One delivery attempt: the Standard Webhooks request, its outcome classified, and
//! the attempt log kept as a delivery's durable state (small JSON, see `State`).

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, header};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::outbound::pool::{Failure, Pool};
use crate::projects::Endpoint;
use crate::store::Event;

/// Attempts kept in a delivery's log; older ones are counted, not kept.
const KEPT_ATTEMPTS: usize = 50;
/// Bytes of a refusing answer's body kept as the attempt's error.
const KEPT_BODY: usize = 200;

/// A delivery's state as the store keeps it (pending and dead deliveries):
/// `{"since_ms":…,"next_ms":…,"tries":…,"rounds":…,"dropped":…,"attempts":[…]}`.
/// Empty bytes mean no attempt yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Start of the current round (acceptance, or the last replay).
    pub since_ms: u64,
    /// When the next attempt is due (wall clock), so a restart keeps the backoff.
    pub next_ms: u64,
    /// Attempts in the current round: the index into the schedule.
    pub tries: u32,
    /// Rounds so far: 1 + replays.
    #[serde(default)]
    pub rounds: u32,
    /// Attempts dropped from the front of `attempts` to keep the log small.
    #[serde(default)]
    pub dropped: u32,
    pub attempts: Vec<Attempt>,
}

/// What one attempt found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub at_ms: u64,
    /// Time to the answer (or to the failure).
    pub ms: u64,
    /// HTTP status, when an answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `ok`, or the failure class (see `Class`).
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.class == Class::Ok.as_str()
    }
}

impl State {
    /// The state stored in `raw`, or a fresh one for an event accepted at
    /// `accepted_ms` (no attempt yet, or unreadable bytes: a delivery is never stuck
    /// on its own bookkeeping).
    pub fn decode(raw: &[u8], accepted_ms: u64) -> State {
        if !raw.is_empty()
            && let Ok(state) = serde_json::from_slice(raw)
        {
            return state;
        }
        State {
            since_ms: accepted_ms,
            next_ms: accepted_ms,
            rounds: 1,
            ..State::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state serialises")
    }

    pub fn record(&mut self, attempt: Attempt) {
        self.tries = self.tries.saturating_add(1);
        self.attempts.push(attempt);
        if self.attempts.len() > KEPT_ATTEMPTS {
            self.attempts.remove(0);
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// A new round for a replayed dead letter; the old attempts stay as history.
    pub fn replayed(mut self, now_ms: u64) -> State {
        self.since_ms = now_ms;
        self.next_ms = now_ms;
        self.tries = 0;
        self.rounds = self.rounds.max(1).saturating_add(1);
        self
    }
}

/// How an attempt ended; failure classes are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ok,
    /// 4xx, 5xx or another non-2xx status.
    Http4xx,
    Http5xx,
    HttpOther,
    /// No answer within the endpoint's timeout.
    Timeout,
    /// No connection (refused, unreachable, connect timeout, TLS handshake).
    Connect,
    /// The connection broke mid-request (reset, closed without an answer).
    Io,
    /// The circuit was open when the round ran out: no request was made.
    CircuitOpen,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Http4xx => "http_4xx",
            Class::Http5xx => "http_5xx",
            Class::HttpOther => "http_other",
            Class::Timeout => "timeout",
            Class::Connect => "connect",
            Class::Io => "io",
            Class::CircuitOpen => "circuit_open",
        }
    }

    pub fn of_status(status: u16) -> Class {
        match status {
            200..=299 => Class::Ok,
            400..=499 => Class::Http4xx,
            500..=599 => Class::Http5xx,
            _ => Class::HttpOther,
        }
    }
}

/// `webhook-id`: the event's dedup key, the same on every attempt and restart, so a
/// merchant can drop the duplicates at-least-once delivery brings.
pub fn webhook_id(event: &Event) -> String {
    format!("msg_{:032x}", event.dedup.0)
}

/// Sends `event` to `endpoint` once: the body unchanged, Standard Webhooks headers
/// signed now. Success is any 2xx within the endpoint's timeout.
pub async fn send(pool: &Pool, endpoint: &Endpoint, event: &Event) -> Attempt {
    let at_ms = now_ms();
    let started = Instant::now();
    let done = |status: Option<u16>, class: Class, error: Option<String>| Attempt {
        at_ms,
        ms: started.elapsed().as_millis() as u64,
        status,
        class: class.as_str().to_string(),
        error,
    };
    let id = webhook_id(event);
    let timestamp = at_ms / 1000;
    let request = Request::post(endpoint.url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("cbgate/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp)
        .header(
            "webhook-signature",
            endpoint.signing_key.sign(&id, timestamp, &event.body),
        )
        .body(Full::new(event.body.clone()))
        .expect("a valid URI and static headers");
    let deadline = tokio::time::Instant::now() + endpoint.timeout;
    let (response, lease) =
        match tokio::time::timeout_at(deadline, pool.send(&endpoint.url, request)).await {
            Err(_) => {
                return done(
                    None,
                    Class::Timeout,
                    Some(format!("no answer within {:?}", endpoint.timeout)),
                );
            }
            Ok(Err(Failure::Connect(e))) => return done(None, Class::Connect, Some(e)),
            Ok(Err(Failure::Sent(e) | Failure::Body(e))) => return done(None, Class::Io, Some(e)),
            Ok(Ok(r)) => r,
        };
    let status = response.status().as_u16();
    let class = Class::of_status(status);
    // Read the answer so the connection goes back to the pool; its status decides,
    // so a slow or broken body after a 2xx still counts as delivered.
    let body = Limited::new(response.into_body(), 64 * 1024).collect();
    let text = match tokio::time::timeout_at(deadline, body).await {
        Ok(Ok(b)) => {
            lease.release();
            b.to_bytes()
        }
        _ => Bytes::new(),
    };
    let error = (class != Class::Ok).then(|| {
        let cut = text.len().min(KEPT_BODY);
        format!("HTTP {status}: {}", String::from_utf8_lossy(&text[..cut]))
    });
    done(Some(status), class, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_fresh_one_starts_at_acceptance() {
        let fresh = State::decode(b"", 1_000);
        assert_eq!(
            (fresh.since_ms, fresh.next_ms, fresh.tries),
            (1_000, 1_000, 0)
        );
        assert_eq!(State::decode(b"not json", 7).since_ms, 7);
        let mut s = fresh.clone();
        s.record(Attempt {
            at_ms: 1_001,
            ms: 12,
            status: Some(503),
            class: Class::Http5xx.as_str().into(),
            error: Some("HTTP 503: busy".into()),
        });
        assert_eq!(State::decode(&s.encode(), 0), s);
        let r = s.replayed(9_000);
        assert_eq!(
            (r.since_ms, r.tries, r.rounds, r.attempts.len()),
            (9_000, 0, 2, 1)
        );
    }

    #[test]
    fn the_log_keeps_the_latest_attempts() {
        let mut s = State::decode(b"", 0);
        for i in 0..(KEPT_ATTEMPTS as u64 + 5) {
            s.record(Attempt {
                at_ms: i,
                ms: 0,
                status: None,
                class: "connect".into(),
                error: None,
            });
        }
        assert_eq!(s.attempts.len(), KEPT_ATTEMPTS);
        assert_eq!(s.dropped, 5);
        assert_eq!(s.tries, KEPT_ATTEMPTS as u32 + 5);
        assert_eq!(s.attempts[0].at_ms, 5);
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(Class::of_status(204), Class::Ok);
        assert_eq!(Class::of_status(302), Class::HttpOther);
        assert_eq!(Class::of_status(410), Class::Http4xx);
        assert_eq!(Class::of_status(502), Class::Http5xx);
    }
}
