/*-------------------------------------------------------------------------
 * cs_settings.c
 *	  Checking the citizen_sync.* items of the configuration files.
 *
 * See cs_settings.h for the rule.  The check runs in the postmaster from
 * _PG_init (the set of settings invalid at start is then inherited by the
 * launcher, also after a crash restart) and in the launcher at its start and
 * on each reload.  A value is checked with set_config_option(changeVal =
 * false), so PostgreSQL's parsing, ranges and our check hooks decide, and the
 * message is caught rather than logged: the messages of our check hooks
 * never contain a kafka_properties value.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_settings.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct SettingInfo
{
	const char *name;
	int			affects;
} SettingInfo;

static const SettingInfo settings[] = {
	{"citizen_sync.brokers", CS_AFFECTS_ALL},
	{"citizen_sync.kafka_properties", CS_AFFECTS_ALL},
	{"citizen_sync.kafka_properties_file", CS_AFFECTS_ALL},
	{"citizen_sync.restart_delay", CS_AFFECTS_ALL},
	{"citizen_sync.databases", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.topics", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.group_id", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.batch_size", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.batch_wait", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.max_event_size", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.processed_events_retention", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.dead_letter_retention", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.housekeeping_interval", CS_AFFECTS_CONSUMERS},
	{"citizen_sync.outbox_database", CS_AFFECTS_PUBLISHER},
	{"citizen_sync.topic_prefix", CS_AFFECTS_PUBLISHER},
	{"citizen_sync.publisher_batch_size", CS_AFFECTS_PUBLISHER},
	{"citizen_sync.publisher_sweep_interval", CS_AFFECTS_PUBLISHER},
	{"citizen_sync.outbox_retention", CS_AFFECTS_PUBLISHER},
};

/* Settings invalid when the server started (postmaster memory, inherited). */
static char startup_invalid[CS_MAX_CONFIG_PROBLEMS][64];
static int	n_startup_invalid = 0;

/* The workers a setting configures; an unknown citizen_sync.* name: all. */
static int
affects_of(const char *name)
{
	for (int i = 0; i < lengthof(settings); i++)
		if (pg_strcasecmp(settings[i].name, name) == 0)
			return settings[i].affects;
	return CS_AFFECTS_ALL;
}

/*
 * Would PostgreSQL accept value for the parameter?  If not, message gets
 * its error message and detail.
 */
