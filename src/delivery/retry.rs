//! Retry maths and the circuit breaker: small pure functions over plain numbers and
//! explicit instants, so the policy is tested without clocks or sockets.

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
    /// Send; give the ticket back to `Breaker::record` with the outcome.
    Send(Ticket),
    /// Half-open and this stage's attempts are all out: wait for their answers.
    Wait,
    /// Open circuit: nothing is sent before this instant.
    OpenUntil(Instant),
}

/// Which phase of the breaker an attempt was started in. Outcomes of attempts started
/// before the circuit last opened are stale: they neither extend an open circuit nor
/// count in a probe's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// A change of state worth a log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Opened for the cooldown; the failure rate and attempts that did it (a failed
    /// probe reports the probe stage's).
    Opened {
        rate: f64,
        attempts: u32,
    },
    Closed,
}

/// The breaker's settings, from `[delivery]`.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Failures within `window` that can open the circuit, at the least.
    pub failures: u32,
    /// Share of failed attempts within `window` that opens it...
    pub failure_rate: f64,
    /// ...once the window holds this many attempts.
    pub min_attempts: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

impl BreakerSettings {
    pub fn from_config(d: &crate::config::Delivery) -> Self {
        Self {
            failures: d.breaker_failures,
            failure_rate: d.breaker_failure_rate,
            min_attempts: d.breaker_min_attempts,
            window: d.breaker_window,
            cooldown: d.breaker_cooldown,
        }
    }
}

/// Slices of the window: outcomes age out a slice at a time.
const SLICES: usize = 10;

/// Attempts and failures over the last `span`, in `SLICES` slices.
#[derive(Debug, Clone)]
struct Window {
    slice: Duration,
    counts: [(u32, u32); SLICES],
    current: usize,
    /// Start of the current slice.
    since: Option<Instant>,
}

impl Window {
    fn new(span: Duration) -> Self {
        Self {
            slice: (span / SLICES as u32).max(Duration::from_millis(1)),
            counts: [(0, 0); SLICES],
            current: 0,
            since: None,
        }
    }

    fn advance(&mut self, now: Instant) {
        let Some(since) = self.since else {
            self.since = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(since);
        let steps = (elapsed.as_nanos() / self.slice.as_nanos()) as usize;
        if steps >= SLICES {
            self.clear(now);
            return;
        }
        for _ in 0..steps {
            self.current = (self.current + 1) % SLICES;
            self.counts[self.current] = (0, 0);
        }
        self.since = Some(since + self.slice * steps as u32);
    }

    fn add(&mut self, failed: bool, now: Instant) {
        self.advance(now);
        let c = &mut self.counts[self.current];
        c.0 = c.0.saturating_add(1);
        c.1 = c.1.saturating_add(failed as u32);
    }

    /// (attempts, failures) in the window.
    fn totals(&self) -> (u32, u32) {
        self.counts.iter().fold((0, 0), |(a, f), c| {
            (a.saturating_add(c.0), f.saturating_add(c.1))
        })
    }

    fn clear(&mut self, now: Instant) {
        self.counts = [(0, 0); SLICES];
        self.since = Some(now);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// Probing after the cooldown: `allowed` attempts so far (1, then 3, 7, 15, ...:
    /// each stage doubles once the previous one is answered), `started` of them sent,
    /// `done` answered, `failed` of those failures.
    HalfOpen {
        allowed: u32,
        started: u32,
        done: u32,
        failed: u32,
    },
}

/// Per-endpoint circuit breaker (the rate-based design of resilience4j, Convoy and
/// Envoy's outlier detection). Closed, it opens when, within `window`, at least
/// `min_attempts` attempts were made, at least `failures` of them failed, and their
/// share is at least `failure_rate`; a partly healthy endpoint keeps its traffic.
/// Open, nothing is sent for `cooldown`. Then one probe: a failure opens it again,
/// a success lets 2 more through, then 4, 8, ... while the failure share of the
/// probes stays under `failure_rate`; after `min_attempts` probes it closes.
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    window: Window,
    phase: Phase,
    /// The ticket of the current phase; bumped when the circuit opens.
    generation: u64,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        let settings = BreakerSettings {
            failures: settings.failures.max(1),
            min_attempts: settings.min_attempts.max(1),
            failure_rate: if settings.failure_rate.is_finite() {
                settings.failure_rate.clamp(f64::MIN_POSITIVE, 1.0)
            } else {
                1.0
            },
            ..settings
        };
        Self {
            window: Window::new(settings.window),
            settings,
            phase: Phase::Closed,
            generation: 0,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        let ticket = Ticket(self.generation);
        match &mut self.phase {
            Phase::Closed => Admit::Send(ticket),
            Phase::Open { until } if now < *until => Admit::OpenUntil(*until),
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen {
                    allowed: 1,
                    started: 1,
                    done: 0,
                    failed: 0,
                };
                Admit::Send(ticket)
            }
            Phase::HalfOpen {
                allowed, started, ..
            } => {
                if started < allowed {
                    *started += 1;
                    Admit::Send(ticket)
                } else {
                    Admit::Wait
                }
            }
        }
    }

