//! The sensor's tables on both backends: `event_envelope`, `signal_group`, `evidence_link`
//! and `oo_locator`. Writes run on the transaction of the case change they belong to (a
//! [`TxConnection`] lent by the orchestrator's store), so an envelope, the case it opens and
//! its outbox messages commit together; reads run on the pool.
//!
//! Ids are text on both backends; the same SQL serves both, with `?` placeholders numbered
//! for PostgreSQL.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use orchestrator::store::numbered;
use orchestrator::{SqlPool, SqlValue, StoreError, Tx, TxConnection};

/// Run `$sql` with binds on a transaction's connection, whichever backend: `$run` is
/// `execute`, `fetch_optional` or `fetch_all`.
macro_rules! on_tx {
    ($conn:expr, $sql:expr, $run:ident, |$q:ident| $bind:expr) => {
        match $conn {
            TxConnection::Sqlite(conn) => {
                let $q = sqlx::query($sql);
                OnRows::Sqlite($bind.$run(&mut **conn).await?)
            }
            TxConnection::Postgres(conn) => {
                let sql = numbered($sql);
                let $q = sqlx::query(&sql);
                OnRows::Postgres($bind.$run(&mut **conn).await?)
            }
        }
    };
}

/// The same on the pool.
macro_rules! on_pool {
    ($pool:expr, $sql:expr, $run:ident, |$q:ident| $bind:expr) => {
        match $pool {
            SqlPool::Sqlite(pool) => {
                let $q = sqlx::query($sql);
                OnRows::Sqlite($bind.$run(pool).await?)
            }
            SqlPool::Postgres(pool) => {
                let sql = numbered($sql);
                let $q = sqlx::query(&sql);
                OnRows::Postgres($bind.$run(pool).await?)
            }
        }
    };
}

/// What a statement returned, on either backend.
enum OnRows<S, P> {
    Sqlite(S),
    Postgres(P),
}

/// Read a row of either backend with one expression (`$r` is the row).
macro_rules! each_row {
    ($rows:expr, |$r:ident| $read:expr) => {
        match $rows {
            OnRows::Sqlite(rows) => rows
                .iter()
                .map(|$r| $read)
                .collect::<Result<Vec<_>, StoreError>>(),
            OnRows::Postgres(rows) => rows
                .iter()
                .map(|$r| $read)
                .collect::<Result<Vec<_>, StoreError>>(),
        }
    };
}

macro_rules! one_row {
    ($row:expr, |$r:ident| $read:expr) => {
        match $row {
            OnRows::Sqlite(row) => row.as_ref().map(|$r| $read).transpose(),
            OnRows::Postgres(row) => row.as_ref().map(|$r| $read).transpose(),
        }
    };
}

fn uuid(text: Option<String>, column: &str) -> Result<Option<Uuid>, StoreError> {
    text.map(|t| Uuid::parse_str(&t).map_err(|e| StoreError::Corrupt(format!("{column}: {e}"))))
        .transpose()
}

/// One alert state received.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Envelope {
    pub id: Uuid,
    pub tenant: String,
    /// `alertmanager`, `grafana`, `events`, `analyst`.
    pub source: String,
    /// `alert`, `event`, `anomaly`.
    pub kind: String,
    pub severity: String,
    pub title: String,
    pub summary: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub fingerprint: String,
    /// `firing`, `resolved` or `acknowledged`.
    pub status: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub generator_url: Option<String>,
    /// The route that took it, and what it did: `opened`, `joined`, `resolved`, `cancelled`,
    /// `acknowledged`, `recorded` (no open case to tell).
    pub route: String,
    pub outcome: String,
    pub case_id: Option<Uuid>,
    pub received_at: DateTime<Utc>,
    /// The alert as received (cut to a summary when it was over 16 KiB).
    #[schema(value_type = Object)]
    pub raw: Value,
    #[serde(skip)]
    pub state_key: String,
    #[serde(skip)]
    pub group_key: String,
}

/// The most of a raw alert an envelope keeps.
pub const RAW_CAP: usize = 16 * 1024;

