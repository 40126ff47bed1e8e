//! A merchant's answer to a terminal request, checked against the protocol without
//! building a tree (the common case is relayed byte for byte) and moved into the
//! method's dialect when it gives its reason in the other one's field.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::error::Category;

use super::dialect::Dialect;
use super::{Answer, Kind};

/// The fields of a merchant answer that the protocol checks; the rest passes through.
#[derive(Default)]
struct Fields {
    code: Option<Value>,
    currency: Option<Value>,
    payment_id: Option<Value>,
    /// Present and not null.
    message: bool,
    error_description: bool,
}

/// `Fields` read from a JSON object only: serde's derived struct also accepts a
/// sequence (`[404, null, null, "x"]` fills the fields by position), which the
/// protocol does not allow and which would be relayed to the kiosk as an array.
/// Every other value is read too (`Checked`): the answer is relayed as written.
struct AnswerFields(Fields);

/// The keys the protocol names.
enum Key {
    Code,
    Currency,
    PaymentId,
    Message,
    ErrorDescription,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "code" => Key::Code,
                    "currency" => Key::Currency,
                    "payment_id" => Key::PaymentId,
                    "message" => Key::Message,
                    "error_description" => Key::ErrorDescription,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(Name)
    }
}

/// Any JSON value, read and dropped with its numbers range-checked (serde's
/// `IgnoredAny` skips a number's digits unread: `1e400` passed, and a platform
/// parser would fail on the relayed answer). Holds whether the value was not null.
struct Checked(bool);

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked(true))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked(true))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked(true))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Checked, E> {
                if v.is_finite() {
                    Ok(Checked(true))
                } else {
                    Err(E::custom("number out of range"))
                }
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked(true))
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked(true))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_entry::<Checked, Checked>()?.is_some() {}
                Ok(Checked(true))
            }
        }
        d.deserialize_any(Any)
    }
}

impl<'de> Deserialize<'de> for AnswerFields {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = AnswerFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnswerFields, A::Error> {
                let mut f = Fields::default();
                // Two copies of a protocol field: which one the platform would read is
                // unknowable.
                let mut seen = [false; 5];
                let mut once = |i: usize, name: &'static str| {
                    if std::mem::replace(&mut seen[i], true) {
                        Err(de::Error::duplicate_field(name))
                    } else {
                        Ok(())
                    }
                };
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Code => {
                            once(0, "code")?;
                            f.code = map.next_value()?;
                        }
                        Key::Currency => {
                            once(1, "currency")?;
                            f.currency = map.next_value()?;
                        }
                        Key::PaymentId => {
                            once(2, "payment_id")?;
                            f.payment_id = map.next_value()?;
                        }
                        Key::Message => {
                            once(3, "message")?;
                            f.message = map.next_value::<Checked>()?.0;
                        }
                        Key::ErrorDescription => {
                            once(4, "error_description")?;
                            f.error_description = map.next_value::<Checked>()?.0;
                        }
                        Key::Other => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(AnswerFields(f))
            }
        }
        d.deserialize_map(ObjectOnly)
    }
}

/// A merchant answer that passed: its code, and where it gives a reason.
#[derive(Clone, Copy)]
pub(crate) struct Valid {
    code: u16,
    message: bool,
    error_description: bool,
}

/// Checks a merchant answer against the protocol without building it as a tree: a
/// valid answer is relayed as the merchant wrote it.
pub(crate) fn validate(kind: Kind, bytes: &[u8]) -> Result<Valid, String> {
    // The whole answer is UTF-8, not only the fields read: it may be relayed as written.
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let AnswerFields(answer) = serde_json::from_str(text).map_err(|e| match e.classify() {
        Category::Data if bytes.trim_ascii_start().starts_with(b"{") => e.to_string(),
        Category::Data => "not a JSON object".to_string(),
        _ => "not JSON".to_string(),
    })?;
    let code = answer
        .code
        .as_ref()
        .and_then(Value::as_u64)
        .ok_or("no integer code")?;
    if ![0, 400, 404, 500].contains(&code) {
        return Err(format!("code {code} is not one of 0, 400, 404, 500"));
    }
    let present = |f: &Option<Value>| match f {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(_)) => true,
        _ => false,
    };
    if code == 0 && kind == Kind::Verify && !present(&answer.currency) {
        return Err("verify success without currency".into());
    }
    if code == 0 && kind == Kind::CheckDeposit && !present(&answer.payment_id) {
        return Err("check_deposit success without payment_id".into());
    }
    Ok(Valid {
        code: code as u16,
        message: answer.message,
        error_description: answer.error_description,
    })
}

/// The merchant's answer in `dialect`: as it came, unless its reason is in the other
/// dialect's field. An `Err` is a reason to call the answer malformed (not expected
/// after `validate`, but merchant bytes never reach a panic).
pub(crate) fn relay(dialect: Dialect, valid: Valid, bytes: Bytes) -> Result<Answer, String> {
    if !dialect.foreign(valid.message, valid.error_description) {
        return Ok(Answer {
            code: valid.code,
            body: bytes,
        });
    }
    let answer: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok(Answer::new(dialect.translate(answer)))
}

