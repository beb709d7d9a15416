//! Extractors that turn bad input into problem+json naming what was wrong.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use orchestrator::IfMatch;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Duration, Instant};

use crate::problem::Problem;

/// By when a request's body must have arrived: `server.body_read_timeout_s` after its head.
/// Set on every request (as an extension) when it enters the service; a body still arriving
/// then is abandoned with 408, so a client that sends a head and trickles the body cannot
/// keep a `max_in_flight` slot for the whole request timeout.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    pub at: Instant,
    pub timeout: Duration,
}

impl BodyDeadline {
    pub fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    fn missed(&self) -> Problem {
        let mut problem = Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body timeout",
            format!(
                "the request body did not arrive within {}s (server.body_read_timeout_s); \
                 nothing was done, and the connection is closed",
                self.timeout.as_secs_f64()
            ),
        );
        problem.field = Some("body".into());
        // The rest of the body may still come: the connection cannot carry another request.
        problem.close_connection = true;
        problem
    }
}

/// A JSON body, whatever the `Content-Type` says: `curl -d '{...}'` sends
/// `application/x-www-form-urlencoded`, and the seed's demo relies on that working.
/// Keeps the raw JSON value too, for the idempotency fingerprint.
///
/// Every JSON body is read here, so here is where what no store can keep is refused: a NUL
/// character (`\u0000`) in any string or key (PostgreSQL's text and jsonb cannot hold it).
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Value,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Held while the body is read and parsed: the bytes, and the JSON tree built from them.
        let _share = match request.extensions().get::<BodyBudget>() {
            Some(budget) => budget.clone().reserve(request.headers()).await,
            None => None,
        };
        let deadline = request.extensions().get::<BodyDeadline>().copied();
        let read = Bytes::from_request(request, state);
        let bytes = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.at, read)
                .await
                .map_err(|_| deadline.missed())?,
            None => read.await,
        }
        .map_err(body_problem)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Problem::invalid(
                "body",
                "the request body is empty; send a JSON object",
            ));
        }
        let not_json = |e: serde_json::Error| {
            Problem::invalid(
                "body",
                format!(
                    "the body is not valid JSON: {} at line {}, column {}",
                    describe(&e),
                    e.line(),
                    e.column()
                ),
            )
        };
        // A large body is first checked without building anything: a JSON tree takes many
        // times the bytes it came from (30 times for an array of small objects), and a body
        // that is broken near its end would otherwise be refused only after the whole tree
        // was built. Small bodies skip this second pass.
        if bytes.len() > SMALL_BODY_BYTES {
            serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(not_json)?;
        }
        let raw: Value = serde_json::from_slice(&bytes).map_err(not_json)?;
        if !raw.is_object() {
            return Err(Problem::invalid("body", "the body must be a JSON object"));
        }
        refuse_nul(&raw)?;
        let value = serde_path_to_error::deserialize(&raw).map_err(|e| {
            let field = field_of(&e.path().to_string(), &e.inner().to_string(), "body");
            Problem::invalid(field.clone(), format!("{field}: {}", e.inner()))
        })?;
        Ok(JsonBody { value, raw })
    }
}

/// A NUL character in a string or key of `value` is a 400 naming where it is, as serde names
/// paths (`labels.service`, `meta.x[2]`; a key shows its NUL as `\u0000`).
fn refuse_nul(value: &Value) -> Result<(), Problem> {
    let mut path = Vec::new();
    let Some(in_key) = find_nul(value, &mut path) else {
        return Ok(());
    };
    let mut field = String::new();
    for step in &path {
        match step {
            Step::Index(index) => field.push_str(&format!("[{index}]")),
            Step::Key(key) => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(&key.replace('\0', "\\u0000"));
            }
        }
    }
    let what = if in_key { "the key" } else { "the value" };
    Err(Problem::invalid(
        field.clone(),
        format!("{field}: {what} contains a NUL character (\\u0000), which cannot be stored"),
    ))
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Leaves in `path` where the first NUL is; returns whether it is in a key (`None`: no NUL).
fn find_nul<'a>(value: &'a Value, path: &mut Vec<Step<'a>>) -> Option<bool> {
    match value {
        Value::String(text) => text.contains('\0').then_some(false),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            path.push(Step::Index(index));
            let found = find_nul(item, path);
            if found.is_none() {
                path.pop();
            }
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            path.push(Step::Key(key));
            if key.contains('\0') {
                return Some(true);
            }
            let found = find_nul(item, path);
            if found.is_none() {
                path.pop();
            }
            found
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// The field an error is about. serde's path already ends in an unknown field's name, but a
/// missing field's path is the object that lacks it, so that name is appended.
fn field_of(path: &str, message: &str, root: &str) -> String {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        (".", Some(name)) => name.to_string(),
        (".", None) => root.to_string(),
        (path, Some(name)) => format!("{path}.{name}"),
        (path, None) => path.to_string(),
    }
}