/// `raw`, or a note of its size when it is over [`RAW_CAP`] as JSON. Numbers that are not
/// integers or plain-sized floats are kept as their text: PostgreSQL's jsonb would give back
/// digits no JSON reader takes (a float near f64's limit comes back out of range).
pub fn capped_raw(raw: &Value) -> Value {
    let size = raw.to_string().len();
    if size <= RAW_CAP {
        let mut kept = raw.clone();
        tame_numbers(&mut kept);
        kept
    } else {
        serde_json::json!({"truncated": true, "bytes": size})
    }
}

fn tame_numbers(value: &mut Value) {
    match value {
        Value::Number(number) => {
            let plain = number.is_i64()
                || number.is_u64()
                || number.as_f64().is_some_and(|n| n.abs() < 1e15);
            if !plain {
                *value = Value::String(number.to_string());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tame_numbers),
        Value::Object(fields) => fields.values_mut().for_each(tame_numbers),
        _ => {}
    }
}

/// A group's row, locked for the rest of the transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub case_id: Option<Uuid>,
    pub firing: BTreeSet<String>,
    pub touched_at: Option<DateTime<Utc>>,
}

/// Take the group's row for the rest of the transaction, creating it if it is new, in one
/// statement. Two transactions that race for a group queue on its primary key (PostgreSQL:
/// the upsert locks the row and returns its latest version) or on the single writer (SQLite):
/// the second sees what the first wrote.
pub async fn lock_group(
    conn: &mut TxConnection<'_>,
    group_key: &str,
    tenant: &str,
    route: &str,
    labels: &BTreeMap<String, String>,
) -> Result<GroupRow, StoreError> {
    let empty: BTreeSet<String> = BTreeSet::new();
    let row = on_tx!(
        conn,
        "INSERT INTO signal_group (group_key, tenant, route, labels, firing) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (group_key) DO UPDATE SET group_key = excluded.group_key \
         RETURNING case_id, firing, touched_at",
        fetch_optional,
        |q| q
            .bind(group_key)
            .bind(tenant)
            .bind(route)
            .bind(Json(labels))
            .bind(Json(&empty))
    );
    let group = one_row!(row, |r| Ok::<_, StoreError>(GroupRow {
        case_id: uuid(r.try_get("case_id")?, "case_id")?,
        firing: r.try_get::<Json<BTreeSet<String>>, _>("firing")?.0,
        touched_at: r.try_get("touched_at")?,
    }))?;
    group.ok_or_else(|| StoreError::Corrupt(format!("signal group {group_key} vanished")))
}

/// Write the group's row back (deferred to the transaction's next read or its commit).
pub fn defer_group_update(tx: &mut dyn Tx, group_key: &str, group: &GroupRow) {
    tx.defer_write(
        "UPDATE signal_group SET case_id = ?, firing = ?, touched_at = ? WHERE group_key = ?",
        vec![
            SqlValue::Text(group.case_id.map(|id| id.to_string())),
            SqlValue::Json(Some(json_of(&group.firing))),
            SqlValue::Time(group.touched_at),
            SqlValue::Text(Some(group_key.to_string())),
        ],
    );
}

/// What the store holds of an alert: the state key of its latest envelope, the group it
/// went to, and that group's case.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub state_key: String,
    pub group_key: String,
    pub case_id: Option<Uuid>,
}

/// Fingerprints per statement of [`latest_states`] (well under both backends' bind limits).
const FINGERPRINTS_PER_READ: usize = 500;

/// [`latest_states_sql`] on PostgreSQL: the fingerprints as one array (one prepared
/// statement whatever their number), each alert's latest envelope by a backward scan of the
/// `(tenant, source, fingerprint, id)` index that stops at its first row.
const LATEST_STATES_PG: &str = "SELECT f.fingerprint, e.state_key, e.group_key, g.case_id \
    FROM unnest($3::text[]) AS f(fingerprint) \
    CROSS JOIN LATERAL (SELECT state_key, group_key FROM event_envelope \
        WHERE tenant = $1 AND source = $2 AND fingerprint = f.fingerprint \
        ORDER BY id DESC LIMIT 1) e \
    LEFT JOIN signal_group g ON g.group_key = e.group_key";

