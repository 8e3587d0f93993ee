/*-------------------------------------------------------------------------
 * cs_guc.c
 *	  Definition and checking of the citizen_sync.* parameters.
 *
 * Settings the workers read are PGC_SIGHUP: the launcher reacts to a reload.
 *
 * Secrets: PostgreSQL logs the new value of any setting a reload changes
 * ("parameter ... changed to ...") and shows GUC_SUPERUSER_ONLY settings to
 * members of pg_read_all_settings, so no setting may hold a secret.
 * citizen_sync.kafka_properties refuses secret properties (its check hook,
 * and a ProcessUtility hook that refuses ALTER SYSTEM/SET statements naming
 * one before PostgreSQL's own refusal would log the statement text); they go
 * in the file named by citizen_sync.kafka_properties_file, which only the
 * workers and the launcher read (cs_kafka_conf.c).
 *
 * The same hook stops the workers of a database before DROP DATABASE
 * (cs_launcher_prepare_dropdb), so that retiring a database needs no FORCE.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "cs_config.h"
#include "cs_guc.h"
#include "cs_kafka_conf.h"
#include "cs_launcher.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/guc.h"

char	   *cs_brokers = NULL;
char	   *cs_databases = NULL;
char	   *cs_topics = NULL;
char	   *cs_group_id = NULL;
char	   *cs_outbox_database = NULL;
char	   *cs_topic_prefix = NULL;
char	   *cs_kafka_properties = NULL;
char	   *cs_kafka_properties_file = NULL;
int			cs_max_event_bytes = 65536;
int			cs_batch_size = 1000;
int			cs_batch_wait_ms = 2;
int			cs_restart_delay_s = 5;
int			cs_publisher_batch_size = 5000;
int			cs_publisher_sweep_ms = 1000;
int			cs_outbox_retention_s = 7 * 24 * 3600;
int			cs_processed_events_retention_s = 7 * 24 * 3600;
int			cs_dead_letter_retention_s = 30 * 24 * 3600;
int			cs_housekeeping_interval_s = 60;

static ProcessUtility_hook_type prev_process_utility = NULL;

static bool
check_databases(char **newval, void **extra, GucSource source)
{
	CsDatabaseEntry entries[CS_MAX_DATABASES];
	char		errbuf[256];

	if (cs_parse_databases(*newval, entries, errbuf, sizeof(errbuf)) < 0)
	{
		GUC_check_errdetail("%s", errbuf);
		GUC_check_errhint("List the service databases as database[:role], separated by commas, e.g. 'permits_db:permits_sync_user'.");
		return false;
	}
	return true;
}

static bool
check_topics(char **newval, void **extra, GucSource source)
{
	char		topics[CS_MAX_TOPICS][250];
	char		errbuf[256];
	int			n = cs_parse_topics(*newval, topics, CS_MAX_TOPICS, errbuf, sizeof(errbuf));

	if (n <= 0)
	{
		GUC_check_errdetail("%s", n == 0 ? "No topic is listed." : errbuf);
		GUC_check_errhint("List Kafka topics separated by commas, e.g. 'gov.auth.citizen'.");
		return false;
	}
	return true;
}

static bool
check_topic_prefix(char **newval, void **extra, GucSource source)
{
	char		topics[1][250];
	char		errbuf[256];

	if (**newval != '\0' &&
		cs_parse_topics(*newval, topics, 1, errbuf, sizeof(errbuf)) != 1)
	{
		GUC_check_errdetail("%s", errbuf);
		GUC_check_errhint("Use letters, digits, '.', '_' and '-' only, e.g. 'gov.auth.'.");
		return false;
	}
	return true;
}

/*
 * Is value acceptable for citizen_sync.kafka_properties: known to librdkafka
 * and free of secrets?  If not, fills detail and *hint with sentences that
 * never echo a value.
 */
