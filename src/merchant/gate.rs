//! Gate API requests: the merchant's body, checked (a JSON object with
//! `general.project_id`, no signature of its own), signed into `general.signature`
//! with every other byte kept as written, and sent to `[merchant] gate_url` plus the
//! path. The platform's status and body come back unchanged. A request whose bytes
//! left cbgate is never sent twice: only a connection that failed before anything was
//! written is tried again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode, Uri};

use super::Invalid;
use super::members::Members;
use crate::config::MerchantSettings;
use crate::http::Body;
use crate::outbound::{self, error_chain, pool::Pool};
use crate::signature::{Canonicalizer, Order, Scalar};

/// The Gate API paths of the Mobile Commerce flow (seeds), always forwarded.
pub const PATHS: [&str; 5] = [
    "/v2/payment/mobile/sale",
    "/v2/payment/clarification",
    "/v2/customer/action/resend",
    "/v2/payment/mobile/refund",
    "/v2/info/mobile/sale/list",
];

/// The platform's answer is read whole, up to this size.
pub const MAX_ANSWER: usize = 1 << 20;

/// Connection attempts for one request: a second one only when nothing was written.
const TRIES: u32 = 2;

const USER_AGENT: &str = concat!("cbgate/", env!("CARGO_PKG_VERSION"));

/// Where Gate API requests go and how.
pub struct Gate {
    /// `gate_url` without a trailing `/`.
    base: String,
    paths: Vec<Arc<str>>,
    pool: Pool,
    timeout: Duration,
}

/// The platform's answer, passed on as it came.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl Answer {
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        if let Some(content_type) = self.content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        response
    }
}

/// No complete answer from the platform; says whether the request can have reached it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the Gate API could not be reached ({0}); the request never left cbgate")]
    Unreachable(String),
    #[error(
        "the exchange with the Gate API broke after the request left cbgate ({0}); it is \
         not sent again: check the payment's status before sending it yourself"
    )]
    Broken(String),
    #[error(
        "the Gate API did not answer within {0:?}; the request may have reached it: check \
         the payment's status before sending it again"
    )]
    TimedOut(Duration),
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Unreachable(_) | Failure::Broken(_) => StatusCode::BAD_GATEWAY,
            Failure::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the request left cbgate: `no`, `yes` or `maybe`.
    pub fn sent(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "no",
            Failure::Broken(_) => "yes",
            Failure::TimedOut(_) => "maybe",
        }
    }

    /// The log and metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "gate_unreachable",
            Failure::Broken(_) => "gate_broken",
            Failure::TimedOut(_) => "gate_timeout",
        }
    }
}

impl Gate {
    pub fn new(url: &str, settings: &MerchantSettings) -> Result<Gate, String> {
        crate::config::check_url(url).map_err(|e| format!("merchant.gate_url: {e}"))?;
        let connector = outbound::connector(settings.connect_timeout, settings.ca_file.as_deref())
            .map_err(|e| format!("merchant.ca_file: {e}"))?;
        let mut paths: Vec<Arc<str>> = PATHS.iter().map(|p| Arc::from(*p)).collect();
        for extra in &settings.gate_paths {
            crate::config::check_gate_path(extra)?;
            if !paths.iter().any(|p| **p == **extra) {
                paths.push(Arc::from(extra.as_str()));
            }
        }
        Ok(Gate {
            base: url.trim_end_matches('/').to_string(),
            paths,
            pool: Pool::new(connector),
            timeout: settings.timeout,
        })
    }

    /// `path` when cbgate forwards it.
    pub fn path(&self, path: &str) -> Option<Arc<str>> {
        self.paths.iter().find(|p| ***p == *path).cloned()
    }

    /// Sends a signed body to the platform and reads its answer, all within the timeout.
    pub async fn forward(&self, path: &str, body: Bytes) -> Result<Answer, Failure> {
        let url: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| Failure::Unreachable(format!("bad URL: {e}")))?;
        let exchange = async {
            let mut tries = 0;
            loop {
                tries += 1;
                let request = hyper::Request::post(url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::USER_AGENT, USER_AGENT)
                    .body(Full::new(body.clone()))
                    .expect("a valid URI and static headers");
                let (response, lease) = match self.pool.send(&url, request).await {
                    Ok(sent) => sent,
                    Err(f) if f.never_left() && tries < TRIES => continue,
                    Err(outbound::pool::Failure::Connect(e)) => {
                        return Err(Failure::Unreachable(e));
                    }
                    Err(outbound::pool::Failure::Sent(e) | outbound::pool::Failure::Body(e)) => {
                        return Err(Failure::Broken(e));
                    }
                };
                let status = response.status();
                let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
                let body = Limited::new(response.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| {
                        Failure::Broken(format!("answer unreadable: {}", error_chain(&*e)))
                    })?
                    .to_bytes();
                lease.release();
                return Ok(Answer {
                    status,
                    content_type,
                    body,
                });
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Failure::TimedOut(self.timeout))?
    }
}

/// What cbgate reads in a Gate API body before signing it.
#[derive(Debug)]
pub struct Fields {
    pub project: u64,
    pub payment_id: Option<String>,
    /// `account.number`: the customer's phone in Mobile Commerce (logged masked).
    pub account: Option<String>,
}

