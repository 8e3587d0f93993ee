/*-------------------------------------------------------------------------
 * cs_offsets.h
 *	  Kafka positions kept in citizen_sync.consumer_offsets.
 *-------------------------------------------------------------------------
 */
#ifndef CS_OFFSETS_H
#define CS_OFFSETS_H

#include <librdkafka/rdkafka.h>

#include "cs_batch.h"

/*
 * Store, for each partition present in msgs, the offset after its last
 * message as group_id's next offset.  Current transaction, SPI connected.
 */
extern void cs_offsets_store(const char *group_id, const CsMessage *msgs, int n);

/*
 * Set the offset of every partition in parts to the furthest next offset
 * stored for it in this database by any group (group_id's or an earlier
 * name's), or RD_KAFKA_OFFSET_BEGINNING when none is stored.  Runs its own
 * short transaction (the caller must not be in one).
 */
extern void cs_offsets_load(const char *group_id, rd_kafka_topic_partition_list_t *parts);

#endif							/* CS_OFFSETS_H */
