/*-------------------------------------------------------------------------
 * cs_event.c
 *	  Parse and validate one event with json-c, against the shape of the
 *	  subscription it is for (its event names, key and snapshot fields).
 *
 * Contract (see cs_event.h): never raises, allocates the parsed strings with
 * palloc in the caller's context and releases every json-c object before
 * returning.  Validation is strict where a wrong value could corrupt the
 * cache (types, versions, ids, lengths, encoding) and lenient where the wire
 * format allows it (unknown fields are ignored, unknown event types are
 * reported as CS_EVENT_UNKNOWN rather than rejected).
 *
 * The raw text goes through cs_event_scan() before json-c: it decodes
 * escaped surrogate pairs (json-c 0.16 gets some wrong), refuses lone
 * surrogates and \u0000 (json-c cuts keys at it), limits the nesting and
 * finds duplicate keys among the fields read.  Of the backend this file
 * uses only palloc (and cs_event_report() ereport), so test/fuzz/ builds it,
 * as it is, into a libFuzzer harness with json-c and libpgcommon.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <json-c/json.h>

#include "cs_event.h"
#include "cs_event_scan.h"
#include "cs_guc.h"
#include "cs_timestamp.h"
#include "mb/pg_wchar.h"
#include "utils/elog.h"

static bool
fail(CsEventError *err, int sqlstate, const char *field, const char *fmt,...)
pg_attribute_printf(4, 5);

/* Fill *err and return false, so that callers can "return fail(...)". */
static bool
fail(CsEventError *err, int sqlstate, const char *field, const char *fmt,...)
{
	va_list		ap;

	err->sqlstate = sqlstate;
	strlcpy(err->field, field ? field : "", sizeof(err->field));
	va_start(ap, fmt);
	vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
	va_end(ap);
	return false;
}

/* Characters in len bytes of valid UTF-8 (the database is UTF-8). */
static int
utf8_chars(const char *s, int len)
{
	int			n = 0;

	for (int i = 0; i < len; i++)
		n += ((unsigned char) s[i] & 0xC0) != 0x80;
	return n;
}

static const char *
json_type_label(json_object *obj)
{
	return obj == NULL ? "null" : json_type_to_name(json_object_get_type(obj));
}

/*
 * Look up key in obj.  Returns the member or NULL when absent or JSON null;
 * *present tells the two apart when the caller cares.
 */
static json_object *
member(json_object *obj, const char *key, bool *present)
{
	json_object *val = NULL;
	bool		found = json_object_object_get_ex(obj, key, &val);

	if (present)
		*present = found && val != NULL;
	return found ? val : NULL;
}

/*
 * Copy a JSON string member into palloc'd memory, enforcing a character limit
 * and rejecting embedded NUL bytes (text cannot hold them).  A missing or null
 * member yields NULL, or an error when required.
 */
static bool
get_string(json_object *obj, const char *key, const char *path, bool required,
		   int max_chars, char **out, CsEventError *err)
{
	json_object *val = member(obj, key, NULL);
	const char *s;
	int			len;

	*out = NULL;
	if (val == NULL)
	{
		if (required)
			return fail(err, ERRCODE_NULL_VALUE_NOT_ALLOWED, path,
						"Field \"%s\" is required.", path);
		return true;
	}
	if (!json_object_is_type(val, json_type_string))
		return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, path,
					"Field \"%s\" must be a string, not %s.", path,
					json_type_label(val));
	s = json_object_get_string(val);
	len = json_object_get_string_len(val);
	if ((int) strlen(s) != len)	/* cannot happen: the scan refuses \u0000 */
		return fail(err, ERRCODE_UNTRANSLATABLE_CHARACTER, path,
					"Field \"%s\" contains a NUL character.", path);
	if (required && len == 0)
		return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, path,
					"Field \"%s\" must not be empty.", path);
	if (utf8_chars(s, len) > max_chars)
		return fail(err, ERRCODE_STRING_DATA_RIGHT_TRUNCATION, path,
					"Field \"%s\" is longer than %d characters.", path, max_chars);
	*out = pnstrdup(s, len);
	return true;
}

