/*-------------------------------------------------------------------------
 * pg_stubs.c
 *	  What the event parser needs of the PostgreSQL backend, outside it.
 *
 * The fuzz harness links the parser's own sources (src/cs_event.c,
 * cs_event_scan.c, cs_timestamp.c) with libpgcommon and libpgport, which give
 * the real UTF-8 verifier and snprintf; the few backend symbols left are
 * here.  palloc'd memory is tracked and released after each input, so that
 * LeakSanitizer sees only what the parser itself leaks (json-c objects).
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdio.h>
#include <stdlib.h>

#include "pg_stubs.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

/* The GUC citizen_sync.max_event_size, in bytes (its default). */
int			cs_max_event_bytes = 64 * 1024;

/* As in src/backend/utils/adt/datetime.c. */
const int	day_tab[2][13] =
{
	{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 0},
	{31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 0}
};

/*
 * Only whether a timestamp is accepted matters to the harness, not its
 * value; cs_parse_iso8601 has range-checked every field before this.
 */
int
tm2timestamp(struct pg_tm *tm, fsec_t fsec, int *tzp, Timestamp *result)
{
	*result = 0;
	return 0;
}

/* palloc: malloc'd chunks, remembered until stub_release_all(). */
static void **chunks;
static size_t nchunks;
static size_t maxchunks;

void *
palloc(Size size)
{
	void	   *p = malloc(size > 0 ? size : 1);

	if (p == NULL)
		abort();
	if (nchunks == maxchunks)
	{
		maxchunks = maxchunks ? maxchunks * 2 : 64;
		chunks = realloc(chunks, maxchunks * sizeof(void *));
		if (chunks == NULL)
			abort();
	}
	chunks[nchunks++] = p;
	return p;
}

void
pfree(void *pointer)
{
	for (size_t i = nchunks; i-- > 0;)
	{
		if (chunks[i] == pointer)
		{
			chunks[i] = chunks[--nchunks];
			free(pointer);
			return;
		}
	}
	fprintf(stderr, "pfree of a pointer palloc did not return\n");
	abort();
}

char *
pnstrdup(const char *in, Size len)
{
	char	   *out;

	len = strnlen(in, len);
	out = palloc(len + 1);
	memcpy(out, in, len);
	out[len] = '\0';
	return out;
}

void
stub_release_all(void)
{
	while (nchunks > 0)
		free(chunks[--nchunks]);
}

/*
 * ereport: only cs_event_report() uses it, and the parser's contract is
 * that cs_event_parse() never raises; reaching any of these is a bug.
 */
static void
no_ereport(void)
{
	fprintf(stderr, "the parser raised an error (ereport); it must never raise\n");
	abort();
}

bool
errstart_cold(int elevel, const char *domain)
{
	no_ereport();
	return false;
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	no_ereport();
}

int
errcode(int sqlerrcode)
{
	no_ereport();
	return 0;
}

int
errmsg(const char *fmt,...)
{
	no_ereport();
	return 0;
}

int
errdetail(const char *fmt,...)
{
	no_ereport();
	return 0;
}

int
errhint(const char *fmt,...)
{
	no_ereport();
	return 0;
}

void
ExceptionalCondition(const char *conditionName, const char *errorType,
					 const char *fileName, int lineNumber)
{
	fprintf(stderr, "TRAP: %s(\"%s\", File: \"%s\", Line: %d)\n",
			errorType, conditionName, fileName, lineNumber);
	abort();
}
