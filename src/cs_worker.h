/*-------------------------------------------------------------------------
 * cs_worker.h
 *	  What every citizen_sync background worker shares: signals, waiting on
 *	  the latch and a librdkafka queue together, catching a failed step.
 *
 * Error policy (the one place it is written; docs/operations.md repeats it):
 *
 * 1. Retried in the process.  A database step (a batch, loading offsets
 *    outside a rebalance, housekeeping, a publisher round) runs under
 *    cs_worker_try(): an error is logged with its context, its transaction
 *    aborted, recorded (worker_stats.last_error, worker_errors, state
 *    "error") and the step retried with backoff.  Non-fatal librdkafka
 *    errors are recorded and logged (rate-limited); librdkafka reconnects
 *    by itself.  Data errors of one event are not errors of the worker:
 *    the event is dead-lettered and the batch goes on.
 * 2. Exit with code 1, restarted by the launcher after a delay that doubles
 *    up to citizen_sync.restart_delay, resuming from the offsets stored in
 *    the database (nothing applied twice, nothing lost):
 *    - a rebalance cannot be answered correctly: the stored positions of
 *      newly assigned partitions could not be loaded, or the held batch of
 *      partitions being revoked could not be committed (cs_consumer.c,
 *      on_assign/on_revoke).  librdkafka must be answered within the
 *      rebalance and a wrong position would skip or replay events: a fresh
 *      process rejoining the group is the only safe answer;
 *    - librdkafka reports a fatal error (the client cannot go on);
 *    - an ERROR raised outside cs_worker_try() (Kafka client creation or
 *      subscription failed: a bad setting or no memory); PostgreSQL turns
 *      it into FATAL in a background worker;
 *    - the connection to the database fails (FATAL, e.g. the database was
 *      dropped).
 * 3. Stopped, not restarted until the cause is fixed: a configuration that
 *    cannot be used or a missing prerequisite (extension not installed or
 *    at another version, role missing) makes the worker wait in state
 *    "waiting" with the reason, rechecked every restart_delay; SIGTERM
 *    stops it cleanly (exit code 0).
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
 * Run step(arg) with an error context naming the worker and its database.
 * If it raises, log the error, abort any transaction, record it in
 * slot->last_error and the slot's error ring (SQLSTATE, DETAIL, HINT,
 * context), set the state "error" and return false.  Returns true otherwise.
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

/* Log a librdkafka condition (what: facility or kind; rate-limited). */
extern void cs_worker_log_kafka_condition(const char *what, const char *text);

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
