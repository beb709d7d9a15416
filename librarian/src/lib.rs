//! The Librarian: knowledge (runbooks first) goes in once, chunked along its headings, and
//! comes back by search.
//!
//! [`chunk`] is pure: front matter, heading-structured chunks with their heading paths, token
//! counts, content hashes and query normalisation; so are [`rank`], the order of a search's
//! candidates (BM25F over the chunk's fields, lifted by its document), and [`fusion`],
//! reciprocal rank fusion of ranked lists. [`store`] is the thin part: `kb_doc`, `kb_chunk` and the lexical index on
//! SQLite (FTS5) and PostgreSQL (`tsvector`); [`vector`] holds chunk embeddings (sqlite-vec,
//! pgvector; on SQLite a first pass over their sign bits in memory, [`bits`]) computed through
//! [`embed`], an OpenAI-compatible embeddings client; [`service`]
//! ties them together ([`KnowledgeBase`]: hybrid search and the background embedder).
//!
//! Past cases are knowledge too: [`cases`] writes a CLOSED or PARKED case down as a document
//! (pure), [`related`] finds a case's references (runbook chunks, similar past cases with their
//! rollback hints), and [`librarian::Librarian`] reads the case tables (never writes them) for
//! both.

pub mod bits;
pub mod cases;
pub mod chunk;
pub mod embed;
pub mod fusion;
pub mod import;
pub mod librarian;
pub mod metrics;
pub mod rank;
pub mod related;
pub mod service;
pub mod sqlite_vec;
pub mod store;
pub mod vector;

pub use cases::{case_document, CaseFacts, CaseHistory, CASES_SOURCE};
pub use chunk::{parse_markdown, query_terms, Chunk, ParsedDoc};
pub use embed::{EmbedError, Embedder, EmbeddingSettings};
pub use fusion::reciprocal_rank_fusion;
pub use import::{import_dir, ImportError, ImportReport};
pub use librarian::{CaseDocuments, Librarian, SweepReport};
pub use metrics::KbMetrics;
pub use related::{references, Limits};
pub use service::{EmbedderSettings, KnowledgeBase, Vectors};
pub use store::{
    DocInput, DocSummary, Hit, KbStore, SearchFilter, StoredChunk, StoredDoc, Upserted,
};
pub use vector::{Prepared, VectorIndex};
