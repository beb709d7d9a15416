//! The single SQLite writer: batched statements and group commit.
//!
//! SQLite runs one write transaction at a time, and each statement sqlx sends is a round trip
//! to the connection's worker thread. Two things keep the writer busy for less time per
//! transaction:
//!
//! * **Batching.** A write whose result the caller does not need is buffered and sent with the
//!   transaction's next read or with its commit, as one multi-statement query: a transition
//!   costs two round trips instead of nine (its reads, then its writes with the release of its
//!   savepoint). sqlx's SQLite driver runs such a query statement by statement, binding `?`
//!   parameters in order across them; sqlx 0.8 calls that behaviour deprecated (its own
//!   `Query::fetch_many` warns), so an upgrade of sqlx must keep it or replace this batching.
//! * **Group commit.** Transactions queued for the writer share one SQLite transaction. Each
//!   runs inside the savepoint `opscase_tx` and releases it when it commits; the shared
//!   transaction commits when no transaction is queued behind it, else the committer task
//!   (queued behind them) commits it. With `synchronous = FULL` one flush then serves a whole
//!   group.
//!
//! A member's `commit()` returns only after the group's COMMIT, so nothing is answered before it
//! is durable. A member that fails or is dropped before it commits rolls back to its savepoint;
//! the others are untouched. A failed COMMIT fails every member of its group.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use futures::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqliteRow};
use sqlx::{Arguments, Either, Executor, Sqlite, SqlitePool};
use tokio::sync::{oneshot, Mutex, Notify, OwnedMutexGuard};

use crate::store::{CommitFailure, StoreError, StoreResult};

/// The writer connection's gatekeeper (one per store).
pub(super) struct Writer {
    shared: Arc<Shared>,
}

struct Shared {
    /// The single-connection pool; a group holds its connection from BEGIN to COMMIT.
    pool: SqlitePool,
    group: Arc<Mutex<Group>>,
    /// Transactions waiting for `group` (the committer does not count).
    queued: AtomicUsize,
    committer: Arc<Notify>,
    stats: GroupStats,
}

/// How much group commit saves: transactions that reached their commit, and the COMMITs
/// that made them durable.
#[derive(Debug, Default)]
pub(super) struct GroupStats {
    transactions: AtomicU64,
    commits: AtomicU64,
}

impl GroupStats {
    /// (transactions, commits) so far.
    pub(super) fn read(&self) -> (u64, u64) {
        (
            self.transactions.load(Ordering::Relaxed),
            self.commits.load(Ordering::Relaxed),
        )
    }
}

/// The open group transaction, if any.
#[derive(Default)]
struct Group {
    /// Held from the group's BEGIN until its COMMIT or ROLLBACK.
    conn: Option<PoolConnection<Sqlite>>,
    /// A member left without committing and may have left its savepoint open.
    dangling: bool,
    /// Members that released their savepoint, waiting for the group's COMMIT.
    waiting: Vec<oneshot::Sender<Result<(), CommitFailure>>>,
}

impl Writer {
    /// Take over `pool` (one connection) and start the committer task.
    pub(super) fn new(pool: SqlitePool) -> Self {
        let committer = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            pool,
            group: Arc::new(Mutex::new(Group::default())),
            queued: AtomicUsize::new(0),
            committer: committer.clone(),
            stats: GroupStats::default(),
        });
        tokio::spawn(run_committer(Arc::downgrade(&shared), committer));
        Self { shared }
    }

    /// Join (or open) the group transaction: the writer is this transaction's until it
    /// commits or is dropped.
    pub(super) async fn begin(&self) -> StoreResult<SqliteTx> {
        let queued = Queued::enter(&self.shared.queued);
        let mut group = self.shared.group.clone().lock_owned().await;
        drop(queued);
        let mut batch = Batch::default();
        if group.conn.is_none() {
            group.conn = Some(self.shared.pool.acquire().await?);
            batch.push(Kind::Plain, "BEGIN IMMEDIATE");
        } else {
            group.roll_back_dangling().await;
        }
        batch.push(Kind::Plain, "SAVEPOINT opscase_tx");
        Ok(SqliteTx {
            shared: self.shared.clone(),
            group: Some(group),
            batch,
            poisoned: false,
        })
    }

    pub(super) fn stats(&self) -> &GroupStats {
        &self.shared.stats
    }

    /// Commit or roll back whatever group is open, then close the pool.
    pub(super) async fn close(&self) {
        let mut group = self.shared.group.lock().await;
        group.settle(&self.shared.stats).await;
        drop(group);
        self.shared.pool.close().await;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Wakes the committer so it sees the store is gone and ends.
        self.shared.committer.notify_one();
    }
}

