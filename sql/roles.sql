--
-- roles: create_service_roles() and the ownership matrix.
--
--   <service>_service_user   owns schema <service> and its tables, reads the cache;
--                            creates nothing in public
--   <service>_sync_user      writes the cache (through apply_event), nothing else
--   <service>_readonly_user  reads schema <service> and the cache
--
-- Roles are cluster-wide: everything created here is dropped at the end.
--
-- Errors raised in PL/pgSQL would print a CONTEXT line with a line number
-- of the install script, which changes whenever it is edited.
\set SHOW_CONTEXT never
TRUNCATE cache.citizen_refs, cache.processed_events;

SELECT citizen_sync.create_service_roles('permits');
-- rerun safe
SELECT citizen_sync.create_service_roles('permits');
SELECT rolname, rolcanlogin, rolpassword IS NULL AS no_password, rolsuper, rolcreatedb,
       rolcreaterole, rolreplication, rolbypassrls
  FROM pg_authid WHERE rolname LIKE 'permits\_%' ORDER BY rolname;
-- no role is a member of another
SELECT count(*) AS memberships FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
 WHERE r.rolname LIKE 'permits\_%';
-- the service user owns schema permits, which comes first in its search_path
-- here; no role of the matrix may create anything in public
SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = 'permits';
SELECT r.rolname, s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
 WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND r.rolname LIKE 'permits\_%';
SELECT r AS role, has_schema_privilege(r, 'public', 'CREATE') AS create_on_public
  FROM unnest(ARRAY['permits_service_user', 'permits_sync_user', 'permits_readonly_user']) AS r;
-- the sync user and the read-only user create nothing anywhere (temporary
-- tables aside: TEMP on the database comes from PUBLIC)
SELECT r AS role, string_agg(n.nspname, ', ' ORDER BY n.nspname) AS schemas_with_create
  FROM unnest(ARRAY['permits_sync_user', 'permits_readonly_user']) AS r
  LEFT JOIN pg_namespace n ON has_schema_privilege(r, n.oid, 'CREATE')
 GROUP BY r ORDER BY r;
-- what PUBLIC has, every role has (PostgreSQL's defaults): USAGE on public
-- and EXECUTE on its functions
CREATE FUNCTION public.roles_public_fn() RETURNS int LANGUAGE sql AS 'SELECT 1';
SELECT has_schema_privilege('permits_sync_user', 'public', 'USAGE') AS sync_usage_on_public,
       has_function_privilege('permits_sync_user', 'public.roles_public_fn()', 'EXECUTE') AS sync_executes_it;
DROP FUNCTION public.roles_public_fn();

-- A citizen in the cache, applied by the extension owner.
SELECT citizen_sync.apply_event('{"event_type": "citizen.created", "event_id": "evt_r1", "event_version": 1,
  "data": {"citizen_id": 1, "snapshot": {"id": 1, "name": "Maria Garcia", "email": "maria@example.gov"}}}');

------------------------------------------------------------------------------
-- Service user: owns its tables, reads the cache only
------------------------------------------------------------------------------
SET ROLE permits_service_user;
-- not in public
CREATE TABLE public.permits (id bigserial PRIMARY KEY);
CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS 'SELECT ''planted''';
-- in its own schema
CREATE TABLE permits.permits (
    id         bigserial PRIMARY KEY,
    citizen_id bigint NOT NULL,
    kind       text NOT NULL
);
INSERT INTO permits.permits (citizen_id, kind) VALUES (1, 'parking');
UPDATE permits.permits SET kind = 'parking (renewed)' WHERE citizen_id = 1;
SELECT p.id, p.kind, c.name FROM permits.permits p JOIN cache.citizen_refs c USING (citizen_id);
INSERT INTO cache.citizen_refs (citizen_id, name, email) VALUES (2, 'Forged', 'forged@example.gov');
UPDATE cache.citizen_refs SET name = 'Forged' WHERE citizen_id = 1;
DELETE FROM cache.citizen_refs WHERE citizen_id = 1;
TRUNCATE cache.citizen_refs;
INSERT INTO cache.processed_events (event_id) VALUES ('evt_forged');
SELECT citizen_sync.apply_event('{"event_type": "citizen.updated", "event_id": "evt_r2", "event_version": 2,
  "data": {"citizen_id": 1, "snapshot": {"id": 1, "name": "Forged", "email": "forged@example.gov"}}}');
SELECT count(*) FROM citizen_sync.outbox;
RESET ROLE;
SELECT schemaname, tableowner FROM pg_tables WHERE tablename = 'permits';
-- a table the DBA creates in the service's schema: the service user writes
-- it, the read-only user reads it (default privileges)
CREATE TABLE permits.permit_fees (permit_id bigint, amount numeric);
SELECT r AS role, has_table_privilege(r, 'permits.permit_fees', 'SELECT') AS can_select,
       has_table_privilege(r, 'permits.permit_fees', 'INSERT, UPDATE, DELETE') AS can_write
  FROM unnest(ARRAY['permits_service_user', 'permits_sync_user', 'permits_readonly_user']) AS r;

------------------------------------------------------------------------------
-- Sync user: writes the cache, cannot touch the service's tables
------------------------------------------------------------------------------
SET ROLE permits_sync_user;
SELECT * FROM permits.permits;
INSERT INTO permits.permits (citizen_id, kind) VALUES (1, 'forged');
UPDATE permits.permits SET kind = 'forged';
CREATE TABLE public.sync_owned (id int);
CREATE TABLE permits.sync_owned (id int);
SELECT citizen_sync.apply_event('{"event_type": "citizen.updated", "event_id": "evt_r3", "event_version": 2,
  "data": {"citizen_id": 1, "snapshot": {"id": 1, "name": "Maria G. Lopez", "email": "maria@example.gov"}}}');
SELECT * FROM citizen_sync.apply_events(ARRAY[
  '{"event_type": "citizen.created", "event_id": "evt_r4", "event_version": 1,
    "data": {"citizen_id": 2, "snapshot": {"id": 2, "name": "John Smith", "email": "john@example.gov"}}}',
  '{"event_type": "citizen.deleted", "event_id": "evt_r5", "event_version": 2, "data": {"citizen_id": 4}}']);
