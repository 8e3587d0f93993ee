-- citizen_sync install script, built by the Makefile from sql/install/*.sql
-- in name order (one file per concern; each object's grants stand next to it).
--
-- Every object is schema-qualified; the script runs with search_path set to
-- the extension schema by CREATE EXTENSION (pg_catalog implicitly first), and
-- every function that runs SQL pins its own search_path.  Functions only an
-- operator should call are revoked from PUBLIC next to their definition.

\echo Use "CREATE EXTENSION citizen_sync" to load this file. \quit

DO $guard$
BEGIN
    IF pg_catalog.current_setting('server_encoding') <> 'UTF8' THEN
        RAISE EXCEPTION 'citizen_sync requires a UTF8 database'
            USING DETAIL = pg_catalog.format('Database %I uses encoding %s; events are UTF-8 JSON.',
                                             pg_catalog.current_database(),
                                             pg_catalog.current_setting('server_encoding')),
                  HINT = 'Create the database with ENCODING ''UTF8'' and install the extension there.';
    END IF;
END
$guard$;
