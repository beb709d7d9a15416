//! `http.call` (also registered as `gateway.flip`): one templated request to a configured base
//! URL, e.g. a gateway's admin API, succeeding on an expected status.
//!
//! Params (see `workflow/schemas/adapters/http.call.json`): `target` (a configured target name,
//! `default` when absent), `method`, `path` (joined to the target's base URL; it cannot leave
//! it), `query`, `headers`, `body` (JSON) and `expect_status` (an int or a list; any 2xx when
//! absent). Strings in the path, query values, header values and body strings may use
//! `{{case.id}}`, `{{case.tenant}}`, `{{case.title}}` and `{{labels.NAME}}`; path substitutions
//! are percent-encoded.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use workflow::messages::CaseBrief;

use crate::adapter::{Adapter, StepContext, StepError, StepOutput};

/// The most of a successful response body kept as the step's output.
pub const SUCCESS_OUTPUT_CAP: usize = 64 * 1024;
/// The most of an unexpected response body kept with the error.
pub const ERROR_OUTPUT_CAP: usize = 4 * 1024;

/// Headers a plan may not set: they are the transport's business.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
];

/// What a substituted path value keeps as is: RFC 3986's unreserved characters.
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One place requests may go to.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// `http://` or `https://` base URL; a step's `path` is appended to its path.
    pub base_url: String,
    /// Added to every request to this target (e.g. `Authorization`); a step cannot override
    /// them.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl HttpTarget {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            headers: BTreeMap::new(),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

impl fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are often credentials: names only.
        f.debug_struct("HttpTarget")
            .field("base_url", &self.base_url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The configuration of the `http.call` adapter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Target name → target; `default` is used when a step names none.
    pub targets: BTreeMap<String, HttpTarget>,
}

impl HttpConfig {
    /// One target named `default`.
    pub fn single(target: HttpTarget) -> Self {
        Self {
            targets: BTreeMap::from([("default".to_string(), target)]),
        }
    }

    pub fn with_target(mut self, name: impl Into<String>, target: HttpTarget) -> Self {
        self.targets.insert(name.into(), target);
        self
    }
}

/// A configuration `HttpCall::new` refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("http.call config: {0}")]
pub struct HttpConfigError(pub String);

struct Target {
    base: Url,
    headers: HeaderMap,
}

/// The `http.call` adapter.
pub struct HttpCall {
    targets: BTreeMap<String, Target>,
    client: reqwest::Client,
}

impl fmt::Debug for HttpCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let targets: BTreeMap<_, _> = self
            .targets
            .iter()
            .map(|(name, t)| (name, t.base.as_str()))
            .collect();
        f.debug_struct("HttpCall")
            .field("targets", &targets)
            .finish()
    }
}

