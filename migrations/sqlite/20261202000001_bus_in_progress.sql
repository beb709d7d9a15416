-- Commands the embedded bus handed to a long-running worker (executor, verifier) and that are
-- not finished yet: the embedded counterpart of a JetStream consumer's pending acks. A row is
-- written before the relay counts the message delivered and deleted (with the consumer's inbox
-- row written) when the worker finished, so a crash in between leaves it here and the command is
-- delivered again after the restart. A running worker keeps extending `lease_until`.

CREATE TABLE bus_in_progress (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    topic        TEXT NOT NULL,
    envelope     TEXT NOT NULL,
    deliveries   INTEGER NOT NULL,
    holder       TEXT NOT NULL,
    delivered_at TEXT NOT NULL,
    lease_until  TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
