//! The merchant listener through the real binary (issue 17): Payment Page URLs beside
//! the ones the platform's Python SDK builds, Gate API requests checked by that SDK's
//! verifier on a platform stub, tokens, a platform that hangs or resets, masking in
//! the log line, and the payment timeline.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::endpoint::{Endpoint, Gate as Latch, Reply};
use crate::support::{Gateway, free_addr, signed_for};

/// Project 1234's secret; the platform stub checks signatures with it.
pub const SECRET: &str = "gate-secret";
pub const TOKEN: &str = "merchant-token-1234-0123456789";
/// Project 5678's token (its secret is not the stub's).
const OTHER_TOKEN: &str = "merchant-token-5678-0123456789";
const PAGE: &str = "https://paymentpage.platform.test/payment";
const LONG: Duration = Duration::from_secs(30);

/// A Python helper from `tests/py`, killed when dropped.
pub struct Python {
    child: Child,
    /// What it printed first (a port, for the servers).
    pub first_line: String,
}

impl Python {
    pub fn start(script: &str, args: &[&str]) -> Python {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/py")
            .join(script);
        let mut child = Command::new("python3")
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (pip install -r tests/requirements.txt)");
        let mut first_line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first_line)
            .unwrap();
        Python { child, first_line }
    }

    pub fn port(&self) -> u16 {
        self.first_line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "the Python server did not start (pip install -r tests/requirements.txt): {:?}",
                self.first_line
            )
        })
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The platform's Gate API with the Python SDK's verifier, and what it read.
pub struct GateStub {
    _python: Python,
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GateStub {
    pub fn start(secret: &str) -> GateStub {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("gate.log");
        std::fs::write(&log, "").unwrap();
        let python = Python::start("gate_stub.py", &[secret, log.to_str().unwrap()]);
        let url = format!("http://127.0.0.1:{}", python.port());
        GateStub {
            _python: python,
            url,
            log,
            _dir: dir,
        }
    }

    /// Every request it read, oldest first: `{"path", "verdict", "body"}`.
    pub fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Posts `body` straight to the stub, as a merchant holding the secret would.
    fn post_direct(&self, path: &str, body: &[u8]) -> Answer {
        let addr: SocketAddr = self.url.trim_start_matches("http://").parse().unwrap();
        post(addr, path, None, body)
    }
}

/// One HTTP answer: status, headers (names lower-cased), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// POSTs `body` to `addr` on a new connection, with `token` as the bearer token.
pub fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &[u8]) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(addr, "POST", path, &headers, body)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: cbgate\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut out = vec![0; len];
    reader.read_exact(&mut out).unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(out).unwrap(),
    }
}

/// `[merchant]` on a free port with `gate_url` and `extra` keys, and three projects:
/// 1234 (token, the stub's secret), 5678 (token, another secret), 4321 (no token).
pub fn config(merchant: SocketAddr, gate_url: &str, extra: &str) -> String {
    format!(
        "[merchant]\nlisten = \"{merchant}\"\ngate_url = \"{gate_url}\"\npayment_page_url = \"{PAGE}\"\n\
         gate_paths = [\"/v2/payment/mobile/status\"]\n{extra}\n\n\
         [[projects]]\nid = 1234\nsecrets = [\"{SECRET}\"]\nmerchant_token = \"{TOKEN}\"\n\n\
         [[projects]]\nid = 5678\nsecrets = [\"another-secret\"]\nmerchant_token = \"{OTHER_TOKEN}\"\n\n\
         [[projects]]\nid = 4321\nsecrets = [\"{SECRET}\"]\n"
    )
}

fn start(gate_url: &str, extra: &str) -> (Gateway, SocketAddr) {
    let merchant = free_addr();
    (Gateway::start(&config(merchant, gate_url, extra)), merchant)
}