/// The latest envelope of each alert (one `tenant`, one `source`), by fingerprint: one
/// statement per 500 fingerprints, each alert found through the `(tenant, source,
/// fingerprint, id)` index (SQLite; PostgreSQL takes [`LATEST_STATES_PG`]).
fn latest_states_sql(fingerprints: usize) -> String {
    format!(
        "SELECT e.fingerprint, e.state_key, e.group_key, g.case_id FROM event_envelope e \
         LEFT JOIN signal_group g ON g.group_key = e.group_key \
         WHERE e.tenant = ? AND e.source = ? AND e.fingerprint IN ({}) \
         AND e.id = (SELECT MAX(x.id) FROM event_envelope x \
                     WHERE x.tenant = e.tenant AND x.source = e.source AND x.fingerprint = e.fingerprint)",
        vec!["?"; fingerprints].join(", ")
    )
}

macro_rules! seen_from {
    ($r:expr) => {
        Ok::<_, StoreError>((
            $r.try_get::<String, _>("fingerprint")?,
            Seen {
                state_key: $r.try_get("state_key")?,
                group_key: $r.try_get("group_key")?,
                case_id: uuid($r.try_get("case_id")?, "case_id")?,
            },
        ))
    };
}

/// [`SensorStore::latest_states`] inside a transaction (after the group's lock, so that a
/// racing delivery's states are seen).
pub async fn latest_states_in(
    conn: &mut TxConnection<'_>,
    tenant: &str,
    source: &str,
    fingerprints: &[&str],
) -> Result<HashMap<String, Seen>, StoreError> {
    let mut seen = HashMap::new();
    if let TxConnection::Postgres(conn) = conn {
        let rows = sqlx::query(LATEST_STATES_PG)
            .bind(tenant)
            .bind(source)
            .bind(fingerprints)
            .fetch_all(&mut **conn)
            .await?;
        for row in &rows {
            let (fingerprint, state) = seen_from!(row)?;
            seen.insert(fingerprint, state);
        }
        return Ok(seen);
    }
    for chunk in fingerprints.chunks(FINGERPRINTS_PER_READ) {
        let sql = latest_states_sql(chunk.len());
        let rows = on_tx!(conn, &sql, fetch_all, |q| chunk
            .iter()
            .fold(q.bind(tenant).bind(source), |q, f| q.bind(*f)));
        seen.extend(each_row!(rows, |r| seen_from!(r))?);
    }
    Ok(seen)
}

const ENVELOPE_COLUMNS: &str = "id, tenant, source, kind, severity, title, summary, labels, \
    annotations, fingerprint, state_key, status, starts_at, ends_at, generator_url, route, \
    group_key, outcome, case_id, received_at, raw";

/// Rows per multi-row INSERT of the deferred writes (21 binds each for an envelope).
const ROWS_PER_INSERT: usize = 100;

