//! `kb_doc`, `kb_chunk` and the lexical index on both backends: documents are upserted
//! idempotently (an unchanged hash writes nothing, a changed one replaces the chunks), pruned
//! by source, and their chunks searched by plain-text queries.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use orchestrator::{SqlPool, StoreError};

use crate::chunk::{
    chunk_term_counts, content_hash, parse_markdown, query_terms, search_title, selective_terms,
    term_key, Chunk, ALL_CHUNKS_KEY,
};
use crate::rank::{self, Fields, TermStat};

/// The retriever that found a hit by its words.
pub const LEXICAL: &str = "lexical";

/// A document to store, chunked.
#[derive(Debug, Clone, PartialEq)]
pub struct DocInput {
    pub id: String,
    /// `None`: a global document, seen by every tenant.
    pub tenant: Option<String>,
    /// Where it came from: `runbooks`, `api`, ...
    pub source: String,
    pub path_or_url: String,
    pub title: String,
    /// What the title field of the lexical index holds (see [`search_title`]).
    pub search_title: String,
    pub metadata: Value,
    pub content_hash: String,
    pub chunks: Vec<Chunk>,
}

impl DocInput {
    /// A Markdown page: its title and chunks from the text, its front matter as metadata, its
    /// id from (tenant, source, path) so that importing it again finds it.
    pub fn markdown(
        tenant: Option<String>,
        source: &str,
        path_or_url: &str,
        text: &str,
        fallback_title: &str,
        extra_metadata: Option<&Value>,
    ) -> Self {
        let parsed = parse_markdown(text, fallback_title);
        let mut metadata = serde_json::Map::new();
        for (key, value) in &parsed.front_matter {
            metadata.insert(key.clone(), Value::String(value.clone()));
        }
        if let Some(Value::Object(extra)) = extra_metadata {
            metadata.extend(extra.clone());
        }
        let metadata = Value::Object(metadata);
        let mut title_field = parsed.search_title();
        // A page's file name is the name its repository gives it (a runbook is named after its
        // alert), even where the page's own heading says something else.
        if let Some(stem) = markdown_file_stem(path_or_url) {
            if !title_field.to_lowercase().contains(&stem.to_lowercase()) {
                title_field.push(' ');
                title_field.push_str(&search_title(stem, None));
            }
        }
        let content_hash = content_hash(&[
            &parsed.title,
            path_or_url,
            &metadata.to_string(),
            text,
            &title_field,
        ]);
        Self {
            id: doc_id(tenant.as_deref(), source, path_or_url),
            search_title: title_field,
            tenant,
            source: source.to_string(),
            path_or_url: path_or_url.to_string(),
            title: parsed.title,
            metadata,
            content_hash,
            chunks: parsed.chunks,
        }
    }
}

/// `kubernetes/KubeletDown.md` → `KubeletDown`; `None` for anything but a Markdown file.
fn markdown_file_stem(path_or_url: &str) -> Option<&str> {
    let name = url_path(path_or_url).rsplit('/').next()?;
    name.strip_suffix(".md").filter(|stem| !stem.is_empty())
}

/// The id of the document at `path_or_url` of `source` for `tenant` (global: `None`).
pub fn doc_id(tenant: Option<&str>, source: &str, path_or_url: &str) -> String {
    let key = format!("{}\0{source}\0{path_or_url}", tenant.unwrap_or(""));
    Uuid::new_v5(&Uuid::NAMESPACE_URL, key.as_bytes()).to_string()
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Upserted {
    Created,
    /// The content changed: its chunks were replaced.
    Updated,
    /// Same hash: nothing was written.
    Unchanged,
}

/// A document as listed.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DocSummary {
    pub id: String,
    /// Absent for a global document.
    pub tenant: Option<String>,
    pub source: String,
    /// The URL or path as imported.
    pub url: String,
    pub title: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub content_hash: String,
    pub chunk_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A chunk as stored.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StoredChunk {
    pub idx: i64,
    /// `KubePodCrashLooping › Mitigation`.
    pub heading_path: String,
    pub content: String,
    pub token_count: i64,
}

/// A document with its chunks.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StoredDoc {
    #[serde(flatten)]
    pub doc: DocSummary,
    pub chunks: Vec<StoredChunk>,
}

