/*
 * plan.h: the traversal method planner (issue 6, "Choosing") and the NAT
 * profile blob that peers exchange through the broker. Pure functions: no
 * I/O, no clock, no allocation. docs/traversal.md gives the method table and
 * the rules; tests/plan/ checks them for every pair of profiles.
 *
 * Both ends run plan_make() with the same two ends and the roles swapped
 * (plan_input.initiator), and get complementary plans: attempt `id` on one
 * end pairs with attempt `id` on the other (one connects where the other
 * listens, both open simultaneously, ...). Times are offsets in ms from the
 * common start time the broker gave both ends.
 */
#ifndef NTCP_PLAN_H
#define NTCP_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ntcp.h"

/* Traversal methods. Values are stable (they travel in logs and metrics);
 * new ones are appended. The lead may move this enum and ntcp_method_name()
 * to include/ntcp.h once ntcp_conn_info reports the winning method. */
typedef enum ntcp_method {
    NTCP_METHOD_NONE = 0,
    NTCP_METHOD_SAME_LAN,   /* to a private address, or the public one through a hairpinning NAT */
    NTCP_METHOD_DIRECT,     /* the initiator connects to the reachable target */
    NTCP_METHOD_REVERSAL,   /* the target connects to the reachable initiator */
    NTCP_METHOD_STUNT2,     /* low-TTL SYN then listen on one end; the other connects */
    NTCP_METHOD_P2PNAT,     /* simultaneous open from ports whose mapping is known, repeated */
    NTCP_METHOD_PREDICT,    /* STUNT#2 / simultaneous open towards a window of predicted ports */
    NTCP_METHOD_STUNT1,     /* low-TTL SYNs, ISNs captured, SYN-ACKs spoofed by the broker */
    NTCP_METHOD_NATBLASTER, /* low-TTL SYNs, ISNs captured, each end sends the SYN-ACK */
    NTCP_METHOD_BIRTHDAY,   /* many mappings on a random-port NAT x many random guesses */
    NTCP_METHOD_COUNT
} ntcp_method_t;

/* "same-lan", "direct", "reversal", "stunt2", "p2pnat", "predict", "stunt1",
 * "natblaster", "birthday", "none". Static, never NULL. */
const char *ntcp_method_name(ntcp_method_t m);

/* A set of methods (the configuration's `methods`): bit 1u << m for each
 * method m allowed; 0 means all of them. */
#define PLAN_METHOD_BIT(m) (1u << (unsigned)(m))

/* Parses a list of method names as ntcp_method_name() gives them,
 * separated by commas and/or blanks ("stunt2, p2pnat"), into *mask. NULL
 * or an empty list: 0 (all). Returns 0, or NTCP_EINVAL for an unknown name
 * ("none" included). Pure. */
int plan_methods_parse(const char *list, unsigned *mask);

/* ---- Input ---- */

#define PLAN_MAX_PRIVATE 8
#define PLAN_DEFAULT_WINDOW 8
#define PLAN_MAX_WINDOW 32

/* What the planner knows about one end. Both ends must be described with the
 * same values on both sides (they come from the broker and the profile
 * blob), or the plans will not be complementary. */
typedef struct plan_end {
    /* The TCP behaviour from discovery (the family of public_addr). Only the
     * classification fields are read (reach, mapping, filtering, ports,
     * delta, hairpin, syn). */
    ntcp_nat_behaviour_t tcp;
    /* The public TCP address the broker saw for this end. For an
     * endpoint-independent mapping it is the external address of the
     * session's local port, which keeps it for any connection made from that
     * port (SO_REUSEPORT). For a sequential mapping it is the base of the
     * prediction: it should be the newest mapping known (the engine's fresh
     * connection at connect time), since every mapping made since moves the
     * ports. */
    struct sockaddr_storage public_addr;
    /* Private addresses as reported to the broker, with the port this end
     * listens on (its session's local port). */
    struct sockaddr_storage priv[PLAN_MAX_PRIVATE];
    size_t npriv;
    /* May use raw sockets / pcap. The engine reports privileged AND built
     * with raw support (the profile blob's flag), so both ends see the same. */
    bool raw;
    uint32_t rtt_ms;  /* its round trip to the broker or STUN server, 0 = unknown */
    uint8_t nat_hops; /* hops until its packets have left its outermost NAT, 0 = unknown */
    /* With sequential ports: the newest external port seen (the profile
     * blob's, sampled after this end's last connection), the base of the
     * prediction instead of public_addr's port. 0: public_addr's. */
    uint16_t seq_port;
} plan_end;

