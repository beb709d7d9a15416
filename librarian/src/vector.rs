//! Chunk embeddings and nearest-neighbour search: pgvector on PostgreSQL (a `vector(N)` column
//! with an HNSW index on cosine distance), sqlite-vec on SQLite (`vec_distance_cosine` over
//! float32 blobs).
//!
//! The tables are made at start-up by [`VectorIndex::prepare`], not by the static migrations:
//! their dimension is known only from the configuration, PostgreSQL may lack the extension
//! (lexical search then carries on alone), and a change of model or dimension empties them so
//! that every chunk is embedded again with the new model.
//!
//! On SQLite the vectors are plain blobs rather than a `vec0` virtual table: the tenant and
//! source filters then hold by an ordinary join, the rows live and die with their chunk
//! through a foreign key, and the database stays readable by any SQLite, with or without the
//! extension. Each vector's sign bits are kept beside it (`kb_chunk_bits`) and in memory
//! ([`crate::bits`]): a search ranks every chunk by Hamming distance there and only the best
//! few hundred by exact cosine distance in SQLite. Triggers count the bits table's inserts and
//! deletes, so a search sees at the cost of one small read whether another connection or
//! process changed it, and reads only what changed (new rows), or all of it after a delete.

use std::sync::{Arc, RwLock};

use sqlx::types::Json;
use sqlx::{Row, Sqlite, SqlitePool};

use orchestrator::{SqlPool, StoreError};

use crate::bits::{sign_bits, BitSet, Refresh, TableVersion};
use crate::store::{Hit, SearchFilter};

/// The retriever that found a hit by its embedding.
pub const VECTOR: &str = "vector";

/// pgvector's HNSW index takes `vector` columns of at most this many dimensions.
const PG_HNSW_MAX_DIMENSIONS: usize = 2000;

/// A chunk without an embedding, and the text to embed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChunk {
    pub doc_id: String,
    pub idx: i64,
    pub heading_path: String,
    pub content: String,
    /// What is sent to the embeddings endpoint (see [`embedding_text`]).
    pub text: String,
}

/// The text embedded for a chunk: its document's title (when its heading path does not begin
/// with it), its heading path and its content.
pub fn embedding_text(title: &str, heading_path: &str, content: &str) -> String {
    let mut text = String::new();
    if !heading_path.starts_with(title) {
        text.push_str(title);
        text.push('\n');
    }
    if !heading_path.is_empty() {
        text.push_str(heading_path);
        text.push_str("\n\n");
    }
    text.push_str(content);
    text
}

/// The embeddings of chunks, for one model and dimension.
#[derive(Debug, Clone)]
pub struct VectorIndex {
    pool: SqlPool,
    dimensions: usize,
    /// pgvector 0.8 and later: filtered HNSW scans go on until enough rows pass the filter.
    pg_iterative_scan: bool,
    /// SQLite with the bits table (the dimension is a multiple of 8): the Hamming pass first,
    /// over this copy of it.
    sqlite_bits: Option<Arc<SqliteBits>>,
}

/// The bits table in memory, and one refresh at a time.
#[derive(Debug)]
struct SqliteBits {
    set: RwLock<BitSet>,
    refreshing: tokio::sync::Mutex<()>,
}

/// Whether vector search can run on this database.
#[derive(Debug, Clone)]
pub enum Prepared {
    Ready(VectorIndex),
    /// Lexical search only, and why (said once in the log and in `/readyz`).
    Unavailable(String),
}

const META_TABLE: &str = "CREATE TABLE IF NOT EXISTS kb_vec_meta (\
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1), \
    model TEXT NOT NULL, dimensions INTEGER NOT NULL)";

/// The document's tenant and source are copied beside each vector (a document's id is derived
/// from them, so they never change under it): the scan filters without a join per row.
const SQLITE_VECTOR_TABLE: &str = "CREATE TABLE IF NOT EXISTS kb_chunk_vec (\
    doc_id TEXT NOT NULL, idx INTEGER NOT NULL, tenant TEXT, source TEXT NOT NULL, \
    embedding BLOB NOT NULL, \
    PRIMARY KEY (doc_id, idx), \
    FOREIGN KEY (doc_id, idx) REFERENCES kb_chunk (doc_id, idx) ON DELETE CASCADE)";