/// One search hit: a chunk and the document it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Hit {
    pub doc_id: String,
    pub title: String,
    /// The document's URL or path as imported.
    pub url: String,
    pub source: String,
    /// Absent for a global document.
    pub tenant: Option<String>,
    pub chunk_idx: i64,
    pub heading_path: String,
    pub content: String,
    /// Higher is better; comparable within one answer only. Lexical search alone: the
    /// lexical relevance; hybrid: the fused score, the sum of `1 / (60 + rank)` over the
    /// retrievers that found the chunk.
    pub score: f64,
    /// Which retrievers found it: `lexical` (its words), `vector` (its embedding), or both.
    pub retrievers: Vec<String>,
}

/// What a search or a listing may see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    /// A tenant-scoped caller: its tenant's documents and the global ones. `None`: all.
    pub tenant: Option<String>,
    pub source: Option<String>,
    /// Every source but this one (runbooks without the past cases).
    pub not_source: Option<String>,
}

/// Reads and writes the Librarian's tables.
#[derive(Debug, Clone)]
pub struct KbStore {
    pool: SqlPool,
}

const SELECT_STORED: &str = "SELECT content_hash, term_counts FROM kb_doc WHERE id = $1";

/// A search matches on its rarest terms while they are held by at most this many chunks in all
/// (see [`selective_terms`]): below it every term takes part, as on a corpus of a few thousand
/// chunks; above it the commonest are left out, which bounds the chunks ranked.
///
/// The candidates are ordered anew by all the terms ([`crate::rank`]), so the budget bounds
/// what a search costs more than what it finds: on the runbooks corpus (436 chunks) recall is
/// the same from 250 to 2,000; at 100,000 chunks PostgreSQL's p50 / p99 went from 14.5 / 27.2
/// ms at 2,000 to 9.1 / 16.7 ms at 1,000 (kb-bench, 2 cores).
pub const MATCH_BUDGET: i64 = 1_000;

/// How many of the lexical index's best chunks a search orders anew ([`crate::rank`]).
pub const RERANK_DEPTH: i64 = 100;

/// Add `{term: delta}` to the chunk counts, then drop the terms no chunk holds any more.
const SQLITE_ADD_TERMS: &str = "INSERT INTO kb_term (term, chunks) \
    SELECT key, value FROM json_each($1) WHERE true \
    ON CONFLICT (term) DO UPDATE SET chunks = chunks + excluded.chunks";
const SQLITE_DROP_TERMS: &str = "DELETE FROM kb_term WHERE chunks <= 0 \
    AND term IN (SELECT key FROM json_each($1))";
/// In the terms' order, so two writers never wait for each other's rows crosswise.
const PG_ADD_TERMS: &str = "INSERT INTO kb_term (term, chunks) \
    SELECT key, value::bigint FROM jsonb_each_text($1) ORDER BY key \
    ON CONFLICT (term) DO UPDATE SET chunks = kb_term.chunks + EXCLUDED.chunks";
const PG_DROP_TERMS: &str = "DELETE FROM kb_term WHERE chunks <= 0 \
    AND term IN (SELECT jsonb_object_keys($1))";

const SQLITE_TERM_COUNTS: &str =
    "SELECT term, chunks FROM kb_term WHERE term IN (SELECT value FROM json_each($1))";
const PG_TERM_COUNTS: &str =
    "SELECT term, chunks FROM kb_term WHERE term IN (SELECT jsonb_array_elements_text($1))";

/// Writers of one document take turns from their first statement, so the hash each compares is
/// the one it will replace: PostgreSQL by an advisory lock on the id, SQLite by taking the
/// database's write lock with a no-op write (in one process its single writer connection
/// already serialises; this also holds against `opscase kb import` running beside the service).
const PG_LOCK_DOC: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";
const SQLITE_LOCK_DOC: &str = "UPDATE kb_doc SET id = id WHERE id = $1";

const UPSERT_DOC: &str = "INSERT INTO kb_doc (id, tenant, source, path_or_url, title, metadata, \
    content_hash, created_at, updated_at, term_counts) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) \
    ON CONFLICT (id) DO UPDATE SET title = excluded.title, metadata = excluded.metadata, \
    content_hash = excluded.content_hash, updated_at = excluded.updated_at, \
    term_counts = excluded.term_counts";

const SQLITE_DELETE_FTS: &str =
    "DELETE FROM kb_fts WHERE rowid IN (SELECT rowid FROM kb_chunk WHERE doc_id = $1)";

const DELETE_CHUNKS: &str = "DELETE FROM kb_chunk WHERE doc_id = $1";

