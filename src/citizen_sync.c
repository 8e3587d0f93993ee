/*-------------------------------------------------------------------------
 * citizen_sync.c
 *	  Module entry point: configuration and worker registration.
 *
 * The library must be in shared_preload_libraries: the workers and their
 * shared memory can only be set up by the postmaster.  Loading it any other
 * way is refused with a hint.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_guc.h"
#include "cs_shmem.h"
#include "fmgr.h"
#include "miscadmin.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("citizen_sync must be loaded via shared_preload_libraries"),
				 errhint("Add citizen_sync to shared_preload_libraries in postgresql.conf and restart the server.")));
	cs_guc_define();
	cs_shmem_init();
}
