-- The watchdog looks up the latest command sent for a case (outbox rows are keyed by case id).
CREATE INDEX outbox_key ON outbox (key, id);
