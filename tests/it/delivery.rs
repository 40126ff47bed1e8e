//! Fan-out delivery through the real binary to real endpoints on 127.0.0.1: filters,
//! flaky and dead endpoints, dead letters and replay, order per payment, SIGKILL,
//! and the public Standard Webhooks library verifying what cbgate sends (issue 4).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::endpoint::{Endpoint, Gate, Reply};
use crate::support::{Gateway, TestTls, free_addr, signed_for};

const SECRET: &str = "test-secret";
const PROJECT: u64 = 77;
/// The Standard Webhooks specification's example secret.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LONG: Duration = Duration::from_secs(30);

/// Short timers so retries happen within a test.
const FAST: &str = r#"schedule = ["0s", "100ms", "200ms"]
repeat_every = "200ms"
timeout = "300ms"
connect_timeout = "300ms"
breaker_cooldown = "100ms""#;

/// A config with `[delivery]` = `delivery` and project 77 with `endpoints`, each
/// `(name, url, extra TOML lines)`.
fn config(delivery: &str, endpoints: &[(&str, &str, &str)]) -> String {
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
fn callback(payment: &str, op: u64, method: &str, status: &str) -> Vec<u8> {
    let json = format!(
        r#"{{"project_id":{PROJECT},"payment":{{"id":"{payment}","type":"purchase","status":"{status}","method":"{method}","sum":{{"amount":1000,"currency":"KZT"}}}},"operation":{{"id":{op},"type":"sale","status":"{status}","code":"0","message":"ok"}}}}"#
    );
    signed_for(PROJECT, &json, SECRET)
}

fn accept(g: &Gateway, body: &[u8]) {
    assert_eq!(
        g.post("/callbacks", body),
        (200, r#"{"status":"accepted"}"#.into())
    );
}

fn op_of(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["operation"]["id"].as_u64().unwrap()
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

#[test]
fn fan_out_gives_each_endpoint_exactly_what_its_filters_match() {
    let (all, mobile, success) = (Endpoint::ok(), Endpoint::ok(), Endpoint::ok());
    let g = Gateway::start(&config(
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
        accept(&g, b);
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
    assert_eq!((want_mobile.len(), want_success.len()), (3, 3));
    assert!(all.wait_delivered(6, LONG), "{}", g.log());
    assert!(mobile.wait_delivered(3, LONG));
    assert!(success.wait_delivered(3, LONG));
    // Nothing more arrives (nothing is pending anywhere): each got exactly its own,
    // bytes unchanged.
    g.wait_idle(LONG);
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
    let ok = |ep: &str| {
        g.metric(
            "cbgate_delivery_attempts_total",
            &[("endpoint", ep), ("result", "success")],
        )
    };
    assert_eq!(
        (ok("77/all"), ok("77/mobile"), ok("77/success")),
        (6.0, 3.0, 3.0)
    );
}

#[test]
fn a_flaky_endpoint_gets_everything_in_the_end() {
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
    let g = Gateway::start(&config(
        &format!("{FAST}\nmax_in_flight = 4"),
        &[("flaky", &flaky.url(), "")],
    ));
    let bodies: Vec<_> = (0..15)
        .map(|i| callback(&format!("pay-{i}"), 200 + i, "kassa24", "success"))
        .collect();
    for b in &bodies {
        accept(&g, b);
    }
    assert!(flaky.wait_delivered(15, LONG), "{}", g.log());
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
    assert!(
        g.metric(
            "cbgate_delivery_duration_seconds_count",
            &[("endpoint", "77/flaky")]
        ) >= 15.0
    );
}

#[test]
fn an_https_endpoint_with_a_private_ca_is_delivered_to_once_the_ca_is_configured() {
    let tls = TestTls::new();
    let endpoint = Endpoint::ok_tls(tls.server.clone());
    assert!(endpoint.url().starts_with("https://"));
    let body = callback("pay-tls", 90, "kassa24", "success");
    // Without the CA the handshake fails: the event waits, counted as a connect failure.
    let untrusted = Gateway::start(&config(FAST, &[("tls", &endpoint.url(), "")]));
    accept(&untrusted, &body);
    let failed = || {
        untrusted.metric(
            "cbgate_delivery_failures_total",
            &[("endpoint", "77/tls"), ("class", "connect")],
        )
    };
    let started = std::time::Instant::now();
    while failed() == 0.0 && started.elapsed() < LONG {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(failed() > 0.0, "{}", untrusted.log());
    assert!(endpoint.requests().is_empty());
    drop(untrusted);
    let trusted = Gateway::start(&config(
        &format!("{FAST}\nca_file = \"{}\"", tls.ca_file().display()),
        &[("tls", &endpoint.url(), "")],
    ));
    accept(&trusted, &body);
    assert!(endpoint.wait_delivered(1, LONG), "{}", trusted.log());
    assert_eq!(endpoint.delivered(), [body]);
}

#[test]
fn a_dead_endpoint_fills_the_dead_letters_and_replay_delivers_them() {
    // Nothing listens there yet. A queue of 3 makes the worker read its backlog
    // back from the journal.
    let addr = free_addr();
    let url = format!("http://{addr}/hooks");
    let g = Gateway::start(&config(
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
        accept(&g, b);
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
    let started = std::time::Instant::now();
    while list(&g).len() < 10 {
        assert!(
            started.elapsed() < LONG,
            "dead letters: {:?}\n{}",
            list(&g),
            g.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dead = list(&g);
    let seqs: Vec<u64> = dead.iter().map(|(s, _)| *s).collect();
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
    let (status, text) = g.admin_get(&format!("/admin/events/{}", seqs[0]));
    assert_eq!(status, 200, "{text}");
    let event: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(event["deliveries"][0]["status"], "dead", "{event}");
    assert!(event["webhook_id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(event["body"]["operation"]["id"], 300);

    // The endpoint comes back. Replay one: exactly that one arrives.
    let back = Endpoint::start_on(addr, |_, _| Reply::Status(200));
    let (status, text) = g.admin_post(&format!("/admin/endpoints/77/gone/replay/{}", seqs[0]));
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"endpoint":"77/gone","replayed":1}"#)
    );
    assert!(back.wait_delivered(1, LONG), "{}", g.log());
    g.wait_idle(LONG);
    assert_eq!(back.delivered(), vec![bodies[0].clone()]);
    assert_eq!(list(&g).len(), 9);
    // Delivered everywhere: the event is gone from the journal.
    assert_eq!(g.admin_get(&format!("/admin/events/{}", seqs[0])).0, 404);

    // Paused, a replay waits; resumed, all the rest arrive.
    assert_eq!(g.admin_post("/admin/endpoints/77/gone/pause").0, 200);
    let (status, text) = g.admin_post("/admin/endpoints/77/gone/replay");
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"endpoint":"77/gone","replayed":9}"#)
    );
    // The worker has read the replayed letters back from the store (as many as its
    // queue holds) and starts none of them.
    let started = std::time::Instant::now();
    loop {
        let (_, text) = g.admin_get("/admin/endpoints");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let gone = v
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint"] == "77/gone")
            .cloned()
            .unwrap();
        assert_eq!(gone["paused"], true, "{gone}");
        assert_eq!(gone["in_flight"], 0, "a paused endpoint sent: {gone}");
        // The queue holds max_queued (3): the rest wait in the store.
        if gone["in_memory"] == 3 {
            break;
        }
        assert!(
            started.elapsed() < LONG,
            "replayed letters not read back: {gone}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(back.delivered().len(), 1, "a paused endpoint got requests");
    assert_eq!(g.admin_post("/admin/endpoints/77/gone/resume").0, 200);
    assert!(back.wait_delivered(10, LONG), "{}", g.log());
    assert_eq!(sorted(back.delivered()), sorted(bodies));
    assert!(list(&g).is_empty());
    assert_eq!(g.admin_post("/admin/endpoints/77/nope/pause").0, 404);
    assert_eq!(g.admin_post("/admin/endpoints/77/gone/replay/99999").0, 404);
    let (status, text) = g.admin_get("/admin/endpoints");
    assert_eq!(status, 200);
    assert!(text.contains(r#""endpoint":"77/gone""#), "{text}");
}

#[test]
fn order_per_payment_holds_while_another_payments_event_retries() {
    // Payment A's first event fails until released; B, C and D fail the first try
    // of every third event. Four posters run at once, one per payment.
    let release = Arc::new(AtomicBool::new(false));
    let tried: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let ep = {
        let (release, tried) = (release.clone(), tried.clone());
        Endpoint::start(move |_, body| {
            let op = op_of(body);
            if op / 100 == 1 && !release.load(Ordering::Acquire) {
                return Reply::Status(503);
            }
            if op % 3 == 0 && tried.lock().unwrap().insert(op) {
                return Reply::Status(500);
            }
            Reply::Status(200)
        })
    };
    let g = Gateway::start(&config(
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
                    accept(
                        g,
                        &callback(&format!("pay-{name}"), op, "kassa24", "success"),
                    );
                }
            });
        }
    });
    // B, C and D all get through while A's head keeps failing.
    assert!(ep.wait_delivered(15, LONG), "{}", g.log());
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
    assert!(ep.wait_delivered(20, LONG), "{}", g.log());

    // Per payment: answered 2xx in acceptance order, and no attempt of an event
    // before the previous one's 2xx.
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

#[test]
fn sigkill_during_delivery_delivers_every_event_after_restart() {
    // Each endpoint answers its first requests, then holds the rest until the test
    // opens the gate after the kill: the kill always lands mid-delivery, however fast
    // or slow the machine (it used to race a 5 ms answer against the posting loop).
    let gate = Gate::default();
    let held = |after: usize| {
        let gate = gate.clone();
        move |n: usize, _: &[u8]| {
            if n < after {
                Reply::Status(200)
            } else {
                Reply::Block(gate.clone(), 200)
            }
        }
    };
    let (a, b) = (Endpoint::start(held(30)), Endpoint::start(held(15)));
    let mut g = Gateway::start(&config(
        &format!("{FAST}\nmax_in_flight = 4"),
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
        accept(&g, body);
    }
    // Both endpoints have answered their first requests and hold one more each.
    assert!(
        a.wait_arrived(31, LONG) && b.wait_arrived(16, LONG),
        "{}",
        g.log()
    );
    g.kill();
    let before = (a.delivered().len(), b.delivered().len());
    assert_eq!(before, (30, 15), "answers after the gate closed");
    // The held requests see their peer gone: recorded as not answered.
    gate.open();
    g.spawn();
    assert!(a.wait_delivered(total as usize, LONG), "{}", g.log());
    assert!(b.wait_delivered(total as usize / 2, LONG), "{}", g.log());
    g.wait_idle(LONG);

    for (name, ep, want) in [("a", &a, total as usize), ("b", &b, total as usize / 2)] {
        let got = ep.delivered();
        let unique: HashSet<_> = got.iter().cloned().collect();
        assert_eq!(unique.len(), want, "{name}");
        let duplicates = got.len() - unique.len();
        eprintln!(
            "endpoint {name}: {} deliveries, {duplicates} duplicates",
            got.len()
        );
        // Only what was in flight or awaiting its commit at the kill comes again.
        assert!(duplicates <= 12, "{name}: {duplicates} duplicates");
        // First deliveries keep acceptance order per payment.
        let mut last: HashMap<u64, u64> = HashMap::new();
        let mut seen = HashSet::new();
        for body in got {
            let op = op_of(&body);
            if seen.insert(op) {
                let payment = (op - 1000) % 10;
                if let Some(prev) = last.insert(payment, op) {
                    assert!(prev < op, "{name}: payment {payment}: {op} after {prev}");
                }
            }
        }
    }
}

const PY_RECEIVER: &str = r#"
import http.server, sys
import standardwebhooks
hook = standardwebhooks.Webhook(sys.argv[1])
log = open(sys.argv[2], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            hook.verify(body, dict(self.headers.items()))
            code = 204
            log.write("ok %s\n" % self.headers["webhook-id"])
        except Exception as e:
            code = 400
            log.write("bad %s\n" % e)
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

#[test]
fn the_standard_webhooks_library_verifies_what_cbgate_sends() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: python3 is missing; the Standard Webhooks check did not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("receiver.py");
    let log = dir.path().join("verified.log");
    std::fs::write(&script, PY_RECEIVER).unwrap();
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .arg(WHSEC)
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _child = Kill(child);
    let port: u16 = line.trim().parse().unwrap_or_else(|_| {
        panic!("the Python receiver did not start (pip install standardwebhooks): {line:?}")
    });
    let url = format!("http://127.0.0.1:{port}/hooks");
    // A second endpoint signs with another secret: the library must refuse it.
    let other = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=";
    let mut cfg = config(
        &format!("{FAST}\ngive_up_after = \"2s\""),
        &[("merchant", &url, "")],
    );
    cfg.push_str(&format!(
        "\n[[projects.endpoints]]\nname = \"impostor\"\nurl = \"{url}\"\nsecret = \"{other}\"\n"
    ));
    let g = Gateway::start(&cfg);
    for i in 0..3 {
        accept(
            &g,
            &callback(&format!("pay-{i}"), 400 + i, "mobile", "success"),
        );
    }
    let started = std::time::Instant::now();
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let ok = |ep: &str| {
        g.metric(
            "cbgate_delivery_attempts_total",
            &[("endpoint", ep), ("result", "success")],
        )
    };
    // The receiver logs before it answers, and cbgate counts once it has the answer.
    while !(lines().matches("ok ").count() >= 3
        && lines().contains("bad ")
        && ok("77/merchant") >= 3.0)
    {
        assert!(started.elapsed() < LONG, "{}\n{}", lines(), g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ok("77/merchant"), 3.0, "{}", lines());
    assert_eq!(ok("77/impostor"), 0.0);
    assert!(
        lines().contains("No matching signature found"),
        "{}",
        lines()
    );
}
