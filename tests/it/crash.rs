//! The crash suite (issue 16): rounds of SIGKILL of the real binary at random moments
//! under mixed load (new callbacks, the platform's retries, terminal requests, delivery),
//! each restarting on the same data. A seeded generator (the seed is printed) picks when
//! each kill comes and the mix of new and retried callbacks; every check waits on events
//! (answers, the endpoint's connections closing), so the verdict does not depend on speed.
//!
//! `CBGATE_CRASH_ROUNDS` (default 50) and `CBGATE_CRASH_SEED` (default: from the clock).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::contract::{WHSEC, callback, op_of};
use crate::endpoint::{Endpoint, Received, Reply};
use crate::support::{Conn, Gateway, signed_for};
use crate::terminal::Merchant;

const PATIENCE: Duration = Duration::from_secs(120);
/// Callbacks are spread over this many payments (delivered in order within each).
const PAYMENTS: usize = 32;
const TERMINAL_SECRET: &str = "crash-terminal-secret";
/// Connections sending callbacks at once (the journal commits what they sent together).
const POSTERS: usize = 4;

/// Every callback made so far and what the gateway answered to each send of it.
#[derive(Default)]
struct Ledger {
    bodies: Vec<Vec<u8>>,
    answers: Vec<Answers>,
    /// 200 answers of any kind, across rounds: what a kill waits for.
    acknowledged: usize,
    retries: usize,
    /// Terminal requests sent, answered, and answered with code 0.
    terminal: usize,
    terminal_answered: usize,
    terminal_ok: usize,
}

#[derive(Default, Clone, Copy)]
struct Answers {
    accepted: u32,
    duplicate: u32,
    /// 503: not taken, the platform sends it again.
    refused: u32,
    /// The connection went with the kill: taken or not, nobody knows.
    cut: u32,
}

impl Ledger {
    /// A new callback, or (one time in three) a callback sent before, as the platform
    /// retries one it got no 200 for or sends again anyway.
    fn pick(&mut self, rng: &mut fastrand::Rng) -> usize {
        if !self.bodies.is_empty() && rng.u8(0..3) == 0 {
            self.retries += 1;
            return rng.usize(0..self.bodies.len());
        }
        let i = self.bodies.len();
        self.bodies.push(callback(
            &format!("crash-{}", i % PAYMENTS),
            10_000 + i as u64,
            "kassa24",
            "success",
        ));
        self.answers.push(Answers::default());
        i
    }
}

fn config(endpoint: &Endpoint, merchant: &Merchant) -> String {
    // A short queue makes the worker read its backlog back from the journal, and every
    // tenth request failing keeps retry states being written.
    let mut out = format!(
        "[delivery]\nschedule = [\"0s\", \"100ms\", \"200ms\"]\nrepeat_every = \"200ms\"\n\
         timeout = \"30s\"\nconnect_timeout = \"5s\"\nbreaker_cooldown = \"200ms\"\n\
         max_in_flight = 8\nmax_queued = 32\n\n\
         [[projects]]\nid = 77\nsecrets = [\"test-secret\"]\n\n\
         [[projects.endpoints]]\nname = \"crash\"\nurl = \"{}\"\nsecret = \"{WHSEC}\"\n",
        endpoint.url()
    );
    for (id, method) in [(1234, "kassa24"), (2222, "terminal/paydala")] {
        out.push_str(&format!(
            "\n[[projects]]\nid = {id}\nsecrets = [\"{TERMINAL_SECRET}\"]\nmethod = \"{method}\"\n\
             terminal_url = \"http://{}/terminal\"\nterminal_budget = \"10s\"\n",
            merchant.addr
        ));
    }
    out
}

/// A kiosk's verify (project 1234) or check_deposit (project 2222), one customer each.
fn terminal_request(n: usize) -> Vec<u8> {
    let customer = format!("crash-customer-{n}");
    if n.is_multiple_of(2) {
        let v = json!({"type": "verify", "customer_id": customer});
        signed_for(1234, &v.to_string(), TERMINAL_SECRET)
    } else {
        let v = json!({"type": "check_deposit", "customer_id": customer, "amount": 1000,
                       "currency": "KZT", "payment_method": "terminal/paydala"});
        signed_for(2222, &v.to_string(), TERMINAL_SECRET)
    }
}

/// True once no connection to `port` is open or unread on the endpoint's side: every
/// request a killed gateway sent has been read and recorded (its FIN came after them).
fn endpoint_quiet(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    !table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1).and_then(|a| a.rsplit_once(':'));
        let local_port = local.and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        // ESTABLISHED, SYN_RECV, CLOSE_WAIT: a connection the endpoint has not closed.
        local_port == Some(port) && matches!(fields.get(3), Some(&("01" | "03" | "08")))
    })
}

/// Prints the seed if the test fails, so the failing run can be replayed.
struct SeedOnPanic(u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("crash suite FAILED with CBGATE_CRASH_SEED={}", self.0);
        }
    }
}

