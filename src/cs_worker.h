/*-------------------------------------------------------------------------
 * cs_worker.h
 *	  What every citizen_sync background worker shares: signals, waiting on
 *	  the latch and a librdkafka queue together, catching a failed step.
 *-------------------------------------------------------------------------
 */
#ifndef CS_WORKER_H
#define CS_WORKER_H

#include <signal.h>
#include <librdkafka/rdkafka.h>

#include "cs_shmem.h"
#include "storage/latch.h"

extern volatile sig_atomic_t cs_got_sigterm;

/* Install SIGHUP (reload) and SIGTERM (stop after the current step). */
extern void cs_worker_setup_signals(void);

/* Apply a pending SIGHUP: re-read postgresql.conf. */
extern void cs_worker_reload_config(void);

/*
 * Wakes the worker when its latch is set, the postmaster dies, or a
 * librdkafka queue becomes non-empty (through a non-blocking pipe that
 * librdkafka writes to).  No polling.
 */
typedef struct CsQueueWaiter
{
	WaitEventSet *wes;
	int			pipefd[2];
	rd_kafka_queue_t *queue;
} CsQueueWaiter;

extern void cs_waiter_init(CsQueueWaiter *w, rd_kafka_queue_t *queue);

/* Wait up to timeout_ms (-1 = forever); resets the latch, drains the pipe. */
extern void cs_waiter_wait(CsQueueWaiter *w, long timeout_ms);

extern void cs_waiter_close(CsQueueWaiter *w);

/*
 * Run step(arg).  If it raises, log the error, abort any transaction, record
 * the message in slot->last_error and return false.  Returns true otherwise.
 */
extern bool cs_worker_try(CsWorkerSlot *slot, void (*step) (void *), void *arg);

/*
 * Start a transaction with a snapshot and an SPI connection, reporting
 * activity in pg_stat_activity; cs_tx_commit() undoes it all and commits.
 */
extern void cs_tx_begin(const char *activity);
extern void cs_tx_commit(void);

/*
 * Logging.  Every line names the worker's database.  A condition that
 * repeats (a librdkafka error, a dead letter of the same SQLSTATE) is logged
 * at most once per CS_LOG_REPEAT_INTERVAL_S, with the number of lines held
 * back since the last one.
 */
#define CS_LOG_REPEAT_INTERVAL_S	30

/*
 * Should a line about the condition key be logged now?  When it should,
 * *suppressed is the number of lines of that condition held back since.
 */
extern bool cs_log_allowed(const char *key, int64 *suppressed);

/* Log a librdkafka log event of warning level or worse (rate-limited). */
extern void cs_worker_log_kafka(rd_kafka_event_t *ev);

/*
 * A librdkafka error event: record it in the slot (last_error) and the error
 * ring, log it unless it repeats (the log line librdkafka also emits for it
 * counts as the same condition).  Returns true when librdkafka says it is
 * fatal: the caller must then raise (see the error policy above).
 */
extern bool cs_worker_kafka_error(CsWorkerSlot *slot, rd_kafka_event_t *ev);

/*
 * Session settings of a worker, right after it connects:
 * - search_path pg_catalog, pg_temp: nothing in public can shadow a built-in;
 * - synchronous_commit off: safe for both workers, because a consumer batch
 *   commits its Kafka offsets with its rows (a crash that loses the last
 *   batches also rewinds their offsets, and they are read again) and a
 *   publisher's lost "published" marks only cause re-sends, which consumers
 *   deduplicate.
 */
extern void cs_worker_session_settings(void);

/*
 * Is the extension installed in the current database at the version of this
 * library?  Must be called inside a transaction.  Returns true when it is;
 * otherwise fills msg (what is wrong) and hint (what the DBA should run).
 * A database still at an older version (the library was upgraded, ALTER
 * EXTENSION ... UPDATE not yet run) is reported, never used: the SQL objects
 * a worker relies on may not exist there yet.
 */
extern bool cs_extension_ready(char *msg, size_t msglen, char *hint, size_t hintlen);

/* Sleep on the latch (interruptible by SIGTERM/SIGHUP) for up to ms. */
extern void cs_worker_sleep(long ms);

#endif							/* CS_WORKER_H */