const DELETE_DOC: &str = "DELETE FROM kb_doc WHERE id = $1";

const SQLITE_INSERT_CHUNK: &str = "INSERT INTO kb_chunk \
    (doc_id, idx, heading_path, content, token_count) VALUES ($1, $2, $3, $4, $5) RETURNING rowid";

const SQLITE_INSERT_FTS: &str =
    "INSERT INTO kb_fts (rowid, title, heading, body) VALUES ($1, $2, $3, $4)";

/// The title weighs A, the heading path B, the body C.
const PG_INSERT_CHUNK: &str = "INSERT INTO kb_chunk \
    (doc_id, idx, heading_path, content, token_count, tsv, tenant, source) VALUES ($1, $2, $3, \
    $4, $5, setweight(to_tsvector('english', $6), 'A') || setweight(to_tsvector('english', $3), \
    'B') || setweight(to_tsvector('english', $4), 'C'), $7, $8)";

const DOC_COLUMNS: &str = "d.id, d.tenant, d.source, d.path_or_url, d.title, d.metadata, \
    d.content_hash, d.created_at, d.updated_at, \
    (SELECT COUNT(*) FROM kb_chunk c WHERE c.doc_id = d.id) AS chunk_count";

/// The candidates of a search on SQLite, in the index's order: `bm25()` with the fields
/// weighted as [`crate::rank`] weighs them, a document whose whole title is a word of the query
/// (an alert naming its runbook) first (`exact`, its chunks found by the index on
/// `lower(title)`). The best `?7` (all when negative) are ranked in the full-text index alone
/// and only they are joined to their chunk and document and filtered: joining every matched
/// chunk first cost ~3 µs a chunk, ~4.5 ms of a search's ~6 at 100,000 chunks. Equal scores go
/// by rowid.
const SQLITE_SEARCH: &str = "WITH matched AS (\
    SELECT rowid AS rid, max(-bm25(kb_fts, 10.0, 4.0, 1.0), 0.0) AS relevance, \
    CASE WHEN rowid IN (SELECT c.rowid FROM kb_doc d JOIN kb_chunk c ON c.doc_id = d.id \
    WHERE lower(d.title) IN (SELECT value FROM json_each(?5))) THEN 1.0 ELSE 0.0 END AS exact \
    FROM kb_fts WHERE kb_fts MATCH ?1 ORDER BY exact DESC, relevance DESC, rowid LIMIT ?7) \
    SELECT d.id, d.title, d.path_or_url, d.source, d.tenant, c.idx, c.heading_path, c.content, \
    m.exact FROM matched m JOIN kb_chunk c ON c.rowid = m.rid JOIN kb_doc d ON d.id = c.doc_id \
    WHERE (?2 IS NULL OR d.tenant IS NULL OR d.tenant = ?2) \
    AND (?3 IS NULL OR d.source = ?3) AND (?6 IS NULL OR d.source <> ?6) \
    ORDER BY m.exact DESC, m.relevance DESC, m.rid LIMIT ?4";

/// A filtered search on SQLite ranks this many times its depth in the full-text index before
/// the filter (and everything when that leaves too few).
const SQLITE_FILTERED_BREADTH: i64 = 4;

