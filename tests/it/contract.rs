//! The storage contract: the same tests, unchanged, against both engines through the
//! real binary: `embedded` (a redb journal) and `jetstream` (a real nats-server, R1).
//! Ingest and dedup, SIGKILL and restart, fan-out, retries, order per payment, dead
//! letters and replay.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::{Endpoint, Gate, Reply};
use crate::nats::Nats;
use crate::support::{Conn, Gateway, free_addr, seed_callbacks, signed_for};

const SECRET: &str = "test-secret";
const PROJECT: u64 = 77;
/// The Standard Webhooks specification's example secret.
pub const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Short timers so retries happen within a test.
pub const FAST: &str = r#"schedule = ["0s", "100ms", "200ms"]
repeat_every = "200ms"
timeout = "300ms"
connect_timeout = "300ms"
breaker_cooldown = "100ms""#;

/// The storage engine a test runs on.
pub enum Engine {
    Embedded,
    JetStream(Nats),
}

impl Engine {
    pub fn storage(&self) -> String {
        match self {
            Engine::Embedded => String::new(),
            Engine::JetStream(nats) => nats.storage(),
        }
    }

    /// The real binary on this engine with `config` (`[delivery]`, `[[projects]]`, ...).
    pub fn start(&self, config: &str) -> Gateway {
        Gateway::start_config(config, "", &self.storage())
    }

    /// How long a delivery may take to arrive. A JetStream node that replaces a killed
    /// one waits for the dead node's leases to expire and its unacked messages to
    /// come back (`ACK_WAIT`).
    pub fn patience(&self) -> Duration {
        match self {
            Engine::Embedded => Duration::from_secs(30),
            Engine::JetStream(_) => Duration::from_secs(60),
        }
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $name() { super::$name(&super::Engine::Embedded) })*
        }
        mod jetstream {
            $(#[test] fn $name() { super::$name(&super::Engine::JetStream(crate::nats::Nats::single())) })*
        }
    };
}

contract!(
    seed_callbacks_are_accepted_once_then_duplicates,
    concurrent_copies_of_a_callback_are_accepted_once,
    nothing_acknowledged_is_lost_across_sigkill,
    fan_out_gives_each_endpoint_exactly_what_its_filters_match,
    a_flaky_endpoint_gets_everything_in_the_end,
    order_per_payment_holds_while_another_payments_event_retries,
    sigkill_during_delivery_delivers_every_event_after_restart,
    a_dead_endpoint_fills_the_dead_letters_and_replay_delivers_them,
    a_payment_timeline_lists_its_callbacks_and_their_deliveries,
);

/// A config with `[delivery]` = `delivery` and project 77 with `endpoints`, each
/// `(name, url, extra TOML lines)`.
pub fn config(delivery: &str, endpoints: &[(&str, &str, &str)]) -> String {
    let mut out = format!(
        "[delivery]\n{delivery}\n\n[[projects]]\nid = {PROJECT}\nsecrets = [\"{SECRET}\"]\n"
    );
    for (name, url, extra) in endpoints {
        out.push_str(&format!(
            "\n[[projects.endpoints]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{WHSEC}\"\n{extra}\n"
        ));
    }
    out
}

/// A signed callback of project 77: operation `op` of payment `payment`.
pub fn callback(payment: &str, op: u64, method: &str, status: &str) -> Vec<u8> {
    let json = format!(
        r#"{{"project_id":{PROJECT},"payment":{{"id":"{payment}","type":"purchase","status":"{status}","method":"{method}","sum":{{"amount":1000,"currency":"KZT"}}}},"operation":{{"id":{op},"type":"sale","status":"{status}","code":"0","message":"ok"}}}}"#
    );
    signed_for(PROJECT, &json, SECRET)
}

