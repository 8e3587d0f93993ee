--
-- preflight: CREATE EXTENSION where a schema "cache" already exists stops
-- with duplicate_schema, a DETAIL naming what is there and a HINT, and
-- leaves nothing behind; renaming the schema lets it install.
--
\set SHOW_CONTEXT never
SELECT current_database() AS regress_db \gset
CREATE DATABASE cs_preflight ENCODING 'UTF8' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C';
\c cs_preflight
CREATE ROLE cs_preflight_owner NOLOGIN;
CREATE SCHEMA cache AUTHORIZATION cs_preflight_owner;
CREATE TABLE cache.sessions (id int PRIMARY KEY);
CREATE FUNCTION cache.touch() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE EXTENSION citizen_sync;
\echo :LAST_ERROR_SQLSTATE
-- nothing was left behind: no extension, no schema citizen_sync, cache untouched
SELECT count(*) AS extensions FROM pg_extension WHERE extname = 'citizen_sync';
SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace
 WHERE nspname IN ('cache', 'citizen_sync') ORDER BY nspname;
-- the way the HINT gives
ALTER SCHEMA cache RENAME TO cache_sessions;
CREATE EXTENSION citizen_sync;
SELECT extversion FROM pg_extension WHERE extname = 'citizen_sync';
SELECT count(*) AS cache_sessions_tables FROM pg_tables WHERE schemaname = 'cache_sessions';
\c :regress_db
DROP DATABASE cs_preflight;
DROP ROLE cs_preflight_owner;
