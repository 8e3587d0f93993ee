------------------------------------------------------------------------------
-- pg_dump keeps the subscriptions a DBA made, not the built-in one (which
-- CREATE EXTENSION makes).  Registered last, in the install script and in
-- the upgrade alike: pg_extension_config_dump() appends to the extension's
-- lists, and a fresh install must list its conditions in the order of an
-- updated one (test/t/002_upgrade.pl).
------------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('@extschema@.subscription_catalog', 'WHERE NOT builtin');
