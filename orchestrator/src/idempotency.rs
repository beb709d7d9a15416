//! Idempotency keys: requests that carry one are answered once and replayed after that.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The key a request carries, in the scope of its caller, with the fingerprint that says
/// whether a repeat is "the same request".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
}

impl IdempotencyClaim {
    /// Fingerprint of method, route, caller and body. The body is hashed in its canonical
    /// form (sorted keys), so re-ordered fields are still the same request.
    pub fn new(scope: &str, key: &str, method: &str, route: &str, body: &Value) -> Self {
        let mut hasher = Sha256::new();
        for part in [method.as_bytes(), route.as_bytes(), scope.as_bytes()] {
            hasher.update(part);
            hasher.update([0]);
        }
        hasher.update(serde_json::to_vec(body).expect("a JSON value serializes"));
        Self {
            scope: scope.to_string(),
            key: key.to_string(),
            fingerprint: hex::encode(hasher.finalize()),
        }
    }
}

/// The stored response to replay: status, body and the headers that matter (ETag, Location).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

/// Keys whose first request is still being processed in this process.
#[derive(Clone, Default)]
pub struct InFlightKeys {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
}

impl InFlightKeys {
    /// Mark the key as in flight until the returned guard is dropped; `None` when it already is.
    pub fn claim(&self, claim: &IdempotencyClaim) -> Option<InFlightGuard> {
        let entry = (claim.scope.clone(), claim.key.clone());
        let mut keys = self.keys.lock().expect("in-flight set lock");
        keys.insert(entry.clone()).then(|| InFlightGuard {
            keys: self.keys.clone(),
            entry,
        })
    }
}

pub struct InFlightGuard {
    keys: Arc<Mutex<HashSet<(String, String)>>>,
    entry: (String, String),
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(&self.entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprint_ignores_key_order_but_not_content_route_or_caller() {
        let a = IdempotencyClaim::new(
            "alice",
            "k",
            "PATCH",
            "/v1/cases/1/transition",
            &json!({"a": 1, "b": 2}),
        );
        let reordered: Value = serde_json::from_str(r#"{"b": 2, "a": 1}"#).unwrap();
        let same =
            IdempotencyClaim::new("alice", "k", "PATCH", "/v1/cases/1/transition", &reordered);
        assert_eq!(a.fingerprint, same.fingerprint);
        for other in [
            IdempotencyClaim::new(
                "alice",
                "k",
                "PATCH",
                "/v1/cases/1/transition",
                &json!({"a": 1}),
            ),
            IdempotencyClaim::new(
                "alice",
                "k",
                "PATCH",
                "/v1/cases/2/transition",
                &json!({"a": 1, "b": 2}),
            ),
            IdempotencyClaim::new(
                "bob",
                "k",
                "PATCH",
                "/v1/cases/1/transition",
                &json!({"a": 1, "b": 2}),
            ),
        ] {
            assert_ne!(a.fingerprint, other.fingerprint);
        }
    }

    #[test]
    fn a_key_is_in_flight_until_its_guard_drops() {
        let keys = InFlightKeys::default();
        let claim = IdempotencyClaim::new("s", "k", "POST", "/v1/cases", &json!({}));
        let guard = keys.claim(&claim).expect("first claim");
        assert!(keys.claim(&claim).is_none());
        drop(guard);
        assert!(keys.claim(&claim).is_some());
    }
}
