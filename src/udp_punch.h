/*
 * udp_punch.h: the UDP hole-punching engine (issue 7), the same shape as the
 * TCP attempt engine (engine.h). It runs this end's udp_plan on the caller's
 * libuv loop from the common start time: probes from the broker keepalive
 * socket (ntcp_session_share_udp()) to the peer's private addresses, its
 * PUBLIC-UDP mapping, a window of predicted ports, or random ports (birthday);
 * every path on which the peer answers gets the key proof of docs/verify.md,
 * one verify message per datagram, retransmitted on loss; the requester picks
 * one verified path (PICK) and the target confirms it; the socket of that
 * path is connect()ed to the peer and handed over. Wire format: docs/udp.md
 * and docs/verify.md ("Over UDP").
 *
 * Also here: the datagram codec (pure, fuzzed: tests/fuzz/fuzz_udp_dgram.c)
 * and the keepalive that holds the punched path open afterwards.
 *
 * Internal to libntcp.
 */
#ifndef NTCP_UDP_PUNCH_H
#define NTCP_UDP_PUNCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "udp_plan.h"
#include "verify.h"

/* ---- Datagram codec (pure) ----
 * Every datagram of a punch is a STUN indication with the magic cookie:
 *   PROBE 0x0E23  SESSION-ID, ROLE     "here I am": opens NAT holes; whoever
 *                                      receives one starts the proof on that path
 *   HELLO, PROOF, REFUSE (0x0E20-22)   docs/verify.md, one per datagram
 *   PICK  0x0E24  SESSION-ID, ROLE     the requester's choice of a verified
 *                                      path (ROLE 0), and the target's
 *                                      confirmation on it (ROLE 1)
 */
#define UDP_PUNCH_PROBE 0x0E23
#define UDP_PUNCH_PICK 0x0E24
#define UDP_PUNCH_PROBE_SIZE 48 /* 20 + (4 + 16) + (4 + 4) */

enum { UDP_DG_PROBE = 1, UDP_DG_PICK, UDP_DG_VERIFY };

typedef struct udp_dgram {
    int kind;                   /* UDP_DG_* */
    uint32_t role;              /* PROBE, PICK: the sender's */
    const uint8_t *session_id;  /* PROBE, PICK (into the buffer) */
    ntcp_verify_msg v;          /* VERIFY */
} udp_dgram;

/* Parses one datagram. Returns 0, or a negative NTCP_E* (not ours: the
 * caller drops it). Never reads outside buf[0..len). */
int udp_dgram_parse(const uint8_t *buf, size_t len, udp_dgram *out);
/* Builds a PROBE or PICK (method) into buf; returns its length or NTCP_ENOSPC. */
int udp_dgram_build(uint8_t *buf, size_t cap, uint16_t method, uint32_t role,
                    const uint8_t session_id[VERIFY_SESSION_ID_SIZE]);

/* ---- The engine ---- */

typedef struct udp_puncher udp_puncher;

/* The punches that share one socket, the broker session's (shared mode,
 * ntcp_session_share_udp()): whoever reads that socket passes each
 * datagram to ntcp_udp_hub_input(), which hands it to its punch by the
 * SESSION-ID it carries, or (PROOF, REFUSE) by the path it came on. Zero
 * it to start; it must outlive its punches. Loop thread only. */
typedef struct udp_punch_hub {
    udp_puncher *head;
    unsigned dropped; /* datagrams no punch of the hub claimed */
} udp_punch_hub;

/* One datagram read from the shared socket, len bytes from from (len over
 * VERIFY_MAX_MESSAGE: truncated, dropped). */
void ntcp_udp_hub_input(udp_punch_hub *h, const struct sockaddr_storage *from,
                        const uint8_t *buf, size_t len);

#define UDP_PUNCH_MAX_PATHS 16

typedef struct ntcp_udp_punch_result {
    /* 0: fd is a verified, connected UDP socket. Otherwise:
     *   NTCP_EUNREACHABLE  the plan is impossible (reason says why);
     *   NTCP_ETIMEDOUT     the deadline passed without a verified path
     *                      (reason: whether any datagram of the peer came);
     *   NTCP_EINTEGRITY    datagrams came, but every proof failed;
     *   NTCP_ECLOSED       ntcp_udp_punch_cancel();
     *   NTCP_ESYS          a socket call failed. */
    int err;
    int fd;                        /* on success: the caller's, non-blocking, connected */
    udp_method_t method;           /* of the winning path */
    struct sockaddr_storage local; /* its local address */
    struct sockaddr_storage remote;/* the peer as seen from here */
    uint8_t binding[VERIFY_BINDING_SIZE];
    /* Offsets in ms from the common start; -1 when it did not happen. */
    int64_t reached_ms;   /* first datagram of the session from the peer */
    int64_t verified_ms;  /* the winning path's proof done */
    uint64_t elapsed_ms;  /* from ntcp_udp_punch_start() to the result */
    unsigned probes;      /* probes sent */
    unsigned received;    /* datagrams of this session received */
    unsigned dropped;     /* datagrams dropped (strangers, garbage, replays) */
    unsigned paths;       /* paths on which a proof started */
    unsigned sockets;     /* local sockets used */
    char reason[192];     /* one line, always set */
} ntcp_udp_punch_result;