/// Insert envelopes (deferred to the transaction's next read or its commit), a hundred to a
/// statement.
pub fn defer_envelopes(tx: &mut dyn Tx, envelopes: &[Envelope]) {
    for chunk in envelopes.chunks(ROWS_PER_INSERT) {
        let mut args = Vec::with_capacity(chunk.len() * 21);
        for envelope in chunk {
            args.extend([
                SqlValue::Text(Some(envelope.id.to_string())),
                SqlValue::Text(Some(envelope.tenant.clone())),
                SqlValue::Text(Some(envelope.source.clone())),
                SqlValue::Text(Some(envelope.kind.clone())),
                SqlValue::Text(Some(envelope.severity.clone())),
                SqlValue::Text(Some(envelope.title.clone())),
                SqlValue::Text(envelope.summary.clone()),
                SqlValue::Json(Some(json_of(&envelope.labels))),
                SqlValue::Json(Some(json_of(&envelope.annotations))),
                SqlValue::Text(Some(envelope.fingerprint.clone())),
                SqlValue::Text(Some(envelope.state_key.clone())),
                SqlValue::Text(Some(envelope.status.clone())),
                SqlValue::Time(envelope.starts_at),
                SqlValue::Time(envelope.ends_at),
                SqlValue::Text(envelope.generator_url.clone()),
                SqlValue::Text(Some(envelope.route.clone())),
                SqlValue::Text(Some(envelope.group_key.clone())),
                SqlValue::Text(Some(envelope.outcome.clone())),
                SqlValue::Text(envelope.case_id.map(|id| id.to_string())),
                SqlValue::Time(Some(envelope.received_at)),
                SqlValue::Json(Some(envelope.raw.clone())),
            ]);
        }
        tx.defer_write(
            &format!(
                "INSERT INTO event_envelope ({ENVELOPE_COLUMNS}) VALUES {}",
                rows_of(21, chunk.len())
            ),
            args,
        );
    }
}

/// `(?, ?, ...), (?, ...)`: `rows` rows of `columns` placeholders.
fn rows_of(columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

fn json_of(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("maps and sets of strings are JSON")
}

macro_rules! envelope_from {
    ($r:expr) => {
        Ok::<_, StoreError>(Envelope {
            id: uuid(Some($r.try_get("id")?), "id")?.expect("some"),
            tenant: $r.try_get("tenant")?,
            source: $r.try_get("source")?,
            kind: $r.try_get("kind")?,
            severity: $r.try_get("severity")?,
            title: $r.try_get("title")?,
            summary: $r.try_get("summary")?,
            labels: $r.try_get::<Json<BTreeMap<String, String>>, _>("labels")?.0,
            annotations: $r
                .try_get::<Json<BTreeMap<String, String>>, _>("annotations")?
                .0,
            fingerprint: $r.try_get("fingerprint")?,
            state_key: $r.try_get("state_key")?,
            status: $r.try_get("status")?,
            starts_at: $r.try_get("starts_at")?,
            ends_at: $r.try_get("ends_at")?,
            generator_url: $r.try_get("generator_url")?,
            route: $r.try_get("route")?,
            group_key: $r.try_get("group_key")?,
            outcome: $r.try_get("outcome")?,
            case_id: uuid($r.try_get("case_id")?, "case_id")?,
            received_at: $r.try_get("received_at")?,
            raw: $r.try_get::<Json<Value>, _>("raw")?.0,
        })
    };
}

/// A log, metric or trace query: the seed's `oo_locator`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Locator {
    /// `loki`, `openobserve` or `prometheus`.
    pub system: String,
    /// Loki: unused; OpenObserve: the stream; Prometheus: unused.
    pub dataset: Option<String>,
    /// LogQL, OpenObserve SQL, or PromQL.
    pub query: String,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// OpenObserve's organisation (default `default`).
    pub org: Option<String>,
    /// Anything else worth keeping (labels of the pushed stream, ...).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Value,
}

impl Locator {
    pub fn new(system: LogSystem, query: impl Into<String>) -> Self {
        Self {
            system: system.as_str().into(),
            dataset: None,
            query: query.into(),
            from: None,
            to: None,
            org: None,
            attributes: Value::Object(Default::default()),
        }
    }

    pub fn system(&self) -> Option<LogSystem> {
        LogSystem::parse(&self.system)
    }
}

/// Where a locator points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSystem {
    Loki,
    OpenObserve,
    Prometheus,
}

impl LogSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            LogSystem::Loki => "loki",
            LogSystem::OpenObserve => "openobserve",
            LogSystem::Prometheus => "prometheus",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "loki" => Some(LogSystem::Loki),
            "openobserve" => Some(LogSystem::OpenObserve),
            "prometheus" => Some(LogSystem::Prometheus),
            _ => None,
        }
    }
}

