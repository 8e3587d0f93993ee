/*-------------------------------------------------------------------------
 * cs_apply.h
 *	  The apply core: validated events into the subscribed tables, set-based.
 *
 * One code path serves citizen_sync.apply_event(), apply_events() and the
 * consumer worker.  The caller owns the transaction and must be connected to
 * SPI; the core issues two prepared statements per batch whatever its size.
 *-------------------------------------------------------------------------
 */
#ifndef CS_APPLY_H
#define CS_APPLY_H

#include "cs_event.h"

/* Outcome of one event.  Names are the SQL API's results. */
typedef enum CsApplyResult
{
	CS_RESULT_APPLIED = 0,		/* created/updated the cached row */
	CS_RESULT_DELETED,			/* soft-deleted the cached row */
	CS_RESULT_STALE,			/* an equal or newer version is cached */
	CS_RESULT_DUPLICATE,		/* event_id was processed before */
	CS_RESULT_IGNORED,			/* unknown event_type: counted, skipped */
	CS_RESULT_INVALID,			/* rejected by the parser (never applied) */
	CS_RESULT_COUNT
} CsApplyResult;

/* Tally of one batch's outcomes, indexed by CsApplyResult. */
typedef struct CsApplyCounts
{
	int64		n[CS_RESULT_COUNT];
} CsApplyCounts;

struct CsSubscription;

/*
 * Apply nevents validated events in stream order, as if applied one after the
 * other, and store each outcome in results[i].  Events already marked
 * CS_RESULT_INVALID in results[] on entry are skipped (the caller dead-letters
 * them); every other slot is overwritten.  An event superseded by a newer
 * version of the same key within the batch counts as stale.  events[i].sub
 * is the index of the event's subscription (cs_subscription.h); an event of
 * no subscription has type CS_EVENT_UNKNOWN and is ignored.
 *
 * Requires an open transaction and an SPI connection.  Raises on database
 * errors (permissions, constraint violations); the caller decides whether to
 * retry or isolate.  Allocates in CurrentMemoryContext.
 */
extern void cs_apply_batch(const CsEvent *events, int nevents,
						   CsApplyResult *results);

extern const char *cs_apply_result_name(CsApplyResult result);

/*
 * The apply statements of a subscription (cs_apply_sql.c), palloc'd.  Their
 * arguments: $1 keys text[], $2 versions int8[], $3 is_active bool[], then
 * one text[] per field of the subscription's shape.  Both return the keys
 * (as text) they applied.
 */
extern char *cs_apply_upsert_sql(const struct CsSubscription *sub);
extern char *cs_apply_delete_sql(const struct CsSubscription *sub);

#endif							/* CS_APPLY_H */