/// The candidates of a search on PostgreSQL, in the index's order: `ts_rank()` with A
/// (title) 1.0, B (heading path) 0.4, C (body) 0.2, divided by 1 + the log of the chunk's
/// length (normalization 1), a document whose whole title is a word of the query first
/// (`exact`). Not `ts_rank_cd()`: its cover density cost ~12 µs a matched chunk against ~4,
/// and the candidates are ordered anew anyway ([`crate::rank`]; recall on the real corpus
/// the same with either). `$7` is what is matched and ranked ([`selective_terms`]), as on
/// SQLite: ranking by all the terms costs more the more there are; where PostgreSQL's stop words
/// leave nothing of `$7`, all the terms (`$1`) take its place. The matched chunks are filtered
/// and ranked on kb_chunk alone (it carries its document's tenant and source); only the best
/// are joined to their chunk text and document. `OFFSET 0` keeps the ranking subquery whole:
/// flattened, `relevance` was computed twice a row. The documents titled by a word of the
/// query (`$5`, an array) are looked up once, by the index on `lower(title)`: as a subquery
/// over a JSON parameter, the statement's generic plan read all of kb_doc (~10 ms a search at
/// 100,000 chunks).
const PG_SEARCH: &str = "WITH best AS (SELECT doc_id, idx, exact, relevance FROM (\
    SELECT c.doc_id, c.idx, ts_rank(c.tsv, t.query, 1)::float8 AS relevance, \
    CASE WHEN c.doc_id = ANY(t.exact) THEN 1.0 ELSE 0.0 END::float8 AS exact \
    FROM kb_chunk c, (SELECT CASE WHEN numnode(m) = 0 THEN q ELSE m END AS query, \
    ARRAY(SELECT id FROM kb_doc WHERE lower(title) = ANY($5)) AS exact \
    FROM to_tsquery('english', $1) q, to_tsquery('english', $7) m) t \
    WHERE c.tsv @@ t.query AND ($2::text IS NULL OR c.tenant IS NULL OR c.tenant = $2) \
    AND ($3::text IS NULL OR c.source = $3) AND ($6::text IS NULL OR c.source <> $6) \
    OFFSET 0) ranked ORDER BY exact DESC, relevance DESC, doc_id, idx LIMIT $4) \
    SELECT d.id, d.title, d.path_or_url, d.source, d.tenant, c.idx, c.heading_path, c.content, \
    best.exact FROM best JOIN kb_chunk c ON c.doc_id = best.doc_id AND c.idx = best.idx \
    JOIN kb_doc d ON d.id = best.doc_id \
    ORDER BY best.exact DESC, best.relevance DESC, best.doc_id, best.idx";

/// Bind the same values on either backend's query (`$q` is the query).
macro_rules! on_pool {
    ($pool:expr, $sql:expr, $run:ident, |$q:ident| $bind:expr) => {
        match $pool {
            SqlPool::Sqlite(pool) => {
                let $q = sqlx::query($sql);
                $bind
                    .$run(pool)
                    .await?
                    .into_iter()
                    .map(Rows::Sqlite)
                    .collect::<Vec<_>>()
            }
            SqlPool::Postgres(pool) => {
                let $q = sqlx::query($sql);
                $bind
                    .$run(pool)
                    .await?
                    .into_iter()
                    .map(Rows::Postgres)
                    .collect::<Vec<_>>()
            }
        }
    };
}

enum Rows {
    Sqlite(sqlx::sqlite::SqliteRow),
    Postgres(sqlx::postgres::PgRow),
}

macro_rules! get {
    ($row:expr, $ty:ty, $column:expr) => {
        match $row {
            Rows::Sqlite(row) => row.try_get::<$ty, _>($column),
            Rows::Postgres(row) => row.try_get::<$ty, _>($column),
        }
    };
}

/// Chunk counts by term key (see [`chunk_term_counts`]).
type TermCounts = BTreeMap<String, i64>;

/// `counts -= other`, term by term.
fn subtract(counts: &mut TermCounts, other: &TermCounts) {
    for (term, count) in other {
        *counts.entry(term.clone()).or_insert(0) -= count;
    }
}

/// Add a [`TermCounts`] delta to `kb_term` in the transaction `$tx`.
macro_rules! adjust_terms {
    ($tx:expr, $delta:expr, $sqlite:expr) => {
        let (add, drop) = if $sqlite {
            (SQLITE_ADD_TERMS, SQLITE_DROP_TERMS)
        } else {
            (PG_ADD_TERMS, PG_DROP_TERMS)
        };
        for sql in [add, drop] {
            sqlx::query(sql)
                .bind(Json($delta))
                .execute(&mut *$tx)
                .await
                .map_err(StoreError::from)?;
        }
    };
}

impl KbStore {
    pub fn new(pool: SqlPool) -> Self {
        Self { pool }
    }

