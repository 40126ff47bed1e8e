//! A callback that passed the signature check, and the only way to get one: the body
//! is parsed once, its project looked up, its signature verified, and the fields
//! dedup and routing need are read from that same parse.

use std::sync::Arc;

use bytes::Bytes;
use ring::digest;

use crate::dedup::DedupKey;
use crate::projects::{Endpoint, Projects, RouteFields};
use crate::signature::{self, Canonicalizer, Order, ParseError, Scalar, VerifyError};

/// Statuses after which an operation no longer changes (spec §8 constants); any other
/// status (awaiting clarification, processing, ...) can repeat with new content.
const FINAL_STATUSES: [&str; 13] = [
    "success",
    "decline",
    "error",
    "refunded",
    "partially refunded",
    "reversed",
    "partially reversed",
    "cancelled",
    "canceled",
    "expired",
    "external error",
    "internal error",
    "declined",
];

/// A verified callback, ready for dedup and the journal.
#[derive(Debug, Clone)]
pub struct Callback {
    /// The body exactly as received: stored and forwarded unchanged.
    pub body: Bytes,
    pub project: u64,
    pub dedup: DedupKey,
    /// Events with the same order key reach an endpoint in acceptance order.
    pub order_key: String,
    /// The endpoints whose filters pass, in config order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The canonical order the signature matched (not PHP only via the fallback).
    pub matched: Order,
}

/// Why a callback is refused. Every variant is answered, never stored.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("unknown project {0}")]
    UnknownProject(String),
    #[error("{error}")]
    Signature { project: u64, error: VerifyError },
    /// The body is forwarded unchanged, and a merchant whose JSON parser keeps the
    /// first copy of a key would read a value the signature did not cover (the
    /// canonical string keeps the last, as the platform's SDKs do).
    #[error("duplicate key {0}")]
    DuplicateKey(String),
    #[error("{field} must be {expected}")]
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
}

/// Fields cbgate reads for dedup and routing, and the JSON types they may have;
/// `null` counts as absent. Anything else in a signed body passes through untouched.
const READ_FIELDS: [(&str, &[u8], Expect); 7] = [
    ("payment.id", b"payment:id", Expect::Id),
    ("payment.status", b"payment:status", Expect::Text),
    ("payment.method", b"payment:method", Expect::Text),
    ("operation.id", b"operation:id", Expect::Id),
    ("operation.request_id", b"operation:request_id", Expect::Id),
    ("operation.type", b"operation:type", Expect::Text),
    ("operation.status", b"operation:status", Expect::Text),
];

#[derive(Clone, Copy)]
enum Expect {
    /// A string or an integer.
    Id,
    Text,
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Expect::Id => "a string or an integer",
            Expect::Text => "a string",
        }
    }

    fn admits(self, scalar: Scalar) -> bool {
        matches!(
            (self, scalar),
            (_, Scalar::String | Scalar::Null) | (Expect::Id, Scalar::Integer)
        )
    }
}

/// `project_id`: an integer, or a string of digits (the canonical text is the same).
fn project_id(canon: &Canonicalizer) -> Result<&[u8], Rejection> {
    let invalid = Rejection::InvalidField {
        field: "project_id",
        expected: "an integer",
    };
    match canon.get_typed(b"project_id") {
        Some((_, [])) => Err(Rejection::MissingField("project_id")),
        Some((Scalar::Integer, v)) => Ok(v),
        Some((Scalar::String, v)) if v.iter().all(u8::is_ascii_digit) => Ok(v),
        Some(_) => Err(invalid),
        None if canon.has_children(b"project_id") => Err(invalid),
        None => Err(Rejection::MissingField("project_id")),
    }
}

/// The fields of `READ_FIELDS` have their types, and `payment`/`operation` are objects.
fn check_fields(canon: &Canonicalizer) -> Result<(), Rejection> {
    for (field, path) in [("payment", &b"payment"[..]), ("operation", b"operation")] {
        if canon
            .get_typed(path)
            .is_some_and(|(s, _)| s != Scalar::Null)
        {
            return Err(Rejection::InvalidField {
                field,
                expected: "an object",
            });
        }
    }
    for (field, path, expect) in READ_FIELDS {
        let ok = match canon.get_typed(path) {
            Some((scalar, _)) => expect.admits(scalar),
            None => !canon.has_children(path),
        };
        if !ok {
            return Err(Rejection::InvalidField {
                field,
                expected: expect.describe(),
            });
        }
    }
    Ok(())
}

