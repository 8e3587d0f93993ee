/*-------------------------------------------------------------------------
 * cs_shmem.c
 *	  Shared memory of citizen_sync: worker slots, counters, publisher latch.
 *
 * Requested through shmem_request_hook (PostgreSQL 15), initialised once by
 * whoever attaches first under AddinShmemInitLock.  The only file that knows
 * the layout; see cs_shmem.h for the locking rules.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <signal.h>

#include "cs_batch.h"
#include "cs_errors.h"
#include "cs_shmem.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

/* One recorded partition; the topic is an index in the slot's table. */
typedef struct PartitionEntry
{
	int32		partition;
	int16		topic;
	int64		next_offset;
	int64		high_watermark;
} PartitionEntry;

struct CsWorkerSlot
{
	LWLock	   *lock;			/* guards everything below */
	int			pgprocno;		/* for waking the worker through its latch */
	CsWorkerStatus st;			/* st.lag is not kept: summed when read */
	uint64		generation;		/* of the assignment, +1 by set_partitions */
	int			ntopics;
	char		topics[CS_MAX_TOPICS][CS_TOPIC_LEN];
	PartitionEntry partitions[CS_MAX_PARTITIONS];	/* [0..st.nrecorded) */
};

typedef struct CsShared
{
	LWLock	   *lock;			/* the global lock: the fields below */
	int			publisher_pgprocno; /* -1 when no publisher runs */
	pid_t		publisher_pid;
	int			nconfig_problems;	/* written by the launcher only */
	CsConfigProblem config_problems[CS_MAX_CONFIG_PROBLEMS];
	CsWorkerSlot slots[CS_MAX_WORKERS];
} CsShared;

static CsShared *cs_shared = NULL;

const double cs_latency_bounds_ms[CS_LATENCY_BUCKETS] = {
	1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000,
	INFINITY
};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static CsWorkerSlot *my_slot = NULL;

#define SLOT_LOCK(slot, mode)	LWLockAcquire((slot)->lock, (mode))
#define SLOT_UNLOCK(slot)		LWLockRelease((slot)->lock)

static void
cs_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CsShared)));
	RequestNamedLWLockTranche("citizen_sync", 1 + CS_MAX_WORKERS);
	cs_errors_shmem_request();
}

static void
cs_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cs_shared = ShmemInitStruct("citizen_sync", sizeof(CsShared), &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("citizen_sync");

		memset(cs_shared, 0, sizeof(CsShared));
		cs_shared->lock = &locks[0].lock;
		cs_shared->publisher_pgprocno = -1;
		for (int i = 0; i < CS_MAX_WORKERS; i++)
		{
			cs_shared->slots[i].lock = &locks[1 + i].lock;
			cs_shared->slots[i].pgprocno = -1;
		}
	}
	cs_errors_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

void
cs_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = cs_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = cs_shmem_startup;
}

bool
cs_shmem_ready(void)
{
	return cs_shared != NULL;
}

void
cs_shmem_require(void)
{
	if (cs_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("citizen_sync shared memory is not initialised"),
				 errhint("Add citizen_sync to shared_preload_libraries and restart the server.")));
}

CsWorkerSlot *
cs_shmem_slot(int i)
{
	Assert(i >= 0 && i < CS_MAX_WORKERS);
	return &cs_shared->slots[i];
}

int
cs_shmem_slot_index(const CsWorkerSlot *slot)
{
	return slot - cs_shared->slots;
}

CsWorkerKind
cs_shmem_slot_kind(const CsWorkerSlot *slot)
{
	return slot->st.kind;
}

const char *
cs_shmem_slot_database(const CsWorkerSlot *slot)
{
	return slot->st.database;
}

/* Forget a slot's assignment (under its lock). */
static void
reset_partitions(CsWorkerSlot *slot)
{
	slot->st.npartitions = 0;
	slot->st.nrecorded = 0;
	slot->ntopics = 0;
	slot->generation++;
}