static bool
kafka_properties_ok(const char *value, char *detail, size_t detaillen,
					const char **hint)
{
	rd_kafka_conf_t *conf;
	char		key[256];
	bool		ok;

	if (value == NULL || value[0] == '\0')
		return true;
	conf = rd_kafka_conf_new();
	ok = cs_kafka_conf_apply_properties(conf, value, detail, detaillen);
	rd_kafka_conf_destroy(conf);
	if (!ok)
		*hint = cs_kafka_conf_find_secret(value, key, sizeof(key)) ?
			"Put secrets in the file named by citizen_sync.kafka_properties_file (one key=value a line, readable only by the server's operating-system user)." :
			"Write librdkafka properties as key=value pairs separated by semicolons, e.g. 'security.protocol=SASL_SSL;sasl.mechanism=SCRAM-SHA-512'.";
	return ok;
}

static bool
check_kafka_properties(char **newval, void **extra, GucSource source)
{
	char		detail[512];
	const char *hint;

	if (kafka_properties_ok(*newval, detail, sizeof(detail), &hint))
		return true;
	/* our own message, so that PostgreSQL does not echo the value */
	GUC_check_errmsg("invalid value for parameter \"citizen_sync.kafka_properties\"");
	GUC_check_errdetail("%s", detail);
	GUC_check_errhint("%s", hint);
	return false;
}

/* The SET of an ALTER SYSTEM, SET, ALTER ROLE/DATABASE ... SET statement. */
static VariableSetStmt *
variable_set_of(Node *stmt)
{
	if (IsA(stmt, VariableSetStmt))
		return (VariableSetStmt *) stmt;
	if (IsA(stmt, AlterSystemStmt))
		return ((AlterSystemStmt *) stmt)->setstmt;
	if (IsA(stmt, AlterRoleSetStmt))
		return ((AlterRoleSetStmt *) stmt)->setstmt;
	if (IsA(stmt, AlterDatabaseSetStmt))
		return ((AlterDatabaseSetStmt *) stmt)->setstmt;
	return NULL;
}

/*
 * Refuse a statement that would set citizen_sync.kafka_properties to a value
 * the check hook refuses (a secret, or a malformed item that may be one),
 * hiding the statement and its context from the server log: PostgreSQL's own
 * refusal would log the statement text under log_min_error_statement.
 */
static void
refuse_bad_kafka_properties(Node *stmt)
{
	VariableSetStmt *set = variable_set_of(stmt);
	ListCell   *lc;

	if (set == NULL || set->name == NULL ||
		pg_strcasecmp(set->name, "citizen_sync.kafka_properties") != 0)
		return;
	foreach(lc, set->args)
	{
		A_Const    *con = (A_Const *) lfirst(lc);
		char		detail[512];
		const char *hint;

		if (IsA(con, A_Const) && !con->isnull && IsA(&con->val, String) &&
			!kafka_properties_ok(strVal(&con->val), detail, sizeof(detail), &hint))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid value for parameter \"citizen_sync.kafka_properties\""),
					 errdetail("%s", detail),
					 errhint("%s", hint),
					 errhidestmt(true),
					 errhidecontext(true)));
	}
}

