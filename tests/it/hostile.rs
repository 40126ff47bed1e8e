//! Hostile input against the running binary (issue 16): every input gets a defined
//! answer (status and a JSON reason, or the terminal's code in its dialect), nothing
//! hostile reaches the journal, an endpoint or the merchant, and valid signed
//! callbacks interleaved with the attack are accepted and delivered throughout.
//! Slow and idle connections are cut by the configured timeouts and the connection
//! cap; HTTP/2 (https by ALPN) survives rapid resets and oversized header lists.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::endpoint::Endpoint;
use crate::support::{Conn, Gateway, TestTls};
use crate::terminal::Merchant;

const SECRET: &str = "hostile-secret";
const PROJECT: u64 = 4242;
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LONG: Duration = Duration::from_secs(30);
/// Short limits so slow clients are cut within a test.
const LIMITS: &str =
    "max_body_bytes = 32768\nheader_read_timeout = \"500ms\"\nbody_read_timeout = \"500ms\"\n";

fn projects(sink: &Endpoint, merchant: &Merchant) -> String {
    format!(
        "[[projects]]\nid = {PROJECT}\nsecrets = [\"{SECRET}\"]\nmethod = \"kassa24\"\n\
         terminal_url = \"http://{}/terminal\"\n\n[[projects.endpoints]]\nname = \"sink\"\n\
         url = \"{}\"\nsecret = \"{WHSEC}\"\n",
        merchant.addr,
        sink.url()
    )
}

fn sign(v: &Value) -> Vec<u8> {
    cbgate::signature::attach(v.to_string().as_bytes(), SECRET).unwrap()
}

/// A valid callback of operation `op`, as a tree to break.
fn callback(op: u64) -> Value {
    json!({
        "project_id": PROJECT,
        "payment": {"id": format!("pay-{op}"), "type": "purchase", "status": "success",
                    "method": "kassa24", "sum": {"amount": 10000, "currency": "KZT"}},
        "operation": {"id": op, "type": "sale", "status": "success", "request_id": format!("req-{op}"),
                      "sum_initial": {"amount": 10000, "currency": "KZT"}, "code": "0", "message": "Success"},
        "customer": {"id": "customer-1"}
    })
}

/// The running gateway, the endpoint and merchant behind it, and the valid traffic.
struct Attack {
    g: Gateway,
    sink: Endpoint,
    merchant: Merchant,
    accepted: Vec<Vec<u8>>,
    next_op: u64,
    tried: usize,
}

impl Attack {
    fn start() -> Attack {
        let (sink, merchant) = (Endpoint::ok(), Merchant::start());
        let g = Gateway::start_with(&projects(&sink, &merchant), LIMITS);
        Attack {
            g,
            sink,
            merchant,
            accepted: Vec::new(),
            next_op: 1,
            tried: 0,
        }
    }

