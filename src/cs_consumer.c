/*-------------------------------------------------------------------------
 * cs_consumer.c
 *	  The consumer worker: Kafka to the subscribed cache tables, in-process.
 *
 * One process per entry of citizen_sync.databases, connected to that
 * database as the entry's role, subscribed to every topic of the database's
 * subscriptions (re-read at most once a second, cs_subscription.c).  Loop:
 * wait on the latch and the consumer
 * queue; drain events (messages, rebalances, errors, logs) from this thread
 * only; when a batch is full or old enough, apply it in one transaction that
 * also stores the partitions' next offsets (cs_batch.c), then commit the
 * offsets to Kafka asynchronously for lag tools.
 *
 * On assignment every partition is positioned at the offset stored in the
 * database, never at Kafka's committed offset.  Rebalance events arrive as
 * queue events (no librdkafka callback calls into PostgreSQL).  A batch that
 * fails for a system reason is kept and retried with backoff; one that fails
 * while partitions are being revoked is dropped and the process restarts,
 * resuming from the stored offsets.
 *
 * No librdkafka call of the loop waits for a broker: queue polls are
 * non-blocking, commits asynchronous, watermarks read from librdkafka's
 * cache, (un)assignments are served by librdkafka's own main thread without
 * a request; the only blocking query (watermarks after an error) runs in a
 * helper thread (cs_probe.c); closing is asynchronous and bounded (2 s), and
 * the handle is not destroyed while that thread is stuck in it.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "cs_batch.h"
#include "cs_config.h"
#include "cs_guc.h"
#include "cs_health.h"
#include "cs_housekeeping.h"
#include "cs_kafka_conf.h"
#include "cs_offsets.h"
#include "cs_probe.h"
#include "cs_shmem.h"
#include "cs_subscription.h"
#include "cs_worker.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "utils/acl.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void cs_consumer_main(Datum arg);

typedef struct Consumer
{
	CsWorkerSlot *slot;
	char		database[NAMEDATALEN];
	char		role[NAMEDATALEN];
	char		group_id[256];
	rd_kafka_t *rk;
	rd_kafka_queue_t *queue;
	CsQueueWaiter waiter;
	/* the batch being collected: events own their messages */
	rd_kafka_event_t **held;
	int			nheld;
	CsMessage  *msgs;
	int			nmsgs;
	int			capacity;
	TimestampTz first_at;
	int			failures;		/* consecutive failed attempts of this batch */
	TimestampTz retry_at;
	bool		kafka_trouble;	/* an error was reported; not sure we are caught up */
	CsProbe    *probe;			/* watermark queries, off the main loop */
	uint64_t	probe_request;	/* the probe that may end kafka_trouble; 0: none yet */
	TimestampTz next_probe_at;
	TimestampTz next_housekeeping_at;
	char	   *topics;			/* subscribed topics, comma-separated, sorted */
	TimestampTz next_topics_check_at;
} Consumer;

/*
 * Is the extension installed here, and does the apply role exist?  Fills
 * *role_oid (InvalidOid for no role configured) or msg with what is missing.
 */
static bool
prerequisites_met(Consumer *c, Oid *role_oid, char *msg, size_t msglen,
				  char *hint, size_t hintlen)
{
	bool		ok = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	*role_oid = c->role[0] ? get_role_oid(c->role, true) : InvalidOid;
	if (!cs_extension_ready(msg, msglen, hint, hintlen))
		ok = false;
	else if (c->role[0] && !OidIsValid(*role_oid))
	{
		snprintf(msg, msglen, "role \"%s\" named in citizen_sync.databases does not exist",
				 c->role);
		snprintf(hint, hintlen,
				 "Run SELECT citizen_sync.create_service_roles('<service>') in database \"%s\", or fix citizen_sync.databases.",
				 c->database);
		ok = false;
	}
	CommitTransactionCommand();
	return ok;
}

/*
 * Wait until the extension is installed and the role exists, reporting what
 * is missing in the log (once) and the stats view; then become the role.
 * The worker connects as the bootstrap superuser because service roles are
 * NOLOGIN, and drops to the role for everything it executes.
 */
