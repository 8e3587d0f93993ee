/*-------------------------------------------------------------------------
 * cs_shmem.h
 *	  Shared state of the citizen_sync workers: one slot per worker.
 *
 * Locking: CsShared->lock (a named LWLock tranche "citizen_sync") protects
 * slot allocation and the text fields of slots.  Counters in a slot are
 * written only by the worker owning it, under the lock in shared mode is not
 * required: readers take the lock in shared mode and accept a torn read of
 * an in-flight batch's counters as at most one batch stale.
 *-------------------------------------------------------------------------
 */
#ifndef CS_SHMEM_H
#define CS_SHMEM_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/lwlock.h"
#include "cs_apply.h"
#include "cs_config.h"

#define CS_MAX_WORKERS		(CS_MAX_DATABASES + 1)
#define CS_MAX_PARTITIONS	256
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

/* One assigned partition of a consumer, with its position and lag. */
typedef struct CsPartitionState
{
	char		topic[CS_TOPIC_LEN];
	int32		partition;
	int64		next_offset;	/* next offset to apply (stored in the DB) */
	int64		high_watermark; /* last known end of the partition, -1 unknown */
} CsPartitionState;

typedef struct CsWorkerSlot
{
	CsWorkerKind kind;
	pid_t		pid;
	int			pgprocno;		/* for waking the worker through its latch */
	char		database[NAMEDATALEN];
	char		role[NAMEDATALEN];
	char		group_id[256];
	char		state[32];		/* starting, running, waiting, error, ... */
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
	int			npartitions;
	CsPartitionState partitions[CS_MAX_PARTITIONS];
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
} CsWorkerSlot;

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

typedef struct CsShared
{
	LWLock	   *lock;
	int			publisher_pgprocno; /* -1 when no publisher runs */
	pid_t		publisher_pid;
	CsWorkerSlot slots[CS_MAX_WORKERS];
	int			nconfig_problems;	/* written by the launcher only */
	CsConfigProblem config_problems[CS_MAX_CONFIG_PROBLEMS];
} CsShared;

extern CsShared *cs_shared;

/* Install the shmem request and startup hooks (from _PG_init). */
extern void cs_shmem_init(void);

/*
 * Slots are owned by the launcher: slot i < CS_MAX_DATABASES serves entry i
 * of citizen_sync.databases, slot CS_PUBLISHER_SLOT the publisher.  The
 * launcher configures a slot before starting its worker and keeps it (with
 * the last error) while the worker is down; the worker attaches to it.
 */
#define CS_PUBLISHER_SLOT	CS_MAX_DATABASES

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

/* Worker: attach to slot i for the life of the process; returns the slot. */
extern CsWorkerSlot *cs_shmem_attach(int i);

/* Worker: the slot attached to, NULL before cs_shmem_attach(). */
extern CsWorkerSlot *cs_shmem_my_slot(void);

/* Set the slot's state word (under the lock). */
extern void cs_shmem_set_state(CsWorkerSlot *slot, const char *state);

/* Record an error sentence and its time in the slot (under the lock). */
extern void cs_shmem_set_error(CsWorkerSlot *slot, const char *message);

/* "consumer", "publisher", "launcher" or "none": the kind as the views show it. */
extern const char *cs_shmem_kind_name(CsWorkerKind kind);

#endif							/* CS_SHMEM_H */
