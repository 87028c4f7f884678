/*
 * portmux.h: one listener per local port, shared by every engine of a
 * context (docs/architecture.md, "Many connections on one context").
 *
 * Why. Every connection of a context punches and listens from the broker
 * session's port: that port's NAT mapping is the one the broker saw and the
 * peer was told. Before, each engine opened its own listener on it with
 * SO_REUSEPORT, and Linux spread incoming connections over those listeners
 * by a hash of the 4-tuple, not by engine: with two connections under way
 * each engine got about half of the other's connections, whose key proof
 * then failed ("not our session"). So a context ran one connection at a
 * time.
 *
 * How. The mux owns the listening socket of each local address and port
 * for as long as one engine has it registered, and hands each accepted
 * connection to the engine it belongs to. When every registration on the
 * port is for one session (the common case), the connection goes to it at
 * once, as before. Otherwise the mux waits for the peer's first message,
 * which the key proof sends the moment the connection is up (docs/verify.md:
 * HELLO, with SESSION-ID = SHA-256(label || the CONNECT-GO's nonce)), reads
 * it with MSG_PEEK (it stays in the socket for the proof) and gives the
 * connection to the registration with that SESSION-ID. A connection whose
 * HELLO does not arrive within PORTMUX_PENDING_MS, is malformed or names no
 * registered session is closed. Sockets in SYN-SENT (connects and punches
 * from the same port) are untouched: the kernel gives a SYN or SYN-ACK for
 * their exact 4-tuple to them, not to the listener.
 *
 * Internal to libntcp. Everything runs on the loop given to
 * ntcp_portmux_new(); no call is thread-safe.
 */
#ifndef NTCP_PORTMUX_H
#define NTCP_PORTMUX_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "verify.h"

/* A connection waits at most this long for its HELLO. */
#define PORTMUX_PENDING_MS VERIFY_DEFAULT_TIMEOUT_MS
/* Connections waiting for their HELLO at once; more are closed (a peer
 * or a stranger flooding the port). */
#define PORTMUX_MAX_PENDING 128

typedef struct ntcp_portmux ntcp_portmux;
typedef struct ntcp_portmux_reg ntcp_portmux_reg;

/* Offers an accepted connection (non-blocking, close-on-exec) from `from`
 * to a registration. Returns true when it took fd (it owns it from then
 * on), false to decline it (the mux tries the next registration of the
 * same session, then closes it). Called from the loop; it may remove
 * registrations, its own included. */
typedef bool (*ntcp_portmux_take_cb)(void *user, int fd, const struct sockaddr_storage *from);

/* A mux on loop. Returns 0, or NTCP_ENOMEM. */
int ntcp_portmux_new(uv_loop_t *loop, ntcp_portmux **out);

/* Closes every listener and every connection still waiting for its HELLO;
 * registrations still present are dropped (their callbacks never run
 * again). The memory goes once libuv has closed the handles: the loop must
 * run on. NULL is accepted. */
void ntcp_portmux_free(ntcp_portmux *m);

/* Registers a session on a local address and port (local: family and
 * address, the wildcard or one address; its port must not be 0). The first
 * registration on an address and port opens its listener (SO_REUSEADDR and
 * SO_REUSEPORT, so the session's and the attempts' sockets share it); the
 * last one's removal closes it. Returns 0, NTCP_EINVAL, NTCP_ENOMEM or
 * NTCP_ESYS (bind or listen failed, errno in *sys when sys is not NULL). */
int ntcp_portmux_add(ntcp_portmux *m, const struct sockaddr_storage *local,
                     const uint8_t session_id[VERIFY_SESSION_ID_SIZE], ntcp_portmux_take_cb cb,
                     void *user, ntcp_portmux_reg **out, int *sys);

/* Removes a registration (its callback never runs again). NULL is accepted. */
void ntcp_portmux_remove(ntcp_portmux_reg *r);

/* Counters, for tests and the benchmarks. */
typedef struct ntcp_portmux_stats {
    unsigned listeners;     /* open now */
    unsigned registrations; /* now */
    unsigned pending;       /* connections waiting for their HELLO now */
    uint64_t accepted;      /* connections accepted in all */
    uint64_t direct;        /* handed over at once (one session on the port) */
    uint64_t by_session;    /* handed over by the SESSION-ID of their HELLO */
    uint64_t dropped;       /* closed: no HELLO in time, malformed, unknown session, declined */
} ntcp_portmux_stats;

void ntcp_portmux_get_stats(const ntcp_portmux *m, ntcp_portmux_stats *out);

#endif /* NTCP_PORTMUX_H */
