-- Durable claims on commands with side effects (the executor's cmd.exec.*) in embedded mode:
-- a command is run by whoever inserts its row first; a redelivery finds the row and is
-- reported, never run again. Distributed mode keeps the same claims in a JetStream KV bucket.

CREATE TABLE command_claim (
    key         TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    claimed_at  TEXT NOT NULL,
    finished_at TEXT,
    outcome     TEXT
);