impl HttpCall {
    pub fn new(config: HttpConfig) -> Result<Self, HttpConfigError> {
        let mut targets = BTreeMap::new();
        for (name, target) in config.targets {
            let base = Url::parse(&target.base_url).map_err(|e| {
                HttpConfigError(format!(
                    "target {name}: bad base_url {:?}: {e}",
                    target.base_url
                ))
            })?;
            if !matches!(base.scheme(), "http" | "https")
                || base.host_str().is_none()
                || base.cannot_be_a_base()
            {
                return Err(HttpConfigError(format!(
                    "target {name}: base_url {:?} is not an http(s) URL with a host",
                    target.base_url
                )));
            }
            if base.fragment().is_some() || !base.username().is_empty() || base.password().is_some()
            {
                return Err(HttpConfigError(format!(
                    "target {name}: base_url may not have a fragment or credentials (use headers)"
                )));
            }
            let mut headers = HeaderMap::new();
            for (header, value) in &target.headers {
                let header_name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    HttpConfigError(format!("target {name}: bad header name {header:?}"))
                })?;
                let mut header_value = HeaderValue::from_str(value).map_err(|_| {
                    HttpConfigError(format!("target {name}: bad value for header {header}"))
                })?;
                header_value.set_sensitive(true);
                headers.insert(header_name, header_value);
            }
            targets.insert(name, Target { base, headers });
        }
        let client = reqwest::Client::builder()
            // A redirect could leave the target: the status is the answer.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("opscase-executor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpConfigError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { targets, client })
    }

    /// The configured target names.
    pub fn targets(&self) -> Vec<&str> {
        self.targets.keys().map(String::as_str).collect()
    }

    fn prepare(&self, params: &Value, case: &CaseBrief) -> Result<Prepared, StepError> {
        let params = params
            .as_object()
            .ok_or_else(|| StepError::permanent("http.call params must be an object"))?;
        for key in params.keys() {
            if !matches!(
                key.as_str(),
                "target" | "method" | "path" | "query" | "headers" | "body" | "expect_status"
            ) {
                return Err(StepError::permanent(format!(
                    "http.call: unknown param {key:?}"
                )));
            }
        }

        let target_name = match params.get("target") {
            None | Some(Value::Null) => "default",
            Some(Value::String(name)) => name.as_str(),
            Some(_) => return Err(StepError::permanent("http.call: target must be a string")),
        };
        let target = self.targets.get(target_name).ok_or_else(|| {
            StepError::permanent(format!(
                "http.call: unknown target {target_name:?} (configured: {})",
                if self.targets.is_empty() {
                    "none".to_string()
                } else {
                    self.targets().join(", ")
                }
            ))
        })?;

        let method = match params.get("method").and_then(Value::as_str) {
            Some(m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE")) => {
                Method::from_bytes(m.as_bytes()).expect("a standard method")
            }
            Some(other) => {
                return Err(StepError::permanent(format!(
                    "http.call: unsupported method {other:?}"
                )))
            }
            None => return Err(StepError::permanent("http.call: method is required")),
        };

        let path_template = params
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| StepError::permanent("http.call: path is required"))?;
        let path = render(path_template, case, "path", |value| {
            utf8_percent_encode(value, PATH_VALUE).to_string()
        })?;
        check_path(&path)?;
        let mut url = target.base.clone();
        let base_path = target.base.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base_path}{path}"));
        if !url.path().starts_with(&format!("{base_path}/")) || url.host() != target.base.host() {
            return Err(StepError::permanent(format!(
                "http.call: path {path_template:?} leaves the target's base URL"
            )));
        }

        match params.get("query") {
            None | Some(Value::Null) => {}
            Some(Value::Object(query)) if !query.is_empty() => {
                let mut pairs = Vec::with_capacity(query.len());
                for (key, value) in query {
                    let value = value.as_str().ok_or_else(|| {
                        StepError::permanent(format!("http.call: query.{key} must be a string"))
                    })?;
                    pairs.push((
                        key,
                        render(value, case, &format!("query.{key}"), str::to_owned)?,
                    ));
                }
                let mut serializer = url.query_pairs_mut();
                for (key, value) in pairs {
                    serializer.append_pair(key, &value);
                }
            }
            Some(Value::Object(_)) => {}
            Some(_) => return Err(StepError::permanent("http.call: query must be an object")),
        }

        let mut headers = HeaderMap::new();
        match params.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(given)) => {
                for (name, value) in given {
                    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        StepError::permanent(format!("http.call: bad header name {name:?}"))
                    })?;
                    if RESERVED_HEADERS.contains(&header.as_str()) {
                        return Err(StepError::permanent(format!(
                            "http.call: header {name} may not be set by a step"
                        )));
                    }
                    if target.headers.contains_key(&header) {
                        return Err(StepError::permanent(format!(
                            "http.call: header {name} is set by target {target_name}'s configuration"
                        )));
                    }
                    let value = value.as_str().ok_or_else(|| {
                        StepError::permanent(format!("http.call: headers.{name} must be a string"))
                    })?;
                    let value = render(value, case, &format!("headers.{name}"), str::to_owned)?;
                    let value = HeaderValue::from_str(&value).map_err(|_| {
                        StepError::permanent(format!(
                            "http.call: headers.{name} is not a valid header value once templated"
                        ))
                    })?;
                    headers.append(header, value);
                }
            }
            Some(_) => return Err(StepError::permanent("http.call: headers must be an object")),
        }
        for (name, value) in &target.headers {
            headers.insert(name.clone(), value.clone());
        }

        let body = match params.get("body") {
            None | Some(Value::Null) => None,
            Some(body) => {
                let body = render_json(body, case, "body")?;
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                Some(serde_json::to_vec(&body).expect("JSON values serialize"))
            }
        };

        let expect = Expect::parse(params.get("expect_status"))?;

        Ok(Prepared {
            method,
            url,
            headers,
            body,
            expect,
        })
    }
}

struct Prepared {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
    expect: Expect,
}

impl Prepared {
    /// `PATCH /routes/checkout` (path and query, never the headers).
    fn request_line(&self) -> String {
        match self.url.query() {
            Some(query) => format!("{} {}?{}", self.method, self.url.path(), query),
            None => format!("{} {}", self.method, self.url.path()),
        }
    }
}

/// The statuses that count as success.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Any2xx,
    Listed(Vec<u16>),
}