    /// Store `doc` in one transaction: nothing if its hash is the one stored, else the document
    /// row and all its chunks (those of an earlier version replaced).
    pub async fn upsert(&self, doc: &DocInput, at: DateTime<Utc>) -> Result<Upserted, StoreError> {
        macro_rules! write {
            ($pool:expr, $sqlite:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::from)?;
                sqlx::query(if $sqlite {
                    SQLITE_LOCK_DOC
                } else {
                    PG_LOCK_DOC
                })
                .bind(&doc.id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                let stored: Option<(String, Option<Json<TermCounts>>)> =
                    sqlx::query_as(SELECT_STORED)
                        .bind(&doc.id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                if stored.as_ref().map(|(hash, _)| hash.as_str()) == Some(doc.content_hash.as_str())
                {
                    return Ok(Upserted::Unchanged);
                }
                let counts = chunk_term_counts(&doc.search_title, &doc.chunks);
                let mut delta = counts.clone();
                if let Some((_, Some(Json(old)))) = &stored {
                    subtract(&mut delta, old);
                }
                sqlx::query(UPSERT_DOC)
                    .bind(&doc.id)
                    .bind(&doc.tenant)
                    .bind(&doc.source)
                    .bind(&doc.path_or_url)
                    .bind(&doc.title)
                    .bind(Json(&doc.metadata))
                    .bind(&doc.content_hash)
                    .bind(at)
                    .bind(Json(&counts))
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                adjust_terms!(tx, &delta, $sqlite);
                if $sqlite {
                    sqlx::query(SQLITE_DELETE_FTS)
                        .bind(&doc.id)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                }
                sqlx::query(DELETE_CHUNKS)
                    .bind(&doc.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                for chunk in &doc.chunks {
                    let heading_path = chunk.heading_path_text();
                    if $sqlite {
                        let rowid: i64 = sqlx::query_scalar(SQLITE_INSERT_CHUNK)
                            .bind(&doc.id)
                            .bind(chunk.idx as i64)
                            .bind(&heading_path)
                            .bind(&chunk.content)
                            .bind(chunk.token_count as i64)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err(StoreError::from)?;
                        sqlx::query(SQLITE_INSERT_FTS)
                            .bind(rowid)
                            .bind(&doc.search_title)
                            .bind(&heading_path)
                            .bind(&chunk.content)
                            .execute(&mut *tx)
                            .await
                            .map_err(StoreError::from)?;
                    } else {
                        sqlx::query(PG_INSERT_CHUNK)
                            .bind(&doc.id)
                            .bind(chunk.idx as i64)
                            .bind(&heading_path)
                            .bind(&chunk.content)
                            .bind(chunk.token_count as i64)
                            .bind(&doc.search_title)
                            .bind(&doc.tenant)
                            .bind(&doc.source)
                            .execute(&mut *tx)
                            .await
                            .map_err(StoreError::from)?;
                    }
                }
                tx.commit().await.map_err(StoreError::from)?;
                Ok(if stored.is_some() {
                    Upserted::Updated
                } else {
                    Upserted::Created
                })
            }};
        }
        match &self.pool {
            SqlPool::Sqlite(pool) => write!(pool, true),
            SqlPool::Postgres(pool) => write!(pool, false),
        }
    }

    /// Delete a document and its chunks; whether it was there.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        macro_rules! delete {
            ($pool:expr, $sqlite:expr) => {{
                let mut tx = $pool.begin().await.map_err(StoreError::from)?;
                let stored: Option<(String, Option<Json<TermCounts>>)> =
                    sqlx::query_as(SELECT_STORED)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                if let Some((_, Some(Json(old)))) = &stored {
                    let mut delta = TermCounts::new();
                    subtract(&mut delta, old);
                    adjust_terms!(tx, &delta, $sqlite);
                }
                if $sqlite {
                    sqlx::query(SQLITE_DELETE_FTS)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                }
                sqlx::query(DELETE_CHUNKS)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                let deleted = sqlx::query(DELETE_DOC)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected();
                tx.commit().await.map_err(StoreError::from)?;
                Ok(deleted > 0)
            }};
        }
        match &self.pool {
            SqlPool::Sqlite(pool) => delete!(pool, true),
            SqlPool::Postgres(pool) => delete!(pool, false),
        }
    }

    /// Delete the documents of `source` for exactly `tenant` (global: `None`) whose ids are not
    /// in `keep`; how many.
    pub async fn prune(
        &self,
        tenant: Option<&str>,
        source: &str,
        keep: &[String],
    ) -> Result<u64, StoreError> {
        let rows = on_pool!(
            &self.pool,
            "SELECT id, tenant FROM kb_doc WHERE source = $1",
            fetch_all,
            |q| q.bind(source)
        );
        let mut pruned = 0;
        for row in &rows {
            let id = get!(row, String, "id")?;
            let row_tenant = get!(row, Option<String>, "tenant")?;
            if row_tenant.as_deref() == tenant && !keep.contains(&id) && self.delete(&id).await? {
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// The documents `filter` lets see, newest first, at most `limit`.
    pub async fn list(
        &self,
        filter: &SearchFilter,
        limit: i64,
    ) -> Result<Vec<DocSummary>, StoreError> {
        let sql = format!(
            "SELECT {DOC_COLUMNS} FROM kb_doc d WHERE ($1 IS NULL OR d.tenant IS NULL OR \
             d.tenant = $1) AND ($2 IS NULL OR d.source = $2) \
             ORDER BY d.updated_at DESC, d.id LIMIT $3"
        );
        let sql = match self.pool {
            // SQLite numbers `?N` parameters itself; PostgreSQL must know a NULL's type.
            SqlPool::Sqlite(_) => sql.replace('$', "?"),
            SqlPool::Postgres(_) => sql
                .replace("($1 IS NULL", "($1::text IS NULL")
                .replace("($2 IS NULL", "($2::text IS NULL"),
        };
        let rows = on_pool!(&self.pool, &sql, fetch_all, |q| q
            .bind(&filter.tenant)
            .bind(&filter.source)
            .bind(limit));
        rows.iter().map(doc_summary).collect()
    }

    /// A document without its chunks.
    pub async fn summary(&self, id: &str) -> Result<Option<DocSummary>, StoreError> {
        let sql = format!("SELECT {DOC_COLUMNS} FROM kb_doc d WHERE d.id = $1");
        let rows = on_pool!(&self.pool, &sql, fetch_all, |q| q.bind(id));
        rows.first().map(doc_summary).transpose()
    }

    /// The documents imported from exactly `url` that `tenant` may see (its own first, then
    /// the global ones), without their chunks.
    pub async fn by_url(&self, url: &str, tenant: &str) -> Result<Vec<DocSummary>, StoreError> {
        let sql = format!(
            "SELECT {DOC_COLUMNS} FROM kb_doc d WHERE d.path_or_url = $1 \
             AND (d.tenant IS NULL OR d.tenant = $2) \
             ORDER BY CASE WHEN d.tenant IS NULL THEN 1 ELSE 0 END, d.updated_at DESC, d.id"
        );
        let rows = on_pool!(&self.pool, &sql, fetch_all, |q| q.bind(url).bind(tenant));
        rows.iter().map(doc_summary).collect()
    }

    /// The document an alert's `runbook_url` names, as `tenant` may see it: one imported from
    /// exactly that URL, else an imported page whose path without `.md` is the URL's path
    /// tail (`https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping`
    /// names `kubernetes/KubePodCrashLooping.md`), letter case aside.
    pub async fn by_runbook_url(
        &self,
        url: &str,
        tenant: &str,
    ) -> Result<Vec<DocSummary>, StoreError> {
        let exact = self.by_url(url, tenant).await?;
        if !exact.is_empty() {
            return Ok(exact);
        }
        let path = url_path(url).to_lowercase();
        let Some(last) = path.rsplit('/').find(|segment| !segment.is_empty()) else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT {DOC_COLUMNS} FROM kb_doc d WHERE lower(d.path_or_url) LIKE $1 \
             AND (d.tenant IS NULL OR d.tenant = $2) \
             ORDER BY CASE WHEN d.tenant IS NULL THEN 1 ELSE 0 END, d.updated_at DESC, d.id"
        );
        let pattern = format!("%{last}.md");
        let rows = on_pool!(&self.pool, &sql, fetch_all, |q| q
            .bind(pattern)
            .bind(tenant));
        let path = path.trim_end_matches('/');
        let mut docs = Vec::new();
        for row in &rows {
            let doc = doc_summary(row)?;
            let stem = doc.url.to_lowercase();
            let stem = stem
                .strip_suffix(".md")
                .unwrap_or(&stem)
                .trim_start_matches('/');
            let tail = path.strip_suffix(stem);
            if tail.is_some_and(|rest| rest.is_empty() || rest.ends_with('/')) {
                docs.push(doc);
            }
        }
        Ok(docs)
    }

    /// A document with its chunks.
    pub async fn get(&self, id: &str) -> Result<Option<StoredDoc>, StoreError> {
        let Some(doc) = self.summary(id).await? else {
            return Ok(None);
        };
        let rows = on_pool!(
            &self.pool,
            "SELECT idx, heading_path, content, token_count FROM kb_chunk WHERE doc_id = $1 \
             ORDER BY idx",
            fetch_all,
            |q| q.bind(id)
        );
        let chunks = rows
            .iter()
            .map(|row| {
                Ok(StoredChunk {
                    idx: get!(row, i64, "idx")?,
                    heading_path: get!(row, String, "heading_path")?,
                    content: get!(row, String, "content")?,
                    token_count: get!(row, i64, "token_count")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Some(StoredDoc { doc, chunks }))
    }

    /// The `k` chunks that best match the plain-text `query`, best first. The query's words
    /// (see [`query_terms`]) are OR-ed, each quoted or reduced to letters and digits, so no
    /// input is query syntax; a query without words finds nothing. On a large corpus the match
    /// is made of the query's rarer terms only ([`MATCH_BUDGET`]). The lexical index finds the
    /// best [`RERANK_DEPTH`] candidates, which [`crate::rank`] orders by all the terms (the
    /// same on both backends); a document whose whole title is a word of the query comes first.
    /// The score is `exact + s / (1 + s)`, `s` the candidate's rank score: in [0, 2).
    pub async fn search(
        &self,
        query: &str,
        k: i64,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, StoreError> {
        let terms = query_terms(query);
        if terms.is_empty() || k <= 0 {
            return Ok(Vec::new());
        }
        let (counts, total_chunks) = self.term_stats(&terms).await?;
        let matched = selective_terms(&counts, MATCH_BUDGET);
        let depth = k.max(RERANK_DEPTH);
        let rows = match &self.pool {
            SqlPool::Sqlite(_) => {
                let expr = matched
                    .iter()
                    .map(|term| format!("\"{term}\""))
                    .collect::<Vec<_>>()
                    .join(" OR ");
                let filtered = filter.tenant.is_some()
                    || filter.source.is_some()
                    || filter.not_source.is_some();
                let mut ranked = if filtered {
                    depth * SQLITE_FILTERED_BREADTH
                } else {
                    depth
                };
                loop {
                    let rows = on_pool!(&self.pool, SQLITE_SEARCH, fetch_all, |q| q
                        .bind(expr.as_str())
                        .bind(&filter.tenant)
                        .bind(&filter.source)
                        .bind(depth)
                        .bind(Json(&terms))
                        .bind(&filter.not_source)
                        .bind(ranked));
                    // The filter left fewer than wanted from a part of the matches: all of them.
                    if !filtered || rows.len() as i64 >= depth || ranked < 0 {
                        break rows;
                    }
                    ranked = -1;
                }
            }
            // `$5` is an array here (see PG_SEARCH), which SQLite has no type for.
            SqlPool::Postgres(pool) => sqlx::query(PG_SEARCH)
                .bind(terms.join(" | "))
                .bind(&filter.tenant)
                .bind(&filter.source)
                .bind(depth)
                .bind(&terms)
                .bind(&filter.not_source)
                .bind(matched.join(" | "))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Rows::Postgres)
                .collect(),
        };
        let mut candidates = Vec::with_capacity(rows.len());
        for row in &rows {
            let title: String = get!(row, String, "title")?;
            let title_field = search_title(&title, None);
            candidates.push((
                Hit {
                    doc_id: get!(row, String, "id")?,
                    url: get!(row, String, "path_or_url")?,
                    source: get!(row, String, "source")?,
                    tenant: get!(row, Option<String>, "tenant")?,
                    chunk_idx: get!(row, i64, "idx")?,
                    heading_path: get!(row, String, "heading_path")?,
                    content: get!(row, String, "content")?,
                    score: 0.0,
                    retrievers: vec![LEXICAL.to_string()],
                    title,
                },
                get!(row, f64, "exact")?,
                title_field,
            ));
        }
        let stats: Vec<TermStat> = counts
            .iter()
            .map(|(term, chunks)| TermStat {
                key: term_key(term),
                chunks: *chunks,
            })
            .collect();
        let fields: Vec<Fields<'_>> = candidates
            .iter()
            .map(|(hit, _, title_field)| Fields {
                doc: &hit.doc_id,
                title: title_field,
                heading: &hit.heading_path,
                body: &hit.content,
            })
            .collect();
        let scores = rank::scores(&stats, total_chunks, &fields);
        let mut hits: Vec<Hit> = candidates
            .into_iter()
            .zip(scores)
            .map(|((mut hit, exact, _), score)| {
                hit.score = exact + score / (1.0 + score);
                hit
            })
            .collect();
        // Stable: equal scores keep the index's order.
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k as usize);
        Ok(hits)
    }

    /// Each term with the number of chunks that hold it (its key's count; 0 when unknown).
    pub async fn term_counts(&self, terms: &[String]) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(self.term_stats(terms).await?.0)
    }

    /// [`Self::term_counts`], and the number of chunks they are counted among.
    async fn term_stats(&self, terms: &[String]) -> Result<(Vec<(String, i64)>, i64), StoreError> {
        let mut keys: Vec<String> = terms.iter().map(|term| term_key(term)).collect();
        keys.push(ALL_CHUNKS_KEY.to_string());
        let sql = match self.pool {
            SqlPool::Sqlite(_) => SQLITE_TERM_COUNTS,
            SqlPool::Postgres(_) => PG_TERM_COUNTS,
        };
        let rows = on_pool!(&self.pool, sql, fetch_all, |q| q.bind(Json(&keys)));
        let mut known = BTreeMap::new();
        for row in &rows {
            known.insert(get!(row, String, "term")?, get!(row, i64, "chunks")?);
        }
        let counts = terms
            .iter()
            .zip(&keys)
            .map(|(term, key)| (term.clone(), known.get(key).copied().unwrap_or(0)))
            .collect();
        Ok((counts, known.get(ALL_CHUNKS_KEY).copied().unwrap_or(0)))
    }

    /// How many documents and chunks are stored (for the `kb_documents` and `kb_chunks`
    /// gauges).
    pub async fn counts(&self) -> Result<(i64, i64), StoreError> {
        let rows = on_pool!(
            &self.pool,
            "SELECT (SELECT COUNT(*) FROM kb_doc) AS docs, (SELECT COUNT(*) FROM kb_chunk) AS chunks",
            fetch_all,
            |q| q
        );
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("no counts".into()))?;
        Ok((get!(row, i64, "docs")?, get!(row, i64, "chunks")?))
    }
}

/// The path of a URL (`https://host/a/b?x#y` → `/a/b`); a bare path as it is.
fn url_path(url: &str) -> &str {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |at| &rest[at..]),
        None => url,
    };
    rest.split(['?', '#']).next().unwrap_or_default()
}

