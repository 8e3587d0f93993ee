/*-------------------------------------------------------------------------
 * cs_shmem.h
 *	  Shared state of the citizen_sync workers: one slot per worker.
 *
 * This module is the only one that knows the segment's layout: the slot
 * struct is opaque; workers write through the setters below, the views and
 * the launcher read through copies (CsWorkerStatus, CsPartitions).
 *
 * Locking.  Each slot has an LWLock of its own (named tranche
 * "citizen_sync", locks 1..CS_MAX_WORKERS); lock 0 (the "global" lock)
 * guards only the publisher's latch fields and the configuration problems.
 * Every function here takes the lock it needs for a few field copies and
 * releases it before returning: no caller ever holds a citizen_sync lock
 * while it calls librdkafka, SPI or ereport.  Writers compute first
 * (watermarks, counters) and publish under a short exclusive lock; readers
 * copy one slot at a time under a shared lock, so each row is consistent in
 * itself (a batch's counters, positions and caught_up_at are seen together
 * or not at all) and a reader never waits for more than one slot's copy.
 * No code holds two slot locks at once; the global lock and the error
 * ring's (cs_errors.c) may be taken while a slot lock is held (attach,
 * detach, configure), never the other way round.  A
 * per-slot LWLock rather than a changecount protocol (PgBackendStatus):
 * writes are at most one per batch, and a changecount reader of a slot with
 * thousands of partitions could retry indefinitely under a fast writer.
 *
 * Partitions: each slot records up to CS_MAX_PARTITIONS assigned partitions
 * (24 bytes each, topic names in a per-slot table of CS_MAX_TOPICS): about
 * 100 kB per slot, 3.4 MB for the CS_MAX_WORKERS slots.  A consumer holding
 * more (or partitions of more topics) keeps consuming and applying all of
 * them; the slot records the count it holds, shows why in last_error (and
 * the consumer logs a WARNING), and fresh_as_of() is NULL (worker_health
 * says not_fresh) since caught-up can no longer be proven for the others.
 *-------------------------------------------------------------------------
 */
#ifndef CS_SHMEM_H
#define CS_SHMEM_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "cs_apply.h"
#include "cs_config.h"

#define CS_MAX_WORKERS		(CS_MAX_DATABASES + 1)
#define CS_MAX_PARTITIONS	4096	/* recorded per consumer slot */
#define CS_TOPIC_LEN		250

/* Sync latency histogram (event_timestamp -> applied), upper bounds in ms. */
#define CS_LATENCY_BUCKETS	16
extern const double cs_latency_bounds_ms[CS_LATENCY_BUCKETS];	/* last = +Inf */

typedef enum CsWorkerKind
{
	CS_WORKER_NONE = 0,
	CS_WORKER_LAUNCHER,
	CS_WORKER_CONSUMER,
	CS_WORKER_PUBLISHER
} CsWorkerKind;

/* What a worker is doing; cs_shmem_state_name() gives the views' word. */
typedef enum CsWorkerState
{
	CS_STATE_STARTING = 0,		/* configured or attached, not yet running */
	CS_STATE_RUNNING,			/* consuming / publishing */
	CS_STATE_WAITING,			/* held back or waiting for a prerequisite */
	CS_STATE_RETRYING,			/* publisher: deliveries failing, retried */
	CS_STATE_ERROR,				/* its last step failed, retried */
	CS_STATE_RESTARTING,		/* exited with an error, the launcher restarts it */
	CS_STATE_STOPPED,			/* exited cleanly */
	CS_STATE_FAILED				/* exited with an error */
} CsWorkerState;

/* A worker's slot in shared memory (layout private to cs_shmem.c). */
typedef struct CsWorkerSlot CsWorkerSlot;

/*
 * A copy of a slot's scalar fields, taken under its lock (one consistent
 * moment).  Values, not the segment: writing to it changes nothing.
 */
