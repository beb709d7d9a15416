//! The embedded store: one SQLite file in WAL mode. Writes go through a single connection,
//! so write transactions are serialized in-process and never fail on lock upgrades; reads use
//! a separate pool and see the last committed state.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use uuid::Uuid;
use workflow::references::References;

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

mod writer;

use writer::{Batch, Kind, SqliteTx, Writer};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

const CASE_COLUMNS: &str =
    "c.id, c.tenant, c.title, c.severity, c.labels, c.automation, c.evidence, \
    c.status, c.version, c.resolution, c.current_plan_id, c.source, c.created_by, c.created_at, \
    c.updated_at";

pub struct SqliteStore {
    /// The one write connection, for single statements outside a [`Tx`] (and migrations).
    writer: SqlitePool,
    /// Write transactions on that connection, batched and group-committed.
    group_writer: Writer,
    readers: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if needed) the database file at `path`.
    pub async fn open(path: &Path, settings: PoolSettings) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match settings.sqlite_durability {
                super::SqliteDurability::Full => SqliteSynchronous::Full,
                super::SqliteDurability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            // Every write transaction acquires it: a ping each time would be a round trip.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(settings.size.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self {
            group_writer: Writer::new(writer.clone()),
            writer,
            readers,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn check_ready(&self) -> StoreResult<()> {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.readers)
                .await?;
        missing_migrations(&MIGRATOR, &applied)
    }

    async fn begin(&self) -> StoreResult<Box<dyn Tx>> {
        Ok(Box::new(self.group_writer.begin().await?))
    }

    async fn get_case(&self, id: Uuid) -> StoreResult<Option<Case>> {
        sqlx::query(&format!(
            "SELECT {CASE_COLUMNS} FROM ops_case c WHERE c.id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.readers)
        .await?
        .map(|row| case_from_row(&row))
        .transpose()
    }

    async fn list_cases(&self, filter: &CaseFilter) -> StoreResult<Vec<Case>> {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
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
                .push(" AND json_extract(c.labels, '$.\"' || ")
                .push_bind(key.clone())
                .push(" || '\"') = ")
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
                .push(" AND instr(lower(c.title), lower(")
                .push_bind(text.clone())
                .push(")) > 0");
        }
        if let Some(before) = filter.before {
            query.push(" AND c.id < ").push_bind(before.to_string());
        }
        query
            .push(" ORDER BY c.id DESC LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = query.build().fetch_all(&self.readers).await?;
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
             WHERE case_id = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(case_id.to_string())
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
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
             WHERE t.id > ? ORDER BY t.id LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| Ok((timeline_from_row(row)?, row.try_get("tenant")?)))
            .collect()
    }

    async fn last_timeline_id(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM case_timeline")
                .fetch_one(&self.readers)
                .await?,
        )
    }

    async fn plans(&self, case_id: Uuid) -> StoreResult<Vec<PlanRecord>> {
        let rows = sqlx::query(
            "SELECT id, case_id, plan, digest, requested_by, requested_by_key, created_at, refs FROM plan_proposed \
             WHERE case_id = ? ORDER BY created_at, id",
        )
        .bind(case_id.to_string())
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(plan_from_row).collect()
    }

    async fn decisions(&self, case_id: Uuid) -> StoreResult<Vec<DecisionRecord>> {
        let rows = sqlx::query(
            "SELECT id, case_id, plan_id, decision, decided_by, decided_by_key, reason, policy_rev, inputs, created_at \
             FROM plan_decision WHERE case_id = ? ORDER BY created_at, id",
        )
        .bind(case_id.to_string())
        .fetch_all(&self.readers)
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
            "SELECT message_id, topic, key, payload, headers, created_at FROM outbox WHERE key = ? ORDER BY id",
        )
        .bind(key)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(outbox_message_from_row).collect()
    }

    async fn idle_cases(
        &self,
        statuses: &[workflow::Status],
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Uuid>> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT id FROM ops_case WHERE status IN (");
        let mut list = query.separated(", ");
        for status in statuses {
            list.push_bind(status.as_str());
        }
        query
            .push(") AND updated_at < ")
            .push_bind(before)
            .push(" ORDER BY updated_at LIMIT ")
            .push_bind(i64::from(limit));
        let ids: Vec<String> = query.build_query_scalar().fetch_all(&self.readers).await?;
        ids.iter()
            .map(|id| Uuid::parse_str(id).map_err(|e| StoreError::Corrupt(format!("id: {e}"))))
            .collect()
    }

    async fn count_open_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT status, COUNT(*) FROM ops_case WHERE status <> 'CLOSED' GROUP BY status",
        )
        .fetch_all(&self.readers)
        .await?)
    }

    async fn claim_outbox(&self, limit: u32) -> StoreResult<Box<dyn OutboxClaim>> {
        // No lock is held while the relay publishes: on SQLite one relay runs per database,
        // and holding the single writer across network I/O would stall every transition.
        let rows = sqlx::query(
            "SELECT id, message_id, topic, key, payload, headers, created_at FROM outbox \
             WHERE published_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
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
        Ok(Box::new(SqliteOutboxClaim {
            writer: self.writer.clone(),
            rows,
        }))
    }

    async fn wake_on_outbox_commits(&self, _wake: Arc<tokio::sync::Notify>) -> StoreResult<()> {
        Ok(())
    }

    async fn outbox_pending(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.readers)
                .await?,
        )
    }

    async fn prune_outbox(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let done =
            sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ?")
                .bind(before)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected())
    }

    async fn inbox_contains(&self, consumer: &str, message_id: Uuid) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer = ? AND message_id = ?)",
        )
        .bind(consumer)
        .bind(message_id.to_string())
        .fetch_one(&self.readers)
        .await?)
    }

    async fn record_inbox(
        &self,
        consumer: &str,
        message_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO inbox (consumer, message_id, received_at) VALUES (?, ?, ?) \
             ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(consumer)
        .bind(message_id.to_string())
        .bind(at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn insert_dead_letter(&self, letter: &DeadLetter) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO dead_letter (consumer, message_id, topic, envelope, reason, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&letter.consumer)
        .bind(letter.message_id.to_string())
        .bind(&letter.topic)
        .bind(Json(&letter.envelope))
        .bind(&letter.reason)
        .bind(letter.created_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn dead_letters(&self) -> StoreResult<Vec<DeadLetter>> {
        let rows = sqlx::query("SELECT consumer, message_id, topic, envelope, reason, created_at FROM dead_letter ORDER BY id")
            .fetch_all(&self.readers)
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

    fn group_commit_stats(&self) -> Option<(u64, u64)> {
        Some(self.group_writer.stats().read())
    }

    fn pool(&self) -> super::SqlPool {
        super::SqlPool::Sqlite(self.writer.clone())
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
             VALUES (?, ?, ?, ?, 1, ?, ?, ?) \
             ON CONFLICT (consumer, message_id) DO UPDATE SET \
                 deliveries = deliveries + 1, holder = excluded.holder, \
                 delivered_at = excluded.delivered_at, lease_until = excluded.lease_until \
             RETURNING deliveries",
        )
        .bind(consumer)
        .bind(envelope.id.to_string())
        .bind(&envelope.kind)
        .bind(Json(&envelope_json))
        .bind(holder)
        .bind(now)
        .bind(lease_until)
        .fetch_one(&self.writer)
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
             SET deliveries = deliveries + 1, holder = ?, delivered_at = ?, lease_until = ? \
             WHERE consumer = ? AND message_id = ? RETURNING deliveries",
        )
        .bind(holder)
        .bind(now)
        .bind(lease_until)
        .bind(consumer)
        .bind(message_id.to_string())
        .fetch_optional(&self.writer)
        .await?)
    }

    async fn extend_in_progress(
        &self,
        consumer: &str,
        holder: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<u64> {
        Ok(sqlx::query(
            "UPDATE bus_in_progress SET lease_until = ? WHERE consumer = ? AND holder = ?",
        )
        .bind(lease_until)
        .bind(consumer)
        .bind(holder)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn in_progress(&self, consumer: &str) -> StoreResult<Vec<InProgressDelivery>> {
        let rows = sqlx::query(
            "SELECT consumer, message_id, envelope, deliveries, holder, delivered_at, lease_until \
             FROM bus_in_progress WHERE consumer = ? ORDER BY delivered_at",
        )
        .bind(consumer)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(InProgressDelivery {
                    consumer: row.try_get("consumer")?,
                    message_id: uuid_at(row, "message_id")?,
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
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO inbox (consumer, message_id, received_at) VALUES (?, ?, ?) \
             ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(consumer)
        .bind(message_id.to_string())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM bus_in_progress WHERE consumer = ? AND message_id = ?")
            .bind(consumer)
            .bind(message_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim_command(
        &self,
        key: &str,
        holder: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bus::Claim> {
        let inserted = sqlx::query(
            "INSERT INTO command_claim (key, holder, claimed_at) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(holder)
        .bind(at)
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(bus::Claim::Claimed);
        }
        let row = sqlx::query("SELECT holder, outcome FROM command_claim WHERE key = ?")
            .bind(key)
            .fetch_one(&self.writer)
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
        sqlx::query("UPDATE command_claim SET outcome = ?, finished_at = ? WHERE key = ?")
            .bind(Json(outcome))
            .bind(at)
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn count_keys(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_key")
            .fetch_one(&self.readers)
            .await?)
    }

    async fn insert_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_key (id, name, roles, tenant, secret_hash, created_by, created_at, expires_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(key.id.to_string())
        .bind(&key.name)
        .bind(Json(&key.roles))
        .bind(&key.tenant)
        .bind(secret_hash)
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.revoked_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn find_key(&self, secret_hash: &str) -> StoreResult<Option<(ApiKey, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, secret_hash FROM api_key WHERE secret_hash = ?"
        ))
        .bind(secret_hash)
        .fetch_optional(&self.readers)
        .await?;
        row.map(|row| Ok((key_from_row(&row)?, row.try_get("secret_hash")?)))
            .transpose()
    }

    async fn list_keys(&self) -> StoreResult<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_key ORDER BY created_at, id"
        ))
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "UPDATE api_key SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? RETURNING {KEY_COLUMNS}"
        ))
        .bind(at)
        .bind(id.to_string())
        .fetch_optional(&self.writer)
        .await?;
        row.map(|row| key_from_row(&row)).transpose()
    }

    async fn close(&self) {
        self.group_writer.close().await;
        self.readers.close().await;
    }
}

struct SqliteOutboxClaim {
    writer: SqlitePool,
    rows: Vec<OutboxRow>,
}

#[async_trait]
impl OutboxClaim for SqliteOutboxClaim {
    fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    async fn mark_published(self: Box<Self>, ids: &[i64], at: DateTime<Utc>) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut query = QueryBuilder::<Sqlite>::new("UPDATE outbox SET published_at = ");
        query.push_bind(at).push(" WHERE id IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        query.push(")");
        query.build().execute(&self.writer).await?;
        Ok(())
    }
}

#[async_trait]
impl Tx for SqliteTx {
    async fn find_idempotency(
        &mut self,
        scope: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        let executed = self
            .run(FIND_IDEMPOTENCY_SQL, |batch| {
                batch.bind(scope.to_string()).bind(key.to_string());
            })
            .await?;
        live_record(executed.row(0), now)
    }

    async fn find_idempotency_or_lock(
        &mut self,
        scope: &str,
        key: &str,
        now: DateTime<Utc>,
        id: Uuid,
    ) -> StoreResult<KeyOrCase> {
        // Both reads in one round trip; locking is free here (the writer is ours anyway).
        self.defer(Kind::Plain, FIND_IDEMPOTENCY_SQL)
            .bind(scope.to_string())
            .bind(key.to_string());
        let executed = self
            .run(&lock_case_sql(), |batch| {
                batch.bind(id.to_string());
            })
            .await?;
        Ok(match live_record(executed.row(1), now)? {
            Some(record) => KeyOrCase::Key(record),
            None => KeyOrCase::Case(executed.row(0).map(locked_from_row).transpose()?),
        })
    }

    async fn save_idempotency(&mut self, record: &IdempotencyRecord) -> StoreResult<()> {
        // An expired record with this key is replaced; a live one (another request claimed the
        // key since we looked) fails the insert, and with it the transaction.
        self.defer(
            Kind::Plain,
            "DELETE FROM idempotency WHERE scope = ? AND key = ? AND expires_at <= ?",
        )
        .bind(record.scope.clone())
        .bind(record.key.clone())
        .bind(record.created_at);
        self.defer(
            Kind::Unique(super::IDEMPOTENCY_KEY),
            "INSERT INTO idempotency (scope, key, fingerprint, status_code, response, headers, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(record.scope.clone())
        .bind(record.key.clone())
        .bind(record.fingerprint.clone())
        .bind(i64::from(record.status_code))
        .bind(Json(record.response.clone()))
        .bind(Json(record.headers.clone()))
        .bind(record.created_at)
        .bind(record.expires_at);
        Ok(())
    }

    async fn insert_case(&mut self, case: &Case) -> StoreResult<()> {
        self.defer(
            Kind::Plain,
            "INSERT INTO ops_case (id, tenant, title, severity, labels, automation, evidence, status, version, \
             resolution, current_plan_id, source, created_by, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(case.id.to_string())
        .bind(case.tenant.clone())
        .bind(case.title.clone())
        .bind(case.severity.as_str())
        .bind(Json(case.labels.clone()))
        .bind(case.automation.as_str())
        .bind(Json(case.evidence.clone()))
        .bind(case.status.as_str())
        .bind(case.version)
        .bind(case.resolution.clone())
        .bind(case.current_plan_id.map(|id| id.to_string()))
        .bind(case.source.clone())
        .bind(case.created_by.clone())
        .bind(case.created_at)
        .bind(case.updated_at);
        Ok(())
    }

    async fn lock_case(&mut self, id: Uuid) -> StoreResult<Option<LockedCase>> {
        // The single writer connection is the lock: no other write transaction runs meanwhile.
        let executed = self
            .run(&lock_case_sql(), |batch| {
                batch.bind(id.to_string());
            })
            .await?;
        executed.row(0).map(locked_from_row).transpose()
    }

    async fn update_case(&mut self, case: &Case) -> StoreResult<()> {
        self.defer(
            Kind::Plain,
            "UPDATE ops_case SET status = ?, version = ?, resolution = ?, current_plan_id = ?, updated_at = ? \
             WHERE id = ?",
        )
        .bind(case.status.as_str())
        .bind(case.version)
        .bind(case.resolution.clone())
        .bind(case.current_plan_id.map(|id| id.to_string()))
        .bind(case.updated_at)
        .bind(case.id.to_string());
        Ok(())
    }

    async fn append_timeline(&mut self, entry: &NewTimelineEntry) -> StoreResult<i64> {
        let executed = self
            .run(&format!("{INSERT_TIMELINE_SQL} RETURNING id"), |batch| {
                bind_timeline(batch, entry);
            })
            .await?;
        let row = executed
            .row(0)
            .ok_or_else(|| StoreError::Corrupt("INSERT … RETURNING returned no row".into()))?;
        Ok(row.try_get("id")?)
    }

    async fn record_timeline(&mut self, entry: &NewTimelineEntry) -> StoreResult<()> {
        bind_timeline(self.defer(Kind::Plain, INSERT_TIMELINE_SQL), entry);
        Ok(())
    }

    async fn append_outbox(&mut self, message: &OutboxMessage) -> StoreResult<()> {
        self.defer(
            Kind::Plain,
            "INSERT INTO outbox (message_id, topic, key, payload, headers, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(message.message_id.to_string())
        .bind(message.topic.clone())
        .bind(message.key.clone())
        .bind(Json(message.payload.clone()))
        .bind(Json(message.headers.clone()))
        .bind(message.created_at);
        Ok(())
    }

    async fn insert_plan(&mut self, plan: &PlanRecord) -> StoreResult<()> {
        self.defer(
            Kind::Plain,
            "INSERT INTO plan_proposed (id, case_id, plan, digest, requested_by, requested_by_key, created_at, refs) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(plan.id.to_string())
        .bind(plan.case_id.to_string())
        .bind(Json(plan.plan.clone()))
        .bind(plan.digest.clone())
        .bind(plan.requested_by.clone())
        .bind(plan.requested_by_key.clone())
        .bind(plan.created_at)
        .bind(plan.references.clone().map(Json));
        Ok(())
    }

    async fn insert_decision(&mut self, decision: &DecisionRecord) -> StoreResult<()> {
        self.defer(
            Kind::Plain,
            "INSERT INTO plan_decision (id, case_id, plan_id, decision, decided_by, decided_by_key, reason, policy_rev, \
             inputs, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(decision.id.to_string())
        .bind(decision.case_id.to_string())
        .bind(decision.plan_id.to_string())
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
        let executed = self
            .run(
                "SELECT id, case_id, plan, digest, requested_by, requested_by_key, created_at, refs FROM plan_proposed WHERE id = ?",
                |batch| {
                    batch.bind(id.to_string());
                },
            )
            .await?;
        executed.row(0).map(plan_from_row).transpose()
    }

    async fn insert_inbox(
        &mut self,
        consumer: &str,
        message_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let executed = self
            .run(
                "INSERT INTO inbox (consumer, message_id, received_at) VALUES (?, ?, ?) \
                 ON CONFLICT (consumer, message_id) DO NOTHING",
                |batch| {
                    batch
                        .bind(consumer.to_string())
                        .bind(message_id.to_string())
                        .bind(at);
                },
            )
            .await?;
        Ok(executed.last_changes == 1)
    }

    async fn activity(&mut self, id: Uuid, limit: u32) -> StoreResult<Activity> {
        let executed = self
            .run(
                "SELECT event, outcome, created_at FROM case_timeline WHERE case_id = ? \
                 ORDER BY id DESC LIMIT ?",
                |batch| {
                    batch.bind(id.to_string()).bind(i64::from(limit));
                },
            )
            .await?;
        let recent = executed
            .rows_of(0)
            .map(timeline_mark)
            .collect::<StoreResult<Vec<_>>>()?;
        let executed = self
            .run(
                "SELECT message_id, topic, created_at FROM outbox \
                 WHERE key = ? AND topic LIKE 'cmd.%' ORDER BY id DESC LIMIT 1",
                |batch| {
                    batch.bind(id.to_string());
                },
            )
            .await?;
        let last_command = executed
            .row(0)
            .map(|row| {
                Ok::<_, StoreError>(SentCommand {
                    message_id: uuid_at(row, "message_id")?,
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

    async fn latest_findings(&mut self, id: Uuid) -> StoreResult<Option<Vec<Value>>> {
        let executed = self
            .run(
                "SELECT meta FROM case_timeline WHERE case_id = ? AND event IN (?, ?) \
                 AND outcome IN ('applied', 'noted') ORDER BY id DESC LIMIT ?",
                |batch| {
                    batch
                        .bind(id.to_string())
                        .bind(super::FINDINGS_EVENTS[0])
                        .bind(super::FINDINGS_EVENTS[1])
                        .bind(super::FINDINGS_LOOKBACK);
                },
            )
            .await?;
        let metas = executed
            .rows_of(0)
            .map(|row| Ok(row.try_get::<Json<Value>, _>("meta")?.0))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(super::first_findings(metas))
    }

    async fn requeue_message(&mut self, message_id: Uuid) -> StoreResult<()> {
        let id = message_id.to_string();
        self.defer(
            Kind::Plain,
            "UPDATE outbox SET published_at = NULL WHERE message_id = ?",
        )
        .bind(id.clone());
        self.defer(Kind::Plain, "DELETE FROM inbox WHERE message_id = ?")
            .bind(id);
        Ok(())
    }

    async fn connection(&mut self) -> StoreResult<super::TxConnection<'_>> {
        Ok(super::TxConnection::Sqlite(
            SqliteTx::connection(self).await?,
        ))
    }

    fn defer_write(&mut self, sql: &str, args: Vec<super::SqlValue>) {
        let batch = self.defer(Kind::Plain, sql);
        for arg in args {
            match arg {
                super::SqlValue::Text(value) => batch.bind(value),
                super::SqlValue::Int(value) => batch.bind(value),
                super::SqlValue::Time(value) => batch.bind(value),
                super::SqlValue::Json(value) => batch.bind(value.map(Json)),
            };
        }
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        SqliteTx::commit(*self).await
    }
}

fn timeline_mark(row: &SqliteRow) -> StoreResult<TimelineMark> {
    let outcome: String = row.try_get("outcome")?;
    Ok(TimelineMark {
        event: row.try_get("event")?,
        outcome: Outcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("outcome {outcome:?}")))?,
        created_at: row.try_get("created_at")?,
    })
}

const FIND_IDEMPOTENCY_SQL: &str =
    "SELECT scope, key, fingerprint, status_code, response, headers, \
    created_at, expires_at FROM idempotency WHERE scope = ? AND key = ?";

/// The record in `row`, if it is still live at `now`.
fn live_record(
    row: Option<&SqliteRow>,
    now: DateTime<Utc>,
) -> StoreResult<Option<IdempotencyRecord>> {
    let Some(row) = row else { return Ok(None) };
    let record = IdempotencyRecord {
        scope: row.try_get("scope")?,
        key: row.try_get("key")?,
        fingerprint: row.try_get("fingerprint")?,
        status_code: u16::try_from(row.try_get::<i64, _>("status_code")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        response: row.try_get::<Json<Value>, _>("response")?.0,
        headers: row.try_get::<Json<Value>, _>("headers")?.0,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    };
    Ok((record.expires_at > now).then_some(record))
}

fn plan_from_row(row: &SqliteRow) -> StoreResult<PlanRecord> {
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

fn locked_from_row(row: &SqliteRow) -> StoreResult<LockedCase> {
    Ok(LockedCase {
        case: case_from_row(row)?,
        plan_requester: row.try_get("plan_requester")?,
    })
}

fn lock_case_sql() -> String {
    format!(
        "SELECT {CASE_COLUMNS}, COALESCE(p.requested_by_key, p.requested_by) AS plan_requester \
         FROM ops_case c LEFT JOIN plan_proposed p ON p.id = c.current_plan_id WHERE c.id = ?"
    )
}

const INSERT_TIMELINE_SQL: &str = "INSERT INTO case_timeline (case_id, version, event, outcome, from_status, \
    to_status, actor, principal_id, principal_name, reason, correlation_id, request_id, meta, created_at) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

fn bind_timeline(batch: &mut Batch, entry: &NewTimelineEntry) {
    batch
        .bind(entry.case_id.to_string())
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

fn uuid_at(row: &SqliteRow, column: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn case_from_row(row: &SqliteRow) -> StoreResult<Case> {
    let current_plan_id: Option<String> = row.try_get("current_plan_id")?;
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
        current_plan_id: current_plan_id
            .map(|id| Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?,
        source: row.try_get("source")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn outbox_message_from_row(row: &SqliteRow) -> StoreResult<OutboxMessage> {
    Ok(OutboxMessage {
        message_id: uuid_at(row, "message_id")?,
        topic: row.try_get("topic")?,
        key: row.try_get("key")?,
        payload: row.try_get::<Json<Value>, _>("payload")?.0,
        headers: row.try_get::<Json<Value>, _>("headers")?.0,
        created_at: row.try_get("created_at")?,
    })
}

fn timeline_from_row(row: &SqliteRow) -> StoreResult<TimelineEntry> {
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

/// Error unless every migration of `migrator` is among the `applied` versions.
pub(super) fn missing_migrations(
    migrator: &sqlx::migrate::Migrator,
    applied: &[i64],
) -> StoreResult<()> {
    let missing: Vec<String> = migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| m.version.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "migrations not applied: {}",
            missing.join(", ")
        )))
    }
}

const KEY_COLUMNS: &str = "id, name, roles, tenant, created_by, created_at, expires_at, revoked_at";

fn key_from_row(row: &SqliteRow) -> StoreResult<ApiKey> {
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