/// Bodies up to this size are read without asking [`BodyBudget`]: together they are bounded by
/// `server.max_in_flight` × 64 KiB, and ordinary requests (a transition is ~100 bytes) never
/// queue behind large ones.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Bounds the memory that request bodies take while they are read and parsed
/// (`server.body_buffer_bytes`). A body larger than [`SMALL_BODY_BYTES`] first reserves its
/// size (`Content-Length`, or the body limit when the length is not known up front) and waits
/// while the reservations of other bodies would exceed the budget; the request timeout bounds
/// the wait. Without it, every request in flight could hold a body near the limit plus a JSON
/// tree several times its size (1,024 × 1 MiB × that, at the defaults).
#[derive(Clone)]
pub struct BodyBudget {
    /// One permit per KiB.
    permits: Arc<Semaphore>,
    total_kib: u32,
    limit_bytes: usize,
}

impl BodyBudget {
    /// `bytes`: the budget; `limit_bytes`: the largest body a request may send.
    pub fn new(bytes: usize, limit_bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            limit_bytes,
        }
    }

    /// Wait for this body's share; `None` for a small body, which needs none.
    pub async fn reserve(self, headers: &HeaderMap) -> Option<OwnedSemaphorePermit> {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<usize>().ok());
        // Over the limit, the body is refused (413) after reading at most the limit.
        let bytes = length.unwrap_or(self.limit_bytes).min(self.limit_bytes);
        if bytes <= SMALL_BODY_BYTES {
            return None;
        }
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        // The semaphore is never closed.
        self.permits.acquire_many_owned(kib).await.ok()
    }
}

/// serde_json's message without its trailing " at line L column C" (we say that ourselves).
fn describe(error: &serde_json::Error) -> String {
    let text = error.to_string();
    text.split(" at line ").next().unwrap_or(&text).to_string()
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        let mut problem = Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            "the request body exceeds the configured limit (server.body_limit_bytes)",
        );
        problem.field = Some("body".into());
        problem
    } else {
        Problem::invalid(
            "body",
            format!("the body could not be read: {}", rejection.body_text()),
        )
    }
}

/// Query parameters, with unknown or malformed ones reported by name.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        if let Some((name, _)) = form_urlencoded::parse(query.as_bytes())
            .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            let field = name.replace('\0', "\\u0000");
            return Err(Problem::invalid(
                field.clone(),
                format!("query parameter {field} contains a NUL character (%00), which cannot be stored"),
            ));
        }
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(QueryParams)
            .map_err(|e| {
                let field = field_of(&e.path().to_string(), &e.inner().to_string(), "query");
                Problem::invalid(
                    field.clone(),
                    format!("query parameter {field}: {}", e.inner()),
                )
            })
    }
}

/// A path segment that must be a UUID.
pub fn parse_uuid(field: &str, text: &str) -> Result<uuid::Uuid, Problem> {
    uuid::Uuid::parse_str(text)
        .map_err(|_| Problem::invalid(field, format!("{field} {text:?} is not a UUID")))
}

