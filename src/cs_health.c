/*-------------------------------------------------------------------------
 * cs_health.c
 *	  Broker reachability and partial assignment from librdkafka statistics.
 *
 * See cs_health.h.  Runs in the worker's main loop; the JSON is parsed with
 * json-c and released before returning; slot fields are written under the
 * shared lock, the log is written after releasing it.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <json-c/json.h>

#include "cs_config.h"
#include "cs_guc.h"
#include "cs_health.h"
#include "cs_subscription.h"
#include "cs_kafka_conf.h"
#include "utils/timestamp.h"

void
cs_health_conf(rd_kafka_conf_t *conf)
{
	cs_kafka_conf_set(conf, "statistics.interval.ms", CS_STATS_INTERVAL);
}

/*
 * Count the brokers the client was given or learned (not its internal or
 * logical ones) and those connected.
 */
static void
count_brokers(json_object *root, int *known, int *up)
{
	json_object *brokers;
	struct json_object_iterator it;
	struct json_object_iterator end;

	*known = *up = 0;
	if (!json_object_object_get_ex(root, "brokers", &brokers) ||
		!json_object_is_type(brokers, json_type_object))
		return;
	end = json_object_iter_end(brokers);
	for (it = json_object_iter_begin(brokers); !json_object_iter_equal(&it, &end);
		 json_object_iter_next(&it))
	{
		json_object *b = json_object_iter_peek_value(&it);
		json_object *source;
		json_object *state;
		const char *src;

		if (!json_object_object_get_ex(b, "source", &source) ||
			!json_object_object_get_ex(b, "state", &state))
			continue;
		src = json_object_get_string(source);
		if (strcmp(src, "internal") == 0 || strcmp(src, "logical") == 0)
			continue;
		(*known)++;
		if (strcmp(json_object_get_string(state), "UP") == 0)
			(*up)++;
	}
}

/*
 * Partitions of one topic in the client's metadata, or -1 when it is not
 * known yet.
 */
static int
count_one_topic(json_object *all, const char *name)
{
	json_object *topic;
	json_object *parts;
	struct json_object_iterator it;
	struct json_object_iterator end;
	int			n = 0;

	if (!json_object_object_get_ex(all, name, &topic) ||
		!json_object_object_get_ex(topic, "partitions", &parts) ||
		!json_object_is_type(parts, json_type_object))
		return -1;
	end = json_object_iter_end(parts);
	for (it = json_object_iter_begin(parts); !json_object_iter_equal(&it, &end);
		 json_object_iter_next(&it))
		if (json_object_iter_peek_name(&it)[0] != '-')	/* "-1": unassigned queue */
			n++;
	return n > 0 ? n : -1;
}

/*
 * Partitions of every topic this database subscribes to (the built-in
 * subscription's citizen_sync.topics included) in the client's metadata, or
 * -1 when one of them is not known yet.  Topic names cannot contain a comma.
 */
static int
count_topic_partitions(json_object *root)
{
	char	   *list = cs_subscription_topics();
	json_object *all = NULL;
	int			total = 0;

	if (list[0] == '\0' || !json_object_object_get_ex(root, "topics", &all))
		total = -1;
	for (char *name = list; total >= 0 && name != NULL;)
	{
		char	   *comma = strchr(name, ',');
		int			n;

		if (comma)
			*comma = '\0';
		n = count_one_topic(all, name);
		total = (n < 0) ? -1 : total + n;
		name = comma ? comma + 1 : NULL;
	}
	pfree(list);
	return total;
}

bool
cs_health_assignment_short(const CsWorkerStatus *all, int i, int *held, int *total)
{
	const CsWorkerStatus *me = &all[i];

	*held = 0;
	*total = me->topic_partitions;
	for (int j = 0; j < CS_MAX_WORKERS; j++)
		if (all[j].kind == CS_WORKER_CONSUMER && all[j].pid != 0 &&
			strcmp(all[j].database, me->database) == 0 &&
			strcmp(all[j].group_id, me->group_id) == 0)
		{
			*held += all[j].npartitions;
			*total = Max(*total, all[j].topic_partitions);
		}
	if (*total <= 0)
		return true;			/* not known yet: not known to be complete */
	return *held < *total;
}

/*
 * Re-evaluate the assignment of the slot's database and publish the
 * slot's partial flag; returns +1 when it has just been found partial for
 * the grace period, -1 when that has ended.  caught_up_at is reset when
 * assigned (a new assignment) or on either change.
 */
static int
evaluate_assignment(CsWorkerSlot *slot, TimestampTz now, bool assigned, int *held, int *total)
{
	int			i = cs_shmem_slot_index(slot);
	CsWorkerStatus *all = cs_shmem_read_all(false);
	bool		is_short = cs_health_assignment_short(all, i, held, total);
	bool		partial = all[i].partial_assignment;
	TimestampTz since = all[i].partial_since;
	int			change = 0;

	pfree(all);
	if (*total <= 0)
		;						/* no metadata: nothing to conclude */
	else if (!is_short)
	{
		since = 0;
		if (partial)
			change = -1;
		partial = false;
	}
	else
	{
		if (since == 0)
			since = now;
		if (!partial && TimestampDifferenceExceeds(since, now, CS_PARTIAL_GRACE_MS))
		{
			partial = true;
			change = 1;
		}
	}
	cs_shmem_set_partial(slot, partial, since, assigned || change != 0);
	return change;
}

static void
report_assignment(CsWorkerSlot *slot, int change, int held, int total)
{
	CsWorkerStatus st;

	if (change == 0 || !cs_shmem_read_status(cs_shmem_slot_index(slot), &st, false))
		return;
	if (change > 0)
		ereport(WARNING,
				(errmsg("citizen_sync: the consumers of \"%s\" hold %d of the %d partitions of their topics in group \"%s\"",
						st.database, held, total, st.group_id),
				 errdetail("Another member of the consumer group, such as a cloned or promoted instance, holds the others: this cache receives only part of the events.  It keeps applying what it receives but is not reported fresh (fresh_as_of() is NULL) until it holds every partition."),
				 errhint("Stop the citizen_sync consumer on the other instance (remove the database from its citizen_sync.databases), or give it its own citizen_sync.group_id.")));
	else
		ereport(LOG,
				(errmsg("citizen_sync: the consumers of \"%s\" hold all %d partitions of their topics again",
						st.database, total)));
}

void
cs_health_kafka_stats(CsWorkerSlot *slot, const char *json)
{
	json_object *root = json ? json_tokener_parse(json) : NULL;
	TimestampTz now = GetCurrentTimestamp();
	bool		consumer = cs_shmem_slot_kind(slot) == CS_WORKER_CONSUMER;
	int			known,
				up,
				partitions = -1;
	int			change = 0,
				held = 0,
				total = 0;

	if (root == NULL)
		return;
	count_brokers(root, &known, &up);
	if (consumer)
		partitions = count_topic_partitions(root);
	json_object_put(root);

	cs_shmem_set_kafka_health(slot, now, known, up, partitions);
	if (consumer)
		change = evaluate_assignment(slot, now, false, &held, &total);
	report_assignment(slot, change, held, total);
}

void
cs_health_assigned(CsWorkerSlot *slot)
{
	int			change,
				held,
				total;

	change = evaluate_assignment(slot, GetCurrentTimestamp(), true, &held, &total);
	report_assignment(slot, change, held, total);
}
