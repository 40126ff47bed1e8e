//! The terminal methods' answer dialects: Kassa24 and Kassa24 BVU give the reason in
//! `error_description`, PayDala in `message`. Answers are always HTTP 200 with a
//! protocol `code`: 0 success, 400 bad signature, 404 no account, 500 general error.

use serde_json::{Map, Value};

/// Where a method writes its error reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `kassa24`, `kassa24_bvu`.
    Kassa24,
    /// `terminal/paydala`.
    PayDala,
}

impl Dialect {
    /// The dialect of a payment method; unknown methods speak Kassa24's, the original.
    pub fn of(method: Option<&str>) -> Dialect {
        match method {
            Some(m)
                if m.eq_ignore_ascii_case("terminal/paydala")
                    || m.eq_ignore_ascii_case("paydala") =>
            {
                Dialect::PayDala
            }
            _ => Dialect::Kassa24,
        }
    }

    pub fn reason_field(self) -> &'static str {
        match self {
            Dialect::Kassa24 => "error_description",
            Dialect::PayDala => "message",
        }
    }

    fn other_field(self) -> &'static str {
        match self {
            Dialect::Kassa24 => "message",
            Dialect::PayDala => "error_description",
        }
    }

    /// The gateway's own answer: `code` and a reason.
    pub fn error(self, code: u16, reason: &str) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), code.into());
        m.insert(self.reason_field().into(), reason.into());
        Value::Object(m)
    }

    /// Whether an answer giving its reason in these fields speaks the other dialect.
    pub fn foreign(self, message: bool, error_description: bool) -> bool {
        match self {
            Dialect::Kassa24 => message && !error_description,
            Dialect::PayDala => error_description && !message,
        }
    }

    /// A merchant answer in this dialect: a reason written in the other dialect's
    /// field moves to ours (unless ours is already there).
    pub fn translate(self, mut answer: Map<String, Value>) -> Value {
        if !answer.contains_key(self.reason_field())
            && let Some(reason) = answer.remove(self.other_field())
        {
            answer.insert(self.reason_field().into(), reason);
        }
        Value::Object(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reasons_move_to_the_methods_field() {
        let paydala = Dialect::of(Some("terminal/paydala"));
        let kassa = Dialect::of(Some("kassa24_bvu"));
        let from_kassa = json!({"code": 404, "error_description": "Account does not exist"});
        assert_eq!(
            paydala.translate(from_kassa.as_object().unwrap().clone()),
            json!({"code": 404, "message": "Account does not exist"})
        );
        let from_paydala = json!({"code": 500, "message": "down"});
        assert_eq!(
            kassa.translate(from_paydala.as_object().unwrap().clone()),
            json!({"code": 500, "error_description": "down"})
        );
        assert_eq!(
            paydala.error(400, "x"),
            json!({"code": 400, "message": "x"})
        );
        assert_eq!(Dialect::of(None), Dialect::Kassa24);
        assert!(paydala.foreign(false, true) && !paydala.foreign(true, true));
        assert!(kassa.foreign(true, false) && !kassa.foreign(false, false));
    }
}
