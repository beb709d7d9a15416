-- The Librarian (crate librarian/): documents (runbooks first), their chunks along the heading
-- structure, and the lexical index over the chunks. Ids are text; times are RFC 3339 UTC text.

-- One row per document; `tenant` NULL is a global document, seen by every tenant. An imported
-- page's id is derived from (tenant, source, path), so importing it again finds it.
CREATE TABLE kb_doc (
    id           TEXT PRIMARY KEY,
    tenant       TEXT,
    source       TEXT NOT NULL,
    path_or_url  TEXT NOT NULL,
    title        TEXT NOT NULL,
    metadata     TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX kb_doc_source ON kb_doc (source, tenant);

-- The chunks of a document in reading order; the rowid is the chunk's row in `kb_fts`.
-- (An embedding column comes with vector search.)
CREATE TABLE kb_chunk (
    doc_id       TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    heading_path TEXT NOT NULL,
    content      TEXT NOT NULL,
    token_count  INTEGER NOT NULL,
    UNIQUE (doc_id, idx)
);

-- The lexical index, one row per chunk (rowid = kb_chunk.rowid), its fields apart so that
-- bm25() weighs them: the title (with the alert name) above the heading path above the body.
CREATE VIRTUAL TABLE kb_fts USING fts5(
    title, heading, body,
    tokenize = 'porter unicode61'
);
