------------------------------------------------------------------------------
-- pg_dump keeps the subscriptions a DBA made, not the built-in one (which
-- CREATE EXTENSION makes).  Registered last, in the install script and in
-- the upgrade alike: pg_extension_config_dump() appends to the extension's
-- lists, and a fresh install must list its conditions in the order of an
-- updated one (test/t/002_upgrade.pl).
------------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('@extschema@.subscription_catalog', 'WHERE NOT builtin');

-- The sync users of 0.1.0 (whoever may write cache.citizen_refs) read the
-- subscriptions from now on: what subscribe() would grant them.
DO $grant$
DECLARE
    r name;
BEGIN
    FOR r IN SELECT a.rolname FROM pg_catalog.pg_roles a
              WHERE NOT a.rolsuper
                AND pg_catalog.has_table_privilege(a.oid, 'cache.citizen_refs', 'INSERT')
                AND a.oid OPERATOR(pg_catalog.<>) (SELECT c.relowner FROM pg_catalog.pg_class c
                                                   WHERE c.oid = 'cache.citizen_refs'::pg_catalog.regclass)
              ORDER BY 1 LOOP
        PERFORM @extschema@.grant_subscription('cache.citizen_refs', r);
    END LOOP;
END
$grant$;
