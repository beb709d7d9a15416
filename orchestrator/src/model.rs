//! The records the orchestrator keeps, as the API shows them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use workflow::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    High,
    #[default]
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }
}

/// `manual`: every step is asked for. `auto`: entering a working state issues its command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Automation {
    #[default]
    Manual,
    Auto,
}

impl Automation {
    pub fn as_str(self) -> &'static str {
        match self {
            Automation::Manual => "manual",
            Automation::Auto => "auto",
        }
    }
}

/// An incident case: the single source of truth for where the incident stands.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Case {
    pub id: Uuid,
    pub tenant: String,
    pub title: String,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub automation: Automation,
    /// Free-form evidence links or snippets supplied when the case was opened.
    pub evidence: Vec<Value>,
    pub status: Status,
    /// Grows by one with every accepted event; sent as the `ETag`.
    pub version: i64,
    /// `resolved` or `cancelled` once CLOSED.
    pub resolution: Option<String>,
    pub current_plan_id: Option<Uuid>,
    /// What opened it: `api` (a person or a script), or the signal source (`alertmanager`,
    /// `grafana`, `events`, `analyst`).
    pub source: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What it takes to open a case.
#[derive(Debug, Clone)]
pub struct NewCase {
    pub tenant: String,
    pub title: String,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub automation: Automation,
    pub evidence: Vec<Value>,
    /// `api`, or the signal source that opened it.
    pub source: String,
    pub created_by: String,
}

/// `applied`: the event moved the case. `rejected`: a guard refused it and nothing changed.
/// `ignored`: a worker's event arrived when the case could no longer take it (e.g. late).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Rejected,
    Ignored,
    /// A command was sent to a worker; the case has not moved (yet).
    Requested,
    /// A worker reported something that moves nothing (a step result, a gate hold).
    Noted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::Ignored => "ignored",
            Outcome::Requested => "requested",
            Outcome::Noted => "noted",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "applied" => Some(Outcome::Applied),
            "rejected" => Some(Outcome::Rejected),
            "ignored" => Some(Outcome::Ignored),
            "requested" => Some(Outcome::Requested),
            "noted" => Some(Outcome::Noted),
            _ => None,
        }
    }
}

/// One row of a case's history.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TimelineEntry {
    pub id: i64,
    pub case_id: Uuid,
    /// The case version after this row (unchanged for a rejected attempt).
    pub version: i64,
    /// A state-machine event, or `open` for the case's creation.
    pub event: String,
    pub outcome: Outcome,
    pub from_status: Option<Status>,
    pub to_status: Option<Status>,
    /// What the client says it is.
    pub actor: String,
    /// The API key that authenticated the write (`key:<id>`), and its name.
    pub principal_id: Option<String>,
    pub principal_name: Option<String>,
    pub reason: Option<String>,
    pub correlation_id: Option<String>,
    pub request_id: Option<String>,
    /// Client-supplied meta plus what the orchestrator adds (trace context, guard failures).
    pub meta: Value,
    pub created_at: DateTime<Utc>,
}

/// A timeline row before it has an id.
#[derive(Debug, Clone)]
pub struct NewTimelineEntry {
    pub case_id: Uuid,
    pub version: i64,
    pub event: String,
    pub outcome: Outcome,
    pub from_status: Option<Status>,
    pub to_status: Option<Status>,
    pub actor: String,
    pub principal_id: Option<String>,
    pub principal_name: Option<String>,
    pub reason: Option<String>,
    pub correlation_id: Option<String>,
    pub request_id: Option<String>,
    pub meta: Value,
    pub created_at: DateTime<Utc>,
}

/// A message waiting in the outbox for the relay.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OutboxMessage {
    /// Stable: derived from case, version and topic, so a rebuilt message keeps its id.
    pub message_id: Uuid,
    pub topic: String,
    /// The case id: messages of one case keep their order.
    pub key: String,
    pub payload: Value,
    pub headers: Value,
    pub created_at: DateTime<Utc>,
}

/// A plan proposed for a case (the current one is `Case::current_plan_id`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlanRecord {
    pub id: Uuid,
    pub case_id: Uuid,
    pub plan: Value,
    /// SHA-256 of the plan's canonical JSON.
    pub digest: String,
    pub requested_by: String,
    /// The key that proposed it (`key:<id>`): four eyes compares this, not `requested_by`.
    pub requested_by_key: Option<String>,
    pub created_at: DateTime<Utc>,
    /// What the Librarian found for the case when the plan was proposed: runbook chunks and
    /// past cases with their rollback hints. Informative: no gate decision reads them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub references: Option<workflow::references::References>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DecisionRecord {
    pub id: Uuid,
    pub case_id: Uuid,
    pub plan_id: Uuid,
    /// `approved` or `rejected`.
    pub decision: String,
    pub decided_by: String,
    /// The key that decided (`key:<id>`).
    pub decided_by_key: Option<String>,
    pub reason: Option<String>,
    pub policy_rev: Option<String>,
    pub inputs: Value,
    pub created_at: DateTime<Utc>,
}

/// Which cases to list, and where a page starts.
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    pub status: Option<Status>,
    pub tenant: Option<String>,
    pub label: Option<(String, String)>,
    pub source: Option<String>,
    pub severity: Option<Severity>,
    pub automation: Option<Automation>,
    /// Case-insensitive text in the title.
    pub title_contains: Option<String>,
    /// Cases listed newest first; a page continues below this id.
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// A command the embedded bus handed to a long-running consumer that has not finished it: in
/// progress for `holder` until `lease_until`, delivered `deliveries` times so far.
#[derive(Debug, Clone, PartialEq)]
pub struct InProgressDelivery {
    pub consumer: String,
    pub message_id: Uuid,
    pub envelope: Value,
    pub deliveries: i64,
    pub holder: String,
    pub delivered_at: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

/// A message an embedded consumer gave up on.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DeadLetter {
    pub consumer: String,
    pub message_id: Uuid,
    pub topic: String,
    pub envelope: Value,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}