static void
wait_for_prerequisites(Consumer *c)
{
	bool		warned = false;
	Oid			role_oid = InvalidOid;
	char		msg[256];
	char		hint[256];
	char		last_msg[256] = "";

	while (!cs_got_sigterm &&
		   !prerequisites_met(c, &role_oid, msg, sizeof(msg), hint, sizeof(hint)))
	{
		cs_shmem_set_error(c->slot, msg);
		cs_shmem_set_state(c->slot, CS_STATE_WAITING);
		if (strcmp(msg, last_msg) != 0)	/* once per reason */
			ereport(WARNING,
					(errmsg("citizen_sync: %s", msg),
					 errhint("%s The consumer checks again every %d s.",
							 hint, cs_restart_delay_s)));
		strlcpy(last_msg, msg, sizeof(last_msg));
		warned = true;
		cs_worker_sleep(cs_restart_delay_s * 1000L);
		cs_worker_reload_config();
	}
	if (OidIsValid(role_oid))
		SetUserIdAndSecContext(role_oid, SECURITY_LOCAL_USERID_CHANGE);
	else
		ereport(WARNING,
				(errmsg("citizen_sync: the consumer for \"%s\" applies events as a superuser", c->database),
				 errhint("Name the service's sync user in citizen_sync.databases, e.g. '%s:permits_sync_user'.",
						 c->database)));
	if (warned)
		cs_shmem_set_error(c->slot, "");
}

/*
 * Tunable consumer defaults; citizen_sync.kafka_properties may override them.
 *
 * fetch.wait.max.ms is the one trade-off between latency and idle cost.  A
 * Kafka broker answers a fetch as soon as data arrives (fetch purgatory), so
 * against real brokers a long wait costs no latency: set
 * fetch.wait.max.ms=500 in citizen_sync.kafka_properties and an idle
 * consumer sends two fetch requests a second instead of a hundred, while
 * the worker still wakes on the first message (the queue's fd is in its wait
 * set, cs_worker.c).  librdkafka's mock broker -- the embedded broker of the
 * tests and benchmarks -- does not cut the wait short: there a long wait is
 * the latency of the first message after a pause, hence 10 ms by default.
 */
static const char *const consumer_defaults[] = {
	"auto.offset.reset", "earliest",	/* used only when a group has no offset at all */
	"queued.max.messages.kbytes", "16384",	/* bounded prefetch: 16 MB */
	"fetch.wait.max.ms", "10",		/* latency over idle fetch requests */
	"socket.nagle.disable", "true",	/* no 40 ms Nagle/delayed-ACK stalls */
	"fetch.error.backoff.ms", "100",	/* retry a failed fetch soon (default 500) */
	NULL
};

static void
read_topics_step(void *arg)
{
	char	  **topics = (char **) arg;

	cs_tx_begin("citizen_sync: reading the subscriptions");
	cs_subscriptions_refresh();
	*topics = MemoryContextStrdup(TopMemoryContext, cs_subscription_topics());
	cs_tx_commit();
}

/*
 * Subscribe the Kafka consumer to every topic subscribed in this database
 * (citizen_sync.subscriptions), when that set changed since the last call.
 * Checked at most once a second (a short transaction, which also takes in
 * the invalidations subscribe() and unsubscribe() send): a subscription
 * takes effect without a restart.  Events of a topic dropped meanwhile are
 * counted as ignored.
 */
static void
maybe_resubscribe(Consumer *c)
{
	TimestampTz now = GetCurrentTimestamp();
	char	   *topics = NULL;
	rd_kafka_topic_partition_list_t *sub;
	rd_kafka_resp_err_t err;

	if (now < c->next_topics_check_at)
		return;
	c->next_topics_check_at = TimestampTzPlusMilliseconds(now, 1000);
	if (!cs_worker_try(c->slot, read_topics_step, &topics) || topics == NULL)
		return;
	if (c->topics != NULL && strcmp(c->topics, topics) == 0)
	{
		pfree(topics);
		return;
	}
	sub = rd_kafka_topic_partition_list_new(8);
	for (char *t = strtok(pstrdup(topics), ","); t != NULL; t = strtok(NULL, ","))
		rd_kafka_topic_partition_list_add(sub, t, RD_KAFKA_PARTITION_UA);
	err = sub->cnt > 0 ? rd_kafka_subscribe(c->rk, sub) : rd_kafka_unsubscribe(c->rk);
	rd_kafka_topic_partition_list_destroy(sub);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		ereport(WARNING,
				(errmsg("citizen_sync: consumer for database \"%s\" could not subscribe to \"%s\": %s",
						c->database, topics, rd_kafka_err2str(err)),
				 errhint("The consumer tries again in a second.")));
		pfree(topics);
		return;
	}
	ereport(LOG,
			(errmsg("citizen_sync: consumer for database \"%s\" subscribed to %s%s%s",
					c->database, topics[0] ? "topics \"" : "no topic",
					topics, topics[0] ? "\"" : "")));
	if (c->topics)
		pfree(c->topics);
	c->topics = topics;
}

