//! Payment Page invocations: the merchant's flat parameter set, checked for what the
//! seeds call required, signed as the platform checks it (spec: one `name:value` entry
//! per parameter, PHP natural order, `frame_mode` left out), and written into the URL
//! as the platform's Python SDK writes it: `urlencode` (`quote_plus`) in the
//! parameters' order, then `&signature=`.
//!
//! A query string carries text only, so every value is signed as the text the URL
//! carries: `true`/`false` as `1`/`0` (what every SDK signs and PHP's
//! `http_build_query` writes; the Python SDK writes `True` into the URL while signing
//! `1`), an object or array (`payment_methods_options`) as its JSON text, as the
//! platform's own plug-ins send it, and `null` not at all (no SDK agrees on it).

use serde_json::value::RawValue;

use super::Invalid;
use super::members::Members;
use crate::signature::{Canonicalizer, Order, Secrets};

/// Parameters the seeds require for every payment method (Kassa24 and Mobile Commerce
/// Payment Page: "the basic minimum of parameters").
pub const REQUIRED: [&str; 8] = [
    "project_id",
    "payment_id",
    "customer_id",
    "customer_email",
    "customer_first_name",
    "customer_last_name",
    "payment_currency",
    "payment_amount",
];

/// How a value was written, to write it back in the answer's `parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    /// A JSON number, kept as written; booleans become the numbers 1 and 0.
    Number,
    /// An object or array, carried as its JSON text.
    Json,
}

#[derive(Debug)]
struct Param {
    name: String,
    /// What is signed and what the URL carries.
    text: String,
    kind: Kind,
}

/// A parameter set in the merchant's order.
#[derive(Debug)]
pub struct Params(Vec<Param>);

impl Params {
    /// Reads a JSON object of parameters; `null` values are left out.
    pub fn parse(body: &[u8]) -> Result<Params, Invalid> {
        let members = Members::parse(body)?;
        let mut out: Vec<Param> = Vec::new();
        // A set, not a scan per name: a body of thousands of names must not cost seconds.
        let mut names = std::collections::HashSet::new();
        for (name, value) in members.iter() {
            if !names.insert(name) {
                return Err(Invalid::new(format!("parameter {name} appears twice")));
            }
            if name.is_empty() {
                return Err(Invalid::new("a parameter has an empty name"));
            }
            if let Some((text, kind)) = text_of(value)? {
                out.push(Param {
                    name: name.to_string(),
                    text,
                    kind,
                });
            }
        }
        Ok(Params(out))
    }