/* r is valid during the call only. The engine frees itself after the
 * callback once its handles are closed (the loop must keep running). */
typedef void (*ntcp_udp_punch_cb)(udp_puncher *p, const ntcp_udp_punch_result *r, void *user);

typedef struct ntcp_udp_punch_config {
    const udp_plan *plan; /* copied */
    /* The socket the broker saw: the engine's from a successful start
     * (closed at the end). Without a hub the engine reads it and hands it
     * back in r->fd when its path wins. With a hub it is a duplicate of
     * the session's socket (ntcp_session_share_udp()), which the session
     * reads: the engine only sends from it and gets its datagrams through
     * the hub, and the path it chooses gets a socket of its own (the same
     * local address and port, SO_REUSEPORT, connected to the peer), which
     * is the one handed back. */
    int fd;
    udp_punch_hub *hub;
    /* The common start time on the loop's clock: GO receipt + start_delay_ms. */
    uint64_t start_at;
    /* The key proof, as for TCP (ntcp_verify_params_from_go()); key borrowed,
     * names copied. timeout_ms is the time one path may take once the peer
     * answered on it (0: VERIFY_DEFAULT_TIMEOUT_MS). */
    ntcp_verify_params verify;
    /* Extra time after the plan's deadline for a proof under way; 0 = 2 s. */
    uint32_t grace_ms;
} ntcp_udp_punch_config;

/* Starts the punch. The callback runs exactly once, from the loop, never
 * from inside this call (also for an impossible plan). Returns 0 (cfg->fd is
 * the engine's), or NTCP_EINVAL / NTCP_ENOMEM with no callback and cfg->fd
 * still the caller's. */
int ntcp_udp_punch_start(uv_loop_t *loop, const ntcp_udp_punch_config *cfg, ntcp_udp_punch_cb cb,
                         void *user, udp_puncher **out);

/* Stops: the callback follows with NTCP_ECLOSED. Not after the callback. */
void ntcp_udp_punch_cancel(udp_puncher *p);

/* One JSON object summarising r, snprintf rules. */
size_t ntcp_udp_punch_result_json(const ntcp_udp_punch_result *r, char *buf, size_t len);

/* ---- Keepalive on the punched path ----
 * A zero-length datagram on the connected socket every interval: it keeps
 * both NATs' mappings and filter state alive. The application reads it as a
 * datagram of length 0 (recv() returns 0), which it must ignore; ntcp's own
 * readers (ntcp connect --udp) drop it. */

typedef struct ntcp_udp_keepalive ntcp_udp_keepalive;

/* The interval from this end's UDP mapping lifetime (discovery's
 * lifetime_s, 0 = not measured): half of it, between 1 s and 60 s; 15 s
 * when unknown (RFC 8445 section 11's 15 s for unknown NATs). */
uint32_t ntcp_udp_keepalive_interval_ms(int lifetime_s);

/* Starts keepalives on fd (a connected UDP socket) on loop. The keepalive
 * sends from its own duplicate of fd, so a descriptor number the application
 * closed and the kernel reused is never written to. Before each datagram it
 * checks that fd still names the same socket (fstat: device and inode): once
 * the application has closed it, the keepalive ends and closes its
 * duplicate, so the socket and its NAT mapping go (ntcp_udp_keepalive_ended()
 * says so; ntcp_udp_keepalive_stop() is still needed to free it). First
 * datagram after one interval.
 * Returns 0, NTCP_EINVAL, NTCP_ENOMEM or NTCP_ESYS. */
int ntcp_udp_keepalive_start(uv_loop_t *loop, int fd, uint32_t interval_ms,
                             ntcp_udp_keepalive **out);
/* How many keepalives went out (tests). */
unsigned ntcp_udp_keepalive_count(const ntcp_udp_keepalive *k);
/* The path's local and remote addresses while the application still has
 * its descriptor open (checked now, as before each keepalive: a closed one
 * ends the keepalive at once, releasing the socket). False once ended. */
bool ntcp_udp_keepalive_path(ntcp_udp_keepalive *k, struct sockaddr_storage *local,
                             struct sockaddr_storage *remote);
/* True once the keepalive saw the application's descriptor closed. */
bool ntcp_udp_keepalive_ended(const ntcp_udp_keepalive *k);
/* Stops and frees it (after its timer closed: the loop must run), closing
 * its duplicate. Call on the loop's thread. */
void ntcp_udp_keepalive_stop(ntcp_udp_keepalive *k);

#endif /* NTCP_UDP_PUNCH_H */
