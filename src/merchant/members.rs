//! A JSON object's members in the order they were written, each value as its raw
//! text: Payment Page parameters keep the merchant's order in the URL, and a Gate API
//! body is signed in place without being written anew.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::Invalid;

/// The members of one object, in order; values borrowed from the parsed text.
pub struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Members<'a> {
    /// Parses `text`, which must be one JSON object.
    pub fn parse(text: &'a [u8]) -> Result<Self, Invalid> {
        let mut de = serde_json::Deserializer::from_slice(text);
        let members = de
            .deserialize_map(Collect)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| {
                let reason = if e.is_data() {
                    "body is not a JSON object".to_string()
                } else {
                    format!("body is not valid JSON: {e}")
                };
                Invalid::new(reason)
            })?;
        Ok(Members(members))
    }

    /// The value of the first member named `name`.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

struct Collect;

impl<'de> Visitor<'de> for Collect {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
            out.push(member);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Members;

    #[test]
    fn members_keep_their_order_and_raw_text() {
        let body = br#" {"b": 1.50, "a": {"x" : [1, 2]}, "gen\u0065ral": "\u0416"} "#;
        let m = Members::parse(body).unwrap();
        let names: Vec<_> = m.iter().map(|(k, v)| (k.to_string(), v.get())).collect();
        assert_eq!(
            names,
            [
                ("b".to_string(), "1.50"),
                ("a".to_string(), r#"{"x" : [1, 2]}"#),
                ("general".to_string(), r#""\u0416""#),
            ]
        );
        assert!(Members::parse(b"[1]").is_err());
        assert!(Members::parse(b"{} x").is_err());
        assert!(Members::parse(b"{").is_err());
    }
}
