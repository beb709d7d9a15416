//! API keys and the principals they authenticate.
//!
//! A key is `osk_` followed by 256 random bits in hex. Only its SHA-256 is stored: the key is
//! found by that hash and the stored hash is compared in constant time, so neither the
//! database nor the timing of a refusal reveals a key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

const KEY_PREFIX: &str = "osk_";
/// Keys supplied from outside (the bootstrap key) must be at least this long: ~128 bits of
/// hex or more of anything denser.
pub const MIN_SUPPLIED_KEY_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read cases, timelines and products.
    Viewer,
    /// Open cases, apply events (except gate decisions), send commands.
    Operator,
    /// Decide the gate (`gate_approved`, `gate_rejected`) as a human.
    Approver,
    /// Everything, including keys.
    Admin,
    /// Scrape `/metrics`, nothing else.
    Metrics,
    /// Post signals (alerts, events) and metric points, nothing else: the key of an
    /// Alertmanager receiver or a metrics shipper.
    Sensor,
    /// Curate the knowledge base (add and remove documents) and read it.
    Librarian,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Viewer,
        Role::Operator,
        Role::Approver,
        Role::Admin,
        Role::Metrics,
        Role::Sensor,
        Role::Librarian,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Metrics => "metrics",
            Role::Sensor => "sensor",
            Role::Librarian => "librarian",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// Who is calling: the key that authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub name: String,
    pub roles: Vec<Role>,
    /// A tenant-scoped key sees and changes only that tenant's cases.
    pub tenant: Option<String>,
}

impl Principal {
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }

    /// The identity four eyes compares: the key, never a client-supplied name.
    pub fn identity(&self) -> String {
        format!("key:{}", self.key_id)
    }
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub roles: Vec<Role>,
    pub tenant: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }

    pub fn principal(&self) -> Principal {
        Principal {
            key_id: self.id,
            name: self.name.clone(),
            roles: self.roles.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

/// What it takes to create a key.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub roles: Vec<Role>,
    pub tenant: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
}

/// A fresh random key: shown once to whoever created it, then only its hash exists.
pub fn generate_key() -> String {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).expect("the OS random source is available");
    format!("{KEY_PREFIX}{}", hex::encode(secret))
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Constant-time equality of two key hashes.
pub fn hashes_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_random_and_long() {
        let (a, b) = (generate_key(), generate_key());
        assert!(a.starts_with("osk_") && a.len() == 4 + 64);
        assert_ne!(a, b);
        assert_ne!(hash_key(&a), hash_key(&b));
        assert!(hashes_match(&hash_key(&a), &hash_key(&a)));
        assert!(!hashes_match(&hash_key(&a), &hash_key(&b)));
    }

    #[test]
    fn revoked_or_expired_keys_are_not_usable() {
        let now = Utc::now();
        let key = ApiKey {
            id: Uuid::now_v7(),
            name: "ci".into(),
            roles: vec![Role::Viewer],
            tenant: None,
            created_by: "admin".into(),
            created_at: now,
            expires_at: None,
            revoked_at: None,
        };
        assert!(key.is_usable(now));
        let expired = ApiKey {
            expires_at: Some(now),
            ..key.clone()
        };
        assert!(!expired.is_usable(now));
        let revoked = ApiKey {
            revoked_at: Some(now),
            ..key
        };
        assert!(!revoked.is_usable(now));
    }
}
