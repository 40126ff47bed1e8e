//! Merchant-side faults and the admin API under bad tokens (issue 16): an endpoint
//! that resets, hangs, redirects, refuses, errs, answers a huge or a slow body gets
//! the retry class of `delivery::attempt`, counted in its metric, and every event is
//! delivered exactly once it behaves; the admin API answers 401 with a JSON error to
//! every wrong, empty or oversized token.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::endpoint::{Endpoint, Reply};
use crate::support::{ADMIN_TOKEN, Gateway, request, signed_for};

const SECRET: &str = "faults-secret";
const PROJECT: u64 = 79;
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LONG: Duration = Duration::from_secs(30);

/// Each fault, the reply that makes it, and the failure class cbgate must count.
fn faults() -> Vec<(&'static str, Reply, &'static str)> {
    let ms = Duration::from_millis;
    vec![
        ("reset", Reply::Close, "io"),
        // Far past the 1 s attempt timeout: a timeout whatever the machine's speed.
        ("hang", Reply::Hang(Duration::from_secs(5)), "timeout"),
        ("redirect", Reply::Redirect(302), "http_other"),
        ("gone", Reply::Status(410), "http_4xx"),
        ("throttled", Reply::Status(429), "http_4xx"),
        ("error", Reply::Status(500), "http_5xx"),
        ("unavailable", Reply::Status(503), "http_5xx"),
        (
            "huge_error",
            Reply::Body(500, 8 << 20, Duration::ZERO),
            "http_5xx",
        ),
        (
            "slow_error",
            Reply::Body(502, 64 << 10, ms(200)),
            "http_5xx",
        ),
    ]
}

fn callback(op: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"project_id":{PROJECT},"payment":{{"id":"pay-{op}","status":"success","method":"kassa24"}},"operation":{{"id":{op},"type":"sale","status":"success"}}}}"#
    );
    signed_for(PROJECT, &json, SECRET)
}

