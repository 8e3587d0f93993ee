/*-------------------------------------------------------------------------
 * cs_launcher.c
 *	  The launcher: one consumer per citizen_sync.databases entry and the
 *	  outbox publisher, restarted with backoff, reconfigured on SIGHUP.
 *
 * The launcher connects to no database.  It owns the shared-memory slots:
 * slot i describes entry i of citizen_sync.databases, CS_PUBLISHER_SLOT the
 * publisher.  Workers are dynamic (BGW_NEVER_RESTART) and notify the
 * launcher when they stop; a worker that failed is restarted after a delay
 * that doubles up to citizen_sync.restart_delay, one that stopped cleanly at
 * once.  When Kafka settings change, every worker is restarted with them.
 *
 * The Kafka settings include the content of citizen_sync.kafka_properties_file,
 * which the launcher reads at start, on reload, before restarting a failed
 * worker and, while it is unusable, every restart_delay; it keeps only a
 * digest of it.  While the file is unusable no worker starts (the slots say
 * why) and running workers keep the configuration they started with.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_config.h"
#include "cs_guc.h"
#include "cs_kafka_conf.h"
#include "cs_shmem.h"
#include "cs_worker.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PGDLLEXPORT void cs_launcher_main(Datum arg);

/* What the launcher wants running in one slot, and what it has. */
typedef struct LaunchState
{
	bool		wanted;
	CsWorkerKind kind;
	char		database[NAMEDATALEN];
	char		role[NAMEDATALEN];
	char		group_id[256];
	BackgroundWorkerHandle *handle;
	TimestampTz started_at;
	TimestampTz next_start_at;
	long		backoff_ms;
} LaunchState;

static LaunchState launch[CS_MAX_WORKERS];
static char *kafka_fingerprint = NULL;

/* The properties file: its problem ("" = usable), when to look again. */
static char file_problem[384] = "";
static TimestampTz next_file_check = 0;
static bool file_check_due = false;

/* The settings whose change requires restarting every worker. */
static char *
settings_fingerprint(uint64 file_digest)
{
	return psprintf("%s|%s|%s|%s|%s|%s|%s|" UINT64_FORMAT, cs_brokers, cs_topics,
					cs_group_id, cs_kafka_properties, cs_topic_prefix,
					cs_outbox_database, cs_kafka_properties_file, file_digest);
}

/*
 * Show the file problem as slot i's last error ("" clears it, if it is the
 * one shown); a worker that is not running is waiting for the fix.
 */
static void
show_file_problem(int i, const char *problem, bool waiting)
{
	CsWorkerSlot *slot = &cs_shared->slots[i];

	LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
	if (problem[0] != '\0' && strcmp(slot->last_error, problem) != 0)
	{
		strlcpy(slot->last_error, problem, sizeof(slot->last_error));
		slot->last_error_at = GetCurrentTimestamp();
	}
	else if (problem[0] == '\0' && strcmp(slot->last_error, file_problem) == 0)
		slot->last_error[0] = '\0';
	if (waiting)
		strlcpy(slot->state, "waiting", sizeof(slot->state));
	LWLockRelease(cs_shared->lock);
}

/*
 * Read and check citizen_sync.kafka_properties_file.  A new problem is
 * logged once (WARNING with DETAIL and HINT, never a value) and shown in the
 * slots of the running workers; its end is logged too.  Returns whether the
 * file is usable, with the digest of its content.
 */
static bool
check_properties_file(uint64 *digest)
{
	CsKafkaFileStatus st;

	(void) cs_kafka_conf_read_file(cs_kafka_properties_file, NULL, &st);
	next_file_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  cs_restart_delay_s * 1000L);
	*digest = st.digest;
	if (st.ok && file_problem[0] != '\0')
	{
		ereport(LOG,
				(errmsg("citizen_sync: the Kafka properties file \"%s\" is usable again",
						cs_kafka_properties_file)));
		for (int i = 0; i < CS_MAX_WORKERS; i++)
			show_file_problem(i, "", false);
		file_problem[0] = '\0';
	}
	else if (!st.ok && strcmp(st.message, file_problem) != 0)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("citizen_sync: %s", st.message),
				 errdetail("%s Running workers keep the configuration they started with; no other worker starts until the file is fixed.",
						   st.detail),
				 errhint("%s Then reload the configuration (SELECT pg_reload_conf()).", st.hint)));
		strlcpy(file_problem, st.message, sizeof(file_problem));
		for (int i = 0; i < CS_MAX_WORKERS; i++)
			if (launch[i].handle != NULL)
				show_file_problem(i, file_problem, false);
	}
	return st.ok;
}