/// Each vector's sign bits (`vec_quantize_binary`: 1 bit a dimension, 48 bytes for 384), in a
/// narrow table of their own, read into memory for the Hamming pass ([`crate::bits`]); the
/// exact cosine distance is computed for the best few only ([`SQLITE_RESCORE`]). Scanning the
/// float vectors themselves (1.5 KB a chunk at 384 dimensions) took ~200 ms at 100,000 chunks.
const SQLITE_BITS_TABLE: &str = "CREATE TABLE IF NOT EXISTS kb_chunk_bits (\
    doc_id TEXT NOT NULL, idx INTEGER NOT NULL, tenant TEXT, source TEXT NOT NULL, \
    bits BLOB NOT NULL, \
    PRIMARY KEY (doc_id, idx), \
    FOREIGN KEY (doc_id, idx) REFERENCES kb_chunk_vec (doc_id, idx) ON DELETE CASCADE)";

/// The bits of the vectors stored before the bits table existed.
const SQLITE_FILL_BITS: &str = "INSERT INTO kb_chunk_bits (doc_id, idx, tenant, source, bits) \
    SELECT doc_id, idx, tenant, source, vec_quantize_binary(embedding) FROM kb_chunk_vec v \
    WHERE NOT EXISTS (SELECT 1 FROM kb_chunk_bits b WHERE b.doc_id = v.doc_id AND b.idx = v.idx)";

/// The bits of one chunk's vector, just stored (by its key: an `OR` in the condition made
/// SQLite scan every vector for each one stored).
const SQLITE_INSERT_BITS: &str = "INSERT INTO kb_chunk_bits (doc_id, idx, tenant, source, bits) \
    SELECT doc_id, idx, tenant, source, vec_quantize_binary(embedding) FROM kb_chunk_vec \
    WHERE doc_id = ?1 AND idx = ?2 ON CONFLICT (doc_id, idx) DO NOTHING";

/// How many chunks, per hit asked for, a search on SQLite ranks exactly after the Hamming
/// pass (at least [`MIN_RESCORED`]): a binary code keeps the neighbourhood roughly, the exact
/// cosine distance orders it.
const RESCORED_PER_HIT: usize = 10;
const MIN_RESCORED: usize = 200;

/// Chunks whose vector is missing, in key order after the key `($2, $3)`: the embedder walks
/// the chunks with a cursor, so a batch reads the rows after the last one, not every chunk
/// embedded before it (~1.2 s a batch at 100,000 chunks on PostgreSQL).
const PENDING: &str = "SELECT c.doc_id, c.idx, c.heading_path, c.content, d.title \
    FROM kb_chunk c JOIN kb_doc d ON d.id = c.doc_id \
    WHERE (c.doc_id, c.idx) > ($2, $3) \
    AND NOT EXISTS (SELECT 1 FROM kb_chunk_vec v WHERE v.doc_id = c.doc_id AND v.idx = c.idx) \
    ORDER BY c.doc_id, c.idx LIMIT $1";

/// How many chunks lack a vector (a vector's chunk always exists: a foreign key).
const UNEMBEDDED: &str =
    "SELECT (SELECT COUNT(*) FROM kb_chunk) - (SELECT COUNT(*) FROM kb_chunk_vec)";

/// A vector is stored only for the chunk it was computed from: a chunk replaced meanwhile (same
/// document and index, other text) is left for the next pass.
const SQLITE_INSERT: &str = "INSERT INTO kb_chunk_vec (doc_id, idx, tenant, source, embedding) \
    SELECT c.doc_id, c.idx, d.tenant, d.source, ?3 FROM kb_chunk c JOIN kb_doc d ON d.id = c.doc_id \
    WHERE c.doc_id = ?1 AND c.idx = ?2 AND c.heading_path = ?4 AND c.content = ?5 \
    ON CONFLICT (doc_id, idx) DO NOTHING";

