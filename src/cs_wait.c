/*-------------------------------------------------------------------------
 * cs_wait.c
 *	  Read-your-writes (citizen_sync.wait_for) and change notifications.
 *
 * wait_for(target, key, version, timeout) returns true as soon as target
 * holds key at version or newer (a hard delete's tombstone counts), false at
 * the timeout.  It does not poll: it sleeps on a condition variable in a
 * small shared-memory area of its own (one per database, hashed into a few
 * slots), which the consumer broadcasts after each committed batch; every
 * wakeup re-reads the row with a new SPI query, hence a new snapshot under
 * READ COMMITTED.  Under REPEATABLE READ or SERIALIZABLE the transaction's
 * snapshot cannot see later commits: wait_for answers from it at once if
 * the version is there, and otherwise raises an error rather than sleeping
 * in vain.
 *
 * The row is read as the caller, who must be allowed to SELECT the target;
 * only the subscription catalog's key column and the tombstones (internal
 * tables, revoked from PUBLIC) are read as their owner, for that one key of
 * a target the caller may read.
 *
 * Change notifications: for each subscription listed in
 * citizen_sync.subscription_notify, the consumer queues, in the batch's
 * transaction, NOTIFY channel with a JSON payload naming the target and the
 * keys applied and deleted, or {"target": ..., "reread": true} when they are
 * more than max_keys or do not fit in NOTIFY's payload.  PostgreSQL delivers
 * notifications at commit, in commit order, and never for a transaction that
 * rolled back: a batch retried after a failure notifies once.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "cs_subscription.h"
#include "cs_wait.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(citizen_sync_wait_for);

/* Databases share these slots by hash: a collision is a spurious wakeup. */
#define CS_WAIT_SLOTS	16

/* NOTIFY's payload limit is 8000 bytes; keep a margin. */
#define CS_NOTIFY_MAX_PAYLOAD	7900

typedef struct CsWaitShared
{
	ConditionVariable cv[CS_WAIT_SLOTS];
} CsWaitShared;

static CsWaitShared *cs_wait = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
cs_wait_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CsWaitShared)));
}

static void
cs_wait_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cs_wait = ShmemInitStruct("citizen_sync_wait", sizeof(CsWaitShared), &found);
	if (!found)
		for (int i = 0; i < CS_WAIT_SLOTS; i++)
			ConditionVariableInit(&cs_wait->cv[i]);
	LWLockRelease(AddinShmemInitLock);
}

void
cs_wait_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = cs_wait_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = cs_wait_shmem_startup;
}

static ConditionVariable *
my_database_cv(void)
{
	return &cs_wait->cv[MyDatabaseId % CS_WAIT_SLOTS];
}

void
cs_wait_wake(void)
{
	if (cs_wait != NULL)
		ConditionVariableBroadcast(my_database_cv());
}

/* ---------------------------------------------------------------------
 * wait_for
 * ---------------------------------------------------------------------
 */

/* What one wait_for() call checks, prepared once per call. */
typedef struct WaitCheck
{
	SPIPlanPtr	row_plan;		/* as the caller: the target's row */
	SPIPlanPtr	tombstone_plan; /* as the owner: its tombstone */
	Datum		row_args[2];
	Datum		tombstone_args[3];
	Oid			owner;			/* of the extension's internal tables */
} WaitCheck;

static char *
qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

static void
argument_error(const char *msg, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s", msg),
			 errhint("%s", hint)));
}

/* The timeout in microseconds; refuses a negative one. */
static int64
timeout_usecs(Interval *timeout)
{
	int64		usecs;
	int64		cap = INT64CONST(86400) * USECS_PER_SEC * 365;

	if (timeout->month < 0 || timeout->day < 0 || timeout->time < 0)
		argument_error("wait_for timeout must not be negative",
					   "Pass an interval such as '200 ms'; '0' checks once without waiting.");
	if (timeout->month > 12 || timeout->day > 365)
		return cap;
	usecs = timeout->time +
		((int64) timeout->month * DAYS_PER_MONTH + timeout->day) * USECS_PER_DAY;
	return Min(usecs, cap);
}