/* Recompute which workers are wanted from the current settings. */
static void
compute_wanted(LaunchState *want)
{
	CsDatabaseEntry entries[CS_MAX_DATABASES];
	char		errbuf[256];
	int			n = 0;
	bool		kafka = cs_brokers != NULL && cs_brokers[0] != '\0';

	memset(want, 0, sizeof(LaunchState) * CS_MAX_WORKERS);
	if (kafka)
		n = cs_parse_databases(cs_databases, entries, errbuf, sizeof(errbuf));
	for (int i = 0; i < n; i++)
	{
		want[i].wanted = true;
		want[i].kind = CS_WORKER_CONSUMER;
		strlcpy(want[i].database, entries[i].database, NAMEDATALEN);
		strlcpy(want[i].role, entries[i].role, NAMEDATALEN);
		cs_group_for_database(entries[i].database, want[i].group_id, sizeof(want[i].group_id));
	}
	if (kafka && cs_outbox_database && cs_outbox_database[0] != '\0')
	{
		LaunchState *p = &want[CS_PUBLISHER_SLOT];

		p->wanted = true;
		p->kind = CS_WORKER_PUBLISHER;
		strlcpy(p->database, cs_outbox_database, NAMEDATALEN);
	}
}

static bool
is_running(LaunchState *s)
{
	pid_t		pid;

	return s->handle != NULL &&
		GetBackgroundWorkerPid(s->handle, &pid) != BGWH_STOPPED;
}

static void
stop_worker(LaunchState *s)
{
	if (s->handle)
		TerminateBackgroundWorker(s->handle);
}

/* Register the dynamic worker for slot i. */
static void
start_worker(int i)
{
	LaunchState *s = &launch[i];
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, "citizen_sync", BGW_MAXLEN);
	if (s->kind == CS_WORKER_CONSUMER)
	{
		strlcpy(bgw.bgw_function_name, "cs_consumer_main", BGW_MAXLEN);
		snprintf(bgw.bgw_name, BGW_MAXLEN, "citizen_sync consumer for %s", s->database);
		strlcpy(bgw.bgw_type, "citizen_sync consumer", BGW_MAXLEN);
	}
	else
	{
		strlcpy(bgw.bgw_function_name, "cs_publisher_main", BGW_MAXLEN);
		snprintf(bgw.bgw_name, BGW_MAXLEN, "citizen_sync publisher for %s", s->database);
		strlcpy(bgw.bgw_type, "citizen_sync publisher", BGW_MAXLEN);
	}
	bgw.bgw_main_arg = Int32GetDatum(i);
	bgw.bgw_notify_pid = MyProcPid;
	cs_shmem_configure_slot(i, s->kind, s->database, s->role, s->group_id);
	if (!RegisterDynamicBackgroundWorker(&bgw, &s->handle))
	{
		s->handle = NULL;
		cs_shmem_set_error(&cs_shared->slots[i], "no free background worker slot");
		ereport(WARNING,
				(errmsg("citizen_sync: could not start \"%s\": no free background worker slot", bgw.bgw_name),
				 errhint("Raise max_worker_processes (one launcher, one consumer per database, one publisher)."),
				 errdetail("Trying again in %d s.", cs_restart_delay_s)));
		s->next_start_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   cs_restart_delay_s * 1000L);
		return;
	}
	s->started_at = GetCurrentTimestamp();
}

/*
 * A worker stopped: schedule its restart.  After a failure the delay doubles
 * (from 1 s to citizen_sync.restart_delay); a worker that ran long enough, or
 * stopped cleanly, restarts at once.
 */
static void
schedule_restart(int i)
{
	LaunchState *s = &launch[i];
	CsWorkerSlot *slot = &cs_shared->slots[i];
	bool		failed = strcmp(slot->state, "stopped") != 0;
	TimestampTz now = GetCurrentTimestamp();
	long		max_ms = cs_restart_delay_s * 1000L;

	pfree(s->handle);
	s->handle = NULL;
	if (!failed || TimestampDifferenceExceeds(s->started_at, now, 2 * max_ms))
		s->backoff_ms = 0;
	else
		s->backoff_ms = s->backoff_ms == 0 ? 1000 : Min(s->backoff_ms * 2, max_ms);
	if (failed)
	{
		file_check_due = true;	/* the file may be why: look before the restart */
		LWLockAcquire(cs_shared->lock, LW_EXCLUSIVE);
		if (slot->last_error[0] == '\0')
			snprintf(slot->last_error, sizeof(slot->last_error),
					 "worker exited with an error (see the server log)");
		slot->last_error_at = now;
		snprintf(slot->state, sizeof(slot->state), "restarting");
		LWLockRelease(cs_shared->lock);
	}
	s->next_start_at = TimestampTzPlusMilliseconds(now, s->backoff_ms);
}