const PG_INSERT: &str = "INSERT INTO kb_chunk_vec (doc_id, idx, embedding) \
    SELECT doc_id, idx, $3::vector FROM kb_chunk \
    WHERE doc_id = $1 AND idx = $2 AND heading_path = $4 AND content = $5 \
    ON CONFLICT (doc_id, idx) DO NOTHING";

/// How many rows the bits table has had inserted and deleted, kept by its triggers (an
/// `INSERT ... DO NOTHING` that inserts nothing fires none).
const SQLITE_BITS_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS kb_chunk_bits_version (\
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1), \
    inserted INTEGER NOT NULL, deleted INTEGER NOT NULL)";
const SQLITE_BITS_VERSION_ROW: &str = "INSERT INTO kb_chunk_bits_version \
    (singleton, inserted, deleted) VALUES (1, 0, 0) ON CONFLICT (singleton) DO NOTHING";
const SQLITE_BITS_INSERTED: &str = "CREATE TRIGGER IF NOT EXISTS kb_chunk_bits_inserted \
    AFTER INSERT ON kb_chunk_bits BEGIN \
    UPDATE kb_chunk_bits_version SET inserted = inserted + 1; END";
/// Fired by the cascade from a chunk or its vector too.
const SQLITE_BITS_DELETED: &str = "CREATE TRIGGER IF NOT EXISTS kb_chunk_bits_deleted \
    AFTER DELETE ON kb_chunk_bits BEGIN \
    UPDATE kb_chunk_bits_version SET deleted = deleted + 1; END";
const SQLITE_BITS_VERSION: &str = "SELECT inserted, deleted FROM kb_chunk_bits_version";
const SQLITE_BITS_ROWS: &str = "SELECT rowid, tenant, source, bits FROM kb_chunk_bits \
    WHERE rowid > ?1 ORDER BY rowid";

/// The rows the Hamming pass chose (`?2`, rowids of the bits table) by exact cosine distance,
/// the nearest `?3` joined to their chunks and documents. The filter is applied again: a row
/// deleted since the copy in memory was read may have given its rowid to another chunk.
const SQLITE_RESCORE: &str = "SELECT d.id, d.title, d.path_or_url, d.source, d.tenant, c.idx, \
    c.heading_path, c.content, v.distance FROM (\
    SELECT v.doc_id, v.idx, vec_distance_cosine(v.embedding, ?1) AS distance \
    FROM kb_chunk_bits b JOIN kb_chunk_vec v ON v.doc_id = b.doc_id AND v.idx = b.idx \
    WHERE b.rowid IN (SELECT value FROM json_each(?2)) \
    AND (?4 IS NULL OR b.tenant IS NULL OR b.tenant = ?4) AND (?5 IS NULL OR b.source = ?5) \
    AND (?6 IS NULL OR b.source <> ?6) \
    ORDER BY distance, v.doc_id, v.idx LIMIT ?3) v \
    JOIN kb_chunk c ON c.doc_id = v.doc_id AND c.idx = v.idx JOIN kb_doc d ON d.id = v.doc_id \
    ORDER BY v.distance, d.id, c.idx";

/// Without the bits (a dimension that is not a multiple of 8): every chunk's exact cosine
/// distance.
const SQLITE_SEARCH_EXACT: &str = "SELECT d.id, d.title, d.path_or_url, d.source, d.tenant, \
    c.idx, c.heading_path, c.content, v.distance FROM (\
    SELECT doc_id, idx, vec_distance_cosine(embedding, ?1) AS distance FROM kb_chunk_vec \
    WHERE (?2 IS NULL OR tenant IS NULL OR tenant = ?2) AND (?3 IS NULL OR source = ?3) \
    AND (?5 IS NULL OR source <> ?5) \
    ORDER BY distance, doc_id, idx LIMIT ?4) v \
    JOIN kb_chunk c ON c.doc_id = v.doc_id AND c.idx = v.idx JOIN kb_doc d ON d.id = v.doc_id \
    ORDER BY v.distance, d.id, c.idx";

