/*-------------------------------------------------------------------------
 * cs_kafka_conf.c
 *	  Build librdkafka configurations from citizen_sync.* settings.
 *
 * Secrets discipline: property values never appear in messages; only keys.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "cs_guc.h"
#include "cs_kafka_conf.h"

/* Trim blanks in place at both ends of [*start, *end). */
static void
trim(const char **start, const char **end)
{
	while (*start < *end && isspace((unsigned char) **start))
		(*start)++;
	while (*end > *start && isspace((unsigned char) (*end)[-1]))
		(*end)--;
}

/* Apply one "key=value" item; an empty item is allowed and ignored. */
static bool
apply_item(rd_kafka_conf_t *conf, const char *start, const char *end,
		   char *errbuf, size_t errlen)
{
	const char *eq;
	char		key[256];
	char	   *value;
	char		rderr[512];
	rd_kafka_conf_res_t res;

	trim(&start, &end);
	if (start == end)
		return true;
	eq = memchr(start, '=', end - start);
	if (eq == NULL || eq == start || eq - start >= (ptrdiff_t) sizeof(key))
	{
		snprintf(errbuf, errlen,
				 "An item of citizen_sync.kafka_properties is not of the form key=value.");
		return false;
	}
	{
		const char *kend = eq;
		const char *vstart = eq + 1;

		trim(&start, &kend);
		trim(&vstart, &end);
		memcpy(key, start, kend - start);
		key[kend - start] = '\0';
		value = malloc(end - vstart + 1);
		if (value == NULL)
		{
			snprintf(errbuf, errlen, "Out of memory.");
			return false;
		}
		memcpy(value, vstart, end - vstart);
		value[end - vstart] = '\0';
	}
	res = rd_kafka_conf_set(conf, key, value, rderr, sizeof(rderr));
	/* wipe the value: it may be a password */
	memset(value, 0, strlen(value));
	free(value);
	if (res != RD_KAFKA_CONF_OK)
	{
		snprintf(errbuf, errlen, "librdkafka rejected the property \"%s\"%s.",
				 key, res == RD_KAFKA_CONF_UNKNOWN ? " (unknown property)" : " (invalid value)");
		return false;
	}
	return true;
}

bool
cs_kafka_conf_apply_properties(rd_kafka_conf_t *conf, const char *properties,
							   char *errbuf, size_t errlen)
{
	const char *p = properties ? properties : "";

	while (*p)
	{
		const char *sep = strchr(p, ';');
		const char *end = sep ? sep : p + strlen(p);

		if (!apply_item(conf, p, end, errbuf, errlen))
			return false;
		p = sep ? sep + 1 : end;
	}
	return true;
}

void
cs_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *value)
{
	char		errstr[512];

	if (rd_kafka_conf_set(conf, key, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not set Kafka property \"%s\"", key),
				 errdetail("%s", errstr)));
}

rd_kafka_conf_t *
cs_kafka_conf_new(const char *client_id, const char *const *defaults)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errbuf[512];

	cs_kafka_conf_set(conf, "bootstrap.servers", cs_brokers);
	cs_kafka_conf_set(conf, "client.id", client_id);
	for (int i = 0; defaults && defaults[i] != NULL; i += 2)
		cs_kafka_conf_set(conf, defaults[i], defaults[i + 1]);
	if (!cs_kafka_conf_apply_properties(conf, cs_kafka_properties, errbuf, sizeof(errbuf)))
	{
		rd_kafka_conf_destroy(conf);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid citizen_sync.kafka_properties"),
				 errdetail("%s", errbuf),
				 errhint("Write librdkafka properties as key=value pairs separated by semicolons.")));
	}
	return conf;
}
