/*-------------------------------------------------------------------------
 * cs_kafka_conf.h
 *	  librdkafka configuration built from the citizen_sync.* settings.
 *
 * citizen_sync.kafka_properties holds "key=value" pairs separated by ';'
 * (non-secret settings).  PostgreSQL writes a setting's new value to the
 * server log on every reload that changes it and shows it to members of
 * pg_read_all_settings, so properties whose value is a secret are refused
 * there: they belong in the file named by citizen_sync.kafka_properties_file
 * (one key=value a line), which must be readable by the server's OS user
 * only.  Nothing here logs a value; messages name keys and line numbers.
 *-------------------------------------------------------------------------
 */
#ifndef CS_KAFKA_CONF_H
#define CS_KAFKA_CONF_H

#include <librdkafka/rdkafka.h>

/*
 * Does this librdkafka property hold a secret (a password, a client secret,
 * private key material)?  Every property librdkafka 2.0.2 redacts as
 * sensitive, except the identity (sasl.username) and paths, plus
 * sasl.oauthbearer.client.secret and, for later librdkafka versions, any
 * name containing "password", "secret", "passphrase", "private" or
 * "key.pem".
 */
extern bool cs_kafka_conf_is_secret(const char *key);

/*
 * The first secret property named in a "key=value;key=value" list: true with
 * its name in key (at most keylen - 1 bytes), false when there is none.
 */
extern bool cs_kafka_conf_find_secret(const char *properties, char *key,
									  size_t keylen);

/*
 * Apply the "key=value;key=value" list to conf.  Returns true, or false with
 * a sentence naming the offending key in errbuf (a secret property is an
 * error).  Never raises; usable in a GUC check hook.
 */
extern bool cs_kafka_conf_apply_properties(rd_kafka_conf_t *conf,
										   const char *properties,
										   char *errbuf, size_t errlen);

/* What reading citizen_sync.kafka_properties_file found. */
typedef struct CsKafkaFileStatus
{
	bool		ok;
	uint64		digest;			/* of the content; 0 when no file is named */
	/* when !ok: sentences naming the file, never a value */
	char		message[384];
	char		detail[512];
	char		hint[384];
} CsKafkaFileStatus;

/*
 * Read the properties file at path ("" = none): it must be a regular file
 * owned by the server's OS user with no group or other access (0600 or
 * less), or owned by root with at most u=rw,g=r (0640), as PostgreSQL
 * requires of ssl_key_file.  Lines are "key=value" (blanks around key and
 * value ignored), blank, or comments starting with '#'.  The properties are
 * applied to conf, or, when conf is NULL, to a scratch configuration (a
 * check).  Fills status (digest of the content, or the problem) and returns
 * status->ok.  Never raises and never logs; the content is wiped from memory
 * after use.
 */
extern bool cs_kafka_conf_read_file(const char *path, rd_kafka_conf_t *conf,
									CsKafkaFileStatus *status);

/*
 * A new configuration: brokers, client.id, then the tunable defaults
 * (NULL-terminated key, value, key, value, ... list), then
 * citizen_sync.kafka_properties, then the properties file, both of which may
 * override those defaults.  The caller sets what the guarantees depend on
 * afterwards.  ereports ERROR with a hint on a bad setting or file.
 */
extern rd_kafka_conf_t *cs_kafka_conf_new(const char *client_id,
										  const char *const *defaults);

/* Set one property or ereport ERROR naming the key. */
extern void cs_kafka_conf_set(rd_kafka_conf_t *conf, const char *key,
							  const char *value);

#endif							/* CS_KAFKA_CONF_H */