typedef struct plan_input {
    plan_end me, peer;
    bool initiator;     /* from the broker: exactly one end is the initiator */
    bool raw_enabled;   /* build option: STUNT#1 and NATBlaster may be planned */
    bool broker_spoofs; /* STUNT#1 also needs a broker that sends spoofed SYN-ACKs */
    unsigned window;    /* predicted ports tried together; 0 = PLAN_DEFAULT_WINDOW */
} plan_input;

/* Zeroes in: unknown everything, no addresses. */
void plan_input_init(plan_input *in);

/* ---- Output ---- */

/* What this end does in one attempt. */
typedef enum plan_role {
    PLAN_CONNECT = 1, /* connect() to each target; with a fixed local port also listen
                       * on it, so that a SYN that overtakes ours is still accepted */
    PLAN_ACCEPT,      /* listen on the local port; the peer connects */
    PLAN_SIMOPEN,     /* connect() to the targets and listen, both ends at once,
                       * re-issued every repeat_ms up to repeats times */
    PLAN_PUNCH,       /* send a SYN with IP TTL `ttl` to each target (it dies before the
                       * peer), drop that socket, listen on the same local port */
    PLAN_RAW_SYN,     /* STUNT#1 / NATBlaster: low-TTL SYN, capture its ISN, give it to
                       * the peer (NATBlaster: then send the SYN-ACK with a raw socket) */
    PLAN_SPRAY,       /* birthday, the random end: `sockets` sockets from fresh ports,
                       * each a low-TTL SYN to the target (one mapping each), kept in
                       * SYN-SENT for the peer's guess to meet */
    PLAN_GUESS,       /* birthday, the known end: from the session port, SYNs to
                       * `guesses` distinct random ports of the target's address,
                       * `pps` a second, each kept `guess_ms` */
} plan_role_t;

/* Which local port the attempt uses. */
typedef enum plan_local {
    PLAN_LOCAL_ANY = 1, /* any ephemeral port: its mapping does not matter */
    PLAN_LOCAL_SESSION, /* the broker session's local port (SO_REUSEPORT): its
                         * external address is public_addr */
    PLAN_LOCAL_FRESH,   /* a new port of its own; its new mappings are predicted */
} plan_local_t;

/* TTL of a PUNCH / RAW_SYN: this value means "learn it" (raise it from 1
 * until the SYN leaves our NAT: the engine's job). */
#define PLAN_TTL_LEARN 0

/* A run of ports: port, port+step, ... count of them (count 0 = none). */
typedef struct plan_ports {
    struct sockaddr_storage addr; /* first address; family 0 = unknown */
    uint16_t count;
    int32_t step;
} plan_ports;

typedef struct plan_attempt {
    unsigned id; /* the same on both ends for the two halves of one attempt */
    ntcp_method_t method;
    plan_role_t role;
    plan_local_t local;
    /* Where the SYNs go (CONNECT, SIMOPEN, PUNCH, RAW_SYN), in this order;
     * for ACCEPT the peer's expected IP (port 0 = any port). */
    plan_ports target;
    /* Where the peer sees this end for this attempt: what the other half
     * targets. Family 0: unknown (the peer must not care, as with ANY). */
    plan_ports ext;
    uint8_t ttl;          /* PUNCH / RAW_SYN; PLAN_TTL_LEARN = learn */
    /* PUNCH: the peer connects from any port (this end filters by address
     * only), so a listener must take its SYN; otherwise the peer's SYN
     * comes on the punched 4-tuple and the punch socket itself answers it. */
    bool peer_any_port;
    /* PUNCH on the punched 4-tuple (not peer_any_port): from this offset the
     * low-TTL punch socket is replaced by one connecting with the normal TTL,
     * sent when the peer's own SYN has opened its NAT (the peer half's start).
     * A socket whose low-TTL SYN still awaits its ICMP "time exceeded" is
     * killed by it, even after the peer's SYN has met it (Linux ends a
     * connection in SYN-SENT or SYN-RECV on any ICMP error): the peer's SYN
     * must find a socket whose own SYN draws no error. 0: never. */
    uint32_t hold_ms;
    uint32_t start_ms;    /* offset from the common start time */
    uint32_t stop_ms;     /* give up (close its sockets) at this offset */
    uint32_t repeat_ms;   /* SIMOPEN / CONNECT: re-issue interval, 0 = once */
    uint16_t repeats;     /* how many times in all (1 = once) */
    /* Birthday (docs/traversal.md): SPRAY's sockets (mappings); GUESS's
     * ports tried, their rate, and how long each guess waits for an answer. */
    uint16_t sockets, guesses, pps;
    uint32_t guess_ms;
    char why[128];        /* why it is there, for logs */
} plan_attempt;

