//! The sensor's tables on both backends: `event_envelope`, `signal_group`, `evidence_link`
//! and `oo_locator`. Writes run on the transaction of the case change they belong to (a
//! [`TxConnection`] lent by the orchestrator's store), so an envelope, the case it opens and
//! its outbox messages commit together; reads run on the pool.
//!
//! Ids are text on both backends; the same SQL serves both, with `?` placeholders numbered
//! for PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use orchestrator::{SqlPool, StoreError, TxConnection};

/// `?` placeholders as PostgreSQL's `$1, $2, ...` (the SQL here has no `?` in literals).
fn numbered(sql: &str) -> String {
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

/// Take the group's row for the rest of the transaction, creating it if it is new. Two
/// transactions that race for a new group queue on its primary key (PostgreSQL) or on the
/// single writer (SQLite): the second sees what the first wrote.
pub async fn lock_group(
    conn: &mut TxConnection<'_>,
    group_key: &str,
    tenant: &str,
    route: &str,
    labels: &BTreeMap<String, String>,
) -> Result<GroupRow, StoreError> {
    let empty: BTreeSet<String> = BTreeSet::new();
    on_tx!(
        conn,
        "INSERT INTO signal_group (group_key, tenant, route, labels, firing) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (group_key) DO NOTHING",
        execute,
        |q| q
            .bind(group_key)
            .bind(tenant)
            .bind(route)
            .bind(Json(labels))
            .bind(Json(&empty))
    );
    let lock = match conn {
        TxConnection::Sqlite(_) => "",
        TxConnection::Postgres(_) => " FOR UPDATE",
    };
    let sql =
        format!("SELECT case_id, firing, touched_at FROM signal_group WHERE group_key = ?{lock}");
    let row = on_tx!(conn, &sql, fetch_optional, |q| q.bind(group_key));
    let group = one_row!(row, |r| Ok::<_, StoreError>(GroupRow {
        case_id: uuid(r.try_get("case_id")?, "case_id")?,
        firing: r.try_get::<Json<BTreeSet<String>>, _>("firing")?.0,
        touched_at: r.try_get("touched_at")?,
    }))?;
    group.ok_or_else(|| StoreError::Corrupt(format!("signal group {group_key} vanished")))
}

pub async fn update_group(
    conn: &mut TxConnection<'_>,
    group_key: &str,
    group: &GroupRow,
) -> Result<(), StoreError> {
    on_tx!(
        conn,
        "UPDATE signal_group SET case_id = ?, firing = ?, touched_at = ? WHERE group_key = ?",
        execute,
        |q| q
            .bind(group.case_id.map(|id| id.to_string()))
            .bind(Json(&group.firing))
            .bind(group.touched_at)
            .bind(group_key)
    );
    Ok(())
}

/// The state key and group of the alert's latest envelope, if it was seen before.
pub async fn last_state(
    conn: &mut TxConnection<'_>,
    tenant: &str,
    source: &str,
    fingerprint: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let row = on_tx!(
        conn,
        "SELECT state_key, group_key FROM event_envelope \
         WHERE tenant = ? AND source = ? AND fingerprint = ? ORDER BY id DESC LIMIT 1",
        fetch_optional,
        |q| q.bind(tenant).bind(source).bind(fingerprint)
    );
    one_row!(row, |r| Ok::<_, StoreError>((
        r.try_get::<String, _>("state_key")?,
        r.try_get::<String, _>("group_key")?
    )))
}

/// The tenant of the alert's latest envelope in any tenant (for a resolution that names none).
pub async fn tenant_of_alert(
    conn: &mut TxConnection<'_>,
    source: &str,
    fingerprint: &str,
) -> Result<Option<String>, StoreError> {
    let row = on_tx!(
        conn,
        "SELECT tenant FROM event_envelope WHERE source = ? AND fingerprint = ? \
         ORDER BY id DESC LIMIT 1",
        fetch_optional,
        |q| q.bind(source).bind(fingerprint)
    );
    one_row!(row, |r| Ok::<_, StoreError>(
        r.try_get::<String, _>("tenant")?
    ))
}

pub async fn insert_envelope(
    conn: &mut TxConnection<'_>,
    envelope: &Envelope,
) -> Result<(), StoreError> {
    on_tx!(
        conn,
        "INSERT INTO event_envelope (id, tenant, source, kind, severity, title, summary, labels, \
         annotations, fingerprint, state_key, status, starts_at, ends_at, generator_url, route, \
         group_key, outcome, case_id, received_at, raw) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        execute,
        |q| q
            .bind(envelope.id.to_string())
            .bind(&envelope.tenant)
            .bind(&envelope.source)
            .bind(&envelope.kind)
            .bind(&envelope.severity)
            .bind(&envelope.title)
            .bind(&envelope.summary)
            .bind(Json(&envelope.labels))
            .bind(Json(&envelope.annotations))
            .bind(&envelope.fingerprint)
            .bind(&envelope.state_key)
            .bind(&envelope.status)
            .bind(envelope.starts_at)
            .bind(envelope.ends_at)
            .bind(&envelope.generator_url)
            .bind(&envelope.route)
            .bind(&envelope.group_key)
            .bind(&envelope.outcome)
            .bind(envelope.case_id.map(|id| id.to_string()))
            .bind(envelope.received_at)
            .bind(Json(&envelope.raw))
    );
    Ok(())
}

const ENVELOPE_COLUMNS: &str = "id, tenant, source, kind, severity, title, summary, labels, \
    annotations, fingerprint, state_key, status, starts_at, ends_at, generator_url, route, \
    group_key, outcome, case_id, received_at, raw";

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
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered("SELECT 1 WHERE a = ? AND b IN (?, ?)"),
            "SELECT 1 WHERE a = $1 AND b IN ($2, $3)"
        );
    }

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