typedef struct CsWorkerStatus
{
	CsWorkerKind kind;
	pid_t		pid;
	char		database[NAMEDATALEN];
	char		role[NAMEDATALEN];
	char		group_id[256];
	CsWorkerState state;
	TimestampTz started_at;
	/* outcome counters, indexed by CsApplyResult */
	int64		results[CS_RESULT_COUNT];
	int64		dead_lettered;
	int64		batches;
	int64		published;		/* publisher: acknowledged messages */
	int64		publish_failures;
	TimestampTz last_batch_at;
	double		last_batch_ms;
	int64		latency_buckets[CS_LATENCY_BUCKETS];	/* non-cumulative */
	int64		latency_count;
	double		latency_sum_ms;
	TimestampTz caught_up_at;	/* last time the consumer had nothing left to read */
	char		last_error[512];
	TimestampTz last_error_at;
	int			npartitions;	/* partitions the consumer holds */
	int			nrecorded;		/* ... of which recorded in the slot */
	int64		lag;			/* sum over recorded partitions with a watermark */
	/* health (cs_health.c), from librdkafka's statistics every second */
	TimestampTz kafka_stats_at; /* last statistics seen (0 = none) */
	int			brokers_known;	/* brokers the client knows of */
	int			brokers_up;		/* ... of which connected */
	TimestampTz brokers_up_at;	/* last time one was connected (0 = never) */
	int			topic_partitions;	/* partitions of the consumer's topics, -1 unknown */
	bool		partial_assignment; /* the consumers of this database hold fewer */
	TimestampTz partial_since;	/* when fewer were first seen (0 = not) */
	TimestampTz last_delivery_at;	/* publisher: last round that delivered a row */
	TimestampTz last_failure_at;	/* publisher: last round that delivered none */
	/* launcher (cs_launcher.c): why a wanted worker is held back, "" = not */
	char		held_back[256];
	TimestampTz retire_until;	/* DROP DATABASE in progress: do not start before */
	TimestampTz stats_reset;	/* counters and latency zeroed since (0 = never configured) */
} CsWorkerStatus;

/* One recorded partition: topic is an index in CsPartitions.topics. */
typedef struct CsPartitionPosition
{
	int32		partition;
	int16		topic;
	int64		next_offset;	/* next offset to apply (stored in the DB) */
	int64		high_watermark; /* last known end of the partition, -1 unknown */
} CsPartitionPosition;

/* A copy of a slot's recorded partitions (palloc'd by cs_shmem_read_partitions). */
typedef struct CsPartitions
{
	uint64		generation;		/* of the assignment: see cs_shmem_set_positions */
	char		database[NAMEDATALEN];
	char		group_id[256];
	int			held;			/* partitions the consumer holds */
	int			n;				/* recorded: positions[0..n) */
	char		topics[CS_MAX_TOPICS][CS_TOPIC_LEN];
	CsPartitionPosition positions[FLEXIBLE_ARRAY_MEMBER];
} CsPartitions;

#define cs_partition_topic(ps, p)	((ps)->topics[(ps)->positions[(p)].topic])

/* One partition of a new assignment, for cs_shmem_set_partitions(). */
typedef struct CsAssignedPartition
{
	const char *topic;
	int32		partition;
	int64		offset;			/* next offset to apply; < 0: 0 */
} CsAssignedPartition;

/*
 * A citizen_sync.* setting whose value in a configuration file is invalid
 * (cs_settings.c).  At server start the affected workers are not started;
 * after a reload the previous value stays in force.
 */
#define CS_MAX_CONFIG_PROBLEMS	8
typedef struct CsConfigProblem
{
	char		setting[64];
	char		message[512];	/* errmsg: errdetail, never a kafka_properties value */
	int			affects;		/* CS_AFFECTS_* bits */
	bool		at_startup;		/* true: workers held back; false: old value kept */
	TimestampTz since;
} CsConfigProblem;

/* Install the shmem request and startup hooks (from _PG_init). */
extern void cs_shmem_init(void);

