/*-------------------------------------------------------------------------
 * cs_timestamp.h
 *	  Strict, non-raising ISO 8601 timestamp parsing for event_timestamp.
 *-------------------------------------------------------------------------
 */
#ifndef CS_TIMESTAMP_H
#define CS_TIMESTAMP_H

#include "postgres.h"
#include "datatype/timestamp.h"

/*
 * Parse "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM|+HHMM)" (a space may
 * stand for the T).  Returns false, without raising, for anything else,
 * including impossible dates and values out of TimestampTz's range.
 */
extern bool cs_parse_iso8601(const char *s, TimestampTz *out);

#endif							/* CS_TIMESTAMP_H */
