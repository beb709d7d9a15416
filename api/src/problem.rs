//! RFC 9457 problem details: the one shape every error of the API takes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orchestrator::{Error, StoreError};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;
use workflow::{allowed_events, Event, GuardFailure, Status};

use crate::request_id;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer. `type` is a stable URN per kind of problem; the extensions say what the
/// client needs to recover (the case's current version and the events it accepts, the field
/// that was wrong, the guard that refused).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The input field (body path, header or query parameter) that was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_events: Option<Vec<Event>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard_failures: Option<Vec<GuardFailure>>,
    /// The gate policy rule that refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Seconds after which the same request may succeed: sent as `Retry-After`.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// The connection cannot carry another request (a body was left unread):
    /// `Connection: close`.
    #[serde(skip)]
    pub close_connection: bool,
}

/// What a client is told to wait before retrying while the store is unavailable.
pub const STORE_RETRY_AFTER_S: u64 = 5;

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:opscase:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            case_id: None,
            current_status: None,
            current_version: None,
            allowed_events: None,
            guard_failures: None,
            rule: None,
            request_id: request_id::current(),
            retry_after: None,
            close_connection: false,
        }
    }

    /// Retry after `seconds` (at least 1): the `Retry-After` header.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// 400 for input that cannot be used, naming the field.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let mut problem = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "Invalid request",
            detail,
        );
        problem.field = Some(field.into());
        problem
    }

    /// 422 for input that matches the API's schema but whose content is refused (a combination
    /// of fields that makes no sense, a date in the past), naming the field.
    pub fn unprocessable(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let mut problem = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable-request",
            "Unprocessable request",
            detail,
        );
        problem.field = Some(field.into());
        problem
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed to handle this request; it has been logged under this request_id",
        )
    }

    fn with_case(mut self, case: &orchestrator::model::Case) -> Self {
        self.case_id = Some(case.id);
        self.current_status = Some(case.status);
        self.current_version = Some(case.version);
        self.allowed_events = Some(allowed_events(case.status));
        self
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<&Error> for Problem {
    fn from(error: &Error) -> Self {
        match error {
            Error::NotFound(id) => {
                let mut problem = Problem::new(
                    StatusCode::NOT_FOUND,
                    "case-not-found",
                    "Case not found",
                    error.to_string(),
                );
                problem.case_id = Some(*id);
                problem
            }
            Error::PreconditionFailed { case, .. } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Version precondition failed",
                format!(
                    "{error}; read the case again and retry with If-Match: \"{}\"",
                    case.version
                ),
            )
            .with_case(case),
            Error::VersionMismatch { case, .. } => Problem::new(
                StatusCode::CONFLICT,
                "version-mismatch",
                "Version mismatch",
                error.to_string(),
            )
            .with_case(case),
            Error::Illegal { case, illegal } => {
                let allowed: Vec<&str> = illegal.allowed.iter().map(|e| e.as_str()).collect();
                Problem::new(
                    StatusCode::CONFLICT,
                    "illegal-transition",
                    "Illegal transition",
                    format!(
                        "{error}; allowed in {}: {}",
                        illegal.from,
                        allowed.join(", ")
                    ),
                )
                .with_case(case)
            }
            Error::CommandNotApplicable { case, .. } => Problem::new(
                StatusCode::CONFLICT,
                "command-not-applicable",
                "Command not applicable",
                error.to_string(),
            )
            .with_case(case),
            Error::GuardFailed { case, failures, .. } => {
                let reasons: Vec<String> = failures
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect();
                let mut problem = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "guard-failed",
                    "Guard refused the transition",
                    format!("{error}: {}", reasons.join("; ")),
                )
                .with_case(case);
                problem.guard_failures = Some(failures.clone());
                problem
            }
            Error::IdempotencyMismatch => {
                let mut problem = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    format!("{error}; use a new key for a new request"),
                );
                problem.field = Some("Idempotency-Key".into());
                problem
            }
            Error::InFlight => {
                let mut problem = Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency-key-in-flight",
                    "Request in flight",
                    format!("{error}; retry after it completes to get its response"),
                );
                problem.field = Some("Idempotency-Key".into());
                problem
            }
            Error::KeyNotFound(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "key-not-found",
                "API key not found",
                error.to_string(),
            ),
            Error::InvalidKey(message) => Problem::invalid("key", message.clone()),
            // Only bus consumers meet this; over HTTP it would be a bug.
            Error::BadMessage(_) => Problem::internal(),
            Error::Store(store) => Problem::from(store),
        }
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        Problem::from(&error)
    }
}

/// A store that cannot be used just now is a 503 the client may retry; any other store error
/// is a bug, logged and answered 500 without its text.
impl From<&StoreError> for Problem {
    fn from(error: &StoreError) -> Self {
        if error.is_unavailable() {
            tracing::warn!(error = %error, "store unavailable");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Store unavailable",
                "the database cannot be used just now; retry later, with the same \
                 Idempotency-Key so that a request is never applied twice",
            )
            .retry_after(STORE_RETRY_AFTER_S)
        } else {
            tracing::error!(error = %error, "store error");
            Problem::internal()
        }
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        Problem::from(&error)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut response = (status, axum::Json(&self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close_connection {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_is_a_retryable_503_and_other_store_errors_a_500() {
        let outage = Error::Store(StoreError::CommitFailed(orchestrator::CommitFailure {
            reason: "disk I/O error".into(),
            unavailable: true,
        }));
        let problem = Problem::from(&outage);
        assert_eq!(problem.kind, "urn:opscase:problem:store-unavailable");
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);

        let bug = Problem::from(&Error::Store(StoreError::Corrupt("x".into())));
        assert_eq!(bug.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(bug.kind, "urn:opscase:problem:internal");
        assert_eq!(bug.retry_after, None);
    }
}
