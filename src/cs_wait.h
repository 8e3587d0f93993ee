/*-------------------------------------------------------------------------
 * cs_wait.h
 *	  Read-your-writes (citizen_sync.wait_for) and change notifications.
 *
 * The consumer calls cs_wait_notify_changes() in a batch's transaction,
 * after the apply, and cs_wait_wake() after the commit; wait_for() sleeps
 * on a condition variable in shared memory of its own until then.
 *-------------------------------------------------------------------------
 */
#ifndef CS_WAIT_H
#define CS_WAIT_H

#include "cs_batch.h"
#include "cs_event.h"

/* Chain this module's shared-memory request and startup hooks (_PG_init). */
extern void cs_wait_shmem_init(void);

/*
 * Queue NOTIFY of the keys each opted-in subscription's events changed
 * (results APPLIED or DELETED), in the batch's transaction: delivered at
 * commit, in commit order, and only if it commits.  Requires SPI.
 */
extern void cs_wait_notify_changes(const CsEvent *events,
								   const CsApplyResult *results, int n);

/* After a batch committed: wake the wait_for() callers of this database. */
extern void cs_wait_wake(void);

#endif							/* CS_WAIT_H */
