/*-------------------------------------------------------------------------
 * cs_launcher.c
 *	  The launcher: one consumer per citizen_sync.databases entry and the
 *	  outbox publisher, restarted with backoff, reconfigured on SIGHUP.
 *
 * The launcher connects to the shared catalogs only (no database): it
 * checks in pg_database that a worker's database exists before starting the
 * worker, so a database listed before it is created (or after it is
 * dropped) waits quietly, with one WARNING and the state "waiting".  It owns
 * the shared-memory slots: a database keeps its slot while it stays listed,
 * so editing citizen_sync.databases restarts only the consumers whose entry
 * changed; CS_PUBLISHER_SLOT is the publisher's.
 *
 * Settings invalid since the server started hold back the workers they
 * configure (cs_settings.c); DROP DATABASE of a consumed database stops its
 * consumer first (cs_launcher_prepare_dropdb(), from the utility hook).  Workers are dynamic (BGW_NEVER_RESTART) and notify the
 * launcher when they stop; a worker that failed is restarted after a delay
 * that doubles up to citizen_sync.restart_delay, one that stopped cleanly at
 * once.  When Kafka settings change, every worker is restarted with them.
 * A launcher restarted after an error has no handles for the workers its
 * predecessor started: it stops them and starts its own once they are gone,
 * so that a slot never has two workers (stop_orphans()).
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
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "cs_kafka_conf.h"
#include "cs_launcher.h"
#include "cs_settings.h"
#include "cs_shmem.h"
#include "cs_worker.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "utils/acl.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
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
	char		held[256];		/* why it was last held back ("" = not) */
} LaunchState;

static LaunchState launch[CS_MAX_WORKERS];
static char *kafka_fingerprint = NULL;

/* The properties file: its problem ("" = usable), when to look again. */
static char file_problem[384] = "";
static TimestampTz next_file_check = 0;
static bool file_check_due = false;

/* CS_AFFECTS_* bits of the workers held back by invalid settings. */
static int	settings_hold = 0;
static const char *settings_hold_why = NULL;

/* How long DROP DATABASE keeps the stopped workers of its database down. */
#define CS_DROPDB_HOLD_MS	10000

/* How often to look whether a previous launcher's worker has exited. */
#define CS_ORPHAN_POLL_MS	100

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
	cs_shmem_show_problem(cs_shmem_slot(i), problem, file_problem,
						  waiting ? CS_STATE_WAITING : -1);
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

/*
 * A slot among the first CS_MAX_DATABASES for a newly listed database, not
 * taken in want[]: preferably one that is idle, else one whose database is
 * no longer listed (its worker is stopped first).  -1 if none.
 */
static int
free_slot(LaunchState *want)
{
	for (int pass = 0; pass < 2; pass++)
		for (int i = 0; i < CS_MAX_DATABASES; i++)
			if (!want[i].wanted &&
				(pass == 1 || (!launch[i].wanted && launch[i].handle == NULL)))
				return i;
	return -1;
}

/* Recompute which workers are wanted from the current settings. */
static void
compute_wanted(LaunchState *want)
{
	CsDatabaseEntry entries[CS_MAX_DATABASES];
	char		errbuf[256];
	int			n = 0;
	bool		kafka = cs_brokers != NULL && cs_brokers[0] != '\0';
	bool		placed[CS_MAX_DATABASES];

	memset(want, 0, sizeof(LaunchState) * CS_MAX_WORKERS);
	if (kafka)
		n = cs_parse_databases(cs_databases, entries, errbuf, sizeof(errbuf));
	/* databases already served keep their slot; new ones take free slots */
	for (int pass = 0; pass < 2; pass++)
		for (int e = 0; e < n; e++)
		{
			int			i = -1;

			if (pass == 0)
			{
				placed[e] = false;
				for (int k = 0; k < CS_MAX_DATABASES && i < 0; k++)
					if (launch[k].wanted && launch[k].kind == CS_WORKER_CONSUMER &&
						strcmp(launch[k].database, entries[e].database) == 0)
						i = k;
			}
			else if (!placed[e])
				i = free_slot(want);
			if (i < 0)
				continue;
			placed[e] = true;
			want[i].wanted = true;
			want[i].kind = CS_WORKER_CONSUMER;
			strlcpy(want[i].database, entries[e].database, NAMEDATALEN);
			strlcpy(want[i].role, entries[e].role, NAMEDATALEN);
			cs_group_for_database(entries[e].database, want[i].group_id, sizeof(want[i].group_id));
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
		cs_shmem_set_error(cs_shmem_slot(i), "no free background worker slot");
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
	CsWorkerSlot *slot = cs_shmem_slot(i);
	bool		failed = cs_shmem_get_state(slot) != CS_STATE_STOPPED;
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
		cs_shmem_note_restart(slot);
	}
	s->next_start_at = TimestampTzPlusMilliseconds(now, s->backoff_ms);
}