/// The seeds' Gate API requests of the Mobile Commerce flow, unsigned, for `payment`.
pub fn seed_requests(project: u64, payment: &str) -> Vec<(&'static str, String)> {
    let general = format!(r#""general": {{"project_id": {project}, "payment_id": "{payment}"}}"#);
    vec![
        (
            "/v2/payment/mobile/sale",
            format!(
                r#"{{{general}, "customer": {{"id": "customer_123", "ip_address": "198.51.100.47", "first_name": "John", "last_name": "Doe", "email": "johndoe@example.com"}}, "account": {{"number": "71234567890"}}, "payment": {{"currency": "KZT", "amount": 100000}}}}"#
            ),
        ),
        (
            "/v2/payment/clarification",
            format!(
                r#"{{{general}, "additional_data": {{"additional_data": {{"approval_code": "123456"}}}}}}"#
            ),
        ),
        (
            "/v2/customer/action/resend",
            format!(r#"{{{general}, "customer": {{"ip_address": "198.51.100.47"}}}}"#),
        ),
        (
            "/v2/payment/mobile/refund",
            format!(
                r#"{{{general}, "payment": {{"currency": "KZT", "amount": 100000, "description": "Возврат."}}}}"#
            ),
        ),
        (
            "/v2/info/mobile/sale/list",
            format!(r#"{{"general": {{"project_id": {project}}}}}"#),
        ),
    ]
}

#[test]
fn payment_page_urls_match_the_python_sdk() {
    let (g, merchant) = start("http://127.0.0.1:9", "");
    let out = Command::new("python3")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/payment_page_urls.py"))
        .args([&format!("http://{merchant}"), TOKEN, SECRET, PAGE, "1234"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
    let cases: HashMap<String, Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["name"].as_str().unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(cases.len(), 12, "{cases:?}");
    for (name, case) in &cases {
        assert_eq!(case["status"], 200, "{name}");
        // The platform reads cbgate's URL and its signature holds, in the spec's order.
        assert_eq!(case["cbgate_url_verifies"]["php"], true, "{name}: {case}");
        assert_eq!(
            case["cbgate_parameters_signature"], case["cbgate_signature"],
            "{name}"
        );
        assert!(
            case["cbgate_url"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{PAGE}?project_id=1234&interface_type=")),
            "{name}: {case}"
        );
    }
    let same = [
        "seed_kassa24",
        "cyrillic",
        "cyrillic_escaped",
        "nested_options_object",
        "nested_options_text",
        "empty_values",
        "special_characters",
        "frame_mode_unsigned",
        "numbers",
        "null_left_out",
    ];
    for name in same {
        let case = &cases[name];
        assert_eq!(case["cbgate_url"], case["sdk_url"], "{name}");
        assert_eq!(case["cbgate_signature"], case["sdk_signature"], "{name}");
        assert_eq!(case["sdk_url_verifies"]["python"], true, "{name}");
    }
    // Booleans: both sign 1/0; the SDK writes True/False into its URL, which then no
    // longer verifies; cbgate writes what it signed.
    let b = &cases["booleans"];
    assert_eq!(b["cbgate_signature"], b["sdk_signature"]);
    let sdk = b["sdk_url"].as_str().unwrap();
    assert!(
        sdk.contains("redirect=True&close_on_missclick=False"),
        "{sdk}"
    );
    assert_eq!(
        b["cbgate_url"].as_str().unwrap(),
        sdk.replace("=True", "=1").replace("=False", "=0")
    );
    assert_eq!(b["sdk_url_verifies"]["python"], false);
    assert_eq!(b["cbgate_url_verifies"]["python"], true);
    // merchant_data_2 and merchant_data_10: Python sorts 10 first, PHP (the spec) 2.
    // The URLs differ in the signature alone.
    let n = &cases["natural_order"];
    assert_ne!(n["cbgate_signature"], n["sdk_signature"]);
    let strip = |url: &Value| {
        url.as_str()
            .unwrap()
            .split("&signature=")
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(strip(&n["cbgate_url"]), strip(&n["sdk_url"]));
    assert_eq!(n["cbgate_url_verifies"]["python"], false);
    assert_eq!(n["sdk_url_verifies"]["php"], false);
}

#[test]
fn payment_page_refusals_name_the_parameter() {
    let (g, merchant) = start("http://127.0.0.1:9", "");
    let full = json!({"project_id": 1234, "payment_id": "p1", "customer_id": "c1",
        "customer_email": "a@b.kz", "customer_first_name": "A", "customer_last_name": "B",
        "payment_currency": "KZT", "payment_amount": 1000});
    let sign = |body: &Value| {
        post(
            merchant,
            "/payment-page/sign",
            Some(TOKEN),
            body.to_string().as_bytes(),
        )
    };
    let ok = sign(&full);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.headers["content-type"], "application/json");
    let answer = ok.json();
    assert_eq!(answer["parameters"]["payment_amount"], 1000);
    assert_eq!(answer["parameters"]["signature"], answer["signature"]);
    assert_eq!(answer["signature"].as_str().unwrap().len(), 88);
    for name in [
        "payment_id",
        "customer_id",
        "customer_email",
        "customer_first_name",
        "customer_last_name",
        "payment_currency",
        "payment_amount",
    ] {
        let mut body = full.clone();
        body.as_object_mut().unwrap().remove(name);
        let a = sign(&body);
        assert_eq!(a.status, 400, "{name}: {a:?}");
        assert_eq!(
            a.json(),
            json!({"status": "rejected", "reason": format!("missing required parameter: {name}"), "missing": [name]})
        );
        assert_eq!(a.headers["cbgate-answer"], "cbgate");
        body[name] = json!("");
        assert_eq!(sign(&body).json()["missing"], json!([name]), "{name} empty");
    }
    let two = sign(&json!({"project_id": 1234, "payment_id": "p"})).json();
    assert_eq!(two["missing"].as_array().unwrap().len(), 6, "{two}");
    let no_project = sign(&json!({"payment_id": "p"}));
    assert_eq!(no_project.status, 400);
    assert_eq!(no_project.json()["missing"], json!(["project_id"]));
    let cases: [(&[u8], &str); 6] = [
        (b"{\"project_id\":1234,", "body is not valid JSON"),
        (b"[1234]", "body is not a JSON object"),
        (br#"{"project_id":1234,"project_id":1234}"#, "parameter project_id appears twice"),
        (br#"{"project_id":"12x4"}"#, "project_id must be an integer"),
        (
            br#"{"project_id":1234,"payment_id":"p1","customer_id":"c1","customer_email":"a@b.kz","customer_first_name":"A","customer_last_name":"B","payment_currency":"KZT","payment_amount":"10.00"}"#,
            "payment_amount must be an integer",
        ),
        (
            br#"{"project_id":1234,"payment_id":"p1","signature":"mine"}"#,
            "signature is cbgate's to set",
        ),
    ];
    for (body, reason) in cases {
        let a = post(merchant, "/payment-page/sign", Some(TOKEN), body);
        assert_eq!(a.status, 400, "{a:?}");
        assert!(
            a.json()["reason"].as_str().unwrap().starts_with(reason),
            "{reason}: {a:?}"
        );
    }
    let get = request(merchant, "GET", "/payment-page/sign", &[], b"");
    assert_eq!((get.status, get.headers["allow"].as_str()), (405, "POST"));
    let nowhere = post(
        merchant,
        "/gate/v2/payment/mobile/payout",
        Some(TOKEN),
        b"{}",
    );
    assert_eq!(nowhere.status, 404, "{nowhere:?}");
    assert!(
        nowhere.json()["reason"]
            .as_str()
            .unwrap()
            .contains("does not forward the Gate API path /v2/payment/mobile/payout"),
        "{nowhere:?}"
    );
    assert_eq!(post(merchant, "/callbacks", Some(TOKEN), b"{}").status, 404);
    assert_eq!(
        g.metric(
            "cbgate_merchant_requests_total",
            &[("path", "payment-page"), ("status", "400")]
        ),
        (7 * 2 + 2 + 6) as f64
    );
}

#[test]
fn gate_requests_pass_the_platforms_own_verifier() {
    let stub = GateStub::start(SECRET);
    let (g, merchant) = start(&stub.url, "");
    let mut requests = seed_requests(1234, "payment_47");
    requests.push((
        "/v2/payment/mobile/status",
        r#"{"general":{"project_id":"1234","payment_id":"payment_47"}}"#.to_string(),
    ));
    for (i, (path, body)) in requests.iter().enumerate() {
        let a = post(
            merchant,
            &format!("/gate{path}"),
            Some(TOKEN),
            body.as_bytes(),
        );
        assert_eq!(a.status, 200, "{path}: {a:?}\n{}", g.log());
        // The platform's answer, unchanged.
        assert_eq!(a.headers["content-type"], "application/json; charset=utf-8");
        assert!(!a.headers.contains_key("cbgate-answer"));
        let answer = a.json();
        assert_eq!(answer["status"], "success");
        assert_eq!(answer["request_id"], format!("gate-{}", i + 1));
        let seen = &stub.seen()[i];
        assert_eq!(seen["path"], *path);
        assert_eq!(seen["verdict"], "valid", "{seen}");
        // What reached the platform is the merchant's body as written, with
        // general.signature as the last member of general.
        let forwarded = seen["body"].as_str().unwrap();
        let signature = serde_json::from_str::<Value>(forwarded).unwrap()["general"]["signature"]
            .as_str()
            .unwrap()
            .to_string();
        let general_end = body.find('}').unwrap();
        assert_eq!(
            forwarded,
            format!(
                "{},\"signature\":\"{signature}\"{}",
                &body[..general_end],
                &body[general_end..]
            )
        );
    }
    assert_eq!(stub.seen().len(), 6);
    // A project whose secret the platform does not hold: the platform's refusal, as it came.
    let (_, other) = &seed_requests(5678, "payment_48")[0];
    let refused = post(
        merchant,
        "/gate/v2/payment/mobile/sale",
        Some(OTHER_TOKEN),
        other.as_bytes(),
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(
        refused.body,
        r#"{"status": "error", "code": "1401", "message": "Invalid signature"}"#
    );
    assert_eq!(
        refused.headers["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(
        stub.seen()[6]["verdict"]
            .as_str()
            .unwrap()
            .starts_with("refused")
    );

    // The stub is no rubber stamp: a merchant that signs itself gets through only
    // with an untampered body.
    let own = {
        let mut canon = cbgate::signature::Canonicalizer::default();
        let body = &seed_requests(1234, "payment_49")[0].1;
        let sig = cbgate::signature::sign(&mut canon, body.as_bytes(), SECRET).unwrap();
        body.replacen(
            "\"payment_id\": \"payment_49\"",
            &format!("\"payment_id\": \"payment_49\", \"signature\": \"{sig}\""),
            1,
        )
    };
    let direct = stub.post_direct("/v2/payment/mobile/sale", own.as_bytes());
    assert_eq!(direct.status, 200, "{direct:?}");
    let tampered = own.replace("\"amount\": 100000", "\"amount\": 100");
    assert_ne!(tampered, own);
    let direct = stub.post_direct("/v2/payment/mobile/sale", tampered.as_bytes());
    assert_eq!(direct.status, 400, "{direct:?}");
    let seen = stub.seen();
    assert_eq!(seen.len(), 9);
    assert_eq!(seen[7]["verdict"], "valid");
    assert!(seen[8]["verdict"].as_str().unwrap().starts_with("refused"));
    // A body with its own signature is not signed again, nor sent.
    let signed = post(
        merchant,
        "/gate/v2/payment/mobile/sale",
        Some(TOKEN),
        own.as_bytes(),
    );
    assert_eq!(signed.status, 400);
    assert!(
        signed.json()["reason"]
            .as_str()
            .unwrap()
            .contains("general.signature")
    );
    assert_eq!(stub.seen().len(), 9);
    assert_eq!(
        g.metric(
            "cbgate_merchant_requests_total",
            &[("route", "gate"), ("project", "1234"), ("status", "200")]
        ),
        6.0
    );
}

#[test]
fn wrong_tokens_get_401_and_nothing_reaches_the_platform() {
    let stub = GateStub::start(SECRET);
    let (g, merchant) = start(&stub.url, "");
    let sale = |project: u64| seed_requests(project, "payment_47").swap_remove(0).1;
    let page = |project: u64| {
        json!({"project_id": project, "payment_id": "p1", "customer_id": "c1",
            "customer_email": "a@b.kz", "customer_first_name": "A", "customer_last_name": "B",
            "payment_currency": "KZT", "payment_amount": 1000})
        .to_string()
    };
    let wrong = format!("{TOKEN}x");
    let prefix = &TOKEN[..TOKEN.len() - 1];
    let cases: Vec<(&str, Option<String>, u64, &str)> = vec![
        ("no header", None, 1234, "missing"),
        ("empty bearer", Some("Bearer ".into()), 1234, "missing"),
        (
            "basic scheme",
            Some(format!("Basic {TOKEN}")),
            1234,
            "missing",
        ),
        (
            "wrong token",
            Some(format!("Bearer {wrong}")),
            1234,
            "wrong",
        ),
        (
            "a prefix of it",
            Some(format!("Bearer {prefix}")),
            1234,
            "wrong",
        ),
        (
            "other project's token",
            Some(format!("Bearer {OTHER_TOKEN}")),
            1234,
            "wrong",
        ),
        (
            "for the other project",
            Some(format!("Bearer {TOKEN}")),
            5678,
            "wrong",
        ),
        (
            "project without a token",
            Some(format!("Bearer {TOKEN}")),
            4321,
            "not_enabled",
        ),
        (
            "unknown project",
            Some(format!("Bearer {TOKEN}")),
            777,
            "unknown_project",
        ),
    ];
    for (what, auth, project, _) in &cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        for (path, body) in [
            ("/gate/v2/payment/mobile/sale", sale(*project)),
            ("/payment-page/sign", page(*project)),
        ] {
            let a = request(merchant, "POST", path, &headers, body.as_bytes());
            assert_eq!(a.status, 401, "{what} {path}: {a:?}");
            assert_eq!(
                a.json(),
                json!({"status": "rejected", "reason": "missing or wrong bearer token for this project"})
            );
            assert!(a.headers["www-authenticate"].starts_with("Bearer"));
        }
    }
    assert!(stub.seen().is_empty(), "{:?}", stub.seen());
    // Project ids from bodies do not become metric labels unless configured.
    assert_eq!(
        g.metric("cbgate_merchant_requests_total", &[("project", "777")]),
        0.0
    );
    assert_eq!(
        g.metric(
            "cbgate_merchant_requests_total",
            &[("project", "unknown"), ("status", "401")]
        ),
        // Project 777, and the requests without a token (refused before the body is read).
        8.0
    );
    for reason in ["missing", "wrong", "not_enabled", "unknown_project"] {
        let expected = cases.iter().filter(|c| c.3 == reason).count() * 2;
        assert_eq!(
            g.metric("cbgate_merchant_auth_failures_total", &[("reason", reason)]),
            expected as f64,
            "{reason}"
        );
    }
    // The right token (the scheme in any case) gets through.
    let lower = format!("bearer {TOKEN}");
    let a = request(
        merchant,
        "POST",
        "/gate/v2/payment/mobile/sale",
        &[("Authorization", &lower)],
        sale(1234).as_bytes(),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(stub.seen().len(), 1);
    // Refusals are logged, never with a token.
    let log = wait_log(&g, |log| {
        log.matches("merchant request refused").count() >= 18
    });
    for secret in [TOKEN, OTHER_TOKEN, prefix, wrong.as_str()] {
        assert!(!log.contains(secret), "a token is in the log");
    }
}

#[test]
fn a_platform_that_hangs_gets_504_within_the_timeout() {
    let latch = Latch::default();
    let held = latch.clone();
    let platform = Endpoint::start(move |_, _| Reply::Block(held.clone(), 200));
    let (g, merchant) = start(
        &format!("http://{}", platform.addr),
        "connect_timeout = \"500ms\"\ntimeout = \"1s\"",
    );
    let body = &seed_requests(1234, "hang-1")[0].1;
    let started = Instant::now();
    let a = post(
        merchant,
        "/gate/v2/payment/mobile/sale",
        Some(TOKEN),
        body.as_bytes(),
    );
    let took = started.elapsed();
    latch.open();
    assert_eq!(a.status, 504, "{a:?}");
    assert_eq!(a.json()["sent"], "maybe");
    assert!(
        a.json()["reason"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1s")
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(platform.arrived(), 1);
    assert_eq!(
        g.metric(
            "cbgate_merchant_gate_errors_total",
            &[("error", "gate_timeout")]
        ),
        1.0
    );
}

/// A platform that reads each request whole, then resets the connection (RST).
struct Resetter {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
}

impl Resetter {
    fn start() -> Resetter {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let count = arrived.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut len = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                count.fetch_add(1, Ordering::AcqRel);
                let stream = reader.into_inner();
                stream.set_nonblocking(true).unwrap();
                runtime.block_on(async {
                    let s = tokio::net::TcpStream::from_std(stream).unwrap();
                    // Linger 0: closing sends RST, not FIN (and a zero linger never
                    // blocks the drop, the deprecation's concern).
                    #[allow(deprecated)]
                    s.set_linger(Some(Duration::ZERO)).unwrap();
                });
            }
        });
        Resetter { addr, arrived }
    }
}

#[test]
fn a_platform_that_resets_after_reading_gets_502_and_the_request_is_not_sent_again() {
    let platform = Resetter::start();
    let (g, merchant) = start(&format!("http://{}", platform.addr), "");
    for n in 1..=2 {
        let body = &seed_requests(1234, &format!("reset-{n}"))[0].1;
        let a = post(
            merchant,
            "/gate/v2/payment/mobile/sale",
            Some(TOKEN),
            body.as_bytes(),
        );
        assert_eq!(a.status, 502, "{a:?}\n{}", g.log());
        assert_eq!(a.json()["sent"], "yes");
        assert!(
            a.json()["reason"]
                .as_str()
                .unwrap()
                .contains("not sent again")
        );
        // cbgate answers only once it gave up: a second send would have arrived by now.
        assert_eq!(platform.arrived.load(Ordering::Acquire), n);
    }
    assert_eq!(
        g.metric(
            "cbgate_merchant_gate_errors_total",
            &[("error", "gate_broken")]
        ),
        2.0
    );
    // Nothing listening: the request never left, and says so.
    let closed = free_addr();
    let (_g2, merchant2) = start(&format!("http://{closed}"), "");
    let body = &seed_requests(1234, "closed-1")[0].1;
    let a = post(
        merchant2,
        "/gate/v2/payment/mobile/sale",
        Some(TOKEN),
        body.as_bytes(),
    );
    assert_eq!(a.status, 502, "{a:?}");
    assert_eq!(a.json()["sent"], "no");
}

#[test]
fn signed_requests_join_the_payment_timeline_and_the_log_masks_numbers() {
    let stub = GateStub::start(SECRET);
    let (g, merchant) = start(&stub.url, "");
    let sale = &seed_requests(1234, "tl-1")[0].1;
    let a = post(
        merchant,
        "/gate/v2/payment/mobile/sale",
        Some(TOKEN),
        sale.as_bytes(),
    );
    assert_eq!(a.status, 200, "{a:?}");
    let page = json!({"project_id": 1234, "payment_id": "tl-1", "customer_id": "c1",
        "customer_email": "hidden.mail@example.kz", "customer_first_name": "A",
        "customer_last_name": "B", "payment_currency": "KZT", "payment_amount": 1000,
        "customer_phone": "77011234567"});
    let page_answer = post(
        merchant,
        "/payment-page/sign",
        Some(TOKEN),
        page.to_string().as_bytes(),
    );
    assert_eq!(page_answer.status, 200);
    let page_signature = page_answer.json()["signature"]
        .as_str()
        .unwrap()
        .to_string();
    // The platform's callback for the same payment.
    let callback = signed_for(
        1234,
        r#"{"payment":{"id":"tl-1","status":"awaiting clarification","method":"mobile"},"operation":{"id":5,"type":"sale","status":"awaiting clarification"}}"#,
        SECRET,
    );
    assert_eq!(g.post("/callbacks", &callback).0, 200);
    let started = Instant::now();
    let timeline = loop {
        let (status, text) = g.admin_get("/admin/payments/1234/tl-1");
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["signed"].as_array().unwrap().len() == 2
            && v["callbacks"].as_array().unwrap().len() == 1
        {
            break v;
        }
        assert!(started.elapsed() < LONG, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let signed: Vec<(String, u64)> = timeline["signed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap().to_string(),
                s["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        signed,
        [
            ("/v2/payment/mobile/sale".to_string(), 200),
            ("payment-page".to_string(), 200)
        ]
    );
    assert_eq!(
        timeline["callbacks"][0]["payment_status"],
        "awaiting clarification"
    );
    // One line per request: masked numbers, no body, no signature, no token.
    let log = wait_log(&g, |log| log.matches("cbgate::merchant").count() >= 2);
    assert!(
        log.contains("*******7890") && log.contains("*******4567"),
        "{log}"
    );
    let forwarded = stub.seen()[0]["body"].as_str().unwrap().to_string();
    let signature = serde_json::from_str::<Value>(&forwarded).unwrap()["general"]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    for secret in [
        "71234567890",
        "77011234567",
        "johndoe@example.com",
        "hidden.mail@example.kz",
        TOKEN,
        signature.as_str(),
        page_signature.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

/// The gateway's log once `done` holds (its writer is in the background).
fn wait_log(g: &Gateway, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let log = g.log();
        if done(&log) {
            return log;
        }
        assert!(started.elapsed() < LONG, "{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_gate_api_is_reached_over_tls_trusting_ca_file() {
    let tls = crate::support::TestTls::new();
    let platform = Endpoint::ok_tls(tls.server.clone());
    let url = format!("https://localhost:{}", platform.addr.port());
    let body = &seed_requests(1234, "tls-1")[0].1;
    // The stub's certificate is signed by a private CA: not trusted by default...
    let (_g, merchant) = start(&url, "");
    let a = post(
        merchant,
        "/gate/v2/payment/mobile/sale",
        Some(TOKEN),
        body.as_bytes(),
    );
    assert_eq!(a.status, 502, "{a:?}");
    assert_eq!(a.json()["sent"], "no");
    assert_eq!(platform.arrived(), 0);
    // ...and trusted through [merchant] ca_file.
    let ca = format!("ca_file = \"{}\"", tls.ca_file().display());
    let (_g, merchant) = start(&url, &ca);
    let a = post(
        merchant,
        "/gate/v2/payment/mobile/sale",
        Some(TOKEN),
        body.as_bytes(),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(platform.arrived(), 1);
    let seen = &platform.requests()[0];
    assert_eq!(seen.headers["content-type"], "application/json");
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["general"]["signature"].as_str().unwrap().len(), 88);
}

#[test]
fn a_token_rotated_by_sighup_replaces_the_old_one() {
    let stub = GateStub::start(SECRET);
    let (g, merchant) = start(&stub.url, "");
    let body = seed_requests(1234, "rotate-1").swap_remove(4).1;
    let list = |token: &str| {
        post(
            merchant,
            "/gate/v2/info/mobile/sale/list",
            Some(token),
            body.as_bytes(),
        )
        .status
    };
    assert_eq!(list(TOKEN), 200);
    let rotated = "merchant-token-1234-rotated-0001";
    let config = std::fs::read_to_string(&g.config_path).unwrap();
    std::fs::write(&g.config_path, config.replace(TOKEN, rotated)).unwrap();
    g.signal("HUP");
    g.wait_metric(
        "cbgate_config_reloads_total",
        &[("result", "ok")],
        LONG,
        |v| v >= 1.0,
    );
    assert_eq!(list(TOKEN), 401);
    assert_eq!(list(rotated), 200);
    assert_eq!(stub.seen().len(), 2);
}
