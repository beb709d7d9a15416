-- How many chunks hold each term (lower-cased, stemmed: librarian::chunk::term_key), so that a
-- search leaves the commonest of its terms out of the match on a large corpus; and, per
-- document, what it added there, so that replacing or deleting it takes exactly that back.
CREATE TABLE kb_term (
    term   TEXT PRIMARY KEY,
    chunks INTEGER NOT NULL
) WITHOUT ROWID;

-- A JSON object {term: chunks}; NULL for a document stored before this table existed (it
-- counts once imported again).
ALTER TABLE kb_doc ADD COLUMN term_counts TEXT;
