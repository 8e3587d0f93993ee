/*-------------------------------------------------------------------------
 * cs_config.h
 *	  Parsing of list-valued settings: citizen_sync.databases and .topics.
 *
 * Pure functions over strings, usable from GUC check hooks (postmaster) and
 * from the workers; they never raise, they report the first problem.
 *-------------------------------------------------------------------------
 */
#ifndef CS_CONFIG_H
#define CS_CONFIG_H

#include "postgres.h"

#define CS_MAX_DATABASES	32
#define CS_MAX_TOPICS		16

/* One entry of citizen_sync.databases: "database[:role]". */
typedef struct CsDatabaseEntry
{
	char		database[NAMEDATALEN];
	char		role[NAMEDATALEN];	/* "" = the bootstrap superuser */
} CsDatabaseEntry;

/*
 * Parse "db[:role], db[:role], ..." into entries[] (at most CS_MAX_DATABASES).
 * Returns the number of entries, or -1 with a sentence in errbuf.
 */
extern int	cs_parse_databases(const char *value, CsDatabaseEntry *entries,
							   char *errbuf, size_t errlen);

/*
 * Parse "topic, topic, ..." into topics[] (each at most 249 characters of
 * [A-Za-z0-9._-], Kafka's rule).  Returns the count, or -1 with errbuf set.
 */
extern int	cs_parse_topics(const char *value, char topics[][250], int max,
							char *errbuf, size_t errlen);

/*
 * The consumer group for a database: citizen_sync.group_id with %d replaced
 * by the database name, or "<database>-citizen-sync" when it is empty.
 */
extern void cs_group_for_database(const char *database, char *out, size_t outlen);

#endif							/* CS_CONFIG_H */
