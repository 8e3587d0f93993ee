/*-------------------------------------------------------------------------
 * cs_probe.h
 *	  Watermark queries off the consumer's main loop, in a helper thread.
 *-------------------------------------------------------------------------
 */
#ifndef CS_PROBE_H
#define CS_PROBE_H

#include <stdbool.h>
#include <stdint.h>
#include <librdkafka/rdkafka.h>

typedef struct CsProbe CsProbe;

/*
 * Start the helper thread that queries high watermarks for consumer rk.
 * Returns NULL (and the caller does without probes) if no thread could be
 * started.
 */
extern CsProbe *cs_probe_start(rd_kafka_t *rk);

/*
 * Ask for the high watermark of every partition of parts (copied).  Returns
 * the request's number; a request not yet started is replaced by this one.
 */
extern uint64_t cs_probe_request(CsProbe *probe, const rd_kafka_topic_partition_list_t *parts);

/*
 * The last completed answer, if its request number is at least min_request:
 * a list whose elements carry the high watermark in offset and the query's
 * outcome in err; the caller destroys it.  NULL otherwise.
 */
extern rd_kafka_topic_partition_list_t *cs_probe_result(CsProbe *probe, uint64_t min_request);

/*
 * Stop the thread.  Returns true when it has ended; false when it is still
 * inside a librdkafka call after wait_ms (librdkafka 2.0.2 ignores the
 * timeout of a watermark query while the partition's leader is down): the
 * thread is then left to the process's exit, and the caller must not
 * destroy the handle it uses.
 */
extern bool cs_probe_stop(CsProbe *probe, int wait_ms);

#endif							/* CS_PROBE_H */
