/*-------------------------------------------------------------------------
 * cs_event.h
 *	  The citizen event as it travels on the wire, parsed and validated.
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

/* What the event asks for; CS_EVENT_UNKNOWN is counted and skipped. */
typedef enum CsEventType
{
	CS_EVENT_UNKNOWN = 0,
	CS_EVENT_CREATED,
	CS_EVENT_UPDATED,
	CS_EVENT_DELETED
} CsEventType;

/* Column limits of cache.citizen_refs, in characters. */
#define CS_MAX_EVENT_ID_CHARS	200
#define CS_MAX_NAME_CHARS		255
#define CS_MAX_EMAIL_CHARS		255
#define CS_MAX_PHONE_CHARS		50
#define CS_MAX_CITY_CHARS		100
#define CS_MAX_POSTAL_CHARS		20
#define CS_MAX_ADDRESS_CHARS	2000

/*
 * Containers (objects, arrays) that may nest in an event, the event object
 * being level 1; the event itself needs 3 (the event, data, snapshot).
 */
#define CS_MAX_EVENT_DEPTH		32

/* A validated event.  Nullable strings are NULL when absent or JSON null. */
typedef struct CsEvent
{
	CsEventType type;
	char	   *type_name;		/* event_type as received */
	char	   *event_id;
	int64		version;
	bool		has_timestamp;
	TimestampTz timestamp;		/* event_timestamp, when present */
	int64		citizen_id;
	bool		has_snapshot;
	char	   *name;
	char	   *email;
	char	   *phone;
	char	   *address;
	char	   *city;
	char	   *postal_code;
	bool		email_verified;
	bool		identity_verified;
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
extern bool cs_event_parse(const char *raw, size_t len, CsEvent *ev,
						   CsEventError *err);

/* Raise err as an ERROR, naming the event's position when pos >= 0. */
extern void cs_event_report(const CsEventError *err, int pos) pg_attribute_noreturn();

extern const char *cs_event_type_name(CsEventType type);

#endif							/* CS_EVENT_H */