impl Expect {
    fn parse(value: Option<&Value>) -> Result<Self, StepError> {
        let status = |v: &Value| {
            v.as_u64()
                .filter(|s| (100..=599).contains(s))
                .map(|s| s as u16)
                .ok_or_else(|| {
                    StepError::permanent(format!(
                        "http.call: expect_status must be an HTTP status (100..599) or a list of them, got {v}"
                    ))
                })
        };
        match value {
            None | Some(Value::Null) => Ok(Self::Any2xx),
            Some(Value::Array(list)) if !list.is_empty() => Ok(Self::Listed(
                list.iter().map(status).collect::<Result<_, _>>()?,
            )),
            Some(v @ Value::Array(_)) => Err(StepError::permanent(format!(
                "http.call: expect_status must not be empty, got {v}"
            ))),
            Some(v) => Ok(Self::Listed(vec![status(v)?])),
        }
    }

    fn matches(&self, status: StatusCode) -> bool {
        match self {
            Self::Any2xx => status.is_success(),
            Self::Listed(list) => list.contains(&status.as_u16()),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any2xx => f.write_str("2xx"),
            Self::Listed(list) => {
                let list: Vec<String> = list.iter().map(u16::to_string).collect();
                f.write_str(&list.join(", "))
            }
        }
    }
}

/// Refuses a (templated, encoded) path that is not a plain absolute path under the base.
fn check_path(path: &str) -> Result<(), StepError> {
    let refuse = |why: &str| {
        Err(StepError::permanent(format!(
            "http.call: path {path:?} refused: {why}"
        )))
    };
    if !path.starts_with('/') {
        return refuse("it must start with /");
    }
    if path.starts_with("//") {
        return refuse("it must not start with // (that names another host)");
    }
    if path.contains('?') || path.contains('#') {
        return refuse("put query parameters in `query`; fragments are not sent");
    }
    if path
        .chars()
        .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    {
        return refuse("backslashes, whitespace and control characters are not allowed");
    }
    for segment in path.split('/') {
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        if decoded
            .split(['/', '\\'])
            .any(|part| part == "." || part == "..")
        {
            return refuse("dot segments (. and ..) could leave the target's base path");
        }
    }
    Ok(())
}