/// Commits groups whose last member saw others queued behind it, and cleans up after
/// members that were dropped. It queues for the writer like a transaction, so a group holds
/// everyone who got the writer before it.
async fn run_committer(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut group = shared.group.lock().await;
        group.settle(&shared.stats).await;
    }
}

impl Group {
    /// Finish the open group, if any: roll back a member's dangling savepoint, commit the
    /// members waiting for it (or roll back an empty group), and give the connection back.
    async fn settle(&mut self, stats: &GroupStats) {
        self.roll_back_dangling().await;
        let Some(conn) = self.conn.as_deref_mut() else {
            return;
        };
        if self.waiting.is_empty() {
            let _ = conn.execute("ROLLBACK").await;
        } else if let Err(error) = conn.execute("COMMIT").await {
            self.abandon(CommitFailure::from(&error)).await;
            return;
        } else {
            stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(Ok(()));
    }

    /// Undo what a member that left without committing did since its SAVEPOINT.
    async fn roll_back_dangling(&mut self) {
        let Some(conn) = self.conn.as_deref_mut() else {
            return;
        };
        if std::mem::take(&mut self.dangling) {
            // Fails harmlessly when the member never opened it or had already released it.
            if conn.execute("ROLLBACK TO opscase_tx").await.is_ok() {
                let _ = conn.execute("RELEASE opscase_tx").await;
            }
        }
    }

    /// The group's COMMIT failed: make sure nothing of it stays, and fail every member.
    async fn abandon(&mut self, error: CommitFailure) {
        if let Some(conn) = self.conn.as_deref_mut() {
            // Fails harmlessly when SQLite already rolled the transaction back.
            let _ = conn.execute("ROLLBACK").await;
        }
        self.dangling = false;
        self.finish(Err(error));
    }

    /// The group's transaction is over: tell its members and give the connection back.
    fn finish(&mut self, outcome: Result<(), CommitFailure>) {
        self.conn = None;
        for member in self.waiting.drain(..) {
            let _ = member.send(outcome.clone());
        }
    }
}

/// Counts a transaction as queued for the writer until it has it (or gives up waiting).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a statement of a batch is, for reading its outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Plain,
    /// The group's COMMIT: its failure fails the whole group.
    Commit,
    /// A write whose unique-constraint failure means `constraint` was violated (SQLite does
    /// not name the constraint).
    Unique(&'static str),
}

/// Statements not yet sent, with their arguments in order.
#[derive(Default)]
pub(super) struct Batch {
    sql: String,
    args: SqliteArguments<'static>,
    kinds: Vec<Kind>,
    bind_error: Option<String>,
}

impl Batch {
    /// Append a statement; bind its `?` parameters next, in order.
    pub(super) fn push(&mut self, kind: Kind, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self.sql.push_str(";\n");
        self.kinds.push(kind);
        self
    }

    pub(super) fn bind<T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'static, Sqlite> + sqlx::Type<Sqlite> + 'static,
    {
        if let Err(error) = self.args.add(value) {
            self.bind_error.get_or_insert(error.to_string());
        }
        self
    }
}

/// What a batch did: the rows its statements returned, and the number of rows changed by
/// the last statement.
pub(super) struct Executed {
    /// Each row with the position of its statement in the batch.
    rows: Vec<(usize, SqliteRow)>,
    statements: usize,
    pub last_changes: u64,
}

impl Executed {
    /// The first row of the statement `back` places before the batch's last (0: the last).
    pub(super) fn row(&self, back: usize) -> Option<&SqliteRow> {
        let statement = self.statements.checked_sub(back + 1)?;
        self.rows
            .iter()
            .find(|(of, _)| *of == statement)
            .map(|(_, row)| row)
    }

