//! A callback that passed the signature check, and the only way to get one: the body
//! is parsed once, its project looked up, its signature verified, and the fields
//! dedup and routing need are read from that same parse.

use std::sync::Arc;

use bytes::Bytes;
use ring::digest;

use crate::dedup::DedupKey;
use crate::projects::{Endpoint, Projects, RouteFields};
use crate::signature::{self, Canonicalizer, Order, ParseError, VerifyError};

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
}

/// Parses, authenticates and reads `body`. `canon` is the caller's reusable parser.
pub fn verify(
    canon: &mut Canonicalizer,
    body: Bytes,
    projects: &Projects,
    fallback: bool,
) -> Result<Callback, Rejection> {
    canon.load(&body)?;
    let id = canon
        .get(b"project_id")
        .filter(|v| !v.is_empty())
        .ok_or(Rejection::MissingField("project_id"))?;
    let project = projects
        .by_text(id)
        .ok_or_else(|| Rejection::UnknownProject(String::from_utf8_lossy(id).into_owned()))?;
    let matched = signature::verify_loaded(canon, &project.secrets, fallback).map_err(|error| {
        Rejection::Signature {
            project: project.id,
            error,
        }
    })?;

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
        Some(id) => format!("{}/{id}", project.id),
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
