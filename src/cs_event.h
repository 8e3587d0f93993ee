/*-------------------------------------------------------------------------
 * cs_event.h
 *	  An event as it travels on the wire, parsed and validated against the
 *	  shape of the subscription it is for.
 *
 * The parser never raises: it either fills a CsEvent or describes what is
 * wrong in a CsEventError, so that one bad message can be dead-lettered
 * without aborting the batch it arrived in.  Strings in a parsed event are
 * palloc'd in the caller's current memory context; json-c's own allocations
 * never outlive cs_event_parse().
 *-------------------------------------------------------------------------
 */
#ifndef CS_EVENT_H
#define CS_EVENT_H

#include "postgres.h"
#include "datatype/timestamp.h"
#include "cs_event_scan.h"

/* What the event asks for; CS_EVENT_UNKNOWN is counted and skipped. */
typedef enum CsEventType
{
	CS_EVENT_UNKNOWN = 0,
	CS_EVENT_UPSERT,			/* created/updated: the snapshot is the state */
	CS_EVENT_DELETE
} CsEventType;

/* The longest event_id, in characters. */
#define CS_MAX_EVENT_ID_CHARS	200

/*
 * Containers (objects, arrays) that may nest in an event, the event object
 * being level 1; the event itself needs 3 (the event, data, snapshot).
 */
#define CS_MAX_EVENT_DEPTH		32

/* The key's type: data.<aggregate_type>_id as a JSON integer or string. */
typedef enum CsKeyKind
{
	CS_KEY_BIGINT = 0,			/* JSON integer >= 1 */
	CS_KEY_TEXT,				/* JSON string, not empty */
	CS_KEY_UUID					/* JSON string, a UUID (kept lower-case) */
} CsKeyKind;

/* What JSON a snapshot field must be, from its target column's type. */
typedef enum CsFieldKind
{
	CS_FIELD_STRING = 0,		/* string types: a JSON string */
	CS_FIELD_BOOL,				/* boolean: true or false */
	CS_FIELD_NUMBER,			/* numeric types: a number (or a string) */
	CS_FIELD_JSON,				/* json, jsonb: any value, kept as JSON text */
	CS_FIELD_SCALAR				/* anything else: a string, number or boolean */
} CsFieldKind;

/* One snapshot field of a subscription (see subscription_fields()). */
typedef struct CsFieldSpec
{
	const char *column;			/* the target column it fills */
	CsFieldKind kind;
	bool		required;		/* present, not null, a string not empty */
	int			max_chars;		/* > 0: longest string (varchar(n)) */
} CsFieldSpec;

/* An event name and what it asks for. */
typedef struct CsEventName
{
	const char *name;
	CsEventType type;
} CsEventName;

/*
 * What the parser expects of one subscription's events: the names of its
 * event types, its key field, and its snapshot fields.  scan.snapshot[0] is
 * the snapshot's "id" (which must agree with the key when present), then
 * scan.snapshot[1 + i] is fields[i]'s name and path.  Built by
 * cs_subscription.c from the catalog; test/fuzz builds its own.
 */
typedef struct CsEventShape
{
	const char *aggregate_type; /* for messages: "invalid <it> event" */
	const CsEventName *names;
	int			nnames;
	CsKeyKind	key_kind;
	const CsFieldSpec *fields;
	int			nfields;
	CsScanShape scan;
} CsEventShape;

/* A validated event.  Strings are NULL when absent or JSON null. */
typedef struct CsEvent
{
	CsEventType type;
	char	   *type_name;		/* event_type as received */
	char	   *event_id;
	int64		version;
	bool		has_timestamp;
	TimestampTz timestamp;		/* event_timestamp, when present */
	char	   *key;			/* data.<aggregate_type>_id as text */
	bool		has_snapshot;
	char	  **values;			/* [shape->nfields] snapshot values as text */
	int			sub;			/* the caller's: index of its subscription */
} CsEvent;

/* Why an event was rejected: an SQLSTATE, the field at fault, a sentence. */
typedef struct CsEventError
{
	int			sqlstate;		/* an ERRCODE_* value */
	char		field[64];		/* JSON path of the field, or "" */
	char		detail[256];	/* errdetail text, a full sentence */
} CsEventError;

/*
 * Parse and validate one raw event of len bytes (not necessarily
 * NUL-terminated, not necessarily valid UTF-8; raw NULL stands for a null
 * Kafka value, which is refused).  Returns true and fills *ev, or returns
 * false and fills *err.  Never raises an error; allocates in
 * CurrentMemoryContext.  The strings of a parsed event are valid UTF-8
 * without NUL, exactly the characters sent (escapes decoded).
 */
extern bool cs_event_parse(const char *raw, size_t len, const CsEventShape *shape,
						   CsEvent *ev, CsEventError *err);

/* Raise err as an ERROR, naming the event's position when pos >= 0. */
extern void cs_event_report(const CsEventShape *shape, const CsEventError *err,
							int pos) pg_attribute_noreturn();

extern const char *cs_event_type_name(CsEventType type);

/* The type an event name asks for in shape (CS_EVENT_UNKNOWN: none). */
extern CsEventType cs_event_type_of(const CsEventShape *shape, const char *name);

#endif							/* CS_EVENT_H */