/* Create the librdkafka consumer and subscribe it (maybe_resubscribe()). */
static void
kafka_start(Consumer *c)
{
	char		client_id[300];
	char		errstr[512];
	rd_kafka_conf_t *conf;

	snprintf(client_id, sizeof(client_id), "citizen_sync-%s", c->database);
	conf = cs_kafka_conf_new(client_id, consumer_defaults);
	/* what exactly-once and bounded memory depend on: not overridable */
	cs_kafka_conf_set(conf, "group.id", c->group_id);
	cs_kafka_conf_set(conf, "enable.auto.commit", "false");
	cs_kafka_conf_set(conf, "enable.auto.offset.store", "false");
	cs_kafka_conf_set(conf, "enable.partition.eof", "false");
	cs_kafka_conf_set(conf, "log.queue", "true");
	cs_health_conf(conf);
	rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_REBALANCE | RD_KAFKA_EVENT_ERROR |
							 RD_KAFKA_EVENT_LOG | RD_KAFKA_EVENT_OFFSET_COMMIT |
							 RD_KAFKA_EVENT_STATS);
	c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (c->rk == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("citizen_sync: consumer for database \"%s\": could not create a Kafka consumer: %s",
						c->database, errstr)));
	rd_kafka_poll_set_consumer(c->rk);
	rd_kafka_set_log_queue(c->rk, NULL);
	c->queue = rd_kafka_queue_get_consumer(c->rk);
	cs_waiter_init(&c->waiter, c->queue);
	c->probe = cs_probe_start(c->rk);
	if (c->probe == NULL)
		ereport(WARNING,
				(errmsg("citizen_sync: could not start the consumer's watermark thread"),
				 errdetail("After a Kafka error, the cache is not reported fresh again until the consumer restarts.")));

	c->next_topics_check_at = 0;
	maybe_resubscribe(c);
}

/*
 * Publish the assignment (with stored positions) in the stats slot; one
 * the slot cannot record whole is said loudly (cs_shmem.h).
 */
static void
slot_set_partitions(Consumer *c, const rd_kafka_topic_partition_list_t *parts)
{
	int			n = parts ? parts->cnt : 0;
	CsAssignedPartition *a = palloc(sizeof(CsAssignedPartition) * Max(n, 1));
	int			kept;

	for (int i = 0; i < n; i++)
	{
		a[i].topic = parts->elems[i].topic;
		a[i].partition = parts->elems[i].partition;
		a[i].offset = parts->elems[i].offset;
	}
	kept = cs_shmem_set_partitions(c->slot, a, n);
	pfree(a);
	if (kept < n)
		ereport(WARNING,
				(errmsg("citizen_sync: the consumer for \"%s\" holds %d partitions; shared memory records %d of them",
						c->database, n, kept),
				 errdetail("At most %d partitions of %d topics are recorded per consumer.  Stored offsets, and so delivery, cover every partition; consumer_lag shows the recorded ones and fresh_as_of() stays NULL.",
						   CS_MAX_PARTITIONS, CS_MAX_TOPICS),
				 errhint("Spread the topics over more consumers of the database, or use fewer partitions.")));
}

/*
 * After a committed batch: positions and cached high watermarks, computed
 * from a copy of the slot's partitions without a lock, then published.
 */
static void
slot_update_positions(Consumer *c)
{
	CsPartitions *ps = cs_shmem_read_partitions(cs_shmem_slot_index(c->slot));
	int			i = -1;

	/* a batch holds runs of one partition: look a partition up per run */
	for (int m = 0; m < c->nmsgs; m++)
	{
		if (i < 0 || ps->positions[i].partition != c->msgs[m].partition ||
			strcmp(cs_partition_topic(ps, i), c->msgs[m].topic) != 0)
			for (i = ps->n - 1; i >= 0; i--)
				if (ps->positions[i].partition == c->msgs[m].partition &&
					strcmp(cs_partition_topic(ps, i), c->msgs[m].topic) == 0)
					break;
		if (i >= 0 && c->msgs[m].offset + 1 > ps->positions[i].next_offset)
			ps->positions[i].next_offset = c->msgs[m].offset + 1;
	}
	for (int p = 0; p < ps->n; p++)
	{
		int64_t		lo,
					hi;

		if (rd_kafka_get_watermark_offsets(c->rk, cs_partition_topic(ps, p),
										   ps->positions[p].partition, &lo, &hi) ==
			RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0)
			ps->positions[p].high_watermark = hi;
	}
	(void) cs_shmem_set_positions(c->slot, ps, 0);
	pfree(ps);
}

