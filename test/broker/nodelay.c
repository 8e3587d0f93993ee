/*
 * nodelay.c - give the mock brokers' connections TCP_NODELAY, as Kafka has.
 *
 * librdkafka's mock cluster accepts connections without disabling Nagle's
 * algorithm.  When several responses go back on one connection (one Produce
 * response per partition, say), the second waits for the client's delayed
 * ACK: about 40 ms per round trip, which real brokers (Kafka sets
 * TCP_NODELAY on every socket) never add.  The mock gives no hook into its
 * sockets, so a thread sets the option on every TCP socket of this process
 * every few milliseconds; setting it again is harmless.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "nodelay.h"

#define NODELAY_MAX_FD   1024
#define NODELAY_PERIOD_MS   5

/* Set TCP_NODELAY on fd if it is a TCP stream socket. */
static void set_nodelay(int fd)
{
    struct stat st;
    int         type = 0, one = 1;
    socklen_t   len = sizeof(type);

    if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
        return;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
        return;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void *nodelay_loop(void *arg)
{
    struct timespec period = {0, NODELAY_PERIOD_MS * 1000000L};

    (void)arg;
    for (;;) {
        for (int fd = 3; fd < NODELAY_MAX_FD; fd++)
            set_nodelay(fd);
        nanosleep(&period, NULL);
    }
    return NULL;
}

int nodelay_start(void)
{
    pthread_t tid;

    if (pthread_create(&tid, NULL, nodelay_loop, NULL) != 0)
        return -1;
    return pthread_detach(tid);
}