/// What justifies a case: the seed's `evidence_link`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Evidence {
    pub id: Uuid,
    pub case_id: Uuid,
    /// `log`, `metric`, `trace`, `alert`, `runbook` or `url`.
    pub kind: String,
    pub title: String,
    pub note: Option<String>,
    pub locator: Option<Locator>,
    /// A row opscase holds: `{"table": ..., "keys": {...}}`.
    #[serde(rename = "ref")]
    #[schema(value_type = Option<Object>)]
    pub reference: Option<Value>,
    pub url: Option<String>,
    /// Where an operator clicks through to (the URL, or the locator's query in Grafana
    /// Explore or OpenObserve, when their base URLs are configured).
    pub href: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub content_hash: String,
}

/// Add evidence to a case unless the same content is there already; the evidence as stored
/// and whether it is new.
pub async fn insert_evidence(
    conn: &mut TxConnection<'_>,
    evidence: &Evidence,
) -> Result<(Evidence, bool), StoreError> {
    if let Some(existing) =
        find_evidence_by_hash(conn, evidence.case_id, &evidence.content_hash).await?
    {
        return Ok((existing, false));
    }
    let locator_id = match &evidence.locator {
        None => None,
        Some(locator) => {
            let id = Uuid::now_v7().to_string();
            on_tx!(
                conn,
                "INSERT INTO oo_locator (id, system, dataset, query, from_ts, to_ts, org, attributes, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                execute,
                |q| q
                    .bind(&id)
                    .bind(&locator.system)
                    .bind(&locator.dataset)
                    .bind(&locator.query)
                    .bind(locator.from)
                    .bind(locator.to)
                    .bind(&locator.org)
                    .bind(Json(&locator.attributes))
                    .bind(evidence.created_at)
            );
            Some(id)
        }
    };
    on_tx!(
        conn,
        "INSERT INTO evidence_link (id, case_id, kind, title, note, locator_id, ref, url, content_hash, \
         created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        execute,
        |q| q
            .bind(evidence.id.to_string())
            .bind(evidence.case_id.to_string())
            .bind(&evidence.kind)
            .bind(&evidence.title)
            .bind(&evidence.note)
            .bind(locator_id)
            .bind(evidence.reference.as_ref().map(Json))
            .bind(&evidence.url)
            .bind(&evidence.content_hash)
            .bind(&evidence.created_by)
            .bind(evidence.created_at)
    );
    Ok((evidence.clone(), true))
}

/// Add a delivery's evidence to its cases (deferred to the transaction's next read or its
/// commit): what a case holds already, or the delivery holds twice, is left out. For evidence
/// without a locator (what signals bring: alerts, links, rows).
pub fn defer_evidence(tx: &mut dyn Tx, evidence: &[Evidence]) -> Result<(), StoreError> {
    let mut taken = HashSet::new();
    let mut fresh = Vec::with_capacity(evidence.len());
    for item in evidence {
        if item.locator.is_some() {
            return Err(StoreError::Corrupt(
                "deferred evidence cannot carry a locator".into(),
            ));
        }
        if taken.insert((item.case_id, item.content_hash.as_str())) {
            fresh.push(item);
        }
    }
    for chunk in fresh.chunks(ROWS_PER_INSERT) {
        let mut args = Vec::with_capacity(chunk.len() * 10);
        for item in chunk {
            args.extend([
                SqlValue::Text(Some(item.id.to_string())),
                SqlValue::Text(Some(item.case_id.to_string())),
                SqlValue::Text(Some(item.kind.clone())),
                SqlValue::Text(Some(item.title.clone())),
                SqlValue::Text(item.note.clone()),
                SqlValue::Json(item.reference.clone()),
                SqlValue::Text(item.url.clone()),
                SqlValue::Text(Some(item.content_hash.clone())),
                SqlValue::Text(Some(item.created_by.clone())),
                SqlValue::Time(Some(item.created_at)),
            ]);
        }
        tx.defer_write(
            &format!(
                "INSERT INTO evidence_link (id, case_id, kind, title, note, ref, url, content_hash, \
                 created_by, created_at) VALUES {} ON CONFLICT (case_id, content_hash) DO NOTHING",
                rows_of(10, chunk.len())
            ),
            args,
        );
    }
    Ok(())
}

