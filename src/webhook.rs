//! Standard Webhooks signatures (standardwebhooks.com) on what cbgate forwards:
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under the
//! endpoint's `whsec_` secret, so merchants verify it with the public libraries.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// An endpoint's signing key.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("webhook::Key(..)")
    }
}

impl Key {
    /// `whsec_` followed by the base64 of the key bytes (the prefix is optional, as
    /// in the reference libraries).
    pub fn parse(secret: &str) -> Option<Key> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let bytes = STANDARD.decode(b64).ok()?;
        if bytes.is_empty() {
            return None;
        }
        Some(Key(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(itoa::Buffer::new().format(timestamp).as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::Key;

    #[test]
    fn matches_the_standard_webhooks_reference_example() {
        // The example in the Standard Webhooks specification and its libraries' tests.
        let key = Key::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(Key::parse("whsec_").is_none());
        assert!(Key::parse("whsec_!!").is_none());
    }
}