pub fn op_of(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["operation"]["id"].as_u64().unwrap()
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// Waits until `done()` holds; false after `limit`.
fn eventually(limit: Duration, done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn seed_callbacks_are_accepted_once_then_duplicates(engine: &Engine) {
    let projects: String = (0..11)
        .map(|i| {
            format!(
                "[[projects]]\nid = {}\nsecrets = [\"{SECRET}\"]\n\n",
                9000 + i
            )
        })
        .collect();
    let g = engine.start(&projects);
    for (i, seed) in seed_callbacks().iter().enumerate() {
        let body = signed_for(9000 + i as u64, &seed.payload_json, SECRET);
        let answer = |body: &[u8]| g.post("/callbacks", body);
        assert_eq!(
            answer(&body),
            (200, r#"{"status":"accepted"}"#.into()),
            "{}",
            seed.name
        );
        assert_eq!(
            answer(&body),
            (200, r#"{"status":"duplicate"}"#.into()),
            "{}",
            seed.name
        );
        let changed = String::from_utf8(body.clone())
            .unwrap()
            .replacen("KZT", "KZU", 1);
        let (status, text) = answer(changed.as_bytes());
        assert_eq!(status, 400, "{}: {text}", seed.name);
    }
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "accepted")]),
        11.0
    );
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "duplicate")]),
        11.0
    );
}

fn concurrent_copies_of_a_callback_are_accepted_once(engine: &Engine) {
    let g = engine.start(&config(FAST, &[]));
    for round in 0..10u64 {
        let body = callback(&format!("race-{round}"), 500 + round, "kassa24", "success");
        let start = Arc::new(std::sync::Barrier::new(6));
        let answers: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let (start, body, g) = (start.clone(), &body, &g);
                    s.spawn(move || {
                        let mut conn = Conn::open(g.addr).unwrap();
                        start.wait();
                        let (status, text) = conn.post("/callbacks", body).unwrap();
                        assert_eq!(status, 200, "{text}");
                        text
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let accepted = answers.iter().filter(|a| a.contains("accepted")).count();
        assert_eq!(accepted, 1, "round {round}: {answers:?}");
    }
}

fn nothing_acknowledged_is_lost_across_sigkill(engine: &Engine) {
    let ep = Endpoint::ok();
    let mut g = engine.start(&config(FAST, &[("all", &ep.url(), "")]));
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..3000u64)
            .map(|i| callback(&format!("kill-{i}"), 10_000 + i, "kassa24", "success"))
            .collect(),
    );
    // Kill once some callbacks were acknowledged, while eight connections send.
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let killed = AtomicBool::new(false);
    std::thread::scope(|s| {
        for c in 0..8 {
            let (bodies, acked, addr) = (bodies.clone(), acked.clone(), g.addr);
            s.spawn(move || {
                let Ok(mut conn) = Conn::open(addr) else {
                    return;
                };
                for i in (c..bodies.len()).step_by(8) {
                    match conn.post("/callbacks", &bodies[i]) {
                        Ok((200, _)) => acked.lock().unwrap().push(i),
                        Ok((status, text)) => panic!("#{i}: {status} {text}"),
                        Err(_) => return,
                    }
                }
            });
        }
        assert!(eventually(Duration::from_secs(30), || acked
            .lock()
            .unwrap()
            .len()
            >= 200));
        g.kill();
        killed.store(true, Ordering::Release);
    });
    assert!(killed.load(Ordering::Acquire));
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() < bodies.len(),
        "the kill came after the last callback"
    );
    g.spawn();
    // Every acknowledged callback was kept: sent again, each is a duplicate...
    let mut conn = Conn::open(g.addr).unwrap();
    for &i in &acked {
        assert_eq!(
            conn.post("/callbacks", &bodies[i]).unwrap(),
            (200, r#"{"status":"duplicate"}"#.into()),
            "#{i}"
        );
    }
    // ...and each reaches the endpoint.
    let want: HashSet<&[u8]> = acked.iter().map(|&i| bodies[i].as_slice()).collect();
    assert!(
        ep.wait(engine.patience(), |reqs| {
            let got: HashSet<&[u8]> = reqs
                .iter()
                .filter(|r| r.ok())
                .map(|r| r.body.as_slice())
                .collect();
            want.is_subset(&got)
        }),
        "{}",
        g.log()
    );
    eprintln!(
        "{} acknowledged before the kill, all kept and delivered",
        acked.len()
    );
}