#define PLAN_MAX_ATTEMPTS 16

typedef struct plan {
    int status;           /* 0, or NTCP_EUNREACHABLE: no method can work */
    size_t n;
    plan_attempt a[PLAN_MAX_ATTEMPTS]; /* ordered by start_ms, then id */
    uint32_t rtt_ms;      /* the round trip the timings were computed from */
    uint32_t deadline_ms; /* the last stop_ms: the plan has failed after it */
    char reason[192];     /* impossible: why; otherwise a one-line summary */
} plan;

/* Makes this end's plan. Returns 0, NTCP_EUNREACHABLE (out->status too, with
 * out->reason saying why, e.g. both ends behind symmetric NATs with random
 * ports) or NTCP_EINVAL (NULL, or a public address missing). Pure: the same
 * input gives the same plan. */
int plan_make(const plan_input *in, plan *out);

/* Keeps only the attempts of p whose method mask allows (0: all), in
 * order, their timings unchanged. A possible plan left with none becomes
 * impossible (NTCP_EUNREACHABLE), its reason naming the methods it had.
 * Pure. */
void plan_keep_methods(plan *p, unsigned mask);

/* Renders p as text (one line per attempt) or, with json, one JSON object
 * (docs/traversal.md). snprintf rules: returns the length the whole text
 * needs; writes at most len bytes, always NUL-terminated when len > 0. */
size_t plan_format(const plan *p, bool json, char *buf, size_t len);

/* ---- The profile blob (BROKER_ATTR_PROFILE) ----
 * A compact, versioned encoding of what discovery found, sent to the peer
 * through the broker. Layout in docs/traversal.md; at most PLAN_BLOB_MAX. */

#define PLAN_BLOB_MAX 64
#define PLAN_BLOB_VERSION 1

enum { PLAN_TCP4 = 0, PLAN_UDP4, PLAN_TCP6, PLAN_UDP6, PLAN_NBEHAVIOUR };

typedef struct plan_profile {
    bool has[PLAN_NBEHAVIOUR];
    /* tcp4, udp4, tcp6, udp6. Only the classification fields and lifetime_s
     * travel: local, mapped and why are left empty by decode. */
    ntcp_nat_behaviour_t b[PLAN_NBEHAVIOUR];
    bool raw;
    uint32_t rtt_ms;  /* sent as 16 bits, capped at 65535 */
    uint8_t nat_hops;
    /* The newest external port seen for each behaviour (0: none), sent with
     * sequential ports: the base of the peer's prediction (plan_end.seq_port). */
    uint16_t seq_port[PLAN_NBEHAVIOUR];
} plan_profile;

/* Fills p from a discovery result (has[] from what was probed). */
void plan_profile_from_nat(plan_profile *p, const ntcp_nat_profile_t *np, bool raw,
                           uint8_t nat_hops);

/* Encodes p into buf. Returns the length (<= PLAN_BLOB_MAX), NTCP_ENOSPC
 * when len is too small, NTCP_ERANGE when a field is out of range (what
 * plan_profile_decode() would refuse as NTCP_ERANGE). */
int plan_profile_encode(const plan_profile *p, uint8_t *buf, size_t len);

/* Decodes a blob from the network into out (zeroed first). Returns 0, or
 * NTCP_ETRUNCATED, NTCP_EMALFORMED (bad magic, trailing bytes, duplicate
 * record), NTCP_EPROTO (unknown major version), NTCP_ERANGE (a value out of
 * range), NTCP_EINVAL (NULL). Never reads outside buf[0..len). */
int plan_profile_decode(const uint8_t *buf, size_t len, plan_profile *out);

#endif /* NTCP_PLAN_H */
