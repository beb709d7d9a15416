//! The Librarian: knowledge (runbooks first) goes in once, chunked along its headings, and
//! comes back by search.
//!
//! [`chunk`] is pure: front matter, heading-structured chunks with their heading paths, token
//! counts, content hashes and query normalisation. [`store`] is the thin part: `kb_doc`,
//! `kb_chunk` and the lexical index on SQLite (FTS5) and PostgreSQL (`tsvector`).

pub mod chunk;
pub mod import;
pub mod metrics;
pub mod store;

pub use chunk::{parse_markdown, query_terms, Chunk, ParsedDoc};
pub use import::{import_dir, ImportError, ImportReport};
pub use metrics::KbMetrics;
pub use store::{
    DocInput, DocSummary, Hit, KbStore, SearchFilter, StoredChunk, StoredDoc, Upserted,
};