/* on_shmem_exit callback: detach from the slot, leaving its history. */
static void
detach_slot(int code, Datum arg)
{
	CsWorkerSlot *slot = my_slot;

	if (slot == NULL)
		return;
	SLOT_LOCK(slot, LW_EXCLUSIVE);
	if (slot->st.kind == CS_WORKER_PUBLISHER)
	{
		LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
		if (cs_shared->publisher_pid == MyProcPid)
		{
			cs_shared->publisher_pid = 0;
			cs_shared->publisher_pgprocno = -1;
		}
		LWLockRelease(cs_shared->lock);
	}
	if (slot->st.pid == MyProcPid)
	{
		slot->st.pid = 0;
		slot->pgprocno = -1;
		reset_partitions(slot);
		slot->st.state = code == 0 ? CS_STATE_STOPPED : CS_STATE_FAILED;
	}
	SLOT_UNLOCK(slot);
	ereport(LOG,
			(errmsg("citizen_sync: %s for database \"%s\" %s (pid %d)",
					slot->st.kind == CS_WORKER_PUBLISHER ? "publisher" : "consumer",
					slot->st.database, code == 0 ? "stopped" : "exited with an error; the launcher restarts it",
					MyProcPid)));
	my_slot = NULL;
}

void
cs_shmem_configure_slot(int i, CsWorkerKind kind, const char *database,
						const char *role, const char *group_id)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];
	CsWorkerStatus *st = &slot->st;

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	if (st->kind != kind || strcmp(st->database, database) != 0 ||
		strcmp(st->role, role) != 0 || strcmp(st->group_id, group_id) != 0)
	{
		memset(st, 0, sizeof(*st));
		st->kind = kind;
		slot->pgprocno = -1;
		reset_partitions(slot);
		strlcpy(st->database, database, NAMEDATALEN);
		strlcpy(st->role, role, NAMEDATALEN);
		strlcpy(st->group_id, group_id, sizeof(st->group_id));
		st->state = CS_STATE_STARTING;
		st->stats_reset = GetCurrentTimestamp();
		cs_errors_clear(i);
	}
	SLOT_UNLOCK(slot);
}

bool
cs_shmem_reset_stats(int i, TimestampTz now)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];
	CsWorkerStatus *st = &slot->st;
	bool		configured;

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	configured = st->kind != CS_WORKER_NONE;
	if (configured)
	{
		memset(st->results, 0, sizeof(st->results));
		st->dead_lettered = 0;
		st->batches = 0;
		st->published = 0;
		st->publish_failures = 0;
		memset(st->latency_buckets, 0, sizeof(st->latency_buckets));
		st->latency_count = 0;
		st->latency_sum_ms = 0;
		st->stats_reset = now;
	}
	SLOT_UNLOCK(slot);
	return configured;
}

void
cs_shmem_clear_slot(int i)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	memset(&slot->st, 0, sizeof(slot->st));
	slot->pgprocno = -1;
	reset_partitions(slot);
	cs_errors_clear(i);
	SLOT_UNLOCK(slot);
}

pid_t
cs_shmem_attached_pid(int i)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];
	pid_t		pid;

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	pid = slot->st.pid;
	if (pid != 0 && kill(pid, 0) != 0 && errno == ESRCH)
	{
		/* it exited without detaching: nothing holds the slot any more */
		slot->st.pid = 0;
		slot->pgprocno = -1;
		pid = 0;
	}
	SLOT_UNLOCK(slot);
	return pid;
}

CsWorkerSlot *
cs_shmem_attach(int i, char *role, char *group_id)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	slot->st.pid = MyProcPid;
	slot->pgprocno = MyProc->pgprocno;
	slot->st.started_at = GetCurrentTimestamp();
	slot->st.state = CS_STATE_STARTING;
	if (role)
		strlcpy(role, slot->st.role, NAMEDATALEN);
	if (group_id)
		strlcpy(group_id, slot->st.group_id, sizeof(slot->st.group_id));
	if (slot->st.kind == CS_WORKER_PUBLISHER)
	{
		LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
		cs_shared->publisher_pid = MyProcPid;
		cs_shared->publisher_pgprocno = MyProc->pgprocno;
		LWLockRelease(cs_shared->lock);
	}
	SLOT_UNLOCK(slot);
	my_slot = slot;
	on_shmem_exit(detach_slot, (Datum) 0);
	ereport(LOG,
			(errmsg("citizen_sync: %s for database \"%s\" started (pid %d)",
					slot->st.kind == CS_WORKER_PUBLISHER ? "publisher" : "consumer",
					slot->st.database, MyProcPid)));
	return slot;
}

CsWorkerSlot *
cs_shmem_my_slot(void)
{
	return my_slot;
}

int
cs_shmem_publisher_pgprocno(void)
{
	int			procno;

	if (cs_shared == NULL)
		return -1;
	LWLockAcquire(cs_shared->lock, LW_SHARED);
	procno = cs_shared->publisher_pgprocno;
	LWLockRelease(cs_shared->lock);
	return procno;
}

