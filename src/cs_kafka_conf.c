/*-------------------------------------------------------------------------
 * cs_kafka_conf.c
 *	  Build librdkafka configurations from citizen_sync.* settings.
 *
 * Secrets discipline: property values never appear in messages; only keys
 * (and, for the properties file, line numbers: a line that is not a known
 * key=value may be a pasted secret, so not even its key is shown).  Copies
 * of values made here are wiped before they are freed.  Nothing here raises
 * except cs_kafka_conf_new() and cs_kafka_conf_set(), so the rest serves GUC
 * check hooks and the launcher as well.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hashfn.h"
#include "cs_guc.h"
#include "cs_kafka_conf.h"

/* Largest properties file read: PEM bundles fit, a runaway file does not. */
#define PROPERTIES_FILE_MAX (1024 * 1024)

/* librdkafka 2.0.2's sensitive properties that hold secrets, and more. */
static const char *const secret_properties[] = {
	"sasl.password",
	"sasl.oauthbearer.client.secret",
	"sasl.oauthbearer.config",	/* may carry credentials and extensions */
	"ssl.key.password",
	"ssl.key.pem",
	"ssl_key",
	"ssl.keystore.password",
	NULL
};

/* Name parts that mark a secret in properties of later librdkafka versions. */
static const char *const secret_words[] = {
	"password", "secret", "passphrase", "private", "key.pem", NULL
};

bool
cs_kafka_conf_is_secret(const char *key)
{
	char		lower[256];

	for (int i = 0; secret_properties[i] != NULL; i++)
		if (pg_strcasecmp(key, secret_properties[i]) == 0)
			return true;
	strlcpy(lower, key, sizeof(lower));
	for (char *c = lower; *c; c++)
		*c = pg_tolower((unsigned char) *c);
	for (int i = 0; secret_words[i] != NULL; i++)
		if (strstr(lower, secret_words[i]) != NULL)
			return true;
	return false;
}

/* Trim blanks in place at both ends of [*start, *end). */
static void
trim(const char **start, const char **end)
{
	while (*start < *end && isspace((unsigned char) **start))
		(*start)++;
	while (*end > *start && isspace((unsigned char) (*end)[-1]))
		(*end)--;
}

/*
 * Split the item [start, end) at its first '=' into a key, copied into key
 * (at most keylen - 1 bytes), and the bounds of its value; blanks around
 * both are dropped.  Returns false when it is not of the form key=value.
 */
static bool
split_item(const char *start, const char *end, char *key, size_t keylen,
		   const char **vstart, const char **vend)
{
	const char *eq;
	const char *kend;

	trim(&start, &end);
	eq = memchr(start, '=', end - start);
	if (eq == NULL)
		return false;
	kend = eq;
	trim(&start, &kend);
	if (start == kend || kend - start >= (ptrdiff_t) keylen)
		return false;
	memcpy(key, start, kend - start);
	key[kend - start] = '\0';
	*vstart = eq + 1;
	*vend = end;
	trim(vstart, vend);
	return true;
}

/* Set key to the value [vstart, vend); every copy of the value is wiped. */
static rd_kafka_conf_res_t
set_property(rd_kafka_conf_t *conf, const char *key,
			 const char *vstart, const char *vend)
{
	size_t		len = vend - vstart;
	char	   *value = malloc(len + 1);
	char		rderr[512];
	rd_kafka_conf_res_t res;

	if (value == NULL)
		return RD_KAFKA_CONF_INVALID;
	memcpy(value, vstart, len);
	value[len] = '\0';
	res = rd_kafka_conf_set(conf, key, value, rderr, sizeof(rderr));
	explicit_bzero(value, len);
	free(value);
	explicit_bzero(rderr, sizeof(rderr));	/* librdkafka may quote the value */
	return res;
}

/* The next ';'-separated item of *p as [*start, *end); false at the end. */
static bool
next_item(const char **p, const char **start, const char **end)
{
	const char *sep;

	if (**p == '\0')
		return false;
	sep = strchr(*p, ';');
	*start = *p;
	*end = sep ? sep : *p + strlen(*p);
	*p = sep ? sep + 1 : *end;
	return true;
}

bool
cs_kafka_conf_find_secret(const char *properties, char *key, size_t keylen)
{
	const char *p = properties ? properties : "";
	const char *start;
	const char *end;

	while (next_item(&p, &start, &end))
	{
		const char *vstart;
		const char *vend;

		if (split_item(start, end, key, keylen, &vstart, &vend) &&
			cs_kafka_conf_is_secret(key))
			return true;
	}
	return false;
}

