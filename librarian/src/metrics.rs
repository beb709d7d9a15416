//! The Librarian's metrics: `kb_documents`, `kb_chunks`, `kb_chunks_embedded`,
//! `kb_search_seconds{mode}` and `kb_embedding_errors_total`.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntGauge, Registry};

use orchestrator::StoreError;

use crate::store::KbStore;

/// The search mode label of lexical search.
pub const MODE_LEXICAL: &str = "lexical";

/// The mode label of a case's references (its runbook and past-case searches together).
pub const MODE_RELATED: &str = "related";
/// The search mode label of a search that also asked the vectors (embeddings configured and
/// usable), whether or not the query's embedding came back.
pub const MODE_HYBRID: &str = "hybrid";

#[derive(Debug, Clone)]
pub struct KbMetrics {
    documents: IntGauge,
    chunks: IntGauge,
    chunks_embedded: IntGauge,
    search_seconds: HistogramVec,
    embedding_errors: IntCounter,
}

impl KbMetrics {
    pub fn register(registry: &Registry) -> Self {
        let documents = IntGauge::new("kb_documents", "Documents in the knowledge base.")
            .expect("valid metric");
        let chunks =
            IntGauge::new("kb_chunks", "Chunks in the knowledge base.").expect("valid metric");
        let chunks_embedded = IntGauge::new(
            "kb_chunks_embedded",
            "Chunks in the knowledge base that have an embedding (0 without embeddings).",
        )
        .expect("valid metric");
        let embedding_errors = IntCounter::new(
            "kb_embedding_errors_total",
            "Calls to the embeddings endpoint that failed, timed out or answered unusably \
             (chunks are embedded again later; searches fall back to lexical).",
        )
        .expect("valid metric");
        let search_seconds = HistogramVec::new(
            HistogramOpts::new("kb_search_seconds", "Knowledge base searches by mode.").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            &["mode"],
        )
        .expect("valid metric");
        // A second registration on one registry (as in tests) leaves the first in place.
        let _ = registry.register(Box::new(documents.clone()));
        let _ = registry.register(Box::new(chunks.clone()));
        let _ = registry.register(Box::new(search_seconds.clone()));
        let _ = registry.register(Box::new(chunks_embedded.clone()));
        let _ = registry.register(Box::new(embedding_errors.clone()));
        Self {
            documents,
            chunks,
            chunks_embedded,
            search_seconds,
            embedding_errors,
        }
    }

    /// Set the gauges from the tables (any process may have imported since).
    pub async fn refresh(&self, store: &KbStore) -> Result<(), StoreError> {
        let (documents, chunks) = store.counts().await?;
        self.documents.set(documents);
        self.chunks.set(chunks);
        Ok(())
    }

    pub fn set_chunks_embedded(&self, chunks: i64) {
        self.chunks_embedded.set(chunks);
    }

    pub fn embedding_error(&self) {
        self.embedding_errors.inc();
    }

    pub fn embedding_errors(&self) -> u64 {
        self.embedding_errors.get()
    }

    pub fn observe_search(&self, mode: &str, seconds: f64) {
        self.search_seconds
            .with_label_values(&[mode])
            .observe(seconds);
    }
}