/// A connection to the gateway; `None` once it is being killed (refused before that
/// fails the test).
fn open(addr: SocketAddr, killing: &AtomicBool) -> Option<Conn> {
    let conn = Conn::open(addr).ok();
    assert!(
        conn.is_some() || killing.load(Ordering::Acquire),
        "gateway refused before the kill"
    );
    conn
}

/// Sends callbacks until the connection goes (the kill), recording every answer.
fn post_callbacks(addr: SocketAddr, ledger: &Mutex<Ledger>, killing: &AtomicBool, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let Some(mut conn) = open(addr, killing) else {
        return;
    };
    loop {
        let (i, body) = {
            let mut l = ledger.lock().unwrap();
            let i = l.pick(&mut rng);
            (i, l.bodies[i].clone())
        };
        let answer = conn.post("/callbacks", &body);
        let mut l = ledger.lock().unwrap();
        let a = &mut l.answers[i];
        match answer {
            Ok((200, text)) if text == r#"{"status":"accepted"}"# => a.accepted += 1,
            Ok((200, text)) if text == r#"{"status":"duplicate"}"# => a.duplicate += 1,
            Ok((503, _)) => {
                a.refused += 1;
                continue;
            }
            Ok((status, text)) => panic!("callback #{i}: {status} {text}"),
            Err(e) => {
                a.cut += 1;
                assert!(
                    killing.load(Ordering::Acquire),
                    "callback #{i}: {e} before the kill"
                );
                return;
            }
        }
        l.acknowledged += 1;
    }
}

