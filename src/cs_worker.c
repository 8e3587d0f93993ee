/*-------------------------------------------------------------------------
 * cs_worker.c
 *	  Signals, waiting and error containment shared by the workers.
 *
 * The error discipline follows timescaledb's job runner: catch, report,
 * abort the transaction, remember the failure for the views, go on.  Which
 * errors are retried, restart the process or stop it: the error policy in
 * cs_worker.h.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <fcntl.h>
#include <unistd.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "common/hashfn.h"
#include "cs_errors.h"
#include "cs_worker.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

volatile sig_atomic_t cs_got_sigterm = false;

/* true while cs_worker_try() runs a database step */
static volatile sig_atomic_t in_db_step = false;

/*
 * SIGTERM: stop after the current step; inside a database step (a query may
 * wait on a lock), interrupt it like PostgreSQL's own die() does.
 */
static void
handle_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	cs_got_sigterm = true;
	if (in_db_step)
	{
		InterruptPending = true;
		ProcDiePending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

void
cs_worker_setup_signals(void)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, handle_sigterm);
	BackgroundWorkerUnblockSignals();
}

void
cs_worker_reload_config(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

void
cs_waiter_init(CsQueueWaiter *w, rd_kafka_queue_t *queue)
{
	static const char wake = 'w';

	if (pipe(w->pipefd) != 0 ||
		fcntl(w->pipefd[0], F_SETFL, O_NONBLOCK) != 0 ||
		fcntl(w->pipefd[1], F_SETFL, O_NONBLOCK) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("citizen_sync: could not create a wake-up pipe: %m")));
	w->queue = queue;
	rd_kafka_queue_io_event_enable(queue, w->pipefd[1], &wake, 1);
	w->wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(w->wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(w->wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(w->wes, WL_SOCKET_READABLE, w->pipefd[0], NULL, NULL);
}

void
cs_waiter_wait(CsQueueWaiter *w, long timeout_ms)
{
	WaitEvent	event;
	char		buf[64];

	if (timeout_ms != 0)
		(void) WaitEventSetWait(w->wes, timeout_ms, &event, 1, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	while (read(w->pipefd[0], buf, sizeof(buf)) > 0)
		;
	CHECK_FOR_INTERRUPTS();
}

void
cs_waiter_close(CsQueueWaiter *w)
{
	if (w->queue)
		rd_kafka_queue_io_event_enable(w->queue, -1, NULL, 0);
	if (w->wes)
		FreeWaitEventSet(w->wes);
	close(w->pipefd[0]);
	close(w->pipefd[1]);
	memset(w, 0, sizeof(*w));
}

/* errcontext of every step: which worker, for which database */
static void
worker_context(void *arg)
{
	const CsWorkerSlot *slot = (const CsWorkerSlot *) arg;

	errcontext("citizen_sync %s for database \"%s\"",
			   cs_shmem_kind_name(cs_shmem_slot_kind(slot)),
			   cs_shmem_slot_database(slot));
}

/* Keep a caught error in the slot (last_error) and in its error ring. */
static void
record_error(CsWorkerSlot *slot, const ErrorData *edata)
{
	CsErrorReport r = {CS_ERROR_DATABASE, edata->sqlerrcode, NULL, edata->message,
	edata->detail, edata->hint, edata->context};

	cs_shmem_set_error(slot, edata->message);
	cs_shmem_set_state(slot, CS_STATE_ERROR);
	cs_errors_add(slot, &r);
}

bool
cs_worker_try(CsWorkerSlot *slot, void (*step) (void *), void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ErrorContextCallback errcallback;
	volatile bool ok = true;

	in_db_step = true;
	if (cs_got_sigterm)
	{
		InterruptPending = true;
		ProcDiePending = true;
	}
	errcallback.callback = worker_context;
	errcallback.arg = slot;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	PG_TRY();
	{
		step(arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		in_db_step = false;
		error_context_stack = errcallback.previous;
		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		record_error(slot, edata);
		FreeErrorData(edata);
		MemoryContextSwitchTo(oldcxt);
		RESUME_INTERRUPTS();
		ok = false;
	}
	PG_END_TRY();
	error_context_stack = errcallback.previous;
	in_db_step = false;
	return ok;
}

void
cs_worker_sleep(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

void
cs_tx_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "citizen_sync: SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, activity);
}

void
cs_tx_commit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	pgstat_report_stat(false);	/* let autovacuum see the workers' writes */
}

/*
 * Rate limit of log lines: a small table of recent conditions, keyed by a
 * hash of their key text.  A full table forgets its oldest condition.
 */
#define LOG_LIMIT_ENTRIES	64

typedef struct LogLimitEntry
{
	uint32		hash;
	TimestampTz last_logged;	/* 0 = free */
	int64		suppressed;
} LogLimitEntry;

static LogLimitEntry log_limits[LOG_LIMIT_ENTRIES];

bool
cs_log_allowed(const char *key, int64 *suppressed)
{
	uint32		h = hash_bytes((const unsigned char *) key, strlen(key));
	TimestampTz now = GetCurrentTimestamp();
	LogLimitEntry *e = NULL;
	LogLimitEntry *oldest = &log_limits[0];

	for (int i = 0; i < LOG_LIMIT_ENTRIES && e == NULL; i++)
	{
		if (log_limits[i].last_logged != 0 && log_limits[i].hash == h)
			e = &log_limits[i];
		else if (log_limits[i].last_logged < oldest->last_logged)
			oldest = &log_limits[i];
	}
	if (e != NULL &&
		!TimestampDifferenceExceeds(e->last_logged, now, CS_LOG_REPEAT_INTERVAL_S * 1000))
	{
		e->suppressed++;
		return false;
	}
	if (e == NULL)
	{
		e = oldest;
		e->hash = h;
		e->suppressed = 0;
	}
	*suppressed = e->suppressed;
	e->suppressed = 0;
	e->last_logged = now;
	return true;
}

/*
 * The condition a librdkafka line reports, as a rate-limit key: without the
 * "[thrd:...]: " prefix a log line has and an error event has not, cut
 * before the first " (" (durations, "N identical error(s) suppressed",
 * "(manual)"), digits dropped (offsets, counts).
 */
static void
kafka_condition_key(const char *text, char *key, size_t keylen)
{
	const char *p = text;
	const char *end;
	size_t		k = 0;

	if (strncmp(p, "[thrd:", 6) == 0 && (end = strstr(p, "]: ")) != NULL)
		p = end + 3;
	end = strstr(p, " (");
	if (end == NULL)
		end = p + strlen(p);
	for (k = 0; p < end && k + 1 < keylen; p++)
		if (!isdigit((unsigned char) *p))
			key[k++] = *p;
	key[k] = '\0';
}

/*
 * Log one librdkafka condition, once per CS_LOG_REPEAT_INTERVAL_S, naming
 * the worker's database.  librdkafka reports most conditions twice (a log
 * line and an error event with the same text): both share one key, so the
 * second is a suppressed repeat.
 */
void
cs_worker_log_kafka_condition(const char *what, const char *text)
{
	char		key[256];
	int64		suppressed;
	CsWorkerSlot *slot = cs_shmem_my_slot();

	kafka_condition_key(text, key, sizeof(key));
	if (!cs_log_allowed(key, &suppressed))
		return;
	ereport(LOG,
			(errmsg("citizen_sync: %s for database \"%s\": kafka %s: %s",
					slot && cs_shmem_slot_kind(slot) == CS_WORKER_PUBLISHER ? "publisher" : "consumer",
					slot ? cs_shmem_slot_database(slot) : "?", what, text),
			 suppressed > 0 ?
			 errdetail_internal("%lld similar line(s) suppressed in the last %d s.",
								(long long) suppressed, CS_LOG_REPEAT_INTERVAL_S) : 0,
			 strstr(text, "might require SASL") ?
			 errhint("librdkafka says this whenever a broker closes a new connection, which a broker that is down or restarting also does; check security.protocol only if the broker is up.") : 0));
}

void
cs_worker_log_kafka(rd_kafka_event_t *ev)
{
	const char *fac,
			   *str;
	int			level;

	if (rd_kafka_event_log(ev, &fac, &str, &level) == 0 && level <= 4)
		cs_worker_log_kafka_condition(fac, str);
}

bool
cs_worker_kafka_error(CsWorkerSlot *slot, rd_kafka_event_t *ev)
{
	const char *text = rd_kafka_event_error_string(ev);
	bool		fatal = rd_kafka_event_error_is_fatal(ev);
	char		msg[512];
	CsErrorReport r = {CS_ERROR_KAFKA, 0, rd_kafka_err2name(rd_kafka_event_error(ev)),
	text, NULL, NULL, NULL};

	snprintf(msg, sizeof(msg), "Kafka: %s", text);
	cs_shmem_set_error(slot, msg);
	if (fatal)
		r.detail = "librdkafka reported this error as fatal.";
	cs_errors_add(slot, &r);
	if (!fatal)
		cs_worker_log_kafka_condition("error", text);
	return fatal;
}

void
cs_worker_session_settings(void)
{
	SetConfigOption("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION);
	/* no object of another schema can stand in for a built-in */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
}

bool
cs_extension_ready(char *msg, size_t msglen, char *hint, size_t hintlen)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;
	const char *db = get_database_name(MyDatabaseId);

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("citizen_sync"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (version == NULL)
	{
		snprintf(msg, msglen, "extension citizen_sync is not installed in database \"%s\"", db);
		snprintf(hint, hintlen, "Run CREATE EXTENSION citizen_sync in database \"%s\".", db);
		return false;
	}
	if (strcmp(version, CS_EXTVERSION) != 0)
	{
		snprintf(msg, msglen,
				 "database \"%s\" has citizen_sync %s but the loaded library is %s",
				 db, version, CS_EXTVERSION);
		snprintf(hint, hintlen,
				 "Run ALTER EXTENSION citizen_sync UPDATE in database \"%s\"; the worker starts once the versions match.",
				 db);
		return false;
	}
	return true;
}
