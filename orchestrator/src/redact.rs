//! Secrets never reach the timeline or the logs: API keys, bearer tokens, anything matching
//! configured patterns, and the values of fields whose names say they are secret.

use regex::Regex;
use serde_json::Value;

const MASK: &str = "***";

/// Always redacted: opscase's own keys and bearer credentials.
const BUILT_IN: [&str; 2] = [
    r"osk_[0-9A-Za-z]{16,}",
    r"(?i)bearer\s+[A-Za-z0-9._~+/=-]{8,}",
];

/// Field names whose values are secret whatever they look like.
const SECRET_FIELD: &str = r"(?i)^(pass(word)?|passwd|secret|token|api[_-]?key|authorization|credentials?|private[_-]?key)$";

#[derive(Debug, Clone)]
pub struct Redactor {
    patterns: Vec<Regex>,
    secret_field: Regex,
}

impl Redactor {
    /// The built-in patterns plus `extra` (regular expressions from configuration).
    pub fn new(extra: &[String]) -> Result<Self, regex::Error> {
        Self::with_literals(extra, &[])
    }

    /// As `new`, also masking each of `literals` exactly (a configured secret such as the
    /// bootstrap key, which need not look like anything in particular).
    pub fn with_literals(extra: &[String], literals: &[&str]) -> Result<Self, regex::Error> {
        let literals = literals
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| regex::escape(l));
        let patterns = BUILT_IN
            .iter()
            .map(|p| p.to_string())
            .chain(extra.iter().cloned())
            .chain(literals)
            .map(|p| Regex::new(&p))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            patterns,
            secret_field: Regex::new(SECRET_FIELD).expect("valid pattern"),
        })
    }

    pub fn text(&self, text: &str) -> String {
        let mut text = text.to_string();
        for pattern in &self.patterns {
            if pattern.is_match(&text) {
                text = pattern.replace_all(&text, MASK).into_owned();
            }
        }
        text
    }

    /// Redact every string in `value`, and whole values under secret-sounding keys.
    pub fn json(&self, value: &mut Value) {
        match value {
            Value::String(text) => *text = self.text(text),
            Value::Array(items) => items.iter_mut().for_each(|item| self.json(item)),
            Value::Object(fields) => {
                for (name, field) in fields.iter_mut() {
                    if self.secret_field.is_match(name) {
                        *field = Value::String(MASK.into());
                    } else {
                        self.json(field);
                    }
                }
            }
            _ => {}
        }
    }

    pub fn is_secret_field(&self, name: &str) -> bool {
        self.secret_field.is_match(name)
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(&[]).expect("built-in patterns are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_tokens_patterns_and_secret_fields_are_masked() {
        let redactor = Redactor::new(&[r"hunter\d".into()]).unwrap();
        assert_eq!(
            redactor.text("use osk_0123456789abcdef0123 or Bearer abc.def-ghi_123 or hunter2"),
            "use *** or *** or ***"
        );
        let mut meta = json!({
            "note": "token osk_aaaaaaaaaaaaaaaaaaaa here",
            "Password": "plain",
            "nested": [{"api_key": 42}, "fine"],
            "count": 3
        });
        redactor.json(&mut meta);
        assert_eq!(
            meta,
            json!({"note": "token *** here", "Password": "***", "nested": [{"api_key": "***"}, "fine"], "count": 3})
        );
    }

    #[test]
    fn configured_literals_are_masked_whatever_they_look_like() {
        let redactor = Redactor::with_literals(&[], &["plain-looking-secret-value"]).unwrap();
        assert_eq!(redactor.text("key=plain-looking-secret-value;"), "key=***;");
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let redactor = Redactor::default();
        assert_eq!(
            redactor.text("p95 spike on checkout (bearer of bad news)"),
            "p95 spike on checkout (bearer of bad news)"
        );
    }
}
