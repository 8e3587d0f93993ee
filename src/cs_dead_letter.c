/*-------------------------------------------------------------------------
 * cs_dead_letter.c
 *	  Dead letters: the raw message, where it was, and why it failed.
 *
 * Runs inside the batch transaction, so a dead letter and the offset that
 * moves past it commit together: a message is either applied, dead-lettered,
 * or still ahead of the stored offset.  Never logs the payload.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "cs_dead_letter.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#define DEAD_LETTER_SQL \
	"INSERT INTO citizen_sync.dead_letters AS d" \
	" (payload, message_key, topic, partition, \"offset\", event_id," \
	"  error_message, error_detail, error_sqlstate)" \
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)" \
	" ON CONFLICT (topic, partition, \"offset\") WHERE topic IS NOT NULL" \
	" DO UPDATE SET attempts = d.attempts + 1, last_seen_at = pg_catalog.now()," \
	"   error_message = EXCLUDED.error_message, error_detail = EXCLUDED.error_detail," \
	"   error_sqlstate = EXCLUDED.error_sqlstate, resolved_at = NULL, resolution = NULL"

static SPIPlanPtr dead_letter_plan = NULL;

/* A bytea datum holding a copy of len bytes. */
static Datum
bytes_datum(const char *data, size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	if (len > 0)
		memcpy(VARDATA(b), data, len);
	return PointerGetDatum(b);
}

/* Text datum of a C string that might not be valid in the server encoding. */
static Datum
safe_text(const char *s)
{
	return CStringGetTextDatum(pg_verifymbstr(s, strlen(s), true) ? s : "(not valid UTF-8)");
}

static SPIPlanPtr
get_plan(void)
{
	static Oid	argtypes[9] = {BYTEAOID, BYTEAOID, TEXTOID, INT4OID, INT8OID,
	TEXTOID, TEXTOID, TEXTOID, BPCHAROID};

	if (dead_letter_plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(DEAD_LETTER_SQL, 9, argtypes);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "citizen_sync: could not prepare the dead-letter insert: %s",
				 SPI_result_code_string(SPI_result));
		dead_letter_plan = plan;
	}
	return dead_letter_plan;
}

void
cs_dead_letter_store(const CsMessage *msg, const char *event_id,
					 int sqlerrcode, const char *message, const char *detail)
{
	Datum		values[9];
	char		nulls[9];

	memset(nulls, ' ', sizeof(nulls));
	/* a null value (tombstone) stays NULL, distinct from an empty one */
	values[0] = msg->payload ? bytes_datum(msg->payload, msg->len) : (Datum) 0;
	nulls[0] = msg->payload ? ' ' : 'n';
	values[1] = msg->key ? bytes_datum(msg->key, msg->key_len) : (Datum) 0;
	nulls[1] = msg->key ? ' ' : 'n';
	values[2] = msg->topic ? safe_text(msg->topic) : (Datum) 0;
	nulls[2] = msg->topic ? ' ' : 'n';
	values[3] = Int32GetDatum(msg->partition);
	values[4] = Int64GetDatum(msg->offset);
	if (msg->topic == NULL)
		nulls[3] = nulls[4] = 'n';
	values[5] = event_id ? safe_text(event_id) : (Datum) 0;
	nulls[5] = event_id ? ' ' : 'n';
	values[6] = safe_text(message ? message : "unknown error");
	values[7] = detail ? safe_text(detail) : (Datum) 0;
	nulls[7] = detail ? ' ' : 'n';
	values[8] = CStringGetTextDatum(unpack_sql_state(sqlerrcode));
	if (SPI_execute_plan(get_plan(), values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "citizen_sync: could not store a dead letter");
}
