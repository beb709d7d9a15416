//! Persistence behind one trait, with a SQLite (embedded) and a PostgreSQL implementation.
//!
//! The transition service owns `begin()`/`commit()`; each [`Tx`] method is one small query
//! inside that transaction.

mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::access::ApiKey;
use crate::model::{
    Case, CaseFilter, DeadLetter, DecisionRecord, InProgressDelivery, NewTimelineEntry,
    OutboxMessage, PlanRecord, TimelineEntry,
};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint violated: {0}")]
    UniqueViolation(String),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(sqlx::Error),
    #[error(transparent)]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A statement of this transaction failed earlier: it can only be rolled back.
    #[error("the transaction was aborted by an earlier error")]
    Aborted,
    /// The transaction's COMMIT (on SQLite, its group's) failed: nothing it wrote was kept.
    #[error("commit failed: {0}")]
    CommitFailed(CommitFailure),
}

/// Why a COMMIT failed, in a form every member of a commit group can be given.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct CommitFailure {
    pub reason: String,
    /// The database could not be used (see [`is_unavailable`]), rather than refusing the data.
    pub unavailable: bool,
}

impl From<&sqlx::Error> for CommitFailure {
    fn from(error: &sqlx::Error) -> Self {
        Self {
            reason: error.to_string(),
            unavailable: is_unavailable(error),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::UniqueViolation(db.constraint().unwrap_or("unknown").to_string())
            }
            _ => StoreError::Database(error),
        }
    }
}

impl StoreError {
    /// The database could not be used just now (unreachable, shutting down, out of
    /// connections, locked), as opposed to refusing or failing a statement: the same request
    /// may succeed later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(error) => is_unavailable(error),
            StoreError::CommitFailed(failure) => failure.unavailable,
            StoreError::UniqueViolation(_)
            | StoreError::Corrupt(_)
            | StoreError::Migration(_)
            | StoreError::Aborted => false,
        }
    }
}

/// Whether `error` means the database could not be used just now rather than that a statement
/// is wrong: no connection within the pool's timeout, a closed pool, a broken connection, the
/// server refusing or ending sessions, or the database locked by someone else.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                postgres_unavailable(pg.code(), pg.severity())
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                db.code()
                    .and_then(|code| code.parse().ok())
                    .is_some_and(sqlite_unavailable)
            } else {
                false
            }
        }
        _ => false,
    }
}

/// PostgreSQL: connection exceptions (class 08), the server shutting down or starting up
/// (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now), too many
/// connections (53300), and any FATAL or PANIC error: the server ended the session (a refused
/// connection such as "database is not currently accepting connections" is FATAL too), so
/// the statement did not run.
fn postgres_unavailable(code: &str, severity: sqlx::postgres::PgSeverity) -> bool {
    use sqlx::postgres::PgSeverity;
    code.starts_with("08")
        || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
        || matches!(severity, PgSeverity::Fatal | PgSeverity::Panic)
}

