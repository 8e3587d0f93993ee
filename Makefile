# citizen_sync — PGXS build.
#
#   make                 build the extension library
#   make install         install it into the server found by pg_config
#   make installcheck    pg_regress suites on a temporary, preloaded instance
#   make installcheck    also runs the TAP tests in test/t (prove)
#   test/run_all.sh      everything, as CI does (installs what it needs)

EXTENSION    = citizen_sync
EXTVERSION   = 0.1.0
MODULE_big   = citizen_sync
OBJS         = $(patsubst %.c,%.o,$(wildcard src/*.c))

DATA_built   = sql/$(EXTENSION)--$(EXTVERSION).sql
DATA         = $(wildcard sql/$(EXTENSION)--*--*.sql)

REGRESS      = $(patsubst sql/%.sql,%,$(sort $(filter-out sql/$(EXTENSION)%,$(wildcard sql/*.sql))))
REGRESS_OPTS = --temp-instance=tmp_check_regress --temp-config=test/citizen_sync_regress.conf \
               --load-extension=$(EXTENSION)
TAP_TESTS    = 1
PROVE_TESTS  = test/t/*.pl
PROVE_FLAGS  = -I $(srcdir)/test/perl
ENCODING     = UTF8
NO_LOCALE    = 1

PG_CONFIG   ?= pg_config
PKG_CONFIG  ?= pkg-config

PG_CPPFLAGS  = -I$(srcdir)/src $(shell $(PKG_CONFIG) --cflags rdkafka json-c)
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers \
               -Wno-sign-compare -Wno-cast-function-type
SHLIB_LINK   = $(shell $(PKG_CONFIG) --libs rdkafka json-c)

EXTRA_CLEAN  = sql/$(EXTENSION)--$(EXTVERSION).sql tmp_check_regress

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The install script is built from one source file.
sql/$(EXTENSION)--$(EXTVERSION).sql: sql/$(EXTENSION).sql
	cp $< $@