/* Apply one "key=value" item; an empty item is allowed and ignored. */
static bool
apply_item(rd_kafka_conf_t *conf, const char *start, const char *end,
		   char *errbuf, size_t errlen)
{
	char		key[256];
	const char *vstart;
	const char *vend;
	rd_kafka_conf_res_t res;

	trim(&start, &end);
	if (start == end)
		return true;
	if (!split_item(start, end, key, sizeof(key), &vstart, &vend))
	{
		snprintf(errbuf, errlen,
				 "An item of citizen_sync.kafka_properties is not of the form key=value.");
		return false;
	}
	if (cs_kafka_conf_is_secret(key))
	{
		snprintf(errbuf, errlen,
				 "The property \"%s\" holds a secret, and the value of citizen_sync.kafka_properties is written to the server log when it changes and shown to members of pg_read_all_settings.",
				 key);
		return false;
	}
	res = set_property(conf, key, vstart, vend);
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
	const char *start;
	const char *end;

	while (next_item(&p, &start, &end))
		if (!apply_item(conf, start, end, errbuf, errlen))
			return false;
	return true;
}

/* The name of the server's OS user, for hints. */
static const char *
server_user(void)
{
	struct passwd *pw = getpwuid(geteuid());

	return pw ? pw->pw_name : "the server's user";
}

/*
 * Open path and check it as PostgreSQL checks ssl_key_file (be-secure-
 * common.c), on the opened file so that what is checked is what is read.
 * Returns the descriptor, or -1 with status filled.
 */
static int
open_checked(const char *path, CsKafkaFileStatus *st)
{
	struct stat sb;
	int			fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &sb) != 0)
	{
		snprintf(st->message, sizeof(st->message),
				 "could not open Kafka properties file \"%s\": %s", path, strerror(errno));
		snprintf(st->detail, sizeof(st->detail),
				 "citizen_sync.kafka_properties_file names this file.");
		snprintf(st->hint, sizeof(st->hint),
				 "Create it, owned by %s with permissions 0600, or correct citizen_sync.kafka_properties_file.",
				 server_user());
	}
	else if (!S_ISREG(sb.st_mode))
	{
		snprintf(st->message, sizeof(st->message),
				 "Kafka properties file \"%s\" is not a regular file", path);
		snprintf(st->detail, sizeof(st->detail),
				 "citizen_sync.kafka_properties_file must name a file of key=value lines.");
		snprintf(st->hint, sizeof(st->hint),
				 "Correct citizen_sync.kafka_properties_file.");
	}
	else if (sb.st_uid != geteuid() && sb.st_uid != 0)
	{
		snprintf(st->message, sizeof(st->message),
				 "Kafka properties file \"%s\" must be owned by the database user or root", path);
		snprintf(st->detail, sizeof(st->detail),
				 "It is owned by user ID %u; it may hold secrets, so no other user may control it.",
				 (unsigned int) sb.st_uid);
		snprintf(st->hint, sizeof(st->hint),
				 "Run chown %s \"%s\" and chmod 600 \"%s\".", server_user(), path, path);
	}
	else if ((sb.st_uid == geteuid() && (sb.st_mode & (S_IRWXG | S_IRWXO))) ||
			 (sb.st_uid == 0 && (sb.st_mode & (S_IWGRP | S_IXGRP | S_IRWXO))))
	{
		snprintf(st->message, sizeof(st->message),
				 "Kafka properties file \"%s\" has group or world access", path);
		snprintf(st->detail, sizeof(st->detail),
				 "Its permissions are %04o.  It must have permissions u=rw (0600) or less if owned by the database user, or u=rw,g=r (0640) or less if owned by root.",
				 (unsigned int) (sb.st_mode & 07777));
		snprintf(st->hint, sizeof(st->hint),
				 sb.st_uid == 0 ? "Run chmod 640 \"%s\"." : "Run chmod 600 \"%s\".", path);
	}
	else
		return fd;
	if (fd >= 0)
		close(fd);
	return -1;
}

/*
 * Read the whole file into a malloc'd buffer of PROPERTIES_FILE_MAX + 1
 * bytes; *len is what was read.  Returns NULL with status filled on failure.
 */