fn fan_out_gives_each_endpoint_exactly_what_its_filters_match(engine: &Engine) {
    let (all, mobile, success) = (Endpoint::ok(), Endpoint::ok(), Endpoint::ok());
    let g = engine.start(&config(
        FAST,
        &[
            ("all", &all.url(), ""),
            ("mobile", &mobile.url(), r#"methods = ["mobile"]"#),
            ("success", &success.url(), r#"statuses = ["success"]"#),
        ],
    ));
    let events = [
        ("kassa24", "success"),
        ("mobile", "success"),
        ("mobile", "decline"),
        ("kassa24", "decline"),
        ("terminal/paydala", "success"),
        ("Mobile", "decline"),
    ];
    let bodies: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, (method, status))| callback(&format!("p{i}"), 100 + i as u64, method, status))
        .collect();
    for b in &bodies {
        g.accept_callback(b);
    }
    let pick = |f: &dyn Fn(&str, &str) -> bool| -> Vec<Vec<u8>> {
        events
            .iter()
            .zip(&bodies)
            .filter(|((m, s), _)| f(m, s))
            .map(|(_, b)| b.clone())
            .collect()
    };
    let want_mobile = pick(&|m, _| m.eq_ignore_ascii_case("mobile"));
    let want_success = pick(&|_, s| s == "success");
    assert!(all.wait_delivered(6, engine.patience()), "{}", g.log());
    assert!(mobile.wait_delivered(3, engine.patience()));
    assert!(success.wait_delivered(3, engine.patience()));
    // Nothing more arrives (nothing is pending anywhere): each got exactly its own.
    g.wait_idle(engine.patience());
    let ok = |ep: &str| {
        g.metric(
            "cbgate_delivery_attempts_total",
            &[("endpoint", ep), ("result", "success")],
        )
    };
    assert!(eventually(engine.patience(), || ok("77/all")
        + ok("77/mobile")
        + ok("77/success")
        >= 12.0));
    assert_eq!(
        (ok("77/all"), ok("77/mobile"), ok("77/success")),
        (6.0, 3.0, 3.0)
    );
    assert_eq!(sorted(all.delivered()), sorted(bodies.clone()));
    assert_eq!(sorted(mobile.delivered()), sorted(want_mobile));
    assert_eq!(sorted(success.delivered()), sorted(want_success));
    for r in all.requests() {
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(
            r.headers["webhook-id"].starts_with("msg_"),
            "{:?}",
            r.headers
        );
        assert!(r.headers["webhook-signature"].starts_with("v1,"));
        assert!(r.headers["webhook-timestamp"].parse::<u64>().is_ok());
    }
    // The same event carries the same webhook-id to every endpoint.
    let id_of = |e: &Endpoint, body: &[u8]| {
        e.requests()
            .into_iter()
            .find(|r| r.body == body)
            .map(|r| r.headers["webhook-id"].clone())
    };
    assert_eq!(id_of(&all, &bodies[1]), id_of(&mobile, &bodies[1]));
    assert_ne!(id_of(&all, &bodies[0]), id_of(&all, &bodies[1]));
}

fn a_flaky_endpoint_gets_everything_in_the_end(engine: &Engine) {
    // Every sixth request in turn: 500, reset, no answer, slow 204, 200 and hang up, 200.
    let flaky = Endpoint::start(|n, _| match n % 6 {
        0 => Reply::Status(500),
        1 => Reply::Close,
        // Far beyond the 300 ms timeout: the gateway gives up first however slow it runs.
        2 => Reply::Hang(Duration::from_secs(5)),
        3 => Reply::Slow(Duration::from_millis(100), 204),
        4 => Reply::Last(200),
        _ => Reply::Status(200),
    });
    let g = engine.start(&config(
        &format!("{FAST}\nmax_in_flight = 4"),
        &[("flaky", &flaky.url(), "")],
    ));
    let bodies: Vec<_> = (0..15)
        .map(|i| callback(&format!("pay-{i}"), 200 + i, "kassa24", "success"))
        .collect();
    for b in &bodies {
        g.accept_callback(b);
    }
    assert!(flaky.wait_delivered(15, engine.patience()), "{}", g.log());
    let mut got = flaky.delivered();
    got.sort();
    got.dedup();
    assert_eq!(got, sorted(bodies));
    for class in ["http_5xx", "io", "timeout"] {
        assert!(
            g.metric(
                "cbgate_delivery_failures_total",
                &[("endpoint", "77/flaky"), ("class", class)]
            ) > 0.0,
            "no {class} failure counted"
        );
    }
}

