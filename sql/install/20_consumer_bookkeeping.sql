------------------------------------------------------------------------------
-- Consumer bookkeeping
------------------------------------------------------------------------------

CREATE TABLE @extschema@.consumer_offsets (
    group_id    text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL CHECK (partition >= 0),
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (group_id, topic, partition)
);
COMMENT ON TABLE @extschema@.consumer_offsets IS
    'Kafka position of each consumer group, written in the same transaction as the rows applied: the source of truth on (re)assignment';

CREATE TABLE @extschema@.dead_letters (
    id              bigserial PRIMARY KEY,
    payload         bytea,
    message_key     bytea,
    topic           text,
    partition       int,
    "offset"        bigint,
    event_id        text,
    error_message   text NOT NULL,
    error_detail    text,
    error_sqlstate  char(5) NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts        int NOT NULL DEFAULT 1,
    resolved_at     timestamptz,
    resolution      text
);
COMMENT ON TABLE @extschema@.dead_letters IS
    'Messages that could not be applied, with their raw bytes, position and error';
COMMENT ON COLUMN @extschema@.dead_letters.payload IS
    'The raw message value: NULL for a null value (a Kafka tombstone), empty for an empty one';
CREATE UNIQUE INDEX dead_letters_position ON @extschema@.dead_letters (topic, partition, "offset")
    WHERE topic IS NOT NULL;
CREATE INDEX dead_letters_unresolved ON @extschema@.dead_letters (first_seen_at)
    WHERE resolved_at IS NULL;

REVOKE ALL ON @extschema@.consumer_offsets, @extschema@.dead_letters FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.consumer_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.dead_letters_id_seq', '');
