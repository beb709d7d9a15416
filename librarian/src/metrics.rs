//! The Librarian's metrics: `kb_documents`, `kb_chunks` and `kb_search_seconds{mode}`.

use prometheus::{HistogramOpts, HistogramVec, IntGauge, Registry};

use orchestrator::StoreError;

use crate::store::KbStore;

/// The search mode label of lexical search.
pub const MODE_LEXICAL: &str = "lexical";

/// The mode label of a case's references (its runbook and past-case searches together).
pub const MODE_RELATED: &str = "related";

#[derive(Debug, Clone)]
pub struct KbMetrics {
    documents: IntGauge,
    chunks: IntGauge,
    search_seconds: HistogramVec,
}

impl KbMetrics {
    pub fn register(registry: &Registry) -> Self {
        let documents = IntGauge::new("kb_documents", "Documents in the knowledge base.")
            .expect("valid metric");
        let chunks =
            IntGauge::new("kb_chunks", "Chunks in the knowledge base.").expect("valid metric");
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
        Self {
            documents,
            chunks,
            search_seconds,
        }
    }

    /// Set the gauges from the tables (any process may have imported since).
    pub async fn refresh(&self, store: &KbStore) -> Result<(), StoreError> {
        let (documents, chunks) = store.counts().await?;
        self.documents.set(documents);
        self.chunks.set(chunks);
        Ok(())
    }

    pub fn observe_search(&self, mode: &str, seconds: f64) {
        self.search_seconds
            .with_label_values(&[mode])
            .observe(seconds);
    }
}
