//! The redactor every prompt passes before it leaves the process: opscase's own (keys,
//! bearer tokens, configured patterns, secret-named fields) plus the credential shapes an
//! alert annotation or a log line is likely to carry.

use orchestrator::redact::Redactor;
use serde_json::Value;

/// Credential shapes masked in prompts on top of opscase's own patterns.
const CREDENTIALS: [&str; 7] = [
    // key=value / key: value, where the key says secret
    r#"(?i)\b(pass(word)?|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|client[_-]?secret)\b(\s*[:=]\s*|"\s*:\s*")[^\s",;&]{4,}"#,
    // Basic and other schemes in an Authorization header
    r"(?i)\b(basic|token|digest)\s+[A-Za-z0-9._~+/=-]{8,}",
    // JSON Web Tokens
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    // AWS access key ids
    r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    // GitHub, Slack, OpenAI-style tokens
    r"\b(gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9_-]{20,})",
    // credentials in URLs
    r"(?i)(://[^/\s:@]+:)[^/\s@]+@",
    // PEM private keys
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
];

#[derive(Debug, Clone)]
pub struct LlmRedactor {
    inner: Redactor,
}

impl LlmRedactor {
    /// The built-in patterns plus `extra` (the configured `redaction.patterns` and
    /// `llm.redact`).
    pub fn new(extra: &[String]) -> Result<Self, regex::Error> {
        let patterns: Vec<String> = CREDENTIALS
            .iter()
            .map(|p| p.to_string())
            .chain(extra.iter().cloned())
            .collect();
        Ok(Self {
            inner: Redactor::new(&patterns)?,
        })
    }

    pub fn text(&self, text: &str) -> String {
        self.inner.text(text)
    }

    pub fn json(&self, value: &mut Value) {
        self.inner.json(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_an_alert_may_carry_are_masked() {
        let redactor = LlmRedactor::new(&[r"corp-\d{6}".into()]).unwrap();
        for secret in [
            "Authorization: Bearer abcdefghijklmnop",
            "password=hunter2hunter2",
            "\"api_key\": \"k-123456789\"",
            "Basic dXNlcjpwYXNzd29yZA==",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlc2ln",
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_0123456789abcdefghijABCDEFGHIJ",
            "sk-proj-0123456789abcdefghijklmn",
            "https://admin:s3cr3tpass@db.internal/x",
            "corp-123456",
        ] {
            let masked = redactor.text(&format!("note: {secret} end"));
            assert!(masked.contains("***"), "{secret} -> {masked}");
            assert!(masked.ends_with(" end"), "{secret} -> {masked}");
        }
        assert_eq!(redactor.text("p95 above 300 ms"), "p95 above 300 ms");
    }
}
