/*
 * raw_attempt.h: one STUNT#1 or NATBlaster attempt (PLAN_RAW_SYN), run by
 * the engine (engine.c hands such attempts here). docs/traversal.md, "The
 * raw methods", says why it is done this way:
 *
 *   1. A socket bound to the session port connect()s to the peer's external
 *      address with the plan's low TTL: its SYN opens our NAT's mapping and
 *      dies before the peer's NAT. The TTL stays low until the socket
 *      connects, so the kernel's retransmissions die too. An AF_PACKET
 *      capture reads that SYN's ISN (raw.h).
 *   2. A router's "time exceeded" ends a socket in SYN-SENT on Linux; the
 *      SYN is then sent again from a new socket (routers rate-limit those
 *      errors, so one survives). Once a socket has lived RAW_STABLE_MS, its
 *      ISN goes to the peer through the broker (send_isn; for STUNT#1 with
 *      the request that the broker spoof).
 *   3. NATBlaster: with both ISNs, this end sends the SYN-ACK the peer's
 *      socket waits for: from our NAT's external address and port (spoofed:
 *      our NAT lets it out untranslated, see the docs) to the peer's, seq =
 *      our ISN, ack = the peer's ISN + 1; again every RAW_RESEND_MS until
 *      connected. STUNT#1: the broker sends it.
 *   4. The peer's SYN-ACK (from it or the broker) completes our socket's
 *      handshake: the normal TTL comes back and the fd goes to the engine.
 *
 * Internal to libntcp.
 */
#ifndef NTCP_RAW_ATTEMPT_H
#define NTCP_RAW_ATTEMPT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

typedef struct raw_attempt raw_attempt;

typedef struct raw_attempt_cfg {
    uv_loop_t *loop;
    bool natblaster;                    /* else STUNT#1: the broker spoofs */
    uint16_t port;                      /* the local port (the session's) */
    struct sockaddr_storage local_addr; /* family 0: the wildcard */
    struct sockaddr_storage target;     /* the peer's external address (IPv4) */
    struct sockaddr_storage ext;        /* ours, as the peer's NAT sees it */
    uint8_t ttl;                        /* the low TTL */
    /* Our ISN for the peer (through the broker); again after each new SYN. */
    void (*send_isn)(void *user, const struct sockaddr_storage *ext, uint32_t isn, bool spoof);
    /* The connected socket (the callee's). No callback follows. */
    void (*connected)(void *user, int fd);
    /* Gave up (why is static text, sys an errno or 0). No callback follows. */
    void (*ended)(void *user, int err, int sys, const char *why);
    void *user;
} raw_attempt_cfg;

/* Starts at once. Returns 0, or NTCP_EUNREACHABLE (no raw sockets: *why
 * says why, static text), NTCP_EINVAL (not IPv4, no port), NTCP_ENOMEM; the
 * callbacks run only after a 0 return, never from inside this call. */
int raw_attempt_start(const raw_attempt_cfg *cfg, raw_attempt **out, const char **why);

/* The peer's ISN (from its RAW-ISN message). */
void raw_attempt_peer_isn(raw_attempt *a, uint32_t isn);

/* Whether a SYN of ours was captured, and the last TTL used. */
bool raw_attempt_have_isn(const raw_attempt *a, uint32_t *isn);

/* Stops and frees (once libuv let go of its handles); no callback follows. */
void raw_attempt_stop(raw_attempt *a);

#endif /* NTCP_RAW_ATTEMPT_H */