/// Parses, authenticates and reads `body`. `canon` is the caller's reusable parser.
pub fn verify(
    canon: &mut Canonicalizer,
    body: Bytes,
    projects: &Projects,
    fallback: bool,
) -> Result<Callback, Rejection> {
    canon.load(&body)?;
    if let Some(key) = canon.duplicate_key() {
        return Err(Rejection::DuplicateKey(
            String::from_utf8_lossy(key).into_owned(),
        ));
    }
    let id = project_id(canon)?;
    let project = projects
        .by_text(id)
        .ok_or_else(|| Rejection::UnknownProject(String::from_utf8_lossy(id).into_owned()))?;
    let matched = signature::verify_loaded(canon, &project.secrets, fallback).map_err(|error| {
        Rejection::Signature {
            project: project.id,
            error,
        }
    })?;
    check_fields(canon)?;

    let text = |path: &[u8]| {
        canon
            .get(path)
            .filter(|v| !v.is_empty())
            .map(|v| std::str::from_utf8(v).unwrap_or_default())
    };
    let op_status = text(b"operation:status");
    let pay_status = text(b"payment:status");
    let op_type = text(b"operation:type");
    let op_id = text(b"operation:request_id").or(text(b"operation:id"));
    let status = op_status.or(pay_status).unwrap_or_default();
    let sig = canon.signature().unwrap_or_default();

    // Dedup rule (DESIGN.md): a final status is one event per operation; a non-final
    // one (a re-sent OTP request) is one event per distinct signed content. Without an
    // operation id, the signature is the content's identity.
    let mut h = digest::Context::new(&digest::SHA256);
    let part = |h: &mut digest::Context, bytes: &[u8]| {
        h.update(bytes);
        h.update(&[0]);
    };
    part(&mut h, &project.id.to_le_bytes());
    match op_id {
        Some(op) => {
            part(&mut h, op.as_bytes());
            part(&mut h, op_type.unwrap_or_default().as_bytes());
            part(&mut h, status.as_bytes());
            if !FINAL_STATUSES.contains(&status.to_ascii_lowercase().as_str()) {
                part(&mut h, sig);
            }
        }
        None => part(&mut h, sig),
    }
    let dedup = DedupKey::from_digest(h.finish().as_ref());

    let route = RouteFields {
        method: text(b"payment:method"),
        operation_type: op_type,
        statuses: [op_status, pay_status],
    };
    let endpoints = project
        .endpoints
        .iter()
        .filter(|e| e.wants(&route))
        .cloned()
        .collect();
    let order_key = match text(b"payment:id").or(op_id) {
        Some(id) => crate::store::lane(project.id, id),
        None => format!("{}/#{:032x}", project.id, dedup.0),
    };
    Ok(Callback {
        body,
        project: project.id,
        dedup,
        order_key,
        endpoints,
        matched: matched.order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::signature::Secrets;

    fn projects() -> Projects {
        let config =
            Config::from_toml("t.toml", "[[projects]]\nid = 7\nsecrets = [\"s\"]\n").unwrap();
        Projects::build(&config).unwrap()
    }

    fn run(body: &str) -> Result<Callback, Rejection> {
        let signed = signature::attach(body.as_bytes(), "s").unwrap();
        verify(
            &mut Canonicalizer::default(),
            Bytes::from(signed),
            &projects(),
            true,
        )
    }

    #[test]
    fn fields_read_for_dedup_and_routing_must_have_their_types() {
        let ok = r#"{"project_id":7,"payment":{"id":"p","status":"success","method":null},"operation":{"id":1,"request_id":"r","type":"sale","status":"success"}}"#;
        assert!(run(ok).is_ok());
        assert!(run(&ok.replace(r#""project_id":7"#, r#""project_id":"7""#)).is_ok());
        for (from, to, field) in [
            (r#""project_id":7"#, r#""project_id":7.0"#, "project_id"),
            (r#""project_id":7"#, r#""project_id":true"#, "project_id"),
            (r#""project_id":7"#, r#""project_id":"7a""#, "project_id"),
            (r#""project_id":7"#, r#""project_id":[7]"#, "project_id"),
            (r#""id":1,"#, r#""id":1.5,"#, "operation.id"),
            (r#""id":1,"#, r#""id":{"a":1},"#, "operation.id"),
            (r#""type":"sale""#, r#""type":5"#, "operation.type"),
            (r#""id":"p""#, r#""id":false"#, "payment.id"),
            (
                r#""method":null"#,
                r#""method":["kassa24"]"#,
                "payment.method",
            ),
            (r#""payment":{"#, r#""payment":"x","p":{"#, "payment"),
        ] {
            let body = ok.replacen(from, to, 1);
            match run(&body) {
                Err(Rejection::InvalidField { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            run(r#"{"project":7}"#),
            Err(Rejection::MissingField("project_id"))
        ));
    }

    /// A captured callback with an earlier copy of a key added still verifies (the
    /// last copy is signed), so a first-copy merchant parser would read forged data.
    #[test]
    fn a_duplicate_key_is_refused_before_the_signature() {
        let signed = signature::attach(
            br#"{"project_id":7,"payment":{"id":"p","sum":{"amount":100}}}"#,
            "s",
        )
        .unwrap();
        let text = String::from_utf8(signed).unwrap();
        let forged = text.replacen(
            r#""sum":{"amount":100}"#,
            r#""sum":{"amount":999999,"amount":100}"#,
            1,
        );
        let mut canon = Canonicalizer::default();
        assert!(
            signature::verify(&mut canon, forged.as_bytes(), &Secrets::new(&["s"]), false).is_ok()
        );
        match verify(&mut canon, Bytes::from(forged), &projects(), true) {
            Err(Rejection::DuplicateKey(key)) => assert_eq!(key, "payment:sum:amount"),
            other => panic!("{other:?}"),
        }
    }
}
