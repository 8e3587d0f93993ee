/*-------------------------------------------------------------------------
 * fuzz_event.c
 *	  libFuzzer harness for the event parser: cs_event_parse() and its
 *	  lexical pre-pass, the very sources the extension is built from.
 *
 * Each input is used three ways, and every run checks properties, not only
 * the absence of crashes (ASan, UBSan and LeakSanitizer watch all of it):
 *
 * 1. as a whole event.  A parse that succeeds yields valid UTF-8 without NUL
 *    in every string, within the cache's column limits, with the required
 *    fields present; the raw text then holds no \u0000 escape, no lone
 *    surrogate escape and no more than CS_MAX_EVENT_DEPTH nested containers
 *    (ref_lex(), an independent lexer).  A refusal carries a class 22 or 54
 *    SQLSTATE and a DETAIL.  Parsing twice gives the same answer.
 * 2. as the body of the string "name" in a valid event: the stored name must
 *    be exactly what ref_decode(), an independent decoder written from RFC
 *    8259, decodes (surrogate pairs included), or the refusal must be the
 *    documented one (22021 bad UTF-8, 22P05 \u0000, 22P02 lone surrogate).
 * 3. as a key after "name":"Alice" in the snapshot: however it is escaped,
 *    and whatever it injects, a parse that succeeds still says Alice (no key
 *    overrides a field read: the \u0000-cut and duplicate-key attacks).
 *
 * A violated property aborts, which libFuzzer reports with the input.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cs_event.h"
#include "cs_guc.h"
#include "mb/pg_wchar.h"
#include "pg_stubs.h"

#define PROPERTY(cond, what) \
	do { \
		if (!(cond)) \
			violated(#cond, what, __LINE__); \
	} while (0)

static const CsEventError *last_err;

/*
 * The shape the harness parses with: the built-in citizen subscription as
 * citizen_sync.subscription_fields() describes cache.citizen_refs.
 */
enum
{
	F_NAME, F_EMAIL, F_PHONE, F_ADDRESS, F_CITY, F_POSTAL, F_EMAIL_VERIFIED,
	F_IDENTITY_VERIFIED, F_COUNT
};
static const CsFieldSpec fields[F_COUNT] = {
	{"name", CS_FIELD_STRING, true, 255}, {"email", CS_FIELD_STRING, true, 255},
	{"phone", CS_FIELD_STRING, false, 50}, {"address", CS_FIELD_STRING, false, 0},
	{"city", CS_FIELD_STRING, false, 100}, {"postal_code", CS_FIELD_STRING, false, 20},
	{"email_verified", CS_FIELD_BOOL, false, 0},
	{"identity_verified", CS_FIELD_BOOL, false, 0},
};
static const CsScanField scan_fields[1 + F_COUNT] = {
	{"id", "data.snapshot.id"}, {"name", "data.snapshot.name"},
	{"email", "data.snapshot.email"}, {"phone", "data.snapshot.phone"},
	{"address", "data.snapshot.address"}, {"city", "data.snapshot.city"},
	{"postal_code", "data.snapshot.postal_code"},
	{"email_verified", "data.snapshot.email_verified"},
	{"identity_verified", "data.snapshot.identity_verified"},
};
static const CsEventName names[] = {
	{"citizen.created", CS_EVENT_UPSERT}, {"citizen.updated", CS_EVENT_UPSERT},
	{"citizen.deleted", CS_EVENT_DELETE},
};
static const CsEventShape shape = {
	"citizen", names, lengthof(names), CS_KEY_BIGINT, fields, F_COUNT,
	{{"citizen_id", "data.citizen_id"}, scan_fields, 1 + F_COUNT}
};

/* Field f of a parsed event (NULL when absent). */
#define VALUE(ev, f) ((ev)->values ? (ev)->values[f] : NULL)

static void
violated(const char *cond, const char *what, int line)
{
	fprintf(stderr, "property violated (fuzz_event.c:%d): %s\n  %s\n", line, what, cond);
	if (last_err != NULL)
	{
		char		state[6];

		for (int i = 0; i < 5; i++)
			state[i] = PGUNSIXBIT(last_err->sqlstate >> (6 * i));
		state[5] = '\0';
		fprintf(stderr, "  parser said: SQLSTATE %s, field \"%s\", detail \"%s\"\n",
				state, last_err->field, last_err->detail);
	}
	abort();
}

/* ---- independent references ------------------------------------------- */