-- direct writes to the cache are allowed (an operator's repair as the sync user)
UPDATE cache.citizen_refs SET phone = '+1-555-0100' WHERE citizen_id = 1;
INSERT INTO cache.citizen_refs (citizen_id, name, email, event_version)
VALUES (3, 'Manual Entry', 'manual@example.gov', 1);
SELECT citizen_id, name, phone, event_version, is_active FROM cache.citizen_refs ORDER BY citizen_id;
-- deletes are soft: no DELETE on the cache
DELETE FROM cache.citizen_refs WHERE citizen_id = 3;
-- the source side's outbox is not the sync user's
SELECT count(*) FROM citizen_sync.outbox;
SELECT citizen_sync.capture('cache.citizen_refs', 'permit');
-- Kafka credentials are superuser-only settings, never shown to others
SHOW citizen_sync.kafka_properties;
SELECT count(*) AS visible FROM pg_settings WHERE name = 'citizen_sync.kafka_properties';
SELECT current_setting('citizen_sync.kafka_properties');
-- and only a superuser changes the event size limit
SET citizen_sync.max_event_size = '64MB';
RESET ROLE;

------------------------------------------------------------------------------
-- Read-only user: reads the service's tables and the cache, writes nothing
------------------------------------------------------------------------------
SET ROLE permits_readonly_user;
SELECT p.kind, c.name FROM permits.permits p JOIN cache.citizen_refs c USING (citizen_id);
SELECT count(*) FROM cache.citizen_refs;
INSERT INTO permits.permits (citizen_id, kind) VALUES (1, 'forged');
UPDATE permits.permits SET kind = 'forged';
DELETE FROM permits.permits;
INSERT INTO cache.citizen_refs (citizen_id, name, email) VALUES (9, 'Forged', 'forged@example.gov');
UPDATE cache.citizen_refs SET name = 'Forged';
INSERT INTO cache.processed_events (event_id) VALUES ('evt_forged');
CREATE TABLE public.ro_owned (id int);
CREATE TABLE permits.ro_owned (id int);
SELECT citizen_sync.apply_event('{"event_type": "citizen.updated", "event_id": "evt_r6", "event_version": 9,
  "data": {"citizen_id": 1, "snapshot": {"id": 1, "name": "Forged", "email": "forged@example.gov"}}}');
RESET ROLE;

------------------------------------------------------------------------------
-- A plain role: the operator functions are revoked from PUBLIC
------------------------------------------------------------------------------
CREATE ROLE citizen_sync_plain_role NOLOGIN;
SET ROLE citizen_sync_plain_role;
-- without even USAGE on the schema
SELECT citizen_sync.apply_event('{}');
RESET ROLE;
-- with USAGE on the schemas, each function is still refused
GRANT USAGE ON SCHEMA citizen_sync, cache TO citizen_sync_plain_role;
SET ROLE citizen_sync_plain_role;
SELECT citizen_sync.apply_event('{}');
SELECT * FROM citizen_sync.apply_events('{}');
SELECT citizen_sync.capture('cache.citizen_refs', 'permit');
SELECT citizen_sync.uncapture('cache.citizen_refs');
SELECT citizen_sync.create_service_roles('evil');
SELECT count(*) FROM cache.citizen_refs;
SELECT count(*) FROM cache.processed_events;
SELECT count(*) FROM citizen_sync.outbox;
SELECT count(*) FROM citizen_sync.dead_letters;
RESET ROLE;
SELECT count(*) AS evil_roles FROM pg_roles WHERE rolname LIKE 'evil\_%';

------------------------------------------------------------------------------
-- A database set up by 0.1.0: the service user had CREATE on public
------------------------------------------------------------------------------
-- (what 0.1.0's create_service_roles() granted in public)
GRANT USAGE, CREATE ON SCHEMA public TO permits_service_user;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO permits_service_user;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO permits_service_user;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO permits_readonly_user;
ALTER DEFAULT PRIVILEGES FOR ROLE permits_service_user IN SCHEMA public
    GRANT SELECT ON TABLES TO permits_readonly_user;
CREATE TABLE public.legacy_permits (id int);
GRANT ALL ON public.legacy_permits TO permits_service_user;
SELECT count(*) AS default_acls_in_public FROM pg_default_acl
 WHERE defaclnamespace = 'public'::regnamespace;
SET ROLE permits_service_user;
CREATE TABLE public.legacy_fees (id int);
CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS 'SELECT ''planted''';
RESET ROLE;
-- rerun: CREATE on public is revoked, what it owns there is named
SELECT citizen_sync.create_service_roles('permits');
SELECT has_schema_privilege('permits_service_user', 'public', 'CREATE') AS create_on_public;
SELECT count(*) AS default_acls_in_public FROM pg_default_acl
 WHERE defaclnamespace = 'public'::regnamespace;
-- the table keeps working until it is moved (README, Roles)
SELECT has_table_privilege('permits_service_user', 'public.legacy_permits', 'INSERT') AS still_writes;
ALTER TABLE public.legacy_permits SET SCHEMA permits;
ALTER TABLE public.legacy_fees SET SCHEMA permits;
DROP FUNCTION public.lower(varchar);
SELECT citizen_sync.create_service_roles('permits');

------------------------------------------------------------------------------
-- Invalid service names
------------------------------------------------------------------------------
SELECT citizen_sync.create_service_roles('Permits');
\echo :SQLSTATE
SELECT citizen_sync.create_service_roles('');
SELECT citizen_sync.create_service_roles(NULL);
SELECT citizen_sync.create_service_roles('1permits');
SELECT citizen_sync.create_service_roles('per-mits');
SELECT citizen_sync.create_service_roles('permits"; DROP ROLE postgres; --');
SELECT citizen_sync.create_service_roles('a' || repeat('b', 41));
-- the service's schema would be one the service user does not own (terse:
-- the DETAIL names the owner, the bootstrap superuser)
\set VERBOSITY terse
SELECT citizen_sync.create_service_roles('cache');
\echo :SQLSTATE
SELECT citizen_sync.create_service_roles('public');
SELECT citizen_sync.create_service_roles('citizen_sync');
\set VERBOSITY default
SELECT count(*) AS roles FROM pg_roles WHERE rolname LIKE '%\_service\_user';

------------------------------------------------------------------------------
-- Clean up: roles are cluster-wide
------------------------------------------------------------------------------
-- One role at a time: DROP OWNED BY of a service user together with the
-- read-only user fails in PostgreSQL 15 with "could not find tuple for
-- default ACL" (the default privileges that the service user grants to the
-- read-only user are dropped twice).
-- DROP OWNED BY of the service user drops its schema: the tables others
-- created in it go first.
DROP TABLE permits.permit_fees, permits.legacy_permits;
DROP OWNED BY permits_readonly_user;
DROP OWNED BY permits_sync_user;
DROP OWNED BY permits_service_user;
DROP OWNED BY citizen_sync_plain_role;
DROP ROLE permits_service_user, permits_sync_user, permits_readonly_user,
          citizen_sync_plain_role;
SELECT count(*) AS leftover_roles FROM pg_roles
 WHERE rolname LIKE 'permits\_%' OR rolname = 'citizen_sync_plain_role';
SELECT to_regnamespace('permits') AS permits_schema;
TRUNCATE cache.citizen_refs, cache.processed_events;