static bool
value_ok(const char *name, const char *value, char *message, size_t len)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	PG_TRY();
	{
		(void) set_config_option(name, value, PGC_SIGHUP, PGC_S_FILE,
								 GUC_ACTION_SET, false, ERROR, false);
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		snprintf(message, len, "%s%s%s", e->message,
				 e->detail ? ". " : "", e->detail ? e->detail : "");
		if (strlen(message) > 0 && message[strlen(message) - 1] == '.')
			message[strlen(message) - 1] = '\0';	/* a sentence: the log adds it */
		FreeErrorData(e);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* Is item the last setting of its name in the list? */
static bool
last_of_its_name(ConfigVariable *item)
{
	for (ConfigVariable *later = item->next; later; later = later->next)
		if (later->errmsg == NULL && pg_strcasecmp(later->name, item->name) == 0)
			return false;
	return true;
}

/*
 * The invalid citizen_sync.* settings of the configuration files, at most
 * CS_MAX_CONFIG_PROBLEMS (setting, message, affects filled in).
 */
static int
find_problems(CsConfigProblem *out)
{
	ConfigVariable *head = NULL;
	ConfigVariable *tail = NULL;
	int			n = 0;

	if (ConfigFileName)
		(void) ParseConfigFile(ConfigFileName, true, NULL, 0, 0, DEBUG2, &head, &tail);
	if (DataDir)
		(void) ParseConfigFile(PG_AUTOCONF_FILENAME, false, NULL, 0, 0, DEBUG2, &head, &tail);
	for (ConfigVariable *item = head; item && n < CS_MAX_CONFIG_PROBLEMS; item = item->next)
	{
		if (item->errmsg != NULL || item->name == NULL ||
			pg_strncasecmp(item->name, "citizen_sync.", 13) != 0 ||
			!last_of_its_name(item))
			continue;
		memset(&out[n], 0, sizeof(CsConfigProblem));
		if (value_ok(item->name, item->value, out[n].message, sizeof(out[n].message)))
			continue;
		strlcpy(out[n].setting, item->name, sizeof(out[n].setting));
		out[n].affects = affects_of(item->name);
		n++;
	}
	FreeConfigVariables(head);
	return n;
}

void
cs_settings_check_startup(void)
{
	CsConfigProblem problems[CS_MAX_CONFIG_PROBLEMS];
	int			n = find_problems(problems);

	for (int i = 0; i < n; i++)
		strlcpy(startup_invalid[i], problems[i].setting, sizeof(startup_invalid[i]));
	n_startup_invalid = n;
}

static bool
invalid_since_start(const char *setting)
{
	for (int i = 0; i < n_startup_invalid; i++)
		if (pg_strcasecmp(startup_invalid[i], setting) == 0)
			return true;
	return false;
}

static const char *
workers_named(int affects)
{
	return affects == CS_AFFECTS_CONSUMERS ? "consumers" :
		affects == CS_AFFECTS_PUBLISHER ? "publisher" : "consumers and the publisher";
}

/* Log a problem that was not shown before. */
static void
report_new(const CsConfigProblem *p)
{
	if (p->at_startup)
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("citizen_sync: \"%s\" has been invalid since the server started; the %s are not started",
						p->setting, workers_named(p->affects)),
				 errdetail("%s.", p->message),
				 errhint("Fix the value in the configuration file and reload (SELECT pg_reload_conf()); until then no worker runs with the default instead of what was written.")));
	else
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("citizen_sync: the configuration file sets \"%s\" to an invalid value; its previous value stays in force",
						p->setting),
				 errdetail("%s.", p->message),
				 errhint("Fix the value in the configuration file and reload (SELECT pg_reload_conf()).")));
}

/* Forget settings valid again, so that a later bad reload keeps their value. */
static void
forget_resolved(const CsConfigProblem *problems, int n)
{
	int			kept = 0;

	for (int i = 0; i < n_startup_invalid; i++)
	{
		bool		still = false;

		for (int j = 0; j < n; j++)
			still |= pg_strcasecmp(problems[j].setting, startup_invalid[i]) == 0;
		if (still)
			memmove(startup_invalid[kept++], startup_invalid[i], sizeof(startup_invalid[i]));
	}
	n_startup_invalid = kept;
}

int
cs_settings_refresh(const char **why)
{
	CsConfigProblem problems[CS_MAX_CONFIG_PROBLEMS];
	CsConfigProblem before[CS_MAX_CONFIG_PROBLEMS];
	int			n = find_problems(problems);
	int			nbefore;
	int			hold = 0;
	TimestampTz now = GetCurrentTimestamp();

	*why = NULL;
	nbefore = cs_shmem_get_config_problems(before);

	for (int i = 0; i < n; i++)
	{
		CsConfigProblem *p = &problems[i];
		bool		known = false;

		p->at_startup = invalid_since_start(p->setting);
		p->since = now;
		for (int j = 0; j < nbefore; j++)
			if (strcmp(before[j].setting, p->setting) == 0 &&
				strcmp(before[j].message, p->message) == 0 &&
				before[j].at_startup == p->at_startup)
			{
				known = true;
				p->since = before[j].since;
			}
		if (!known)
			report_new(p);
		if (p->at_startup)
			hold |= p->affects;
	}
	for (int j = 0; j < nbefore; j++)
	{
		bool		still = false;

		for (int i = 0; i < n; i++)
			still |= strcmp(before[j].setting, problems[i].setting) == 0;
		if (!still)
			ereport(LOG,
					(errmsg("citizen_sync: \"%s\" is valid again", before[j].setting)));
	}
	forget_resolved(problems, n);
	if (n_startup_invalid > 0)
		*why = startup_invalid[0];

	cs_shmem_set_config_problems(problems, n);
	return hold;
}