/* Add a batch's outcome to the slot's counters. */
static void
slot_count(Consumer *c, const CsBatchOutcome *o, double ms)
{
	cs_shmem_count_batch(c->slot, o, ms);
}

/* Release the held events (and so their messages). */
static void
batch_release(Consumer *c)
{
	for (int i = 0; i < c->nheld; i++)
		rd_kafka_event_destroy(c->held[i]);
	c->nheld = 0;
	c->nmsgs = 0;
	c->failures = 0;
	c->retry_at = 0;
}

/* Commit the batch's next offsets to Kafka, asynchronously, for lag tools. */
static void
commit_to_kafka(Consumer *c)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(c->nmsgs);

	for (int i = 0; i < c->nmsgs; i++)
	{
		rd_kafka_topic_partition_t *p =
			rd_kafka_topic_partition_list_find(list, c->msgs[i].topic, c->msgs[i].partition);

		if (p == NULL)
			p = rd_kafka_topic_partition_list_add(list, c->msgs[i].topic, c->msgs[i].partition);
		if (c->msgs[i].offset + 1 > p->offset)
			p->offset = c->msgs[i].offset + 1;
	}
	(void) rd_kafka_commit(c->rk, list, 1);
	rd_kafka_topic_partition_list_destroy(list);
}

typedef struct FlushArgs
{
	Consumer   *c;
	CsBatchOutcome outcome;
} FlushArgs;

static void
flush_step(void *arg)
{
	FlushArgs  *a = (FlushArgs *) arg;

	cs_batch_apply(a->c->group_id, a->c->msgs, a->c->nmsgs, &a->outcome);
}

/*
 * Apply the collected batch.  Returns true when committed (the batch is then
 * released); false when it failed and is kept for a retry with backoff.
 */
static bool
flush_batch(Consumer *c)
{
	FlushArgs	args = {c};
	TimestampTz start = GetCurrentTimestamp();

	if (c->nmsgs == 0)
		return true;
	if (!cs_worker_try(c->slot, flush_step, &args))
	{
		c->failures++;
		c->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  Min(100L << Min(c->failures, 10),
													  cs_restart_delay_s * 1000L));
		return false;
	}
	cs_shmem_note_success(c->slot);	/* recovered; last_error_at keeps when */
	slot_count(c, &args.outcome,
			   (double) (GetCurrentTimestamp() - start) / 1000.0);
	commit_to_kafka(c);
	slot_update_positions(c);
	batch_release(c);
	return true;
}

/* Grow the batch arrays to hold at least n messages. */
static void
batch_reserve(Consumer *c, int n)
{
	if (n <= c->capacity)
		return;
	c->capacity = Max(n, c->capacity * 2);
	c->held = repalloc(c->held, sizeof(rd_kafka_event_t *) * c->capacity);
	c->msgs = repalloc(c->msgs, sizeof(CsMessage) * c->capacity);
}

/* A fetch event: keep it and reference its messages in the batch. */
static void
take_fetch(Consumer *c, rd_kafka_event_t *ev)
{
	const rd_kafka_message_t *m;
	bool		kept = false;

	while ((m = rd_kafka_event_message_next(ev)) != NULL)
	{
		CsMessage  *msg;

		if (m->err)
		{
			cs_worker_log_kafka_condition("fetch error", rd_kafka_message_errstr(m));
			continue;
		}
		batch_reserve(c, c->nmsgs + 1);
		msg = &c->msgs[c->nmsgs++];
		msg->payload = m->payload;
		msg->len = m->len;
		msg->key = m->key;
		msg->key_len = m->key_len;
		msg->topic = rd_kafka_topic_name(m->rkt);
		msg->partition = m->partition;
		msg->offset = m->offset;
		kept = true;
		if (c->nmsgs == 1)
			c->first_at = GetCurrentTimestamp();
	}
	if (kept)
	{
		batch_reserve(c, c->nheld + 1);
		c->held[c->nheld++] = ev;
	}
	else
		rd_kafka_event_destroy(ev);
}