/// Sends terminal requests until the connection goes: each answer must be a defined
/// one (200, JSON with a code) while the gateway lives.
fn post_terminal(addr: SocketAddr, ledger: &Mutex<Ledger>, killing: &AtomicBool) {
    let Some(mut conn) = open(addr, killing) else {
        return;
    };
    loop {
        let n = {
            let mut l = ledger.lock().unwrap();
            l.terminal += 1;
            l.terminal
        };
        match conn.post("/terminal", &terminal_request(n)) {
            Ok((200, text)) => {
                let v: Value = serde_json::from_str(&text).expect("a JSON answer");
                assert!(v["code"].is_i64(), "terminal #{n}: {text}");
                let mut l = ledger.lock().unwrap();
                l.terminal_answered += 1;
                l.terminal_ok += usize::from(v["code"] == 0);
            }
            Ok((status, text)) => panic!("terminal #{n}: {status} {text}"),
            Err(e) => {
                assert!(
                    killing.load(Ordering::Acquire),
                    "terminal #{n}: {e} before the kill"
                );
                return;
            }
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let rounds: usize = std::env::var("CBGATE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("CBGATE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let _seed = SeedOnPanic(seed);
    eprintln!("crash suite: seed {seed} (CBGATE_CRASH_SEED={seed} replays it), {rounds} rounds");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let endpoint = Endpoint::start(|n, _| {
        if n % 10 == 9 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    });
    let merchant = Merchant::start();
    let mut g = Gateway::configure(&config(&endpoint, &merchant), "", "");
    let ledger = Mutex::new(Ledger::default());
    // When each gateway was dead with all it sent recorded by the endpoint.
    let mut kills: Vec<Instant> = Vec::new();
    let kill = |g: &mut Gateway, kills: &mut Vec<Instant>| {
        g.kill();
        let quiet = Instant::now();
        while !endpoint_quiet(endpoint.addr.port()) {
            assert!(quiet.elapsed() < PATIENCE, "the endpoint never drained");
            std::thread::sleep(Duration::from_millis(5));
        }
        kills.push(Instant::now());
    };
    let mut startup_kills = 0;

    for round in 0..rounds {
        // One round in five also kills a start-up (recovery, or the first deliveries).
        if round > 0 && rng.u8(0..5) == 0 {
            g.launch();
            std::thread::sleep(Duration::from_millis(rng.u64(0..=300)));
            kill(&mut g, &mut kills);
            startup_kills += 1;
        }
        g.spawn();
        // The kill comes after a random number of 200s, plus a random few milliseconds.
        let after = rng.usize(0..=60);
        let jitter = Duration::from_millis(rng.u64(0..=25));
        let killing = AtomicBool::new(false);
        let from = ledger.lock().unwrap().acknowledged;
        let poster_seeds: Vec<u64> = (0..POSTERS).map(|_| rng.u64(..)).collect();
        std::thread::scope(|s| {
            let (addr, ledger, killing) = (g.addr, &ledger, &killing);
            for seed in poster_seeds {
                s.spawn(move || post_callbacks(addr, ledger, killing, seed));
            }
            s.spawn(move || post_terminal(addr, ledger, killing));
            let wait = Instant::now();
            while ledger.lock().unwrap().acknowledged - from < after {
                assert!(wait.elapsed() < PATIENCE, "round {round}: no progress");
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(jitter);
            killing.store(true, Ordering::Release);
            kill(&mut g, &mut kills);
        });
    }

    // The last start: everything sent is sent again, as the platform would until 200.
    g.spawn();
    let l = ledger.into_inner().unwrap();
    let mut conn = Conn::open(g.addr).unwrap();
    let mut lost = Vec::new();
    let mut accepted_twice = Vec::new();
    let mut acknowledged_before = 0;
    for (i, body) in l.bodies.iter().enumerate() {
        let before = l.answers[i];
        let (status, text) = conn.post("/callbacks", body).unwrap();
        assert_eq!(status, 200, "#{i}: {text}");
        let now_accepted = text == r#"{"status":"accepted"}"#;
        if before.accepted + before.duplicate > 0 {
            acknowledged_before += 1;
            // A 200 said it was stored: it must be found.
            if now_accepted {
                lost.push(i);
            }
        }
        if before.accepted + u32::from(now_accepted) > 1 {
            accepted_twice.push(i);
        }
        assert!(
            now_accepted || text == r#"{"status":"duplicate"}"#,
            "#{i}: {text}"
        );
    }
    assert!(lost.is_empty(), "acknowledged, then not found: {lost:?}");
    assert!(
        accepted_twice.is_empty(),
        "accepted twice: {accepted_twice:?}"
    );

    // The journal holds each callback exactly once.
    let mut stored: HashMap<u64, usize> = HashMap::new();
    for p in 0..PAYMENTS {
        let (status, text) = g.admin_get(&format!("/admin/payments/77/crash-{p}"));
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        for c in v["callbacks"].as_array().unwrap() {
            *stored
                .entry(c["body"]["operation"]["id"].as_u64().unwrap())
                .or_default() += 1;
        }
    }
    let want: HashSet<u64> = l.bodies.iter().map(|b| op_of(b)).collect();
    assert_eq!(stored.len(), want.len(), "events in the journal");
    assert!(
        stored.iter().all(|(op, n)| *n == 1 && want.contains(op)),
        "an event stored twice or never sent"
    );

    // Every stored event reaches the endpoint.
    let bodies: HashSet<&[u8]> = l.bodies.iter().map(Vec::as_slice).collect();
    assert!(
        endpoint.wait(PATIENCE, |reqs| {
            let got: HashSet<&[u8]> = reqs
                .iter()
                .filter(|r| r.ok())
                .map(|r| r.body.as_slice())
                .collect();
            bodies.is_subset(&got)
        }),
        "not every event was delivered\n{}",
        g.log()
    );
    g.wait_idle(PATIENCE);

    // A delivery repeats only across a kill: between any two 2xx answers for one event
    // the gateway that sent the first was killed.
    let delivered: Vec<Received> = endpoint
        .requests()
        .into_iter()
        .filter(Received::ok)
        .collect();
    let mut by_id: BTreeMap<&str, Vec<&Received>> = BTreeMap::new();
    let mut ids_of: HashMap<&[u8], HashSet<&str>> = HashMap::new();
    for r in &delivered {
        let id = r.headers["webhook-id"].as_str();
        by_id.entry(id).or_default().push(r);
        ids_of.entry(r.body.as_slice()).or_default().insert(id);
    }
    assert!(
        ids_of.values().all(|ids| ids.len() == 1),
        "one event, two ids"
    );
    let mut duplicates = 0;
    let mut twice = 0;
    let mut per_kill = vec![0usize; kills.len()];
    for (id, mut reqs) in by_id {
        reqs.sort_by_key(|r| r.at);
        for pair in reqs.windows(2) {
            let across = kills
                .iter()
                .position(|k| pair[0].at < *k && *k < pair[1].at);
            let Some(k) = across else {
                panic!("{id} delivered twice with no kill between");
            };
            per_kill[k] += 1;
        }
        duplicates += reqs.len() - 1;
        twice += usize::from(reqs.len() > 1);
    }
    let most = per_kill.iter().max().copied().unwrap_or(0);
    let cut: u32 = l.answers.iter().map(|a| a.cut).sum();
    let refused: u32 = l.answers.iter().map(|a| a.refused).sum();
    eprintln!(
        "crash suite: seed {seed}, {rounds} rounds, {} kills ({startup_kills} during start-up), \
         {} callbacks ({acknowledged_before} acknowledged before the last start, {} retries, \
         {cut} cut by a kill, {refused} refused 503), {} terminal requests ({} answered, {} \
         with code 0), events lost 0, {} deliveries of {} events, {duplicates} duplicates \
         delivered ({twice} events, each across a kill, at most {most} per kill), {:.0} s",
        kills.len(),
        l.bodies.len(),
        l.retries,
        l.terminal,
        l.terminal_answered,
        l.terminal_ok,
        delivered.len(),
        l.bodies.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(!g.log().contains("panicked"), "{}", g.log());
}