impl Fields {
    /// Parses `body` into `canon` and reads it; `canon` keeps it for `canonical`.
    pub fn read(canon: &mut Canonicalizer, body: &[u8]) -> Result<Fields, Invalid> {
        canon.load(body).map_err(|e| Invalid::new(e.to_string()))?;
        if let Some(key) = canon.duplicate_key() {
            return Err(Invalid::new(format!(
                "duplicate key {}",
                String::from_utf8_lossy(key)
            )));
        }
        let members = Members::parse(body)?;
        if members.get("signature").is_some() {
            return Err(Invalid::new(
                "a Gate API request carries its signature in general.signature, which cbgate \
                 sets: send the body without a signature",
            ));
        }
        let general = members
            .get("general")
            .filter(|g| g.get().starts_with('{'))
            .ok_or_else(|| Invalid::new("general must be an object with project_id"))?;
        if Members::parse(general.get().as_bytes())?
            .get("signature")
            .is_some()
        {
            return Err(Invalid::new(
                "general.signature is cbgate's to set: send the body without it",
            ));
        }
        let project = match canon.get_typed(b"general:project_id") {
            Some((Scalar::Integer | Scalar::String, id)) if is_digits(id) => {
                std::str::from_utf8(id).ok().and_then(|id| id.parse().ok())
            }
            _ => None,
        }
        .ok_or_else(|| Invalid::new("general.project_id must be an integer (the project id)"))?;
        let text = |path: &[u8]| match canon.get_typed(path) {
            Some((Scalar::String | Scalar::Integer, v)) if !v.is_empty() => {
                Some(String::from_utf8_lossy(v).into_owned())
            }
            _ => None,
        };
        Ok(Fields {
            project,
            payment_id: text(b"general:payment_id"),
            account: text(b"account:number"),
        })
    }

    /// The string to sign for the body `read` loaded.
    pub fn canonical<'c>(&self, canon: &'c mut Canonicalizer) -> &'c [u8] {
        canon.canonical(Order::Signer)
    }
}

fn is_digits(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(u8::is_ascii_digit)
}

/// `body` with `"signature":"..."` as the last member of its `general` object; every
/// other byte as the merchant wrote it.
pub fn with_signature(body: &[u8], signature: &str) -> Result<Vec<u8>, Invalid> {
    let members = Members::parse(body)?;
    let general = members
        .get("general")
        .ok_or_else(|| Invalid::new("general must be an object with project_id"))?
        .get();
    // The raw value borrows from `body`: its offset is where `general` is written.
    let start = general.as_ptr() as usize - body.as_ptr() as usize;
    let close = start + general.len() - 1;
    debug_assert_eq!(body.get(close), Some(&b'}'));
    let empty = Members::parse(general.as_bytes())?.is_empty();
    let mut out = Vec::with_capacity(body.len() + 110);
    out.extend_from_slice(&body[..close]);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"signature\":\"");
    out.extend_from_slice(signature.as_bytes());
    out.extend_from_slice(b"\"");
    out.extend_from_slice(&body[close..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{Secrets, verify};

    #[test]
    fn the_signature_goes_into_general_and_verifies() {
        let body = br#"{ "general" : { "project_id" : 1234, "payment_id": "p\u002d1" } ,
            "account": {"number": "71234567890"}, "payment": {"amount": 100000, "x": 1.0}}"#;
        let mut canon = Canonicalizer::default();
        let fields = Fields::read(&mut canon, body).unwrap();
        assert_eq!(fields.project, 1234);
        assert_eq!(fields.payment_id.as_deref(), Some("p-1"));
        assert_eq!(fields.account.as_deref(), Some("71234567890"));
        let secrets = Secrets::new(&["s"]);
        let sig = secrets.sign(fields.canonical(&mut canon)).unwrap();
        let signed = with_signature(body, &sig).unwrap();
        let text = String::from_utf8(signed.clone()).unwrap();
        assert!(
            text.starts_with(&format!(
                r#"{{ "general" : {{ "project_id" : 1234, "payment_id": "p\u002d1" ,"signature":"{sig}"}} ,"#
            )),
            "{text}"
        );
        assert!(text.ends_with(r#""x": 1.0}}"#));
        assert!(verify(&mut canon, &signed, &secrets, false).is_ok());
        // An empty general (no project) is refused before; the splice still holds.
        let spliced = with_signature(br#"{"general":{ }}"#, "S").unwrap();
        assert_eq!(spliced, br#"{"general":{ "signature":"S"}}"#);
    }

    #[test]
    fn bodies_cbgate_will_not_sign() {
        let mut canon = Canonicalizer::default();
        let mut reason = |body: &str| {
            Fields::read(&mut canon, body.as_bytes())
                .unwrap_err()
                .reason
        };
        assert!(
            reason(r#"{"general":{"project_id":1,"signature":"x"}}"#).contains("general.signature")
        );
        assert!(
            reason(r#"{"general":{"project_id":1},"signature":"x"}"#)
                .contains("without a signature")
        );
        assert!(reason(r#"{"general":{"project_id":1,"project_id":2}}"#).contains("duplicate key"));
        assert!(reason(r#"{"general":[1]}"#).contains("general must be an object"));
        assert!(reason(r#"{"payment":{}}"#).contains("general must be an object"));
        assert!(
            reason(r#"{"general":{"project_id":"x1"}}"#).contains("project_id must be an integer")
        );
        assert!(
            reason(r#"{"general":{"project_id":1.5}}"#).contains("project_id must be an integer")
        );
        assert!(reason("[]").contains("not a JSON object"));
        let mut canon = Canonicalizer::default();
        assert!(Fields::read(&mut canon, br#"{"general":{"project_id":"77"}}"#).is_ok());
    }
}
