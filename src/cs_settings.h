/*-------------------------------------------------------------------------
 * cs_settings.h
 *	  Is the configuration in force what the DBA wrote?
 *
 * PostgreSQL applies a preloaded library's settings from postgresql.conf
 * with a WARNING when a value is invalid, and then uses the default: a typo
 * in citizen_sync.databases would silently run no consumer, one in
 * kafka_properties would drop SASL/SSL.  This module reads the citizen_sync.*
 * items of the configuration files (postgresql.conf with its includes, then
 * postgresql.auto.conf: the last one wins) and checks each with PostgreSQL's
 * own parsing and the parameter's check hook, without applying it.
 *
 * A setting invalid when the server started holds back the workers it
 * affects (its default is in force, not what the DBA wrote); one that became
 * invalid by a reload keeps its previous value in force (PostgreSQL's rule)
 * and is only reported.  Both are shown in citizen_sync.config_problems.
 *-------------------------------------------------------------------------
 */
#ifndef CS_SETTINGS_H
#define CS_SETTINGS_H

#include "cs_shmem.h"

/* Which workers a setting configures. */
#define CS_AFFECTS_CONSUMERS	0x01
#define CS_AFFECTS_PUBLISHER	0x02
#define CS_AFFECTS_ALL			(CS_AFFECTS_CONSUMERS | CS_AFFECTS_PUBLISHER)

/*
 * _PG_init, after the parameters are defined: check the files and remember
 * which settings were invalid at server start (inherited by the launcher).
 */
extern void cs_settings_check_startup(void);

/*
 * Launcher: check the files again, publish the problems in shared memory
 * and log each new one once (WARNING) and each resolved one (LOG).  Returns
 * the CS_AFFECTS_* bits of the workers that must not run: those configured
 * by a setting that has been invalid since the server started.  *why gets
 * the first such setting's name (static storage), or NULL.
 */
extern int	cs_settings_refresh(const char **why);

#endif							/* CS_SETTINGS_H */
