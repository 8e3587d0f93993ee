/*-------------------------------------------------------------------------
 * cs_subscription.h
 *	  The subscriptions of this database, loaded from the catalog.
 *
 * citizen_sync.subscription_catalog lists the subscribed cache tables and
 * citizen_sync.subscription_fields() describes each one's fields: that one
 * description becomes here the parser's shape (cs_event.h) and the apply
 * SQL's columns and types (cs_apply.c).  The loaded set is kept per backend
 * and reloaded when the catalog or a target changes (relcache invalidation:
 * subscribe(), unsubscribe(), ALTER TABLE on a target), at the next
 * cs_subscriptions_refresh().
 *-------------------------------------------------------------------------
 */
#ifndef CS_SUBSCRIPTION_H
#define CS_SUBSCRIPTION_H

#include "cs_event.h"
#include "executor/spi.h"

typedef struct CsSubscription
{
	Oid			target;
	char	   *target_name;	/* qualified, quoted */
	char	   *topic;			/* NULL: the topics of citizen_sync.topics */
	bool		builtin;
	bool		hard_delete;
	char	   *key_column;		/* quoted */
	char	   *key_type;		/* bigint, text or uuid */
	char	  **columns;		/* [shape.nfields] quoted column names */
	char	  **types;			/* [shape.nfields] format_type() of each */
	char	  **defaults;		/* [shape.nfields] default expression or NULL */
	Oid		   *typids;			/* [shape.nfields] column type and typmod */
	int32	   *typmods;
	CsEventShape shape;
	SPIPlanPtr	upsert_plan;	/* prepared on first use, freed on reload */
	SPIPlanPtr	delete_plan;	/* hard deletes */
} CsSubscription;

/*
 * Reload the subscriptions if the catalog or a target changed since they
 * were loaded.  Requires a transaction and an SPI connection.  A target that
 * cannot be described is left out with a WARNING.
 */
extern void cs_subscriptions_refresh(void);

extern int	cs_subscription_count(void);
extern CsSubscription *cs_subscription_get(int i);

/* Index of the subscription of topic, or -1. */
extern int	cs_subscription_for_topic(const char *topic);

/* Index of the subscription of target (the built-in one: InvalidOid), or -1. */
extern int	cs_subscription_for_target(Oid target);

/*
 * Every topic subscribed in this database, sorted, comma-separated (for
 * rd_kafka_subscribe and for comparing with the last set).  Palloc'd.
 */
extern char *cs_subscription_topics(void);

#endif							/* CS_SUBSCRIPTION_H */
