//! Terminal requests through the real binary to a real merchant stub: each seed
//! request in each dialect, the gateway's own errors, malformed merchant answers,
//! the budget, and idempotent check_deposit.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Gateway, ReadWrite, TestTls, accept, signed_for, vectors};

const SECRET: &str = "terminal-secret";

/// A merchant backend: answers by `customer_id`, counts requests per body.
pub(crate) struct Merchant {
    pub addr: SocketAddr,
    seen: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
}

impl Merchant {
    pub fn start() -> Merchant {
        Self::start_tls(None)
    }

    /// As `start`, speaking https with `tls` when given.
    pub fn start_tls(tls: Option<Arc<rustls::ServerConfig>>) -> Merchant {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<HashMap<Vec<u8>, usize>>> = Arc::default();
        let ids = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, ids) = (s.clone(), ids.clone());
                let stream = accept(stream, tls.as_ref());
                std::thread::spawn(move || serve(stream, seen, ids));
            }
        });
        Merchant { addr, seen }
    }

    pub fn count(&self, body: &[u8]) -> usize {
        self.seen.lock().unwrap().get(body).copied().unwrap_or(0)
    }

    /// Every request the merchant read, by body.
    pub fn seen(&self) -> HashMap<Vec<u8>, usize> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    stream: Box<dyn ReadWrite + Send>,
    seen: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    ids: Arc<AtomicUsize>,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0;
        loop {
            line.clear();
            // A gateway killed mid-request (the crash suite) leaves a cut request.
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.trim_end().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        *seen.lock().unwrap().entry(body.clone()).or_default() += 1;
        let req: Value = serde_json::from_slice(&body).unwrap();
        let check_deposit = req["type"] == "check_deposit";
        let customer = req["customer_id"].as_str().unwrap_or("");
        if customer == "acct-drop" {
            // Read the request, then hang up without an answer.
            return;
        }
        let (status, answer) = match customer {
            "acct-missing" => (
                200,
                json!({"code": 404, "error_description": "Account does not exist"}).to_string(),
            ),
            "acct-missing-paydala" => (
                200,
                json!({"code": 404, "message": "Account does not exist"}).to_string(),
            ),
            "acct-error" => (
                200,
                json!({"code": 500, "error_description": "Something went wrong"}).to_string(),
            ),
            "acct-broken" => (200, "<html>oops</html>".to_string()),
            "acct-nocurrency" | "acct-nopayment" => (200, json!({"code": 0}).to_string()),
            "acct-badcode" => (200, json!({"code": 7}).to_string()),
            // Issue 16: arrays that a derived serde struct reads by position.
            "acct-array404" => (200, r#"[404, null, null, "x", null]"#.to_string()),
            "acct-array0" if check_deposit => (200, r#"[0, null, "p1", null, null]"#.to_string()),
            "acct-array0" => (200, r#"[0, "KZT", null, null, null]"#.to_string()),
            "acct-http500" => (500, json!({"code": 0, "currency": "KZT"}).to_string()),
            other => {
                if other == "acct-slow" {
                    std::thread::sleep(Duration::from_secs(3));
                }
                if check_deposit {
                    let id = ids.fetch_add(1, Ordering::SeqCst);
                    (200, json!({"code": 0, "payment_id": format!("merchant-pay-{id}"), "description": "ok"}).to_string())
                } else {
                    (200, json!({"code": 0, "currency": "KZT", "additional_customer_id": "HFVDW42345"}).to_string())
                }
            }
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if reader.get_mut().write_all(reply.as_bytes()).is_err() || customer == "acct-close" {
            // acct-close: a merchant that closes each connection after its answer.
            return;
        }
    }
}

/// Projects by dialect: 1234 Kassa24 (Monetix), 111 Kassa24 BVU, 2222 PayDala.
fn gateway(merchant: &Merchant, budget: &str) -> Gateway {
    gateway_at(&format!("http://{}/terminal", merchant.addr), budget, "")
}

/// As `gateway`, with the merchant at `url` and `extra` tables before the projects.
fn gateway_at(url: &str, budget: &str, extra: &str) -> Gateway {
    let projects = [(1234, "kassa24"), (111, "kassa24_bvu"), (2222, "terminal/paydala")]
        .iter()
        .map(|(id, method)| {
            format!(
                "[[projects]]\nid = {id}\nsecrets = [\"{SECRET}\"]\nmethod = \"{method}\"\nterminal_url = \"{url}\"\nterminal_budget = \"{budget}\"\n"
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Gateway::start(&format!("{extra}\n{projects}"))
}

fn ask(g: &Gateway, project: u64, request: &Value) -> Value {
    let body = signed_for(project, &request.to_string(), SECRET);
    let (status, answer) = g.post("/terminal", &body);
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap()
}

/// The seed request examples of the three terminal methods, with their project.
fn seed_requests() -> Vec<(u64, Value)> {
    let out: Vec<(u64, Value)> = vectors()
        .into_iter()
        .filter(|v| v.name.contains("request") && !v.name.starts_with("seed:mobile"))
        .map(|v| {
            let project = if v.name.starts_with("seed:kassa24_bvu") {
                111
            } else if v.name.starts_with("seed:paydala") {
                2222
            } else {
                1234
            };
            (project, serde_json::from_str(&v.payload_json).unwrap())
        })
        .collect();
    assert_eq!(out.len(), 6, "two requests per terminal seed");
    out
}

/// A Kassa24 verify (project 1234) and a PayDala check_deposit (2222) for `customer`.
fn verify_and_deposit(customer: &str) -> [(u64, Value); 2] {
    [
        (1234, json!({"type": "verify", "customer_id": customer})),
        (
            2222,
            json!({"type": "check_deposit", "customer_id": customer, "amount": 1000,
                   "currency": "KZT", "payment_method": "terminal/paydala"}),
        ),
    ]
}

fn reason_field(project: u64) -> &'static str {
    if project == 2222 {
        "message"
    } else {
        "error_description"
    }
}

#[test]
fn every_seed_request_in_each_dialect() {
    let merchant = Merchant::start();
    let g = gateway(&merchant, "2s");
    for (project, request) in seed_requests() {
        let answer = ask(&g, project, &request);
        assert_eq!(answer["code"], 0, "{request} -> {answer}");
        if request["type"] == "verify" {
            assert_eq!(answer["currency"], "KZT");
        } else {
            assert!(
                answer["payment_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("merchant-pay-")
            );
        }
        // The merchant's 404 reaches the platform in the method's own field, whatever
        // field the merchant used.
        for customer in ["acct-missing", "acct-missing-paydala"] {
            let mut r = request.clone();
            r["customer_id"] = customer.into();
            let answer = ask(&g, project, &r);
            assert_eq!(answer["code"], 404, "{answer}");
            assert_eq!(
                answer[reason_field(project)],
                "Account does not exist",
                "{project}: {answer}"
            );
            assert_eq!(answer.as_object().unwrap().len(), 2, "{answer}");
        }
    }
}

#[test]
fn the_gateway_answers_its_own_errors_in_the_methods_dialect() {
    let merchant = Merchant::start();
    let g = gateway(&merchant, "2s");
    let deposit = |project: u64, method: &str, amount: i64, currency: &str| {
        json!({"type": "check_deposit", "project_id": project, "customer_id": "c1",
               "amount": amount, "currency": currency, "payment_method": method})
    };
    for (project, method) in [(1234, "kassa24"), (2222, "terminal/paydala")] {
        let field = reason_field(project);
        // Wrong key: code 400.
        let body = signed_for(
            project,
            &deposit(project, method, 10000, "KZT").to_string(),
            "wrong-secret",
        );
        let answer: Value = serde_json::from_str(&g.post("/terminal", &body).1).unwrap();
        assert_eq!(
            (answer["code"].as_u64(), answer[field].as_str()),
            (Some(400), Some("Signature is invalid"))
        );
        let answer = ask(&g, project, &deposit(project, method, 10000, "USD"));
        assert_eq!(answer["code"], 500);
        assert!(answer[field].as_str().unwrap().contains("KZT"), "{answer}");
        let mut missing = deposit(project, method, 10000, "KZT");
        missing.as_object_mut().unwrap().remove("customer_id");
        let answer = ask(&g, project, &missing);
        assert_eq!(answer[field], "missing field customer_id");
    }
    // Kassa24 Terminal limits: 1.00–500,000.00 KZT.
    for (amount, ok) in [
        (99, false),
        (100, true),
        (50_000_000, true),
        (50_000_001, false),
    ] {
        let answer = ask(&g, 1234, &deposit(1234, "kassa24", amount, "KZT"));
        assert_eq!(answer["code"] == 0, ok, "{amount}: {answer}");
        if !ok {
            assert!(
                answer["error_description"]
                    .as_str()
                    .unwrap()
                    .contains("outside the limits")
            );
        }
    }
    let (status, answer) = g.post("/terminal", b"{\"type\":");
    assert_eq!(status, 200);
    assert!(
        answer.contains("\"code\":500") && answer.contains("not valid JSON"),
        "{answer}"
    );
    let unknown = ask(&g, 999, &json!({"type": "verify", "customer_id": "c"}));
    assert_eq!(unknown["error_description"], "unknown project 999");
    // Every answer is counted and timed under its project, type and code.
    let asked = g.metric("cbgate_requests_total", &[("route", "terminal")]);
    assert!(asked >= 10.0, "{asked}");
    assert_eq!(g.metric("cbgate_terminal_answers_total", &[]), asked);
    assert_eq!(
        g.metric("cbgate_terminal_duration_seconds_count", &[]),
        asked
    );
    assert!(
        g.metric(
            "cbgate_terminal_answers_total",
            &[
                ("project", "1234"),
                ("type", "check_deposit"),
                ("code", "500")
            ]
        ) >= 1.0
    );
}

#[test]
fn malformed_merchant_answers_become_code_500() {
    let merchant = Merchant::start();
    let g = gateway(&merchant, "2s");
    for (customer, kind) in [
        ("acct-broken", "verify"),
        ("acct-nocurrency", "verify"),
        ("acct-nopayment", "check_deposit"),
        ("acct-badcode", "verify"),
        ("acct-http500", "verify"),
    ] {
        let request = json!({"type": kind, "project_id": 2222, "customer_id": customer,
                             "amount": 1000, "currency": "KZT", "payment_method": "terminal/paydala"});
        let answer = ask(&g, 2222, &request);
        assert_eq!(answer["code"], 500, "{customer}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().starts_with("m"),
            "{customer}: {answer}"
        );
    }
    // The merchant's own code 500 is relayed, translated.
    let answer = ask(
        &g,
        2222,
        &json!({"type": "verify", "customer_id": "acct-error"}),
    );
    assert_eq!(
        answer,
        json!({"code": 500, "message": "Something went wrong"})
    );
    assert_eq!(
        g.metric(
            "cbgate_terminal_merchant_errors_total",
            &[("error", "malformed")]
        ),
        4.0
    );
    assert_eq!(
        g.metric(
            "cbgate_terminal_merchant_errors_total",
            &[("error", "http_status")]
        ),
        1.0
    );
}

#[test]
fn a_slow_merchant_gets_code_500_before_the_budget() {
    let merchant = Merchant::start();
    let budget = Duration::from_millis(500);
    let g = gateway(&merchant, "500ms");
    for (project, request) in verify_and_deposit("acct-slow") {
        let body = signed_for(project, &request.to_string(), SECRET);
        let mut conn = crate::support::Conn::open(g.addr).unwrap();
        let started = Instant::now();
        let (status, answer) = conn.post("/terminal", &body).unwrap();
        let took = started.elapsed();
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert!(took < budget, "answered after {took:?}");
        assert!(took > budget / 2, "gave up too early: {took:?}");
        assert_eq!(answer["code"], 500);
        assert_eq!(answer[reason_field(project)], "merchant timeout");
    }
    assert_eq!(g.metric("cbgate_terminal_budget_misses_total", &[]), 2.0);
}

#[test]
fn a_lost_connection_retries_a_verify_once_and_never_a_check_deposit_that_left() {
    let merchant = Merchant::start();
    let g = gateway(&merchant, "2s");
    for ((project, request), tries) in verify_and_deposit("acct-drop").into_iter().zip([2, 1]) {
        let body = signed_for(project, &request.to_string(), SECRET);
        let (status, answer) = g.post("/terminal", &body);
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["code"], 500, "{answer}");
        let reason = answer[reason_field(project)].as_str().unwrap();
        assert!(reason.starts_with("merchant unreachable"), "{answer}");
        assert_eq!(merchant.count(&body), tries, "{request}");
    }
    assert_eq!(
        g.metric(
            "cbgate_terminal_merchant_errors_total",
            &[("error", "transport")]
        ),
        2.0
    );
}

#[test]
fn a_merchant_closing_its_connections_after_each_answer_loses_no_deposit() {
    let merchant = Merchant::start();
    let g = gateway(&merchant, "2s");
    let mut ids = Vec::new();
    for amount in [1000, 2000, 3000] {
        let request = json!({"type": "check_deposit", "customer_id": "acct-close", "amount": amount,
                             "currency": "KZT", "payment_method": "terminal/paydala"});
        let body = signed_for(2222, &request.to_string(), SECRET);
        let answer: Value = serde_json::from_str(&g.post("/terminal", &body).1).unwrap();
        assert_eq!(answer["code"], 0, "{answer}\n{}", g.log());
        assert_eq!(merchant.count(&body), 1);
        ids.push(answer["payment_id"].clone());
        // The gateway has seen the merchant's hang-up once its end of the connection
        // is closed too (no socket to the merchant left half-closed).
        let started = Instant::now();
        while half_closed_to(merchant.addr.port()) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the gateway never closed its end"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
}

/// Whether a local socket to `port` is in CLOSE_WAIT: its peer closed and it has not.
fn half_closed_to(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[2].ends_with(&remote) && fields[3] == "08"
    })
}

#[test]
fn a_repeated_check_deposit_gets_the_same_payment_id_and_reaches_the_merchant_once() {
    let merchant = Merchant::start();
    let g = Arc::new(gateway(&merchant, "2s"));
    let request = json!({"type": "check_deposit", "customer_id": "7123456789", "amount": 100000,
                         "currency": "KZT", "payment_method": "terminal/paydala"});
    let body = signed_for(2222, &request.to_string(), SECRET);
    // Eight identical requests at once, then two more later.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (g, body) = (g.clone(), body.clone());
            std::thread::spawn(move || g.post("/terminal", &body).1)
        })
        .collect();
    let mut answers: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    answers.push(g.post("/terminal", &body).1);
    answers.push(g.post("/terminal", &body).1);
    let first: Value = serde_json::from_str(&answers[0]).unwrap();
    assert_eq!(first["code"], 0);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    assert_eq!(merchant.count(&body), 1);
    // Another deposit is another payment.
    let mut other = request.clone();
    other["amount"] = 200000.into();
    let second = ask(&g, 2222, &other);
    assert_ne!(second["payment_id"], first["payment_id"]);
}

#[test]
fn an_https_merchant_is_reached_through_the_configured_ca_and_never_without_it() {
    let tls = TestTls::new();
    let merchant = Merchant::start_tls(Some(tls.server.clone()));
    let url = format!("https://{}/terminal", merchant.addr);
    let verify = json!({"type": "verify", "project_id": 1234, "customer_id": "acct-tls"});
    let trusted = gateway_at(
        &url,
        "2s",
        &format!("[terminal]\nca_file = \"{}\"\n", tls.ca_file().display()),
    );
    let answer = ask(&trusted, 1234, &verify);
    assert_eq!(answer["code"], 0, "{answer}\n{}", trusted.log());
    assert_eq!(answer["currency"], "KZT");
    // The web's public roots do not vouch for a private CA: the handshake fails, the
    // kiosk gets code 500 in time and the merchant never sees the request.
    let untrusted = gateway_at(&url, "2s", "");
    let answer = ask(&untrusted, 1234, &verify);
    assert_eq!(answer["code"], 500, "{answer}");
    // The reason names the cause, not only hyper's "client error (Connect)".
    assert!(
        answer["error_description"]
            .as_str()
            .is_some_and(|r| r.contains("certificate")),
        "{answer}"
    );
    assert_eq!(merchant.seen.lock().unwrap().values().sum::<usize>(), 1);
    assert_eq!(
        untrusted.metric(
            "cbgate_terminal_merchant_errors_total",
            &[("error", "transport")]
        ),
        1.0,
        "{}",
        untrusted.log()
    );
}

/// Issue 16: a merchant answering a JSON array made the request panic (code 404 by
/// position) or reached the kiosk as an array with HTTP 200 (code 0 by position).
#[test]
fn a_merchant_answer_that_is_a_json_array_is_code_500_in_the_methods_dialect() {
    let merchant = Merchant::start();
    let g = gateway(&merchant, "2s");
    let mut asked = 0;
    for customer in ["acct-array404", "acct-array0"] {
        for (project, request) in verify_and_deposit(customer) {
            // On one kept-alive connection: a panic in the handler would cut it.
            let body = signed_for(project, &request.to_string(), SECRET);
            let (status, answer) = g.post("/terminal", &body);
            asked += 1;
            assert_eq!(status, 200, "{customer}: {answer}");
            let answer: Value = serde_json::from_str(&answer).unwrap();
            assert!(answer.is_object(), "{customer}: {answer}");
            assert_eq!(answer["code"], 500, "{customer}: {answer}");
            assert_eq!(
                answer[reason_field(project)],
                "malformed merchant answer: not a JSON object",
                "{customer}: {answer}"
            );
            assert_eq!(answer.as_object().unwrap().len(), 2, "{answer}");
        }
    }
    assert_eq!(
        g.metric(
            "cbgate_terminal_merchant_errors_total",
            &[("error", "malformed")]
        ),
        asked as f64
    );
    // The gateway still answers, and its log shows no panic.
    let answer = ask(
        &g,
        1234,
        &json!({"type": "verify", "customer_id": "acct-ok"}),
    );
    assert_eq!(answer["code"], 0);
    assert!(!g.log().contains("panicked"), "{}", g.log());
}