    /// Records the outcome of an attempt admitted with `ticket`.
    pub fn record(&mut self, ticket: Ticket, success: bool, now: Instant) -> Option<Transition> {
        if ticket.0 != self.generation {
            return None;
        }
        let s = self.settings;
        match &mut self.phase {
            // Only attempts of an older generation can finish while open.
            Phase::Open { .. } => None,
            Phase::Closed => {
                self.window.add(!success, now);
                let (attempts, failures) = self.window.totals();
                let rate = failures as f64 / attempts.max(1) as f64;
                if attempts >= s.min_attempts && failures >= s.failures && rate >= s.failure_rate {
                    self.open(now);
                    return Some(Transition::Opened { rate, attempts });
                }
                None
            }
            Phase::HalfOpen {
                allowed,
                started,
                done,
                failed,
            } => {
                *done += 1;
                *failed += !success as u32;
                let rate = *failed as f64 / *done as f64;
                if *failed > 0 && rate >= s.failure_rate {
                    let attempts = *done;
                    self.open(now);
                    return Some(Transition::Opened { rate, attempts });
                }
                if *done >= s.min_attempts {
                    // The probes' outcomes start the new window: a closed circuit is
                    // judged with them, not from nothing.
                    let (done, failed) = (*done, *failed);
                    self.phase = Phase::Closed;
                    self.window.clear(now);
                    self.window.counts[self.window.current] = (done, failed);
                    return Some(Transition::Closed);
                }
                if *done == *started && *started == *allowed {
                    *allowed = allowed.saturating_mul(2).saturating_add(1);
                }
                None
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open {
            until: now + self.settings.cooldown,
        };
        self.generation += 1;
        self.window.clear(now);
    }

    /// Open or probing: not every attempt may go.
    pub fn is_open(&self) -> bool {
        self.phase != Phase::Closed
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

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 5,
            failure_rate: 0.8,
            min_attempts: 20,
            window: Duration::from_secs(30),
            cooldown: Duration::from_secs(30),
        }
    }

    /// Sends `n` attempts at `now` with outcomes from `fail(i)`; returns the
    /// transitions they caused.
    fn run(b: &mut Breaker, now: Instant, n: u32, fail: impl Fn(u32) -> bool) -> Vec<Transition> {
        (0..n)
            .filter_map(|i| match b.admit(now) {
                Admit::Send(t) => b.record(t, !fail(i), now),
                other => panic!("attempt {i} not admitted: {other:?}"),
            })
            .collect()
    }

    /// Issue 16: an endpoint failing every other attempt opened after 5 failures in a
    /// row; on a rate it keeps its traffic.
    #[test]
    fn an_endpoint_failing_half_its_attempts_stays_closed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        // Alternating, then runs of 5 failures between successes: 50% and 62.5%.
        assert!(run(&mut b, t0, 1000, |i| i % 2 == 0).is_empty());
        assert!(run(&mut b, t0, 800, |i| i % 8 < 5).is_empty());
        assert!(!b.is_open());
        // Even a burst of 15 failures in a row is under the rate within a busy window.
        assert!(run(&mut b, t0, 15, |_| true).is_empty());
    }