/*
 * Execute a SELECT plan (at most one row, a new snapshot) as role, or as the
 * caller if InvalidOid; the caller's identity is restored on error too.
 */
static void
execute_as(SPIPlanPtr plan, Datum *args, Oid role)
{
	Oid			save_userid;
	int			save_sec_context;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	if (role != InvalidOid)
		SetUserIdAndSecContext(role, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		/* read_only = false: a new snapshot for the query */
		if (SPI_execute_plan(plan, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "citizen_sync: wait_for's query failed");
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
}

static bool
plan_finds_row(SPIPlanPtr plan, Datum *args, Oid role)
{
	bool		found;

	execute_as(plan, args, role);
	found = SPI_processed > 0;
	SPI_freetuptable(SPI_tuptable);
	return found;
}

static Oid
internal_table(const char *name, Oid *owner)
{
	Oid			nsp = get_namespace_oid("citizen_sync", false);
	Oid			relid = get_relname_relid(name, nsp);
	HeapTuple	tup;

	if (relid == InvalidOid)
		elog(ERROR, "citizen_sync: table citizen_sync.%s is missing", name);
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	*owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return relid;
}

/* The subscription's key column of target, read as the catalog's owner. */
static char *
subscribed_key_column(Oid target, Oid owner)
{
	Oid			argtype = OIDOID;
	Datum		arg = ObjectIdGetDatum(target);
	SPIPlanPtr	plan;
	char	   *column = NULL;

	plan = SPI_prepare("SELECT c.key_column::pg_catalog.text FROM citizen_sync.subscription_catalog c"
					   " WHERE c.target OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass",
					   1, &argtype);
	if (plan == NULL)
		elog(ERROR, "citizen_sync: preparing wait_for's catalog lookup failed");
	execute_as(plan, &arg, owner);
	if (SPI_processed > 0)
		column = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	SPI_freetuptable(SPI_tuptable);
	SPI_freeplan(plan);
	return column;
}

/*
 * Prepare the checks of key at version in target: refuses a caller without
 * SELECT on target and a target that is not subscribed.
 */
static void
prepare_check(Oid target, const char *key, int64 version, WaitCheck *check)
{
	Oid			owner;
	char	   *column;
	AttrNumber	attnum;
	Oid			keytype,
				typinput,
				typioparam,
				typoutput;
	bool		typisvarlena;
	Datum		keyval;
	Oid			row_types[2];
	Oid			tombstone_types[3] = {OIDOID, TEXTOID, INT8OID};
	char	   *sql;

	if (get_rel_name(target) == NULL)
		argument_error("wait_for target does not exist",
					   "Pass a subscribed cache table, e.g. 'cache.citizen_refs'.");
	if (pg_class_aclcheck(target, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to wait for table %s", qualified_name(target)),
				 errdetail("wait_for reads the cached row as its caller."),
				 errhint("Grant SELECT on the table to the role (the service and readonly roles have it on schema cache).")));
	internal_table("subscription_catalog", &owner);
	check->owner = owner;
	column = subscribed_key_column(target, owner);
	if (column == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table %s is not subscribed", qualified_name(target)),
				 errdetail("citizen_sync.subscriptions lists the subscribed tables of this database."),
				 errhint("Subscribe the table with citizen_sync.subscribe() or pass a subscribed one.")));
	attnum = get_attnum(target, column);
	if (attnum == InvalidAttrNumber)
		elog(ERROR, "citizen_sync: key column \"%s\" of table %s is missing",
			 column, get_rel_name(target));
	keytype = get_atttype(target, attnum);
	getTypeInputInfo(keytype, &typinput, &typioparam);
	keyval = OidInputFunctionCall(typinput, (char *) key, typioparam, -1);
	getTypeOutputInfo(keytype, &typoutput, &typisvarlena);

	row_types[0] = keytype;
	row_types[1] = INT8OID;
	sql = psprintf("SELECT 1 FROM %s WHERE %s OPERATOR(pg_catalog.=) $1"
				   " AND event_version OPERATOR(pg_catalog.>=) $2",
				   qualified_name(target), quote_identifier(column));
	check->row_plan = SPI_prepare(sql, 2, row_types);
	if (check->row_plan == NULL)
		elog(ERROR, "citizen_sync: preparing wait_for's row check failed: %s",
			 SPI_result_code_string(SPI_result));
	check->row_args[0] = keyval;
	check->row_args[1] = Int64GetDatum(version);

	/* tombstones hold the key's text form */
	check->tombstone_plan = SPI_prepare(
		"SELECT 1 FROM citizen_sync.tombstones t"
		" WHERE t.target OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass"
		" AND t.key OPERATOR(pg_catalog.=) $2 AND t.event_version OPERATOR(pg_catalog.>=) $3",
		3, tombstone_types);
	if (check->tombstone_plan == NULL)
		elog(ERROR, "citizen_sync: preparing wait_for's tombstone check failed");
	check->tombstone_args[0] = ObjectIdGetDatum(target);
	check->tombstone_args[1] = CStringGetTextDatum(OidOutputFunctionCall(typoutput, keyval));
	check->tombstone_args[2] = Int64GetDatum(version);
}

static bool
version_arrived(WaitCheck *check)
{
	return plan_finds_row(check->row_plan, check->row_args, InvalidOid) ||
		plan_finds_row(check->tombstone_plan, check->tombstone_args, check->owner);
}

/*
 * citizen_sync.wait_for(target regclass, key text, version bigint,
 *						  timeout interval) RETURNS boolean
 */
Datum
citizen_sync_wait_for(PG_FUNCTION_ARGS)
{
	Oid			target;
	char	   *key;
	int64		version;
	TimestampTz deadline;
	WaitCheck	check;
	ConditionVariable *cv;
	bool		arrived = false;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		argument_error("wait_for target and key must not be null",
					   "Pass the cache table and the key as text, e.g. wait_for('cache.citizen_refs', '42', v, '200 ms').");
	if (PG_ARGISNULL(2))
		argument_error("wait_for version must not be null",
					   "Pass the version the source's citizen_sync.current_version() returned.");
	if (PG_ARGISNULL(3))
		argument_error("wait_for timeout must not be null",
					   "Pass an interval such as '200 ms'.");
	target = PG_GETARG_OID(0);
	key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	version = PG_GETARG_INT64(2);
	deadline = GetCurrentTimestamp() + timeout_usecs(PG_GETARG_INTERVAL_P(3));
	if (cs_wait == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("citizen_sync's shared memory is not set up"),
				 errhint("Add citizen_sync to shared_preload_libraries and restart the server.")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "citizen_sync: SPI_connect failed");
	prepare_check(target, key, version, &check);

	if (IsolationUsesXactSnapshot())
	{
		/* the transaction's snapshot: a later commit can never show */
		if (!version_arrived(&check))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("wait_for cannot wait under REPEATABLE READ or SERIALIZABLE isolation"),
					 errdetail("Version " INT64_FORMAT " of key \"%s\" is not in this transaction's snapshot, and later commits will not become visible to it.",
							   version, key),
					 errhint("Call wait_for in its own READ COMMITTED transaction before the snapshot is taken.")));
		SPI_finish();
		PG_RETURN_BOOL(true);
	}

	/*
	 * Prepare to sleep before each check: a batch that commits after the
	 * check broadcasts to us and the sleep returns at once.
	 */
	cv = my_database_cv();
	ConditionVariablePrepareToSleep(cv);
	for (;;)
	{
		long		remaining_ms;

		CHECK_FOR_INTERRUPTS();
		if (version_arrived(&check))
		{
			arrived = true;
			break;
		}
		remaining_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining_ms <= 0)
			break;
		(void) ConditionVariableTimedSleep(cv, remaining_ms, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	SPI_finish();
	PG_RETURN_BOOL(arrived);
}

