-- PostgreSQL notifies relays of new outbox rows (LISTEN/NOTIFY); SQLite has one relay per
-- database, in the process that commits, and needs nothing here. This keeps the migration
-- versions of the two backends aligned.
SELECT 1;