/* Strict UTF-8 (RFC 3629) without NUL: what the database can store. */
static bool
ref_utf8_valid(const uint8_t *s, size_t n)
{
	size_t		i = 0;

	while (i < n)
	{
		uint8_t		c = s[i];
		int			more;
		uint32_t	cp,
					min;

		if (c == 0)
			return false;
		if (c < 0x80)
		{
			i++;
			continue;
		}
		if ((c & 0xE0) == 0xC0)
			more = 1, cp = c & 0x1F, min = 0x80;
		else if ((c & 0xF0) == 0xE0)
			more = 2, cp = c & 0x0F, min = 0x800;
		else if ((c & 0xF8) == 0xF0)
			more = 3, cp = c & 0x07, min = 0x10000;
		else
			return false;
		for (int k = 1; k <= more; k++)
		{
			if (i + k >= n || (s[i + k] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += more + 1;
	}
	return true;
}

static size_t
ref_chars(const uint8_t *s, size_t n)
{
	size_t		chars = 0;

	for (size_t i = 0; i < n; i++)
		chars += (s[i] & 0xC0) != 0x80;
	return chars;
}

static long
ref_hex4(const uint8_t *s, size_t n, size_t at)
{
	long		v = 0;

	if (at + 4 > n)
		return -1;
	for (size_t i = at; i < at + 4; i++)
	{
		int			d;

		if (s[i] >= '0' && s[i] <= '9')
			d = s[i] - '0';
		else if ((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'f')
			d = (s[i] | 0x20) - 'a' + 10;
		else
			return -1;
		v = v * 16 + d;
	}
	return v;
}

static size_t
ref_put_utf8(uint32_t cp, uint8_t *out)
{
	if (cp < 0x80)
		return out[0] = cp, 1;
	if (cp < 0x800)
		return out[0] = 0xC0 | (cp >> 6), out[1] = 0x80 | (cp & 0x3F), 2;
	if (cp < 0x10000)
		return out[0] = 0xE0 | (cp >> 12), out[1] = 0x80 | ((cp >> 6) & 0x3F),
			out[2] = 0x80 | (cp & 0x3F), 3;
	return out[0] = 0xF0 | (cp >> 18), out[1] = 0x80 | ((cp >> 12) & 0x3F),
		out[2] = 0x80 | ((cp >> 6) & 0x3F), out[3] = 0x80 | (cp & 0x3F), 4;
}

/* The character a two-character escape \c stands for, or -1. */
static int
ref_simple_escape(uint8_t c)
{
	switch (c)
	{
		case '"':
		case '\\':
		case '/':
			return c;
		case 'b':
			return '\b';
		case 'f':
			return '\f';
		case 'n':
			return '\n';
		case 'r':
			return '\r';
		case 't':
			return '\t';
		default:
			return -1;
	}
}

typedef enum RefStatus
{
	REF_OK,
	REF_BAD_UTF8,				/* 22021 */
	REF_NUL,					/* \u0000: 22P05 */
	REF_SURROGATE,				/* lone or mismatched: 22P02 */
	REF_OTHER					/* not a string body; no claim */
} RefStatus;

/*
 * Decode s[0..n) as the inside of a JSON string (RFC 8259 section 7).  Raw
 * control characters are taken literally, as json-c does.  out must hold n
 * bytes.  The first problem in text order decides the status.
 */
static RefStatus
ref_decode(const uint8_t *s, size_t n, uint8_t *out, size_t *outlen)
{
	size_t		i = 0;
	size_t		o = 0;

	*outlen = 0;
	if (!ref_utf8_valid(s, n))
		return REF_BAD_UTF8;
	while (i < n)
	{
		long		hi,
					lo;
		uint32_t	cp;

		if (s[i] == '"')
			return REF_OTHER;
		if (s[i] != '\\')
		{
			out[o++] = s[i++];
			continue;
		}
		if (i + 1 >= n)
			return REF_OTHER;
		if (s[i + 1] != 'u')
		{
			int			c = ref_simple_escape(s[i + 1]);

			if (c < 0)
				return REF_OTHER;
			out[o++] = c;
			i += 2;
			continue;
		}
		hi = ref_hex4(s, n, i + 2);
		if (hi < 0)
			return REF_OTHER;
		i += 6;
		if (hi == 0)
			return REF_NUL;
		if (hi >= 0xDC00 && hi <= 0xDFFF)
			return REF_SURROGATE;
		cp = (uint32_t) hi;
		if (hi >= 0xD800 && hi <= 0xDBFF)
		{
			if (i + 1 >= n || s[i] != '\\' || s[i + 1] != 'u')
				return REF_SURROGATE;
			lo = ref_hex4(s, n, i + 2);
			if (lo < 0xDC00 || lo > 0xDFFF)
				return REF_SURROGATE;
			cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
			i += 6;
		}
		o += ref_put_utf8(cp, out + o);
	}
	*outlen = o;
	return REF_OK;
}

/* What matters of a whole text, found by following its strings only. */
typedef struct RefLex
{
	int			max_depth;
	bool		nul_escape;
	bool		bad_surrogate;
} RefLex;

static RefLex
ref_lex(const uint8_t *s, size_t n)
{
	RefLex		r = {0, false, false};
	int			depth = 0;
	bool		in_string = false;

	for (size_t i = 0; i < n; i++)
	{
		long		cu,
					lo;

		if (!in_string)
		{
			if (s[i] == '"')
				in_string = true;
			else if ((s[i] == '{' || s[i] == '[') && ++depth > r.max_depth)
				r.max_depth = depth;
			else if ((s[i] == '}' || s[i] == ']') && depth > 0)
				depth--;
			continue;
		}
		if (s[i] == '"')
		{
			in_string = false;
			continue;
		}
		if (s[i] != '\\' || i + 1 >= n)
			continue;
		if (s[i + 1] != 'u' || (cu = ref_hex4(s, n, i + 2)) < 0)
		{
			i++;				/* skip the escaped character */
			continue;
		}
		if (cu == 0)
			r.nul_escape = true;
		else if (cu >= 0xDC00 && cu <= 0xDFFF)
			r.bad_surrogate = true;
		else if (cu >= 0xD800 && cu <= 0xDBFF)
		{
			lo = (i + 7 < n && s[i + 6] == '\\' && s[i + 7] == 'u') ? ref_hex4(s, n, i + 8) : -1;
			if (lo < 0xDC00 || lo > 0xDFFF)
				r.bad_surrogate = true;
			else
				i += 6;
		}
		i += 5;
	}
	return r;
}

/* ---- properties --------------------------------------------------------- */

static void
check_string(const char *s, bool required, int max_chars, const char *what)
{
	size_t		len;

	if (s == NULL)
	{
		PROPERTY(!required, what);
		return;
	}
	len = strlen(s);
	PROPERTY(ref_utf8_valid((const uint8_t *) s, len), what);
	PROPERTY(ref_chars((const uint8_t *) s, len) <= (size_t) max_chars, what);
	PROPERTY(!required || len > 0, what);
	/* the parser's own verifier agrees */
	PROPERTY(pg_encoding_verifymbstr(PG_UTF8, s, (int) len) == (int) len, what);
}

/* Whatever the input: the outcome is well-formed. */
static void
check_outcome(bool ok, const CsEvent *ev, const CsEventError *err)
{
	last_err = ok ? NULL : err;
	if (!ok)
	{
		int			cls = ERRCODE_TO_CATEGORY(err->sqlstate);

		PROPERTY(cls == ERRCODE_DATA_EXCEPTION || cls == ERRCODE_PROGRAM_LIMIT_EXCEEDED,
				 "a refusal is a data exception (22) or a program limit (54)");
		PROPERTY(memchr(err->detail, '\0', sizeof(err->detail)) != NULL &&
				 err->detail[0] != '\0', "a refusal has a DETAIL");
		PROPERTY(memchr(err->field, '\0', sizeof(err->field)) != NULL, "field is terminated");
		return;
	}
	check_string(ev->type_name, true, 200, "event_type");
	check_string(ev->event_id, true, CS_MAX_EVENT_ID_CHARS, "event_id");
	PROPERTY(ev->type == cs_event_type_of(&shape, ev->type_name), "event type matches its name");
	if (ev->type == CS_EVENT_UNKNOWN)
		return;
	PROPERTY(ev->version >= 1 && ev->key != NULL && ev->key[0] >= '1' && ev->key[0] <= '9',
			 "version and id are positive");
	PROPERTY(ev->type == CS_EVENT_DELETE || ev->has_snapshot, "created/updated have a snapshot");
	for (int f = 0; f < F_COUNT; f++)
		if (fields[f].kind == CS_FIELD_STRING)
			check_string(VALUE(ev, f), ev->has_snapshot && fields[f].required,
						 fields[f].max_chars > 0 ? fields[f].max_chars : PG_INT32_MAX,
						 scan_fields[1 + f].path);
}

/* The refusal a reference status calls for (0: no claim). */
static int
expected_refusal(RefStatus st)
{
	switch (st)
	{
		case REF_BAD_UTF8:
			return ERRCODE_CHARACTER_NOT_IN_REPERTOIRE;
		case REF_NUL:
			return ERRCODE_UNTRANSLATABLE_CHARACTER;
		case REF_SURROGATE:
			return ERRCODE_INVALID_TEXT_REPRESENTATION;
		default:
			return 0;
	}
}

/*
 * A refusal that names a byte offset names the right one: the escape, the
 * key, the first byte after the JSON value, the first byte not valid UTF-8.
 * Offsets are those of the raw input even when the pre-pass shortened
 * surrogate pairs.
 */
static void
check_offset(const uint8_t *data, size_t size, const CsEventError *err)
{
	const char *at = strstr(err->detail, "at byte ");
	unsigned long n;

	if (at == NULL || sscanf(at, "at byte %lu", &n) != 1)
		return;
	PROPERTY(n < size, "the offset is inside the input");
	if (err->sqlstate == ERRCODE_CHARACTER_NOT_IN_REPERTOIRE)
		PROPERTY(ref_utf8_valid(data, n) && !ref_utf8_valid(data + n, size - n),
				 "22021 names the first byte that is not valid UTF-8");
	else if (strstr(err->detail, "escape") != NULL)
		PROPERTY(n + 1 < size && data[n] == '\\' && data[n + 1] == 'u',
				 "an escape problem names its backslash");
	else if (err->sqlstate == ERRCODE_DUPLICATE_JSON_OBJECT_KEY_VALUE)
		PROPERTY(data[n] == '"', "a duplicate names its key's opening quote");
	else if (strncmp(err->detail, "Unexpected data after", 21) == 0)
		PROPERTY(!strchr(" \t\n\r", data[n]), "trailing data is named at its first byte");
}

/* 1. The input as a whole event. */
static void
fuzz_whole(const uint8_t *data, size_t size)
{
	CsEvent		ev,
				ev2;
	CsEventError err,
				err2;
	bool		ok = cs_event_parse((const char *) data, size, &shape, &ev, &err);
	bool		ok2 = cs_event_parse((const char *) data, size, &shape, &ev2, &err2);
	RefLex		lex = ref_lex(data, size);

	check_outcome(ok, &ev, &err);
	if (!ok)
		check_offset(data, size, &err);
	PROPERTY(ok == ok2 && (ok || (err.sqlstate == err2.sqlstate &&
								  strcmp(err.detail, err2.detail) == 0)),
			 "parsing is deterministic");
	if (ok)
	{
		PROPERTY(!lex.nul_escape, "an accepted event has no \\u0000 escape");
		PROPERTY(!lex.bad_surrogate, "an accepted event has no lone surrogate escape");
		PROPERTY(lex.max_depth <= CS_MAX_EVENT_DEPTH, "an accepted event is nested at most 32 deep");
	}
	else if (err.sqlstate == ERRCODE_PROGRAM_LIMIT_EXCEEDED)
		PROPERTY(size > (size_t) cs_max_event_bytes || lex.max_depth > CS_MAX_EVENT_DEPTH,
				 "54000 only for size or depth");
	else if (err.sqlstate == ERRCODE_CHARACTER_NOT_IN_REPERTOIRE)
		PROPERTY(!ref_utf8_valid(data, size), "22021 only for bad UTF-8 or a NUL byte");
	else if (ref_utf8_valid(data, size) && size > 0 && size <= (size_t) cs_max_event_bytes &&
			 (lex.nul_escape || lex.bad_surrogate))
		PROPERTY(err.sqlstate == ERRCODE_UNTRANSLATABLE_CHARACTER ||
				 err.sqlstate == ERRCODE_INVALID_TEXT_REPRESENTATION ||
				 err.sqlstate == ERRCODE_PROGRAM_LIMIT_EXCEEDED,
				 "bad escapes are refused as such");
}

/* The input embedded in a valid event, decoded by the reference, parsed. */
typedef struct Embedded
{
	uint8_t    *decoded;		/* ref_decode() of the input, NUL-terminated */
	size_t		declen;
	RefStatus	st;
	CsEvent		ev;
	CsEventError err;
	bool		ok;
} Embedded;

#define EVENT_HEAD \
	"{\"event_type\":\"citizen.updated\",\"event_id\":\"evt_f\",\"event_version\":1," \
	"\"data\":{\"citizen_id\":1,\"snapshot\":{\"id\":1,\"email\":\"e@x\","

/*
 * Parse EVENT_HEAD + prefix + body + suffix (malloc'd without terminator, as
 * Kafka hands it over) and decode body with the reference.
 */
static void
embed(const char *prefix, const uint8_t *body, size_t size, const char *suffix,
	  Embedded *e)
{
	size_t		h = strlen(EVENT_HEAD),
				p = strlen(prefix),
				s = strlen(suffix);
	uint8_t    *text = malloc(h + p + size + s);

	memcpy(text, EVENT_HEAD, h);
	memcpy(text + h, prefix, p);
	memcpy(text + h + p, body, size);
	memcpy(text + h + p + size, suffix, s);
	e->decoded = malloc(size + 1);
	e->st = ref_decode(body, size, e->decoded, &e->declen);
	e->decoded[e->declen] = '\0';
	e->ok = cs_event_parse((const char *) text, h + p + size + s, &shape, &e->ev, &e->err);
	free(text);
	check_outcome(e->ok, &e->ev, &e->err);
	if (expected_refusal(e->st) != 0)
		PROPERTY(!e->ok && e->err.sqlstate == expected_refusal(e->st),
				 "a bad string or key is refused with its documented SQLSTATE");
}

/* 2. The input as the body of the string "name". */
static void
fuzz_name_value(const uint8_t *body, size_t size)
{
	Embedded	e;

	embed("\"name\":\"", body, size, "\"}}}", &e);
	if (e.st == REF_OK && e.declen == 0)
		PROPERTY(!e.ok && e.err.sqlstate == ERRCODE_INVALID_PARAMETER_VALUE, "empty name refused");
	else if (e.st == REF_OK && ref_chars(e.decoded, e.declen) > (size_t) fields[F_NAME].max_chars)
		PROPERTY(!e.ok && e.err.sqlstate == ERRCODE_STRING_DATA_RIGHT_TRUNCATION, "long name refused");
	else if (e.st == REF_OK)
	{
		PROPERTY(e.ok, "a valid name is accepted");
		PROPERTY(strlen(VALUE(&e.ev, F_NAME)) == e.declen &&
				 memcmp(VALUE(&e.ev, F_NAME), e.decoded, e.declen) == 0,
				 "the name stored is exactly the one sent (reference decoder)");
	}
	free(e.decoded);
}

/* 3. The input as a key after "name":"Alice". */
static void
fuzz_key(const uint8_t *body, size_t size)
{
	Embedded	e;
	const char *key;

	embed("\"name\":\"Alice\",\"", body, size, "\":\"Mallory\"}}}", &e);
	key = (const char *) e.decoded;
	if (e.ok)
		PROPERTY(e.ev.type == CS_EVENT_UPSERT && strcmp(e.ev.event_id, "evt_f") == 0 &&
				 e.ev.version == 1 && strcmp(e.ev.key, "1") == 0 &&
				 strcmp(VALUE(&e.ev, F_NAME), "Alice") == 0 &&
				 strcmp(VALUE(&e.ev, F_EMAIL), "e@x") == 0,
				 "no key overrides a field already read");
	/* refusals of bad keys are checked by embed(); other inputs: no claim */
	if (e.st == REF_OK &&
		(strcmp(key, "name") == 0 || strcmp(key, "id") == 0 || strcmp(key, "email") == 0))
		PROPERTY(!e.ok && e.err.sqlstate == ERRCODE_DUPLICATE_JSON_OBJECT_KEY_VALUE,
				 "a duplicated field is refused");
	else if (e.st == REF_OK &&
			 (strcmp(key, "email_verified") == 0 || strcmp(key, "identity_verified") == 0))
		PROPERTY(!e.ok && e.err.sqlstate == ERRCODE_INVALID_PARAMETER_VALUE,
				 "a string for a boolean is refused");
	else if (e.st == REF_OK)
		PROPERTY(e.ok, "any other key is accepted");
	free(e.decoded);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_whole(data, size);
	stub_release_all();
	fuzz_name_value(data, size);
	stub_release_all();
	fuzz_key(data, size);
	stub_release_all();
	last_err = NULL;
	return 0;
}
