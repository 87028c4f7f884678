/*
 * relay.h: the relay of last resort for one TCP connect (docs/relay.md), run
 * beside the traversal engine on the runtime's loop. The broker's CONNECT-GO
 * carries a TURN server and credentials for each end; with them:
 *
 *   the target ("allocator") makes a TCP allocation (RFC 6062) at once,
 *   permits the requester's public IP, and sends the relayed address to the
 *   requester through the broker (RELAY-ADDR; NULL when it has none, so the
 *   requester does not wait for nothing). A connection that arrives on the
 *   relayed address is the requester's: it is verified (the key proof,
 *   verify.h) and reported at once;
 *
 *   the requester ("connector") keeps the relayed address when it comes;
 *   ntcp_relay_go() (when the direct methods have failed, or at once when no
 *   direct method can work) connects to it with a plain TCP connect and runs
 *   the key proof as the requester.
 *
 * The relay cannot stand in for the peer: the proof binds the stream to
 * the keys the broker vouched for, end to end through the relay.
 *
 * After a success at the allocator the allocation must live as long as the
 * application's socket (coturn ends the relayed connection with it): the
 * relay stays as a keeper, refreshing the allocation, and ends by itself
 * once the application's descriptor is gone (checked every 2 s by its
 * identity, as the UDP keepalive does), or at ntcp_relay_close_all().
 * Internal to libntcp.
 */
#ifndef NTCP_RELAY_H
#define NTCP_RELAY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "verify.h"

typedef struct ntcp_relay ntcp_relay;

typedef struct ntcp_relay_result {
    int err;  /* 0: fd is verified. NTCP_EREFUSED / NTCP_EUNREACHABLE / NTCP_ETIMEDOUT
               * (the relay's: why says which), a verify error, NTCP_ECLOSED (cancel) */
    int fd;   /* on success, the caller's (non-blocking) */
    struct sockaddr_storage server;  /* the TURN server */
    struct sockaddr_storage relayed; /* the relayed address (family 0: unknown) */
    struct sockaddr_storage local, remote; /* of fd */
    uint64_t connected_at, verified_at;    /* uv_hrtime() / 1e6 */
    char why[256];
} ntcp_relay_result;

/* res is valid during the call only. Runs exactly once. */
typedef void (*ntcp_relay_cb)(ntcp_relay *r, const ntcp_relay_result *res, void *user);

typedef struct ntcp_relay_config {
    bool allocator;                      /* this end allocates (the target) */
    struct sockaddr_storage server;      /* CONNECT-GO's TURN-SERVER */
    const char *user, *pass;             /* its TURN-USERNAME, -PASSWORD; copied */
    struct sockaddr_storage peer_public; /* allocator: the IP to permit */
    ntcp_verify_params verify;           /* key borrowed; names copied */
    uint32_t timeout_ms;                 /* per TURN transaction; 0: 5000 */
    /* Allocator: sends our relayed address (NULL: none, and why) to the peer. */
    void (*send_addr)(void *user, const struct sockaddr_storage *relayed, const char *why);
    void *send_user;
    /* UDP bridge only (may be NULL): the peer's first datagram came through
     * the relay, so the peer has given up on the direct paths. */
    void (*peer_seen)(void *user);
} ntcp_relay_config;

/* Starts (the allocator allocates now). cb never runs inside this call.
 * Returns 0, NTCP_EINVAL or NTCP_ENOMEM. */
int ntcp_relay_start(uv_loop_t *loop, const ntcp_relay_config *cfg, ntcp_relay_cb cb, void *user,
                     ntcp_relay **out);

/* Connector: the peer's relayed address arrived (family 0: it has none,
 * and why says why; may be NULL). */
void ntcp_relay_peer_addr(ntcp_relay *r, const struct sockaddr_storage *relayed, const char *why);

/* The direct methods are over: the connector connects (now, or when the
 * address arrives), the allocator waits for the connection; either fails
 * with NTCP_ETIMEDOUT at deadline (uv_hrtime() / 1e6). */
void ntcp_relay_go(ntcp_relay *r, uint64_t deadline);

/* Before the callback: it follows with NTCP_ECLOSED. */
void ntcp_relay_cancel(ntcp_relay *r);

/* After a successful callback at the allocator: keeps the allocation for
 * app_fd (the descriptor handed to the application) in *list, the caller's
 * list head; the keeper unlinks and frees itself when app_fd is gone. Any
 * other relay is freed after its callback without this call. */
void ntcp_relay_keep(ntcp_relay *r, int app_fd, ntcp_relay **list);

/* Ends every keeper in *list (the allocations close). */
void ntcp_relay_close_all(ntcp_relay **list);

/* ---- UDP (relay_udp.c) ----
 * For ntcp_udp_punch() the relay is a bridge at the target: a UDP
 * allocation (over the TCP control connection), a permission for the
 * requester's IP, and two UDP sockets on 127.0.0.1, the application's (A)
 * and the bridge's (L): a datagram the peer sends to the relayed address
 * arrives on A from L, and one written on A to L leaves the relay towards
 * the peer. The requester needs nothing of its own: its socket talks to the
 * relayed address directly. On both ends the UDP punch engine then runs
 * its usual proof and PICK over that path, with a plan of one target (the
 * relayed address, or L), so the descriptor handed over is an ordinary
 * connected UDP socket (keepalives and all). */

typedef struct ntcp_relay_bridge ntcp_relay_bridge;

/* Starts the allocation; send_addr(send_user, relayed or NULL, why) is
 * called once, when the bridge is ready or has failed. Returns 0,
 * NTCP_EINVAL or NTCP_ENOMEM. */
int ntcp_relay_bridge_start(uv_loop_t *loop, const ntcp_relay_config *cfg, ntcp_relay_bridge **out);

/* 1 ready (A and L exist), 0 still allocating, or the error (why in *why). */
int ntcp_relay_bridge_state(const ntcp_relay_bridge *b, const char **why);

/* Takes A (the caller's from now on: the punch engine's, then the
 * application's) and gives L's address, the peer's stand-in. Once only;
 * returns A or a negative error. */
int ntcp_relay_bridge_take(ntcp_relay_bridge *b, struct sockaddr_storage *peer_standin);

/* The relayed address and the TURN server (for reports). */
const struct sockaddr_storage *ntcp_relay_bridge_relayed(const ntcp_relay_bridge *b);
const struct sockaddr_storage *ntcp_relay_bridge_server(const ntcp_relay_bridge *b);

/* Keeps the bridge for app_fd (A, now the application's) in *list, the
 * caller's list head, until app_fd is gone (checked every 2 s) or
 * ntcp_relay_bridge_close_all(). */
void ntcp_relay_bridge_keep(ntcp_relay_bridge *b, int app_fd, ntcp_relay_bridge **list);
void ntcp_relay_bridge_close_all(ntcp_relay_bridge **list);

/* Ends it (A too, unless taken). */
void ntcp_relay_bridge_close(ntcp_relay_bridge *b);

#endif /* NTCP_RELAY_H */