/* Read a required JSON integer member >= min_value into *out. */
static bool
get_int64(json_object *obj, const char *key, const char *path, int64 min_value,
		  int64 *out, CsEventError *err)
{
	json_object *val = member(obj, key, NULL);
	int64		v;

	if (val == NULL)
		return fail(err, ERRCODE_NULL_VALUE_NOT_ALLOWED, path,
					"Field \"%s\" is required.", path);
	if (!json_object_is_type(val, json_type_int))
		return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, path,
					"Field \"%s\" must be an integer, not %s.", path,
					json_type_label(val));
	errno = 0;
	v = json_object_get_int64(val);
	if (v == PG_INT64_MAX || v == PG_INT64_MIN || errno == ERANGE)
		return fail(err, ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, path,
					"Field \"%s\" is out of range.", path);
	if (v < min_value)
		return fail(err, ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, path,
					"Field \"%s\" must be at least " INT64_FORMAT ", got " INT64_FORMAT ".",
					path, min_value, v);
	*out = v;
	return true;
}

/* Read a required JSON object member. */
static bool
get_object(json_object *obj, const char *key, const char *path,
		   json_object **out, CsEventError *err)
{
	json_object *val = member(obj, key, NULL);

	*out = val;
	if (val == NULL)
		return fail(err, ERRCODE_NULL_VALUE_NOT_ALLOWED, path,
					"Field \"%s\" is required.", path);
	if (!json_object_is_type(val, json_type_object))
		return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, path,
					"Field \"%s\" must be an object, not %s.", path,
					json_type_label(val));
	return true;
}

CsEventType
cs_event_type_of(const CsEventShape *shape, const char *name)
{
	for (int i = 0; i < shape->nnames; i++)
		if (strcmp(shape->names[i].name, name) == 0)
			return shape->names[i].type;
	return CS_EVENT_UNKNOWN;
}

/* The header: event_type, event_id, event_version, event_timestamp. */
static bool
parse_header(json_object *root, const CsEventShape *shape, CsEvent *ev,
			 CsEventError *err)
{
	char	   *ts = NULL;

	if (!get_string(root, "event_type", "event_type", true, 200,
					&ev->type_name, err))
		return false;
	ev->type = cs_event_type_of(shape, ev->type_name);
	if (!get_string(root, "event_id", "event_id", true, CS_MAX_EVENT_ID_CHARS,
					&ev->event_id, err))
		return false;
	if (ev->type == CS_EVENT_UNKNOWN)
		return true;			/* nothing more is required of it */
	if (!get_int64(root, "event_version", "event_version", 1, &ev->version, err))
		return false;
	if (!get_string(root, "event_timestamp", "event_timestamp", false, 64, &ts, err))
		return false;
	if (ts != NULL)
	{
		if (!cs_parse_iso8601(ts, &ev->timestamp))
			return fail(err, ERRCODE_INVALID_DATETIME_FORMAT, "event_timestamp",
						"Field \"event_timestamp\" must be an ISO 8601 timestamp such as \"2026-11-25T10:15:00.123Z\".");
		ev->has_timestamp = true;
	}
	return true;
}

/* s is a UUID in its canonical form (hex digits, hyphens at 8-4-4-4-12). */
static bool
is_uuid(const char *s)
{
	for (int i = 0; i < 36; i++)
	{
		bool		hyphen = (i == 8 || i == 13 || i == 18 || i == 23);

		if (hyphen ? s[i] != '-' : !isxdigit((unsigned char) s[i]))
			return false;
	}
	return s[36] == '\0';
}

/*
 * The key in obj's member key (path for messages) as its text form: the
 * decimal of a JSON integer >= 1, a string not empty, or a UUID in lower
 * case, as the shape's key kind says.
 */
static bool
get_key(json_object *obj, const char *key, const char *path,
		const CsEventShape *shape, char **out, CsEventError *err)
{
	int64		id;

	if (shape->key_kind == CS_KEY_BIGINT)
	{
		if (!get_int64(obj, key, path, 1, &id, err))
			return false;
		*out = palloc(24);
		snprintf(*out, 24, INT64_FORMAT, id);
		return true;
	}
	if (!get_string(obj, key, path, true, CS_MAX_EVENT_ID_CHARS, out, err))
		return false;
	if (shape->key_kind == CS_KEY_UUID)
	{
		if (!is_uuid(*out))
			return fail(err, ERRCODE_INVALID_TEXT_REPRESENTATION, path,
						"Field \"%s\" must be a UUID such as \"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\".",
						path);
		for (char *c = *out; *c; c++)
			*c = pg_ascii_tolower((unsigned char) *c);
	}
	return true;
}