fn order_per_payment_holds_while_another_payments_event_retries(engine: &Engine) {
    // Payment A's first event fails until released; B, C and D fail the first try of
    // every third event. Four posters run at once, one per payment.
    let release = Arc::new(AtomicBool::new(false));
    let tried: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let ep = {
        let (release, tried) = (release.clone(), tried.clone());
        Endpoint::start(move |_, body| {
            let op = op_of(body);
            if op / 100 == 1 && !release.load(Ordering::Acquire) {
                return Reply::Status(503);
            }
            if op.is_multiple_of(3) && tried.lock().unwrap().insert(op) {
                return Reply::Status(500);
            }
            Reply::Status(200)
        })
    };
    let g = engine.start(&config(
        &format!("{FAST}\nmax_in_flight = 8"),
        &[("orders", &ep.url(), "")],
    ));
    let payments = ["A", "B", "C", "D"];
    let per_payment = 5u64;
    std::thread::scope(|s| {
        for (p, name) in payments.iter().enumerate() {
            let g = &g;
            s.spawn(move || {
                for k in 0..per_payment {
                    let op = (p as u64 + 1) * 100 + k;
                    g.accept_callback(&callback(&format!("pay-{name}"), op, "kassa24", "success"));
                }
            });
        }
    });
    // B, C and D all get through while A's head keeps failing.
    assert!(ep.wait_delivered(15, engine.patience()), "{}", g.log());
    let reqs = ep.requests();
    assert!(reqs.iter().all(|r| op_of(&r.body) / 100 != 1 || !r.ok()));
    // A's later events were never sent while its first one was retrying.
    assert!(
        reqs.iter()
            .filter(|r| op_of(&r.body) / 100 == 1)
            .all(|r| op_of(&r.body) == 100),
        "a later event of payment A overtook its first"
    );
    release.store(true, Ordering::Release);
    assert!(ep.wait_delivered(20, engine.patience()), "{}", g.log());

    // Per payment: answered 2xx in acceptance order, and no attempt of an event before
    // the previous one's 2xx.
    let reqs = ep.requests();
    for p in 1..=4u64 {
        let ops: Vec<u64> = ep
            .delivered()
            .iter()
            .map(|b| op_of(b))
            .filter(|op| op / 100 == p)
            .collect();
        let want: Vec<u64> = (0..per_payment).map(|k| p * 100 + k).collect();
        assert_eq!(ops, want, "payment {p}");
        for k in 1..per_payment {
            let prev_ok = reqs
                .iter()
                .filter(|r| r.ok() && op_of(&r.body) == p * 100 + k - 1)
                .filter_map(|r| r.answered_at)
                .min()
                .unwrap();
            let first_try = reqs
                .iter()
                .filter(|r| op_of(&r.body) == p * 100 + k)
                .map(|r| r.at)
                .min()
                .unwrap();
            assert!(
                first_try >= prev_ok,
                "payment {p}: event {k} sent before {} was delivered",
                k - 1
            );
        }
    }
}

