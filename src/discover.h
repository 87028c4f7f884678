/*
 * discover.h: what discovery (discover.c) gives the rest of the library
 * beyond the public ntcp_discover_start(). Internal.
 */
#ifndef NTCP_DISCOVER_H
#define NTCP_DISCOVER_H

#include <sys/socket.h>

#include "ntcp.h"

/* ntcp_discover_start(), and also, when server4 is not NULL: right before
 * cb runs, *server4 is set to the IPv4 address and port that the probes
 * used for the server that answered (family 0 when none answered or IPv4
 * was not probed). The runtime (api.c) samples that server's newest port
 * later; taking the address discovery resolved (on the thread pool) spares
 * it a second lookup, which would block its loop, and gives it the very
 * address that answered when a name has several. server4 must stay valid
 * until cb has run. */
int ntcp_discover_start_addr(ntcp_t *ctx, struct uv_loop_s *loop, unsigned flags, int timeout_ms,
                             ntcp_discover_cb cb, void *user_ptr, struct sockaddr_storage *server4);

#endif /* NTCP_DISCOVER_H */