typedef struct AssignArgs
{
	Consumer   *c;
	rd_kafka_topic_partition_list_t *parts;
} AssignArgs;

static void
load_step(void *arg)
{
	AssignArgs *a = (AssignArgs *) arg;

	cs_offsets_load(a->c->group_id, a->parts);
}

/* Partitions assigned: position each at its stored offset, then assign. */
static void
on_assign(Consumer *c, const rd_kafka_topic_partition_list_t *given, bool cooperative)
{
	AssignArgs	args = {c, rd_kafka_topic_partition_list_copy(given)};

	if (!cs_worker_try(c->slot, load_step, &args))
		proc_exit(1);			/* error policy 2 (cs_worker.h): restart, positions
								 * come from the database */
	if (cooperative)
	{
		rd_kafka_error_t *err = rd_kafka_incremental_assign(c->rk, args.parts);

		if (err)
			rd_kafka_error_destroy(err);
	}
	else
		rd_kafka_assign(c->rk, args.parts);
	slot_set_partitions(c, args.parts);
	cs_health_assigned(c->slot);
	ereport(LOG, (errmsg("citizen_sync: consumer for \"%s\" assigned %d partition(s)",
						 c->database, args.parts->cnt)));
	rd_kafka_topic_partition_list_destroy(args.parts);
}

/* Partitions revoked: commit what we hold for them first, then let go. */
static void
on_revoke(Consumer *c, const rd_kafka_topic_partition_list_t *taken, bool cooperative)
{
	if (!flush_batch(c))
	{
		ereport(LOG, (errmsg("citizen_sync: consumer for database \"%s\" could not apply the batch during a rebalance; restarting from the stored offsets",
							 c->database)));
		proc_exit(1);			/* error policy 2 (cs_worker.h) */
	}
	if (cooperative)
	{
		rd_kafka_error_t *err = rd_kafka_incremental_unassign(c->rk, taken);

		if (err)
			rd_kafka_error_destroy(err);
	}
	else
		rd_kafka_assign(c->rk, NULL);
	slot_set_partitions(c, NULL);
	cs_health_assigned(c->slot);
}

static void
handle_rebalance(Consumer *c, rd_kafka_event_t *ev)
{
	bool		cooperative = strcmp(rd_kafka_rebalance_protocol(c->rk), "COOPERATIVE") == 0;
	const rd_kafka_topic_partition_list_t *parts = rd_kafka_event_topic_partition_list(ev);

	if (rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
		on_assign(c, parts, cooperative);
	else
		on_revoke(c, parts, cooperative);
}

/* One event from the consumer queue. */
static void
handle_event(Consumer *c, rd_kafka_event_t *ev)
{
	switch (rd_kafka_event_type(ev))
	{
		case RD_KAFKA_EVENT_FETCH:
			take_fetch(c, ev);
			return;				/* kept or destroyed by take_fetch */
		case RD_KAFKA_EVENT_REBALANCE:
			handle_rebalance(c, ev);
			break;
		case RD_KAFKA_EVENT_ERROR:
			c->kafka_trouble = true;
			c->probe_request = 0;	/* only a probe asked from now on counts */
			if (cs_worker_kafka_error(c->slot, ev))
				ereport(ERROR,	/* fatal: the process restarts (error policy) */
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("citizen_sync: consumer for database \"%s\": fatal Kafka error: %s",
								c->database, rd_kafka_event_error_string(ev))));
			break;
		case RD_KAFKA_EVENT_LOG:
			cs_worker_log_kafka(ev);
			break;
		case RD_KAFKA_EVENT_STATS:
			cs_health_kafka_stats(c->slot, rd_kafka_event_stats(ev));
			break;
		default:
			break;
	}
	rd_kafka_event_destroy(ev);
}

/* Drain the queue without blocking until empty or the batch is full. */
static void
drain_queue(Consumer *c)
{
	rd_kafka_event_t *ev;

	while (c->nmsgs < cs_batch_size && (ev = rd_kafka_queue_poll(c->queue, 0)) != NULL)
		handle_event(c, ev);
}