#[test]
fn every_merchant_fault_gets_its_class_and_nothing_is_lost() {
    // Every endpoint fails its first two attempts its own way, then takes everything;
    // two more answer 2xx with a huge and with a slow body (delivered: the status
    // decides).
    let faults = faults();
    let endpoints: Vec<(&str, Endpoint, &str)> = faults
        .into_iter()
        .map(|(name, reply, class)| {
            let e = Endpoint::start(move |n, _| {
                if n < 2 {
                    reply.clone()
                } else {
                    Reply::Status(200)
                }
            });
            (name, e, class)
        })
        .chain([
            (
                "huge_ok",
                Endpoint::start(|_, _| Reply::Body(200, 8 << 20, Duration::ZERO)),
                "ok",
            ),
            (
                "slow_ok",
                Endpoint::start(|_, _| Reply::Body(204, 48 << 10, Duration::from_millis(100))),
                "ok",
            ),
        ])
        .collect();
    let mut config = format!(
        "[delivery]\nschedule = [\"0s\", \"50ms\", \"100ms\"]\nrepeat_every = \"100ms\"\n\
         timeout = \"1s\"\nconnect_timeout = \"1s\"\n\n\
         [[projects]]\nid = {PROJECT}\nsecrets = [\"{SECRET}\"]\n"
    );
    for (name, e, _) in &endpoints {
        config.push_str(&format!(
            "\n[[projects.endpoints]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{WHSEC}\"\n",
            e.url()
        ));
    }
    let g = Gateway::start(&config);
    let bodies: Vec<_> = (0..3).map(|i| callback(100 + i)).collect();
    for b in &bodies {
        assert_eq!(g.post("/callbacks", b).1, r#"{"status":"accepted"}"#);
    }
    let mut want = bodies.clone();
    want.sort();
    for (name, e, _) in &endpoints {
        assert!(e.wait_delivered(bodies.len(), LONG), "{name}\n{}", g.log());
    }
    g.wait_idle(LONG);
    for (name, e, class) in &endpoints {
        // Each event answered 2xx exactly once: nothing lost, nothing twice.
        let mut got = e.delivered();
        got.sort();
        assert_eq!(got, want, "{name}");
        let key = format!("{PROJECT}/{name}");
        let failures = |class: &str| {
            g.metric(
                "cbgate_delivery_failures_total",
                &[("endpoint", &key), ("class", class)],
            )
        };
        if *class == "ok" {
            assert_eq!(
                g.metric("cbgate_delivery_failures_total", &[("endpoint", &key)]),
                0.0,
                "{name}"
            );
        } else {
            assert_eq!(failures(class), 2.0, "{name}: {class} not counted twice");
            assert_eq!(
                g.metric("cbgate_delivery_failures_total", &[("endpoint", &key)]),
                2.0,
                "{name}: another class counted"
            );
        }
        assert_eq!(
            g.metric(
                "cbgate_delivery_attempts_total",
                &[("endpoint", &key), ("result", "success")]
            ),
            bodies.len() as f64,
            "{name}"
        );
    }
    // A redirect is not followed: the merchant's URL is the contract.
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[test]
fn the_admin_api_answers_every_bad_token_with_401_and_a_json_error() {
    let g = Gateway::start(&format!(
        "[[projects]]\nid = {PROJECT}\nsecrets = [\"{SECRET}\"]\n"
    ));
    let long = "A".repeat(16 * 1024);
    let prefixed = format!("{ADMIN_TOKEN}x");
    let truncated = ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1].to_string();
    let bearer_long = format!("Bearer {long}");
    let bearer_prefixed = format!("Bearer {prefixed}");
    let bearer_truncated = format!("Bearer {truncated}");
    let lower = format!("bearer {ADMIN_TOKEN}");
    let basic = format!("Basic {ADMIN_TOKEN}");
    let no_space = format!("Bearer{ADMIN_TOKEN}");
    let two = format!("Bearer {ADMIN_TOKEN}, Bearer {ADMIN_TOKEN}");
    let auths: Vec<Option<&str>> = vec![
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some("Bearer wrong"),
        Some(&bearer_long),
        Some(&bearer_prefixed),
        Some(&bearer_truncated),
        Some(&lower),
        Some(&basic),
        Some(&no_space),
        Some(&two),
        Some(&long),
    ];
    let mut tried = 0;
    for path in [
        "/admin/endpoints",
        "/admin/dead-letters",
        "/admin/events/1",
        "/admin/nope",
    ] {
        for method in ["GET", "POST"] {
            for auth in &auths {
                let headers: Vec<(&str, &str)> =
                    auth.iter().map(|a| ("Authorization", *a)).collect();
                let (status, body) = request(g.admin, method, path, &headers, b"");
                assert_eq!(
                    status,
                    401,
                    "{method} {path} {:?}",
                    auth.map(|a| &a[..a.len().min(40)])
                );
                let v: Value = serde_json::from_str(&body).expect("a JSON error");
                assert_eq!(v["error"], "missing or wrong bearer token");
                tried += 1;
            }
        }
    }
    // Bytes that are not text in the header value.
    let mut s = std::net::TcpStream::connect(g.admin).unwrap();
    s.write_all(b"GET /admin/endpoints HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    s.set_read_timeout(Some(LONG)).unwrap();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"missing or wrong bearer token"}"#),
        "{answer}"
    );
    // The right token still works, and bad arguments are JSON errors too.
    assert_eq!(g.admin_get("/admin/endpoints").0, 200);
    for path in [
        "/admin/events/abc",
        "/admin/events/99999999999999999999999",
        "/admin/nope",
    ] {
        let (status, body) = g.admin_get(path);
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            serde_json::from_str::<Value>(&body).is_ok(),
            "{path}: {body}"
        );
    }
    let (status, body) =
        g.admin_get("/admin/dead-letters?limit=-5&after=x:999999999999999999999&endpoint=%zz");
    assert_eq!(status, 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_ok());
    assert!(!g.log().contains("panicked"), "{}", g.log());
    eprintln!("admin: {tried} bad tokens answered 401");
}
