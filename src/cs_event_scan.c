/*-------------------------------------------------------------------------
 * cs_event_scan.c
 *	  Lexical pre-pass of the event parser (see cs_event_scan.h).
 *
 * The scan follows strings exactly (a quote outside a string opens one, a
 * backslash inside one escapes the next byte) and the structure loosely (a
 * brace or bracket opens a level, any closer closes one, a comma in an object
 * expects a key).  For valid JSON that is exact; for anything else json-c
 * reports the syntax error afterwards.  Each byte is visited once, and the
 * level stack is bounded by CS_MAX_EVENT_DEPTH, so the scan is linear in
 * time and constant in space.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_event.h"
#include "cs_event_scan.h"

/* The objects whose keys the parser reads. */
typedef enum ScanRole
{
	ROLE_OTHER = 0,				/* an array, or an object we do not read */
	ROLE_ROOT,					/* the event */
	ROLE_DATA,					/* its "data" */
	ROLE_SNAPSHOT				/* "data"."snapshot" */
} ScanRole;

static const CsScanField root_fields[] = {
	{"event_type", "event_type"},
	{"event_id", "event_id"},
	{"event_version", "event_version"},
	{"event_timestamp", "event_timestamp"},
	{"data", "data"},
};

#define ROOT_DATA_FIELD		4	/* root_fields[4] holds a ROLE_DATA object */
#define DATA_SNAPSHOT_FIELD	1	/* data's fields: the id, then "snapshot" */

static const char *const role_paths[] = {
	[ROLE_OTHER] = "", [ROLE_ROOT] = "", [ROLE_DATA] = "data",
	[ROLE_SNAPSHOT] = "data.snapshot",
};

/* One open container. */
typedef struct ScanLevel
{
	char		kind;			/* '{' or '[' */
	ScanRole	role;
	bool		expect_key;		/* the next string is a key */
	int			last_key;		/* field index of the latest key, or -1 */
	uint64		seen[CS_SCAN_MAX_FIELDS / 64];	/* field indexes seen */
} ScanLevel;

/* Longest decoded key worth comparing with the field names. */
#define SCAN_KEY_MAX	NAMEDATALEN

typedef struct ScanState
{
	const char *raw;
	size_t		len;
	size_t		pos;			/* next raw byte */
	char	   *out;
	size_t		opos;			/* next output byte */
	int			depth;
	ScanLevel	levels[CS_MAX_EVENT_DEPTH];
	char		key[SCAN_KEY_MAX];	/* the string being scanned, decoded */
	int			key_len;		/* SCAN_KEY_MAX + 1: longer, or not a name */
	CsEventScan *res;
	const CsScanShape *shape;	/* the id and snapshot fields read */
	CsScanField data_fields[2]; /* the id, "snapshot" */
} ScanState;

/* The fields of role's objects that the parser reads, and their count. */
static const CsScanField *
role_fields(const ScanState *st, ScanRole role, int *n)
{
	switch (role)
	{
		case ROLE_ROOT:
			*n = lengthof(root_fields);
			return root_fields;
		case ROLE_DATA:
			*n = 2;
			return st->data_fields;
		case ROLE_SNAPSHOT:
			*n = st->shape->nsnapshot;
			return st->shape->snapshot;
		default:
			*n = 0;
			return NULL;
	}
}

/* The role of an object found as field i of an object of role parent. */
static ScanRole
child_role(ScanRole parent, int i)
{
	if (parent == ROLE_ROOT && i == ROOT_DATA_FIELD)
		return ROLE_DATA;
	if (parent == ROLE_DATA && i == DATA_SNAPSHOT_FIELD)
		return ROLE_SNAPSHOT;
	return ROLE_OTHER;
}

