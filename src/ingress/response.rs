//! The one place callback outcomes and errors become HTTP answers. The platform
//! retries anything but 200, so only what is durable (or a duplicate of something
//! durable) gets a 200; what may succeed later gets 503 with `Retry-After`.

use hyper::{Response, StatusCode, header};

use crate::callback::Rejection;
use crate::http::{Body, BodyError, json};
use crate::signature::VerifyError;
use crate::store::{Appended, StoreError};

/// How a callback request ended; `as_str` is the metric and log label.
#[derive(Debug)]
pub enum Answer {
    Stored(Appended),
    /// A duplicate of a durable callback, answered without asking the store.
    KnownDuplicate,
    Rejected(Rejection),
    Body(BodyError),
    Unavailable(&'static str),
    NotFound,
    MethodNotAllowed,
}

impl Answer {
    pub fn as_str(&self) -> &'static str {
        match self {
            Answer::Stored(Appended::Accepted(_)) => "accepted",
            Answer::Stored(Appended::Duplicate) | Answer::KnownDuplicate => "duplicate",
            Answer::Rejected(Rejection::Parse(_)) => "malformed",
            Answer::Rejected(Rejection::MissingField(_)) => "missing_field",
            Answer::Rejected(Rejection::DuplicateKey(_)) => "duplicate_key",
            Answer::Rejected(Rejection::InvalidField { .. }) => "invalid_field",
            Answer::Rejected(Rejection::UnknownProject(_)) => "unknown_project",
            Answer::Rejected(Rejection::Signature {
                error: VerifyError::MissingSignature,
                ..
            }) => "missing_signature",
            Answer::Rejected(Rejection::Signature { .. }) => "bad_signature",
            Answer::Body(BodyError::TooLarge(_)) => "too_large",
            Answer::Body(BodyError::Timeout(_)) => "body_timeout",
            Answer::Body(BodyError::Broken(_)) => "body_broken",
            Answer::Unavailable(_) => "unavailable",
            Answer::NotFound => "not_found",
            Answer::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// The store could not make a callback durable: 503, the platform retries. The
    /// reason names the kind of trouble, never its details.
    pub fn from_store(e: StoreError) -> Answer {
        Answer::Unavailable(match e {
            StoreError::Busy => "journal queue is full",
            StoreError::Closed => "shutting down",
            StoreError::Unavailable(_) | StoreError::Malformed(_) | StoreError::Refused(_) => {
                "journal cannot take writes"
            }
        })
    }

    pub fn into_response(self) -> Response<Body> {
        let reason = |status: StatusCode, reason: String| {
            json(
                status,
                serde_json::json!({"status": "rejected", "reason": reason}).to_string(),
            )
        };
        match self {
            Answer::Stored(Appended::Accepted(_)) => {
                json(StatusCode::OK, r#"{"status":"accepted"}"#)
            }
            Answer::Stored(Appended::Duplicate) | Answer::KnownDuplicate => {
                json(StatusCode::OK, r#"{"status":"duplicate"}"#)
            }
            Answer::Rejected(r @ Rejection::UnknownProject(_)) => {
                reason(StatusCode::NOT_FOUND, r.to_string())
            }
            Answer::Rejected(r) => reason(StatusCode::BAD_REQUEST, r.to_string()),
            Answer::Body(e @ BodyError::TooLarge(_)) => {
                reason(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            Answer::Body(e @ BodyError::Timeout(_)) => {
                reason(StatusCode::REQUEST_TIMEOUT, e.to_string())
            }
            Answer::Body(e) => reason(StatusCode::BAD_REQUEST, e.to_string()),
            Answer::Unavailable(why) => {
                let mut r = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "unavailable", "reason": why}).to_string(),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                r
            }
            Answer::NotFound => reason(
                StatusCode::NOT_FOUND,
                "no such route; POST /callbacks or /terminal".into(),
            ),
            Answer::MethodNotAllowed => {
                let mut r = reason(StatusCode::METHOD_NOT_ALLOWED, "use POST".into());
                r.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
                r
            }
        }
    }
}