void
cs_shmem_set_state(CsWorkerSlot *slot, CsWorkerState state)
{
	SLOT_LOCK(slot, LW_EXCLUSIVE);
	slot->st.state = state;
	SLOT_UNLOCK(slot);
}

CsWorkerState
cs_shmem_get_state(const CsWorkerSlot *slot)
{
	CsWorkerState state;

	SLOT_LOCK(slot, LW_SHARED);
	state = slot->st.state;
	SLOT_UNLOCK(slot);
	return state;
}

const char *
cs_shmem_state_name(CsWorkerState state)
{
	switch (state)
	{
		case CS_STATE_STARTING:
			return "starting";
		case CS_STATE_RUNNING:
			return "running";
		case CS_STATE_WAITING:
			return "waiting";
		case CS_STATE_RETRYING:
			return "retrying";
		case CS_STATE_ERROR:
			return "error";
		case CS_STATE_RESTARTING:
			return "restarting";
		case CS_STATE_STOPPED:
			return "stopped";
		case CS_STATE_FAILED:
			return "failed";
	}
	return "unknown";
}

/* Set the last error (under the slot's lock). */
static void
put_error(CsWorkerSlot *slot, const char *message)
{
	strlcpy(slot->st.last_error, message, sizeof(slot->st.last_error));
	if (message[0] != '\0')
		slot->st.last_error_at = GetCurrentTimestamp();
}

void
cs_shmem_set_error(CsWorkerSlot *slot, const char *message)
{
	SLOT_LOCK(slot, LW_EXCLUSIVE);
	put_error(slot, message);
	SLOT_UNLOCK(slot);
}

/* true when the slot's last error states a condition that still holds */
static bool
error_still_holds(CsWorkerSlot *slot)
{
	return slot->st.nrecorded < slot->st.npartitions ||
		(slot->st.held_back[0] != '\0' &&
		 strcmp(slot->st.last_error, slot->st.held_back) == 0);
}

/*
 * A batch applied or a delivery round succeeded: clear the last error an
 * earlier failure, a Kafka error or a restart left (last_error_at keeps
 * when, worker_errors keeps the history), unless it states a condition that
 * still holds.
 */
void
cs_shmem_note_success(CsWorkerSlot *slot)
{
	SLOT_LOCK(slot, LW_EXCLUSIVE);
	if (slot->st.last_error[0] != '\0' && !error_still_holds(slot))
		slot->st.last_error[0] = '\0';
	SLOT_UNLOCK(slot);
}

void
cs_shmem_show_problem(CsWorkerSlot *slot, const char *message, const char *clear_if,
					  int state)
{
	SLOT_LOCK(slot, LW_EXCLUSIVE);
	if (message[0] != '\0' && strcmp(slot->st.last_error, message) != 0)
		put_error(slot, message);
	else if (message[0] == '\0' && strcmp(slot->st.last_error, clear_if) == 0)
		slot->st.last_error[0] = '\0';
	if (state >= 0)
		slot->st.state = (CsWorkerState) state;
	SLOT_UNLOCK(slot);
}

void
cs_shmem_note_restart(CsWorkerSlot *slot)
{
	SLOT_LOCK(slot, LW_EXCLUSIVE);
	if (slot->st.last_error[0] == '\0')
		strlcpy(slot->st.last_error, "worker exited with an error (see the server log)",
				sizeof(slot->st.last_error));
	slot->st.last_error_at = GetCurrentTimestamp();
	slot->st.state = CS_STATE_RESTARTING;
	SLOT_UNLOCK(slot);
}

bool
cs_shmem_set_held_back(CsWorkerSlot *slot, const char *reason)
{
	bool		changed;

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	changed = strcmp(slot->st.held_back, reason) != 0;
	if (reason[0] == '\0')
	{
		if (strcmp(slot->st.last_error, slot->st.held_back) == 0)
			slot->st.last_error[0] = '\0';
		slot->st.held_back[0] = '\0';
	}
	else
	{
		if (changed)
		{
			strlcpy(slot->st.held_back, reason, sizeof(slot->st.held_back));
			put_error(slot, reason);
		}
		slot->st.state = CS_STATE_WAITING;
	}
	SLOT_UNLOCK(slot);
	return changed;
}

int
cs_shmem_retire_database(const char *dbname, TimestampTz until, pid_t *pids)
{
	int			n = 0;

	for (int i = 0; i < CS_MAX_WORKERS; i++)
	{
		CsWorkerSlot *slot = &cs_shared->slots[i];

		SLOT_LOCK(slot, LW_EXCLUSIVE);
		if (slot->st.kind != CS_WORKER_NONE && strcmp(slot->st.database, dbname) == 0)
		{
			slot->st.retire_until = until;
			if (slot->st.pid != 0)
				pids[n++] = slot->st.pid;
		}
		SLOT_UNLOCK(slot);
	}
	return n;
}

