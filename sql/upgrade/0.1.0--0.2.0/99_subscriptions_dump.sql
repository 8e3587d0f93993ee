------------------------------------------------------------------------------
-- pg_dump keeps the subscriptions a DBA made, not the built-in one (which
-- CREATE EXTENSION makes).  Registered last, in the install script and in
-- the upgrade alike: pg_extension_config_dump() appends to the extension's
-- lists, and a fresh install must list its conditions in the order of an
-- updated one (test/t/002_upgrade.pl).
------------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('@extschema@.subscription_catalog', 'WHERE NOT builtin');

-- The sync users of 0.1.0 (the roles granted INSERT on cache.citizen_refs)
-- read the subscriptions from now on: what subscribe() would grant them.
DO $grant$
DECLARE
    r name;
BEGIN
    FOR r IN SELECT DISTINCT a.rolname
               FROM pg_catalog.pg_class c
                    CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) g
                    JOIN pg_catalog.pg_roles a ON a.oid OPERATOR(pg_catalog.=) g.grantee
              WHERE c.oid OPERATOR(pg_catalog.=) 'cache.citizen_refs'::pg_catalog.regclass
                AND g.privilege_type OPERATOR(pg_catalog.=) 'INSERT'
                AND g.grantee OPERATOR(pg_catalog.<>) c.relowner
                AND NOT a.rolsuper
              ORDER BY 1 LOOP
        PERFORM @extschema@.grant_subscription('cache.citizen_refs', r);
    END LOOP;
END
$grant$;