fn sigkill_during_delivery_delivers_every_event_after_restart(engine: &Engine) {
    // Endpoint a answers the first 30 requests, then holds every request at a gate:
    // the kill comes while deliveries are in flight, by construction.
    let gate = Gate::default();
    let a = {
        let gate = gate.clone();
        Endpoint::start(move |n, _| {
            if n < 30 {
                Reply::Status(200)
            } else {
                Reply::Block(gate.clone(), 200)
            }
        })
    };
    let b = Endpoint::ok();
    let mut g = engine.start(&config(
        r#"schedule = ["0s", "100ms", "200ms"]
repeat_every = "200ms"
timeout = "60s"
max_in_flight = 4"#,
        &[
            ("a", &a.url(), ""),
            ("b", &b.url(), r#"statuses = ["success"]"#),
        ],
    ));
    let total = 120u64;
    let bodies: Vec<_> = (0..total)
        .map(|i| {
            let status = if i % 2 == 0 { "success" } else { "decline" };
            callback(&format!("pay-{}", i % 10), 1000 + i, "kassa24", status)
        })
        .collect();
    for body in &bodies {
        g.accept_callback(body);
    }
    // Kill once a has requests waiting at the gate and every delivery is durable in
    // the store (none held only in memory).
    assert!(a.wait_arrived(31, engine.patience()), "{}", g.log());
    assert!(
        b.wait_delivered(total as usize / 2, engine.patience()),
        "{}",
        g.log()
    );
    // Kill once every delivery is durable in the store: none held only in memory, and
    // every partition's progress written.
    assert!(eventually(engine.patience(), || {
        g.metric("cbgate_store_held_deliveries", &[]) == 0.0
            && g.metric("cbgate_store_unsaved_cursors", &[]) == 0.0
    }));
    g.kill();
    gate.open();
    g.spawn();
    assert!(
        a.wait_delivered(total as usize, engine.patience()),
        "{}",
        g.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    for (name, ep, want) in [("a", &a, total as usize), ("b", &b, total as usize / 2)] {
        let got = ep.delivered();
        let unique: HashSet<_> = got.iter().cloned().collect();
        assert_eq!(unique.len(), want, "{name}");
        let duplicates = got.len() - unique.len();
        eprintln!(
            "endpoint {name}: {} deliveries, {duplicates} duplicates",
            got.len()
        );
        // Only what was in flight at the kill (4 at the gate) comes again.
        assert!(duplicates <= 4, "{name}: {duplicates} duplicates");
        // First deliveries keep acceptance order per payment.
        let mut last: HashMap<u64, u64> = HashMap::new();
        let mut seen = HashSet::new();
        for body in got {
            let op = op_of(&body);
            if seen.insert(op) {
                let payment = (op - 1000) % 10;
                if let Some(prev) = last.insert(payment, op) {
                    assert!(
                        prev < op,
                        "{name}: payment {payment}: {op} after {prev}\n{}",
                        g.log()
                    );
                }
            }
        }
    }
}

fn a_dead_endpoint_fills_the_dead_letters_and_replay_delivers_them(engine: &Engine) {
    // Nothing listens there yet. A queue of 3 makes the worker read its backlog back
    // from the store.
    let addr = free_addr();
    let url = format!("http://{addr}/hooks");
    let g = engine.start(&config(
        r#"schedule = ["0s", "50ms", "100ms"]
repeat_every = "100ms"
give_up_after = "500ms"
connect_timeout = "200ms"
breaker_failures = 2
breaker_cooldown = "100ms"
max_queued = 3"#,
        &[("gone", &url, "")],
    ));
    let bodies: Vec<_> = (0..10)
        .map(|i| callback(&format!("pay-{i}"), 300 + i, "kassa24", "success"))
        .collect();
    for b in &bodies {
        g.accept_callback(b);
    }
    // Page through the dead letters 4 at a time until all 10 are there.
    let list = |g: &Gateway| -> Vec<(u64, serde_json::Value)> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let (status, text) = g.admin_get(&format!(
                "/admin/dead-letters?endpoint=77%2Fgone&limit=4{after}"
            ));
            assert_eq!(status, 200, "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            for item in v["items"].as_array().unwrap() {
                assert_eq!(item["endpoint"], "77/gone");
                out.push((item["seq"].as_u64().unwrap(), item["state"].clone()));
            }
            match v["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => return out,
            }
        }
    };
    assert!(
        eventually(engine.patience(), || list(&g).len() >= 10),
        "dead letters: {:?}\n{}",
        list(&g),
        g.log()
    );
    let dead = list(&g);
    let mut seqs: Vec<u64> = dead.iter().map(|(s, _)| *s).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 10);
    for (_, state) in &dead {
        let attempts = state["attempts"].as_array().unwrap();
        assert!(!attempts.is_empty(), "{state}");
        for a in attempts {
            let class = a["class"].as_str().unwrap();
            assert!(["connect", "circuit_open"].contains(&class), "{a}");
            assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()), "{a}");
        }
    }
    assert_eq!(
        g.metric(
            "cbgate_delivery_dead_letters_total",
            &[("endpoint", "77/gone")]
        ),
        10.0
    );
    // One event with its attempts.
    let event_of = |seq: u64| {
        let (status, text) = g.admin_get(&format!("/admin/events/{seq}"));
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let event = event_of(seqs[0]);
    assert_eq!(event["deliveries"][0]["status"], "dead", "{event}");
    assert!(event["webhook_id"].as_str().unwrap().starts_with("msg_"));
    let first_op = event["body"]["operation"]["id"].as_u64().unwrap();
    let first_body = bodies
        .iter()
        .find(|b| op_of(b) == first_op)
        .unwrap()
        .clone();

    // The endpoint comes back. Replay one: exactly that one arrives.
    let back = Endpoint::start_on(addr, |_, _| Reply::Status(200));
    let (status, text) = g.admin_post(&format!("/admin/endpoints/77/gone/replay/{}", seqs[0]));
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"endpoint":"77/gone","replayed":1}"#)
    );
    assert!(back.wait_delivered(1, engine.patience()), "{}", g.log());
    assert!(eventually(engine.patience(), || list(&g).len() == 9));
    assert_eq!(back.delivered(), vec![first_body]);
    // Delivered: no longer pending or dead anywhere.
    assert!(eventually(engine.patience(), || {
        let (status, text) = g.admin_get(&format!("/admin/events/{}", seqs[0]));
        status == 404 || text.contains(r#""status":"delivered""#)
    }));

    // Paused, a replay waits; resumed, all the rest arrive.
    assert_eq!(g.admin_post("/admin/endpoints/77/gone/pause").0, 200);
    let (status, text) = g.admin_post("/admin/endpoints/77/gone/replay");
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"endpoint":"77/gone","replayed":9}"#)
    );
    // The replays are pending again (out of the dead letters) but not sent.
    assert!(eventually(engine.patience(), || list(&g).is_empty()));
    let (_, status) = g.admin_get("/admin/endpoints");
    assert!(status.contains(r#""paused":true"#), "{status}");
    assert_eq!(back.requests().len(), 1, "a paused endpoint got requests");
    assert_eq!(g.admin_post("/admin/endpoints/77/gone/resume").0, 200);
    assert!(back.wait_delivered(10, engine.patience()), "{}", g.log());
    assert_eq!(sorted(back.delivered()), sorted(bodies));
    assert_eq!(g.admin_post("/admin/endpoints/77/nope/pause").0, 404);
    assert_eq!(g.admin_post("/admin/endpoints/77/gone/replay/99999").0, 404);
    let (status, text) = g.admin_get("/admin/endpoints");
    assert_eq!(status, 200);
    assert!(text.contains(r#""endpoint":"77/gone""#), "{text}");
}

fn a_payment_timeline_lists_its_callbacks_and_their_deliveries(engine: &Engine) {
    let ep = Endpoint::ok();
    let g = engine.start(&config(FAST, &[("ledger", &ep.url(), "")]));
    let mine = [
        callback("otp-1", 61, "mobile", "awaiting clarification"),
        callback("otp-1", 62, "mobile", "success"),
    ];
    for body in &mine {
        g.accept_callback(body);
    }
    g.accept_callback(&callback("otp-2", 63, "mobile", "success"));
    assert!(ep.wait_delivered(3, engine.patience()), "{}", g.log());
    g.wait_idle(engine.patience());
    // Every node sees a delivery as delivered once its partition's progress is saved.
    assert!(eventually(engine.patience(), || {
        let (_, text) = g.admin_get("/admin/payments/77/otp-1");
        text.matches(r#""status":"delivered""#).count() == 2
    }));
    let (status, text) = g.admin_get("/admin/payments/77/otp-1");
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let callbacks = v["callbacks"].as_array().unwrap();
    let ops: Vec<u64> = callbacks
        .iter()
        .map(|c| c["body"]["operation"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ops, [61, 62], "{v}");
    assert_eq!(
        callbacks[0]["operation"]["status"],
        "awaiting clarification"
    );
    assert_eq!(callbacks[1]["operation"]["status"], "success");
    for c in callbacks {
        assert_eq!(c["deliveries"][0]["endpoint"], "77/ledger", "{c}");
        assert_eq!(c["deliveries"][0]["status"], "delivered", "{c}");
    }
    assert_eq!(v["signed"], serde_json::json!([]));
    let (_, other) = g.admin_get("/admin/payments/77/nobody");
    assert!(other.contains(r#""callbacks":[]"#), "{other}");
}