/*
 * Does the database exist and accept connections?  If not, why gets a
 * sentence.  Scans pg_database (a shared catalog, as the autovacuum
 * launcher does) in a short transaction.
 */
static bool
database_ready(const char *database, char *why, size_t len)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	int			found = 0;		/* 0 = no, 1 = yes, 2 = no connections */

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (found == 0 && HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), database) == 0)
			found = db->datallowconn ? 1 : 2;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	if (found == 0)
		snprintf(why, len, "database \"%s\" does not exist", database);
	else if (found == 2)
		snprintf(why, len, "database \"%s\" does not allow connections", database);
	return found == 1;
}

/* Show slot i as waiting for reason; log the reason once if asked to. */
static void
hold_slot(int i, const char *reason, bool warn)
{
	LaunchState *s = &launch[i];

	cs_shmem_configure_slot(i, s->kind, s->database, s->role, s->group_id);
	(void) cs_shmem_set_held_back(cs_shmem_slot(i), reason);
	if (warn && strcmp(s->held, reason) != 0)
		ereport(WARNING,
				(errmsg("citizen_sync: %s; the %s waits for it", reason,
						s->kind == CS_WORKER_CONSUMER ? "consumer" : "publisher"),
				 errhint("Create the database, or remove it from %s and reload (SELECT pg_reload_conf()).  The launcher checks again every %d s.",
						 s->kind == CS_WORKER_CONSUMER ? "citizen_sync.databases" : "citizen_sync.outbox_database",
						 cs_restart_delay_s)));
	strlcpy(s->held, reason, sizeof(s->held));
}

/*
 * May slot i's worker start now?  Not while an invalid setting configures
 * it, while DROP DATABASE stops it, or while its database is missing; the
 * slot then says why.
 */
static bool
may_start(int i, TimestampTz now, TimestampTz *recheck_at)
{
	LaunchState *s = &launch[i];
	int			affects = s->kind == CS_WORKER_CONSUMER ? CS_AFFECTS_CONSUMERS : CS_AFFECTS_PUBLISHER;
	TimestampTz retire_until;
	CsWorkerStatus st;
	char		why[256];

	*recheck_at = TimestampTzPlusMilliseconds(now, cs_restart_delay_s * 1000L);
	if (settings_hold & affects)
	{
		snprintf(why, sizeof(why),
				 "not started: \"%s\" has been invalid since the server started (see citizen_sync.config_problems)",
				 settings_hold_why ? settings_hold_why : "a setting");
		hold_slot(i, why, false);
		*recheck_at = DT_NOEND;	/* until a reload */
		return false;
	}
	retire_until = cs_shmem_read_status(i, &st, false) ? st.retire_until : 0;
	if (retire_until > now)
	{
		snprintf(why, sizeof(why), "stopped for DROP DATABASE \"%s\"", s->database);
		hold_slot(i, why, false);
		*recheck_at = retire_until;
		return false;
	}
	if (!database_ready(s->database, why, sizeof(why)))
	{
		hold_slot(i, why, true);
		return false;
	}
	if (s->held[0] != '\0')
	{
		(void) cs_shmem_set_held_back(cs_shmem_slot(i), "");
		s->held[0] = '\0';
	}
	return true;
}