    /// The text of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.text.as_str())
    }

    /// `project_id`: an integer, or a string of digits.
    pub fn project_id(&self) -> Result<u64, Invalid> {
        match self.0.iter().find(|p| p.name == "project_id") {
            None => Err(Invalid {
                reason: "missing required parameter: project_id".into(),
                missing: vec!["project_id"],
            }),
            Some(p) if p.kind != Kind::Json && is_digits(&p.text) => p
                .text
                .parse()
                .map_err(|_| Invalid::new("project_id is out of range")),
            Some(_) => Err(Invalid::new("project_id must be an integer")),
        }
    }

    /// The checks beyond the project: required parameters present and not empty,
    /// `payment_amount` in minor units, no signature of the merchant's own.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.get("signature").is_some() {
            return Err(Invalid::new(
                "signature is cbgate's to set: send the parameters without it",
            ));
        }
        let missing: Vec<&'static str> = REQUIRED
            .into_iter()
            .filter(|name| self.get(name).is_none_or(str::is_empty))
            .collect();
        if !missing.is_empty() {
            let s = if missing.len() > 1 { "s" } else { "" };
            return Err(Invalid {
                reason: format!("missing required parameter{s}: {}", missing.join(", ")),
                missing,
            });
        }
        let amount = self.0.iter().find(|p| p.name == "payment_amount");
        if amount.is_some_and(|p| p.kind == Kind::Json || !is_digits(&p.text)) {
            return Err(Invalid::new(
                "payment_amount must be an integer in minor units (1000.00 KZT is 100000)",
            ));
        }
        Ok(())
    }

    /// The signature of the set under `secrets` (its first secret).
    pub fn sign(
        &self,
        canon: &mut Canonicalizer,
        secrets: &Secrets,
    ) -> Result<Option<String>, Invalid> {
        // The canonicaliser signs a JSON object; the one it gets holds every value as
        // the string the URL carries, so both say the same.
        let mut flat =
            String::with_capacity(self.0.iter().map(|p| p.name.len() + p.text.len() + 8).sum());
        flat.push('{');
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                flat.push(',');
            }
            push_json_string(&mut flat, &p.name);
            flat.push(':');
            push_json_string(&mut flat, &p.text);
        }
        flat.push('}');
        canon
            .load(flat.as_bytes())
            .map_err(|e| Invalid::new(e.to_string()))?;
        Ok(secrets.sign(canon.canonical(Order::Signer)))
    }

    /// `base` + `?` + the parameters URL-encoded in their order + `&signature=...`.
    pub fn url(&self, base: &str, signature: &str) -> String {
        let mut url = String::with_capacity(base.len() + 128 + self.0.len() * 48);
        url.push_str(base);
        url.push('?');
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                url.push('&');
            }
            quote_plus(&p.name, &mut url);
            url.push('=');
            quote_plus(&p.text, &mut url);
        }
        url.push_str("&signature=");
        quote_plus(signature, &mut url);
        url
    }

    /// The answer: `{"parameters": {..., "signature"}, "signature", "url"}` with the
    /// parameters in their order, as signed (for `EPayWidget.run`), and the URL (null
    /// without `payment_page_url`).
    pub fn answer(&self, signature: &str, base: Option<&str>) -> String {
        let mut out = String::with_capacity(512);
        out.push_str("{\"parameters\":{");
        for p in &self.0 {
            push_json_string(&mut out, &p.name);
            out.push(':');
            match p.kind {
                Kind::Number => out.push_str(&p.text),
                Kind::String | Kind::Json => push_json_string(&mut out, &p.text),
            }
            out.push(',');
        }
        out.push_str("\"signature\":");
        push_json_string(&mut out, signature);
        out.push_str("},\"signature\":");
        push_json_string(&mut out, signature);
        out.push_str(",\"url\":");
        match base {
            Some(base) => push_json_string(&mut out, &self.url(base, signature)),
            None => out.push_str("null"),
        }
        out.push('}');
        out
    }
}

