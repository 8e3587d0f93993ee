/*-------------------------------------------------------------------------
 * cs_launcher.h
 *	  What other processes ask of the launcher.
 *-------------------------------------------------------------------------
 */
#ifndef CS_LAUNCHER_H
#define CS_LAUNCHER_H

/*
 * Before DROP DATABASE dbname (by its owner): stop the citizen_sync workers
 * connected to it, and keep the launcher from restarting them for a while,
 * so that the drop needs no FORCE.  Once the database is gone the launcher
 * waits quietly for it (state waiting) until the DBA removes it from
 * citizen_sync.databases.  If the drop fails, the workers start again.
 */
extern void cs_launcher_prepare_dropdb(const char *dbname);

#endif							/* CS_LAUNCHER_H */
