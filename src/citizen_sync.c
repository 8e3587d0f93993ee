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
#include "cs_settings.h"
#include "cs_shmem.h"
#include "cs_wait.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Register the launcher, which starts and supervises the other workers. */
static void
register_launcher(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	/* a connection to the shared catalogs only: it checks pg_database */
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 5;
	strlcpy(bgw.bgw_library_name, "citizen_sync", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "cs_launcher_main", BGW_MAXLEN);
	strlcpy(bgw.bgw_name, "citizen_sync launcher", BGW_MAXLEN);
	strlcpy(bgw.bgw_type, "citizen_sync launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("citizen_sync must be loaded via shared_preload_libraries"),
				 errhint("Add citizen_sync to shared_preload_libraries in postgresql.conf and restart the server.")));
	cs_guc_define();
	cs_settings_check_startup();
	cs_shmem_init();
	cs_wait_shmem_init();
	if (!IsBinaryUpgrade)
		register_launcher();
}