    /// A valid signed callback between two attacks: it must be accepted.
    fn valid(&mut self) {
        let body = sign(&callback(self.next_op));
        self.next_op += 1;
        assert_eq!(
            self.g.post("/callbacks", &body),
            (200, r#"{"status":"accepted"}"#.into()),
            "valid traffic refused during the attack\n{}",
            self.g.log()
        );
        self.accepted.push(body);
    }

    /// `body` POSTed to /callbacks gets `status` with a JSON `reason` containing `says`
    /// (counted under `outcome`); a valid callback follows.
    fn callback(&mut self, name: &str, body: &[u8], status: u16, says: &str, outcome: &str) {
        self.request(
            name,
            "POST",
            "/callbacks",
            &[("Content-Type", "application/json")],
            body,
            status,
            says,
        );
        assert!(
            self.g
                .metric("cbgate_requests_total", &[("outcome", outcome)])
                >= 1.0,
            "{name}: no {outcome} counted"
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        name: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        status: u16,
        says: &str,
    ) {
        self.tried += 1;
        let (got, answer) = Conn::open(self.g.addr)
            .and_then(|mut c| c.request(method, path, headers, body))
            .unwrap_or_else(|e| panic!("{name}: no answer: {e}\n{}", self.g.log()));
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert_eq!(got, status, "{name}: {answer}");
        let v: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{name}: answer is not JSON ({e}): {answer}"));
        let reason = v["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no reason: {answer}"));
        assert!(
            reason.contains(says),
            "{name}: {reason:?} does not say {says:?}"
        );
        self.valid();
    }

    /// A terminal request: HTTP 200, protocol `code` and the Kassa24 reason.
    fn terminal(&mut self, name: &str, body: &[u8], code: u64, says: &str) {
        self.tried += 1;
        let (status, answer) = self.g.post("/terminal", body);
        assert_eq!(status, 200, "{name}: {answer}");
        let v: Value =
            serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{name}: {e}: {answer}"));
        assert_eq!(v["code"], code, "{name}: {answer}");
        let reason = v["error_description"].as_str().unwrap_or_default();
        assert!(
            reason.contains(says),
            "{name}: {reason:?} does not say {says:?}"
        );
        self.valid();
    }

    /// Nothing hostile reached the journal, the endpoint or the merchant.
    fn finish(self, merchant_requests: usize) {
        let n = self.accepted.len();
        assert_eq!(
            self.g.metric(
                "cbgate_requests_total",
                &[("route", "callbacks"), ("outcome", "accepted")]
            ),
            n as f64,
            "an attack was accepted"
        );
        assert!(self.sink.wait_delivered(n, LONG), "{}", self.g.log());
        self.g.wait_idle(LONG);
        let mut got = self.sink.delivered();
        let mut want = self.accepted.clone();
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "the endpoint got something other than the valid callbacks"
        );
        let seen = self.merchant.seen();
        assert_eq!(seen.values().sum::<usize>(), merchant_requests, "{seen:?}");
        assert!(!self.g.log().contains("panicked"), "{}", self.g.log());
        eprintln!(
            "hostile: {} inputs refused, {n} valid callbacks accepted and delivered",
            self.tried
        );
    }
}