/// `Idempotency-Key`: 1–255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| crate::contract::is_idempotency_key(k))
        .ok_or_else(|| {
            Problem::invalid(
                "Idempotency-Key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_string()))
}

/// `If-Match`: `*` (any version: no precondition), or a list of entity tags. If-Match
/// compares strongly (RFC 9110 §13.1.1): a weak tag (`W/"3"`) never matches, so a list of only
/// weak tags fails whatever the case's version. Strong tags must be versions of this API
/// (`"3"`, as the ETag gives them).
pub fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, Problem> {
    let mut values = Vec::new();
    for value in headers.get_all("if-match") {
        values.push(
            value
                .to_str()
                .map_err(|_| Problem::invalid("If-Match", "If-Match must be visible ASCII"))?,
        );
    }
    if values.is_empty() {
        return Ok(None);
    }
    // Several If-Match lines are one list (RFC 9110 §5.3).
    let text = values.join(", ");
    let text = text.trim();
    if text == "*" {
        return Ok(None);
    }
    let malformed = || {
        Problem::invalid(
            "If-Match",
            format!("If-Match {text:?} is not * or a list of ETags of this API, like \"3\""),
        )
    };
    let mut versions = Vec::new();
    for (weak, tag) in entity_tags(text).ok_or_else(malformed)? {
        if !weak {
            versions.push(tag.parse::<i64>().map_err(|_| malformed())?);
        }
    }
    Ok(Some(IfMatch(versions)))
}

/// `#entity-tag` (RFC 9110 §8.8.3): each tag as (weak, opaque text); `None` when malformed
/// or empty.
fn entity_tags(text: &str) -> Option<Vec<(bool, &str)>> {
    let mut tags = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let weak = rest.starts_with("W/");
        let quoted = rest.strip_prefix("W/").unwrap_or(rest).strip_prefix('"')?;
        let end = quoted.find('"')?;
        tags.push((weak, &quoted[..end]));
        rest = quoted[end + 1..].trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return None;
        }
    }
    (!tags.is_empty()).then_some(tags)
}

/// Tenant names: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn validate_tenant(field: &str, tenant: &str) -> Result<(), Problem> {
    if crate::contract::is_tenant(tenant) {
        Ok(())
    } else {
        Err(Problem::invalid(
            field,
            "tenant must be 1 to 64 of A-Z a-z 0-9 - _ .",
        ))
    }
}

/// The `{id}` path segment as text, whatever it holds: a segment that is not UTF-8 once
/// percent-decoded (`%FF`) is a problem naming `id`, like one that is not a UUID, instead of
/// axum's plain-text rejection.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| PathId(id))
            .map_err(|rejection| {
                Problem::invalid("id", format!("the path's id: {}", rejection.body_text()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn length(bytes: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, bytes.to_string().parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn large_bodies_share_the_budget_and_small_ones_need_none() {
        let budget = BodyBudget::new(2 * 1024 * 1024, 1024 * 1024);
        assert!(budget.clone().reserve(&length(100)).await.is_none());
        assert!(budget
            .clone()
            .reserve(&length(SMALL_BODY_BYTES))
            .await
            .is_none());
        let first = budget.clone().reserve(&length(1024 * 1024)).await.unwrap();
        // No length: counted as a body at the limit. Over the limit: as much as the limit.
        let second = budget.clone().reserve(&HeaderMap::new()).await.unwrap();
        let waiting = budget.clone();
        let third = tokio::spawn(async move { waiting.reserve(&length(10 * 1024 * 1024)).await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !third.is_finished(),
            "the budget is spent: the third body waits"
        );
        assert!(budget.clone().reserve(&length(100)).await.is_none());
        drop(first);
        let third = third.await.unwrap().unwrap();
        assert_eq!(third.num_permits(), 1024);
        drop((second, third));
        assert_eq!(budget.permits.available_permits(), 2048);
    }

    #[tokio::test]
    async fn a_budget_below_the_limit_still_lets_one_body_through() {
        let budget = BodyBudget::new(100 * 1024, 1024 * 1024);
        let permit = budget.reserve(&length(1024 * 1024)).await.unwrap();
        assert_eq!(permit.num_permits(), 100);
    }
}
