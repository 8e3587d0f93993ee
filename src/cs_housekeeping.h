/*-------------------------------------------------------------------------
 * cs_housekeeping.h
 *	  Retention of cache.processed_events and resolved dead letters.
 *-------------------------------------------------------------------------
 */
#ifndef CS_HOUSEKEEPING_H
#define CS_HOUSEKEEPING_H

/*
 * Delete rows past citizen_sync.processed_events_retention and
 * citizen_sync.dead_letter_retention in chunks, one short transaction per
 * chunk, for at most about budget_ms.  Must not be called inside a
 * transaction.  Raises on database errors (the caller contains them).
 */
extern void cs_housekeeping_run(long budget_ms);

#endif							/* CS_HOUSEKEEPING_H */
