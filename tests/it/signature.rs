//! Byte-exact canonical strings and signatures for every shared vector, and the
//! properties a signature must have on random payloads.

use cbgate::signature::{self, Canonicalizer, Order, Secrets, VerifyError};
use proptest::prelude::*;
use serde_json::Value;

use crate::support::vectors;

#[test]
fn every_shared_vector_matches_byte_for_byte() {
    let mut canon = Canonicalizer::default();
    let mut failures = Vec::new();
    let all = vectors();
    for v in &all {
        canon.load(v.payload_json.as_bytes()).unwrap();
        // The vectors are what the SDKs' signers produce.
        let got = canon.canonical(Order::Signer).to_vec();
        if got != v.canonical.as_bytes() {
            failures.push(format!(
                "{}: canonical\n  want {}\n  got  {}",
                v.name,
                v.canonical,
                String::from_utf8_lossy(&got)
            ));
            continue;
        }
        let sig = signature::sign_canonical(&v.secret, &got);
        if sig != v.signature {
            failures.push(format!("{}: signature {sig} != {}", v.name, v.signature));
        }
        let signed = signature::attach(v.payload_json.as_bytes(), &v.secret).unwrap();
        // A verifier removes nested `signature` keys too (PHP callback class); the one
        // vector with such keys passes through the fallback orders.
        let check = signature::verify(&mut canon, &signed, &Secrets::new(&[&v.secret]), true);
        if check.is_err() {
            failures.push(format!("{}: attached signature does not verify", v.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors fail:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// Random JSON objects shaped like platform payloads: nested objects and arrays of
/// strings, integers, booleans and nulls, keys from a lowercase alphabet.
fn payload() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "[a-z0-9 :;]{0,6}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ];
    let tree = leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..13).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map("[a-z]{1,4}", tree, 1..8)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .prop_filter("signature and frame_mode are not data", |v| {
            !v.to_string().contains("\"signature\"") && !v.to_string().contains("\"frame_mode\"")
        })
}

/// Writes JSON by hand so key order and whitespace can vary.
fn write(v: &Value, reverse: bool, ws: &str, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            out.push_str(ws);
            let mut keys: Vec<_> = m.keys().collect();
            if reverse {
                keys.reverse();
            }
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    out.push_str(ws);
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push_str(ws);
                out.push(':');
                out.push_str(ws);
                write(&m[*k], reverse, ws, out);
            }
            out.push_str(ws);
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    out.push_str(ws);
                }
                write(e, reverse, ws, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn with_signature(v: &Value, sig: &str) -> Value {
    let mut v = v.clone();
    v.as_object_mut()
        .unwrap()
        .insert("signature".into(), sig.into());
    v
}

fn sign(v: &Value) -> String {
    signature::sign(
        &mut Canonicalizer::default(),
        v.to_string().as_bytes(),
        "prop-secret",
    )
    .unwrap()
}

fn check(body: &str) -> Result<signature::Match, VerifyError> {
    signature::verify(
        &mut Canonicalizer::default(),
        body.as_bytes(),
        &Secrets::new(&["prop-secret"]),
        false,
    )
}

/// Every leaf of `v` as a JSON pointer.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| leaves(c, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| leaves(c, format!("{at}/{i}"), out)),
        _ => out.push(at),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn sign_then_verify_holds_whatever_the_layout(v in payload(), reverse: bool, spaced: bool) {
        let sig = sign(&v);
        let mut body = String::new();
        write(&with_signature(&v, &sig), reverse, if spaced { " \n\t" } else { "" }, &mut body);
        prop_assert_eq!(check(&body).map(|m| m.order), Ok(Order::Php));
    }

    #[test]
    fn changing_any_leaf_breaks_it(v in payload(), pick: prop::sample::Index) {
        let mut all = Vec::new();
        leaves(&v, String::new(), &mut all);
        prop_assume!(!all.is_empty());
        let sig = sign(&v);
        let mut changed = v.clone();
        let leaf = changed.pointer_mut(pick.get(&all).as_str()).unwrap();
        *leaf = match leaf.take() {
            Value::String(s) => Value::from(format!("{s}Z")),
            Value::Number(n) => Value::from(n.as_i64().unwrap().wrapping_add(1)),
            Value::Bool(b) => Value::from(!b),
            _ => Value::from("Z"),
        };
        prop_assert_eq!(check(&with_signature(&changed, &sig).to_string()), Err(VerifyError::Mismatch));
    }

    #[test]
    fn renaming_a_key_or_reordering_an_array_breaks_it(v in payload(), pick: prop::sample::Index) {
        let sig = sign(&v);
        let mut all = Vec::new();
        leaves(&v, String::new(), &mut all);
        prop_assume!(!all.is_empty());
        // Rename the top-level key above the picked leaf ("Z" never occurs in keys).
        let leaf = pick.get(&all).clone();
        let top = leaf.split('/').nth(1).unwrap().to_string();
        let mut renamed = v.clone();
        let m = renamed.as_object_mut().unwrap();
        let moved = m.remove(&top).unwrap();
        m.insert(format!("{top}Z"), moved);
        prop_assert_eq!(check(&with_signature(&renamed, &sig).to_string()), Err(VerifyError::Mismatch));

        // Swap the first two elements of the first array whose swap changes the string.
        let mut canon = Canonicalizer::default();
        canon.load(v.to_string().as_bytes()).unwrap();
        let before = canon.canonical(Order::Php).to_vec();
        for path in all.iter() {
            let parts: Vec<&str> = path.split('/').collect();
            for cut in 1..parts.len() {
                let parent = parts[..cut].join("/");
                let mut swapped = v.clone();
                if let Some(Value::Array(a)) = swapped.pointer_mut(&parent) {
                    if a.len() < 2 { continue; }
                    a.swap(0, 1);
                    canon.load(swapped.to_string().as_bytes()).unwrap();
                    if canon.canonical(Order::Php) != before.as_slice() {
                        prop_assert_eq!(check(&with_signature(&swapped, &sig).to_string()), Err(VerifyError::Mismatch));
                        return Ok(());
                    }
                }
            }
        }
    }
}