/* Is the segment there (the library was preloaded)? */
extern bool cs_shmem_ready(void);

/* ERROR unless cs_shmem_ready() (for SQL functions reading the slots). */
extern void cs_shmem_require(void);

/*
 * Slots are owned by the launcher: slot i < CS_MAX_DATABASES serves entry i
 * of citizen_sync.databases, slot CS_PUBLISHER_SLOT the publisher.  The
 * launcher configures a slot before starting its worker and keeps it (with
 * the last error) while the worker is down; the worker attaches to it.
 */
#define CS_PUBLISHER_SLOT	CS_MAX_DATABASES

/* Slot i (0 <= i < CS_MAX_WORKERS), and back. */
extern CsWorkerSlot *cs_shmem_slot(int i);
extern int	cs_shmem_slot_index(const CsWorkerSlot *slot);

/*
 * The slot's kind and database.  Fixed while a worker is attached (the
 * launcher reconfigures only slots without one), so a worker may use them
 * for its own slot without a lock.
 */
extern CsWorkerKind cs_shmem_slot_kind(const CsWorkerSlot *slot);
extern const char *cs_shmem_slot_database(const CsWorkerSlot *slot);

/* Launcher: (re)describe slot i; counters are reset when the target changes. */
extern void cs_shmem_configure_slot(int i, CsWorkerKind kind, const char *database,
									const char *role, const char *group_id);

/* Launcher: mark slot i unused. */
extern void cs_shmem_clear_slot(int i);

/*
 * Launcher: the pid of the process attached to slot i, 0 if none (a pid
 * whose process is gone is forgotten).
 */
extern pid_t cs_shmem_attached_pid(int i);

/*
 * Worker: attach to slot i for the life of the process; returns the slot.
 * Copies its role and group id (may be NULL) for the worker.  At exit the
 * slot is detached, its state "stopped" or "failed".
 */
extern CsWorkerSlot *cs_shmem_attach(int i, char *role, char *group_id);

/* Worker: the slot attached to, NULL before cs_shmem_attach(). */
extern CsWorkerSlot *cs_shmem_my_slot(void);

/* The publisher's pgprocno for waking it, -1 when none runs. */
extern int	cs_shmem_publisher_pgprocno(void);

/* Set the slot's state. */
extern void cs_shmem_set_state(CsWorkerSlot *slot, CsWorkerState state);

/* The slot's state (a worker's own, or the launcher's view of one). */
extern CsWorkerState cs_shmem_get_state(const CsWorkerSlot *slot);

/* The word the views show for a state ("running", "waiting", ...). */
extern const char *cs_shmem_state_name(CsWorkerState state);

/* Record an error sentence and its time in the slot ("" clears it). */
extern void cs_shmem_set_error(CsWorkerSlot *slot, const char *message);

/*
 * A batch was applied (consumer): clear a last error left by an earlier
 * failure, unless it states a condition that still holds (more partitions
 * than recorded, held back).  A delivered publish round does the same in
 * cs_shmem_count_publish().
 */
extern void cs_shmem_note_success(CsWorkerSlot *slot);

/*
 * Zero slot i's counters (outcomes, dead letters, batches, published,
 * publish failures) and latency histogram, and note now as the time
 * (citizen_sync.stats_reset()).  Returns false for an unconfigured slot.
 */
extern bool cs_shmem_reset_stats(int i, TimestampTz now);

/*
 * Replace the last error by message only if it is a different one, keeping
 * the time of an unchanged one; "" clears it only if it is clear_if (so a
 * problem shown by the launcher is not taken for a worker's).  A state other
 * than -1 is set too.
 */
extern void cs_shmem_show_problem(CsWorkerSlot *slot, const char *message,
								  const char *clear_if, int state);

/*
 * Launcher: a worker exited with an error.  Keeps its last error (or says
 * to see the log), stamps it and shows the state "restarting".
 */
extern void cs_shmem_note_restart(CsWorkerSlot *slot);