#[test]
fn hostile_bodies_get_defined_answers_and_never_reach_the_journal() {
    let mut a = Attack::start();
    a.valid();
    let good = sign(&callback(999_999));

    // Encodings and framing.
    let mut invalid_utf8 = br#"{"project_id":4242,"x":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc0, 0x80]);
    invalid_utf8.extend_from_slice(br#"","signature":"x"}"#);
    a.callback(
        "invalid UTF-8",
        &invalid_utf8,
        400,
        "not valid JSON",
        "malformed",
    );
    let mut overlong = good.clone();
    let at = overlong.windows(3).position(|w| w == b"KZT").unwrap();
    overlong.splice(at..at + 1, [0xc1, 0x8b]); // an overlong 'K'
    a.callback(
        "overlong UTF-8",
        &overlong,
        400,
        "not valid JSON",
        "malformed",
    );
    for cut in [1, good.len() / 2, good.len() - 1] {
        a.callback(
            "truncated",
            &good[..cut],
            400,
            "not valid JSON",
            "malformed",
        );
    }
    a.callback("empty body", b"", 400, "not valid JSON", "malformed");
    a.callback(
        "whitespace",
        b" \r\n\t ",
        400,
        "not valid JSON",
        "malformed",
    );
    a.callback("NUL bytes", b"\0\0\0\0", 400, "not valid JSON", "malformed");
    a.callback(
        "trailing data",
        &[&good[..], b"{}"].concat(),
        400,
        "not valid JSON",
        "malformed",
    );
    a.callback("two objects", b"{}{}", 400, "not valid JSON", "malformed");
    let big = format!(r#"{{"project_id":4242,"pad":"{}"}}"#, "x".repeat(32768));
    a.callback(
        "over the limit",
        big.as_bytes(),
        413,
        "over 32768 bytes",
        "too_large",
    );
    for top in ["[]", "\"x\"", "1", "null", "true"] {
        a.callback(
            "not an object",
            top.as_bytes(),
            400,
            "not a JSON object",
            "malformed",
        );
    }
    let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    a.callback(
        "10k-deep arrays",
        deep.as_bytes(),
        400,
        "nested deeper than 32",
        "malformed",
    );
    let deep = format!("{}1{}", r#"{"a":"#.repeat(3000), "}".repeat(3000));
    a.callback(
        "3k-deep objects",
        deep.as_bytes(),
        400,
        "nested deeper than 32",
        "malformed",
    );
    // A long key over a long array: the canonical string would be 8000x the body.
    let blowup = format!(r#"{{"{}":[{}1]}}"#, "k".repeat(8000), "1,".repeat(3000));
    a.callback(
        "canonical blow-up",
        blowup.as_bytes(),
        400,
        "canonical string would be over",
        "malformed",
    );
    for lit in [
        "NaN",
        "Infinity",
        "-Infinity",
        "01",
        "1.",
        ".5",
        "+1",
        "0x10",
        "1e",
        "--1",
    ] {
        let body = format!(r#"{{"project_id":{lit},"signature":"x"}}"#);
        a.callback(
            &format!("bad number {lit}"),
            body.as_bytes(),
            400,
            "not valid JSON",
            "malformed",
        );
    }

    // Signatures and projects.
    let v = callback(5);
    let mut unsigned = v.clone();
    unsigned["signature"] = json!(null);
    a.callback(
        "no signature",
        v.to_string().as_bytes(),
        400,
        "no signature",
        "missing_signature",
    );
    a.callback(
        "null signature",
        unsigned.to_string().as_bytes(),
        400,
        "no signature",
        "missing_signature",
    );
    let mut numeric = v.clone();
    numeric["signature"] = json!(12345);
    a.callback(
        "numeric signature",
        numeric.to_string().as_bytes(),
        400,
        "no signature",
        "missing_signature",
    );
    let signed = sign(&v);
    let real: Value = serde_json::from_slice(&signed).unwrap();
    let real = real["signature"].as_str().unwrap().to_string();
    assert_eq!(real.len(), 88);
    for (name, forged) in [
        ("wrong signature of the right length", {
            // The right length and alphabet, another HMAC: first byte differs.
            let mut s = real.clone().into_bytes();
            s[0] = if s[0] == b'A' { b'B' } else { b'A' };
            String::from_utf8(s).unwrap()
        }),
        ("last byte differs", {
            let mut s = real.clone().into_bytes();
            s[85] = if s[85] == b'A' { b'B' } else { b'A' };
            String::from_utf8(s).unwrap()
        }),
        ("not base64", "!".repeat(88)),
        ("short", real[..40].to_string()),
        ("long", format!("{real}{real}")),
        ("empty", String::new()),
    ] {
        let mut body = v.clone();
        body["signature"] = json!(forged);
        a.callback(
            name,
            body.to_string().as_bytes(),
            400,
            "invalid signature",
            "bad_signature",
        );
    }
    let mut tampered: Value = serde_json::from_slice(&signed).unwrap();
    tampered["payment"]["sum"]["amount"] = json!(10001);
    a.callback(
        "tampered after signing",
        tampered.to_string().as_bytes(),
        400,
        "invalid signature",
        "bad_signature",
    );
    let mut unknown = callback(6);
    unknown["project_id"] = json!(4243);
    a.callback(
        "unknown project",
        &sign(&unknown),
        404,
        "unknown project 4243",
        "unknown_project",
    );
    for (id, says, outcome) in [
        (json!(-1), "unknown project -1", "unknown_project"),
        (json!(0), "unknown project 0", "unknown_project"),
        (
            json!(18446744073709551615u64),
            "project_id must be an integer",
            "invalid_field",
        ),
        (
            json!(1e300),
            "project_id must be an integer",
            "invalid_field",
        ),
        (
            json!(4242.5),
            "project_id must be an integer",
            "invalid_field",
        ),
        (
            json!(true),
            "project_id must be an integer",
            "invalid_field",
        ),
        (
            json!("4242x"),
            "project_id must be an integer",
            "invalid_field",
        ),
        (
            json!([4242]),
            "project_id must be an integer",
            "invalid_field",
        ),
        (
            json!({"id": 4242}),
            "project_id must be an integer",
            "invalid_field",
        ),
        (json!(""), "missing field project_id", "missing_field"),
        (json!(null), "missing field project_id", "missing_field"),
    ] {
        let mut body = callback(7);
        body["project_id"] = id.clone();
        let status = if outcome == "unknown_project" {
            404
        } else {
            400
        };
        a.callback(
            &format!("project_id {id}"),
            &sign(&body),
            status,
            says,
            outcome,
        );
    }
    let big_number = br#"{"project_id":4242,"n":1e999999,"signature":"x"}"#;
    a.callback(
        "number out of f64",
        big_number,
        400,
        "not valid JSON",
        "malformed",
    );
    let mut missing = callback(8);
    missing.as_object_mut().unwrap().remove("project_id");
    a.callback(
        "missing project_id",
        &sign(&missing),
        400,
        "missing field project_id",
        "missing_field",
    );

    // Signed with the right key, but the fields cbgate reads have the wrong types.
    for (path, bad, field) in [
        (&["payment"][..], json!("p"), "payment must be an object"),
        (&["operation"], json!(5), "operation must be an object"),
        (
            &["payment", "id"],
            json!(true),
            "payment.id must be a string or an integer",
        ),
        (
            &["payment", "id"],
            json!(1.5),
            "payment.id must be a string or an integer",
        ),
        (
            &["payment", "status"],
            json!(1),
            "payment.status must be a string",
        ),
        (
            &["payment", "method"],
            json!(["kassa24"]),
            "payment.method must be a string",
        ),
        (
            &["operation", "id"],
            json!(18446744073709551616.0),
            "operation.id must be a string or an integer",
        ),
        (
            &["operation", "id"],
            json!({"a": 1}),
            "operation.id must be a string or an integer",
        ),
        (
            &["operation", "request_id"],
            json!(false),
            "operation.request_id must be a string or an integer",
        ),
        (
            &["operation", "type"],
            json!(0),
            "operation.type must be a string",
        ),
        (
            &["operation", "status"],
            json!({"s": "success"}),
            "operation.status must be a string",
        ),
    ] {
        let mut body = callback(9);
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = bad.clone();
        a.callback(
            &format!("{path:?} = {bad}"),
            &sign(&body),
            400,
            field,
            "invalid_field",
        );
    }
    // A captured callback with an earlier copy of a key: still verifies (the last copy
    // is signed) but a first-copy parser would read 999999.
    let text = String::from_utf8(sign(&callback(10))).unwrap();
    let forged = text.replacen(
        r#""id":"customer-1""#,
        r#""id":"attacker","id":"customer-1""#,
        1,
    );
    a.callback(
        "duplicate key",
        forged.as_bytes(),
        400,
        "duplicate key customer:id",
        "duplicate_key",
    );
    let forged = text.replacen(
        r#""project_id":4242"#,
        r#""project_id":1,"project_id":4242"#,
        1,
    );
    a.callback(
        "duplicate project_id",
        forged.as_bytes(),
        400,
        "duplicate key project_id",
        "duplicate_key",
    );

    // Methods, routes and content types.
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in ["/callbacks", "/terminal"] {
            a.request(
                &format!("{method} {path}"),
                method,
                path,
                &[],
                b"",
                405,
                "use POST",
            );
        }
    }
    a.request(
        "unknown route",
        "POST",
        "/callbacks/../admin",
        &[],
        &good,
        404,
        "no such route",
    );
    a.request(
        "admin route",
        "GET",
        "/admin/endpoints",
        &[],
        b"",
        404,
        "no such route",
    );
    a.request(
        "form body",
        "POST",
        "/callbacks",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"project_id=4242&signature=x",
        400,
        "not valid JSON",
    );
    a.request(
        "multipart body",
        "POST",
        "/callbacks",
        &[("Content-Type", "multipart/form-data; boundary=x")],
        b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
        400,
        "not valid JSON",
    );
    // The content type is not what decides: a valid body under text/plain is a valid
    // callback (the platform's body is the contract).
    let plain = sign(&callback(888_888));
    let (status, answer) = Conn::open(a.g.addr)
        .unwrap()
        .request(
            "POST",
            "/callbacks",
            &[("Content-Type", "text/plain")],
            &plain,
        )
        .unwrap();
    assert_eq!(
        (status, &answer[..]),
        (200, &br#"{"status":"accepted"}"#[..])
    );
    a.accepted.push(plain);

    // Extra fields, at the top and nested, are the platform's to add: a signed
    // callback with them is accepted and forwarded byte for byte.
    let mut extra = callback(888_889);
    extra["new_top_level"] = json!({"a": [1, 2.5, null, true]});
    extra["operation"]["provider"] = json!({"id": 17, "auth_code": "X1"});
    let extra = sign(&extra);
    assert_eq!(
        a.g.post("/callbacks", &extra),
        (200, r#"{"status":"accepted"}"#.into())
    );
    a.accepted.push(extra);

    // Terminal requests: every field wrong, missing, or extra.
    let verify = json!({"type": "verify", "project_id": PROJECT, "customer_id": "acct-1"});
    let deposit = json!({"type": "check_deposit", "project_id": PROJECT, "customer_id": "acct-1",
                         "amount": 10000, "currency": "KZT", "payment_method": "kassa24"});
    let bad = |base: &Value, key: &str, value: Value| {
        let mut v = base.clone();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(key);
        } else {
            v[key] = value;
        }
        sign(&v)
    };
    let mut merchant_requests = 0;
    for (base, key, value, says) in [
        (
            &verify,
            "type",
            json!(1),
            "type must be verify or check_deposit",
        ),
        (
            &verify,
            "type",
            json!("VERIFY"),
            "type must be verify or check_deposit",
        ),
        (
            &verify,
            "type",
            Value::Null,
            "type must be verify or check_deposit",
        ),
        (
            &verify,
            "project_id",
            json!("4242"),
            "project_id must be an integer",
        ),
        (
            &verify,
            "project_id",
            json!(4242.0),
            "project_id must be an integer",
        ),
        (
            &verify,
            "project_id",
            json!(99999999999999999999.0),
            "project_id must be an integer",
        ),
        (&verify, "project_id", json!(-4242), "unknown project -4242"),
        (
            &verify,
            "project_id",
            Value::Null,
            "missing field project_id",
        ),
        (
            &verify,
            "customer_id",
            json!(true),
            "customer_id must be a string or an integer",
        ),
        (
            &verify,
            "customer_id",
            json!(1.5),
            "customer_id must be a string or an integer",
        ),
        (
            &verify,
            "customer_id",
            json!({"a": "b"}),
            "customer_id must be a string or an integer",
        ),
        (
            &verify,
            "customer_id",
            json!(""),
            "missing field customer_id",
        ),
        (
            &verify,
            "customer_id",
            Value::Null,
            "missing field customer_id",
        ),
        (
            &deposit,
            "amount",
            json!("10000"),
            "amount must be an integer in minor units",
        ),
        (
            &deposit,
            "amount",
            json!(100.5),
            "amount must be an integer in minor units",
        ),
        (
            &deposit,
            "amount",
            json!(1e30),
            "amount must be an integer in minor units",
        ),
        (
            &deposit,
            "amount",
            json!(18446744073709551615u64),
            "amount must be an integer in minor units",
        ),
        (&deposit, "amount", json!(-100), "outside the limits"),
        (&deposit, "amount", json!(0), "outside the limits"),
        (
            &deposit,
            "amount",
            json!(9223372036854775807i64),
            "outside the limits",
        ),
        (&deposit, "amount", json!(99), "outside the limits"),
        (&deposit, "amount", Value::Null, "missing field amount"),
        (
            &deposit,
            "currency",
            json!(398),
            "currency must be a string",
        ),
        (&deposit, "currency", json!("kzt"), "currency must be KZT"),
        (&deposit, "currency", Value::Null, "missing field currency"),
        (
            &deposit,
            "payment_method",
            json!(["kassa24"]),
            "payment_method must be a string",
        ),
        (
            &deposit,
            "payment_method",
            json!("cash"),
            "unsupported payment_method cash",
        ),
        (
            &deposit,
            "payment_method",
            Value::Null,
            "missing field payment_method",
        ),
    ] {
        let body = bad(base, key, value.clone());
        a.terminal(&format!("terminal {key} = {value}"), &body, 500, says);
    }
    let signed = sign(&verify);
    let text = String::from_utf8(signed.clone()).unwrap();
    let forged = text.replacen(
        r#""customer_id":"acct-1""#,
        r#""customer_id":"acct-2","customer_id":"acct-1""#,
        1,
    );
    a.terminal(
        "terminal duplicate key",
        forged.as_bytes(),
        500,
        "duplicate key customer_id",
    );
    let mut wrong = verify.clone();
    wrong["signature"] = json!("A".repeat(88));
    a.terminal(
        "terminal wrong signature",
        wrong.to_string().as_bytes(),
        400,
        "Signature is invalid",
    );
    a.terminal("terminal not JSON", b"type=verify", 500, "not valid JSON");
    a.terminal(
        "terminal invalid UTF-8",
        b"{\"type\":\"\xff\"}",
        500,
        "not valid JSON",
    );
    a.terminal(
        "terminal deep",
        deep_object(1000).as_bytes(),
        500,
        "nested deeper",
    );
    // Extra fields are the platform's to add: forwarded unchanged to the merchant.
    let mut extra = verify.clone();
    extra["kiosk"] = json!({"id": 7, "lang": "kk"});
    a.terminal("terminal extra fields", &sign(&extra), 0, "");
    merchant_requests += 1;

    a.finish(merchant_requests);
}

fn deep_object(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// Reads until end-of-file, a whole answer (head and its Content-Length of body) or
/// `limit`; returns what came and how long it took.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if complete(&out) || started.elapsed() > limit {
            break;
        }
    }
    (out, started.elapsed())
}

/// Whether `answer` holds a whole HTTP/1.1 response.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= end + 4 + len
}

#[test]
fn slow_truncated_and_endless_requests_are_cut_by_the_timeouts() {
    let mut a = Attack::start();
    let addr = a.g.addr;
    // Slowloris: a header byte every 100 ms never completes within 500 ms.
    let mut slowloris = TcpStream::connect(addr).unwrap();
    slowloris
        .write_all(b"POST /callbacks HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let drip = std::thread::spawn(move || {
        let started = Instant::now();
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if slowloris.write_all(&[*b]).is_err() {
                return (true, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (false, started.elapsed())
    });
    // A chunked body whose chunks never end: 408 after body_read_timeout.
    let mut endless = TcpStream::connect(addr).unwrap();
    endless
        .write_all(b"POST /callbacks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut feeder = endless.try_clone().unwrap();
    let feed = std::thread::spawn(move || {
        for _ in 0..100 {
            if feeder.write_all(b"1\r\n{\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // A body shorter than its Content-Length, the client then silent: 408.
    let mut short = TcpStream::connect(addr).unwrap();
    short
        .write_all(
            b"POST /callbacks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"project_id\":",
        )
        .unwrap();
    // A body cut by the client's close: no request, nothing stored.
    let mut cut = TcpStream::connect(addr).unwrap();
    cut.write_all(
        b"POST /callbacks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"project_id\":",
    )
    .unwrap();
    cut.shutdown(std::net::Shutdown::Write).unwrap();
    // A chunked body over the limit: 413 once the limit is passed.
    let mut chunked_big = TcpStream::connect(addr).unwrap();
    chunked_big
        .write_all(b"POST /callbacks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..10 {
        // The server may answer 413 and close before the last chunks.
        let _ = chunked_big.write_all(b"1000\r\n");
        let _ = chunked_big.write_all(&[b' '; 4096]);
        let _ = chunked_big.write_all(b"\r\n");
    }
    // A declared length over the limit: 413 before any body byte is read.
    let mut declared = TcpStream::connect(addr).unwrap();
    declared
        .write_all(b"POST /callbacks HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
        .unwrap();
    // Headers hyper refuses outright.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
        .unwrap();
    let mut many_headers = TcpStream::connect(addr).unwrap();
    let mut head = b"POST /callbacks HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    many_headers.write_all(&head).unwrap();

    // Valid traffic meanwhile.
    for _ in 0..5 {
        a.valid();
    }
    let limit = Duration::from_secs(10);
    let (answer, took) = read_until_closed(&mut endless, limit);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "endless chunks: {answer}"
    );
    assert!(
        answer.contains(r#""reason":"body not received within 500ms""#),
        "{answer}"
    );
    assert!(took < limit, "endless chunks held {took:?}");
    feed.join().unwrap();
    let (answer, _) = read_until_closed(&mut short, limit);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"));
    let (answer, _) = read_until_closed(&mut cut, limit);
    let answer = String::from_utf8_lossy(&answer);
    // hyper sees the body end early: 400 with the reason, or the connection closed.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "cut body: {answer}"
    );
    let (answer, _) = read_until_closed(&mut chunked_big, limit);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("over 32768 bytes"),
        "{answer}"
    );
    let (answer, _) = read_until_closed(&mut declared, limit);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"));
    let (answer, _) = read_until_closed(&mut garbage, limit);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "garbage: {answer}"
    );
    let (answer, _) = read_until_closed(&mut many_headers, limit);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "200 headers: {answer}");
    let (cut_off, took) = drip.join().unwrap();
    assert!(cut_off, "the slowloris client was never cut off ({took:?})");
    assert!(took < limit, "slowloris held {took:?}");
    for _ in 0..5 {
        a.valid();
    }
    // Slowloris, endless, short, cut, chunked over the limit, declared over the limit,
    // not HTTP, too many headers.
    a.tried += 8;
    a.finish(0);
}

#[test]
fn thousands_of_idle_connections_are_capped_and_timed_out() {
    let (sink, merchant) = (Endpoint::ok(), Merchant::start());
    let cap = 32;
    let g = Gateway::start_with(
        &projects(&sink, &merchant),
        &format!("{LIMITS}max_connections = {cap}\n"),
    );
    let idle: Vec<TcpStream> = (0..3000)
        .map(|_| TcpStream::connect(g.addr).unwrap())
        .collect();
    // Over the cap: closed at once and counted; within it, closed once silent for
    // header_read_timeout (which frees slots for later ones): every one is accounted.
    g.wait_metric("cbgate_connections_rejected_total", &[], LONG, |v| v > 0.0);
    // The ones within the cap say nothing: the header timeout closes them.
    let started = Instant::now();
    for mut s in idle {
        let (_, took) = read_until_closed(&mut s, Duration::from_secs(10));
        assert!(
            took < Duration::from_secs(10),
            "an idle connection was kept open"
        );
    }
    let rejected = g.metric("cbgate_connections_rejected_total", &[]);
    let silent = g.metric("cbgate_idle_connections_closed_total", &[]);
    assert_eq!(
        rejected + silent,
        3000.0,
        "{rejected} refused, {silent} closed for silence"
    );
    assert!(silent >= cap as f64, "{silent}");
    eprintln!(
        "3000 idle connections: {rejected} refused at once, all closed in {:?}",
        started.elapsed()
    );
    // Then valid traffic is served again.
    let body = sign(&callback(1));
    let started = Instant::now();
    loop {
        match Conn::open(g.addr).and_then(|mut c| c.post("/callbacks", &body)) {
            Ok((200, answer)) => {
                assert_eq!(answer, r#"{"status":"accepted"}"#);
                break;
            }
            other => {
                assert!(
                    started.elapsed() < LONG,
                    "not served after the idle flood: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert!(sink.wait_delivered(1, LONG));
}

/// An HTTP/2 connection over TLS with ALPN h2 to `addr`.
async fn h2_connect(tls: &TestTls, addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in cbgate::outbound::load_certificates(&tls.ca_file()).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One POST over h2: the status and body, or the stream's error.
async fn h2_post(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), h2::Error> {
    let request = hyper::Request::post(path)
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut ready = send.clone().ready().await?;
    let (response, mut stream) = ready.send_request(request, false)?;
    stream.send_data(bytes::Bytes::from(body), true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok((status, out))
}

#[test]
fn http2_rapid_reset_and_huge_header_lists_are_refused_and_valid_traffic_flows() {
    let tls = TestTls::new();
    let (cert, key) = tls.server_files();
    let (sink, merchant) = (Endpoint::ok(), Merchant::start());
    let g = Gateway::start_with(
        &projects(&sink, &merchant),
        &format!(
            "{LIMITS}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut accepted = Vec::new();
    rt.block_on(async {
        let mut send = h2_connect(&tls, g.addr).await;
        let body = sign(&callback(1));
        let (status, answer) = h2_post(&mut send, "https://localhost/callbacks", body.clone())
            .await
            .unwrap();
        assert_eq!(
            (status, &answer[..]),
            (200, &br#"{"status":"accepted"}"#[..])
        );
        accepted.push(body);

        // Rapid reset (CVE-2023-44487): open streams and cancel them at once, 2000
        // times. The server answers with GOAWAY once the resets pile up.
        let rapid = h2_connect(&tls, g.addr).await;
        let mut refused = false;
        let started = Instant::now();
        for i in 0..2000 {
            let request = hyper::Request::post("https://localhost/callbacks")
                .body(())
                .unwrap();
            let Ok(mut ready) = rapid.clone().ready().await else {
                refused = true;
                break;
            };
            match ready.send_request(request, false) {
                Ok((response, mut stream)) => {
                    let _ = stream.send_data(bytes::Bytes::from_static(b"{\"project_id\":"), false);
                    stream.send_reset(h2::Reason::CANCEL);
                    drop(response);
                }
                Err(_) => {
                    refused = true;
                    break;
                }
            }
            if i % 100 == 99 {
                tokio::task::yield_now().await;
            }
        }
        eprintln!(
            "rapid reset: refused = {refused} after {:?}",
            started.elapsed()
        );

        // A header list over 16 KiB: refused (the stream or the connection), bounded.
        let heavy = h2_connect(&tls, g.addr).await;
        let mut request = hyper::Request::post("https://localhost/callbacks");
        for i in 0..2000 {
            request = request.header(format!("x-h{i}"), "v".repeat(64));
        }
        let request = request.body(()).unwrap();
        let outcome = async {
            let mut ready = heavy.clone().ready().await?;
            let (response, _stream) = ready.send_request(request, true)?;
            response.await.map(|r| r.status().as_u16())
        }
        .await;
        assert!(
            !matches!(outcome, Ok(200)),
            "a 140 KB header list was served: {outcome:?}"
        );
        eprintln!("huge header list: {outcome:?}");

        // Valid traffic on a fresh h2 connection, and on the first one still.
        let mut fresh = h2_connect(&tls, g.addr).await;
        for op in 2..6 {
            let body = sign(&callback(op));
            let conn = if op % 2 == 0 { &mut fresh } else { &mut send };
            let (status, answer) = h2_post(conn, "https://localhost/callbacks", body.clone())
                .await
                .unwrap();
            assert_eq!(
                (status, &answer[..]),
                (200, &br#"{"status":"accepted"}"#[..])
            );
            accepted.push(body);
        }
        let (status, _) = h2_post(&mut fresh, "https://localhost/callbacks", b"{".to_vec())
            .await
            .unwrap();
        assert_eq!(status, 400);
    });
    drop(rt);
    assert_eq!(
        g.metric("cbgate_requests_total", &[("outcome", "accepted")]),
        accepted.len() as f64
    );
    assert!(sink.wait_delivered(accepted.len(), LONG), "{}", g.log());
    g.wait_idle(LONG);
    let mut got = sink.delivered();
    got.sort();
    accepted.sort();
    assert_eq!(got, accepted);
    assert!(!g.log().contains("panicked"), "{}", g.log());
}