void
cs_shmem_count_batch(CsWorkerSlot *slot, const CsBatchOutcome *o, double ms)
{
	TimestampTz now = GetCurrentTimestamp();
	CsWorkerStatus *st = &slot->st;

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	for (int r = 0; r < CS_RESULT_COUNT; r++)
		st->results[r] += o->results[r];
	st->dead_lettered += o->dead_lettered;
	for (int b = 0; b < CS_LATENCY_BUCKETS; b++)
		st->latency_buckets[b] += o->latency_buckets[b];
	st->latency_count += o->latency_count;
	st->latency_sum_ms += o->latency_sum_ms;
	st->batches++;
	st->last_batch_at = now;
	st->last_batch_ms = ms;
	st->state = CS_STATE_RUNNING;
	SLOT_UNLOCK(slot);
}

void
cs_shmem_count_publish(CsWorkerSlot *slot, int64 ok, int64 bad, bool delivered,
					   bool failed, bool retrying, const char *error)
{
	TimestampTz now = GetCurrentTimestamp();
	CsWorkerStatus *st = &slot->st;

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	st->published += ok;
	st->publish_failures += bad;
	st->batches++;
	st->last_batch_at = now;
	if (delivered)
		st->last_delivery_at = now;
	else if (failed)
		st->last_failure_at = now;
	st->state = retrying ? CS_STATE_RETRYING : CS_STATE_RUNNING;
	if (error)
		put_error(slot, error);
	else if (delivered && st->last_error[0] != '\0' && !error_still_holds(slot))
		st->last_error[0] = '\0';	/* recovered: see cs_shmem_note_success */
	SLOT_UNLOCK(slot);
}

/* Index of topic in the slot's table, added if new; -1 when the table is full. */
static int
topic_index(CsWorkerSlot *slot, const char *topic)
{
	for (int t = 0; t < slot->ntopics; t++)
		if (strcmp(slot->topics[t], topic) == 0)
			return t;
	if (slot->ntopics == CS_MAX_TOPICS)
		return -1;
	strlcpy(slot->topics[slot->ntopics], topic, CS_TOPIC_LEN);
	return slot->ntopics++;
}

int
cs_shmem_set_partitions(CsWorkerSlot *slot, const CsAssignedPartition *parts, int n)
{
	int			kept = 0;

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	reset_partitions(slot);
	for (int i = 0; i < n && kept < CS_MAX_PARTITIONS; i++)
	{
		int			t = topic_index(slot, parts[i].topic);
		PartitionEntry *p = &slot->partitions[kept];

		if (t < 0)
			continue;
		p->topic = (int16) t;
		p->partition = parts[i].partition;
		p->next_offset = parts[i].offset >= 0 ? parts[i].offset : 0;
		p->high_watermark = -1;
		kept++;
	}
	slot->st.npartitions = n;
	slot->st.nrecorded = kept;
	slot->st.caught_up_at = 0;
	if (kept < n)
	{
		snprintf(slot->st.last_error, sizeof(slot->st.last_error),
				 "holds %d partitions, of which shared memory records %d (at most %d partitions of %d topics): consumer_lag shows those, fresh_as_of() is NULL",
				 n, kept, CS_MAX_PARTITIONS, CS_MAX_TOPICS);
		slot->st.last_error_at = GetCurrentTimestamp();
	}
	SLOT_UNLOCK(slot);
	return kept;
}

CsPartitions *
cs_shmem_read_partitions(int i)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];
	CsPartitions *ps;
	int			n;

	/* sized by a first look; a larger assignment meanwhile is cut to it */
	SLOT_LOCK(slot, LW_SHARED);
	n = slot->st.kind == CS_WORKER_CONSUMER ? slot->st.nrecorded : -1;
	SLOT_UNLOCK(slot);
	if (n < 0)
		return NULL;
	ps = palloc(offsetof(CsPartitions, positions) + sizeof(CsPartitionPosition) * Max(n, 1));
	SLOT_LOCK(slot, LW_SHARED);
	ps->generation = slot->generation;
	strlcpy(ps->database, slot->st.database, NAMEDATALEN);
	strlcpy(ps->group_id, slot->st.group_id, sizeof(ps->group_id));
	ps->held = slot->st.npartitions;
	ps->n = Min(n, slot->st.nrecorded);
	if (ps->n < slot->st.nrecorded)
		ps->generation = 0;		/* incomplete: never published back */
	memcpy(ps->topics, slot->topics, sizeof(ps->topics[0]) * slot->ntopics);
	for (int p = 0; p < ps->n; p++)
	{
		ps->positions[p].partition = slot->partitions[p].partition;
		ps->positions[p].topic = slot->partitions[p].topic;
		ps->positions[p].next_offset = slot->partitions[p].next_offset;
		ps->positions[p].high_watermark = slot->partitions[p].high_watermark;
	}
	SLOT_UNLOCK(slot);
	return ps;
}

