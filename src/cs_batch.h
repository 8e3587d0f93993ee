/*-------------------------------------------------------------------------
 * cs_batch.h
 *	  One consumer batch: Kafka messages applied in one transaction.
 *
 * The batch's events, its dead letters and the partitions' next offsets are
 * committed together, so the database alone says how far each partition was
 * applied: a crash before the commit replays the batch, after it skips it.
 *-------------------------------------------------------------------------
 */
#ifndef CS_BATCH_H
#define CS_BATCH_H

#include "cs_apply.h"
#include "cs_shmem.h"

/* A message as the worker hands it over; bytes are owned by librdkafka. */
typedef struct CsMessage
{
	const char *payload;		/* may be NULL (a Kafka tombstone) */
	size_t		len;
	const char *key;
	size_t		key_len;
	const char *topic;
	int32		partition;
	int64		offset;
} CsMessage;

/* What a batch did, for the statistics. */
typedef struct CsBatchOutcome
{
	int64		results[CS_RESULT_COUNT];
	int64		dead_lettered;
	int64		latency_buckets[CS_LATENCY_BUCKETS];	/* applied events by sync latency */
	int64		latency_count;
	double		latency_sum_ms;
} CsBatchOutcome;

/*
 * Apply msgs[0..n) in one transaction of its own (the caller must not be in
 * one): parse, apply through cs_apply_batch(), dead-letter what cannot be
 * applied (invalid input, or a data error isolated to one event), store each
 * partition's next offset for group_id, commit.  Raises on anything else
 * (database down, privileges): then nothing of the batch is committed and
 * the caller retries it.
 */
extern void cs_batch_apply(const char *group_id, const CsMessage *msgs, int n,
						   CsBatchOutcome *outcome);

#endif							/* CS_BATCH_H */
