/*-------------------------------------------------------------------------
 * cs_health.h
 *	  What a worker knows about its brokers and its share of the topics.
 *
 * Fed from librdkafka's statistics (statistics.interval.ms, delivered as an
 * RD_KAFKA_EVENT_STATS event on the worker's queue and handled in its main
 * loop: nothing here blocks or talks to a broker).  Written to the worker's
 * slot through cs_shmem; read by citizen_sync.worker_health.
 *
 * Partial assignment: the consumers of one database (one today; issue 11
 * may configure several, all counted here) together hold fewer partitions
 * than their topics have, so another member of their group - a cloned or
 * promoted instance - holds the rest.  The consumer keeps applying what it
 * holds (every event it applies is correct; stopping would leave the other
 * partitions no fresher), but the cache is fenced from being called fresh:
 * fresh_as_of() is NULL while the assignment is short, so critical reads
 * fail with CS001.  Once short for CS_PARTIAL_GRACE_MS (an ordinary
 * rebalance is shorter), it is reported: WARNING, worker_health, a metric
 * and an alert.
 *-------------------------------------------------------------------------
 */
#ifndef CS_HEALTH_H
#define CS_HEALTH_H

#include <librdkafka/rdkafka.h>

#include "cs_shmem.h"

#define CS_STATS_INTERVAL	"1000"	/* statistics.interval.ms of the workers */
#define CS_PARTIAL_GRACE_MS	15000

/* Set statistics.interval.ms on a worker's configuration. */
extern void cs_health_conf(rd_kafka_conf_t *conf);

/* A statistics event's JSON: brokers (all workers), topics (consumers). */
extern void cs_health_kafka_stats(CsWorkerSlot *slot, const char *json);

/*
 * Consumer: its assignment changed.  The cache is not called fresh again
 * until it has caught up on the new assignment.
 */
extern void cs_health_assigned(CsWorkerSlot *slot);

/*
 * Do the consumers of all[i]'s database hold fewer partitions than their
 * topics have (or is the count unknown)?  all: the CS_MAX_WORKERS slots'
 * statuses (cs_shmem_read_all()).
 */
extern bool cs_health_assignment_short(const CsWorkerStatus *all, int i,
									   int *held, int *total);

#endif							/* CS_HEALTH_H */
