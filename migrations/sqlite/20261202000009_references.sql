-- What the Librarian attached to a plan when it was proposed (runbook chunks, past cases and
-- their rollback hints), as JSON; NULL for a plan proposed without them.
ALTER TABLE plan_proposed ADD COLUMN refs TEXT;

-- A case whose alert names its runbook (`runbook_url`) finds the document imported from it.
CREATE INDEX kb_doc_url ON kb_doc (path_or_url);
