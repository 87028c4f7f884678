/*
 * engine.h: the attempt engine (issue 6, "Attempt"). It runs this end's plan
 * (plan_make()) on the caller's libuv loop: each attempt at its offset from
 * the common start time, its sockets bound as the plan says, the first TCP
 * connection from the peer handed to the key proof (verify.h); the first
 * verified connection wins and every other socket is closed at once.
 *
 * Sockets are plain non-blocking descriptors watched with uv_poll (libuv's
 * uv_tcp cannot set IP_TTL before connect() or bind with SO_REUSEPORT).
 * Every attempt socket bound to a fixed port sets SO_REUSEADDR and
 * SO_REUSEPORT, so several attempts (and the broker session, when it sets
 * them too) share the port.
 *
 * How roles are run (docs/traversal.md has the plan side):
 *   CONNECT / SIMOPEN  connect() to each target of the window, re-issued
 *       every repeat_ms up to repeats; with a fixed local port (SESSION,
 *       FRESH) also a listener on it. A connect from the session port that
 *       is refused (RST, ICMP) is issued again at once, so that a socket in
 *       SYN-SENT, not the listener, meets the peer's SYN (see PUNCH); from
 *       an ANY port 50 ms (or one RTT) later; from a FRESH port never (each
 *       new SYN after a reset is a new mapping that moves the prediction).
 *   ACCEPT  a listener; only connections from the target's IP are taken.
 *   PUNCH   a listener, and per target a socket that sends its SYN with the
 *       low TTL, then gets the normal TTL back and stays in SYN-SENT: the
 *       peer's SYN meets it (a simultaneous open) and its SYN-ACK carries
 *       the ISN the NAT saw. A listener's SYN-ACK would carry another one,
 *       which a NAT tracking TCP windows (Linux conntrack) marks invalid.
 *       Punched again every 800 ms (before the 1 s SYN retransmission at
 *       the normal TTL could reach the peer's NAT), and 10 ms after an ICMP
 *       error ended the socket (routers rate-limit those, so one survives).
 *       The TTL is the plan's (hops to leave our NAT(s) + 1, when discovery
 *       measured them) or, for PLAN_TTL_LEARN, starts at learn_ttl; either
 *       way it is raised while the router that answers "time exceeded" is
 *       still inside our own site (private, shared or on-link address).
 *   RAW_SYN  STUNT#1 / NATBlaster, run by raw_attempt.c (its header says
 *       how): a low-TTL SYN from the session port, its ISN captured and
 *       sent to the peer through raw_send_isn, the SYN-ACK crafted by this
 *       end (NATBlaster) or spoofed by the broker (STUNT#1). Needs the
 *       NTCP_RAW build option and CAP_NET_RAW; otherwise it fails at its
 *       start with the reason.
 *
 * Choosing one connection. Two attempts may both connect (a window of
 * predicted ports, two methods meeting), and each end may verify a
 * different one first. The requester decides: right after a proof succeeds
 * on a connection, and if it has no winner yet, it sends one byte, 0x53
 * ('S'), on it and keeps it; it closes every other. The target keeps the
 * verified connection that byte arrives on (it is consumed: the stream
 * handed over starts after it) and drops a verified connection that
 * closes instead. This costs the target half a round trip and nothing to
 * the requester. (docs/verify.md should say it: it is part of the wire
 * protocol on the punched socket.)
 *
 * Internal to libntcp.
 */
#ifndef NTCP_ENGINE_H
#define NTCP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

#include "plan.h"
#include "portmux.h"
#include "verify.h"

/* What happened to one attempt (stable values: logs, metrics). */
typedef enum ntcp_attempt_outcome {
    NTCP_ATTEMPT_NOT_STARTED = 0, /* the engine ended before its start time */
    NTCP_ATTEMPT_RUNNING,         /* started, nothing conclusive yet (only while running) */
    NTCP_ATTEMPT_WON,             /* its connection was verified and handed over */
    NTCP_ATTEMPT_CONNECTED,       /* it connected, but another connection won first */
    NTCP_ATTEMPT_REFUSED,         /* every SYN was answered by an RST (or ICMP) */
    NTCP_ATTEMPT_TIMED_OUT,       /* its stop time came without a connection */
    NTCP_ATTEMPT_VERIFY_FAILED,   /* it connected, the key proof failed */
    NTCP_ATTEMPT_FAILED,          /* a local error or unsupported (see why) */
    NTCP_ATTEMPT_CANCELLED,       /* closed when another attempt won */
} ntcp_attempt_outcome_t;

/* "not-started", "running", "won", "connected", "refused", "timed-out",
 * "verify-failed", "failed", "cancelled". Static, never NULL. */
const char *ntcp_attempt_outcome_name(ntcp_attempt_outcome_t o);

/* "connect", "accept", "simopen", "punch", "raw-syn", "spray", "guess".
 * Static, never NULL. */
const char *ntcp_engine_role_name(plan_role_t r);

typedef struct ntcp_attempt_report {
    unsigned id;
    ntcp_method_t method;
    plan_role_t role;
    ntcp_attempt_outcome_t outcome;
    int err;         /* NTCP_E* of a failure, 0 otherwise */
    int sys_errno;   /* the last socket error seen (ECONNREFUSED, ...), 0 when none */
    const char *why; /* static text, "" when none */
    /* Offsets in ms from the common start time; -1 when it did not happen. */
    int64_t started_ms, connected_ms, ended_ms;
    unsigned syns;        /* connect() calls made (SYNs sent, retransmissions not counted) */
    unsigned refusals;    /* connects answered by RST / ICMP */
    unsigned connections; /* TCP connections from the peer (connected or accepted) */
} ntcp_attempt_report;

