/*-------------------------------------------------------------------------
 * cs_shmem.c
 *	  Shared memory of citizen_sync: worker slots, counters, publisher latch.
 *
 * Requested through shmem_request_hook (PostgreSQL 15), initialised once by
 * whoever attaches first under AddinShmemInitLock.  See cs_shmem.h for the
 * locking rules.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <signal.h>

#include "cs_errors.h"
#include "cs_shmem.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

CsShared   *cs_shared = NULL;

const double cs_latency_bounds_ms[CS_LATENCY_BUCKETS] = {
	1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000,
	INFINITY
};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static CsWorkerSlot *my_slot = NULL;

static void
cs_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(CsShared)));
	RequestNamedLWLockTranche("citizen_sync", 1);
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
		memset(cs_shared, 0, sizeof(CsShared));
		cs_shared->lock = &(GetNamedLWLockTranche("citizen_sync"))->lock;
		cs_shared->publisher_pgprocno = -1;
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

/* on_shmem_exit callback: detach from the slot, leaving its history. */
static void
detach_slot(int code, Datum arg)
{
	if (my_slot == NULL)
		return;
	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	if (my_slot->kind == CS_WORKER_PUBLISHER &&
		cs_shared->publisher_pid == MyProcPid)
	{
		cs_shared->publisher_pid = 0;
		cs_shared->publisher_pgprocno = -1;
	}
	if (my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->pgprocno = -1;
		my_slot->npartitions = 0;
		strlcpy(my_slot->state, code == 0 ? "stopped" : "failed", sizeof(my_slot->state));
	}
	LWLockRelease(cs_shared->lock);
	ereport(LOG,
			(errmsg("citizen_sync: %s for database \"%s\" %s (pid %d)",
					my_slot->kind == CS_WORKER_PUBLISHER ? "publisher" : "consumer",
					my_slot->database, code == 0 ? "stopped" : "exited with an error; the launcher restarts it",
					MyProcPid)));
	my_slot = NULL;
}

void
cs_shmem_configure_slot(int i, CsWorkerKind kind, const char *database,
						const char *role, const char *group_id)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];

	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	if (slot->kind != kind || strcmp(slot->database, database) != 0 ||
		strcmp(slot->role, role) != 0 || strcmp(slot->group_id, group_id) != 0)
	{
		memset(slot, 0, sizeof(*slot));
		slot->kind = kind;
		slot->pgprocno = -1;
		strlcpy(slot->database, database, NAMEDATALEN);
		strlcpy(slot->role, role, NAMEDATALEN);
		strlcpy(slot->group_id, group_id, sizeof(slot->group_id));
		strlcpy(slot->state, "starting", sizeof(slot->state));
		cs_errors_clear(i);
	}
	LWLockRelease(cs_shared->lock);
}

void
cs_shmem_clear_slot(int i)
{
	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	memset(&cs_shared->slots[i], 0, sizeof(CsWorkerSlot));
	cs_errors_clear(i);
	LWLockRelease(cs_shared->lock);
}

pid_t
cs_shmem_attached_pid(int i)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];
	pid_t		pid;

	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	pid = slot->pid;
	if (pid != 0 && kill(pid, 0) != 0 && errno == ESRCH)
	{
		/* it exited without detaching: nothing holds the slot any more */
		slot->pid = 0;
		slot->pgprocno = -1;
		pid = 0;
	}
	LWLockRelease(cs_shared->lock);
	return pid;
}

CsWorkerSlot *
cs_shmem_attach(int i)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];

	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	slot->pid = MyProcPid;
	slot->pgprocno = MyProc->pgprocno;
	slot->started_at = GetCurrentTimestamp();
	strlcpy(slot->state, "starting", sizeof(slot->state));
	if (slot->kind == CS_WORKER_PUBLISHER)
	{
		cs_shared->publisher_pid = MyProcPid;
		cs_shared->publisher_pgprocno = MyProc->pgprocno;
	}
	LWLockRelease(cs_shared->lock);
	my_slot = slot;
	on_shmem_exit(detach_slot, (Datum) 0);
	ereport(LOG,
			(errmsg("citizen_sync: %s for database \"%s\" started (pid %d)",
					slot->kind == CS_WORKER_PUBLISHER ? "publisher" : "consumer",
					slot->database, MyProcPid)));
	return slot;
}

CsWorkerSlot *
cs_shmem_my_slot(void)
{
	return my_slot;
}

void
cs_shmem_set_state(CsWorkerSlot *slot, const char *state)
{
	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	strlcpy(slot->state, state, sizeof(slot->state));
	LWLockRelease(cs_shared->lock);
}

void
cs_shmem_set_error(CsWorkerSlot *slot, const char *message)
{
	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	strlcpy(slot->last_error, message, sizeof(slot->last_error));
	if (message[0] != '\0')
		slot->last_error_at = GetCurrentTimestamp();
	LWLockRelease(cs_shared->lock);
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