/* ---------------------------------------------------------------------
 * Change notifications
 * ---------------------------------------------------------------------
 */

#define NOTIFY_SQL \
	"SELECT n.target::pg_catalog.oid, n.channel, n.max_keys FROM citizen_sync.subscription_notify n"

/* Append events' keys of sub with result r as a JSON array; false if over limit. */
static void
append_keys(StringInfo buf, const char *name, const CsEvent *events,
			const CsApplyResult *results, int n, int sub, CsApplyResult r)
{
	bool		first = true;

	appendStringInfo(buf, ", \"%s\": [", name);
	for (int i = 0; i < n; i++)
	{
		if (events[i].sub != sub || results[i] != r || events[i].key == NULL)
			continue;
		if (!first)
			appendStringInfoString(buf, ", ");
		escape_json(buf, events[i].key);
		first = false;
	}
	appendStringInfoChar(buf, ']');
}

/* Queue the notification of sub's changes on channel. */
static void
notify_subscription(int sub, const char *channel, int max_keys,
					const CsEvent *events, const CsApplyResult *results, int n)
{
	StringInfoData buf;
	int			changed = 0;

	for (int i = 0; i < n; i++)
		if (events[i].sub == sub &&
			(results[i] == CS_RESULT_APPLIED || results[i] == CS_RESULT_DELETED))
			changed++;
	if (changed == 0)
		return;
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"target\": ");
	escape_json(&buf, cs_subscription_get(sub)->target_name);
	if (changed <= max_keys)
	{
		append_keys(&buf, "applied", events, results, n, sub, CS_RESULT_APPLIED);
		append_keys(&buf, "deleted", events, results, n, sub, CS_RESULT_DELETED);
	}
	if (changed > max_keys || buf.len + 1 > CS_NOTIFY_MAX_PAYLOAD)
	{
		resetStringInfo(&buf);
		appendStringInfoString(&buf, "{\"target\": ");
		escape_json(&buf, cs_subscription_get(sub)->target_name);
		appendStringInfoString(&buf, ", \"reread\": true");
	}
	appendStringInfoChar(&buf, '}');
	Async_Notify(channel, buf.data);
	pfree(buf.data);
}

