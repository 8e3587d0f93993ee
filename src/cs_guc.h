/*-------------------------------------------------------------------------
 * cs_guc.h
 *	  The citizen_sync.* configuration parameters.
 *
 * All are defined by cs_guc_define() from _PG_init.  String lists are checked
 * by hooks so that a bad postgresql.conf is reported at load or reload with a
 * hint, never discovered later by a crashing worker.
 *-------------------------------------------------------------------------
 */
#ifndef CS_GUC_H
#define CS_GUC_H

#include "postgres.h"

extern char *cs_brokers;
extern char *cs_databases;
extern char *cs_topics;
extern char *cs_group_id;
extern char *cs_outbox_database;
extern char *cs_topic_prefix;
extern char *cs_kafka_properties;
extern char *cs_kafka_properties_file;
extern int	cs_max_event_bytes;
extern int	cs_batch_size;
extern int	cs_batch_wait_ms;
extern int	cs_restart_delay_s;
extern int	cs_publisher_batch_size;
extern int	cs_publisher_sweep_ms;
extern int	cs_outbox_retention_s;
extern int	cs_processed_events_retention_s;
extern int	cs_dead_letter_retention_s;
extern int	cs_housekeeping_interval_s;

/*
 * Define the parameters (from _PG_init) and install the ProcessUtility hook
 * that keeps secrets of citizen_sync.kafka_properties out of the log.
 */
extern void cs_guc_define(void);

#endif							/* CS_GUC_H */