const EVIDENCE_SELECT: &str = "SELECT e.id, e.case_id, e.kind, e.title, e.note, e.ref, e.url, \
    e.content_hash, e.created_by, e.created_at, l.system, l.dataset, l.query, l.from_ts, l.to_ts, \
    l.org, l.attributes FROM evidence_link e LEFT JOIN oo_locator l ON l.id = e.locator_id";

macro_rules! evidence_from {
    ($r:expr) => {{
        let system: Option<String> = $r.try_get("system")?;
        let locator = match system {
            None => None,
            Some(system) => Some(Locator {
                system,
                dataset: $r.try_get("dataset")?,
                query: $r.try_get("query")?,
                from: $r.try_get("from_ts")?,
                to: $r.try_get("to_ts")?,
                org: $r.try_get("org")?,
                attributes: $r
                    .try_get::<Option<Json<Value>>, _>("attributes")?
                    .map(|j| j.0)
                    .filter(Value::is_object)
                    .unwrap_or_else(|| Value::Object(Default::default())),
            }),
        };
        Ok::<_, StoreError>(Evidence {
            id: uuid(Some($r.try_get("id")?), "id")?.expect("some"),
            case_id: uuid(Some($r.try_get("case_id")?), "case_id")?.expect("some"),
            kind: $r.try_get("kind")?,
            title: $r.try_get("title")?,
            note: $r.try_get("note")?,
            locator,
            reference: $r.try_get::<Option<Json<Value>>, _>("ref")?.map(|j| j.0),
            url: $r.try_get("url")?,
            href: None,
            created_by: $r.try_get("created_by")?,
            created_at: $r.try_get("created_at")?,
            content_hash: $r.try_get("content_hash")?,
        })
    }};
}

async fn find_evidence_by_hash(
    conn: &mut TxConnection<'_>,
    case_id: Uuid,
    content_hash: &str,
) -> Result<Option<Evidence>, StoreError> {
    let sql = format!("{EVIDENCE_SELECT} WHERE e.case_id = ? AND e.content_hash = ?");
    let row = on_tx!(conn, &sql, fetch_optional, |q| q
        .bind(case_id.to_string())
        .bind(content_hash));
    one_row!(row, |r| evidence_from!(r))
}

/// Reads of the sensor's tables, outside any transaction.
#[derive(Debug, Clone)]
pub struct SensorStore {
    pool: SqlPool,
}

impl SensorStore {
    pub fn new(pool: SqlPool) -> Self {
        Self { pool }
    }

    /// What the store holds of these alerts of one tenant and source, by fingerprint (read
    /// without the writer, so a delivery of states already taken needs no transaction).
    pub async fn latest_states(
        &self,
        tenant: &str,
        source: &str,
        fingerprints: &[&str],
    ) -> Result<HashMap<String, Seen>, StoreError> {
        let mut seen = HashMap::new();
        if let SqlPool::Postgres(pool) = &self.pool {
            let rows = sqlx::query(LATEST_STATES_PG)
                .bind(tenant)
                .bind(source)
                .bind(fingerprints)
                .fetch_all(pool)
                .await?;
            for row in &rows {
                let (fingerprint, state) = seen_from!(row)?;
                seen.insert(fingerprint, state);
            }
            return Ok(seen);
        }
        for chunk in fingerprints.chunks(FINGERPRINTS_PER_READ) {
            let sql = latest_states_sql(chunk.len());
            let rows = on_pool!(&self.pool, &sql, fetch_all, |q| chunk
                .iter()
                .fold(q.bind(tenant).bind(source), |q, f| q.bind(*f)));
            seen.extend(each_row!(rows, |r| seen_from!(r))?);
        }
        Ok(seen)
    }