/// SQLite (primary result codes of the extended code): SQLITE_BUSY (5) and SQLITE_LOCKED (6),
/// another connection held the lock past the busy timeout; SQLITE_IOERR (10), the file could
/// not be read or written; SQLITE_CANTOPEN (14), the file could not be opened.
fn sqlite_unavailable(extended_code: i32) -> bool {
    matches!(extended_code & 0xff, 5 | 6 | 10 | 14)
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The constraint a second live record for one idempotency key violates.
pub const IDEMPOTENCY_KEY: &str = "idempotency_pkey";

/// A stored answer to an idempotent request.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
    pub status_code: u16,
    pub response: Value,
    pub headers: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What [`Tx::find_idempotency_or_lock`] found: a live record for the key, or else the case.
#[derive(Debug)]
pub enum KeyOrCase {
    Key(IdempotencyRecord),
    Case(Option<LockedCase>),
}

/// A case locked for the rest of the transaction, with who requested its current plan (the
/// requesting key's identity when there was one, else the client's actor).
#[derive(Debug, Clone)]
pub struct LockedCase {
    pub case: Case,
    pub plan_requester: Option<String>,
}

/// The connection pool under a store, for tables other crates own (the verifier's
/// `metric_1m`). On SQLite it is the single writer, so their writes queue with ours.
#[derive(Debug, Clone)]
pub enum SqlPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;
    /// Apply pending migrations (idempotent).
    async fn migrate(&self) -> StoreResult<()>;
    /// Reachable, and every migration this build knows is applied.
    async fn check_ready(&self) -> StoreResult<()>;
    /// A write transaction; on SQLite writers are serialized, on PostgreSQL rows are locked.
    async fn begin(&self) -> StoreResult<Box<dyn Tx>>;

    async fn get_case(&self, id: Uuid) -> StoreResult<Option<Case>>;
    async fn list_cases(&self, filter: &CaseFilter) -> StoreResult<Vec<Case>>;
    async fn timeline(
        &self,
        case_id: Uuid,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<TimelineEntry>>;
    /// Timeline rows of every case after row `after`, in id order, each with its case's tenant
    /// (the all-cases event stream scopes them and watches the ids for rows still in flight).
    async fn timeline_since(
        &self,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<(TimelineEntry, String)>>;
    /// The newest timeline row's id (0 when there is none).
    async fn last_timeline_id(&self) -> StoreResult<i64>;
    async fn plans(&self, case_id: Uuid) -> StoreResult<Vec<PlanRecord>>;
    async fn decisions(&self, case_id: Uuid) -> StoreResult<Vec<DecisionRecord>>;
    /// Messages of one case in outbox order (tests and operators read it).
    async fn outbox_for(&self, key: &str) -> StoreResult<Vec<OutboxMessage>>;
    /// Cases in one of `statuses` whose last transition was before `before`, oldest first.
    async fn idle_cases(
        &self,
        statuses: &[workflow::Status],
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Uuid>>;
    /// Number of open (not CLOSED) cases per status.
    async fn count_open_by_status(&self) -> StoreResult<Vec<(String, i64)>>;

    /// Take up to `limit` unpublished outbox rows, oldest first. On PostgreSQL they stay
    /// locked (`FOR UPDATE SKIP LOCKED`) until the claim is marked or dropped, so relays
    /// running side by side never take the same row.
    async fn claim_outbox(&self, limit: u32) -> StoreResult<Box<dyn OutboxClaim>>;
    /// Notify `wake` whenever another process commits outbox rows (PostgreSQL LISTEN/NOTIFY;
    /// nothing on SQLite). Runs until the store is closed.
    async fn wake_on_outbox_commits(&self, wake: Arc<tokio::sync::Notify>) -> StoreResult<()>;
    /// Unpublished outbox rows.
    async fn outbox_pending(&self) -> StoreResult<i64>;
    /// Delete rows published before `before`; returns how many.
    async fn prune_outbox(&self, before: DateTime<Utc>) -> StoreResult<u64>;

    /// Whether `consumer` has handled `message_id` (outside any transaction).
    async fn inbox_contains(&self, consumer: &str, message_id: Uuid) -> StoreResult<bool>;
    /// Record that `consumer` handled `message_id` (idempotent).
    async fn record_inbox(
        &self,
        consumer: &str,
        message_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn insert_dead_letter(&self, letter: &DeadLetter) -> StoreResult<()>;
    async fn dead_letters(&self) -> StoreResult<Vec<DeadLetter>>;

    /// Hand a message to a long-running `consumer` of the embedded bus: in progress for `holder`
    /// until `lease_until`, one delivery more (the first, unless it is in progress already).
    /// Returns the deliveries so far.
    async fn deliver_in_progress(
        &self,
        consumer: &str,
        envelope: &bus::Envelope,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<i64>;
    /// Deliver a message in progress again, to `holder` until `lease_until`: the deliveries so
    /// far, or `None` when it is no longer in progress (finished meanwhile).
    async fn redeliver_in_progress(
        &self,
        consumer: &str,
        message_id: Uuid,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<i64>>;
    /// Extend the lease of everything `holder` has in progress for `consumer`.
    async fn extend_in_progress(
        &self,
        consumer: &str,
        holder: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<u64>;
    /// Every message `consumer` has in progress, whoever holds it.
    async fn in_progress(&self, consumer: &str) -> StoreResult<Vec<InProgressDelivery>>;
    /// `consumer` finished `message_id`: no longer in progress, and in its inbox, in one
    /// transaction.
    async fn finish_in_progress(
        &self,
        consumer: &str,
        message_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Claim command `key` for `holder`: exactly one caller ever gets `Claimed`.
    async fn claim_command(
        &self,
        key: &str,
        holder: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<bus::Claim>;
    /// Record what a claimed command ended with.
    async fn finish_command(
        &self,
        key: &str,
        outcome: &Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    fn pool(&self) -> SqlPool;
    /// Write transactions that reached their commit and the COMMITs that made them durable,
    /// where the store groups commits (SQLite); `None` elsewhere.
    fn group_commit_stats(&self) -> Option<(u64, u64)> {
        None
    }

    async fn count_keys(&self) -> StoreResult<i64>;
    async fn insert_key(&self, key: &ApiKey, secret_hash: &str) -> StoreResult<()>;
    /// The key with this secret hash, and the stored hash (for a constant-time check).
    async fn find_key(&self, secret_hash: &str) -> StoreResult<Option<(ApiKey, String)>>;
    async fn list_keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Mark the key revoked (once); `None` when there is no such key.
    async fn revoke_key(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<Option<ApiKey>>;

    async fn close(&self);
}

/// One write transaction. A write whose result the method does not return may be deferred
/// until the transaction's next read or its commit (SQLite batches them), so a constraint it
/// violates can surface from a later call, `commit()` included.
#[async_trait]
pub trait Tx: Send {
    /// The live (unexpired at `now`) record for this key, if any.
    async fn find_idempotency(
        &mut self,
        scope: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyRecord>>;
    /// The live record for this key; when there is none, the case `id` locked as by
    /// `lock_case`. One round trip where the store can (a transition's first reads).
    async fn find_idempotency_or_lock(
        &mut self,
        scope: &str,
        key: &str,
        now: DateTime<Utc>,
        id: Uuid,
    ) -> StoreResult<KeyOrCase> {
        Ok(match self.find_idempotency(scope, key, now).await? {
            Some(record) => KeyOrCase::Key(record),
            None => KeyOrCase::Case(self.lock_case(id).await?),
        })
    }
    /// Store a record, replacing an expired one with the same key.
    async fn save_idempotency(&mut self, record: &IdempotencyRecord) -> StoreResult<()>;
    async fn insert_case(&mut self, case: &Case) -> StoreResult<()>;
    async fn lock_case(&mut self, id: Uuid) -> StoreResult<Option<LockedCase>>;
    /// Write status, version, resolution, current plan and `updated_at` of a locked case.
    async fn update_case(&mut self, case: &Case) -> StoreResult<()>;
    async fn append_timeline(&mut self, entry: &NewTimelineEntry) -> StoreResult<i64>;
    /// Append a timeline row without waiting for its id (it may be deferred).
    async fn record_timeline(&mut self, entry: &NewTimelineEntry) -> StoreResult<()> {
        self.append_timeline(entry).await.map(|_| ())
    }
    async fn append_outbox(&mut self, message: &OutboxMessage) -> StoreResult<()>;
    async fn insert_plan(&mut self, plan: &PlanRecord) -> StoreResult<()>;
    /// A stored plan, read inside the transaction (for the commands that carry it).
    async fn plan(&mut self, id: Uuid) -> StoreResult<Option<PlanRecord>>;
    async fn insert_decision(&mut self, decision: &DecisionRecord) -> StoreResult<()>;
    /// Record that `consumer` handled `message_id`; false when it already had.
    async fn insert_inbox(
        &mut self,
        consumer: &str,
        message_id: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// The latest `limit` timeline rows and the latest command of case `id`.
    async fn activity(&mut self, id: Uuid, limit: u32) -> StoreResult<Activity>;
    /// The `findings` of the case's latest analysis on its timeline (an `analysis_done` or
    /// `analysis_findings` row that carries them), if any.
    async fn latest_findings(&mut self, id: Uuid) -> StoreResult<Option<Vec<Value>>>;
    /// Publish the outbox message again, to consumers that handled it as well (their inbox
    /// rows are dropped): a redelivery with the same message id.
    async fn requeue_message(&mut self, message_id: Uuid) -> StoreResult<()>;
    /// The transaction's connection, every deferred write sent. A statement that fails on it
    /// must end the transaction (drop it): what it wrote is then rolled back with the rest.
    async fn connection(&mut self) -> StoreResult<TxConnection<'_>>;
    /// Queue a write to a table a role crate keeps (`?` placeholders, `args` bound in order):
    /// it goes with the transaction's next read or its commit, like the store's own writes,
    /// so it costs no round trip of its own. Its failure fails that read or the commit.
    fn defer_write(&mut self, sql: &str, args: Vec<SqlValue>);
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}

/// `?` placeholders as PostgreSQL's `$1, $2, ...` (for SQL written once for both backends,
/// with no `?` in its literals).
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

/// A value bound to a [`Tx::defer_write`] statement, encoded the same on both backends (ids
/// are text in the role crates' tables; times as each backend's timestamp).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Text(Option<String>),
    Int(Option<i64>),
    Time(Option<DateTime<Utc>>),
    Json(Option<Value>),
}

/// A transaction's own connection, lent to a crate that keeps tables of its own (the sensor's
/// envelopes and evidence) so that its writes commit or roll back with the case's.
pub enum TxConnection<'a> {
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

/// What the watchdog reads of a locked case.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    /// The case's latest timeline rows, newest first.
    pub recent: Vec<TimelineMark>,
    /// The latest command sent to a worker for the case.
    pub last_command: Option<SentCommand>,
}

/// A timeline row, as far as the watchdog cares.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineMark {
    pub event: String,
    pub outcome: crate::model::Outcome,
    pub created_at: DateTime<Utc>,
}

/// A `cmd.*` message in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SentCommand {
    pub message_id: Uuid,
    pub topic: String,
    pub created_at: DateTime<Utc>,
}

/// An outbox row with its position, as the relay sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub message: OutboxMessage,
}

/// Outbox rows taken by one relay.
#[async_trait]
pub trait OutboxClaim: Send {
    fn rows(&self) -> &[OutboxRow];
    /// Mark these rows published and release the claim. Dropping the claim instead releases
    /// the rows unmarked, for the next batch to take.
    async fn mark_published(self: Box<Self>, ids: &[i64], at: DateTime<Utc>) -> StoreResult<()>;
}

/// Open the store a URL names: `postgres://...`, or `sqlite://path` for a file.
pub async fn connect(url: &str, pool_size: u32) -> StoreResult<Arc<dyn Store>> {
    connect_with(url, PoolSettings::new(pool_size)).await
}

/// When an embedded (SQLite) commit is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteDurability {
    /// Every commit is on disk before it is answered (`synchronous = FULL`): survives a power
    /// loss. One flush per commit bounds the rate.
    #[default]
    Full,
    /// The write-ahead log is flushed at checkpoints (`synchronous = NORMAL`): survives a crash
    /// of opscase, but a power loss or OS crash may lose the last commits.
    Normal,
}

/// How a store connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections in the pool (on SQLite the readers; there is one writer).
    pub size: u32,
    /// How long a caller waits for a connection, including (re)connecting to a database that
    /// refuses, before giving up with `PoolTimedOut`: an unavailable store. Shorter than the
    /// request timeout, so an outage is reported as one instead of as a slow request.
    pub acquire_timeout: Duration,
    pub sqlite_durability: SqliteDurability,
}

impl PoolSettings {
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn new(size: u32) -> Self {
        Self {
            size,
            acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT,
            sqlite_durability: SqliteDurability::Full,
        }
    }
}

pub async fn connect_with(url: &str, settings: PoolSettings) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, settings).await?))
    } else {
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        Ok(Arc::new(
            SqliteStore::open(Path::new(path), settings).await?,
        ))
    }
}

pub(crate) fn parse_status(text: &str) -> StoreResult<workflow::Status> {
    workflow::Status::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status {text:?}")))
}

pub(crate) fn parse_enum<T: serde::de::DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_value(Value::String(text.to_string()))
        .map_err(|_| StoreError::Corrupt(format!("unexpected value {text:?}")))
}

