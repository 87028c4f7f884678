/*
 * discover.h: what discovery (discover.c) gives the rest of the library
 * beyond the public ntcp_discover_start(). Internal.
 */
#ifndef NTCP_DISCOVER_H
#define NTCP_DISCOVER_H

#include <stdint.h>
#include <sys/socket.h>

#include "ntcp.h"

/* ntcp_discover_start(), and also, when server4 is not NULL: right before
 * cb runs, *server4 is set to the IPv4 address and port that the probes
 * used for the server that answered (family 0 when none answered or IPv4
 * was not probed). The runtime (rt_bringup.c) samples that server's newest
 * port later (ntcp_port_sample_start() below); taking the address discovery
 * resolved (on the thread pool) spares it a second lookup, which would
 * block its loop, and gives it the very address that answered when a name
 * has several. server4 must stay valid until cb has run. */
int ntcp_discover_start_addr(ntcp_t *ctx, struct uv_loop_s *loop, unsigned flags, int timeout_ms,
                             ntcp_discover_cb cb, void *user_ptr, struct sockaddr_storage *server4);

/* ---- the newest external port (sampler.c) ----
 *
 * Behind a NAT that gives each new mapping the next port, the newest
 * external port is read from one new TCP connection to a STUN server (the
 * one ntcp_discover_start_addr() reported) and one Binding request: the
 * port the server saw it from. */
typedef struct ntcp_port_sampler ntcp_port_sampler;

/* The port the server saw (0: none: failed, timed out, cancelled). Once. */
typedef void (*ntcp_port_sample_cb)(uint16_t port, void *user);
/* After the port: the sampler's handles are closed and it is freed. */
typedef void (*ntcp_port_sample_freed_cb)(void *user);

/* Starts a sample on loop: *out is set before anything else, and on_port
 * runs within this call when the connect cannot start (then on_freed from
 * the loop, as always). Returns 0, or NTCP_ENOMEM (nothing started, no
 * callback). */
int ntcp_port_sample_start(struct uv_loop_s *loop, const struct sockaddr_storage *server,
                           unsigned timeout_ms, ntcp_port_sample_cb on_port,
                           ntcp_port_sample_freed_cb on_freed, void *user,
                           ntcp_port_sampler **out);
/* Ends a sample: on_port(0) unless the port came already, then on_freed. */
void ntcp_port_sample_cancel(ntcp_port_sampler *sp);

#endif /* NTCP_DISCOVER_H */
