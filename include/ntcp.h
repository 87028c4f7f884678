/*
 * ntcp.h: the one public header of libntcp, NAT traversal for plain TCP.
 *
 * Conventions: every function that can fail returns a negative NTCP_E* code
 * (0 or a positive count on success); ntcp_strerror() names it. The library
 * never calls exit() and keeps no global mutable state.
 */
#ifndef NTCP_H
#define NTCP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NTCP_VERSION_MAJOR 0
#define NTCP_VERSION_MINOR 1
#define NTCP_VERSION_PATCH 0
#define NTCP_VERSION_STRING "0.1.0"

/* Error codes. Values are stable: new codes are only ever appended. */
enum {
    NTCP_OK = 0,
    NTCP_EINVAL = -1,        /* invalid argument */
    NTCP_ENOMEM = -2,        /* out of memory */
    NTCP_ENOSPC = -3,        /* caller's buffer too small (size needed reported) */
    NTCP_ETRUNCATED = -4,    /* message shorter than its header or length says */
    NTCP_EMALFORMED = -5,    /* header invalid: top bits, length not a multiple of 4 */
    NTCP_EBADATTR = -6,      /* attribute runs past the end or has an invalid value */
    NTCP_EPADDING = -7,      /* attribute padding missing or past the message */
    NTCP_EFAMILY = -8,       /* unknown address family in an address attribute */
    NTCP_EINTEGRITY = -9,    /* MESSAGE-INTEGRITY(-SHA256) does not verify */
    NTCP_EFINGERPRINT = -10, /* FINGERPRINT wrong or not the last attribute */
    NTCP_ENOTFOUND = -11,    /* the attribute or item is absent */
    NTCP_ENOTSTUN = -12,     /* not a STUN message at all */
    NTCP_ETIMEDOUT = -13,    /* no answer in time */
    NTCP_ESYS = -14,         /* a system call failed; errno says more */
    NTCP_EUNREACHABLE = -15, /* the server or peer cannot be reached */
    NTCP_ERANGE = -16,       /* a value is outside its allowed range */
    NTCP_EPROTO = -17,       /* the peer broke the protocol */
    NTCP_ECONFIG = -18,      /* configuration file or option invalid */
    NTCP_ECLOSED = -19,      /* the object was closed or stopped */
};

/* ---- NAT behaviour (RFC 4787 for UDP, RFC 5382 for TCP) ----
 * What discovery finds, per transport and address family. Every field has an
 * UNKNOWN value: discovery never guesses, and says why in `why`. */

/* Is there a NAT, a firewall, or nothing between us and the server? */
typedef enum ntcp_reach {
    NTCP_REACH_UNKNOWN = 0,
    NTCP_REACH_BLOCKED,  /* no answer at all: the transport is blocked */
    NTCP_REACH_OPEN,     /* public address, unsolicited traffic comes in */
    NTCP_REACH_FIREWALL, /* public address, unsolicited traffic filtered */
    NTCP_REACH_NAT,      /* the mapped address differs from the local one */
} ntcp_reach_t;

/* Mapping and filtering behaviour share one scale. */
typedef enum ntcp_nat_dep {
    NTCP_DEP_UNKNOWN = 0,
    NTCP_DEP_NONE,         /* filtering only: nothing is filtered (open) */
    NTCP_DEP_ENDPOINT_INDEPENDENT,
    NTCP_DEP_ADDRESS,      /* address-dependent */
    NTCP_DEP_ADDRESS_PORT, /* address-and-port-dependent */
} ntcp_nat_dep_t;

typedef enum ntcp_port_alloc {
    NTCP_PORTS_UNKNOWN = 0,
    NTCP_PORTS_PRESERVED,  /* external port = local port */
    NTCP_PORTS_SEQUENTIAL, /* each new mapping = previous + delta */
    NTCP_PORTS_RANDOM,     /* no pattern found */
} ntcp_port_alloc_t;

/* What the NAT (or firewall) does with an unsolicited inbound TCP SYN. */
typedef enum ntcp_syn_answer {
    NTCP_SYN_UNKNOWN = 0,
    NTCP_SYN_ACCEPTED, /* it reaches us (no filtering for that source) */
    NTCP_SYN_DROPPED,  /* silently dropped */
    NTCP_SYN_RST,      /* answered with a TCP RST */
    NTCP_SYN_ICMP,     /* answered with an ICMP error */
} ntcp_syn_answer_t;

typedef enum ntcp_tristate {
    NTCP_UNKNOWN = 0,
    NTCP_NO,
    NTCP_YES,
} ntcp_tristate_t;

/* NTCP 0.2's names for the mapping, kept for its users. */
typedef enum ntcp_legacy_type {
    NTCP_LEGACY_UNKNOWN = 0,
    NTCP_LEGACY_NONE,                   /* no NAT */
    NTCP_LEGACY_INDEPENDENT,            /* endpoint-independent mapping */
    NTCP_LEGACY_ADDRESS_DEPENDENT,
    NTCP_LEGACY_ADDRESS_PORT_DEPENDENT, /* with a usable delta */
    NTCP_LEGACY_SESSION_DEPENDENT,      /* a new random port per session */
} ntcp_legacy_type_t;

/* The behaviour seen over one transport (UDP or TCP) and one family. */
typedef struct ntcp_nat_behaviour {
    ntcp_reach_t reach;
    ntcp_nat_dep_t mapping;
    ntcp_nat_dep_t filtering;
    ntcp_port_alloc_t ports;
    int delta;                 /* with NTCP_PORTS_SEQUENTIAL */
    ntcp_tristate_t hairpin;
    ntcp_syn_answer_t syn;     /* TCP only */
    int lifetime_s;            /* mapping lifetime, 0 = not measured */
    struct sockaddr_storage local;  /* the probe's local address (family 0: none) */
    struct sockaddr_storage mapped; /* as the server saw it (family 0: none) */
    char why[256];             /* why something is UNKNOWN, or "" */
} ntcp_nat_behaviour_t;