/// Substitutes `{{case.id}}`, `{{case.tenant}}`, `{{case.title}}` and `{{labels.NAME}}` in
/// `template`, passing each value through `encode`. `what` names the string in errors.
fn render(
    template: &str,
    case: &CaseBrief,
    what: &str,
    encode: impl Fn(&str) -> String,
) -> Result<String, StepError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            StepError::permanent(format!(
                "http.call: unclosed placeholder in {what}: {:?}",
                &rest[start..]
            ))
        })?;
        let name = after[..end].trim();
        let value = match name {
            "case.id" => Some(case.id.as_str()),
            "case.tenant" => Some(case.tenant.as_str()),
            "case.title" => Some(case.title.as_str()),
            _ => name
                .strip_prefix("labels.")
                .and_then(|label| case.labels.get(label))
                .map(String::as_str),
        };
        let Some(value) = value else {
            let hint = match name.strip_prefix("labels.") {
                Some(label) => format!(
                    "the case has no label {label:?} (labels: {})",
                    if case.labels.is_empty() {
                        "none".to_string()
                    } else {
                        case.labels.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
                None => "known: {{case.id}}, {{case.tenant}}, {{case.title}}, {{labels.NAME}}"
                    .to_string(),
            };
            return Err(StepError::permanent(format!(
                "http.call: unknown placeholder {{{{{name}}}}} in {what}: {hint}"
            )));
        };
        out.push_str(&encode(value));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `render` applied to every string of a JSON value (not to object keys).
fn render_json(value: &Value, case: &CaseBrief, what: &str) -> Result<Value, StepError> {
    Ok(match value {
        Value::String(s) => Value::String(render(s, case, what, str::to_owned)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| render_json(item, case, &format!("{what}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, case, &format!("{what}.{k}"))?)))
                .collect::<Result<_, StepError>>()?,
        ),
        other => other.clone(),
    })
}

/// Reads at most `cap` bytes of the body; says whether there was more.
async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// The captured body as text, `None` when empty.
fn body_text(bytes: &[u8], truncated: bool) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    // A cut may split a UTF-8 sequence: drop the incomplete tail rather than garble it.
    let bytes = match std::str::from_utf8(bytes) {
        Err(e) if truncated && e.error_len().is_none() => &bytes[..e.valid_up_to()],
        _ => bytes,
    };
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    if truncated {
        text.push_str(&format!("\n[... truncated after {} bytes]", bytes.len()));
    }
    Some(text)
}

fn seconds(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[async_trait]
impl Adapter for HttpCall {
    fn action(&self) -> &'static str {
        "http.call"
    }

    fn describe(&self, params: &Value, context: &StepContext) -> Result<String, StepError> {
        let prepared = self.prepare(params, &context.case)?;
        Ok(format!(
            "would {} {} (expect {})",
            prepared.method, prepared.url, prepared.expect
        ))
    }

    async fn run(&self, params: &Value, context: &StepContext) -> Result<StepOutput, StepError> {
        let prepared = self.prepare(params, &context.case)?;
        let line = prepared.request_line();
        let mut request = self
            .client
            .request(prepared.method.clone(), prepared.url.clone())
            .headers(prepared.headers.clone());
        // The step's trace continues at the service called.
        for (name, value) in bus::trace::current_headers() {
            request = request.header(name, value);
        }
        if let Some(body) = &prepared.body {
            request = request.body(body.clone());
        }

        let attempt = async {
            let mut response = request.send().await?;
            let status = response.status();
            let expected = prepared.expect.matches(status);
            let cap = if expected {
                SUCCESS_OUTPUT_CAP
            } else {
                ERROR_OUTPUT_CAP
            };
            // An unexpected status is the answer even if its body cannot be read.
            let body = match read_capped(&mut response, cap).await {
                Ok(body) => body,
                Err(e) if !expected => (format!("[body unreadable: {e}]").into_bytes(), false),
                Err(e) => return Err(e),
            };
            Ok::<_, reqwest::Error>((status, expected, body))
        };

        let (status, expected, (body, truncated)) =
            match tokio::time::timeout(context.timeout, attempt).await {
                Err(_) => {
                    return Err(StepError::retryable(format!(
                        "{line}: no complete response within the step timeout of {}",
                        seconds(context.timeout)
                    )))
                }
                Ok(Err(e)) => {
                    let message = format!("{line}: {e}");
                    return Err(if e.is_builder() {
                        StepError::permanent(message)
                    } else {
                        StepError::retryable(message)
                    });
                }
                Ok(Ok(answer)) => answer,
            };
        let output = body_text(&body, truncated);
        if expected {
            return Ok(StepOutput {
                detail: format!("{line} -> {}", status.as_u16()),
                output,
            });
        }
        let message = format!("{line} -> {status} (expected {})", prepared.expect);
        let retryable = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        let error = if retryable {
            StepError::retryable(message)
        } else {
            StepError::permanent(message)
        };
        Err(error.with_output(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case() -> CaseBrief {
        CaseBrief {
            id: "c/1 x".into(),
            tenant: "acme".into(),
            title: "Checkout slow".into(),
            labels: BTreeMap::from([("service".to_string(), "checkout".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn renders_placeholders_and_refuses_unknown_ones() {
        let enc = |v: &str| utf8_percent_encode(v, PATH_VALUE).to_string();
        assert_eq!(
            render("/x/{{case.id}}/{{ labels.service }}", &case(), "path", enc).unwrap(),
            "/x/c%2F1%20x/checkout"
        );
        let err = render("{{case.nope}}", &case(), "body", str::to_owned).unwrap_err();
        assert!(!err.retryable);
        assert!(err.message.contains("{{case.nope}}"), "{}", err.message);
        let err = render("{{labels.team}}", &case(), "body", str::to_owned).unwrap_err();
        assert!(err.message.contains("{{labels.team}}"), "{}", err.message);
        assert!(render("{{case.id", &case(), "body", str::to_owned).is_err());
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in [
            "//evil.example/x",
            "/a/../b",
            "/a/%2e%2E/b",
            "/a/..%2Fb",
            "/a\\b",
            "/a?b=c",
            "relative",
            "/..",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in ["/", "/routes/checkout", "/a/..b/c", "/v1/x.y"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn expect_status_forms() {
        assert_eq!(Expect::parse(None).unwrap(), Expect::Any2xx);
        assert_eq!(
            Expect::parse(Some(&serde_json::json!(404))).unwrap(),
            Expect::Listed(vec![404])
        );
        assert_eq!(
            Expect::parse(Some(&serde_json::json!([200, 409])))
                .unwrap()
                .to_string(),
            "200, 409"
        );
        assert!(Expect::parse(Some(&serde_json::json!([]))).is_err());
        assert!(Expect::parse(Some(&serde_json::json!("200"))).is_err());
    }

    #[test]
    fn cut_bodies_stay_utf8() {
        let text = body_text("héllo".as_bytes().get(..2).unwrap(), true).unwrap();
        assert!(
            text.starts_with('h') && text.contains("truncated"),
            "{text}"
        );
        assert_eq!(body_text(b"", false), None);
    }
}