bool
cs_shmem_set_positions(CsWorkerSlot *slot, const CsPartitions *ps, TimestampTz caught_up_at)
{
	bool		ok;

	SLOT_LOCK(slot, LW_EXCLUSIVE);
	ok = (ps->generation == slot->generation && ps->n == slot->st.nrecorded);
	if (ok)
	{
		for (int p = 0; p < ps->n; p++)
		{
			slot->partitions[p].next_offset = ps->positions[p].next_offset;
			slot->partitions[p].high_watermark = ps->positions[p].high_watermark;
		}
		if (caught_up_at != 0 && slot->st.nrecorded == slot->st.npartitions)
			slot->st.caught_up_at = caught_up_at;
	}
	SLOT_UNLOCK(slot);
	return ok;
}

void
cs_shmem_set_kafka_health(CsWorkerSlot *slot, TimestampTz now, int known, int up,
						  int topic_partitions)
{
	SLOT_LOCK(slot, LW_EXCLUSIVE);
	slot->st.kafka_stats_at = now;
	slot->st.brokers_known = known;
	slot->st.brokers_up = up;
	if (up > 0)
		slot->st.brokers_up_at = now;
	if (topic_partitions > 0)
		slot->st.topic_partitions = topic_partitions;
	SLOT_UNLOCK(slot);
}

void
cs_shmem_set_partial(CsWorkerSlot *slot, bool partial, TimestampTz since,
					 bool clear_caught_up)
{
	SLOT_LOCK(slot, LW_EXCLUSIVE);
	slot->st.partial_assignment = partial;
	slot->st.partial_since = since;
	if (clear_caught_up)
		slot->st.caught_up_at = 0;
	SLOT_UNLOCK(slot);
}

bool
cs_shmem_read_status(int i, CsWorkerStatus *st, bool with_lag)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];
	int64		lag = 0;

	SLOT_LOCK(slot, LW_SHARED);
	if (slot->st.kind == CS_WORKER_NONE)
	{
		SLOT_UNLOCK(slot);
		return false;
	}
	*st = slot->st;
	for (int p = 0; with_lag && p < slot->st.nrecorded; p++)
		if (slot->partitions[p].high_watermark >= 0)
			lag += Max(0, slot->partitions[p].high_watermark - slot->partitions[p].next_offset);
	SLOT_UNLOCK(slot);
	st->lag = lag;
	return true;
}

CsWorkerStatus *
cs_shmem_read_all(bool with_lag)
{
	CsWorkerStatus *all = palloc(sizeof(CsWorkerStatus) * CS_MAX_WORKERS);

	for (int i = 0; i < CS_MAX_WORKERS; i++)
		if (!cs_shmem_read_status(i, &all[i], with_lag))
			all[i].kind = CS_WORKER_NONE;
	return all;
}

void
cs_shmem_set_config_problems(const CsConfigProblem *problems, int n)
{
	Assert(n <= CS_MAX_CONFIG_PROBLEMS);
	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	cs_shared->nconfig_problems = n;
	memcpy(cs_shared->config_problems, problems, sizeof(CsConfigProblem) * n);
	LWLockRelease(cs_shared->lock);
}

int
cs_shmem_get_config_problems(CsConfigProblem *problems)
{
	int			n;

	if (cs_shared == NULL)
		return 0;
	LWLockAcquire(cs_shared->lock, LW_SHARED);
	n = cs_shared->nconfig_problems;
	memcpy(problems, cs_shared->config_problems, sizeof(CsConfigProblem) * n);
	LWLockRelease(cs_shared->lock);
	return n;
}

const char *
cs_shmem_kind_name(CsWorkerKind kind)
{
	switch (kind)
	{
		case CS_WORKER_CONSUMER:
			return "consumer";
		case CS_WORKER_PUBLISHER:
			return "publisher";
		case CS_WORKER_LAUNCHER:
			return "launcher";
		default:
			return "none";
	}
}