fn doc_summary(row: &Rows) -> Result<DocSummary, StoreError> {
    Ok(DocSummary {
        id: get!(row, String, "id")?,
        tenant: get!(row, Option<String>, "tenant")?,
        source: get!(row, String, "source")?,
        url: get!(row, String, "path_or_url")?,
        title: get!(row, String, "title")?,
        metadata: get!(row, Json<Value>, "metadata")?.0,
        content_hash: get!(row, String, "content_hash")?,
        chunk_count: get!(row, i64, "chunk_count")?,
        created_at: get!(row, DateTime<Utc>, "created_at")?,
        updated_at: get!(row, DateTime<Utc>, "updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_path_drops_scheme_host_query_and_fragment() {
        assert_eq!(
            url_path("https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping?x=1#m"),
            "/runbooks/kubernetes/kubepodcrashlooping"
        );
        assert_eq!(url_path("https://example.com"), "");
        assert_eq!(
            url_path("kubernetes/KubePodCrashLooping.md"),
            "kubernetes/KubePodCrashLooping.md"
        );
    }

    #[test]
    fn an_imported_page_keeps_its_id_and_hashes_what_it_shows() {
        let text = "---\ntitle: Kube API Down\n---\n# KubeAPIDown\n\n## Meaning\n\nDown.\n";
        let doc = DocInput::markdown(
            None,
            "runbooks",
            "kubernetes/KubeAPIDown.md",
            text,
            "x",
            None,
        );
        assert_eq!(doc.title, "KubeAPIDown");
        assert_eq!(doc.search_title, "KubeAPIDown Kube API Down");
        assert_eq!(doc.metadata["title"], "Kube API Down");
        assert_eq!(
            doc.id,
            doc_id(None, "runbooks", "kubernetes/KubeAPIDown.md")
        );
        assert_ne!(
            doc.id,
            doc_id(Some("t"), "runbooks", "kubernetes/KubeAPIDown.md")
        );
        let same = DocInput::markdown(
            None,
            "runbooks",
            "kubernetes/KubeAPIDown.md",
            text,
            "x",
            None,
        );
        assert_eq!(doc.content_hash, same.content_hash);
        let edited = DocInput::markdown(
            None,
            "runbooks",
            "kubernetes/KubeAPIDown.md",
            &text.replace("Down.", "Down!"),
            "x",
            None,
        );
        assert_ne!(doc.content_hash, edited.content_hash);
    }
}
