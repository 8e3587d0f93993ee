# citizen_sync — PGXS build.
#
#   make                 build the extension library and its SQL scripts
#   make install         install it into the server found by pg_config
#   make installcheck    the pg_regress suites (sql/, expected/) on a temporary,
#                        preloaded instance (UTF8, locale C), against the
#                        INSTALLED extension: after `make install` (or the
#                        Debian package), as a user other than root
#   make check-tap       the TAP tests (test/t/*.pl, or PROVE_TESTS=...): builds
#                        the embedded Kafka broker (test/broker) first; clusters
#                        in locale C.UTF-8; same conditions as installcheck
#   make check-all       both
#   test/run_all.sh      everything, as CI does (installs what it needs, runs as
#                        postgres when started as root, adds the broker smoke
#                        test and the parser fuzzing)
#
# SQL layout:
#   sql/install/*.sql                     the install script of EXTVERSION, one
#                                         file per concern, concatenated in name order
#   sql/upgrade/A--B/*.sql                the upgrade script A -> B, likewise
#   sql/citizen_sync--0.1.0.sql           the released 0.1.0 install script, kept
#                                         verbatim so the upgrade test can start there

EXTENSION    = citizen_sync
EXTVERSION   = 0.2.0
MODULE_big   = citizen_sync
OBJS         = $(patsubst %.c,%.o,$(wildcard src/*.c))

UPGRADES     = $(notdir $(wildcard sql/upgrade/*--*))
DATA_built   = sql/$(EXTENSION)--$(EXTVERSION).sql \
               $(patsubst %,sql/$(EXTENSION)--%.sql,$(UPGRADES))
DATA         = sql/$(EXTENSION)--0.1.0.sql

REGRESS      = $(patsubst sql/%.sql,%,$(sort $(filter-out sql/$(EXTENSION)%,$(wildcard sql/*.sql))))
REGRESS_OPTS = --temp-instance=tmp_check_regress --temp-config=test/citizen_sync_regress.conf \
               --load-extension=$(EXTENSION)
PROVE_FLAGS  = -I $(srcdir)/test/perl
ENCODING     = UTF8
NO_LOCALE    = 1

PG_CONFIG   ?= pg_config
PKG_CONFIG  ?= pkg-config

PG_CPPFLAGS  = -I$(srcdir)/src $(shell $(PKG_CONFIG) --cflags rdkafka json-c) \
               -DCS_EXTVERSION=\"$(EXTVERSION)\"
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers \
               -Wno-sign-compare -Wno-cast-function-type
SHLIB_LINK   = $(shell $(PKG_CONFIG) --libs rdkafka json-c)

EXTRA_CLEAN  = $(DATA_built) tmp_check_regress

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The install script and each upgrade script are built from their parts.
sql/$(EXTENSION)--$(EXTVERSION).sql: $(sort $(wildcard sql/install/*.sql))
	cat $^ > $@

.SECONDEXPANSION:
$(patsubst %,sql/$(EXTENSION)--%.sql,$(UPGRADES)): sql/$(EXTENSION)--%.sql: $$(sort $$(wildcard sql/upgrade/%/*.sql))
	cat $^ > $@

# The library's version must be the control file's default_version.
all: check-version
check-version:
	@grep -q "^default_version = '$(EXTVERSION)'" $(EXTENSION).control || \
	  { echo "citizen_sync.control: default_version is not $(EXTVERSION)" >&2; exit 1; }
.PHONY: check-version

# --- tests ------------------------------------------------------------------
# PostgreSQL refuses to run as root, and TAP clusters take their encoding from
# the locale (SQL_ASCII in a root shell without LANG): the test targets check
# the first and set the second.
CS_TEST_LOCALE ?= C.UTF-8
PROVE_TESTS    ?= test/t/*.pl

installcheck check-tap: export LC_ALL = $(CS_TEST_LOCALE)
installcheck check-tap: export LANG = $(CS_TEST_LOCALE)
installcheck: test-prereqs

check-tap: test-prereqs test-broker
	$(prove_installcheck)

check-all:
	$(MAKE) installcheck
	$(MAKE) check-tap

test-broker:
	$(MAKE) -C test/broker

test-prereqs:
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "The tests start PostgreSQL servers, which refuse to run as root. Run them as an" >&2; \
	  echo "ordinary user that can write this directory, e.g. as root:" >&2; \
	  echo "  chown -R postgres: . && runuser -u postgres -- make $(MAKECMDGOALS) PG_CONFIG=$(PG_CONFIG)" >&2; \
	  echo "or run bash test/run_all.sh, which does that in a copy of the tree." >&2; \
	  exit 1; \
	fi
	@test -f '$(DESTDIR)$(pkglibdir)/$(EXTENSION)$(DLSUFFIX)' -a \
	      -f '$(DESTDIR)$(datadir)/extension/$(EXTENSION)--$(EXTVERSION).sql' || \
	  { echo "citizen_sync $(EXTVERSION) is not installed in $(pkglibdir): run 'make install' as root" >&2; \
	    echo "(or install the postgresql-15-citizen-sync package) first." >&2; exit 1; }
.PHONY: check-tap check-all test-broker test-prereqs
