# citizen_sync — PGXS build.
#
#   make                 build the extension library and its SQL scripts
#   make install         install it into the server found by pg_config
#   make installcheck    pg_regress suites on a temporary, preloaded instance
#                        (TAP_TESTS=1 PROVE_TESTS='test/t/*.pl' also runs the TAP
#                        tests; they need test/broker built: see test/run_all.sh)
#   test/run_all.sh      everything, as CI does (installs what it needs)
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