/*
 * Launcher: the slot's worker is held back for reason (state "waiting",
 * held_back and last_error say why); "" ends it, clearing the last error if
 * it is still the reason.  Returns whether the reason changed.
 */
extern bool cs_shmem_set_held_back(CsWorkerSlot *slot, const char *reason);

/*
 * DROP DATABASE of dbname: every slot of it is held until until; the pids of
 * their attached workers go to pids (CS_MAX_WORKERS entries); returns how
 * many.
 */
extern int	cs_shmem_retire_database(const char *dbname, TimestampTz until, pid_t *pids);

/* Consumer: a committed batch's outcome (added to the counters) and duration; state "running". */
struct CsBatchOutcome;
extern void cs_shmem_count_batch(CsWorkerSlot *slot, const struct CsBatchOutcome *outcome,
								 double ms);

/*
 * Publisher: a mark step's outcome; state "retrying" when retrying, else
 * "running".  error (when not NULL) becomes the last error.  delivered /
 * failed stamp last_delivery_at / last_failure_at.
 */
extern void cs_shmem_count_publish(CsWorkerSlot *slot, int64 ok, int64 bad,
								   bool delivered, bool failed, bool retrying,
								   const char *error);

/*
 * Consumer: its new assignment (n = 0: none), the next offsets as stored
 * in the database; high watermarks unknown, caught_up_at reset.  Records
 * at most CS_MAX_PARTITIONS partitions of at most CS_MAX_TOPICS topics;
 * returns how many it recorded (n when all).  When fewer, the slot's last
 * error says so and the consumer is never reported caught up (the caller
 * logs the WARNING).
 */
extern int	cs_shmem_set_partitions(CsWorkerSlot *slot, const CsAssignedPartition *parts, int n);

/*
 * A copy of slot i's recorded partitions, palloc'd in the current memory
 * context (positions for ps->n entries); NULL for a slot without a consumer.
 */
extern CsPartitions *cs_shmem_read_partitions(int i);

/*
 * Consumer: publish new positions and watermarks computed from a copy that
 * cs_shmem_read_partitions() gave (same order).  Ignored when the
 * assignment changed since that copy (generation).  caught_up_at != 0
 * records that the consumer had nothing left to read then, unless it holds
 * partitions the slot could not record.  Returns whether published.
 */
extern bool cs_shmem_set_positions(CsWorkerSlot *slot, const CsPartitions *ps,
								   TimestampTz caught_up_at);

/*
 * Health (cs_health.c): statistics seen at now with brokers known/up and
 * the topics' partition count (< 0: leave it).
 */
extern void cs_shmem_set_kafka_health(CsWorkerSlot *slot, TimestampTz now, int known,
									  int up, int topic_partitions);

/*
 * Health: the partial-assignment flag and since when the assignment is short
 * (0: not); clear_caught_up resets caught_up_at (a change of assignment).
 */
extern void cs_shmem_set_partial(CsWorkerSlot *slot, bool partial, TimestampTz since,
								 bool clear_caught_up);

/*
 * Copy slot i's scalar fields into *st under its lock; false (and *st
 * untouched) for an unused slot.  lag is summed only if with_lag.
 */
extern bool cs_shmem_read_status(int i, CsWorkerStatus *st, bool with_lag);

/*
 * cs_shmem_read_status() of every slot, palloc'd (CS_MAX_WORKERS entries,
 * kind CS_WORKER_NONE for unused slots): each consistent in itself.
 */
extern CsWorkerStatus *cs_shmem_read_all(bool with_lag);

/* Configuration problems (launcher writes, views read), at most CS_MAX_CONFIG_PROBLEMS. */
extern void cs_shmem_set_config_problems(const CsConfigProblem *problems, int n);
extern int	cs_shmem_get_config_problems(CsConfigProblem *problems);

/* "consumer", "publisher", "launcher" or "none": the kind as the views show it. */
extern const char *cs_shmem_kind_name(CsWorkerKind kind);

#endif							/* CS_SHMEM_H */
