/*-------------------------------------------------------------------------
 * pg_stubs.h
 *	  Backend stand-ins for the fuzz harness (see pg_stubs.c).
 *-------------------------------------------------------------------------
 */
#ifndef PG_STUBS_H
#define PG_STUBS_H

/* Free everything palloc'd since the last call. */
extern void stub_release_all(void);

#endif							/* PG_STUBS_H */
