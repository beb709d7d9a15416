//! The Librarian as the service uses it: documents in (searchable lexically at once, embedded
//! in the background), and search, hybrid when embeddings are configured and usable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{watch, Notify};

use orchestrator::{SqlPool, StoreError};

use crate::chunk::query_terms;
use crate::embed::{EmbedError, Embedder, EmbeddingSettings};
use crate::fusion::reciprocal_rank_fusion;
use crate::metrics::{KbMetrics, MODE_HYBRID, MODE_LEXICAL};
use crate::store::{DocInput, Hit, KbStore, SearchFilter, Upserted, LEXICAL};
use crate::vector::{Prepared, VectorIndex, VECTOR};

/// Candidates each retriever hands to the fusion for `k` hits.
pub fn candidates(k: usize) -> usize {
    (k * 4).clamp(20, 200)
}

/// Whether hits come from vectors too.
#[derive(Debug, Clone)]
pub enum Vectors {
    /// No `[librarian.embeddings]`: lexical search, by choice.
    Off,
    /// Configured, but this database cannot hold them: lexical search, and the reason.
    Unavailable(String),
    Ready {
        index: VectorIndex,
        embedder: Embedder,
    },
}

/// The knowledge base: store, optional vectors, metrics.
#[derive(Debug)]
pub struct KnowledgeBase {
    store: KbStore,
    vectors: Vectors,
    metrics: Arc<KbMetrics>,
    /// Poked when a document is written, so the embedder need not wait for its next look.
    written: Arc<Notify>,
}

impl KnowledgeBase {
    /// Lexical search only.
    pub fn lexical(pool: SqlPool, metrics: Arc<KbMetrics>) -> Self {
        Self {
            store: KbStore::new(pool),
            vectors: Vectors::Off,
            metrics,
            written: Arc::new(Notify::new()),
        }
    }

    /// With `embeddings` (when given): the vector tables are prepared now; a database that
    /// cannot hold vectors leaves lexical search alone, said once in the log.
    pub async fn open(
        pool: SqlPool,
        metrics: Arc<KbMetrics>,
        embeddings: Option<EmbeddingSettings>,
    ) -> Result<Self, StoreError> {
        let mut librarian = Self::lexical(pool.clone(), metrics);
        let Some(settings) = embeddings else {
            return Ok(librarian);
        };
        let embedder = Embedder::new(settings.clone())
            .map_err(|e| StoreError::Corrupt(format!("embeddings client: {e}")))?;
        librarian.vectors =
            match VectorIndex::prepare(pool, &settings.model, settings.dimensions).await? {
                Prepared::Ready(index) => {
                    tracing::info!(
                        model = %settings.model,
                        dimensions = settings.dimensions,
                        "knowledge base search is hybrid (lexical and vectors)"
                    );
                    Vectors::Ready { index, embedder }
                }
                Prepared::Unavailable(reason) => {
                    tracing::warn!(
                        %reason,
                        "embeddings are configured but vectors cannot be stored here: knowledge \
                         base search is lexical only"
                    );
                    Vectors::Unavailable(reason)
                }
            };
        Ok(librarian)
    }

    pub fn store(&self) -> &KbStore {
        &self.store
    }

    pub fn vectors(&self) -> &Vectors {
        &self.vectors
    }

    pub fn metrics(&self) -> &Arc<KbMetrics> {
        &self.metrics
    }

    /// For `/readyz`: `None` without embeddings; `ok`, or why search is lexical only. Never a
    /// reason to be unready.
    pub fn vector_status(&self) -> Option<String> {
        match &self.vectors {
            Vectors::Off => None,
            Vectors::Ready { .. } => Some("ok".into()),
            Vectors::Unavailable(reason) => Some(format!("lexical only: {reason}")),
        }
    }

    /// Store `doc` (searchable lexically when this returns) and wake the embedder.
    pub async fn upsert(&self, doc: &DocInput, at: DateTime<Utc>) -> Result<Upserted, StoreError> {
        let result = self.store.upsert(doc, at).await?;
        if result != Upserted::Unchanged {
            self.written.notify_one();
        }
        Ok(result)
    }