void
cs_wait_notify_changes(const CsEvent *events, const CsApplyResult *results, int n)
{
	static SPIPlanPtr plan = NULL;
	Oid			notify_relid;
	Oid			owner;
	bool		any = false;
	SPITupleTable *tuptable;
	uint64		rows;

	for (int i = 0; i < n && !any; i++)
		any = events[i].sub >= 0 &&
			(results[i] == CS_RESULT_APPLIED || results[i] == CS_RESULT_DELETED);
	if (!any)
		return;
	/* set_notify() grants it; without it nothing was opted in for us */
	notify_relid = internal_table("subscription_notify", &owner);
	if (pg_class_aclcheck(notify_relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		return;
	if (plan == NULL)
	{
		plan = SPI_prepare(NOTIFY_SQL, 0, NULL);
		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "citizen_sync: preparing the change notification lookup failed");
	}
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "citizen_sync: reading citizen_sync.subscription_notify failed");
	tuptable = SPI_tuptable;
	rows = SPI_processed;
	for (uint64 r = 0; r < rows; r++)
	{
		HeapTuple	tup = tuptable->vals[r];
		bool		isnull;
		Oid			target = DatumGetObjectId(SPI_getbinval(tup, tuptable->tupdesc, 1, &isnull));
		char	   *channel = SPI_getvalue(tup, tuptable->tupdesc, 2);
		int			max_keys = DatumGetInt32(SPI_getbinval(tup, tuptable->tupdesc, 3, &isnull));

		for (int s = 0; s < cs_subscription_count(); s++)
			if (cs_subscription_get(s)->target == target)
				notify_subscription(s, channel, max_keys, events, results, n);
	}
	SPI_freetuptable(tuptable);
}