/* How long to sleep before the next action is due. */
static long
next_timeout(Consumer *c)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz due;

	if (c->retry_at)
		due = c->retry_at;
	else if (c->nmsgs >= cs_batch_size || rd_kafka_queue_length(c->queue) > 0)
		return 0;
	else if (c->nmsgs > 0)
		due = TimestampTzPlusMilliseconds(c->first_at, cs_batch_wait_ms);
	else
		return 1000;			/* safety net: wake up once a second anyway */
	return due <= now ? 0 : (long) ((due - now + 999) / 1000);
}

static bool
batch_due(Consumer *c)
{
	TimestampTz now = GetCurrentTimestamp();

	if (c->nmsgs == 0)
		return false;
	if (c->retry_at)
		return now >= c->retry_at;
	return c->nmsgs >= cs_batch_size ||
		now >= TimestampTzPlusMilliseconds(c->first_at, cs_batch_wait_ms);
}

/*
 * Leave the group promptly: close asynchronously, bounded (2 s) so that the
 * whole stop stays within the 3 s promised whatever the brokers do.
 */
static void
kafka_stop(Consumer *c)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 2000);
	rd_kafka_error_t *err;

	batch_release(c);
	err = rd_kafka_consumer_close_queue(c->rk, c->queue);
	if (err)
		rd_kafka_error_destroy(err);
	while (!rd_kafka_consumer_closed(c->rk) && GetCurrentTimestamp() < deadline)
	{
		rd_kafka_event_t *ev = rd_kafka_queue_poll(c->queue, 100);

		if (ev && rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
		{
			if (strcmp(rd_kafka_rebalance_protocol(c->rk), "COOPERATIVE") == 0)
			{
				rd_kafka_error_t *e = rd_kafka_incremental_unassign(c->rk,
																	rd_kafka_event_topic_partition_list(ev));

				if (e)
					rd_kafka_error_destroy(e);
			}
			else
				rd_kafka_assign(c->rk, NULL);
		}
		if (ev)
			rd_kafka_event_destroy(ev);
	}
	cs_waiter_close(&c->waiter);
	rd_kafka_queue_destroy(c->queue);
	if (c->probe && !cs_probe_stop(c->probe, 100))
	{
		/* its thread is inside the handle: the process exit ends both */
		ereport(LOG,
				(errmsg("citizen_sync: consumer for \"%s\" exits without closing its Kafka handle: a watermark query is waiting for a partition leader",
						c->database)));
		c->rk = NULL;
		return;
	}
	rd_kafka_destroy_flags(c->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	c->rk = NULL;
}

/*
 * After a Kafka error the cached high watermarks may be stale: ask the
 * helper thread for fresh ones of every assigned partition (never waiting
 * for it), and take its answer once one asked after the error is complete.
 * Partitions it answered get their watermark; kafka_trouble ends only when
 * it answered for every one.  A leader that is down keeps the answer from
 * coming (the thread waits on it): the cache is then not reported fresh,
 * which is the truth, while fetching and applying go on.
 */
static void
probe_kafka(Consumer *c, TimestampTz now)
{
	rd_kafka_topic_partition_list_t *answer;
	CsPartitions *ps;
	bool		complete = true;

	if (c->probe == NULL)
		return;
	if (c->probe_request == 0)
	{
		rd_kafka_topic_partition_list_t *parts;

		ps = cs_shmem_read_partitions(cs_shmem_slot_index(c->slot));
		parts = rd_kafka_topic_partition_list_new(Max(ps->n, 1));
		for (int i = 0; i < ps->n; i++)
			rd_kafka_topic_partition_list_add(parts, cs_partition_topic(ps, i),
											  ps->positions[i].partition);
		pfree(ps);
		c->probe_request = cs_probe_request(c->probe, parts);
		rd_kafka_topic_partition_list_destroy(parts);
		c->next_probe_at = TimestampTzPlusMilliseconds(now, 1000);
	}
	answer = cs_probe_result(c->probe, c->probe_request);
	if (answer == NULL)
		return;					/* not yet: never waited for */
	ps = cs_shmem_read_partitions(cs_shmem_slot_index(c->slot));
	for (int i = 0; i < ps->n; i++)
	{
		CsPartitionPosition *p = &ps->positions[i];
		rd_kafka_topic_partition_t *a =
			rd_kafka_topic_partition_list_find(answer, cs_partition_topic(ps, i), p->partition);

		if (a == NULL || a->err != RD_KAFKA_RESP_ERR_NO_ERROR || a->offset < 0)
			complete = false;
		else if (a->offset > p->high_watermark)
			p->high_watermark = a->offset;
	}
	(void) cs_shmem_set_positions(c->slot, ps, 0);
	pfree(ps);
	rd_kafka_topic_partition_list_destroy(answer);
	if (complete)
		c->kafka_trouble = false;
	else if (now >= c->next_probe_at)
		c->probe_request = 0;	/* ask again, at most once a second */
}

/*
 * Nothing is left to read as far as we know: record it, so that readers can
 * tell how fresh the cache is (citizen_sync.cache_fresh_as_of()).
 */
static void
note_caught_up(Consumer *c)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		lagging = false;
	CsPartitions *ps;

	if (c->nmsgs > 0 || rd_kafka_queue_length(c->queue) > 0)
		return;
	ps = cs_shmem_read_partitions(cs_shmem_slot_index(c->slot));
	if (ps->held == 0)
	{
		pfree(ps);
		return;
	}
	if (c->kafka_trouble)
	{
		pfree(ps);
		probe_kafka(c, now);
		if (c->kafka_trouble)
			return;
		ps = cs_shmem_read_partitions(cs_shmem_slot_index(c->slot));	/* probed */
	}
	for (int i = 0; i < ps->n; i++)
	{
		CsPartitionPosition *p = &ps->positions[i];
		int64_t		lo,
					hi;

		/* cached (fetch responses) or probed: the larger is the newer */
		if (rd_kafka_get_watermark_offsets(c->rk, cs_partition_topic(ps, i), p->partition,
										   &lo, &hi) ==
			RD_KAFKA_RESP_ERR_NO_ERROR && hi > p->high_watermark)
			p->high_watermark = hi;
		if (p->high_watermark < 0 || p->high_watermark > p->next_offset)
			lagging = true;
	}
	(void) cs_shmem_set_positions(c->slot, ps, lagging ? 0 : now);
	pfree(ps);
}

