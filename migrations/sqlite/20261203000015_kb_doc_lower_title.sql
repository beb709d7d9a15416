-- A search finds the documents titled by a word of its query (an alert naming its runbook) by
-- this index, and ranks the rest in the full-text index alone (as PostgreSQL's since 0013).
CREATE INDEX kb_doc_lower_title ON kb_doc (lower(title));