typedef struct ntcp_engine_result {
    /* 0: fd is a verified connection. Otherwise:
     *   NTCP_ETIMEDOUT     the plan's deadline passed without a verified connection;
     *   NTCP_EUNREACHABLE  the plan is impossible (reason says why), or every
     *                      attempt ended before the deadline without success;
     *   NTCP_ECLOSED       ntcp_engine_cancel();
     *   NTCP_EINTEGRITY    (only as the last proof error when all attempts ended
     *                      and at least one proof failed on an impostor). */
    int err;
    int fd;                  /* on success, the caller's (blocking mode as created: non-blocking) */
    ntcp_method_t method;    /* the winning attempt's */
    unsigned attempt_id;
    plan_role_t role;
    struct sockaddr_storage local, remote;
    uint8_t binding[VERIFY_BINDING_SIZE]; /* the proof's binding value */
    int64_t connected_ms;    /* offsets from the start time of the winner's TCP handshake */
    int64_t verified_ms;     /* and of the end of its proof */
    uint64_t elapsed_ms;     /* from ntcp_engine_start() to the result */
    /* The TTL of the last low-TTL SYN sent (0: no punch), and whether a
     * router outside this end's site answered one with "time exceeded"
     * (the SYN had left our NAT(s) and died before the peer's). */
    uint8_t punch_ttl;
    bool ttl_left_site;
    char reason[192];        /* one line, always set */
    size_t n;
    ntcp_attempt_report a[PLAN_MAX_ATTEMPTS]; /* in plan order */
} ntcp_engine_result;

typedef struct ntcp_engine ntcp_engine;

/* r is valid during the call only. The engine frees itself after the
 * callback once its handles are closed: the loop must keep running, and e
 * must not be used after the callback. */
typedef void (*ntcp_engine_cb)(ntcp_engine *e, const ntcp_engine_result *r, void *user);

typedef struct ntcp_engine_config {
    const plan *plan;       /* copied */
    /* The broker session's local port (PLAN_LOCAL_SESSION attempts bind it
     * with SO_REUSEADDR and SO_REUSEPORT: the session's socket must set both
     * before it connects, or the bind fails with EADDRINUSE). 0 = unknown:
     * SESSION attempts then fail. */
    uint16_t session_port;
    /* The local address family and, optionally, the address to bind (family
     * 0: the wildcard of the targets' family). */
    struct sockaddr_storage local_addr;
    /* The common start time, on the loop's clock (uv_now()): the time the
     * CONNECT-GO arrived plus its start_delay_ms. */
    uint64_t start_at;
    /* The key proof. key is borrowed and must outlive the engine; the names
     * are copied. timeout_ms 0: VERIFY_DEFAULT_TIMEOUT_MS. */
    ntcp_verify_params verify;
    /* Where the TTL of PUNCH attempts whose plan says PLAN_TTL_LEARN starts
     * (0 = 2: a SYN that leaves one NAT with TTL 1 opens that NAT's mapping
     * and dies at the next router). The engine raises it while routers of
     * our own site answer "time exceeded" (engine.c, punch_ttl_seen). */
    uint8_t learn_ttl;
    /* Extra time after the plan's deadline for a proof already under way;
     * 0 = the verify timeout. The engine always ends by
     * start_at + plan deadline + this. */
    uint32_t grace_ms;
    /* RAW_SYN attempts: sends our ISN and external address to the peer (the
     * broker's RAW-ISN, docs/broker-protocol.md), with spoof for STUNT#1.
     * NULL: such attempts fail. Called from the loop. */
    void (*raw_send_isn)(void *user, const struct sockaddr_storage *ext, uint32_t isn, bool spoof);
    void *raw_user;
    /* The context's shared listeners (portmux.h): with one, a listener on
     * the session port is a registration there, so that several engines
     * of a context run at once; each gets the connections whose HELLO
     * names its session. NULL: the engine opens its own listeners (one
     * engine per port at a time). Borrowed; must outlive the engine. */
    ntcp_portmux *mux;
} ntcp_engine_config;

/* Starts the engine. The callback runs exactly once, from the loop, never
 * from inside this call (also for an impossible plan: err
 * NTCP_EUNREACHABLE). *out (may be NULL) is for ntcp_engine_cancel() until
 * the callback. Returns 0, or NTCP_EINVAL / NTCP_ENOMEM with no callback. */
int ntcp_engine_start(uv_loop_t *loop, const ntcp_engine_config *cfg, ntcp_engine_cb cb,
                      void *user, ntcp_engine **out);

/* The peer's ISN from its RAW-ISN message (the latest counts): handed to
 * the RAW_SYN attempts, now and when they start. Not after the callback. */
void ntcp_engine_raw_isn(ntcp_engine *e, uint32_t isn);

/* Stops everything: the callback follows with NTCP_ECLOSED, every socket
 * closed. Not to be called after the callback. */
void ntcp_engine_cancel(ntcp_engine *e);

/* One JSON object summarising r (method, ms, attempts), snprintf rules. */
size_t ntcp_engine_result_json(const ntcp_engine_result *r, char *buf, size_t len);

#endif /* NTCP_ENGINE_H */