    /// Every row of the statement `back` places before the batch's last.
    pub(super) fn rows_of(&self, back: usize) -> impl Iterator<Item = &SqliteRow> {
        let statement = self.statements.checked_sub(back + 1);
        self.rows
            .iter()
            .filter(move |(of, _)| Some(*of) == statement)
            .map(|(_, row)| row)
    }
}

/// One write transaction: a member of the writer's group.
pub(super) struct SqliteTx {
    shared: Arc<Shared>,
    /// The writer, until the transaction commits.
    group: Option<OwnedMutexGuard<Group>>,
    batch: Batch,
    /// A statement failed: like PostgreSQL, the transaction can only be rolled back.
    poisoned: bool,
}

impl SqliteTx {
    /// Buffer a statement until the next read or the commit.
    pub(super) fn defer(&mut self, kind: Kind, sql: &str) -> &mut Batch {
        self.batch.push(kind, sql)
    }

    /// Send what is buffered, ending with `sql` (its parameters bound by `bind`), and return
    /// what it returned.
    pub(super) async fn run(
        &mut self,
        sql: &str,
        bind: impl FnOnce(&mut Batch),
    ) -> StoreResult<Executed> {
        bind(self.batch.push(Kind::Plain, sql));
        self.flush().await
    }

    async fn flush(&mut self) -> StoreResult<Executed> {
        if self.poisoned {
            return Err(StoreError::Aborted);
        }
        let batch = std::mem::take(&mut self.batch);
        let group = self
            .group
            .as_mut()
            .expect("a transaction has the writer until commit");
        // Until the batch is through, a drop (a cancelled request) may leave the savepoint open.
        group.dangling = true;
        let conn = group
            .conn
            .as_deref_mut()
            .expect("a group member has the connection");
        let result = execute(conn, batch).await;
        group.dangling = result.is_err();
        self.poisoned = result.is_err();
        result
    }

    /// The writer's connection inside this transaction, with what is buffered sent.
    pub(super) async fn connection(&mut self) -> StoreResult<&mut SqliteConnection> {
        self.flush().await?;
        let group = self
            .group
            .as_mut()
            .expect("a transaction has the writer until commit");
        Ok(group
            .conn
            .as_deref_mut()
            .expect("a group member has the connection"))
    }

