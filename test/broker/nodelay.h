/* nodelay.h - TCP_NODELAY for the mock brokers' connections (see nodelay.c). */
#ifndef CS_NODELAY_H
#define CS_NODELAY_H

/* Start the background thread; 0 on success, -1 if it could not start. */
int nodelay_start(void);

#endif