/* Names for people and JSON: "endpoint-independent", "port-restricted cone",
 * "AddressPortDependent", ... Static strings, never NULL. */
const char *ntcp_reach_name(ntcp_reach_t r);
const char *ntcp_dep_name(ntcp_nat_dep_t d);
const char *ntcp_ports_name(ntcp_port_alloc_t p);
const char *ntcp_syn_name(ntcp_syn_answer_t s);
const char *ntcp_tristate_name(ntcp_tristate_t t);
/* The classic name (full cone, restricted cone, port-restricted cone,
 * symmetric, open, firewall, blocked, unknown) of a behaviour. */
const char *ntcp_classic_name(const ntcp_nat_behaviour_t *b);
ntcp_legacy_type_t ntcp_legacy_type(const ntcp_nat_behaviour_t *b);
const char *ntcp_legacy_name(ntcp_legacy_type_t t);

/* ---- The context ---- */

typedef struct ntcp ntcp_t;

/* Settings for ntcp_new(). Initialise with ntcp_config_init(), then set what
 * you need: the struct may grow at its end in later versions, and `size`
 * tells the library which version the caller was built against. */
typedef struct ntcp_config {
    size_t size;                     /* sizeof(ntcp_config_t), set by init */
    const char *const *stun_servers; /* "host[:port]" (default port 3478), in order */
    size_t n_stun_servers;
    const char *broker;   /* the connection broker, "host:port"; NULL: none */
    const char *name;     /* the name this peer registers under; NULL: none */
    const char *key_file; /* Ed25519 identity (made on first use, mode 0600) */
} ntcp_config_t;

void ntcp_config_init(ntcp_config_t *cfg);

/* Makes a context. The strings in cfg are copied: cfg may go after the call.
 * *out is the caller's, to be released with ntcp_free(). */
int ntcp_new(const ntcp_config_t *cfg, ntcp_t **out);

/* Makes a context from an INI file (docs/configuration.md), keys written
 * with `=` or `:`:
 *   stun_server (or NTCP 0.2's WellKnownStunServer), in any section, once or
 *     several times, each value one server or a list separated by commas or
 *     spaces;
 *   ConnectionBroker (NTCP 0.2's, in its [holePunch]), in any section;
 *   broker, name, key_file: in [ntcp] or before any section.
 * Returns NTCP_ECONFIG when the file cannot be read or a value is invalid. */
int ntcp_new_from_file(const char *path, ntcp_t **out);

/* Adds a STUN server at the end of the list (copied). */
int ntcp_add_stun_server(ntcp_t *ctx, const char *server);

/* The context's settings, or NULL when unset. Owned by the context. */
const char *ntcp_get_broker(const ntcp_t *ctx);
const char *ntcp_get_name(const ntcp_t *ctx);
const char *ntcp_get_key_file(const ntcp_t *ctx);

void ntcp_free(ntcp_t *ctx);

/* ---- NAT discovery ---- */

/* What to probe. NTCP_DISCOVER_ALL = UDP and TCP over IPv4 and IPv6. */
enum {
    NTCP_DISCOVER_UDP = 1 << 0,
    NTCP_DISCOVER_TCP = 1 << 1,
    NTCP_DISCOVER_IPV4 = 1 << 2,
    NTCP_DISCOVER_IPV6 = 1 << 3,
    NTCP_DISCOVER_LIFETIME = 1 << 4, /* also measure mapping lifetimes: minutes */
    NTCP_DISCOVER_ALL = 0x0F,
};

typedef struct ntcp_nat_profile {
    size_t size;           /* sizeof(ntcp_nat_profile_t) */
    unsigned flags;        /* what was probed */
    char server[256];      /* the server that answered ("" if none did) */
    ntcp_nat_behaviour_t udp4, tcp4, udp6, tcp6;
    uint32_t elapsed_ms;   /* wall time of the discovery */
    uint32_t rtt_ms;       /* smallest round trip seen to the server */
} ntcp_nat_profile_t;

/* Discovers the NAT between this host and the context's STUN servers (which
 * must be ntcp-stuntd for the TCP tests; UDP works with any RFC 5780 server).
 * Blocks for at most about timeout_ms. Servers are tried in order until one
 * answers. Returns 0 when every probed part was classified, NTCP_EPROTO when
 * some of it is unknown (see each behaviour's why), NTCP_EUNREACHABLE when no
 * server answered, or another error. The profile is filled in every case. */
int ntcp_discover(ntcp_t *ctx, ntcp_nat_profile_t *profile, int timeout_ms);
int ntcp_discover_ex(ntcp_t *ctx, unsigned flags, ntcp_nat_profile_t *profile, int timeout_ms);

/* The asynchronous form, on the caller's libuv loop (a uv_loop_t *). cb is
 * called once, on the loop, with the same status and profile (valid during
 * the call only). */
struct uv_loop_s;
typedef void (*ntcp_discover_cb)(ntcp_t *ctx, int status, const ntcp_nat_profile_t *profile,
                                 void *user_ptr);
int ntcp_discover_start(ntcp_t *ctx, struct uv_loop_s *loop, unsigned flags, int timeout_ms,
                        ntcp_discover_cb cb, void *user_ptr);

/* A static, never-NULL English description of an NTCP_E* code. */
const char *ntcp_strerror(int err);

/* The library's version string, e.g. "0.1.0". */
const char *ntcp_version(void);

#ifdef __cplusplus
}
#endif

#endif /* NTCP_H */
