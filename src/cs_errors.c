/*-------------------------------------------------------------------------
 * cs_errors.c
 *	  Recent errors of each worker in shared memory, and the SQL function
 *	  behind the view citizen_sync.worker_errors.  See cs_errors.h.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_errors.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(citizen_sync_worker_errors);

typedef struct CsErrorEntry
{
	TimestampTz first_at;
	TimestampTz last_at;
	int64		repeats;		/* times seen in a row; 0 = empty entry */
	CsWorkerKind kind;
	pid_t		pid;
	CsErrorSource source;
	int			sqlerrcode;
	char		database[NAMEDATALEN];
	char		kafka_code[64];
	char		message[512];
	char		detail[512];
	char		hint[256];
	char		context[1024];
} CsErrorEntry;

typedef struct CsErrorRing
{
	int			newest;			/* index of the newest entry, -1 none */
	CsErrorEntry entries[CS_ERRORS_PER_WORKER];
} CsErrorRing;

typedef struct CsErrorsShared
{
	LWLock	   *lock;
	CsErrorRing rings[CS_MAX_WORKERS];
} CsErrorsShared;

static CsErrorsShared *cs_errors = NULL;

#define WORKER_ERRORS_COLS 13

Size
cs_errors_shmem_size(void)
{
	return MAXALIGN(sizeof(CsErrorsShared));
}

void
cs_errors_shmem_request(void)
{
	RequestAddinShmemSpace(cs_errors_shmem_size());
	RequestNamedLWLockTranche("citizen_sync_errors", 1);
}

/* Called with AddinShmemInitLock held. */
void
cs_errors_shmem_startup(void)
{
	bool		found;

	cs_errors = ShmemInitStruct("citizen_sync_errors", sizeof(CsErrorsShared), &found);
	if (!found)
	{
		memset(cs_errors, 0, sizeof(CsErrorsShared));
		cs_errors->lock = &(GetNamedLWLockTranche("citizen_sync_errors"))->lock;
		for (int i = 0; i < CS_MAX_WORKERS; i++)
			cs_errors->rings[i].newest = -1;
	}
}

static void
copy_text(char *dst, const char *src, size_t size)
{
	strlcpy(dst, src ? src : "", size);
}

/*
 * Copy an error context, each line cut to CONTEXT_LINE_MAX bytes: the SQL
 * statement PL/pgSQL or SPI puts first must not crowd out the lines that say
 * where (batch, offsets, event, worker).
 */
#define CONTEXT_LINE_MAX 160

static void
copy_context(char *dst, const char *src, size_t size)
{
	StringInfoData buf;

	if (src == NULL)
	{
		dst[0] = '\0';
		return;
	}
	initStringInfo(&buf);
	while (*src)
	{
		size_t		len = strcspn(src, "\n");

		if (buf.len > 0)
			appendStringInfoChar(&buf, '\n');
		if (len > CONTEXT_LINE_MAX)
		{
			appendBinaryStringInfo(&buf, src, pg_mbcliplen(src, len, CONTEXT_LINE_MAX));
			appendStringInfoString(&buf, "...");
		}
		else
			appendBinaryStringInfo(&buf, src, len);
		src += len;
		if (*src == '\n')
			src++;
	}
	strlcpy(dst, buf.data, size);
	pfree(buf.data);
}

static bool
same_error(const CsErrorEntry *e, const CsErrorReport *r)
{
	return e->repeats > 0 && e->source == r->source &&
		e->sqlerrcode == r->sqlerrcode && e->pid == MyProcPid &&
		strcmp(e->kafka_code, r->kafka_code ? r->kafka_code : "") == 0 &&
		strncmp(e->message, r->message ? r->message : "", sizeof(e->message) - 1) == 0;
}