    #[test]
    fn opens_on_the_rate_once_the_window_holds_enough_attempts() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        // 19 failures: too few attempts to judge.
        assert!(run(&mut b, t0, 19, |_| true).is_empty());
        assert_eq!(
            run(&mut b, t0, 1, |_| true),
            [Transition::Opened {
                rate: 1.0,
                attempts: 20
            }]
        );
        assert_eq!(b.admit(t0), Admit::OpenUntil(t0 + Duration::from_secs(30)));
        // 80% of 20 within the window, spread over it.
        let mut b = Breaker::new(settings());
        let step = Duration::from_secs(1);
        let mut opened = None;
        for i in 0..20u32 {
            if let Admit::Send(t) = b.admit(t0 + step * i) {
                opened = opened.or(b.record(t, i % 5 == 0, t0 + step * i));
            }
        }
        assert!(matches!(
            opened,
            Some(Transition::Opened { attempts: 20, .. })
        ));
    }

    #[test]
    fn old_outcomes_age_out_of_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        assert!(run(&mut b, t0, 19, |_| true).is_empty());
        // 31 s later the 19 failures are gone: one more does not open it.
        assert!(run(&mut b, t0 + Duration::from_secs(31), 1, |_| true).is_empty());
        assert!(!b.is_open());
    }

    #[test]
    fn breaker_failures_is_a_floor_on_failures() {
        // The old key's meaning, kept: with rate 1.0 and min_attempts = failures, the
        // breaker opens after `failures` failures in a row, as before.
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerSettings {
            failures: 3,
            failure_rate: 1.0,
            min_attempts: 3,
            ..settings()
        });
        assert!(run(&mut b, t0, 2, |_| true).is_empty());
        assert!(run(&mut b, t0, 1, |_| false).is_empty());
        b.window.clear(t0);
        assert_eq!(run(&mut b, t0, 3, |_| true).len(), 1);
        // And a high min_attempts with a low floor still needs the floor.
        let mut b = Breaker::new(BreakerSettings {
            failures: 10,
            failure_rate: 0.1,
            min_attempts: 5,
            ..settings()
        });
        assert!(run(&mut b, t0, 9, |_| true).is_empty());
        assert_eq!(run(&mut b, t0, 1, |_| true).len(), 1);
    }

    #[test]
    fn a_dead_endpoint_gets_one_probe_per_cooldown() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        let mut b = Breaker::new(settings());
        run(&mut b, t0, 20, |_| true);
        let mut at = t0;
        for _ in 0..5 {
            assert_eq!(b.admit(at), Admit::OpenUntil(at + cool));
            at += cool;
            let Admit::Send(probe) = b.admit(at) else {
                panic!("no probe after the cooldown");
            };
            assert_eq!(b.admit(at), Admit::Wait, "one probe at a time");
            assert_eq!(
                b.record(probe, false, at),
                Some(Transition::Opened {
                    rate: 1.0,
                    attempts: 1
                })
            );
        }
    }

    #[test]
    fn half_open_ramps_up_and_closes_after_enough_good_probes() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        let mut b = Breaker::new(settings());
        run(&mut b, t0, 20, |_| true);
        let at = t0 + cool;
        let mut stages = Vec::new();
        let mut outcomes = 0;
        let mut closed = false;
        while !closed {
            // Take every attempt the stage allows, then answer them all.
            let mut tickets = Vec::new();
            while let Admit::Send(t) = b.admit(at) {
                tickets.push(t);
            }
            stages.push(tickets.len());
            for t in tickets {
                // One failure in four: under the rate.
                outcomes += 1;
                closed |= b.record(t, outcomes % 4 != 0, at) == Some(Transition::Closed);
            }
        }
        assert_eq!(stages, [1, 2, 4, 8, 16], "doubling stages");
        assert!(!b.is_open());
        assert!(matches!(b.admit(at), Admit::Send(_)));
    }

    #[test]
    fn a_failing_ramp_opens_again() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(30);
        let mut b = Breaker::new(settings());
        run(&mut b, t0, 20, |_| true);
        let at = t0 + cool;
        let Admit::Send(first) = b.admit(at) else {
            panic!("no probe")
        };
        assert_eq!(b.record(first, true, at), None);
        // Every later probe fails: the share reaches 80% within the third stage.
        let mut answered = 1;
        let opened = loop {
            let mut tickets = Vec::new();
            while let Admit::Send(t) = b.admit(at) {
                tickets.push(t);
            }
            assert!(!tickets.is_empty(), "the ramp stalled");
            if let Some(t) = tickets.into_iter().find_map(|t| b.record(t, false, at)) {
                break t;
            }
            answered += 1;
            assert!(answered < 10);
        };
        assert_eq!(
            opened,
            Transition::Opened {
                rate: 0.8,
                attempts: 5
            }
        );
        assert_eq!(b.admit(at), Admit::OpenUntil(at + cool));
    }

    /// The worker's use of the breaker, simulated on explicit instants: `events`
    /// events due at once, `cap` attempts in flight, each answered after `answer`,
    /// `fails(event, tries)` deciding the outcome, a failed event due again after
    /// `retry`, and a head held by an open circuit due when it closes (as
    /// `Worker::hold` does). Returns when the last event was delivered.
    fn simulate(
        events: usize,
        cap: usize,
        answer: Duration,
        retry: Duration,
        fails: impl Fn(usize, u32) -> bool,
    ) -> Option<Duration> {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        let mut due = vec![t0; events];
        let mut tries = vec![0u32; events];
        let mut done = vec![false; events];
        let mut flying: Vec<(usize, Ticket, Instant)> = Vec::new();
        let step = Duration::from_millis(10);
        let mut now = t0;
        while now < t0 + Duration::from_secs(300) {
            let (finished, still): (Vec<_>, Vec<_>) =
                flying.into_iter().partition(|(_, _, at)| *at <= now);
            flying = still;
            for (e, ticket, _) in finished {
                let failed = fails(e, tries[e]);
                tries[e] += 1;
                b.record(ticket, !failed, now);
                if failed {
                    due[e] = now + retry;
                } else {
                    done[e] = true;
                }
            }
            if done.iter().all(|d| *d) {
                return Some(now - t0);
            }
            let mut ready: Vec<usize> = (0..events)
                .filter(|&e| !done[e] && due[e] <= now && !flying.iter().any(|f| f.0 == e))
                .collect();
            ready.sort_by_key(|&e| (due[e], e));
            for e in ready {
                if flying.len() >= cap {
                    break;
                }
                match b.admit(now) {
                    Admit::Send(ticket) => flying.push((e, ticket, now + answer)),
                    Admit::Wait => break,
                    Admit::OpenUntil(until) => due[e] = until,
                }
            }
            now += step;
        }
        None
    }

    /// Issue 16's endpoint: every event's first attempt fails, every retry succeeds
    /// 5 s later. The first burst of 64 failures opens the circuit (100% of the
    /// window). After the cooldown the probes are retries and the ramp closes it, but
    /// the 336 fresh first attempts that follow all fail before any of their retries
    /// is due (256 failures against 64 successes is 80%): it opens once more, and
    /// after the second cooldown the retries carry it. All 400 in about two cooldowns
    /// (65 s; with 5 failures in a row it was 5 events in 45 s). A deterministic
    /// wave like this looks like an outage to any failure-rate breaker; an endpoint
    /// failing half its attempts at random never opens it (below, and
    /// tests/it/breaker.rs through the binary).
    #[test]
    fn the_issue_pattern_delivers_everything_within_two_cooldowns() {
        let took = simulate(
            400,
            64,
            Duration::from_millis(20),
            Duration::from_secs(5),
            |_, tries| tries == 0,
        )
        .expect("not all delivered in 300 s");
        assert!(took < Duration::from_secs(70), "took {took:?}");
        // Failing half the attempts at random (seeded): the circuit never opens.
        let mut rng = 0x2545F4914F6CDD1Du64;
        let coin: Vec<bool> = (0..4000)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng.is_multiple_of(2)
            })
            .collect();
        let took = simulate(
            400,
            64,
            Duration::from_millis(20),
            Duration::from_millis(200),
            |e, tries| tries < 8 && coin[(e * 8 + tries as usize) % coin.len()],
        )
        .expect("not all delivered in 300 s");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn outcomes_of_attempts_from_before_the_opening_are_ignored() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(10);
        let mut b = Breaker::new(BreakerSettings {
            min_attempts: 1,
            failures: 1,
            cooldown: cool,
            ..settings()
        });
        let Admit::Send(early) = b.admit(t0) else {
            panic!()
        };
        let Admit::Send(opener) = b.admit(t0) else {
            panic!()
        };
        assert!(b.record(opener, false, t0).is_some());
        // The early attempt fails later: the circuit is not extended...
        assert_eq!(b.record(early, false, t0 + Duration::from_secs(5)), None);
        // ...nor does a late success of it close the probe's verdict.
        let Admit::Send(probe) = b.admit(t0 + cool) else {
            panic!()
        };
        assert_eq!(b.record(early, true, t0 + cool), None);
        assert_eq!(b.admit(t0 + cool), Admit::Wait);
        assert!(b.record(probe, false, t0 + cool).is_some());
    }
}