    /// The tenant of the alert's latest envelope in any tenant (for a resolution that names
    /// none).
    pub async fn tenant_of_alert(
        &self,
        source: &str,
        fingerprint: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = on_pool!(
            &self.pool,
            "SELECT tenant FROM event_envelope WHERE source = ? AND fingerprint = ? \
             ORDER BY id DESC LIMIT 1",
            fetch_optional,
            |q| q.bind(source).bind(fingerprint)
        );
        one_row!(row, |r| Ok::<_, StoreError>(
            r.try_get::<String, _>("tenant")?
        ))
    }

    pub async fn evidence(&self, case_id: Uuid) -> Result<Vec<Evidence>, StoreError> {
        let sql = format!("{EVIDENCE_SELECT} WHERE e.case_id = ? ORDER BY e.created_at, e.id");
        let rows = on_pool!(&self.pool, &sql, fetch_all, |q| q.bind(case_id.to_string()));
        each_row!(rows, |r| evidence_from!(r))
    }

    pub async fn evidence_by_id(&self, id: Uuid) -> Result<Option<Evidence>, StoreError> {
        let sql = format!("{EVIDENCE_SELECT} WHERE e.id = ?");
        let row = on_pool!(&self.pool, &sql, fetch_optional, |q| q.bind(id.to_string()));
        one_row!(row, |r| evidence_from!(r))
    }

    /// The envelopes that went to a case, oldest first.
    pub async fn envelopes_of(&self, case_id: Uuid) -> Result<Vec<Envelope>, StoreError> {
        let sql =
            format!("SELECT {ENVELOPE_COLUMNS} FROM event_envelope WHERE case_id = ? ORDER BY id");
        let rows = on_pool!(&self.pool, &sql, fetch_all, |q| q.bind(case_id.to_string()));
        each_row!(rows, |r| envelope_from!(r))
    }

    /// One tenant's deploy and configuration changes that happened (or, without a time, were
    /// received) at or after `since`, newest first, at most `limit`.
    pub async fn changes_since(
        &self,
        tenant: &str,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Envelope>, StoreError> {
        let sql = format!(
            "SELECT {ENVELOPE_COLUMNS} FROM event_envelope WHERE tenant = ? \
             AND kind IN ('deploy', 'config') AND received_at >= ? \
             AND COALESCE(starts_at, received_at) >= ? \
             ORDER BY COALESCE(starts_at, received_at) DESC, id DESC LIMIT ?"
        );
        // A change is received after it happens, so `received_at >= since` uses the index.
        let rows = on_pool!(&self.pool, &sql, fetch_all, |q| q
            .bind(tenant)
            .bind(since)
            .bind(since)
            .bind(limit));
        each_row!(rows, |r| envelope_from!(r))
    }

    /// Envelopes of one tenant's alert (tests and operators).
    pub async fn envelopes_of_alert(
        &self,
        tenant: &str,
        fingerprint: &str,
    ) -> Result<Vec<Envelope>, StoreError> {
        let sql = format!(
            "SELECT {ENVELOPE_COLUMNS} FROM event_envelope WHERE tenant = ? AND fingerprint = ? \
             ORDER BY id"
        );
        let rows = on_pool!(&self.pool, &sql, fetch_all, |q| q
            .bind(tenant)
            .bind(fingerprint));
        each_row!(rows, |r| envelope_from!(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_jsonb_cannot_give_back_are_kept_as_text() {
        let raw = serde_json::json!({"a": 1.7976931348623157e308, "b": [7, -3, 0.5], "c": 1e20});
        let kept = capped_raw(&raw);
        assert_eq!(kept["a"], "1.7976931348623157e+308");
        assert_eq!(kept["b"], serde_json::json!([7, -3, 0.5]));
        assert_eq!(kept["c"], "1e+20");
    }

    #[test]
    fn a_raw_alert_over_the_cap_is_kept_as_its_size() {
        let small = serde_json::json!({"a": 1});
        assert_eq!(capped_raw(&small), small);
        let big = serde_json::json!({"a": "x".repeat(RAW_CAP)});
        let kept = capped_raw(&big);
        assert_eq!(kept["truncated"], true);
        assert!(kept["bytes"].as_u64().unwrap() > RAW_CAP as u64);
    }
}
