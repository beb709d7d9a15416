-- Messages an in-process consumer of the embedded bus gave up on (the JetStream transport
-- keeps its dead letters in the OPS_DLQ stream instead). Kept for an operator to inspect.

CREATE TABLE dead_letter (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    topic      TEXT NOT NULL,
    envelope   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX dead_letter_consumer ON dead_letter (consumer, id);
