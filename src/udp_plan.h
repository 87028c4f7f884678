/*
 * udp_plan.h: the UDP hole-punching planner (issue 7). A pure function, like
 * plan_make() for TCP: the two ends' UDP behaviours (discovery, through the
 * profile blob) and the addresses from the CONNECT-GO in, what this end sends
 * where out. Both ends run it with the roles swapped and get complementary
 * plans. docs/udp.md has the table; tests/plan/test_udp_plan.c checks every
 * pair of lab personalities.
 *
 * Unlike TCP there is no handshake to race: a datagram that arrives before
 * the receiver's NAT has opened is dropped and the next round of probes gets
 * through. So the only question per pair is where each end aims:
 *   - a known mapping (no NAT, endpoint-independent): its PUBLIC-UDP;
 *   - a sequential mapping: a window of predicted ports, base PUBLIC-UDP;
 *   - a random mapping: nowhere; it can only be met by an end whose filter
 *     lets in any port of an address it has sent to, or by a birthday
 *     search (many mappings on the random side, many random ports probed by
 *     the other side) when the other side's mapping is known.
 */
#ifndef NTCP_UDP_PLAN_H
#define NTCP_UDP_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ntcp.h"
#include "birthday.h"
#include "plan.h"

/* Methods; stable values (logs, metrics). */
typedef enum udp_method {
    UDP_METHOD_NONE = 0,
    UDP_METHOD_SAME_LAN, /* to a private address of the peer (one NAT, or one LAN) */
    UDP_METHOD_DIRECT,   /* the peer's filter lets our datagrams in: no hole needed there */
    UDP_METHOD_PUNCH,    /* both known mappings, both filters opened by our own probes */
    UDP_METHOD_PREDICT,  /* a sequential end's next ports, a window of them */
    UDP_METHOD_BIRTHDAY, /* many mappings on the random end x many random ports probed */
} udp_method_t;

/* "same-lan", "direct", "punch", "predict", "birthday", "none". */
const char *udp_method_name(udp_method_t m);

#define UDP_PLAN_DEFAULT_WINDOW 8
#define UDP_PLAN_MAX_WINDOW 32
/* Birthday search defaults (docs/udp.md): those of the TCP search
 * (birthday.h, with the chance of a miss). */
#define UDP_PLAN_BIRTHDAY_SOCKETS NTCP_BIRTHDAY_SOCKETS
#define UDP_PLAN_BIRTHDAY_PROBES NTCP_BIRTHDAY_GUESSES
#define UDP_PLAN_BIRTHDAY_PPS NTCP_BIRTHDAY_PPS
#define UDP_PLAN_MAX_BIRTHDAY_SOCKETS 512
#define UDP_PLAN_MAX_BIRTHDAY_PROBES 8192
#define UDP_PLAN_MAX_BIRTHDAY_PPS 2000

typedef struct udp_plan_end {
    /* The UDP behaviour from discovery (udp4 of the profile blob). Only the
     * classification fields are read. */
    ntcp_nat_behaviour_t udp;
    /* PUBLIC-UDP: the mapping of the end's broker keepalive socket, the
     * socket the punch sends from. Required for the peer; ours may be
     * unknown (family 0: the broker's answer to our keepalive was lost),
     * which only turns off same-LAN detection. */
    struct sockaddr_storage public_udp;
    /* Private addresses reported to the broker. Their port is the TCP
     * session's: the UDP socket's local port is not reported, so same-LAN
     * probes go to the private IP at the PUBLIC-UDP port (what a
     * port-preserving NAT keeps) and at that port. */
    struct sockaddr_storage priv[PLAN_MAX_PRIVATE];
    size_t npriv;
    uint32_t rtt_ms; /* 0 = unknown */
} udp_plan_end;

typedef struct udp_plan_input {
    udp_plan_end me, peer;
    bool initiator;            /* the requester */
    unsigned window;           /* 0: UDP_PLAN_DEFAULT_WINDOW */
    unsigned birthday_sockets; /* 0: UDP_PLAN_BIRTHDAY_SOCKETS */
    unsigned birthday_probes;  /* 0: UDP_PLAN_BIRTHDAY_PROBES */
    unsigned birthday_pps;     /* 0: UDP_PLAN_BIRTHDAY_PPS */
} udp_plan_input;

void udp_plan_input_init(udp_plan_input *in);

/* What a target is, for the method of a path that answers. */
enum { UDP_T_PRIVATE = 1, UDP_T_PUBLIC, UDP_T_PREDICTED };

#define UDP_PLAN_MAX_TARGETS 12

typedef struct udp_plan {
    int status;          /* 0, or NTCP_EUNREACHABLE (reason says why) */
    udp_method_t method; /* the method of the public paths (NONE: same-LAN only) */
    /* Local sockets: 1 (the session's keepalive socket), or the birthday
     * socket count on the random side of a birthday search (socket 0 is
     * still the session's; each sends to every target). */
    unsigned nsockets;
    /* Targets of every socket, sent in this order in the first round (the
     * order in which a sequential NAT hands out the ports). A run is
     * count ports, step apart. */
    size_t ntargets;
    plan_ports t[UDP_PLAN_MAX_TARGETS];
    uint8_t kind[UDP_PLAN_MAX_TARGETS]; /* UDP_T_* */
    /* Birthday, the other side: probe this many distinct random ports of
     * random_ip (port ignored) in [1024, 65535], pps per second. */
    unsigned random_probes;
    unsigned random_pps;
    struct sockaddr_storage random_ip;
    uint32_t rtt_ms;      /* the round trip the timings come from */
    uint32_t interval_ms; /* probe rounds repeat this often */
    uint32_t deadline_ms; /* from the common start: the punch has failed after it */
    char reason[192];     /* impossible: why; otherwise a one-line summary */
} udp_plan;

/* Makes this end's plan. Returns 0, NTCP_EUNREACHABLE (out->status too,
 * with out->reason), or NTCP_EINVAL (NULL, or the peer's PUBLIC-UDP
 * missing: its keepalive never reached the broker). Pure. */
int udp_plan_make(const udp_plan_input *in, udp_plan *out);

/* One JSON object (docs/udp.md), snprintf rules. */
size_t udp_plan_format(const udp_plan *p, char *buf, size_t len);

#endif /* NTCP_UDP_PLAN_H */
