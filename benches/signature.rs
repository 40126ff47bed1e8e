//! Signature check of the seed's Kassa24 Terminal callback (about 1 KB as the platform
//! sends it): cbgate's single-parse verify, its parts, and the naive way
//! (serde_json::Value, a String per entry, sort, join) as the in-run baseline.

use criterion::{Criterion, criterion_group, criterion_main};
use ring::hmac;
use std::hint::black_box;

use cbgate::signature::{self, Canonicalizer, Order, Secrets};

const SECRET: &str = "bench-secret";

/// The seed callback from the shared vectors, pretty-printed and signed.
fn seed_callback() -> Vec<u8> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/signature.json"
    ))
    .expect("tests/data/signature.json");
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vector = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| {
            v["name"]
                .as_str()
                .unwrap()
                .starts_with("seed:kassa24_terminal(Monetix)#7:callback")
        })
        .expect("seed Kassa24 Terminal callback vector");
    let payload: serde_json::Value =
        serde_json::from_str(vector["payload_json"].as_str().unwrap()).unwrap();
    let pretty = serde_json::to_vec_pretty(&payload).unwrap();
    let signed = signature::attach(&pretty, SECRET).unwrap();
    // Keep the platform's pretty layout: re-indent the signed object.
    let value: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    serde_json::to_vec_pretty(&value).unwrap()
}

/// What people write first: a tree of Values, a String per entry, sort, join.
fn naive_verify(body: &[u8], secret: &str) -> bool {
    fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "signature" || k == "frame_mode" {
                        continue;
                    }
                    let key = k.replace(':', "::");
                    let p = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}:{key}")
                    };
                    flatten(&p, v, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let p = if prefix.is_empty() {
                        i.to_string()
                    } else {
                        format!("{prefix}:{i}")
                    };
                    flatten(&p, v, out);
                }
            }
            serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
            serde_json::Value::Bool(b) => {
                out.push((prefix.to_string(), if *b { "1" } else { "0" }.into()))
            }
            serde_json::Value::Null => out.push((prefix.to_string(), String::new())),
            serde_json::Value::Number(n) => out.push((prefix.to_string(), n.to_string())),
        }
    }
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    let provided = value["signature"].as_str().unwrap().to_string();
    let mut entries = Vec::new();
    flatten("", &value, &mut entries);
    entries.sort_by(|a, b| signature::natural_compare(a.0.as_bytes(), b.0.as_bytes()));
    let joined = entries
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(";");
    signature::sign_canonical(secret, joined.as_bytes()) == provided
}

fn bench(c: &mut Criterion) {
    let body = seed_callback();
    let secrets = Secrets::new(&[SECRET]);
    let mut canon = Canonicalizer::default();
    assert!(signature::verify(&mut canon, &body, &secrets, false).is_ok());
    assert!(naive_verify(&body, SECRET));
    canon.load(&body).unwrap();
    let canonical = canon.canonical(Order::Php).to_vec();
    let key = hmac::Key::new(hmac::HMAC_SHA512, SECRET.as_bytes());
    eprintln!(
        "body {} bytes, canonical string {} bytes",
        body.len(),
        canonical.len()
    );

    let mut g = c.benchmark_group("signature");
    g.bench_function("verify_single_parse", |b| {
        b.iter(|| signature::verify(&mut canon, black_box(&body), &secrets, true).unwrap())
    });
    g.bench_function("canonicalise_only", |b| {
        b.iter(|| {
            canon.load(black_box(&body)).unwrap();
            canon.canonical(Order::Php).len()
        })
    });
    g.bench_function("parse_and_flatten_only", |b| {
        b.iter(|| canon.load(black_box(&body)).unwrap())
    });
    g.bench_function("hmac_sha512_only", |b| {
        b.iter(|| hmac::sign(&key, black_box(&canonical)))
    });
    g.bench_function("naive_serde_value_baseline", |b| {
        b.iter(|| assert!(naive_verify(black_box(&body), SECRET)))
    });
    // The kiosk's verify, as the terminal load tests send it: the check per terminal request.
    let kiosk = signature::attach(
        br#"{"type": "verify", "customer_id": "7123456789", "project_id": 1234}"#,
        SECRET,
    )
    .unwrap();
    g.bench_function("verify_terminal_request", |b| {
        b.iter(|| signature::verify(&mut canon, black_box(&kiosk), &secrets, true).unwrap())
    });
    // Timing of a refusal: a forged signature that differs from the right one in its
    // first byte against one that differs in its last (issue 16). The tag compare is
    // ring's constant-time one, so both should cost the same (the fallback orders run
    // in both, as for any wrong signature).
    let good: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let real = good["signature"].as_str().unwrap().to_string();
    let forged = |at: usize| {
        let mut sig = real.clone().into_bytes();
        sig[at] = if sig[at] == b'A' { b'B' } else { b'A' };
        let mut v = good.clone();
        v["signature"] = serde_json::Value::String(String::from_utf8(sig).unwrap());
        serde_json::to_vec_pretty(&v).unwrap()
    };
    // 64 bytes are 86 base64 characters and "==": 85 is the last that carries bits.
    let (first, last) = (forged(0), forged(85));
    assert_eq!(first.len(), last.len());
    for bad in [&first, &last] {
        assert!(signature::verify(&mut canon, bad, &secrets, true).is_err());
    }
    g.bench_function("refuse_first_byte_differs", |b| {
        b.iter(|| signature::verify(&mut canon, black_box(&first), &secrets, true).unwrap_err())
    });
    g.bench_function("refuse_last_byte_differs", |b| {
        b.iter(|| signature::verify(&mut canon, black_box(&last), &secrets, true).unwrap_err())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