static char *
read_all(int fd, const char *path, size_t *len, CsKafkaFileStatus *st)
{
	char	   *buf = malloc(PROPERTIES_FILE_MAX + 1);
	ssize_t		n = 0;

	*len = 0;
	while (buf != NULL && *len <= PROPERTIES_FILE_MAX)
	{
		n = read(fd, buf + *len, PROPERTIES_FILE_MAX + 1 - *len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		*len += n;
	}
	if (buf != NULL && n >= 0 && *len <= PROPERTIES_FILE_MAX)
		return buf;
	snprintf(st->message, sizeof(st->message),
			 buf == NULL ? "out of memory reading Kafka properties file \"%s\"" :
			 n < 0 ? "could not read Kafka properties file \"%s\"" :
			 "Kafka properties file \"%s\" is too large", path);
	snprintf(st->detail, sizeof(st->detail), "At most %d bytes are read.", PROPERTIES_FILE_MAX);
	snprintf(st->hint, sizeof(st->hint), "Check the file named by citizen_sync.kafka_properties_file.");
	if (buf != NULL)
	{
		explicit_bzero(buf, *len);
		free(buf);
	}
	return NULL;
}

/* Record a problem of line lineno; the line itself is never shown. */
static bool
line_problem(CsKafkaFileStatus *st, const char *path, int lineno,
			 const char *what, const char *detail)
{
	snprintf(st->message, sizeof(st->message),
			 "%s in Kafka properties file \"%s\" line %d", what, path, lineno);
	snprintf(st->detail, sizeof(st->detail), "%s", detail);
	snprintf(st->hint, sizeof(st->hint),
			 "Write one librdkafka property per line as key=value; lines starting with # are comments.");
	return false;
}

/* Apply the lines of buf[0 .. len) to conf. */
static bool
apply_lines(const char *path, const char *buf, size_t len,
			rd_kafka_conf_t *conf, CsKafkaFileStatus *st)
{
	const char *p = buf;
	const char *end = buf + len;
	int			lineno = 0;

	while (p < end)
	{
		const char *nl = memchr(p, '\n', end - p);
		const char *start = p;
		const char *stop = nl ? nl : end;
		char		key[256];
		char		detail[300];
		const char *vstart;
		const char *vend;
		rd_kafka_conf_res_t res;

		lineno++;
		p = nl ? nl + 1 : end;
		trim(&start, &stop);
		if (start == stop || *start == '#')
			continue;
		if (memchr(start, '\0', stop - start) != NULL ||
			!split_item(start, stop, key, sizeof(key), &vstart, &vend))
			return line_problem(st, path, lineno, "syntax error",
								"The line is not of the form key=value; it is not shown, since it may hold a secret.");
		res = set_property(conf, key, vstart, vend);
		if (res == RD_KAFKA_CONF_UNKNOWN)
			return line_problem(st, path, lineno, "unknown property",
								"librdkafka does not know the property named on this line; the name is not shown, since the line may hold a secret.");
		if (res != RD_KAFKA_CONF_OK)
		{
			snprintf(detail, sizeof(detail),
					 "librdkafka rejected the value of the property \"%s\" (or does not support it in this build); the value is not shown.",
					 key);
			return line_problem(st, path, lineno, "invalid value", detail);
		}
	}
	return true;
}

bool
cs_kafka_conf_read_file(const char *path, rd_kafka_conf_t *conf,
						CsKafkaFileStatus *status)
{
	rd_kafka_conf_t *target = conf;
	size_t		len;
	char	   *buf;
	int			fd;

	memset(status, 0, sizeof(*status));
	status->ok = true;
	if (path == NULL || path[0] == '\0')
		return true;
	status->ok = false;
	fd = open_checked(path, status);
	if (fd < 0)
		return false;
	buf = read_all(fd, path, &len, status);
	close(fd);
	if (buf == NULL)
		return false;
	status->digest = hash_bytes_extended((const unsigned char *) buf, (int) len, 0);
	if (target == NULL)
		target = rd_kafka_conf_new();
	status->ok = apply_lines(path, buf, len, target, status);
	if (conf == NULL)
		rd_kafka_conf_destroy(target);
	explicit_bzero(buf, len);
	free(buf);
	return status->ok;
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
	CsKafkaFileStatus file;

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
	if (!cs_kafka_conf_read_file(cs_kafka_properties_file, conf, &file))
	{
		rd_kafka_conf_destroy(conf);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("citizen_sync: %s", file.message),
				 errdetail("%s", file.detail),
				 errhint("%s", file.hint)));
	}
	return conf;
}
