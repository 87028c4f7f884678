/*
 * turn_client.h: a TURN client (RFC 8656) on the caller's libuv loop, with
 * TCP relaying (RFC 6062) for the TCP paths and a UDP allocation for UDP.
 *
 * One client is one allocation on one server, over one TCP control
 * connection (also for a UDP allocation: RFC 8656 allows TCP between client
 * and server, which spares us retransmissions). It authenticates with
 * long-term credentials (in ntcp: TURN REST credentials minted by the
 * broker, turn.h), answers 401/438 challenges, refreshes the allocation and
 * its permissions while it lives, and reports through one callback:
 *
 *   TURN_EV_ALLOCATED   the relayed address (and our mapped address) is known;
 *   TURN_EV_CONNECTION  TCP allocation: a peer's connection is ready, as a
 *       plain connected TCP socket (fd, non-blocking) whose bytes are the
 *       peer's: reached through a ConnectionAttempt (the peer connected to
 *       the relayed address; its IP must be permitted first) or through
 *       turn_client_connect(); either way a second TCP connection to the
 *       server, bound with ConnectionBind, is what the fd is. The callee
 *       owns the fd. The data connection lives as long as the allocation:
 *       the client must stay open while the fd is used;
 *   TURN_EV_DATA        UDP allocation: a datagram from a permitted peer;
 *   TURN_EV_PERMITTED   the permission for peer's IP is installed (the first
 *       time only, not on its refreshes): the peer may now connect or send;
 *   TURN_EV_ERROR       err and why say what failed (the relay unreachable,
 *       the credentials refused or expired, the allocation refused, a
 *       Connect that failed, the server closing the control connection).
 *       After an error before TURN_EV_ALLOCATED nothing more comes.
 *
 * Sockets are non-blocking descriptors watched with uv_poll; a data
 * connection reads the ConnectionBind response byte-exactly, so the first
 * bytes of the peer's stream stay in the socket for the application.
 * Internal to libntcp.
 */
#ifndef NTCP_TURN_CLIENT_H
#define NTCP_TURN_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "turn.h"

typedef struct turn_client turn_client;

typedef enum turn_event_type {
    TURN_EV_ALLOCATED = 1,
    TURN_EV_CONNECTION,
    TURN_EV_DATA,
    TURN_EV_ERROR,
    TURN_EV_PERMITTED,
} turn_event_type;

typedef struct turn_event {
    turn_event_type type;
    int err;          /* TURN_EV_ERROR: NTCP_EUNREACHABLE, NTCP_EREFUSED, NTCP_ETIMEDOUT, ... */
    int code;         /* the server's error code when it answered one, else 0 */
    const char *why;  /* one line; valid during the callback */
    struct sockaddr_storage relayed, mapped; /* ALLOCATED */
    struct sockaddr_storage peer;            /* CONNECTION, DATA, PERMITTED */
    int fd;                                  /* CONNECTION: the caller's from now on */
    const uint8_t *data;                     /* DATA; valid during the callback */
    size_t len;
} turn_event;

typedef void (*turn_client_cb)(turn_client *c, const turn_event *ev, void *user);

typedef struct turn_client_config {
    struct sockaddr_storage server; /* the TURN server's TCP address */
    const char *user, *pass;        /* copied */
    uint8_t transport;              /* TURN_TRANSPORT_TCP or TURN_TRANSPORT_UDP */
    uint32_t timeout_ms;            /* per transaction and per connect; 0: 5000 */
    uint32_t lifetime_s;            /* asked for; 0: 600 */
} turn_client_config;

/* Starts connecting and allocating. The callback never runs inside this
 * call. Returns 0 (and *out), NTCP_EINVAL or NTCP_ENOMEM. */
int turn_client_start(uv_loop_t *loop, const turn_client_config *cfg, turn_client_cb cb,
                      void *user, turn_client **out);

/* Installs (and keeps refreshed) a permission for peer's IP address: data
 * and connections from that IP are let through the relay. Before or after
 * TURN_EV_ALLOCATED (queued until then). Returns 0, NTCP_ERANGE (too many
 * peers), NTCP_EINVAL, NTCP_ECLOSED. */
int turn_client_permit(turn_client *c, const struct sockaddr *peer);

/* TCP allocation: asks the server to connect to peer (RFC 6062 Connect); a
 * TURN_EV_CONNECTION or TURN_EV_ERROR follows. After TURN_EV_ALLOCATED. */
int turn_client_connect(turn_client *c, const struct sockaddr *peer);

/* UDP allocation: sends one datagram to peer (a Send indication; the peer's
 * IP must be permitted). Returns 0, NTCP_EINVAL, NTCP_ENOSPC (over 65000
 * bytes or the control connection's buffer is full), NTCP_ECLOSED. */
int turn_client_send(turn_client *c, const struct sockaddr *peer, const void *data, size_t len);

/* The server's address, for reports. */
const struct sockaddr_storage *turn_client_server(const turn_client *c);

/* Closes every socket not yet handed out (the allocation ends with the
 * control connection) and frees the client once its handles are closed:
 * the loop must keep running. No callback after this. */
void turn_client_close(turn_client *c);

#endif /* NTCP_TURN_CLIENT_H */