/*
 * At launcher start, stop the workers a previous launcher started.  Dynamic
 * workers outlive the launcher that registered them (a launcher that exits
 * with an error is restarted by the postmaster), but their handles do not:
 * this launcher could neither stop them on a reload or DROP DATABASE nor
 * tell that they run, and would start a second worker in the same slot.
 * reconcile() leaves their slots alone until they are gone, then starts
 * workers of its own there.
 */
static void
stop_orphans(void)
{
	for (int i = 0; i < CS_MAX_WORKERS; i++)
	{
		pid_t		pid = cs_shmem_attached_pid(i);
		CsWorkerSlot *slot = cs_shmem_slot(i);

		if (pid == 0)
			continue;
		ereport(LOG,
				(errmsg("citizen_sync: stopping the %s for database \"%s\" (pid %d) that a previous launcher started",
						cs_shmem_kind_name(cs_shmem_slot_kind(slot)),
						cs_shmem_slot_database(slot), (int) pid)));
		(void) kill(pid, SIGTERM);
	}
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
		if (s->handle == NULL && cs_shmem_attached_pid(i) != 0)
		{
			/*
			 * A worker this launcher did not start (a previous launcher's,
			 * see stop_orphans()) is still attached: neither clear, nor
			 * reconfigure, nor start another in the slot until it is gone.
			 * Its exit does not wake us: look again soon.
			 */
			timeout = Min(timeout, CS_ORPHAN_POLL_MS);
			continue;
		}
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
			s->held[0] = '\0';
		}
		if (s->wanted && s->handle == NULL && file_problem[0] != '\0')
		{
			/* not started until the properties file is fixed */
			cs_shmem_configure_slot(i, s->kind, s->database, s->role, s->group_id);
			show_file_problem(i, file_problem, true);
		}
		else if (s->wanted && s->handle == NULL)
		{
			/* when held back, may_start() sets when to look again */
			if (now >= s->next_start_at && may_start(i, now, &s->next_start_at))
				start_worker(i);
			if (s->handle == NULL && s->next_start_at != DT_NOEND)
				timeout = Min(timeout, Max(1L, (long) ((s->next_start_at - now) / 1000) + 1));
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
	settings_hold = cs_settings_refresh(&settings_hold_why);
	for (int i = 0; i < CS_MAX_WORKERS; i++)
		if (launch[i].handle == NULL)
			launch[i].next_start_at = 0;	/* look again now */
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

void
cs_launcher_main(Datum arg)
{
	LaunchState *want = MemoryContextAllocZero(TopMemoryContext,
											   sizeof(LaunchState) * CS_MAX_WORKERS);

	/*
	 * SIGUSR1 keeps PostgreSQL's handler (procsignal_sigusr1_handler): it
	 * sets the latch when the postmaster reports a worker's state change
	 * (bgw_notify_pid) and serves procsignal barriers, which DROP DATABASE
	 * waits for from every process with a connection, this one included.
	 */
	cs_worker_setup_signals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("citizen_sync launcher");
	stop_orphans();
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

void
cs_launcher_prepare_dropdb(const char *dbname)
{
	Oid			dboid = get_database_oid(dbname, true);
	pid_t		pids[CS_MAX_WORKERS];
	int			n;
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), CS_DROPDB_HOLD_MS);

	if (!cs_shmem_ready() || !OidIsValid(dboid) ||
		!pg_database_ownercheck(dboid, GetUserId()))
		return;					/* PostgreSQL will refuse the statement */
	n = cs_shmem_retire_database(dbname, until, pids);
	for (int i = 0; i < n; i++)
	{
		ereport(LOG,
				(errmsg("citizen_sync: stopping the worker of database \"%s\" (pid %d) for DROP DATABASE",
						dbname, (int) pids[i])));
		(void) kill(pids[i], SIGTERM);
	}
}