/* The 4 hex digits at raw[at..at+4) as a number, or -1. */
static int
hex4(const ScanState *st, size_t at)
{
	int			v = 0;

	if (at + 4 > st->len)
		return -1;
	for (int i = 0; i < 4; i++)
	{
		char		c = st->raw[at + i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/* The code unit of a \uXXXX escape at raw[at], or -1 when there is none. */
static int
escape_at(const ScanState *st, size_t at)
{
	if (at + 2 > st->len || st->raw[at] != '\\' || st->raw[at + 1] != 'u')
		return -1;
	return hex4(st, at + 2);
}

/* Append n decoded bytes to the key buffer (or mark it as too long). */
static void
key_append(ScanState *st, const char *bytes, int n)
{
	if (st->key_len + n > SCAN_KEY_MAX)
	{
		st->key_len = SCAN_KEY_MAX + 1;
		return;
	}
	memcpy(st->key + st->key_len, bytes, n);
	st->key_len += n;
}

/* UTF-8 encoding of code point cp (at most U+10FFFF) into buf; its length. */
static int
utf8_encode(unsigned int cp, char *buf)
{
	if (cp < 0x80)
	{
		buf[0] = (char) cp;
		return 1;
	}
	if (cp < 0x800)
	{
		buf[0] = (char) (0xC0 | (cp >> 6));
		buf[1] = (char) (0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000)
	{
		buf[0] = (char) (0xE0 | (cp >> 12));
		buf[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
		buf[2] = (char) (0x80 | (cp & 0x3F));
		return 3;
	}
	buf[0] = (char) (0xF0 | (cp >> 18));
	buf[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
	buf[2] = (char) (0x80 | ((cp >> 6) & 0x3F));
	buf[3] = (char) (0x80 | (cp & 0x3F));
	return 4;
}

/*
 * The path of what is being scanned, for messages: the innermost object we
 * read and, when inside the value of one of its fields, that field.
 */
static const char *
current_path(const ScanState *st, bool in_key)
{
	for (int d = st->depth - 1; d >= 0; d--)
	{
		const ScanLevel *lv = &st->levels[d];
		int			n;

		if (lv->role == ROLE_OTHER)
			continue;
		if ((d == st->depth - 1 && in_key) || lv->last_key < 0)
			return role_paths[lv->role];
		return role_fields(st, lv->role, &n)[lv->last_key].path;
	}
	return "";
}

/* Record the first problem and stop the scan. */
static bool
scan_fail(ScanState *st, CsScanStatus status, size_t offset,
		  unsigned int code_unit, bool in_key)
{
	st->res->status = status;
	st->res->offset = offset;
	st->res->code_unit = code_unit;
	st->res->in_key = in_key;
	st->res->field = current_path(st, in_key);
	return false;
}

/* The key just scanned (raw offset at): note which field it names. */
static void
note_key(ScanState *st, size_t at)
{
	ScanLevel  *lv = &st->levels[st->depth - 1];
	const CsScanField *fields;
	int			n;

	lv->last_key = -1;
	if (lv->role == ROLE_OTHER || st->key_len > SCAN_KEY_MAX)
		return;
	fields = role_fields(st, lv->role, &n);
	for (int i = 0; i < n; i++)
	{
		const char *name = fields[i].name;
		uint64		bit = UINT64CONST(1) << (i % 64);

		if ((int) strlen(name) != st->key_len ||
			memcmp(name, st->key, st->key_len) != 0)
			continue;
		if ((lv->seen[i / 64] & bit) && st->res->duplicate == NULL)
		{
			st->res->duplicate = fields[i].path;
			st->res->duplicate_offset = at;
		}
		lv->seen[i / 64] |= bit;
		lv->last_key = i;
		return;
	}
}

/*
 * A \u escape at raw[pos] inside a string.  A surrogate pair is written as
 * UTF-8 (*saved grows by the 8 bytes saved); any other escape is copied for
 * json-c, which decodes the Basic Multilingual Plane correctly.
 */
static bool
scan_unicode_escape(ScanState *st, bool in_key, size_t *saved)
{
	size_t		at = st->pos;
	int			hi = escape_at(st, at);
	int			lo;
	char		buf[4];
	int			n;

	if (hi < 0)
	{
		/* not 4 hex digits: copy "\u" and let json-c refuse it */
		memcpy(st->out + st->opos, st->raw + at, 2);
		st->opos += 2;
		st->pos += 2;
		st->key_len = SCAN_KEY_MAX + 1;
		return true;
	}
	if (hi == 0)
		return scan_fail(st, CS_SCAN_NUL_ESCAPE, at, 0, in_key);
	if (hi >= 0xDC00 && hi <= 0xDFFF)
		return scan_fail(st, CS_SCAN_LONE_LOW, at, hi, in_key);
	if (hi >= 0xD800 && hi <= 0xDBFF)
	{
		lo = escape_at(st, at + 6);
		if (lo < 0xDC00 || lo > 0xDFFF)
			return scan_fail(st, CS_SCAN_LONE_HIGH, at, hi, in_key);
		n = utf8_encode(0x10000 + (((unsigned int) hi - 0xD800) << 10) +
						((unsigned int) lo - 0xDC00), buf);
		memcpy(st->out + st->opos, buf, n);
		st->opos += n;
		st->pos += 12;
		*saved += 12 - n;
		key_append(st, buf, n);
		return true;
	}
	n = utf8_encode((unsigned int) hi, buf);
	key_append(st, buf, n);
	memcpy(st->out + st->opos, st->raw + at, 6);
	st->opos += 6;
	st->pos += 6;
	return true;
}

/*
 * The string starting at the quote raw[pos]: copy it to out (surrogate pairs
 * decoded, the bytes saved as spaces after the closing quote), and note it
 * when it is a key of an object we read.
 */
static bool
scan_string(ScanState *st)
{
	ScanLevel  *lv = st->depth > 0 ? &st->levels[st->depth - 1] : NULL;
	bool		in_key = lv != NULL && lv->kind == '{' && lv->expect_key;
	size_t		start = st->pos;
	size_t		saved = 0;
	bool		closed = false;

	if (in_key)
		lv->expect_key = false;
	st->key_len = 0;
	st->out[st->opos++] = st->raw[st->pos++];
	while (st->pos < st->len && !closed)
	{
		char		c = st->raw[st->pos];

		if (c == '\\' && st->pos + 1 < st->len && st->raw[st->pos + 1] == 'u')
		{
			if (!scan_unicode_escape(st, in_key, &saved))
				return false;
			continue;
		}
		if (c == '\\' && st->pos + 1 < st->len)
		{
			/* another escape: no field name has one */
			st->out[st->opos++] = st->raw[st->pos++];
			st->key_len = SCAN_KEY_MAX + 1;
		}
		else if (c == '"')
			closed = true;
		else
			key_append(st, &c, 1);
		st->out[st->opos++] = st->raw[st->pos++];
	}
	memset(st->out + st->opos, ' ', saved);
	st->opos += saved;
	if (closed && in_key)
		note_key(st, start);
	return true;
}

/* An opening brace or bracket at raw[pos]. */
static bool
scan_open(ScanState *st, char kind)
{
	ScanLevel  *parent = st->depth > 0 ? &st->levels[st->depth - 1] : NULL;
	ScanLevel  *lv;

	if (st->depth >= CS_MAX_EVENT_DEPTH)
		return scan_fail(st, CS_SCAN_TOO_DEEP, st->pos, 0, false);
	lv = &st->levels[st->depth++];
	lv->kind = kind;
	lv->expect_key = (kind == '{');
	lv->last_key = -1;
	memset(lv->seen, 0, sizeof(lv->seen));
	if (kind != '{')
		lv->role = ROLE_OTHER;
	else if (parent == NULL)
		lv->role = ROLE_ROOT;
	else if (parent->kind == '{' && parent->role != ROLE_OTHER &&
			 parent->last_key >= 0)
		lv->role = child_role(parent->role, parent->last_key);
	else
		lv->role = ROLE_OTHER;
	return true;
}

bool
cs_event_scan(const char *raw, size_t len, const CsScanShape *shape, char *out,
			  CsEventScan *res)
{
	ScanState	st;

	memset(res, 0, sizeof(*res));
	res->field = "";
	st.raw = raw;
	st.len = len;
	st.pos = 0;
	st.out = out;
	st.opos = 0;
	st.depth = 0;
	st.key_len = 0;
	st.res = res;
	st.shape = shape;
	st.data_fields[0] = shape->id;
	st.data_fields[1].name = "snapshot";
	st.data_fields[1].path = "data.snapshot";
	while (st.pos < len)
	{
		char		c = raw[st.pos];

		if (c == '"')
		{
			if (!scan_string(&st))
				return false;
			continue;
		}
		if ((c == '{' || c == '[') && !scan_open(&st, c))
			return false;
		if ((c == '}' || c == ']') && st.depth > 0)
			st.depth--;
		if (c == ',' && st.depth > 0 && st.levels[st.depth - 1].kind == '{')
			st.levels[st.depth - 1].expect_key = true;
		out[st.opos++] = raw[st.pos++];
	}
	Assert(st.opos == len);
	out[len] = '\0';
	return true;
}
