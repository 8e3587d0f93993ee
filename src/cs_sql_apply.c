/*-------------------------------------------------------------------------
 * cs_sql_apply.c
 *	  SQL entry points of the apply core: apply_event() and apply_events().
 *
 * Both parse every event first and raise on the first invalid one, so a call
 * is all or nothing; then they hand the batch to cs_apply_batch(), the code
 * path the consumer worker uses.  They run with the caller's privileges.
 * Without a topic they apply into the built-in subscription
 * (cache.citizen_refs); apply_event(payload, topic) applies into the table
 * subscribed to topic, as the consumer would (retry_dead_letters() uses it).
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_apply.h"
#include "cs_subscription.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(citizen_sync_apply_event);
PG_FUNCTION_INFO_V1(citizen_sync_apply_events);

/*
 * Connect to SPI and find the subscription of topic (NULL: the built-in
 * one), or raise.  Back in the caller's memory context: the parsed events
 * must outlive SPI_finish().
 */
static int
begin_apply(const char *topic)
{
	int			sub;
	MemoryContext caller = CurrentMemoryContext;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "citizen_sync: SPI_connect failed");
	cs_subscriptions_refresh();
	MemoryContextSwitchTo(caller);
	sub = topic ? cs_subscription_for_topic(topic) : cs_subscription_for_target(InvalidOid);
	if (sub < 0 && topic)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("topic \"%s\" is not subscribed in this database", topic),
				 errhint("citizen_sync.subscriptions lists the subscribed topics; citizen_sync.subscribe() adds one.")));
	if (sub < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("cache.citizen_refs is not subscribed in this database"),
				 errhint("Pass the topic: apply_event(payload, topic).")));
	return sub;
}

/* Parse one text payload or raise, naming its position when pos >= 0. */
static void
parse_or_raise(text *payload, int sub, int pos, CsEvent *ev)
{
	CsEventError err;
	const CsEventShape *shape = &cs_subscription_get(sub)->shape;

	if (!cs_event_parse(VARDATA_ANY(payload), VARSIZE_ANY_EXHDR(payload), shape, ev, &err))
		cs_event_report(shape, &err, pos);
	ev->sub = sub;
}

/* Apply parsed events and close the SPI connection. */
static void
apply_parsed(const CsEvent *events, int n, CsApplyResult *results)
{
	for (int i = 0; i < n; i++)
		results[i] = CS_RESULT_APPLIED;
	cs_apply_batch(events, n, results);
	SPI_finish();
}

/*
 * citizen_sync.apply_event(payload text) RETURNS text
 * citizen_sync.apply_event(payload text, topic text) RETURNS text
 */
Datum
citizen_sync_apply_event(PG_FUNCTION_ARGS)
{
	CsEvent		ev;
	CsApplyResult result;
	int			sub = begin_apply(PG_NARGS() > 1 ? text_to_cstring(PG_GETARG_TEXT_PP(1)) : NULL);

	parse_or_raise(PG_GETARG_TEXT_PP(0), sub, -1, &ev);
	apply_parsed(&ev, 1, &result);
	PG_RETURN_TEXT_P(cstring_to_text(cs_apply_result_name(result)));
}

/*
 * citizen_sync.apply_events(payloads text[])
 * citizen_sync.apply_events(payloads text[], topic text)
 *	  RETURNS TABLE(ordinality int, event_id text, result text)
 */
Datum
citizen_sync_apply_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			sub;
	CsEvent    *events;
	CsApplyResult *results;

	InitMaterializedSRF(fcinfo, 0);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	events = palloc(sizeof(CsEvent) * Max(n, 1));
	results = palloc(sizeof(CsApplyResult) * Max(n, 1));
	sub = begin_apply(PG_NARGS() > 1 ? text_to_cstring(PG_GETARG_TEXT_PP(1)) : NULL);
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("invalid %s event at position %d",
							cs_subscription_get(sub)->shape.aggregate_type, i + 1),
					 errdetail("The event is NULL.")));
		parse_or_raise(DatumGetTextPP(elems[i]), sub, i, &events[i]);
	}
	apply_parsed(events, n, results);
	for (int i = 0; i < n; i++)
	{
		Datum		values[3];
		bool		rnulls[3] = {false, false, false};

		values[0] = Int32GetDatum(i + 1);
		values[1] = CStringGetTextDatum(events[i].event_id);
		values[2] = CStringGetTextDatum(cs_apply_result_name(results[i]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, rnulls);
	}
	PG_RETURN_VOID();
}
