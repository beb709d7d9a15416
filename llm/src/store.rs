//! `llm_call` on both backends: one row per call to a model, written whatever its outcome.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use orchestrator::store::numbered;
use orchestrator::{SqlPool, StoreError};

/// One call to a model, as audited.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LlmCall {
    pub id: Uuid,
    pub case_id: Option<Uuid>,
    /// `plan`, `findings_summary`, `gate_explanation`, ...
    pub purpose: String,
    pub model: String,
    /// HTTP attempts made (retries included).
    pub attempts: i64,
    /// SHA-256 of the prompt as sent (redacted), and of the answer's text.
    pub prompt_digest: String,
    pub response_digest: Option<String>,
    /// The redacted prompt and the answer, each cut at `llm.audit_cap` characters.
    pub prompt: String,
    pub response: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub latency_ms: i64,
    /// `ok`, `invalid` (not JSON or not the schema), `error`, `timeout`, `rate_limited`,
    /// `circuit_open` or `budget_exhausted`.
    pub outcome: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, case_id, purpose, model, attempts, prompt_digest, response_digest, \
    prompt, response, prompt_tokens, completion_tokens, latency_ms, outcome, error, created_at";

#[derive(Debug, Clone)]
pub struct CallStore {
    pool: SqlPool,
}

macro_rules! bind_call {
    ($query:expr, $call:expr) => {
        $query
            .bind($call.id.to_string())
            .bind($call.case_id.map(|id| id.to_string()))
            .bind(&$call.purpose)
            .bind(&$call.model)
            .bind($call.attempts)
            .bind(&$call.prompt_digest)
            .bind(&$call.response_digest)
            .bind(&$call.prompt)
            .bind(&$call.response)
            .bind($call.prompt_tokens)
            .bind($call.completion_tokens)
            .bind($call.latency_ms)
            .bind(&$call.outcome)
            .bind(&$call.error)
            .bind($call.created_at)
    };
}

macro_rules! call_from {
    ($row:expr) => {{
        let id: String = $row.try_get("id")?;
        let case_id: Option<String> = $row.try_get("case_id")?;
        Ok::<_, StoreError>(LlmCall {
            id: parse_id(&id)?,
            case_id: case_id.as_deref().map(parse_id).transpose()?,
            purpose: $row.try_get("purpose")?,
            model: $row.try_get("model")?,
            attempts: $row.try_get("attempts")?,
            prompt_digest: $row.try_get("prompt_digest")?,
            response_digest: $row.try_get("response_digest")?,
            prompt: $row.try_get("prompt")?,
            response: $row.try_get("response")?,
            prompt_tokens: $row.try_get("prompt_tokens")?,
            completion_tokens: $row.try_get("completion_tokens")?,
            latency_ms: $row.try_get("latency_ms")?,
            outcome: $row.try_get("outcome")?,
            error: $row.try_get("error")?,
            created_at: $row.try_get("created_at")?,
        })
    }};
}

fn parse_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(format!("llm_call id: {e}")))
}

impl CallStore {
    pub fn new(pool: SqlPool) -> Self {
        Self { pool }
    }

    pub async fn insert(&self, call: &LlmCall) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO llm_call ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        match &self.pool {
            SqlPool::Sqlite(pool) => {
                bind_call!(sqlx::query(&sql), call).execute(pool).await?;
            }
            SqlPool::Postgres(pool) => {
                bind_call!(sqlx::query(&numbered(&sql)), call)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The calls made for a case, oldest first.
    pub async fn of_case(&self, case_id: Uuid) -> Result<Vec<LlmCall>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM llm_call WHERE case_id = ? ORDER BY created_at, id");
        match &self.pool {
            SqlPool::Sqlite(pool) => sqlx::query(&sql)
                .bind(case_id.to_string())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| call_from!(row))
                .collect(),
            SqlPool::Postgres(pool) => sqlx::query(&numbered(&sql))
                .bind(case_id.to_string())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| call_from!(row))
                .collect(),
        }
    }

    /// Calls that reached the model for a case (the per-case budget counts these).
    pub async fn spent(&self, case_id: Uuid) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM llm_call WHERE case_id = ? \
                   AND outcome NOT IN ('circuit_open', 'budget_exhausted')";
        Ok(match &self.pool {
            SqlPool::Sqlite(pool) => {
                sqlx::query_scalar(sql)
                    .bind(case_id.to_string())
                    .fetch_one(pool)
                    .await?
            }
            SqlPool::Postgres(pool) => {
                sqlx::query_scalar(&numbered(sql))
                    .bind(case_id.to_string())
                    .fetch_one(pool)
                    .await?
            }
        })
    }
}