/* The snapshot's "id", when present, must be the event's key. */
static bool
check_snapshot_id(json_object *snap, const CsEventShape *shape, CsEvent *ev,
				  CsEventError *err)
{
	const char *path = shape->scan.snapshot[0].path;
	char	   *snap_id;

	if (member(snap, "id", NULL) == NULL)
		return true;
	if (!get_key(snap, "id", path, shape, &snap_id, err))
		return false;
	if (strcmp(snap_id, ev->key) != 0)
		return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, path,
					"Field \"%s\" (%s) does not match \"%s\" (%s).",
					path, snap_id, shape->scan.id.path, ev->key);
	return true;
}

/* The text of one JSON value val for a field of the given kind. */
static bool
field_text(json_object *val, const CsFieldSpec *spec, const char *path,
		   char **out, CsEventError *err)
{
	json_type	t = json_object_get_type(val);

	switch (spec->kind)
	{
		case CS_FIELD_BOOL:
			if (t != json_type_boolean)
				return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, path,
							"Field \"%s\" must be a boolean, not %s.", path,
							json_type_label(val));
			break;
		case CS_FIELD_NUMBER:
			if (t != json_type_int && t != json_type_double && t != json_type_string)
				return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, path,
							"Field \"%s\" must be a number, not %s.", path,
							json_type_label(val));
			break;
		case CS_FIELD_JSON:
			{
				const char *json = json_object_to_json_string_ext(val, JSON_C_TO_STRING_PLAIN);

				*out = pnstrdup(json, strlen(json));
				return true;
			}
		case CS_FIELD_SCALAR:
			if (t == json_type_object || t == json_type_array)
				return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, path,
							"Field \"%s\" must be a string, number or boolean, not %s.",
							path, json_type_label(val));
			break;
		case CS_FIELD_STRING:
			break;
	}
	*out = pnstrdup(json_object_get_string(val), strlen(json_object_get_string(val)));
	return true;
}

/* One snapshot field into *out (NULL when absent or null and not required). */
static bool
get_field(json_object *snap, const CsScanField *name, const CsFieldSpec *spec,
		  char **out, CsEventError *err)
{
	json_object *val = member(snap, name->name, NULL);

	*out = NULL;
	if (spec->kind == CS_FIELD_STRING || val == NULL)
		return get_string(snap, name->name, name->path, spec->required,
						  spec->max_chars > 0 ? spec->max_chars : PG_INT32_MAX, out, err);
	return field_text(val, spec, name->path, out, err);
}

/* The snapshot's fields, checked against the event's key. */
static bool
parse_snapshot(json_object *snap, const CsEventShape *shape, CsEvent *ev,
			   CsEventError *err)
{
	if (!check_snapshot_id(snap, shape, ev, err))
		return false;
	ev->values = palloc(sizeof(char *) * Max(shape->nfields, 1));
	memset(ev->values, 0, sizeof(char *) * Max(shape->nfields, 1));
	for (int i = 0; i < shape->nfields; i++)
		if (!get_field(snap, &shape->scan.snapshot[1 + i], &shape->fields[i],
					   &ev->values[i], err))
			return false;
	ev->has_snapshot = true;
	return true;
}

/* data.<aggregate_type>_id and, for upserts, data.snapshot. */
static bool
parse_data(json_object *root, const CsEventShape *shape, CsEvent *ev,
		   CsEventError *err)
{
	json_object *data;
	json_object *snap;
	bool		present;

	if (!get_object(root, "data", "data", &data, err))
		return false;
	if (!get_key(data, shape->scan.id.name, shape->scan.id.path, shape, &ev->key, err))
		return false;
	snap = member(data, "snapshot", &present);
	if (ev->type == CS_EVENT_DELETE && !present)
		return true;			/* a delete may omit the snapshot */
	if (!get_object(data, "snapshot", "data.snapshot", &snap, err))
		return false;
	if (ev->type == CS_EVENT_DELETE)
		return check_snapshot_id(snap, shape, ev, err); /* only the id matters */
	return parse_snapshot(snap, shape, ev, err);
}