/// Ordered by the distance expression itself, so the HNSW index serves it.
const PG_SEARCH: &str = "SELECT d.id, d.title, d.path_or_url, d.source, d.tenant, c.idx, \
    c.heading_path, c.content, (v.embedding <=> $1::vector)::float8 AS distance \
    FROM kb_chunk_vec v JOIN kb_chunk c ON c.doc_id = v.doc_id AND c.idx = v.idx \
    JOIN kb_doc d ON d.id = v.doc_id \
    WHERE ($2::text IS NULL OR d.tenant IS NULL OR d.tenant = $2) \
    AND ($3::text IS NULL OR d.source = $3) \
    ORDER BY v.embedding <=> $1::vector LIMIT $4";

impl VectorIndex {
    /// Make the vector tables for `model` at `dimensions` (emptied when either changed since
    /// the last start), or say why vectors cannot be used here. On PostgreSQL the `vector`
    /// extension is created when the server has it and this role may; otherwise it is
    /// `Unavailable`, never an error.
    pub async fn prepare(
        pool: SqlPool,
        model: &str,
        dimensions: usize,
    ) -> Result<Prepared, StoreError> {
        match &pool {
            SqlPool::Sqlite(sqlite) => {
                let version: Result<String, _> = sqlx::query_scalar("SELECT vec_version()")
                    .fetch_one(sqlite)
                    .await;
                if let Err(error) = version {
                    return Ok(Prepared::Unavailable(format!(
                        "sqlite-vec is not loaded in this SQLite ({error})"
                    )));
                }
                let mut tx = sqlite.begin().await?;
                sqlx::query(META_TABLE).execute(&mut *tx).await?;
                sqlx::query(SQLITE_VECTOR_TABLE).execute(&mut *tx).await?;
                for statement in [
                    SQLITE_BITS_TABLE,
                    SQLITE_BITS_VERSION_TABLE,
                    SQLITE_BITS_VERSION_ROW,
                    SQLITE_BITS_INSERTED,
                    SQLITE_BITS_DELETED,
                ] {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                let stored: Option<(String, i64)> =
                    sqlx::query_as("SELECT model, dimensions FROM kb_vec_meta")
                        .fetch_optional(&mut *tx)
                        .await?;
                if stored.as_ref().map(|(m, d)| (m.as_str(), *d))
                    != Some((model, dimensions as i64))
                {
                    if let Some((old_model, old_dimensions)) = &stored {
                        tracing::warn!(
                            old_model, old_dimensions, model, dimensions,
                            "the embedding model or dimension changed: every chunk is embedded again"
                        );
                    }
                    sqlx::query("DELETE FROM kb_chunk_bits")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM kb_chunk_vec")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO kb_vec_meta (singleton, model, dimensions) VALUES (1, $1, $2) \
                         ON CONFLICT (singleton) DO UPDATE SET model = excluded.model, \
                         dimensions = excluded.dimensions",
                    )
                    .bind(model)
                    .bind(dimensions as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                let binary = dimensions.is_multiple_of(8);
                if binary {
                    sqlx::query(SQLITE_FILL_BITS).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(Prepared::Ready(Self {
                    pool: pool.clone(),
                    dimensions,
                    pg_iterative_scan: false,
                    sqlite_bits: binary.then(|| {
                        Arc::new(SqliteBits {
                            // Behind any table: the first search reads it whole.
                            set: RwLock::new(BitSet::new(
                                dimensions,
                                TableVersion {
                                    inserted: -1,
                                    deleted: -1,
                                },
                            )),
                            refreshing: tokio::sync::Mutex::new(()),
                        })
                    }),
                }))
            }
            SqlPool::Postgres(pg) => {
                let mut tx = pg.begin().await?;
                // Replicas starting together take turns.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext('opscase.kb_chunk_vec'))")
                    .execute(&mut *tx)
                    .await?;
                let mut version: Option<String> = sqlx::query_scalar(
                    "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
                )
                .fetch_optional(&mut *tx)
                .await?;
                if version.is_none() {
                    let available: Option<String> = sqlx::query_scalar(
                        "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'",
                    )
                    .fetch_optional(&mut *tx)
                    .await?;
                    if available.is_none() {
                        return Ok(Prepared::Unavailable(
                            "the vector extension (pgvector) is not installed on this PostgreSQL \
                             server"
                                .into(),
                        ));
                    }
                    if let Err(error) = sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
                        .execute(&mut *tx)
                        .await
                    {
                        return Ok(Prepared::Unavailable(format!(
                            "the vector extension (pgvector) is installed on this PostgreSQL \
                             server but not created in this database, and this role cannot \
                             create it ({error})"
                        )));
                    }
                    version = sqlx::query_scalar(
                        "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
                    )
                    .fetch_optional(&mut *tx)
                    .await?;
                }
                sqlx::query(META_TABLE).execute(&mut *tx).await?;
                let stored: Option<(String, i32)> =
                    sqlx::query_as("SELECT model, dimensions FROM kb_vec_meta")
                        .fetch_optional(&mut *tx)
                        .await?;
                if stored.as_ref().map(|(m, d)| (m.as_str(), *d as usize))
                    != Some((model, dimensions))
                {
                    if let Some((old_model, old_dimensions)) = &stored {
                        tracing::warn!(
                            old_model, old_dimensions, model, dimensions,
                            "the embedding model or dimension changed: every chunk is embedded again"
                        );
                    }
                    sqlx::query("DROP TABLE IF EXISTS kb_chunk_vec")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO kb_vec_meta (singleton, model, dimensions) VALUES (1, $1, $2) \
                         ON CONFLICT (singleton) DO UPDATE SET model = excluded.model, \
                         dimensions = excluded.dimensions",
                    )
                    .bind(model)
                    .bind(dimensions as i32)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(&format!(
                    "CREATE TABLE IF NOT EXISTS kb_chunk_vec (\
                     doc_id TEXT NOT NULL, idx BIGINT NOT NULL, embedding vector({dimensions}) NOT NULL, \
                     PRIMARY KEY (doc_id, idx), \
                     FOREIGN KEY (doc_id, idx) REFERENCES kb_chunk (doc_id, idx) ON DELETE CASCADE)"
                ))
                .execute(&mut *tx)
                .await?;
                if dimensions <= PG_HNSW_MAX_DIMENSIONS {
                    sqlx::query(
                        "CREATE INDEX IF NOT EXISTS kb_chunk_vec_hnsw ON kb_chunk_vec \
                         USING hnsw (embedding vector_cosine_ops)",
                    )
                    .execute(&mut *tx)
                    .await?;
                } else {
                    tracing::warn!(
                        dimensions,
                        "pgvector indexes at most {PG_HNSW_MAX_DIMENSIONS} dimensions: vector \
                         search scans every embedded chunk"
                    );
                }
                tx.commit().await?;
                let pg_iterative_scan = version.as_deref().is_some_and(at_least_0_8);
                Ok(Prepared::Ready(Self {
                    pool: pool.clone(),
                    dimensions,
                    pg_iterative_scan,
                    sqlite_bits: None,
                }))
            }
        }
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Up to `limit` chunks that have no vector yet, in key order after `after` (a chunk's
    /// document id and index; `None`: from the first).
    pub async fn pending(
        &self,
        after: Option<(&str, i64)>,
        limit: usize,
    ) -> Result<Vec<PendingChunk>, StoreError> {
        let limit = limit as i64;
        // No document id is empty: ("", -1) comes before every chunk.
        let (doc_id, idx) = after.unwrap_or(("", -1));
        macro_rules! pending {
            ($pool:expr) => {
                sqlx::query_as(PENDING)
                    .bind(limit)
                    .bind(doc_id)
                    .bind(idx)
                    .fetch_all($pool)
                    .await?
            };
        }
        let rows: Vec<(String, i64, String, String, String)> = match &self.pool {
            SqlPool::Sqlite(pool) => pending!(pool),
            SqlPool::Postgres(pool) => pending!(pool),
        };
        Ok(rows
            .into_iter()
            .map(|(doc_id, idx, heading_path, content, title)| PendingChunk {
                text: embedding_text(&title, &heading_path, &content),
                doc_id,
                idx,
                heading_path,
                content,
            })
            .collect())
    }

    /// How many chunks have no vector: two counts, far cheaper than looking for them when
    /// there are none.
    pub async fn unembedded(&self) -> Result<i64, StoreError> {
        Ok(match &self.pool {
            SqlPool::Sqlite(pool) => sqlx::query_scalar(UNEMBEDDED).fetch_one(pool).await?,
            SqlPool::Postgres(pool) => sqlx::query_scalar(UNEMBEDDED).fetch_one(pool).await?,
        })
    }

    /// Store the vectors of `chunks` (in order), in one transaction; returns how many were
    /// stored (a chunk replaced or removed meanwhile is skipped).
    pub async fn store(
        &self,
        chunks: &[PendingChunk],
        vectors: &[Vec<f32>],
    ) -> Result<u64, StoreError> {
        let mut stored = 0;
        match &self.pool {
            SqlPool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for (chunk, vector) in chunks.iter().zip(vectors) {
                    let inserted = sqlx::query(SQLITE_INSERT)
                        .bind(&chunk.doc_id)
                        .bind(chunk.idx)
                        .bind(blob(vector))
                        .bind(&chunk.heading_path)
                        .bind(&chunk.content)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if inserted > 0 && self.sqlite_bits.is_some() {
                        sqlx::query(SQLITE_INSERT_BITS)
                            .bind(&chunk.doc_id)
                            .bind(chunk.idx)
                            .execute(&mut *tx)
                            .await?;
                    }
                    stored += inserted;
                }
                tx.commit().await?;
            }
            SqlPool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for (chunk, vector) in chunks.iter().zip(vectors) {
                    stored += sqlx::query(PG_INSERT)
                        .bind(&chunk.doc_id)
                        .bind(chunk.idx)
                        .bind(literal(vector))
                        .bind(&chunk.heading_path)
                        .bind(&chunk.content)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
            }
        }
        Ok(stored)
    }

    /// How many chunks have a vector.
    pub async fn count(&self) -> Result<i64, StoreError> {
        let sql = "SELECT COUNT(*) FROM kb_chunk_vec";
        Ok(match &self.pool {
            SqlPool::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
            SqlPool::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        })
    }

    /// The `k` embedded chunks nearest to `vector` by cosine distance that `filter` lets see,
    /// nearest first; each hit's score is its cosine similarity.
    pub async fn search(
        &self,
        vector: &[f32],
        k: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, StoreError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let rows = match &self.pool {
            SqlPool::Sqlite(pool) => {
                let query = match &self.sqlite_bits {
                    Some(bits) => {
                        bits.refresh(pool).await?;
                        let rescored = (k * RESCORED_PER_HIT).max(MIN_RESCORED);
                        let nearest = bits.set.read().expect("bits lock").nearest(
                            &sign_bits(vector),
                            rescored,
                            filter,
                        );
                        if nearest.is_empty() {
                            return Ok(Vec::new());
                        }
                        sqlx::query(SQLITE_RESCORE)
                            .bind(blob(vector))
                            .bind(Json(nearest))
                            .bind(k as i64)
                            .bind(&filter.tenant)
                            .bind(&filter.source)
                            .bind(&filter.not_source)
                    }
                    None => sqlx::query(SQLITE_SEARCH_EXACT)
                        .bind(blob(vector))
                        .bind(&filter.tenant)
                        .bind(&filter.source)
                        .bind(k as i64)
                        .bind(&filter.not_source),
                };
                query
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(hit_of)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            SqlPool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                if self.pg_iterative_scan {
                    // The filter may reject many of the index's first candidates: keep
                    // scanning, in exact distance order, until `k` rows pass.
                    sqlx::query("SET LOCAL hnsw.iterative_scan = strict_order")
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(&format!("SET LOCAL hnsw.ef_search = {}", k.clamp(40, 1000)))
                    .execute(&mut *tx)
                    .await?;
                let rows = sqlx::query(PG_SEARCH)
                    .bind(literal(vector))
                    .bind(&filter.tenant)
                    .bind(&filter.source)
                    .bind(k as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows.iter()
                    .map(hit_of)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
        };
        Ok(rows)
    }
}

impl SqliteBits {
    /// Bring the copy in memory up to the table: nothing when no row was inserted or deleted
    /// since it was read, the new rows when rows were only inserted, all of it otherwise.
    async fn refresh(&self, pool: &SqlitePool) -> Result<(), StoreError> {
        let now = table_version(pool).await?;
        if self.set.read().expect("bits lock").refresh_for(now) == Refresh::Current {
            return Ok(());
        }
        let _turn = self.refreshing.lock().await;
        // One read transaction: the rows read are the table at the version read.
        let mut tx = pool.begin().await?;
        let now = table_version(&mut *tx).await?;
        let refresh = self.set.read().expect("bits lock").refresh_for(now);
        let after_rowid = match refresh {
            Refresh::Current => return Ok(()),
            Refresh::Append { after_rowid } => after_rowid,
            Refresh::Reload => 0,
        };
        let rows: Vec<(i64, Option<String>, String, Vec<u8>)> = sqlx::query_as(SQLITE_BITS_ROWS)
            .bind(after_rowid)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let fill = |set: &mut BitSet| {
            for (rowid, tenant, source, bits) in &rows {
                set.push(*rowid, tenant.as_deref(), source, bits);
            }
            set.set_version(now);
        };
        if refresh == Refresh::Reload {
            let mut fresh = self.set.read().expect("bits lock").emptied(now);
            fill(&mut fresh);
            *self.set.write().expect("bits lock") = fresh;
        } else {
            fill(&mut self.set.write().expect("bits lock"));
        }
        Ok(())
    }
}

async fn table_version<'e, E>(executor: E) -> Result<TableVersion, StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let (inserted, deleted): (i64, i64) = sqlx::query_as(SQLITE_BITS_VERSION)
        .fetch_one(executor)
        .await?;
    Ok(TableVersion { inserted, deleted })
}

fn hit_of<R: Row>(row: &R) -> Result<Hit, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let distance: f64 = row.try_get("distance")?;
    Ok(Hit {
        doc_id: row.try_get("id")?,
        title: row.try_get("title")?,
        url: row.try_get("path_or_url")?,
        source: row.try_get("source")?,
        tenant: row.try_get("tenant")?,
        chunk_idx: row.try_get("idx")?,
        heading_path: row.try_get("heading_path")?,
        content: row.try_get("content")?,
        score: 1.0 - distance,
        retrievers: vec![VECTOR.to_string()],
    })
}

/// A vector as sqlite-vec reads it: little-endian float32s.
fn blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A vector as pgvector reads it: `[1,0.5,-2]` (each float printed to round-trip).
fn literal(vector: &[f32]) -> String {
    let mut text = String::with_capacity(vector.len() * 10 + 2);
    text.push('[');
    for (i, x) in vector.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&x.to_string());
    }
    text.push(']');
    text
}

/// Whether an extension version `major.minor[.patch]` is 0.8 or later.
fn at_least_0_8(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (0, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_text_names_where_the_chunk_sits() {
        assert_eq!(
            embedding_text(
                "KubePodCrashLooping",
                "KubePodCrashLooping › Mitigation",
                "Roll back."
            ),
            "KubePodCrashLooping › Mitigation\n\nRoll back."
        );
        assert_eq!(
            embedding_text("Checkout latency", "Mitigation", "Roll back."),
            "Checkout latency\nMitigation\n\nRoll back."
        );
        assert_eq!(embedding_text("T", "", "Body."), "T\nBody.");
    }

    #[test]
    fn vectors_are_written_as_each_extension_reads_them() {
        assert_eq!(literal(&[1.0, 0.5, -2.25]), "[1,0.5,-2.25]");
        assert_eq!(literal(&[0.1]), "[0.1]");
        let bytes = blob(&[1.0, -0.5]);
        assert_eq!(bytes.len(), 8);
        assert_eq!(&bytes[..4], &1.0f32.to_le_bytes());
    }

    #[test]
    fn iterative_scans_need_pgvector_0_8() {
        assert!(at_least_0_8("0.8.6"));
        assert!(at_least_0_8("0.8.0"));
        assert!(at_least_0_8("1.0"));
        assert!(!at_least_0_8("0.7.4"));
        assert!(!at_least_0_8("0.5"));
    }
}
