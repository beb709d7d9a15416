-- Wake relays in other processes when outbox rows commit: one notification per inserting
-- statement, delivered at commit (PostgreSQL folds duplicates within a transaction).

CREATE FUNCTION opscase_outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('opscase_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION opscase_outbox_notify();
