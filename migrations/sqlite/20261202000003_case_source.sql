-- What opened a case: `api` (a person or a script), or the signal source that did
-- (`alertmanager`, `grafana`, `events`, `analyst`), so cases opened by alerts can be listed.
ALTER TABLE ops_case ADD COLUMN source TEXT NOT NULL DEFAULT 'api';
CREATE INDEX ops_case_source ON ops_case (source, id);