static void
cs_guc_process_utility(PlannedStmt *pstmt, const char *queryString,
					   bool readOnlyTree, ProcessUtilityContext context,
					   ParamListInfo params, QueryEnvironment *queryEnv,
					   DestReceiver *dest, QueryCompletion *qc)
{
	refuse_bad_kafka_properties(pstmt->utilityStmt);
	if (IsA(pstmt->utilityStmt, DropdbStmt))
		cs_launcher_prepare_dropdb(((DropdbStmt *) pstmt->utilityStmt)->dbname);
	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context,
							 params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

static bool
check_group_id(char **newval, void **extra, GucSource source)
{
	if (strlen(*newval) > 200)
	{
		GUC_check_errdetail("The group id is longer than 200 characters.");
		return false;
	}
	return true;
}

/* Kafka connection and consumer settings. */
static void
define_kafka_gucs(void)
{
	DefineCustomStringVariable("citizen_sync.brokers",
							   "Kafka bootstrap servers (host:port, comma-separated); empty disables the workers.",
							   NULL, &cs_brokers, "", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("citizen_sync.databases",
							   "Databases whose cache a consumer keeps, as database[:role] separated by commas.",
							   "The consumer of each database applies events as the given role (the service's sync user).",
							   &cs_databases, "", PGC_SIGHUP, 0,
							   check_databases, NULL, NULL);
	DefineCustomStringVariable("citizen_sync.topics",
							   "Kafka topics the consumers read, comma-separated.",
							   NULL, &cs_topics, "gov.auth.citizen", PGC_SIGHUP, 0,
							   check_topics, NULL, NULL);
	DefineCustomStringVariable("citizen_sync.group_id",
							   "Kafka consumer group; empty means \"<database>-citizen-sync\". %d stands for the database name.",
							   NULL, &cs_group_id, "", PGC_SIGHUP, 0,
							   check_group_id, NULL, NULL);
	DefineCustomStringVariable("citizen_sync.kafka_properties",
							   "Extra librdkafka properties (key=value;key=value), e.g. SASL/SSL settings; no secrets.",
							   "Visible to superusers only.  Properties holding secrets are refused: put them in citizen_sync.kafka_properties_file.",
							   &cs_kafka_properties, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_kafka_properties, NULL, NULL);
	DefineCustomStringVariable("citizen_sync.kafka_properties_file",
							   "File of librdkafka properties (key=value a line), applied after kafka_properties; the place for secrets.",
							   "It must be owned by the server's operating-system user with permissions 0600 or less (or by root, 0640 or less).  Read at each worker start; a reload restarts the workers when its content changes.",
							   &cs_kafka_properties_file, "", PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.batch_size",
							"Most events a consumer applies in one transaction.",
							NULL, &cs_batch_size, 1000, 1, 100000, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.batch_wait",
							"Longest time a consumer waits to fill a batch once it holds one event.",
							NULL, &cs_batch_wait_ms, 2, 0, 10000, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.processed_events_retention",
							"How long event ids are kept in cache.processed_events (0 = forever).",
							NULL, &cs_processed_events_retention_s, 7 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.dead_letter_retention",
							"How long resolved dead letters are kept (0 = forever); unresolved ones are never removed automatically.",
							NULL, &cs_dead_letter_retention_s, 30 * 24 * 3600, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.housekeeping_interval",
							"How often a consumer applies the retention settings.",
							NULL, &cs_housekeeping_interval_s, 60, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.restart_delay",
							"Longest delay before the launcher restarts a failed worker (backoff doubles up to it).",
							NULL, &cs_restart_delay_s, 5, 1, 3600, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
}

/* Outbox publisher settings. */
static void
define_publisher_gucs(void)
{
	DefineCustomStringVariable("citizen_sync.outbox_database",
							   "Database whose citizen_sync.outbox the publisher relays to Kafka; empty = no publisher.",
							   NULL, &cs_outbox_database, "", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("citizen_sync.topic_prefix",
							   "Prefix of the topic an outbox row is published to (prefix || aggregate_type).",
							   NULL, &cs_topic_prefix, "gov.auth.", PGC_SIGHUP, 0,
							   check_topic_prefix, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.publisher_batch_size",
							"Most outbox rows the publisher keeps in flight (one per aggregate).",
							NULL, &cs_publisher_batch_size, 5000, 1, 100000, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.publisher_sweep_interval",
							"Interval of the publisher's safety-net sweep of the outbox.",
							NULL, &cs_publisher_sweep_ms, 1000, 10, 3600000, PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("citizen_sync.outbox_retention",
							"How long published outbox rows are kept before removal.",
							NULL, &cs_outbox_retention_s, 7 * 24 * 3600, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
}

void
cs_guc_define(void)
{
	DefineCustomIntVariable("citizen_sync.max_event_size",
							"Largest event accepted; larger ones are rejected (dead-lettered by the consumer).",
							NULL, &cs_max_event_bytes, 65536, 1024, 64 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE, NULL, NULL, NULL);
	define_kafka_gucs();
	define_publisher_gucs();
	MarkGUCPrefixReserved("citizen_sync");
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = cs_guc_process_utility;
}
