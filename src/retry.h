/*
 * retry.h: what the engine does when one of its connecting sockets ends
 * before connecting (an RST, an ICMP error, a timeout): the re-punch and
 * retry rules of src/engine.c as a pure function, table-tested in
 * tests/engine/test_retry.c as the planner is (docs/traversal.md has the
 * reasons: "The hold", "Punching"). No I/O, no clock. Internal to libntcp.
 */
#ifndef NTCP_RETRY_H
#define NTCP_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "plan.h"

/* A punch's SYN ended this many times at most, plus 4 per target of its
 * window (a window's wrong ports draw an RST to every hold). */
#define RETRY_MAX_REPUNCH 24
/* Refused connects retried at once (session or fresh port), and at all. */
#define RETRY_MAX_REFUSED_NOW 32
#define RETRY_MAX_REFUSED 64

/* How a connecting socket ended. */
typedef enum retry_end {
    RETRY_END_RST = 0,        /* ECONNREFUSED with no ICMP error queued */
    RETRY_END_TIME_EXCEEDED,  /* ICMP time exceeded / ICMPv6 hop limit exceeded */
    RETRY_END_ICMP,           /* another ICMP error (port or host unreachable, ...) */
    RETRY_END_OTHER,          /* any other error (timeout, local) */
} retry_end_t;

typedef struct retry_in {
    plan_role_t role;        /* PLAN_CONNECT, PLAN_SIMOPEN, PLAN_PUNCH, ... */
    plan_local_t local;      /* where the attempt's sockets are bound */
    retry_end_t end;
    bool stopped;            /* the attempt is over */
    unsigned target;         /* which target of the window (the rules track 32) */
    /* PUNCH */
    bool was_held;           /* the socket was the hold's normal-TTL SYN */
    bool left_site;          /* its time exceeded came from outside our site */
    bool hold_due;           /* the hold time has come */
    unsigned repunches;      /* punches sent again so far */
    unsigned window;         /* targets in the window (target.count) */
    /* CONNECT / SIMOPEN / ACCEPT: refusals so far, this one counted */
    unsigned refusals;
} retry_in;

typedef enum retry_action {
    RETRY_NONE = 0,          /* nothing now (the regular re-issue or re-punch comes later) */
    RETRY_PUNCH_NOW,         /* a low-TTL punch on the same 4-tuple at once */
    RETRY_HOLD_NOW,          /* the hold: a normal-TTL SYN on the punched 4-tuple at once */
    RETRY_UNHOLD_PUNCH_NOW,  /* the hold was refused: not held any more, punch again at once */
    RETRY_SOON,              /* the same SYN again after ENGINE_REPUNCH_RETRY_MS (10 ms) */
    RETRY_CONNECT_NOW,       /* connect() again on the same 4-tuple at once */
    RETRY_AFTER_RTT,         /* connect() again after one round trip (at least 50 ms) */
} retry_action_t;

typedef struct retry_out {
    retry_action_t action;
    bool count_repunch;      /* counts towards RETRY_MAX_REPUNCH */
} retry_out;

/* The rule for one ended socket (pure). */
retry_out retry_decide(const retry_in *in);

/* "none", "punch-now", "hold-now", "unhold-punch-now", "soon", "connect-now",
 * "after-rtt". Static, never NULL. */
const char *retry_action_name(retry_action_t a);

#endif /* NTCP_RETRY_H */