void
cs_errors_add(const CsWorkerSlot *slot, const CsErrorReport *report)
{
	int			i = cs_shmem_slot_index(slot);
	CsErrorRing *ring;
	CsErrorEntry *e;
	TimestampTz now = GetCurrentTimestamp();
	char		context[sizeof(((CsErrorEntry *) NULL)->context)];

	if (cs_errors == NULL || i < 0 || i >= CS_MAX_WORKERS)
		return;
	copy_context(context, report->context, sizeof(context));
	ring = &cs_errors->rings[i];
	LWLockAcquire(cs_errors->lock, LW_EXCLUSIVE);
	if (ring->newest >= 0 && same_error(&ring->entries[ring->newest], report))
	{
		e = &ring->entries[ring->newest];
		e->repeats++;
		e->last_at = now;
		/* the latest detail and context (offsets move on) */
		copy_text(e->detail, report->detail, sizeof(e->detail));
		strlcpy(e->context, context, sizeof(e->context));
		LWLockRelease(cs_errors->lock);
		return;
	}
	ring->newest = (ring->newest + 1) % CS_ERRORS_PER_WORKER;
	e = &ring->entries[ring->newest];
	e->first_at = e->last_at = now;
	e->repeats = 1;
	e->kind = cs_shmem_slot_kind(slot);
	e->pid = MyProcPid;
	e->source = report->source;
	e->sqlerrcode = report->sqlerrcode;
	copy_text(e->database, cs_shmem_slot_database(slot), sizeof(e->database));
	copy_text(e->kafka_code, report->kafka_code, sizeof(e->kafka_code));
	copy_text(e->message, report->message, sizeof(e->message));
	copy_text(e->detail, report->detail, sizeof(e->detail));
	copy_text(e->hint, report->hint, sizeof(e->hint));
	strlcpy(e->context, context, sizeof(e->context));
	LWLockRelease(cs_errors->lock);
}

void
cs_errors_clear(int i)
{
	if (cs_errors == NULL)
		return;
	LWLockAcquire(cs_errors->lock, LW_EXCLUSIVE);
	memset(&cs_errors->rings[i], 0, sizeof(CsErrorRing));
	cs_errors->rings[i].newest = -1;
	LWLockRelease(cs_errors->lock);
}

static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = (s[0] == '\0');
	return *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

/* Fill one worker_errors row. */
static void
error_row(const CsErrorEntry *e, Datum *v, bool *n)
{
	memset(n, 0, sizeof(bool) * WORKER_ERRORS_COLS);
	v[0] = TimestampTzGetDatum(e->last_at);
	v[1] = TimestampTzGetDatum(e->first_at);
	v[2] = Int64GetDatum(e->repeats);
	v[3] = CStringGetTextDatum(cs_shmem_kind_name(e->kind));
	v[4] = CStringGetTextDatum(e->database);
	v[5] = Int32GetDatum(e->pid);
	v[6] = CStringGetTextDatum(e->source == CS_ERROR_KAFKA ? "kafka" : "database");
	n[7] = (e->sqlerrcode == 0);
	v[7] = n[7] ? (Datum) 0 : CStringGetTextDatum(unpack_sql_state(e->sqlerrcode));
	v[8] = text_or_null(e->kafka_code, &n[8]);
	v[9] = CStringGetTextDatum(e->message);
	v[10] = text_or_null(e->detail, &n[10]);
	v[11] = text_or_null(e->hint, &n[11]);
	v[12] = text_or_null(e->context, &n[12]);
}

/* citizen_sync.worker_errors_raw(): the recorded errors, newest first per worker. */
Datum
citizen_sync_worker_errors(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CsErrorRing *ring = palloc(sizeof(CsErrorRing));

	InitMaterializedSRF(fcinfo, 0);
	if (cs_errors == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("citizen_sync shared memory is not initialised"),
				 errhint("Add citizen_sync to shared_preload_libraries and restart the server.")));
	for (int i = 0; i < CS_MAX_WORKERS; i++)
	{
		/* one ring at a time: a short copy under the shared lock */
		LWLockAcquire(cs_errors->lock, LW_SHARED);
		memcpy(ring, &cs_errors->rings[i], sizeof(CsErrorRing));
		LWLockRelease(cs_errors->lock);
		for (int k = 0; ring->newest >= 0 && k < CS_ERRORS_PER_WORKER; k++)
		{
			const CsErrorEntry *e =
				&ring->entries[(ring->newest - k + CS_ERRORS_PER_WORKER) % CS_ERRORS_PER_WORKER];
			Datum		v[WORKER_ERRORS_COLS];
			bool		n[WORKER_ERRORS_COLS];

			if (e->repeats == 0)
				break;
			error_row(e, v, n);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
		}
	}
	pfree(ring);
	return (Datum) 0;
}