/// `validate` and `relay` for the fuzz target: whatever passes is relayed in each
/// dialect as a JSON object carrying the validated code.
#[doc(hidden)]
pub fn fuzz_answer(bytes: &[u8]) {
    for kind in [Kind::Verify, Kind::CheckDeposit] {
        let Ok(valid) = validate(kind, bytes) else {
            continue;
        };
        for dialect in [Dialect::Kassa24, Dialect::PayDala] {
            let answer = relay(dialect, valid, Bytes::copy_from_slice(bytes))
                .expect("a validated answer relays");
            let value: Value = serde_json::from_slice(&answer.body).expect("relayed JSON");
            assert!(value.is_object(), "relayed a non-object: {value}");
            assert_eq!(answer.code, valid.code);
            assert_eq!(
                value.get("code").and_then(Value::as_u64),
                Some(valid.code as u64)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn merchant_answers_are_checked() {
        assert!(validate(Kind::Verify, br#"{"code":0,"currency":"KZT"}"#).is_ok());
        assert!(validate(Kind::Verify, br#"{"code":0}"#).is_err());
        assert!(validate(Kind::CheckDeposit, br#"{"code":0,"payment_id":"p"}"#).is_ok());
        assert!(validate(Kind::CheckDeposit, br#"{"code":0,"payment_id":""}"#).is_err());
        assert!(validate(Kind::Verify, br#"{"code":404,"message":"no"}"#).is_ok());
        assert!(validate(Kind::Verify, br#"{"code":200}"#).is_err());
        assert!(validate(Kind::Verify, br#"{"code":"0","currency":"KZT"}"#).is_err());
        assert!(validate(Kind::Verify, b"<html>").is_err_and(|e| e == "not JSON"));
        assert!(validate(Kind::Verify, b"[0]").is_err_and(|e| e == "not a JSON object"));
        // Two codes: which one the platform would read is unknowable.
        assert!(validate(Kind::Verify, br#"{"code":0,"code":500,"currency":"KZT"}"#).is_err());
        assert!(
            validate(
                Kind::Verify,
                b"{\"code\":0,\"currency\":\"KZT\",\"x\":\"\xff\"}"
            )
            .is_err_and(|e| e == "not UTF-8")
        );
    }

    /// Found by the `merchant_answer` fuzz target: a number out of f64's range in a
    /// field cbgate does not read was skipped unread, and the answer relayed to the
    /// platform as JSON its parser refuses.
    #[test]
    fn an_answer_with_a_number_out_of_range_anywhere_is_malformed() {
        let crash = include_bytes!("../../fuzz/regressions/merchant_answer/number-out-of-range");
        let verdict = validate(Kind::Verify, crash).map(|_| ());
        assert!(verdict.is_err(), "{verdict:?}");
        for raw in [
            &br#"{"code":0,"currency":"KZT","x":1e400}"#[..],
            br#"{"code":0,"currency":"KZT","x":[1,{"y":-1e400}]}"#,
            br#"{"code":404,"message":1e999}"#,
        ] {
            assert!(
                validate(Kind::Verify, raw).is_err(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        // Large but finite numbers, deep but bounded nesting, escapes: fine.
        let ok = br#"{"code":0,"currency":"KZT","x":1.7e308,"y":[[[{"\u0063ode":1}]]],"n":null}"#;
        assert!(validate(Kind::Verify, ok).is_ok());
        fuzz_answer(ok);
        fuzz_answer(crash);
    }

    /// Issue 16: a derived struct also reads a JSON array by position, so
    /// `[404, null, null, "x", null]` passed and panicked in `relay`, and
    /// `[0, "KZT", null, null, null]` reached the kiosk as an array.
    #[test]
    fn an_answer_that_is_a_json_array_is_malformed_in_every_dialect() {
        for raw in [
            &br#"[404, null, null, "x", null]"#[..],
            br#"[0, "KZT", null, null, null]"#,
            br#"[0, "KZT", "p1", null, null]"#,
            br#"  [500]"#,
        ] {
            for kind in [Kind::Verify, Kind::CheckDeposit] {
                assert_eq!(
                    validate(kind, raw).err().as_deref(),
                    Some("not a JSON object"),
                    "{}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
        // relay never panics, whatever it is given.
        for dialect in [Dialect::Kassa24, Dialect::PayDala] {
            let valid = Valid {
                code: 404,
                message: dialect == Dialect::Kassa24,
                error_description: dialect == Dialect::PayDala,
            };
            let raw = Bytes::from_static(br#"[404, null, null, "x", null]"#);
            assert!(relay(dialect, valid, raw).is_err());
        }
    }

    #[test]
    fn a_valid_answer_is_relayed_as_written_unless_it_speaks_the_other_dialect() {
        let relayed = |dialect, raw: &'static [u8]| {
            let valid = validate(Kind::Verify, raw).unwrap();
            relay(dialect, valid, Bytes::from_static(raw)).unwrap()
        };
        let raw = br#"{ "code": 0, "currency": "KZT", "additional_customer_id": "HFVDW42345" }"#;
        let answer = relayed(Dialect::PayDala, raw);
        assert_eq!((answer.code, &answer.body[..]), (0, &raw[..]));
        let answer = relayed(
            Dialect::PayDala,
            br#"{"code":404,"error_description":"gone"}"#,
        );
        let value: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(
            (answer.code, value),
            (404, serde_json::json!({"code": 404, "message": "gone"}))
        );
    }
}
