//! The production store: PostgreSQL. A transition locks its case row with
//! `SELECT ... FOR UPDATE`, so concurrent writers of one case queue behind each other while
//! writers of different cases run in parallel.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder, Row, Transaction};
use uuid::Uuid;
use workflow::references::References;

use super::sqlite::missing_migrations;
use super::{
    parse_enum, parse_status, Backend, IdempotencyRecord, KeyOrCase, LockedCase, PoolSettings,
    Store, StoreError, StoreResult, Tx,
};
use super::{Activity, OutboxClaim, OutboxRow, SentCommand, TimelineMark};
use crate::access::ApiKey;
use crate::model::{
    Case, CaseFilter, DeadLetter, DecisionRecord, InProgressDelivery, NewTimelineEntry,
    OutboxMessage, Outcome, PlanRecord, TimelineEntry,
};

mod deferred;

use deferred::Deferred;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel the outbox trigger notifies (see the outbox_notify migration).
const OUTBOX_CHANNEL: &str = "opscase_outbox";

const CASE_COLUMNS: &str =
    "c.id, c.tenant, c.title, c.severity, c.labels, c.automation, c.evidence, \
    c.status, c.version, c.resolution, c.current_plan_id, c.source, c.created_by, c.created_at, \
    c.updated_at";

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn connect(url: &str, settings: PoolSettings) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?.application_name("opscase");
        let pool = PgPoolOptions::new()
            .max_connections(settings.size.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn check_ready(&self) -> StoreResult<()> {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        missing_migrations(&MIGRATOR, &applied)
    }

    async fn begin(&self) -> StoreResult<Box<dyn Tx>> {
        Ok(Box::new(PostgresTx {
            tx: self.pool.begin().await?,
            deferred: Deferred::default(),
            timeline_deferred: false,
        }))
    }

    async fn get_case(&self, id: Uuid) -> StoreResult<Option<Case>> {
        sqlx::query(&format!(
            "SELECT {CASE_COLUMNS} FROM ops_case c WHERE c.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| case_from_row(&row))
        .transpose()
    }

    async fn list_cases(&self, filter: &CaseFilter) -> StoreResult<Vec<Case>> {
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {CASE_COLUMNS} FROM ops_case c WHERE 1 = 1"
        ));
        if let Some(status) = filter.status {
            query.push(" AND c.status = ").push_bind(status.as_str());
        }
        if let Some(tenant) = &filter.tenant {
            query.push(" AND c.tenant = ").push_bind(tenant.clone());
        }
        if let Some((key, value)) = &filter.label {
            query
                .push(" AND c.labels ->> ")
                .push_bind(key.clone())
                .push(" = ")
                .push_bind(value.clone());
        }
        if let Some(source) = &filter.source {
            query.push(" AND c.source = ").push_bind(source.clone());
        }
        if let Some(severity) = filter.severity {
            query
                .push(" AND c.severity = ")
                .push_bind(severity.as_str());
        }
        if let Some(automation) = filter.automation {
            query
                .push(" AND c.automation = ")
                .push_bind(automation.as_str());
        }
        if let Some(text) = &filter.title_contains {
            query
                .push(" AND strpos(lower(c.title), lower(")
                .push_bind(text.clone())
                .push(")) > 0");
        }
        if let Some(before) = filter.before {
            query.push(" AND c.id < ").push_bind(before);
        }
        query
            .push(" ORDER BY c.id DESC LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(case_from_row).collect()
    }

    async fn timeline(
        &self,
        case_id: Uuid,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<TimelineEntry>> {
        let rows = sqlx::query(
            "SELECT id, case_id, version, event, outcome, from_status, to_status, actor, principal_id, \
             principal_name, reason, correlation_id, request_id, meta, created_at FROM case_timeline \
             WHERE case_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(case_id)
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(timeline_from_row).collect()
    }

    async fn timeline_since(
        &self,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<(TimelineEntry, String)>> {
        let rows = sqlx::query(
            "SELECT t.id, t.case_id, t.version, t.event, t.outcome, t.from_status, t.to_status, \
             t.actor, t.principal_id, t.principal_name, t.reason, t.correlation_id, t.request_id, \
             t.meta, t.created_at, c.tenant FROM case_timeline t JOIN ops_case c ON c.id = t.case_id \
             WHERE t.id > $1 ORDER BY t.id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((timeline_from_row(row)?, row.try_get("tenant")?)))
            .collect()
    }

    async fn last_timeline_id(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM case_timeline")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn plans(&self, case_id: Uuid) -> StoreResult<Vec<PlanRecord>> {
        let rows = sqlx::query(
            "SELECT id, case_id, plan, digest, requested_by, requested_by_key, created_at, refs FROM plan_proposed \
             WHERE case_id = $1 ORDER BY created_at, id",
        )
        .bind(case_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plan_from_row).collect()
    }

    async fn decisions(&self, case_id: Uuid) -> StoreResult<Vec<DecisionRecord>> {
        let rows = sqlx::query(
            "SELECT id, case_id, plan_id, decision, decided_by, decided_by_key, reason, policy_rev, inputs, created_at \
             FROM plan_decision WHERE case_id = $1 ORDER BY created_at, id",
        )
        .bind(case_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DecisionRecord {
                    id: uuid_at(row, "id")?,
                    case_id: uuid_at(row, "case_id")?,
                    plan_id: uuid_at(row, "plan_id")?,
                    decision: row.try_get("decision")?,
                    decided_by: row.try_get("decided_by")?,
                    decided_by_key: row.try_get("decided_by_key")?,
                    reason: row.try_get("reason")?,
                    policy_rev: row.try_get("policy_rev")?,
                    inputs: row.try_get::<Json<Value>, _>("inputs")?.0,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn outbox_for(&self, key: &str) -> StoreResult<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "SELECT message_id, topic, key, payload, headers, created_at FROM outbox WHERE key = $1 ORDER BY id",
        )
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_message_from_row).collect()
    }

    async fn idle_cases(
        &self,
        statuses: &[workflow::Status],
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Uuid>> {
        let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        Ok(sqlx::query_scalar(
            "SELECT id FROM ops_case WHERE status = ANY($1) AND updated_at < $2 \
             ORDER BY updated_at LIMIT $3",
        )
        .bind(&statuses)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn count_open_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT status, COUNT(*) FROM ops_case WHERE status <> 'CLOSED' GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn claim_outbox(&self, limit: u32) -> StoreResult<Box<dyn OutboxClaim>> {
        let mut tx = self.pool.begin().await?;
        // Marking rows published need not wait for a flush: a mark lost in a crash only makes
        // the relay publish the rows again, which JetStream (Nats-Msg-Id) and every consumer's
        // inbox drop as duplicates. The relay's cycle, and so every hop's latency, gets shorter.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT id, message_id, topic, key, payload, headers, created_at FROM outbox \
             WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let rows = rows
            .iter()
            .map(|row| {
                Ok(OutboxRow {
                    id: row.try_get("id")?,
                    message: outbox_message_from_row(row)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Box::new(PostgresOutboxClaim { tx, rows }))
    }

    async fn wake_on_outbox_commits(&self, wake: Arc<tokio::sync::Notify>) -> StoreResult<()> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        tokio::spawn(async move {
            // recv() reconnects after a lost connection; it fails only once the pool is closed.
            while listener.recv().await.is_ok() {
                wake.notify_one();
            }
        });
        Ok(())
    }

    async fn outbox_pending(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn prune_outbox(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let done =
            sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    async fn inbox_contains(&self, consumer: &str, message_id: Uuid) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2)",
        )
        .bind(consumer)
        .bind(message_id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn record_inbox(
        &self,
        consumer: &str,
        message_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO inbox (consumer, message_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(consumer)
        .bind(message_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_dead_letter(&self, letter: &DeadLetter) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO dead_letter (consumer, message_id, topic, envelope, reason, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&letter.consumer)
        .bind(letter.message_id)
        .bind(&letter.topic)
        .bind(Json(&letter.envelope))
        .bind(&letter.reason)
        .bind(letter.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn dead_letters(&self) -> StoreResult<Vec<DeadLetter>> {
        let rows = sqlx::query("SELECT consumer, message_id, topic, envelope, reason, created_at FROM dead_letter ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    consumer: row.try_get("consumer")?,
                    message_id: uuid_at(row, "message_id")?,
                    topic: row.try_get("topic")?,
                    envelope: row.try_get::<Json<Value>, _>("envelope")?.0,
                    reason: row.try_get("reason")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    fn pool(&self) -> super::SqlPool {
        super::SqlPool::Postgres(self.pool.clone())
    }

    async fn deliver_in_progress(
        &self,
        consumer: &str,
        envelope: &bus::Envelope,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<i64> {
        let envelope_json = serde_json::to_value(envelope)
            .map_err(|e| StoreError::Corrupt(format!("envelope: {e}")))?;
        Ok(sqlx::query_scalar(
            "INSERT INTO bus_in_progress \
                 (consumer, message_id, topic, envelope, deliveries, holder, delivered_at, lease_until) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, $7) \
             ON CONFLICT (consumer, message_id) DO UPDATE SET \
                 deliveries = bus_in_progress.deliveries + 1, holder = excluded.holder, \
                 delivered_at = excluded.delivered_at, lease_until = excluded.lease_until \
             RETURNING deliveries",
        )
        .bind(consumer)
        .bind(envelope.id)
        .bind(&envelope.kind)
        .bind(Json(&envelope_json))
        .bind(holder)
        .bind(now)
        .bind(lease_until)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn redeliver_in_progress(
        &self,
        consumer: &str,
        message_id: Uuid,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "UPDATE bus_in_progress \
             SET deliveries = deliveries + 1, holder = $1, delivered_at = $2, lease_until = $3 \
             WHERE consumer = $4 AND message_id = $5 RETURNING deliveries",
        )
        .bind(holder)
        .bind(now)
        .bind(lease_until)
        .bind(consumer)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn extend_in_progress(
        &self,
        consumer: &str,
        holder: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<u64> {
        Ok(sqlx::query(
            "UPDATE bus_in_progress SET lease_until = $1 WHERE consumer = $2 AND holder = $3",
        )
        .bind(lease_until)
        .bind(consumer)
        .bind(holder)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn in_progress(&self, consumer: &str) -> StoreResult<Vec<InProgressDelivery>> {
        let rows = sqlx::query(
            "SELECT consumer, message_id, envelope, deliveries, holder, delivered_at, lease_until \
             FROM bus_in_progress WHERE consumer = $1 ORDER BY delivered_at",
        )
        .bind(consumer)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(InProgressDelivery {
                    consumer: row.try_get("consumer")?,
                    message_id: row.try_get("message_id")?,
                    envelope: row.try_get::<Json<Value>, _>("envelope")?.0,
                    deliveries: row.try_get("deliveries")?,
                    holder: row.try_get("holder")?,
                    delivered_at: row.try_get("delivered_at")?,
                    lease_until: row.try_get("lease_until")?,
                })
            })
            .collect()
    }

    async fn finish_in_progress(
        &self,
        consumer: &str,
        message_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "WITH finished AS (DELETE FROM bus_in_progress WHERE consumer = $1 AND message_id = $2) \
             INSERT INTO inbox (consumer, message_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(consumer)
        .bind(message_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_command(
        &self,
        key: &str,
        holder: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bus::Claim> {
        let inserted = sqlx::query(
            "INSERT INTO command_claim (key, holder, claimed_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(holder)
        .bind(at)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(bus::Claim::Claimed);
        }
        let row = sqlx::query("SELECT holder, outcome FROM command_claim WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        Ok(match row.try_get::<Option<Json<Value>>, _>("outcome")? {
            Some(Json(outcome)) => bus::Claim::Finished(outcome),
            None => bus::Claim::Running {
                holder: row.try_get("holder")?,
            },
        })
    }

    async fn finish_command(
        &self,
        key: &str,
        outcome: &Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE command_claim SET outcome = $1, finished_at = $2 WHERE key = $3")
            .bind(Json(outcome))
            .bind(at)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn count_keys(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_key")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn insert_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_key (id, name, roles, tenant, secret_hash, created_by, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(key.id)
        .bind(&key.name)
        .bind(Json(&key.roles))
        .bind(&key.tenant)
        .bind(secret_hash)
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_key(&self, secret_hash: &str) -> StoreResult<Option<(ApiKey, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, secret_hash FROM api_key WHERE secret_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((key_from_row(&row)?, row.try_get("secret_hash")?)))
            .transpose()
    }

    async fn list_keys(&self) -> StoreResult<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_key ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "UPDATE api_key SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING {KEY_COLUMNS}"
        ))
        .bind(at)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| key_from_row(&row)).transpose()
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

struct PostgresOutboxClaim {
    tx: Transaction<'static, Postgres>,
    rows: Vec<OutboxRow>,
}

#[async_trait]
impl OutboxClaim for PostgresOutboxClaim {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    async fn mark_published(
        mut self: Box<Self>,
        ids: &[i64],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE outbox SET published_at = $1 WHERE id = ANY($2)")
            .bind(at)
            .bind(ids)
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

struct PostgresTx {
    tx: Transaction<'static, Postgres>,
    /// Writes not yet sent (see [`Deferred`]): they go with the next read or the commit.
    deferred: Deferred,
    /// A timeline row is among the deferred writes. PostgreSQL runs the CTEs of one statement
    /// in no set order, so the ids of two timeline rows of one statement could come out in the
    /// wrong order: a second row waits for the next statement.
    timeline_deferred: bool,
}

impl PostgresTx {
    /// The connection, with every deferred write sent: for a read, which must see them.
    async fn flushed(&mut self) -> StoreResult<&mut sqlx::PgConnection> {
        self.deferred.flush(&mut self.tx).await?;
        self.timeline_deferred = false;
        Ok(&mut *self.tx)
    }
}

#[async_trait]
impl Tx for PostgresTx {
    async fn find_idempotency(
        &mut self,
        scope: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency WHERE scope = $1 AND key = $2"
        ))
        .bind(scope)
        .bind(key)
        .fetch_optional(self.flushed().await?)
        .await?;
        row.map_or(Ok(None), |row| live_record(&row, now))
    }

    async fn find_idempotency_or_lock(
        &mut self,
        scope: &str,
        key: &str,
        now: DateTime<Utc>,
        id: Uuid,
    ) -> StoreResult<KeyOrCase> {
        // One round trip: the record, and (only when there is no live one) the locked case.
        let row = sqlx::query(&format!(
            "WITH k AS (SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency WHERE scope = $1 AND key = $2), \
             c AS (SELECT {CASE_COLUMNS}, COALESCE(p.requested_by_key, p.requested_by) AS plan_requester \
                   FROM ops_case c LEFT JOIN plan_proposed p ON p.id = c.current_plan_id \
                   WHERE c.id = $3 AND NOT EXISTS (SELECT 1 FROM k WHERE k.k_expires_at > $4) \
                   FOR UPDATE OF c) \
             SELECT k.*, c.* FROM (SELECT 1) AS one LEFT JOIN k ON true LEFT JOIN c ON true"
        ))
        .bind(scope)
        .bind(key)
        .bind(id)
        .bind(now)
        .fetch_one(self.flushed().await?)
        .await?;
        if let Some(record) = live_record(&row, now)? {
            return Ok(KeyOrCase::Key(record));
        }
        if row.try_get::<Option<Uuid>, _>("id")?.is_none() {
            return Ok(KeyOrCase::Case(None));
        }
        Ok(KeyOrCase::Case(Some(LockedCase {
            case: case_from_row(&row)?,
            plan_requester: row.try_get("plan_requester")?,
        })))
    }

    async fn save_idempotency(&mut self, record: &IdempotencyRecord) -> StoreResult<()> {
        // A live record with this key (another request claimed it since we looked) leaves the
        // upsert without a row: the key's violation.
        self.deferred
            .push_must_change(
            "INSERT INTO idempotency (scope, key, fingerprint, status_code, response, headers, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
               status_code = excluded.status_code, response = excluded.response, headers = excluded.headers, \
               created_at = excluded.created_at, expires_at = excluded.expires_at \
             WHERE idempotency.expires_at <= excluded.created_at",
                super::IDEMPOTENCY_KEY,
        )
        .bind(record.scope.clone())
        .bind(record.key.clone())
        .bind(record.fingerprint.clone())
        .bind(i32::from(record.status_code))
        .bind(Json(record.response.clone()))
        .bind(Json(record.headers.clone()))
        .bind(record.created_at)
        .bind(record.expires_at);
        Ok(())
    }

    async fn insert_case(&mut self, case: &Case) -> StoreResult<()> {
        self.deferred.push(
            "INSERT INTO ops_case (id, tenant, title, severity, labels, automation, evidence, status, version, \
             resolution, current_plan_id, source, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(case.id)
        .bind(case.tenant.clone())
        .bind(case.title.clone())
        .bind(case.severity.as_str())
        .bind(Json(case.labels.clone()))
        .bind(case.automation.as_str())
        .bind(Json(case.evidence.clone()))
        .bind(case.status.as_str())
        .bind(case.version)
        .bind(case.resolution.clone())
        .bind(case.current_plan_id)
        .bind(case.source.clone())
        .bind(case.created_by.clone())
        .bind(case.created_at)
        .bind(case.updated_at);
        Ok(())
    }

    async fn lock_case(&mut self, id: Uuid) -> StoreResult<Option<LockedCase>> {
        let row = sqlx::query(&format!(
            "SELECT {CASE_COLUMNS}, COALESCE(p.requested_by_key, p.requested_by) AS plan_requester FROM ops_case c \
             LEFT JOIN plan_proposed p ON p.id = c.current_plan_id WHERE c.id = $1 FOR UPDATE OF c"
        ))
        .bind(id)
        .fetch_optional(self.flushed().await?)
        .await?;
        row.map(|row| {
            Ok(LockedCase {
                case: case_from_row(&row)?,
                plan_requester: row.try_get("plan_requester")?,
            })
        })
        .transpose()
    }

    async fn update_case(&mut self, case: &Case) -> StoreResult<()> {
        self.deferred.push(
            "UPDATE ops_case SET status = $1, version = $2, resolution = $3, current_plan_id = $4, updated_at = $5 \
             WHERE id = $6",
        )
        .bind(case.status.as_str())
        .bind(case.version)
        .bind(case.resolution.clone())
        .bind(case.current_plan_id)
        .bind(case.updated_at)
        .bind(case.id);
        Ok(())
    }

    async fn append_timeline(&mut self, entry: &NewTimelineEntry) -> StoreResult<i64> {
        let conn = self.flushed().await?;
        let mut insert = Deferred::default();
        bind_timeline(
            insert.push(&format!("{INSERT_TIMELINE_SQL} RETURNING id")),
            entry,
        );
        insert.fetch_id(conn).await
    }

    async fn record_timeline(&mut self, entry: &NewTimelineEntry) -> StoreResult<()> {
        if self.timeline_deferred {
            self.flushed().await?;
        }
        bind_timeline(self.deferred.push(INSERT_TIMELINE_SQL), entry);
        self.timeline_deferred = true;
        Ok(())
    }

    async fn append_outbox(&mut self, message: &OutboxMessage) -> StoreResult<()> {
        self.deferred.push(
            "INSERT INTO outbox (message_id, topic, key, payload, headers, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(message.message_id)
        .bind(message.topic.clone())
        .bind(message.key.clone())
        .bind(Json(message.payload.clone()))
        .bind(Json(message.headers.clone()))
        .bind(message.created_at);
        Ok(())
    }

    async fn insert_plan(&mut self, plan: &PlanRecord) -> StoreResult<()> {
        self.deferred.push(
            "INSERT INTO plan_proposed (id, case_id, plan, digest, requested_by, requested_by_key, created_at, refs) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(plan.id)
        .bind(plan.case_id)
        .bind(Json(plan.plan.clone()))
        .bind(plan.digest.clone())
        .bind(plan.requested_by.clone())
        .bind(plan.requested_by_key.clone())
        .bind(plan.created_at)
        .bind(plan.references.clone().map(Json));
        Ok(())
    }

    async fn insert_decision(&mut self, decision: &DecisionRecord) -> StoreResult<()> {
        self.deferred.push(
            "INSERT INTO plan_decision (id, case_id, plan_id, decision, decided_by, decided_by_key, reason, policy_rev, \
             inputs, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(decision.id)
        .bind(decision.case_id)
        .bind(decision.plan_id)
        .bind(decision.decision.clone())
        .bind(decision.decided_by.clone())
        .bind(decision.decided_by_key.clone())
        .bind(decision.reason.clone())
        .bind(decision.policy_rev.clone())
        .bind(Json(decision.inputs.clone()))
        .bind(decision.created_at);
        Ok(())
    }

    async fn plan(&mut self, id: Uuid) -> StoreResult<Option<PlanRecord>> {
        let row = sqlx::query(
            "SELECT id, case_id, plan, digest, requested_by, requested_by_key, created_at, refs FROM plan_proposed WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.flushed().await?)
        .await?;
        row.as_ref().map(plan_from_row).transpose()
    }

    async fn insert_inbox(
        &mut self,
        consumer: &str,
        message_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO inbox (consumer, message_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(consumer)
        .bind(message_id)
        .bind(at)
        .execute(self.flushed().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn latest_findings(&mut self, id: Uuid) -> StoreResult<Option<Vec<Value>>> {
        let rows: Vec<(Json<Value>,)> = sqlx::query_as(
            "SELECT meta FROM case_timeline WHERE case_id = $1 AND event = ANY($2) \
             AND outcome IN ('applied', 'noted') ORDER BY id DESC LIMIT $3",
        )
        .bind(id)
        .bind(&super::FINDINGS_EVENTS[..])
        .bind(super::FINDINGS_LOOKBACK)
        .fetch_all(self.flushed().await?)
        .await?;
        Ok(super::first_findings(
            rows.into_iter().map(|(meta,)| meta.0),
        ))
    }

    async fn activity(&mut self, id: Uuid, limit: u32) -> StoreResult<Activity> {
        let rows = sqlx::query(
            "SELECT event, outcome, created_at FROM case_timeline WHERE case_id = $1 \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(self.flushed().await?)
        .await?;
        let recent = rows
            .iter()
            .map(|row| {
                let outcome: String = row.try_get("outcome")?;
                Ok(TimelineMark {
                    event: row.try_get("event")?,
                    outcome: Outcome::parse(&outcome)
                        .ok_or_else(|| StoreError::Corrupt(format!("outcome {outcome:?}")))?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let last_command = sqlx::query(
            "SELECT message_id, topic, created_at FROM outbox \
             WHERE key = $1 AND topic LIKE 'cmd.%' ORDER BY id DESC LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *self.tx)
        .await?
        .map(|row| {
            Ok::<_, StoreError>(SentCommand {
                message_id: row.try_get("message_id")?,
                topic: row.try_get("topic")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()?;
        Ok(Activity {
            recent,
            last_command,
        })
    }

    async fn requeue_message(&mut self, message_id: Uuid) -> StoreResult<()> {
        sqlx::query(
            "WITH forgotten AS (DELETE FROM inbox WHERE message_id = $1) \
             UPDATE outbox SET published_at = NULL WHERE message_id = $1",
        )
        .bind(message_id)
        .execute(self.flushed().await?)
        .await?;
        Ok(())
    }

    async fn connection(&mut self) -> StoreResult<super::TxConnection<'_>> {
        Ok(super::TxConnection::Postgres(self.flushed().await?))
    }

    fn defer_write(&mut self, sql: &str, args: Vec<super::SqlValue>) {
        let deferred = self.deferred.push(&super::numbered(sql));
        for arg in args {
            match arg {
                super::SqlValue::Text(value) => deferred.bind(value),
                super::SqlValue::Int(value) => deferred.bind(value),
                super::SqlValue::Time(value) => deferred.bind(value),
                super::SqlValue::Json(value) => deferred.bind(value.map(Json)),
            };
        }
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        self.flushed().await?;
        self.tx.commit().await?;
        Ok(())
    }
}

const INSERT_TIMELINE_SQL: &str = "INSERT INTO case_timeline (case_id, version, event, outcome, from_status, \
    to_status, actor, principal_id, principal_name, reason, correlation_id, request_id, meta, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

fn bind_timeline(deferred: &mut Deferred, entry: &NewTimelineEntry) {
    deferred
        .bind(entry.case_id)
        .bind(entry.version)
        .bind(entry.event.clone())
        .bind(entry.outcome.as_str())
        .bind(entry.from_status.map(|s| s.as_str()))
        .bind(entry.to_status.map(|s| s.as_str()))
        .bind(entry.actor.clone())
        .bind(entry.principal_id.clone())
        .bind(entry.principal_name.clone())
        .bind(entry.reason.clone())
        .bind(entry.correlation_id.clone())
        .bind(entry.request_id.clone())
        .bind(Json(entry.meta.clone()))
        .bind(entry.created_at);
}

fn uuid_at(row: &PgRow, column: &str) -> StoreResult<Uuid> {
    Ok(row.try_get(column)?)
}

/// The idempotency table's columns, prefixed so they can share a row with a case's.
const IDEMPOTENCY_COLUMNS: &str = "scope AS k_scope, key AS k_key, fingerprint AS k_fingerprint, \
    status_code AS k_status_code, response AS k_response, headers AS k_headers, \
    created_at AS k_created_at, expires_at AS k_expires_at";

/// The record in `row` (its `k_` columns), if there is one and it is live at `now`.
fn live_record(row: &PgRow, now: DateTime<Utc>) -> StoreResult<Option<IdempotencyRecord>> {
    let Some(scope) = row.try_get::<Option<String>, _>("k_scope")? else {
        return Ok(None);
    };
    let record = IdempotencyRecord {
        scope,
        key: row.try_get("k_key")?,
        fingerprint: row.try_get("k_fingerprint")?,
        status_code: u16::try_from(row.try_get::<i32, _>("k_status_code")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        response: row.try_get::<Json<Value>, _>("k_response")?.0,
        headers: row.try_get::<Json<Value>, _>("k_headers")?.0,
        created_at: row.try_get("k_created_at")?,
        expires_at: row.try_get("k_expires_at")?,
    };
    Ok((record.expires_at > now).then_some(record))
}

fn plan_from_row(row: &PgRow) -> StoreResult<PlanRecord> {
    Ok(PlanRecord {
        id: uuid_at(row, "id")?,
        case_id: uuid_at(row, "case_id")?,
        plan: row.try_get::<Json<Value>, _>("plan")?.0,
        digest: row.try_get("digest")?,
        requested_by: row.try_get("requested_by")?,
        requested_by_key: row.try_get("requested_by_key")?,
        created_at: row.try_get("created_at")?,
        references: row
            .try_get::<Option<Json<References>>, _>("refs")?
            .map(|references| references.0),
    })
}

fn case_from_row(row: &PgRow) -> StoreResult<Case> {
    Ok(Case {
        id: uuid_at(row, "id")?,
        tenant: row.try_get("tenant")?,
        title: row.try_get("title")?,
        severity: parse_enum(&row.try_get::<String, _>("severity")?)?,
        labels: row.try_get::<Json<_>, _>("labels")?.0,
        automation: parse_enum(&row.try_get::<String, _>("automation")?)?,
        evidence: row.try_get::<Json<_>, _>("evidence")?.0,
        status: parse_status(&row.try_get::<String, _>("status")?)?,
        version: row.try_get("version")?,
        resolution: row.try_get("resolution")?,
        current_plan_id: row.try_get("current_plan_id")?,
        source: row.try_get("source")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn outbox_message_from_row(row: &PgRow) -> StoreResult<OutboxMessage> {
    Ok(OutboxMessage {
        message_id: uuid_at(row, "message_id")?,
        topic: row.try_get("topic")?,
        key: row.try_get("key")?,
        payload: row.try_get::<Json<Value>, _>("payload")?.0,
        headers: row.try_get::<Json<Value>, _>("headers")?.0,
        created_at: row.try_get("created_at")?,
    })
}

fn timeline_from_row(row: &PgRow) -> StoreResult<TimelineEntry> {
    let optional_status = |column: &str| -> StoreResult<_> {
        row.try_get::<Option<String>, _>(column)?
            .map(|s| parse_status(&s))
            .transpose()
    };
    let outcome: String = row.try_get("outcome")?;
    Ok(TimelineEntry {
        id: row.try_get("id")?,
        case_id: uuid_at(row, "case_id")?,
        version: row.try_get("version")?,
        event: row.try_get("event")?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("outcome {outcome:?}")))?,
        from_status: optional_status("from_status")?,
        to_status: optional_status("to_status")?,
        actor: row.try_get("actor")?,
        principal_id: row.try_get("principal_id")?,
        principal_name: row.try_get("principal_name")?,
        reason: row.try_get("reason")?,
        correlation_id: row.try_get("correlation_id")?,
        request_id: row.try_get("request_id")?,
        meta: row.try_get::<Json<Value>, _>("meta")?.0,
        created_at: row.try_get("created_at")?,
    })
}

const KEY_COLUMNS: &str = "id, name, roles, tenant, created_by, created_at, expires_at, revoked_at";

fn key_from_row(row: &PgRow) -> StoreResult<ApiKey> {
    Ok(ApiKey {
        id: uuid_at(row, "id")?,
        name: row.try_get("name")?,
        roles: row.try_get::<Json<_>, _>("roles")?.0,
        tenant: row.try_get("tenant")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}
