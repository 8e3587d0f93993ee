/*-------------------------------------------------------------------------
 * cs_probe.c
 *	  Watermark queries off the consumer's main loop, in a helper thread.
 *
 * After a Kafka error the consumer cannot trust its cached high watermarks
 * (they come with fetch responses) to say that it has read everything, so
 * it asks the partitions' leaders.  rd_kafka_query_watermark_offsets()
 * blocks, and in librdkafka 2.0.2 it ignores its timeout while the
 * partition's leader is down (librdkafka issue #2588, fixed in 2.3.0): on
 * the main loop that stopped every partition and SIGTERM.  The query runs
 * here instead, in a thread of our own that the main loop hands requests to
 * and reads answers from; the main loop never waits for it.
 *
 * The thread calls only librdkafka and pthreads: no palloc, no elog, no
 * PostgreSQL state (a backend is single-threaded), and it blocks every
 * signal so that they all reach the main thread.  Its memory is malloc'd
 * (librdkafka's partition lists).
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "cs_probe.h"

/* Timeout of one partition's query (honoured when its leader is reachable). */
#define PROBE_QUERY_TIMEOUT_MS	500

struct CsProbe
{
	rd_kafka_t *rk;
	pthread_t	thread;
	pthread_mutex_t mutex;
	pthread_cond_t cond;
	/* under mutex */
	rd_kafka_topic_partition_list_t *request;	/* not yet started */
	uint64_t	requested;		/* number of the last request */
	rd_kafka_topic_partition_list_t *answer;	/* last completed */
	uint64_t	answered;		/* number of the request it answers */
	bool		busy;			/* inside librdkafka */
	bool		stop;
	bool		ended;
};

/* Query every partition of list, recording each outcome in the list. */
static void
query_all(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *list)
{
	for (int i = 0; i < list->cnt; i++)
	{
		rd_kafka_topic_partition_t *p = &list->elems[i];
		int64_t		lo,
					hi = -1;

		p->err = rd_kafka_query_watermark_offsets(rk, p->topic, p->partition, &lo, &hi,
												  PROBE_QUERY_TIMEOUT_MS);
		p->offset = p->err == RD_KAFKA_RESP_ERR_NO_ERROR ? hi : -1;
	}
}

static void *
probe_thread(void *arg)
{
	CsProbe    *probe = (CsProbe *) arg;

	pthread_mutex_lock(&probe->mutex);
	while (!probe->stop)
	{
		rd_kafka_topic_partition_list_t *list = probe->request;
		uint64_t	number = probe->requested;

		if (list == NULL)
		{
			pthread_cond_wait(&probe->cond, &probe->mutex);
			continue;
		}
		probe->request = NULL;
		probe->busy = true;
		pthread_mutex_unlock(&probe->mutex);

		query_all(probe->rk, list);

		pthread_mutex_lock(&probe->mutex);
		probe->busy = false;
		if (probe->answer)
			rd_kafka_topic_partition_list_destroy(probe->answer);
		probe->answer = list;
		probe->answered = number;
	}
	probe->ended = true;
	pthread_cond_broadcast(&probe->cond);
	pthread_mutex_unlock(&probe->mutex);
	return NULL;
}

CsProbe *
cs_probe_start(rd_kafka_t *rk)
{
	CsProbe    *probe = calloc(1, sizeof(CsProbe));
	sigset_t	all,
				old;
	int			rc;

	if (probe == NULL)
		return NULL;
	probe->rk = rk;
	pthread_mutex_init(&probe->mutex, NULL);
	pthread_cond_init(&probe->cond, NULL);
	/* the thread inherits this mask: every signal stays with the backend */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&probe->thread, NULL, probe_thread, probe);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
	{
		pthread_mutex_destroy(&probe->mutex);
		pthread_cond_destroy(&probe->cond);
		free(probe);
		return NULL;
	}
	return probe;
}

uint64_t
cs_probe_request(CsProbe *probe, const rd_kafka_topic_partition_list_t *parts)
{
	uint64_t	number;

	pthread_mutex_lock(&probe->mutex);
	if (probe->request)
		rd_kafka_topic_partition_list_destroy(probe->request);
	probe->request = rd_kafka_topic_partition_list_copy(parts);
	number = ++probe->requested;
	pthread_cond_signal(&probe->cond);
	pthread_mutex_unlock(&probe->mutex);
	return number;
}

rd_kafka_topic_partition_list_t *
cs_probe_result(CsProbe *probe, uint64_t min_request)
{
	rd_kafka_topic_partition_list_t *list = NULL;

	pthread_mutex_lock(&probe->mutex);
	if (probe->answer && probe->answered >= min_request)
		list = rd_kafka_topic_partition_list_copy(probe->answer);
	pthread_mutex_unlock(&probe->mutex);
	return list;
}

bool
cs_probe_stop(CsProbe *probe, int wait_ms)
{
	struct timespec deadline;
	bool		ended;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += wait_ms / 1000;
	deadline.tv_nsec += (long) (wait_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L)
	{
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&probe->mutex);
	probe->stop = true;
	pthread_cond_broadcast(&probe->cond);
	while (!probe->ended &&
		   pthread_cond_timedwait(&probe->cond, &probe->mutex, &deadline) == 0)
		;
	ended = probe->ended;
	pthread_mutex_unlock(&probe->mutex);
	if (!ended)
	{
		/* stuck in librdkafka: leave it (and its memory) to the exit */
		pthread_detach(probe->thread);
		return false;
	}
	pthread_join(probe->thread, NULL);
	if (probe->request)
		rd_kafka_topic_partition_list_destroy(probe->request);
	if (probe->answer)
		rd_kafka_topic_partition_list_destroy(probe->answer);
	pthread_mutex_destroy(&probe->mutex);
	pthread_cond_destroy(&probe->cond);
	free(probe);
	return true;
}
