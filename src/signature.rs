//! The platform's signature: base64 HMAC-SHA512 under a project secret over the
//! canonical string of the body (`shared/spec/signature.md`). `canonical` builds the
//! string; this module keys it, signs it and checks it in constant time.

mod canonical;
mod natural;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

use crate::merchant::members::Members;

pub use canonical::{Canonicalizer, DEFAULT_MAX_DEPTH, Order, ParseError, Scalar, php_float};
pub use natural::compare as natural_compare;

/// A project's secrets, newest first; several at once during key rotation.
#[derive(Clone)]
pub struct Secrets {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "Secrets({} keys)", self.keys.len())
    }
}

impl Secrets {
    /// Keys from the secrets' UTF-8 bytes (spec §1).
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Self {
        Self {
            keys: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA512, s.as_ref().as_bytes()))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Base64 HMAC-SHA512 of a canonical string under the first (newest) secret: what
    /// cbgate signs for merchants. `None` only for a project without secrets, which the
    /// config refuses.
    pub fn sign(&self, canonical: &[u8]) -> Option<String> {
        let key = self.keys.first()?;
        Some(STANDARD.encode(hmac::sign(key, canonical).as_ref()))
    }

    /// Index of the first key whose HMAC of `message` equals `tag`.
    fn matching(&self, message: &[u8], tag: &[u8]) -> Option<usize> {
        // ring::hmac::verify compares in constant time.
        self.keys
            .iter()
            .position(|k| hmac::verify(k, message, tag).is_ok())
    }
}

/// Why a body failed the check. `Display` is the reason the sender is told.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("no signature: neither `signature` nor `general.signature` is a string")]
    MissingSignature,
    #[error("invalid signature")]
    Mismatch,
}

/// A successful check: which canonical order matched and under which key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub order: Order,
    pub key_index: usize,
}

/// Checks the body already loaded in `canon` against `secrets`. The platform's
/// order (PHP) first; only when it fails and `fallback` is set, the other SDKs'
/// orders, and only those that give a different string (so a payload without the
/// divergence triggers of spec §6 costs no extra HMAC).
pub fn verify_loaded(
    canon: &mut Canonicalizer,
    secrets: &Secrets,
    fallback: bool,
) -> Result<Match, VerifyError> {
    let mut tag = [0u8; 64];
    let provided = canon.signature().ok_or(VerifyError::MissingSignature)?;
    let tag = match STANDARD.decode_slice(provided, &mut tag) {
        Ok(64) => &tag[..],
        // Not base64 of 64 bytes: no key can match, but still spend the HMAC so
        // the answer's timing does not tell a malformed tag from a wrong one.
        _ => &[][..],
    };
    let primary = canon.canonical(Order::Php);
    if let Some(key_index) = secrets.matching(primary, tag) {
        return Ok(Match {
            order: Order::Php,
            key_index,
        });
    }
    if fallback {
        let primary = primary.to_vec();
        for order in Order::FALLBACKS {
            let candidate = canon.canonical(order);
            if candidate == primary.as_slice() {
                continue;
            }
            if let Some(key_index) = secrets.matching(candidate, tag) {
                return Ok(Match { order, key_index });
            }
        }
    }
    Err(VerifyError::Mismatch)
}

/// Parses `body` and checks its own signature.
pub fn verify(
    canon: &mut Canonicalizer,
    body: &[u8],
    secrets: &Secrets,
    fallback: bool,
) -> Result<Match, VerifyError> {
    canon.load(body)?;
    verify_loaded(canon, secrets, fallback)
}

/// Base64 HMAC-SHA512 of a canonical string.
pub fn sign_canonical(secret: &str, canonical: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA512, secret.as_bytes());
    STANDARD.encode(hmac::sign(&key, canonical).as_ref())
}

/// Signs a JSON object the way the platform's signer does, ignoring the root (or
/// `general`) `signature` in it.
pub fn sign(canon: &mut Canonicalizer, body: &[u8], secret: &str) -> Result<String, ParseError> {
    canon.load(body)?;
    Ok(sign_canonical(secret, canon.canonical(Order::Signer)))
}

