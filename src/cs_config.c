/*-------------------------------------------------------------------------
 * cs_config.c
 *	  Parsing of citizen_sync.databases and citizen_sync.topics.
 *
 * These run in GUC check hooks, possibly in the postmaster: no palloc'd
 * results, no ereport, only fixed-size output and an error sentence.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "cs_config.h"
#include "cs_guc.h"

/* Copy the token [start, end) trimmed of blanks into out (size outlen). */
static bool
copy_trimmed(const char *start, const char *end, char *out, size_t outlen)
{
	while (start < end && isspace((unsigned char) *start))
		start++;
	while (end > start && isspace((unsigned char) end[-1]))
		end--;
	if ((size_t) (end - start) >= outlen)
		return false;
	memcpy(out, start, end - start);
	out[end - start] = '\0';
	return true;
}

/* A database or role name as an identifier the DBA can type unquoted. */
static bool
valid_identifier(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s; s++)
		if (!(isalnum((unsigned char) *s) || *s == '_' || *s == '-' || *s == '$'))
			return false;
	return true;
}

/* Parse one "database[:role]" token into *entry. */
static bool
parse_database_entry(const char *start, const char *end, CsDatabaseEntry *entry,
					 char *errbuf, size_t errlen)
{
	const char *colon = memchr(start, ':', end - start);
	const char *dbend = colon ? colon : end;

	memset(entry, 0, sizeof(*entry));
	if (!copy_trimmed(start, dbend, entry->database, NAMEDATALEN) ||
		(colon && !copy_trimmed(colon + 1, end, entry->role, NAMEDATALEN)))
	{
		snprintf(errbuf, errlen, "A name in \"%.*s\" is longer than %d bytes.",
				 (int) (end - start), start, NAMEDATALEN - 1);
		return false;
	}
	if (!valid_identifier(entry->database) ||
		(colon && !valid_identifier(entry->role)))
	{
		snprintf(errbuf, errlen,
				 "Entry \"%.*s\" is not of the form database[:role] with plain names.",
				 (int) (end - start), start);
		return false;
	}
	return true;
}

int
cs_parse_databases(const char *value, CsDatabaseEntry *entries,
				   char *errbuf, size_t errlen)
{
	const char *p = value ? value : "";
	int			n = 0;

	while (*p)
	{
		const char *end = strchr(p, ',');
		const char *stop = end ? end : p + strlen(p);
		char		probe[2];

		if (!copy_trimmed(p, stop, probe, sizeof(probe)) || probe[0] != '\0')
		{
			if (n == CS_MAX_DATABASES)
			{
				snprintf(errbuf, errlen, "At most %d databases can be listed.",
						 CS_MAX_DATABASES);
				return -1;
			}
			if (!parse_database_entry(p, stop, &entries[n], errbuf, errlen))
				return -1;
			for (int i = 0; i < n; i++)
				if (strcmp(entries[i].database, entries[n].database) == 0)
				{
					snprintf(errbuf, errlen, "Database \"%s\" is listed twice.",
							 entries[n].database);
					return -1;
				}
			n++;
		}
		p = end ? end + 1 : stop;
	}
	return n;
}

int
cs_parse_topics(const char *value, char topics[][250], int max,
				char *errbuf, size_t errlen)
{
	const char *p = value ? value : "";
	int			n = 0;

	while (*p)
	{
		const char *end = strchr(p, ',');
		const char *stop = end ? end : p + strlen(p);
		char		topic[250];

		if (!copy_trimmed(p, stop, topic, sizeof(topic)))
		{
			snprintf(errbuf, errlen, "A topic name is longer than 249 characters.");
			return -1;
		}
		if (topic[0] != '\0')
		{
			for (const char *c = topic; *c; c++)
				if (!(isalnum((unsigned char) *c) || *c == '.' || *c == '_' || *c == '-'))
				{
					snprintf(errbuf, errlen,
							 "Topic \"%s\" has a character Kafka does not allow in topic names.",
							 topic);
					return -1;
				}
			if (n == max)
			{
				snprintf(errbuf, errlen, "At most %d topics can be listed.", max);
				return -1;
			}
			strlcpy(topics[n++], topic, 250);
		}
		p = end ? end + 1 : stop;
	}
	return n;
}

void
cs_group_for_database(const char *database, char *out, size_t outlen)
{
	size_t		len = 0;

	if (cs_group_id == NULL || cs_group_id[0] == '\0')
	{
		snprintf(out, outlen, "%s-citizen-sync", database);
		return;
	}
	for (const char *p = cs_group_id; *p && len + 1 < outlen; p++)
	{
		if (p[0] == '%' && p[1] == 'd')
		{
			len += strlcpy(out + len, database, outlen - len);
			len = Min(len, outlen - 1);
			p++;
		}
		else
			out[len++] = *p;
	}
	out[len] = '\0';
}
