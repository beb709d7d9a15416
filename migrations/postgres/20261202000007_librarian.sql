-- The Librarian (crate librarian/): documents (runbooks first), their chunks along the heading
-- structure, and the lexical index over the chunks. Ids are text; times are timestamptz.

-- One row per document; `tenant` NULL is a global document, seen by every tenant. An imported
-- page's id is derived from (tenant, source, path), so importing it again finds it.
CREATE TABLE kb_doc (
    id           TEXT PRIMARY KEY,
    tenant       TEXT,
    source       TEXT NOT NULL,
    path_or_url  TEXT NOT NULL,
    title        TEXT NOT NULL,
    metadata     JSONB NOT NULL,
    content_hash TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX kb_doc_source ON kb_doc (source, tenant);

-- The chunks of a document in reading order, with the lexical index: `tsv` weighs the title
-- (with the alert name) A, the heading path B and the body C, for ts_rank_cd().
-- (An embedding column comes with vector search.)
CREATE TABLE kb_chunk (
    doc_id       TEXT NOT NULL REFERENCES kb_doc (id) ON DELETE CASCADE,
    idx          BIGINT NOT NULL,
    heading_path TEXT NOT NULL,
    content      TEXT NOT NULL,
    token_count  BIGINT NOT NULL,
    tsv          TSVECTOR NOT NULL,
    PRIMARY KEY (doc_id, idx)
);
CREATE INDEX kb_chunk_tsv ON kb_chunk USING GIN (tsv);
