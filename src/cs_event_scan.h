/*-------------------------------------------------------------------------
 * cs_event_scan.h
 *	  The lexical pre-pass of the event parser: what json-c gets wrong.
 *
 * json-c 0.16 turns some escaped surrogate pairs into U+FFFD, accepts lone
 * surrogates, cuts keys at an escaped NUL and lets the last of duplicate
 * keys win silently; its depth limit also counts scalars.  One linear pass
 * over the raw text settles all of that before json-c sees it: it decodes
 * escaped surrogate pairs itself, refuses lone surrogates and \u0000, counts
 * container nesting, and notes duplicate keys among the fields the event
 * parser reads.  Pure C: no backend call, no allocation, never raises.
 *-------------------------------------------------------------------------
 */
#ifndef CS_EVENT_SCAN_H
#define CS_EVENT_SCAN_H

#include "postgres.h"

/* A field the parser reads: its key and its path for messages. */
typedef struct CsScanField
{
	const char *name;
	const char *path;
} CsScanField;

/* Snapshot fields whose repetition the scan detects, at most. */
#define CS_SCAN_MAX_FIELDS	256

/*
 * The fields of one subscription's events the scan tracks besides the
 * header: data's key field (data.<aggregate_type>_id) and the snapshot's
 * fields (at most CS_SCAN_MAX_FIELDS).
 */
typedef struct CsScanShape
{
	CsScanField id;
	const CsScanField *snapshot;
	int			nsnapshot;
} CsScanShape;

/* What the scan found wrong (the first problem in text order). */
typedef enum CsScanStatus
{
	CS_SCAN_OK = 0,
	CS_SCAN_NUL_ESCAPE,			/* \u0000: text cannot hold NUL */
	CS_SCAN_LONE_HIGH,			/* high surrogate not followed by a low one */
	CS_SCAN_LONE_LOW,			/* low surrogate without a high one before */
	CS_SCAN_TOO_DEEP			/* more than CS_MAX_EVENT_DEPTH containers */
} CsScanStatus;

typedef struct CsEventScan
{
	CsScanStatus status;
	size_t		offset;			/* byte offset of the problem in the raw text */
	unsigned int code_unit;		/* the surrogate escape at fault */
	bool		in_key;			/* the problem is inside an object key */
	const char *field;			/* path of the field, of the object whose key
								 * is at fault, or "" when not one we read */
	const char *duplicate;		/* path of the first field read that appears
								 * twice in its object, or NULL */
	size_t		duplicate_offset;	/* byte offset of its second key */
} CsEventScan;

/*
 * Scan raw[0..len) and write into out[0..len] the text json-c must parse: the
 * same bytes, except that each escaped surrogate pair becomes its 4-byte
 * UTF-8 sequence and the 8 bytes saved become spaces right after the string's
 * closing quote, so every offset outside strings stays that of the raw text.
 * out[len] is '\0'.  Returns false with res->status set on the first escape
 * or nesting problem; duplicates are noted in res and do not stop the scan
 * (they only mean something once json-c has accepted the text).  Text that
 * is not valid JSON may be scanned loosely: json-c rejects it afterwards.
 */
extern bool cs_event_scan(const char *raw, size_t len, const CsScanShape *shape,
						  char *out, CsEventScan *res);

#endif							/* CS_EVENT_SCAN_H */