/* Bring the running set in line with want[]; returns ms until next action. */
static long
reconcile(LaunchState *want)
{
	TimestampTz now = GetCurrentTimestamp();
	long		timeout = 10000;

	for (int i = 0; i < CS_MAX_WORKERS; i++)
	{
		LaunchState *s = &launch[i];
		bool		same = s->wanted == want[i].wanted && s->kind == want[i].kind &&
			strcmp(s->database, want[i].database) == 0 &&
			strcmp(s->role, want[i].role) == 0 &&
			strcmp(s->group_id, want[i].group_id) == 0;

		if (s->handle && !is_running(s))
			schedule_restart(i);
		if (!same)
		{
			if (s->handle)
			{
				stop_worker(s);
				continue;		/* restart with the new target once stopped */
			}
			if (s->wanted && !want[i].wanted)
				cs_shmem_clear_slot(i);
			memcpy(s, &want[i], offsetof(LaunchState, handle));
			s->next_start_at = 0;
			s->backoff_ms = 0;
		}
		if (s->wanted && s->handle == NULL && file_problem[0] != '\0')
		{
			/* not started until the properties file is fixed */
			cs_shmem_configure_slot(i, s->kind, s->database, s->role, s->group_id);
			show_file_problem(i, file_problem, true);
		}
		else if (s->wanted && s->handle == NULL)
		{
			if (now >= s->next_start_at)
				start_worker(i);
			else
				timeout = Min(timeout, (long) ((s->next_start_at - now) / 1000) + 1);
		}
	}
	if (file_problem[0] != '\0')
		timeout = Min(timeout, Max(1L, (long) ((next_file_check - now) / 1000) + 1));
	return timeout;
}

/*
 * On a change of the settings (or properties file) that workers read once,
 * restart them all.  While the file is unusable, nothing is restarted.
 */
static void
restart_all_if_settings_changed(void)
{
	uint64		digest;
	char	   *fp;

	file_check_due = false;
	if (!check_properties_file(&digest))
		return;
	fp = settings_fingerprint(digest);

	if (kafka_fingerprint != NULL && strcmp(fp, kafka_fingerprint) != 0)
	{
		ereport(LOG, (errmsg("citizen_sync: Kafka settings changed; restarting the workers")));
		for (int i = 0; i < CS_MAX_WORKERS; i++)
			stop_worker(&launch[i]);
	}
	if (kafka_fingerprint)
		pfree(kafka_fingerprint);
	kafka_fingerprint = MemoryContextStrdup(TopMemoryContext, fp);
	pfree(fp);
}

/*
 * SIGUSR1 comes from the postmaster when a worker we started changes state
 * (bgw_notify_pid).  A worker without a database connection gets a handler
 * that only interrupts a wait; set the latch so that the wait returns.
 */
static void
handle_sigusr1(SIGNAL_ARGS)
{
	int			save_errno = errno;

	SetLatch(MyLatch);
	errno = save_errno;
}

void
cs_launcher_main(Datum arg)
{
	LaunchState *want = MemoryContextAllocZero(TopMemoryContext,
											   sizeof(LaunchState) * CS_MAX_WORKERS);

	pqsignal(SIGUSR1, handle_sigusr1);
	cs_worker_setup_signals();
	pgstat_report_appname("citizen_sync launcher");
	restart_all_if_settings_changed();
	while (!cs_got_sigterm)
	{
		long		timeout;

		compute_wanted(want);
		timeout = reconcile(want);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			cs_worker_reload_config();
			restart_all_if_settings_changed();
		}
		else if (file_check_due ||
				 (file_problem[0] != '\0' && GetCurrentTimestamp() >= next_file_check))
			restart_all_if_settings_changed();
	}
	for (int i = 0; i < CS_MAX_WORKERS; i++)
		stop_worker(&launch[i]);
	proc_exit(0);
}