/*
 * Run the tokenizer over raw; a value that only ends at end of input (a bare
 * number) is finished with a NUL.  Returns the value or NULL, with *jerr set
 * and *trailing true when bytes follow the value.
 */
static json_object *
tokenize_all(json_tokener *tok, const char *raw, size_t len,
			 enum json_tokener_error *jerr, bool *trailing)
{
	json_object *root = json_tokener_parse_ex(tok, raw, (int) len);

	*jerr = json_tokener_get_error(tok);
	*trailing = (root != NULL && *jerr == json_tokener_success &&
				 json_tokener_get_parse_end(tok) < len);
	if (root == NULL && *jerr == json_tokener_continue)
	{
		root = json_tokener_parse_ex(tok, "", 1);
		*jerr = json_tokener_get_error(tok);
	}
	return root;
}

/*
 * Tokenize the scanned text (see cs_event_scan()) into a JSON value, or
 * explain why not.  The scan has already limited the nesting to
 * CS_MAX_EVENT_DEPTH containers; json-c also counts the scalar inside the
 * deepest one, hence its limit of one more.
 */
static json_object *
tokenize(const char *text, size_t len, CsEventError *err)
{
	json_tokener *tok;
	json_object *root;
	enum json_tokener_error jerr;
	bool		trailing;

	tok = json_tokener_new_ex(CS_MAX_EVENT_DEPTH + 1);
	if (tok == NULL)
	{
		fail(err, ERRCODE_OUT_OF_MEMORY, NULL, "Could not allocate a JSON parser.");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	root = tokenize_all(tok, text, len, &jerr, &trailing);
	if (trailing)
		fail(err, ERRCODE_INVALID_TEXT_REPRESENTATION, NULL,
			 "Unexpected data after the JSON value at byte %zu.",
			 json_tokener_get_parse_end(tok));
	else if (jerr == json_tokener_error_depth)
		fail(err, ERRCODE_PROGRAM_LIMIT_EXCEEDED, NULL,
			 "The event is nested deeper than %d levels.", CS_MAX_EVENT_DEPTH);
	else if (root == NULL && jerr == json_tokener_success)
		fail(err, ERRCODE_INVALID_PARAMETER_VALUE, NULL,
			 "The event must be a JSON object, not null.");
	else if (root == NULL || jerr != json_tokener_success)
		fail(err, ERRCODE_INVALID_TEXT_REPRESENTATION, NULL,
			 "The event is not valid JSON: %s.",
			 jerr == json_tokener_continue ? "unexpected end of input"
			 : json_tokener_error_desc(jerr));
	if (root != NULL && (trailing || jerr != json_tokener_success))
	{
		json_object_put(root);
		root = NULL;
	}
	json_tokener_free(tok);
	return root;
}

/*
 * The checks on the bytes themselves: present, not empty, not too large,
 * valid UTF-8 without NUL bytes.
 */
static bool
check_bytes(const char *raw, size_t len, CsEventError *err)
{
	int			valid;

	if (raw == NULL)
		return fail(err, ERRCODE_NULL_VALUE_NOT_ALLOWED, NULL,
					"The message value is null (a Kafka tombstone), not an event.");
	if (len == 0)
		return fail(err, ERRCODE_INVALID_TEXT_REPRESENTATION, NULL,
					"The event is empty (0 bytes).");
	if (len > (size_t) cs_max_event_bytes)
		return fail(err, ERRCODE_PROGRAM_LIMIT_EXCEEDED, NULL,
					"The event is %zu bytes, more than citizen_sync.max_event_size (%d bytes).",
					len, cs_max_event_bytes);
	valid = pg_encoding_verifymbstr(PG_UTF8, raw, (int) len);
	if (valid != (int) len && raw[valid] == '\0')
		return fail(err, ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, NULL,
					"The event contains a NUL byte at byte %d.", valid);
	if (valid != (int) len)
		return fail(err, ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, NULL,
					"The event is not valid UTF-8 at byte %d.", valid);
	return true;
}

/* Explain in *err the problem cs_event_scan() found; returns false. */
static bool
scan_error(const CsEventScan *scan, CsEventError *err)
{
	char		where[96];

	if (scan->in_key && scan->field[0])
		snprintf(where, sizeof(where), "A key in \"%s\"", scan->field);
	else if (scan->in_key)
		snprintf(where, sizeof(where), "A key in the event");
	else if (scan->field[0])
		snprintf(where, sizeof(where), "Field \"%s\"", scan->field);
	else
		snprintf(where, sizeof(where), "The event");

	switch (scan->status)
	{
		case CS_SCAN_NUL_ESCAPE:
			return fail(err, ERRCODE_UNTRANSLATABLE_CHARACTER, scan->field,
						"%s contains the escape \\u0000 at byte %zu; text cannot hold NUL characters.",
						where, scan->offset);
		case CS_SCAN_LONE_HIGH:
			return fail(err, ERRCODE_INVALID_TEXT_REPRESENTATION, scan->field,
						"%s contains the high surrogate escape \\u%04X at byte %zu without a low surrogate escape right after it.",
						where, scan->code_unit, scan->offset);
		case CS_SCAN_LONE_LOW:
			return fail(err, ERRCODE_INVALID_TEXT_REPRESENTATION, scan->field,
						"%s contains the low surrogate escape \\u%04X at byte %zu without a high surrogate escape right before it.",
						where, scan->code_unit, scan->offset);
		case CS_SCAN_TOO_DEEP:
			return fail(err, ERRCODE_PROGRAM_LIMIT_EXCEEDED, scan->field,
						"The event is nested deeper than %d levels.", CS_MAX_EVENT_DEPTH);
		case CS_SCAN_OK:
			break;
	}
	return fail(err, ERRCODE_INTERNAL_ERROR, NULL, "The event scan failed.");
}

/* The parsed JSON value root (of the scanned text) into *ev. */
static bool
parse_root(json_object *root, const CsEventScan *scan, const CsEventShape *shape,
		   CsEvent *ev, CsEventError *err)
{
	if (scan->duplicate != NULL)
		return fail(err, ERRCODE_DUPLICATE_JSON_OBJECT_KEY_VALUE, scan->duplicate,
					"Field \"%s\" appears more than once in its object (again at byte %zu); JSON parsers differ on which one counts.",
					scan->duplicate, scan->duplicate_offset);
	if (!json_object_is_type(root, json_type_object))
		return fail(err, ERRCODE_INVALID_PARAMETER_VALUE, NULL,
					"The event must be a JSON object, not %s.", json_type_label(root));
	return parse_header(root, shape, ev, err) &&
		(ev->type == CS_EVENT_UNKNOWN || parse_data(root, shape, ev, err));
}

bool
cs_event_parse(const char *raw, size_t len, const CsEventShape *shape,
			   CsEvent *ev, CsEventError *err)
{
	CsEventScan scan;
	char	   *text;
	json_object *root;
	bool		ok = false;

	memset(ev, 0, sizeof(*ev));
	memset(err, 0, sizeof(*err));
	if (!check_bytes(raw, len, err))
		return false;
	text = palloc(len + 1);
	if (!cs_event_scan(raw, len, &shape->scan, text, &scan))
		scan_error(&scan, err);
	else if ((root = tokenize(text, len, err)) != NULL)
	{
		ok = parse_root(root, &scan, shape, ev, err);
		json_object_put(root);
	}
	pfree(text);
	return ok;
}

void
cs_event_report(const CsEventShape *shape, const CsEventError *err, int pos)
{
	ereport(ERROR,
			(errcode(err->sqlstate),
			 pos >= 0 ? errmsg("invalid %s event at position %d", shape->aggregate_type, pos + 1)
			 : errmsg("invalid %s event", shape->aggregate_type),
			 errdetail("%s", err->detail),
			 err->field[0] ? errhint("Check the field \"%s\" of the event against the wire format in the citizen_sync documentation.", err->field)
			 : errhint("An event is one JSON object in UTF-8, as described in the citizen_sync documentation.")));
	pg_unreachable();
}

const char *
cs_event_type_name(CsEventType type)
{
	switch (type)
	{
		case CS_EVENT_UPSERT:
			return "upsert";
		case CS_EVENT_DELETE:
			return "delete";
		default:
			return "unknown";
	}
}
