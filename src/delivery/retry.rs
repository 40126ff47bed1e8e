//! Retry maths and the circuit breaker: small pure functions over plain numbers, so
//! the policy is tested without clocks or sockets.

use std::time::Duration;

use tokio::time::Instant;

/// When to retry and when to give up, from `[delivery]`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delay before each attempt of a round; the first is usually zero.
    pub schedule: Vec<Duration>,
    /// Delay between attempts once the schedule is used up.
    pub repeat_every: Duration,
    /// A round ends (dead letter) when the next attempt would start later than this
    /// after the round began.
    pub give_up_after: Duration,
}

impl Policy {
    /// The un-jittered delay before attempt number `tries` (0-based) of a round.
    pub fn base_delay(&self, tries: u32) -> Duration {
        self.schedule
            .get(tries as usize)
            .copied()
            .unwrap_or(self.repeat_every)
    }

    /// Full jitter: uniform in `[0, base]`, `unit` being a uniform draw from `[0, 1)`.
    /// Retries of many events that failed together spread over the whole interval
    /// instead of hitting a recovering endpoint at once.
    pub fn jittered(base: Duration, unit: f64) -> Duration {
        base.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// What follows a failed attempt, `tries` attempts into a round that began at
    /// `since_ms`, now being `now_ms`: a retry after `delay`, or a dead letter when
    /// that retry would start past the round's deadline.
    pub fn after_failure(&self, tries: u32, since_ms: u64, now_ms: u64, unit: f64) -> Next {
        let delay = Self::jittered(self.base_delay(tries), unit);
        let deadline = since_ms.saturating_add(self.give_up_after.as_millis() as u64);
        if now_ms.saturating_add(delay.as_millis() as u64) > deadline {
            Next::GiveUp
        } else {
            Next::RetryIn(delay)
        }
    }

    /// True once a round that began at `since_ms` is past its deadline.
    pub fn expired(&self, since_ms: u64, now_ms: u64) -> bool {
        now_ms > since_ms.saturating_add(self.give_up_after.as_millis() as u64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryIn(Duration),
    GiveUp,
}

/// Whether an attempt may start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed circuit: send.
    Send,
    /// The cooldown is over: this one attempt probes the endpoint.
    Probe,
    /// A probe is in flight: wait for its answer.
    Wait,
    /// Open circuit: nothing is sent before this instant.
    OpenUntil(Instant),
}

/// Per-endpoint circuit breaker: `threshold` consecutive failures open it for
/// `cooldown`; then one probe decides between closing and another cooldown.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
            probing: false,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.open_until {
            None => Admit::Send,
            Some(until) if now < until => Admit::OpenUntil(until),
            Some(_) if self.probing => Admit::Wait,
            Some(_) => {
                self.probing = true;
                Admit::Probe
            }
        }
    }

    /// Records an attempt's result. Any success closes the circuit: the endpoint
    /// evidently answers.
    pub fn record(&mut self, success: bool, now: Instant) {
        if success {
            self.failures = 0;
            self.open_until = None;
            self.probing = false;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        if self.probing {
            self.probing = false;
            self.open_until = Some(now + self.cooldown);
        } else if self.open_until.is_none() && self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let s = Duration::from_secs;
        Policy {
            schedule: vec![s(0), s(5), s(30), s(120), s(600), s(1800), s(3600)],
            repeat_every: s(7200),
            give_up_after: s(3 * 86400),
        }
    }

    #[test]
    fn delays_follow_the_schedule_then_repeat() {
        let p = policy();
        assert_eq!(p.base_delay(0), Duration::ZERO);
        assert_eq!(p.base_delay(1), Duration::from_secs(5));
        assert_eq!(p.base_delay(6), Duration::from_secs(3600));
        assert_eq!(p.base_delay(7), Duration::from_secs(7200));
        assert_eq!(p.base_delay(500), Duration::from_secs(7200));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_base() {
        let base = Duration::from_secs(30);
        assert_eq!(Policy::jittered(base, 0.0), Duration::ZERO);
        assert_eq!(Policy::jittered(base, 0.5), Duration::from_secs(15));
        assert!(Policy::jittered(base, 0.999_999) <= base);
        assert_eq!(Policy::jittered(base, 7.0), base, "a bad draw is clamped");
    }

    #[test]
    fn gives_up_when_the_next_retry_would_pass_the_deadline() {
        let p = policy();
        let day = 86_400_000;
        // One attempt in, retry within 5 s.
        assert_eq!(
            p.after_failure(1, 0, 1000, 1.0),
            Next::RetryIn(Duration::from_secs(5))
        );
        // Late in the round: a 2 h repeat would cross the 3-day line.
        assert_eq!(
            p.after_failure(40, 0, 3 * day - 3_600_000, 1.0),
            Next::GiveUp
        );
        // The same moment with a small draw still fits.
        assert_eq!(
            p.after_failure(40, 0, 3 * day - 3_600_000, 0.25),
            Next::RetryIn(Duration::from_secs(1800))
        );
        // A replayed round starts its own clock.
        assert_eq!(
            p.after_failure(1, 10 * day, 10 * day + 1, 1.0),
            Next::RetryIn(Duration::from_secs(5))
        );
        assert!(p.expired(0, 3 * day + 1));
        assert!(!p.expired(0, 3 * day));
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_once() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        let mut b = Breaker::new(3, cool);
        b.record(false, t0);
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        b.record(false, t0);
        assert_eq!(b.admit(t0), Admit::Send, "a success resets the count");
        b.record(false, t0);
        assert_eq!(b.admit(t0), Admit::OpenUntil(t0 + cool));
        let later = t0 + cool;
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.admit(later), Admit::Wait, "one probe at a time");
        b.record(false, later);
        assert_eq!(b.admit(later), Admit::OpenUntil(later + cool));
        assert_eq!(b.admit(later + cool), Admit::Probe);
        b.record(true, later + cool);
        assert_eq!(b.admit(later + cool), Admit::Send);
        assert!(!b.is_open());
    }

    #[test]
    fn failures_of_attempts_already_in_flight_do_not_extend_an_open_circuit() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(10);
        let mut b = Breaker::new(1, cool);
        b.record(false, t0);
        b.record(false, t0 + Duration::from_secs(5));
        assert_eq!(b.admit(t0 + cool), Admit::Probe);
    }
}
