/*-------------------------------------------------------------------------
 * cs_dead_letter.h
 *	  Store a message that cannot be applied in citizen_sync.dead_letters.
 *-------------------------------------------------------------------------
 */
#ifndef CS_DEAD_LETTER_H
#define CS_DEAD_LETTER_H

#include "cs_batch.h"

/*
 * Insert msg with its raw bytes, position and error, in the current
 * transaction (SPI connected).  A message seen again at the same position
 * bumps attempts instead of adding a row.  event_id and detail may be NULL.
 */
extern void cs_dead_letter_store(const CsMessage *msg, const char *event_id,
								 int sqlerrcode, const char *message,
								 const char *detail);

#endif							/* CS_DEAD_LETTER_H */
