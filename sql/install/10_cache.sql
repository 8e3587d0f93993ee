------------------------------------------------------------------------------
-- Consumer side: the read-only cache of citizens
------------------------------------------------------------------------------

CREATE SCHEMA cache;
COMMENT ON SCHEMA cache IS 'Read-only copies of data owned by other services (written by citizen_sync only)';

CREATE TABLE cache.citizen_refs (
    citizen_id        bigint PRIMARY KEY,
    -- name and email are NULL only in a tombstone: a delete of a citizen this
    -- cache never saw, kept so that an older create cannot resurrect it.
    name              varchar(255),
    email             varchar(255),
    phone             varchar(50),
    address           text,
    city              varchar(100),
    postal_code       varchar(20),
    email_verified    boolean NOT NULL DEFAULT false,
    identity_verified boolean NOT NULL DEFAULT false,
    event_version     bigint NOT NULL DEFAULT 0,
    is_active         boolean NOT NULL DEFAULT true,
    deleted_at        timestamptz,
    last_synced_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT citizen_refs_active_has_identity
        CHECK (NOT is_active OR (name IS NOT NULL AND email IS NOT NULL)),
    CONSTRAINT citizen_refs_deleted_consistent
        CHECK (is_active = (deleted_at IS NULL))
);
COMMENT ON TABLE cache.citizen_refs IS 'Cached citizens from the auth database; newer event_version wins, deletes are soft';

CREATE INDEX idx_citizen_refs_email  ON cache.citizen_refs (email);
CREATE INDEX idx_citizen_refs_phone  ON cache.citizen_refs (phone);
CREATE INDEX idx_citizen_refs_synced ON cache.citizen_refs (last_synced_at);

CREATE FUNCTION cache.update_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;

CREATE TRIGGER citizen_refs_updated_at
    BEFORE UPDATE ON cache.citizen_refs
    FOR EACH ROW EXECUTE FUNCTION cache.update_updated_at();

CREATE TABLE cache.processed_events (
    event_id     text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE cache.processed_events IS 'Idempotency record: event ids already applied (or judged stale)';
CREATE INDEX idx_processed_events_time ON cache.processed_events (processed_at);

REVOKE ALL ON ALL TABLES IN SCHEMA cache FROM PUBLIC;
-- Data tables are included in pg_dump output.
SELECT pg_catalog.pg_extension_config_dump('cache.citizen_refs', '');
SELECT pg_catalog.pg_extension_config_dump('cache.processed_events', '');
