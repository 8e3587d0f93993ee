/*-------------------------------------------------------------------------
 * cs_notify.c
 *	  Wake the outbox publisher when a capturing transaction commits.
 *
 * The capture trigger calls citizen_sync.notify_publisher(); the first call
 * in a transaction arms a transaction callback, which on commit sets the
 * publisher's latch.  A rolled-back transaction wakes nobody.  Setting a
 * latch is cheap and safe from any backend; a stale pgprocno costs at most
 * a spurious wakeup of another process.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "cs_shmem.h"
#include "fmgr.h"
#include "storage/latch.h"
#include "storage/proc.h"

PG_FUNCTION_INFO_V1(citizen_sync_notify_publisher);

static bool callback_registered = false;
static bool wake_on_commit = false;

/* Transaction callback: on commit, set the publisher's latch if armed. */
static void
wake_publisher_at_commit(XactEvent event, void *arg)
{
	int			procno;

	if (!wake_on_commit)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		procno = cs_shmem_publisher_pgprocno();
		if (procno >= 0 && procno < (int) ProcGlobal->allProcCount)
			SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		wake_on_commit = false;
}

/* citizen_sync.notify_publisher(): arm the wake-up for this transaction. */
Datum
citizen_sync_notify_publisher(PG_FUNCTION_ARGS)
{
	if (!callback_registered)
	{
		RegisterXactCallback(wake_publisher_at_commit, NULL);
		callback_registered = true;
	}
	wake_on_commit = true;
	PG_RETURN_VOID();
}
