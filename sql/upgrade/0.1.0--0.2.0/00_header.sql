-- citizen_sync upgrade 0.1.0 -> 0.2.0, built by the Makefile from
-- sql/upgrade/0.1.0--0.2.0/*.sql in name order (one file per concern).
-- test/t/001_upgrade.pl proves that 0.1.0 with data, updated by this script,
-- has the same schema as a fresh 0.2.0 install and keeps its data.

\echo Use "ALTER EXTENSION citizen_sync UPDATE TO '0.2.0'" to load this file. \quit