    pub(super) async fn commit(mut self) -> StoreResult<()> {
        self.batch.push(Kind::Plain, "RELEASE opscase_tx");
        // Nobody queued behind us: commit now; else leave the group open for them.
        let alone = self.shared.queued.load(Ordering::SeqCst) == 0;
        if alone {
            self.batch.push(Kind::Commit, "COMMIT");
        }
        let flushed = self.flush().await;
        let mut group = self.group.take().expect("commit runs once");
        match flushed {
            Ok(_) => {}
            // Everyone's writes were in it, this member's too: all of them fail.
            Err(StoreError::CommitFailed(error)) => {
                group.abandon(error.clone()).await;
                return Err(StoreError::CommitFailed(error));
            }
            // Roll back this member only (and commit the members waiting), or fail the
            // group when it cannot continue.
            Err(error) => {
                group.settle(&self.shared.stats).await;
                return Err(error);
            }
        }
        let stats = &self.shared.stats;
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        if alone {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            group.finish(Ok(()));
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        group.waiting.push(done);
        drop(group);
        self.shared.committer.notify_one();
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(StoreError::CommitFailed(error)),
            Err(_) => Err(StoreError::CommitFailed(CommitFailure {
                reason: "the writer closed before the group committed".into(),
                unavailable: true,
            })),
        }
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(mut group) = self.group.take() {
            if group.conn.is_some() {
                // Anything sent since SAVEPOINT must go; the committer takes care of it.
                group.dangling = true;
                drop(group);
                self.shared.committer.notify_one();
            }
        }
    }
}

/// Run `batch` as one multi-statement query (SQLite's driver runs each statement in turn,
/// binding `?` parameters in order across them) and stop at the first error.
async fn execute(conn: &mut SqliteConnection, batch: Batch) -> StoreResult<Executed> {
    if let Some(error) = batch.bind_error {
        return Err(StoreError::Corrupt(format!(
            "cannot bind a parameter: {error}"
        )));
    }
    let Batch {
        sql, args, kinds, ..
    } = batch;
    let mut executed = Executed {
        rows: Vec::new(),
        statements: kinds.len(),
        last_changes: 0,
    };
    if kinds.is_empty() {
        return Ok(executed);
    }
    let mut done = 0;
    let mut results = conn.fetch_many(sqlx::query_with(&sql, args));
    loop {
        match results.try_next().await {
            Ok(None) => return Ok(executed),
            Ok(Some(Either::Right(row))) => executed.rows.push((done, row)),
            Ok(Some(Either::Left(result))) => {
                executed.last_changes = result.rows_affected();
                done += 1;
            }
            Err(error) => {
                return Err(match kinds.get(done) {
                    Some(Kind::Unique(constraint)) if is_unique_violation(&error) => {
                        StoreError::UniqueViolation((*constraint).to_string())
                    }
                    Some(Kind::Commit) => StoreError::CommitFailed(CommitFailure::from(&error)),
                    _ => error.into(),
                })
            }
        }
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::super::SqliteStore;
    use crate::model::{Automation, Case, NewTimelineEntry, Outcome, Severity};
    use crate::store::{IdempotencyRecord, PoolSettings, Store, StoreError, IDEMPOTENCY_KEY};

    async fn open_store(dir: &tempfile::TempDir) -> SqliteStore {
        let store = SqliteStore::open(&dir.path().join("db.sqlite"), PoolSettings::new(2))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    fn case(title: &str) -> Case {
        let now = Utc::now();
        Case {
            id: Uuid::now_v7(),
            tenant: "default".into(),
            title: title.into(),
            severity: Severity::Medium,
            labels: Default::default(),
            automation: Automation::Manual,
            evidence: Vec::new(),
            status: workflow::Status::New,
            version: 1,
            resolution: None,
            current_plan_id: None,
            source: "api".into(),
            created_by: "test".into(),
            created_at: now,
            updated_at: now,
        }
    }

    fn key_record(key: &str, now: DateTime<Utc>) -> IdempotencyRecord {
        IdempotencyRecord {
            scope: "test".into(),
            key: key.into(),
            fingerprint: "f".into(),
            status_code: 200,
            response: serde_json::json!({}),
            headers: serde_json::json!({}),
            created_at: now,
            expires_at: now + chrono::Duration::hours(1),
        }
    }

    /// Wait until `n` transactions are queued for the writer.
    async fn until_queued(store: &SqliteStore, n: usize) {
        for _ in 0..2_000 {
            if store
                .group_writer
                .shared
                .queued
                .load(super::Ordering::SeqCst)
                == n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{n} transactions never queued for the writer");
    }

    /// Start `cases.len()` transactions that each insert one case and commit; they queue
    /// behind whoever holds the writer.
    fn spawn_inserts(
        store: &std::sync::Arc<SqliteStore>,
        cases: &[Case],
    ) -> Vec<tokio::task::JoinHandle<Result<(), StoreError>>> {
        cases
            .iter()
            .cloned()
            .map(|case| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut tx = store.begin().await?;
                    tx.insert_case(&case).await?;
                    tx.commit().await
                })
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactions_queued_behind_one_share_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open_store(&dir).await);
        let first = case("first");
        let mut tx = store.begin().await.unwrap();
        tx.insert_case(&first).await.unwrap();
        let queued: Vec<Case> = (0..3).map(|i| case(&format!("queued {i}"))).collect();
        let tasks = spawn_inserts(&store, &queued);
        until_queued(&store, 3).await;

        tx.commit().await.unwrap();
        for task in tasks {
            task.await.unwrap().unwrap();
        }

        // Every commit returned only once its case was readable from another connection.
        for case in std::iter::once(&first).chain(&queued) {
            let stored = store.get_case(case.id).await.unwrap();
            assert_eq!(stored.map(|c| c.title), Some(case.title.clone()));
        }
        assert_eq!(
            store.group_commit_stats(),
            Some((4, 1)),
            "(transactions, commits)"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_fails_at_commit_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open_store(&dir).await);
        let now = Utc::now();
        let mut tx = store.begin().await.unwrap();
        tx.save_idempotency(&key_record("taken", now))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let first = case("first");
        let mut tx = store.begin().await.unwrap();
        tx.insert_case(&first).await.unwrap();
        let loser = case("loser");
        let failing = {
            let store = store.clone();
            let loser = loser.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await?;
                tx.insert_case(&loser).await?;
                // Deferred: the live record for this key fails it at commit.
                tx.save_idempotency(&key_record("taken", now)).await?;
                tx.commit().await
            })
        };
        until_queued(&store, 1).await;
        let last = case("last");
        let tasks = spawn_inserts(&store, std::slice::from_ref(&last));
        until_queued(&store, 2).await;

        tx.commit().await.unwrap();
        match failing.await.unwrap() {
            Err(StoreError::UniqueViolation(constraint)) => assert_eq!(constraint, IDEMPOTENCY_KEY),
            other => panic!("expected the idempotency key's violation, got {other:?}"),
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }

        assert!(store.get_case(first.id).await.unwrap().is_some());
        assert!(store.get_case(last.id).await.unwrap().is_some());
        assert!(store.get_case(loser.id).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_member_leaves_nothing_and_its_group_still_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open_store(&dir).await);
        let kept = case("kept");
        let mut tx = store.begin().await.unwrap();
        tx.insert_case(&kept).await.unwrap();
        let dropped = case("dropped");
        let (flushed_tx, flushed) = tokio::sync::oneshot::channel();
        let (drop_it, dropped_signal) = tokio::sync::oneshot::channel::<()>();
        let abandoning = {
            let store = store.clone();
            let dropped = dropped.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                tx.insert_case(&dropped).await.unwrap();
                // A read sends the buffered insert: it is in the database, inside the savepoint.
                assert!(tx.lock_case(dropped.id).await.unwrap().is_some());
                flushed_tx.send(()).unwrap();
                dropped_signal.await.unwrap();
                drop(tx);
            })
        };
        until_queued(&store, 1).await;
        let committing = tokio::spawn(async move { tx.commit().await });
        flushed.await.unwrap();
        drop_it.send(()).unwrap();
        abandoning.await.unwrap();
        committing.await.unwrap().unwrap();

        assert!(store.get_case(kept.id).await.unwrap().is_some());
        assert!(store.get_case(dropped.id).await.unwrap().is_none());
        // The writer is free again, and a new transaction starts clean.
        let next = case("next");
        let mut tx = store.begin().await.unwrap();
        tx.insert_case(&next).await.unwrap();
        tx.commit().await.unwrap();
        assert!(store.get_case(next.id).await.unwrap().is_some());
        assert!(store.get_case(dropped.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn after_a_failed_statement_the_transaction_can_only_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir).await;
        let orphan = case("never written");
        let mut tx = store.begin().await.unwrap();
        tx.insert_case(&orphan).await.unwrap();
        // No such case: the foreign key fails this row (and sends the buffered insert with it).
        let entry = NewTimelineEntry {
            case_id: Uuid::now_v7(),
            version: 1,
            event: "open".into(),
            outcome: Outcome::Applied,
            from_status: None,
            to_status: Some(workflow::Status::New),
            actor: "test".into(),
            principal_id: None,
            principal_name: None,
            reason: None,
            correlation_id: None,
            request_id: None,
            meta: Default::default(),
            created_at: Utc::now(),
        };
        assert!(tx.append_timeline(&entry).await.is_err());
        assert!(matches!(
            tx.lock_case(orphan.id).await,
            Err(StoreError::Aborted)
        ));
        assert!(matches!(tx.commit().await, Err(StoreError::Aborted)));
        assert!(store.get_case(orphan.id).await.unwrap().is_none());

        let next = case("next");
        let mut tx = store.begin().await.unwrap();
        tx.insert_case(&next).await.unwrap();
        tx.commit().await.unwrap();
        assert!(store.get_case(next.id).await.unwrap().is_some());
    }
}