/// The timeline events that may carry an analysis's `findings` in their `meta`.
pub const FINDINGS_EVENTS: [&str; 2] = ["analysis_done", "analysis_findings"];

/// How many of those rows are looked at for the latest findings (a hand-made `analysis_done`
/// carries none).
pub const FINDINGS_LOOKBACK: i64 = 20;

/// The findings of the first row (newest first) whose meta has them.
pub fn first_findings(metas: impl IntoIterator<Item = Value>) -> Option<Vec<Value>> {
    metas.into_iter().find_map(|meta| match meta {
        Value::Object(mut meta) => match meta.remove("findings") {
            Some(Value::Array(findings)) => Some(findings),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::time::Duration;

    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Executor};

    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered("SELECT 1 WHERE a = ? AND b IN (?, ?)"),
            "SELECT 1 WHERE a = $1 AND b IN ($2, $3)"
        );
    }

    #[test]
    fn pool_and_connection_failures_are_unavailable() {
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        ] {
            assert!(StoreError::from(error).is_unavailable());
        }
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!StoreError::Corrupt("x".into()).is_unavailable());
        assert!(!StoreError::Aborted.is_unavailable());
    }

    #[test]
    fn postgres_codes_of_an_unusable_server_are_unavailable() {
        use sqlx::postgres::PgSeverity::{Error, Fatal};
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53300"] {
            assert!(postgres_unavailable(code, Error), "{code}");
        }
        // "database is not currently accepting connections" is 55000, but FATAL.
        assert!(postgres_unavailable("55000", Fatal));
        for code in [
            "23505", "22021", "22P05", "42P01", "40001", "55000", "53100",
        ] {
            assert!(!postgres_unavailable(code, Error), "{code}");
        }
    }

    /// A real SQLITE_BUSY: another connection holds the write lock and ours does not wait.
    #[tokio::test]
    async fn a_database_locked_by_another_connection_is_unavailable_and_bad_sql_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(dir.path().join("db.sqlite"))
            .create_if_missing(true);
        let mut holder = options.connect().await.unwrap();
        holder
            .execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        holder.execute("BEGIN EXCLUSIVE").await.unwrap();
        let mut other = options
            .clone()
            .busy_timeout(Duration::ZERO)
            .connect()
            .await
            .unwrap();
        let busy = other
            .execute("INSERT INTO t (id) VALUES (1)")
            .await
            .unwrap_err();
        assert!(StoreError::from(busy).is_unavailable());
        assert!(
            CommitFailure::from(
                &other
                    .execute("INSERT INTO t (id) VALUES (2)")
                    .await
                    .unwrap_err()
            )
            .unavailable
        );

        holder.execute("COMMIT").await.unwrap();
        other
            .execute("INSERT INTO t (id) VALUES (1)")
            .await
            .unwrap();
        let duplicate = other
            .execute("INSERT INTO t (id) VALUES (1)")
            .await
            .unwrap_err();
        assert!(!StoreError::from(duplicate).is_unavailable());
        let bad = other.execute("SELECT nope FROM t").await.unwrap_err();
        assert!(!StoreError::from(bad).is_unavailable());
    }
}