static void
housekeeping_step(void *arg)
{
	cs_housekeeping_run(200);
}

/* Retention between batches, every citizen_sync.housekeeping_interval. */
static void
maybe_housekeeping(Consumer *c)
{
	TimestampTz now = GetCurrentTimestamp();

	if (c->nmsgs > 0 || now < c->next_housekeeping_at)
		return;
	c->next_housekeeping_at = TimestampTzPlusMilliseconds(now, cs_housekeeping_interval_s * 1000L);
	(void) cs_worker_try(c->slot, housekeeping_step, NULL);
}

static void
consume_loop(Consumer *c)
{
	cs_shmem_set_state(c->slot, CS_STATE_RUNNING);
	while (!cs_got_sigterm)
	{
		cs_waiter_wait(&c->waiter, next_timeout(c));
		cs_worker_reload_config();
		if (c->retry_at == 0)
			drain_queue(c);
		if (batch_due(c))
			flush_batch(c);
		note_caught_up(c);
		maybe_housekeeping(c);
		if (c->nmsgs == 0)
			maybe_resubscribe(c);
	}
}

void
cs_consumer_main(Datum arg)
{
	int			slot_index = DatumGetInt32(arg);
	Consumer	c;

	memset(&c, 0, sizeof(c));
	cs_worker_setup_signals();
	c.slot = cs_shmem_attach(slot_index, c.role, c.group_id);
	strlcpy(c.database, cs_shmem_slot_database(c.slot), NAMEDATALEN);
	{
		char		msg[256];

		/* stays in the view if the connection fails (FATAL) */
		snprintf(msg, sizeof(msg),
				 "could not connect to database \"%s\" (does it exist?); see the server log",
				 c.database);
		cs_shmem_set_error(c.slot, msg);
	}
	BackgroundWorkerInitializeConnection(c.database, NULL, 0);
	cs_shmem_set_error(c.slot, "");
	pgstat_report_appname("citizen_sync consumer");
	cs_worker_session_settings();
	c.capacity = 1024;
	c.held = MemoryContextAlloc(TopMemoryContext, sizeof(rd_kafka_event_t *) * c.capacity);
	c.msgs = MemoryContextAlloc(TopMemoryContext, sizeof(CsMessage) * c.capacity);

	wait_for_prerequisites(&c);
	if (cs_got_sigterm)
		proc_exit(0);
	kafka_start(&c);
	consume_loop(&c);
	kafka_stop(&c);
	proc_exit(0);
}
