//! Who may do what: API-key authentication, role checks, per-key rate limits, and the cap on
//! requests in flight.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orchestrator::{Principal, Role};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::problem::Problem;
use crate::AppState;

/// What a route needs: one of these roles.
pub trait Access: Send + Sync + 'static {
    const ROLES: &'static [Role];
    const WHAT: &'static str;
}

/// Post signals and metric points (an Alertmanager receiver, a metrics shipper).
pub struct Ingest;
impl Access for Ingest {
    const ROLES: &'static [Role] = &[Role::Sensor, Role::Operator, Role::Admin];
    const WHAT: &'static str = "post signals or metrics";
}

/// Read cases, timelines, products, schemas.
pub struct Read;
impl Access for Read {
    const ROLES: &'static [Role] = &[Role::Viewer, Role::Operator, Role::Approver, Role::Admin];
    const WHAT: &'static str = "read cases";
}

/// Read the knowledge base: every reader, and its curators.
pub struct ReadKnowledge;
impl Access for ReadKnowledge {
    const ROLES: &'static [Role] = &[
        Role::Viewer,
        Role::Operator,
        Role::Approver,
        Role::Admin,
        Role::Librarian,
    ];
    const WHAT: &'static str = "read the knowledge base";
}

/// Add and remove knowledge base documents.
pub struct Curate;
impl Access for Curate {
    const ROLES: &'static [Role] = &[Role::Librarian, Role::Admin];
    const WHAT: &'static str = "add or remove knowledge base documents";
}

/// Open cases and send commands.
pub struct Operate;
impl Access for Operate {
    const ROLES: &'static [Role] = &[Role::Operator, Role::Admin];
    const WHAT: &'static str = "open cases or send commands";
}

/// Apply events: operators for most, approvers for gate decisions (checked per event).
pub struct Transition;
impl Access for Transition {
    const ROLES: &'static [Role] = &[Role::Operator, Role::Approver, Role::Admin];
    const WHAT: &'static str = "apply events to cases";
}

/// Decide the gate as a human.
pub struct Decide;
impl Access for Decide {
    const ROLES: &'static [Role] = &[Role::Approver, Role::Admin];
    const WHAT: &'static str = "decide the gate (gate_approved, gate_rejected)";
}

/// Scrape metrics.
pub struct Scrape;
impl Access for Scrape {
    const ROLES: &'static [Role] = &[Role::Metrics, Role::Admin];
    const WHAT: &'static str = "read /metrics";
}

/// Manage keys.
pub struct Administer;
impl Access for Administer {
    const ROLES: &'static [Role] = &[Role::Admin];
    const WHAT: &'static str = "manage API keys";
}

/// Any valid key (to learn who it is).
pub struct AnyKey;
impl Access for AnyKey {
    const ROLES: &'static [Role] = &Role::ALL;
    const WHAT: &'static str = "be used";
}

/// The caller, proven to hold one of `A`'s roles. Taking it as a handler argument is how a
/// route states who may call it.
pub struct Allowed<A: Access> {
    pub principal: Principal,
    access: PhantomData<A>,
}

impl<A: Access> Allowed<A> {
    /// The caller also needs `B` (for checks that depend on the request's content).
    pub fn also<B: Access>(&self) -> Result<(), Problem> {
        check::<B>(&self.principal)
    }
}

impl<S: Send + Sync, A: Access> FromRequestParts<S> for Allowed<A> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(unauthenticated)?;
        check::<A>(&principal)?;
        Ok(Allowed {
            principal,
            access: PhantomData,
        })
    }
}

fn check<A: Access>(principal: &Principal) -> Result<(), Problem> {
    if principal.has_any(A::ROLES) {
        Ok(())
    } else {
        let needed: Vec<&str> = A::ROLES.iter().map(|r| r.as_str()).collect();
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!(
                "this key may not {}; that needs one of the roles: {}",
                A::WHAT,
                needed.join(", ")
            ),
        ))
    }
}

fn unauthenticated() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "Unauthenticated",
        "send a valid API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
    )
}

/// Resolve the presented key to a principal (or answer 401), then apply its rate limit.
pub async fn authenticate(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(presented) = presented_key(request.headers()) else {
        return challenge(unauthenticated());
    };
    let principal = match app.orchestrator.authenticate(&presented).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return challenge(unauthenticated()),
        Err(error) => return Problem::from(&error).into_response(),
    };
    if let Err(retry_after) = app.rate_limiter.admit(principal.key_id) {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            format!("this key is over its rate limit; retry in {seconds}s"),
        )
        .retry_after(seconds)
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn challenge(problem: Problem) -> Response {
    let mut response = problem.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"opscase\""),
    );
    response
}

fn presented_key(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    bearer
        .or(api_key)
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// A token bucket per key: `per_second` sustained, `burst` at once.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_second == 0` turns limiting off.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take a token for `key`, or say how long until one is free.
    pub fn admit(&self, key: Uuid) -> Result<(), Duration> {
        self.admit_at(key, Instant::now())
    }

    /// [`admit`](Self::admit) at the instant `now` (later than any earlier call's).
    fn admit_at(&self, key: Uuid, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled =
            bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = refilled.min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

/// Refuse (503) rather than queue once `max_in_flight` requests are being handled. Health
/// routes are outside this limit (see `app`): a probe must not fail because the server is busy.
pub async fn limit_in_flight(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_slot) = slots.try_acquire() else {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Server busy",
            "too many requests are in flight (server.max_in_flight); retry shortly",
        )
        .retry_after(1)
        .into_response();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_until_refilled() {
        // The clock is given, not read: the test does not depend on how fast it runs.
        let limiter = RateLimiter::new(1000.0, 3.0);
        let key = Uuid::now_v7();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.admit_at(key, start).is_ok());
        }
        let wait = limiter.admit_at(key, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1));
        assert!(
            limiter.admit_at(Uuid::now_v7(), start).is_ok(),
            "buckets are per key"
        );
        let half = start + Duration::from_micros(500);
        assert!(limiter.admit_at(key, half).is_err(), "half a token is none");
        assert!(limiter
            .admit_at(key, start + Duration::from_millis(1))
            .is_ok());
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let limiter = RateLimiter::new(0.0, 1.0);
        let key = Uuid::now_v7();
        assert!((0..100).all(|_| limiter.admit(key).is_ok()));
    }
}