/// The text a JSON value is signed and sent as, and its kind; `None` for `null`.
fn text_of(value: &RawValue) -> Result<Option<(String, Kind)>, Invalid> {
    let raw = value.get();
    Ok(Some(match raw.as_bytes().first() {
        Some(b'"') => (
            serde_json::from_str(raw).map_err(|e| Invalid::new(e.to_string()))?,
            Kind::String,
        ),
        Some(b't') => ("1".into(), Kind::Number),
        Some(b'f') => ("0".into(), Kind::Number),
        Some(b'n') => return Ok(None),
        Some(b'{' | b'[') => (raw.to_string(), Kind::Json),
        _ => (raw.to_string(), Kind::Number),
    }))
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn push_json_string(out: &mut String, text: &str) {
    out.push_str(&serde_json::to_string(text).expect("a string serialises"));
}

/// Python's `urllib.parse.quote_plus(text, safe='')`: the unreserved bytes
/// `A-Za-z0-9_.-~` as they are, space as `+`, every other UTF-8 byte as `%XX` (upper
/// case), which is what `urlencode` writes for each key and value.
pub fn quote_plus(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Params {
        Params::parse(json.as_bytes()).unwrap()
    }

    const BASE: &str = r#""project_id":1234,"payment_id":"p1","customer_id":"c1","customer_email":"a@b.kz","customer_first_name":"A","customer_last_name":"B","payment_currency":"KZT","payment_amount":1000"#;

    #[test]
    fn quote_plus_matches_python() {
        // urllib.parse.quote_plus('Жанна a+b/c=d&e~f_g.h-i*', safe='')
        let mut out = String::new();
        quote_plus("Жанна a+b/c=d&e~f_g.h-i*", &mut out);
        assert_eq!(
            out,
            "%D0%96%D0%B0%D0%BD%D0%BD%D0%B0+a%2Bb%2Fc%3Dd%26e~f_g.h-i%2A"
        );
    }

    #[test]
    fn values_become_the_text_they_are_signed_as() {
        let p = params(
            r#"{"a":"x y","b":true,"c":false,"d":null,"e":{"k": [1, "Ж"]},"f":1.50,"g":""}"#,
        );
        let texts: Vec<_> =
            p.0.iter()
                .map(|p| (p.name.as_str(), p.text.as_str()))
                .collect();
        assert_eq!(
            texts,
            [
                ("a", "x y"),
                ("b", "1"),
                ("c", "0"),
                ("e", r#"{"k": [1, "Ж"]}"#),
                ("f", "1.50"),
                ("g", "")
            ]
        );
        assert_eq!(
            p.url("https://pp.test/payment", "A+/="),
            "https://pp.test/payment?a=x+y&b=1&c=0&e=%7B%22k%22%3A+%5B1%2C+%22%D0%96%22%5D%7D&f=1.50&g=&signature=A%2B%2F%3D"
        );
        assert_eq!(
            p.answer("S", None),
            r#"{"parameters":{"a":"x y","b":1,"c":0,"e":"{\"k\": [1, \"Ж\"]}","f":1.50,"g":"","signature":"S"},"signature":"S","url":null}"#
        );
    }

    #[test]
    fn required_parameters_are_named() {
        let full = params(&format!("{{{BASE}}}"));
        assert_eq!(full.project_id(), Ok(1234));
        assert_eq!(full.check(), Ok(()));
        let err = params(r#"{"project_id":"1234","payment_id":"p","customer_email":""}"#)
            .check()
            .unwrap_err();
        assert_eq!(
            err.missing,
            [
                "customer_id",
                "customer_email",
                "customer_first_name",
                "customer_last_name",
                "payment_currency",
                "payment_amount"
            ]
        );
        assert!(
            err.reason
                .starts_with("missing required parameters: customer_id, ")
        );
        let no_project = params(r#"{"payment_id":"p"}"#).project_id().unwrap_err();
        assert_eq!(no_project.missing, ["project_id"]);
        for bad in [
            r#"{"project_id":"12a"}"#,
            r#"{"project_id":-1}"#,
            r#"{"project_id":{}}"#,
        ] {
            assert!(params(bad).project_id().is_err(), "{bad}");
        }
        let decimal = BASE.replace(r#""payment_amount":1000"#, r#""payment_amount":"10.00""#);
        let err = params(&format!("{{{decimal}}}")).check().unwrap_err();
        assert!(
            err.reason.starts_with("payment_amount must be an integer"),
            "{err}"
        );
        let twice = Params::parse(br#"{"a":1,"a":2}"#).unwrap_err();
        assert_eq!(twice.reason, "parameter a appears twice");
        let signed = params(&format!("{{{BASE},\"signature\":\"x\"}}"));
        assert!(signed.check().unwrap_err().reason.contains("signature"));
    }

    #[test]
    fn the_signature_is_the_canonical_string_of_the_texts() {
        let p = params(r#"{"b":true,"a":"x","frame_mode":"iframe","item10":1,"item2":2}"#);
        let mut canon = Canonicalizer::default();
        let secrets = Secrets::new(&["s"]);
        let sig = p.sign(&mut canon, &secrets).unwrap().unwrap();
        // PHP natural order, frame_mode left out (spec §2, §6).
        let expected = crate::signature::sign_canonical("s", b"a:x;b:1;item2:2;item10:1");
        assert_eq!(sig, expected);
    }
}