    /// Set the gauges from the tables.
    pub async fn refresh_metrics(&self) -> Result<(), StoreError> {
        self.metrics.refresh(&self.store).await?;
        if let Vectors::Ready { index, .. } = &self.vectors {
            self.metrics.set_chunks_embedded(index.count().await?);
        }
        Ok(())
    }

    /// The `k` best chunks for `query`. Lexical alone without vectors; otherwise the lexical
    /// and the vector candidates fused by reciprocal rank, and lexical alone (with a counted
    /// error) when the query cannot be embedded in time.
    pub async fn search(
        &self,
        query: &str,
        k: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, StoreError> {
        let started = Instant::now();
        let Vectors::Ready { index, embedder } = &self.vectors else {
            let hits = self.store.search(query, k as i64, filter).await?;
            self.metrics
                .observe_search(MODE_LEXICAL, started.elapsed().as_secs_f64());
            return Ok(hits);
        };
        let depth = candidates(k);
        let lexical = self.store.search(query, depth as i64, filter);
        let vector = async {
            // No words, no hits: as lexical search answers, so does the hybrid one.
            if query_terms(query).is_empty() {
                return Ok(Vec::new());
            }
            let vector = match embed_query(embedder, query).await {
                Ok(vector) => vector,
                Err(error) => {
                    self.metrics.embedding_error();
                    tracing::warn!(%error, "the query could not be embedded: lexical results only");
                    return Ok(Vec::new());
                }
            };
            index.search(&vector, depth, filter).await
        };
        let (lexical, vector) = tokio::join!(lexical, vector);
        let lexical = lexical?;
        let vector = vector.unwrap_or_else(|error: StoreError| {
            tracing::warn!(%error, "vector search failed: lexical results only");
            Vec::new()
        });
        let hits = reciprocal_rank_fusion(&[(LEXICAL, lexical), (VECTOR, vector)], k);
        self.metrics
            .observe_search(MODE_HYBRID, started.elapsed().as_secs_f64());
        Ok(hits)
    }

    /// Embed chunks that lack a vector until `stopped`: a batch at a time, at once while there
    /// are more, then on the next write or every `settings.idle`. A failing endpoint is counted
    /// and tried again after a growing pause; nothing written is ever lost or failed by it.
    pub async fn run_embedder(
        self: Arc<Self>,
        settings: EmbedderSettings,
        mut stopped: watch::Receiver<bool>,
    ) {
        let Vectors::Ready { index, embedder } = &self.vectors else {
            return;
        };
        let batch = embedder.settings().batch_size.max(1);
        let mut backoff = settings.initial_backoff;
        // Chunks the endpoint refused, and when to offer them again.
        let mut refused = HashMap::new();
        // Where the current pass over the chunks is (`None`: between passes).
        let mut cursor = None;
        loop {
            if *stopped.borrow() {
                return;
            }
            let starts_a_pass = cursor.is_none();
            let pass =
                self.embed_batch(index, embedder, batch, &mut refused, &mut cursor, &settings);
            let pause = match pass.await {
                // A pass that ended may have left chunks written behind it: a new one looks.
                Ok(0) if !starts_a_pass => continue,
                Ok(0) => {
                    backoff = settings.initial_backoff;
                    settings.idle
                }
                Ok(_) => {
                    backoff = settings.initial_backoff;
                    continue;
                }
                Err(error) => {
                    if matches!(error, BatchError::Embed(_)) {
                        self.metrics.embedding_error();
                    }
                    tracing::warn!(
                        %error,
                        retry_in_s = backoff.as_secs_f64(),
                        "chunks could not be embedded; they stay searchable lexically"
                    );
                    let pause = backoff;
                    backoff = (backoff * 2).min(settings.max_backoff);
                    pause
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.written.notified(), if pause == settings.idle => {}
                _ = stopped.changed() => {}
            }
        }
    }

    /// Embed up to `batch` chunks without a vector (not those in `refused` until their time
    /// comes) after `cursor`, and move it past them (to `None` at the end of the chunks);
    /// returns how many were handled. A pass starts only when some chunk lacks a vector. When
    /// the endpoint refuses the batch's input (400, 413, 422: a text too long for the model,
    /// say), each chunk is tried alone and those refused again are left aside for
    /// `settings.refused_retry`, so one bad chunk does not hold up the others.
    async fn embed_batch(
        &self,
        index: &VectorIndex,
        embedder: &Embedder,
        batch: usize,
        refused: &mut HashMap<(String, i64), Instant>,
        cursor: &mut Option<(String, i64)>,
        settings: &EmbedderSettings,
    ) -> Result<u64, BatchError> {
        let now = Instant::now();
        refused.retain(|_, until| *until > now);
        if cursor.is_none() && index.unembedded().await? == 0 {
            return Ok(0);
        }
        let limit = batch + refused.len();
        let after = cursor.as_ref().map(|(doc_id, idx)| (doc_id.as_str(), *idx));
        let fetched = index.pending(after, limit).await?;
        let at_end = fetched.len() < limit;
        let mut pending = Vec::new();
        *cursor = None;
        for chunk in fetched {
            if pending.len() == batch {
                break;
            }
            *cursor = Some((chunk.doc_id.clone(), chunk.idx));
            if !refused.contains_key(&(chunk.doc_id.clone(), chunk.idx)) {
                pending.push(chunk);
            }
        }
        if at_end && pending.len() < batch {
            *cursor = None;
        }
        if pending.is_empty() {
            return Ok(0);
        }
        let texts: Vec<String> = pending.iter().map(|chunk| chunk.text.clone()).collect();
        let error = match embedder.embed(&texts).await {
            Ok(vectors) => {
                // Chunks replaced meanwhile are not stored and come back: the batch counts.
                index.store(&pending, &vectors).await?;
                return Ok(pending.len() as u64);
            }
            Err(error) if error.refuses_input() => error,
            Err(error) => return Err(error.into()),
        };
        self.metrics.embedding_error();
        for chunk in &pending {
            let alone = if pending.len() == 1 {
                Err(error.clone())
            } else {
                embedder.embed(std::slice::from_ref(&chunk.text)).await
            };
            match alone {
                Ok(vectors) => {
                    index.store(std::slice::from_ref(chunk), &vectors).await?;
                }
                Err(error) if error.refuses_input() => {
                    if pending.len() > 1 {
                        self.metrics.embedding_error();
                    }
                    tracing::warn!(
                        doc_id = %chunk.doc_id,
                        chunk = chunk.idx,
                        %error,
                        retry_in_s = settings.refused_retry.as_secs(),
                        "the embeddings endpoint refuses this chunk; it stays searchable lexically"
                    );
                    refused.insert(
                        (chunk.doc_id.clone(), chunk.idx),
                        now + settings.refused_retry,
                    );
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(pending.len() as u64)
    }
}

async fn embed_query(embedder: &Embedder, query: &str) -> Result<Vec<f32>, EmbedError> {
    let timeout = embedder.settings().timeout;
    let texts = [query.to_string()];
    match tokio::time::timeout(timeout, embedder.embed(&texts)).await {
        Ok(vectors) => vectors?
            .pop()
            .ok_or_else(|| EmbedError::Invalid("no embedding for the query".into())),
        Err(_) => Err(EmbedError::Transport(format!(
            "no answer within {}s",
            timeout.as_secs_f64()
        ))),
    }
}

/// How the background embedder paces itself.
#[derive(Debug, Clone, Copy)]
pub struct EmbedderSettings {
    /// How often it looks for chunks without a vector when nothing wakes it.
    pub idle: Duration,
    /// The first pause after a failure; it doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a chunk the endpoint refused waits before it is offered again.
    pub refused_retry: Duration,
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            refused_retry: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_retriever_offers_more_candidates_than_hits() {
        assert_eq!(candidates(1), 20);
        assert_eq!(candidates(5), 20);
        assert_eq!(candidates(10), 40);
        assert_eq!(candidates(50), 200);
        assert_eq!(candidates(500), 200);
    }
}
