/*-------------------------------------------------------------------------
 * cs_kafka_conf.h
 *	  librdkafka configuration built from the citizen_sync.* settings.
 *
 * citizen_sync.kafka_properties holds "key=value" pairs separated by ';'
 * (SASL/SSL settings and the like).  Its values may be secrets: nothing here
 * logs them, and error messages name only the key.
 *-------------------------------------------------------------------------
 */
#ifndef CS_KAFKA_CONF_H
#define CS_KAFKA_CONF_H

#include <librdkafka/rdkafka.h>

/*
 * Apply the "key=value;key=value" list to conf.  Returns true, or false with
 * a sentence naming the offending key in errbuf.  Never raises; usable in a
 * GUC check hook.
 */
extern bool cs_kafka_conf_apply_properties(rd_kafka_conf_t *conf,
										   const char *properties,
										   char *errbuf, size_t errlen);

/*
 * A new configuration: brokers, client.id, then the tunable defaults
 * (NULL-terminated key, value, key, value, ... list), then
 * citizen_sync.kafka_properties, which may override those defaults.  The
 * caller sets what the guarantees depend on afterwards.  ereports ERROR with
 * a hint on a bad setting.
 */
extern rd_kafka_conf_t *cs_kafka_conf_new(const char *client_id,
										  const char *const *defaults);

/* Set one property or ereport ERROR naming the key. */
extern void cs_kafka_conf_set(rd_kafka_conf_t *conf, const char *key,
							  const char *value);

#endif							/* CS_KAFKA_CONF_H */
