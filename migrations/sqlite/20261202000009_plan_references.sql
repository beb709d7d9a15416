-- What the Librarian attached to a plan when it was proposed (runbook chunks, past cases and
-- their rollback hints), as JSON; NULL for a plan proposed without them.
ALTER TABLE plan_proposed ADD COLUMN refs TEXT;