/// Returns `body` (a JSON object) with a root `signature` appended: for the
/// simulator, tests and outbound signing. The body's bytes are kept as written (no
/// re-serialisation, so number tokens stay as they are). A root `signature` already in
/// it is ignored for signing and replaced: the object is written again from its
/// members' raw text without it, since a body with two `signature` keys is refused.
pub fn attach(body: &[u8], secret: &str) -> Result<Vec<u8>, ParseError> {
    let mut canon = Canonicalizer::default();
    canon.load(body)?;
    let signature = sign_canonical(secret, canon.canonical(Order::Signer));
    let text = body.trim_ascii_end();
    let mut out = Vec::with_capacity(body.len() + 104);
    match Members::parse(text)
        .ok()
        .filter(|m| m.get("signature").is_some())
    {
        Some(members) => {
            out.push(b'{');
            for (name, value) in members.iter().filter(|(name, _)| *name != "signature") {
                let name = serde_json::to_string(name).expect("a string serialises");
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                out.extend_from_slice(value.get().as_bytes());
                out.push(b',');
            }
        }
        None => {
            let inner = text[..text.len() - 1].trim_ascii_end();
            out.extend_from_slice(inner);
            if !inner.ends_with(b"{") {
                out.push(b',');
            }
        }
    }
    out.extend_from_slice(b"\"signature\":\"");
    out.extend_from_slice(signature.as_bytes());
    out.extend_from_slice(b"\"}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_replaces_a_signature_already_there() {
        let mut c = Canonicalizer::default();
        let once = attach(br#"{"project_id":1, "signature":"old", "n":1.50}"#, "k").unwrap();
        let twice = attach(&once, "k").unwrap();
        assert_eq!(once, twice);
        let text = String::from_utf8(once.clone()).unwrap();
        assert_eq!(text.matches("\"signature\"").count(), 1, "{text}");
        assert!(text.contains("\"n\":1.50"), "number token kept: {text}");
        assert!(verify(&mut c, &once, &Secrets::new(&["k"]), false).is_ok());
    }

    #[test]
    fn sign_then_verify_and_rotation() {
        let mut c = Canonicalizer::default();
        let body = attach(br#"{"project_id":1,"payment":{"id":"p"}}"#, "new").unwrap();
        let both = Secrets::new(&["old", "new"]);
        assert_eq!(
            verify(&mut c, &body, &both, false),
            Ok(Match {
                order: Order::Php,
                key_index: 1
            })
        );
        let old = Secrets::new(&["old"]);
        assert_eq!(
            verify(&mut c, &body, &old, true),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn malformed_tags_are_mismatches() {
        let mut c = Canonicalizer::default();
        let s = Secrets::new(&["k"]);
        for sig in [
            "",
            "abc",
            "!!!!",
            "e19695449545fac562843ca06e7e0f3e51281ad6",
        ] {
            let body = format!(r#"{{"a":1,"signature":"{sig}"}}"#);
            assert_eq!(
                verify(&mut c, body.as_bytes(), &s, true),
                Err(VerifyError::Mismatch)
            );
        }
        assert_eq!(
            verify(&mut c, br#"{"a":1,"signature":5}"#, &s, true),
            Err(VerifyError::MissingSignature)
        );
    }

    #[test]
    fn fallback_orders_match_other_sdks() {
        // An array of 12: Python's byte order differs from PHP's natural order.
        let payload = br#"{"items":["a","b","c","d","e","f","g","h","i","j","k","l"]}"#;
        let mut c = Canonicalizer::default();
        c.load(payload).unwrap();
        let python = sign_canonical("s", c.canonical(Order::Python));
        let body = format!(
            r#"{{"items":["a","b","c","d","e","f","g","h","i","j","k","l"],"signature":"{python}"}}"#
        );
        let s = Secrets::new(&["s"]);
        assert_eq!(
            verify(&mut c, body.as_bytes(), &s, false),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&mut c, body.as_bytes(), &s, true).map(|m| m.order),
            Ok(Order::Python)
        );
    }
}
