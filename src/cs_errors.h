/*-------------------------------------------------------------------------
 * cs_errors.h
 *	  The recent errors of each worker, kept in shared memory for the view
 *	  citizen_sync.worker_errors: SQLSTATE, message, DETAIL, HINT and context
 *	  survive, not just a truncated message.
 *
 * A ring of CS_ERRORS_PER_WORKER entries per worker slot, in a shared-memory
 * area of its own next to the slots (cs_shmem.c requests it), protected by
 * its own LWLock: recording an error never waits for the statistics lock.
 * An error identical to the newest one (same source, code and message) only
 * bumps its repeat count and last time, so a batch failing on every retry
 * does not push the other errors out.  Nothing is written to a table: a
 * database that fails may not take that write either.
 *-------------------------------------------------------------------------
 */
#ifndef CS_ERRORS_H
#define CS_ERRORS_H

#include "cs_shmem.h"

#define CS_ERRORS_PER_WORKER	8

/* Where an error came from. */
typedef enum CsErrorSource
{
	CS_ERROR_DATABASE,			/* a step raised (SQLSTATE set) */
	CS_ERROR_KAFKA				/* librdkafka reported an error */
} CsErrorSource;

/* What is recorded; strings may be NULL. */
typedef struct CsErrorReport
{
	CsErrorSource source;
	int			sqlerrcode;		/* 0 for Kafka errors */
	const char *kafka_code;		/* librdkafka error name, NULL otherwise */
	const char *message;
	const char *detail;
	const char *hint;
	const char *context;
} CsErrorReport;

/* Shared-memory size and initialisation, called from cs_shmem.c's hooks. */
extern Size cs_errors_shmem_size(void);
extern void cs_errors_shmem_request(void);
extern void cs_errors_shmem_startup(void);

/* Add an error to the ring of slot (the worker owning it). */
extern void cs_errors_add(const CsWorkerSlot *slot, const CsErrorReport *report);

/* Forget the errors of slot i (the launcher gave it another target). */
extern void cs_errors_clear(int i);

#endif							/* CS_ERRORS_H */
