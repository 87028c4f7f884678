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

/* Marks the library's interface. libntcp is compiled with hidden visibility
 * (docs/architecture.md, "Packaging"), so libntcp.so exports exactly the
 * declarations below that carry this and nothing of its internals. */
#if defined(__GNUC__) || defined(__clang__)
#define NTCP_EXPORT __attribute__((visibility("default")))
#else
#define NTCP_EXPORT
#endif

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
    NTCP_ENOPEER = -20,      /* the broker knows no peer of that name (NTCP 0.2's 700) */
    NTCP_EREFUSED = -21,     /* the peer (its policy) or the broker refused the connection */
    NTCP_ENOTREADY = -22,    /* not registered with the broker (yet): see ntcp_listen() */
    NTCP_ETLS = -23,         /* TLS with the broker failed (not TLS, bad record, alert) */
    NTCP_ECERT = -24,        /* the broker's certificate was refused (CA, name or pin) */
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
NTCP_EXPORT const char *ntcp_reach_name(ntcp_reach_t r);
NTCP_EXPORT const char *ntcp_dep_name(ntcp_nat_dep_t d);
NTCP_EXPORT const char *ntcp_ports_name(ntcp_port_alloc_t p);
NTCP_EXPORT const char *ntcp_syn_name(ntcp_syn_answer_t s);
NTCP_EXPORT const char *ntcp_tristate_name(ntcp_tristate_t t);
/* The classic name (full cone, restricted cone, port-restricted cone,
 * symmetric, open, firewall, blocked, unknown) of a behaviour. */
NTCP_EXPORT const char *ntcp_classic_name(const ntcp_nat_behaviour_t *b);
NTCP_EXPORT ntcp_legacy_type_t ntcp_legacy_type(const ntcp_nat_behaviour_t *b);
NTCP_EXPORT const char *ntcp_legacy_name(ntcp_legacy_type_t t);

/* ---- The context ---- */

typedef struct ntcp ntcp_t;

/* Settings for ntcp_new(). Initialise with ntcp_config_init(), then set what
 * you need: the struct may grow at its end in later versions, and `size`
 * tells the library which version the caller was built against. */
typedef struct ntcp_config {
    size_t size;                     /* sizeof(ntcp_config_t), set by init */
    const char *const *stun_servers; /* "host[:port]" (default port 3478), in order */
    size_t n_stun_servers;
    const char *broker;   /* the connection broker, "host:port", or a list of them
                           * ("a:3490, b:3490"; docs/configuration.md); NULL: none */
    const char *name;     /* the name this peer registers under; NULL: none */
    const char *key_file; /* Ed25519 identity (made on first use, mode 0600) */
    /* TLS 1.3 to the broker (docs/configuration.md); read when size covers
     * them. The certificate is checked by CA (broker_ca, or the system's
     * when neither it nor a pin is given) and the broker's host name, or by
     * pin, or both. */
    int broker_tls;          /* 1: TLS (a broker written "tls://host:port" says so too) */
    const char *broker_ca;   /* PEM file of the CAs that may sign the broker's certificate */
    const char *broker_pin;  /* "sha256/BASE64" of its SubjectPublicKeyInfo; several: commas */
    int broker_tls_insecure; /* 1: check no certificate at all (tests); not with ca or pin */
    /* The relay of last resort (docs/relay.md): enum ntcp_relay_policy,
     * NTCP_RELAY_AUTO (0) by default. Read when size covers it. */
    int relay;
    /* The TCP methods this end's plans may use, by the names
     * ntcp_conn_info_t.method reports ("same-lan", "direct", "reversal",
     * "stunt2", "p2pnat", "predict", "stunt1", "natblaster", "birthday"),
     * separated by commas or blanks; NULL or "": all (the default). A pair
     * that needs only others gets no direct attempt (NTCP_EUNREACHABLE, or
     * the relay). E.g. "stunt1,natblaster" to try only the raw methods, or
     * every name but those two to never open a raw socket. Read when size
     * covers it; an unknown name: ntcp_new() returns NTCP_ECONFIG. */
    const char *methods;
} ntcp_config_t;

/* When a TCP connection may go through the TURN relay the broker offers
 * (docs/relay.md). The relay is used only when both ends allow it. */
typedef enum ntcp_relay_policy {
    NTCP_RELAY_AUTO = 0,   /* when no direct method can work, at once; otherwise after
                              the direct methods' budget has run out */
    NTCP_RELAY_NEVER = 1,  /* never (no allocation is made) */
    NTCP_RELAY_ALWAYS = 2, /* only the relay, no direct method (tests, or by choice) */
} ntcp_relay_policy_t;

NTCP_EXPORT void ntcp_config_init(ntcp_config_t *cfg);

/* Makes a context. The strings in cfg are copied: cfg may go after the call.
 * *out is the caller's, to be released with ntcp_free(). */
NTCP_EXPORT int ntcp_new(const ntcp_config_t *cfg, ntcp_t **out);

/* Makes a context from an INI file (docs/configuration.md), keys written
 * with `=` or `:`:
 *   stun_server (or NTCP 0.2's WellKnownStunServer), in any section, once or
 *     several times, each value one server or a list separated by commas or
 *     spaces;
 *   ConnectionBroker (NTCP 0.2's, in its [holePunch]), in any section;
 *   broker, name, key_file: in [ntcp] or before any section;
 *   broker_tls, broker_ca, broker_pin, broker_tls_insecure: likewise (TLS
 *     to the broker; yes/no for the flags);
 *   relay: auto, never or always (ntcp_relay_policy_t), likewise;
 *   methods: the TCP methods plans may use (ntcp_config_t.methods), likewise.
 * Returns NTCP_ECONFIG when the file cannot be read or a value is invalid. */
NTCP_EXPORT int ntcp_new_from_file(const char *path, ntcp_t **out);

/* Adds a STUN server at the end of the list (copied). */
NTCP_EXPORT int ntcp_add_stun_server(ntcp_t *ctx, const char *server);

/* The context's settings, or NULL when unset. Owned by the context. */
NTCP_EXPORT const char *ntcp_get_broker(const ntcp_t *ctx);
NTCP_EXPORT const char *ntcp_get_name(const ntcp_t *ctx);
NTCP_EXPORT const char *ntcp_get_key_file(const ntcp_t *ctx);
/* TLS to the broker: 1 when on, else 0; the CA file and the pins, or NULL;
 * 1 when certificates are not checked. */
NTCP_EXPORT int ntcp_get_broker_tls(const ntcp_t *ctx);
NTCP_EXPORT const char *ntcp_get_broker_ca(const ntcp_t *ctx);
NTCP_EXPORT const char *ntcp_get_broker_pin(const ntcp_t *ctx);
NTCP_EXPORT int ntcp_get_broker_tls_insecure(const ntcp_t *ctx);
/* The i-th STUN server (from 0), or NULL past the end. */
NTCP_EXPORT const char *ntcp_get_stun_server(const ntcp_t *ctx, size_t i);

/* Frees the context: stops its runtime (the broker session is closed, every
 * attempt in flight ends, blocked calls return NTCP_ECLOSED, connections
 * queued for ntcp_accept() are closed). Descriptors already handed over stay
 * open. Must not be called from a callback. */
NTCP_EXPORT void ntcp_free(ntcp_t *ctx);

/* Stops the context's runtime without freeing the context: the broker
 * session closes, every call in flight on any thread returns NTCP_ECLOSED
 * (blocked ntcp_accept(), ntcp_connect(), ... included; asynchronous calls
 * get their callback with it), and every later call returns NTCP_ECLOSED at
 * once. Returns when no other thread is inside a call on the context any
 * more. The way to end a context that several threads use: ntcp_stop(),
 * join those threads (whatever they call now fails at once), then
 * ntcp_free(). Idempotent; must not be called from a callback. */
NTCP_EXPORT void ntcp_stop(ntcp_t *ctx);

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
NTCP_EXPORT int ntcp_discover(ntcp_t *ctx, ntcp_nat_profile_t *profile, int timeout_ms);
NTCP_EXPORT int ntcp_discover_ex(ntcp_t *ctx, unsigned flags, ntcp_nat_profile_t *profile, int timeout_ms);

/* The asynchronous form, on the caller's libuv loop (a uv_loop_t *). cb is
 * called once, on the loop, with the same status and profile (valid during
 * the call only). Server names are looked up on libuv's thread pool: the
 * loop never waits for DNS. */
struct uv_loop_s;
typedef void (*ntcp_discover_cb)(ntcp_t *ctx, int status, const ntcp_nat_profile_t *profile,
                                 void *user_ptr);
NTCP_EXPORT int ntcp_discover_start(ntcp_t *ctx, struct uv_loop_s *loop, unsigned flags, int timeout_ms,
                        ntcp_discover_cb cb, void *user_ptr);

/* ---- Connections: ntcp_listen, ntcp_accept, ntcp_connect ----
 *
 * A context with a broker and a name (ntcp_config_t or the configuration
 * file) opens plain TCP connections to other peers by name, whatever NATs sit
 * between (docs/traversal.md). The first call that needs it starts the
 * context's runtime: one thread of the library's own, which discovers the NAT
 * (when STUN servers are configured), registers the name with the broker under
 * the context's Ed25519 key, keeps the registration alive and registers again
 * after the broker restarts. Every connection is verified before it is
 * handed over: the peer proved on it that it holds the key the broker bound
 * to its name (docs/verify.md).
 *
 * The returned descriptor is the caller's: a connected TCP socket in blocking
 * mode (set O_NONBLOCK yourself if you want it), closed with close(). Nothing
 * of the library stays on it.
 *
 * Thread safety: the functions below may be called from any thread, also at
 * once; configure the context (ntcp_add_stun_server, ntcp_set_policy) before
 * the first of them. Asynchronous callbacks run on the runtime thread: they
 * must not block, and must not call ntcp_free(). */

/* How the connection was made. */
typedef enum ntcp_transport {
    NTCP_TCP = 0,
    NTCP_UDP = 1,
} ntcp_transport_t;

/* One attempt of a connection's plan, as it ran (docs/traversal.md). */
#define NTCP_MAX_ATTEMPTS 16
typedef struct ntcp_attempt_info {
    char method[16];  /* as ntcp_conn_info_t.method */
    char role[12];    /* "connect", "accept", "simopen", "punch", "raw-syn", "spray", "guess" */
    char outcome[16]; /* "won", "connected", "refused", "timed-out", "verify-failed",
                         "failed", "cancelled", "not-started" */
    int sys_errno;    /* the last socket error it saw (ECONNREFUSED, ...), 0 when none */
    /* Milliseconds from the common start; -1: it did not happen. */
    int64_t started_ms, connected_ms, ended_ms;
    unsigned syns;        /* connect() calls made */
    unsigned refusals;    /* SYNs answered by an RST or ICMP error */
    unsigned connections; /* TCP connections with the peer it got */
    char why[64];         /* a failure's reason, "" when none */
} ntcp_attempt_info_t;

typedef struct ntcp_conn_info {
    size_t size;            /* sizeof(ntcp_conn_info_t): set it before the call */
    ntcp_transport_t transport;
    char peer[65];          /* the peer's name, as the broker vouched for it */
    int initiator;          /* 1: this end called ntcp_connect() */
    char method[16];        /* "same-lan", "direct", "reversal", "stunt2",
                               "p2pnat", "predict", "birthday", "stunt1",
                               "natblaster", "relay" ("" on failure) */
    struct sockaddr_storage local, remote; /* of the connection */
    struct sockaddr_storage public_addr;   /* this end as the broker sees it */
    struct sockaddr_storage peer_public;   /* the peer as the broker sees it */
    /* Milliseconds. For the initiator from its call, for the target from the
     * broker's offer. -1: the step did not happen. */
    int64_t broker_ms;      /* the broker's CONNECT-GO arrived */
    int64_t start_ms;       /* the common start time of both ends' attempts */
    int64_t connected_ms;   /* the winning attempt's TCP handshake completed */
    int64_t verified_ms;    /* the key proof ended: the socket is handed over */
    uint32_t rtt_ms;        /* this end's round trip to the broker */
    unsigned attempts;      /* attempts the plan had */
    char detail[256];       /* one line: the plan and what happened; on failure, why */
    /* method "relay": the TURN server the connection goes through (family 0
     * otherwise). Filled when size covers it. */
    struct sockaddr_storage relay;
    /* What this end's attempts did, in plan order (TCP; filled when size
     * covers them): the plan as it ran. n_attempt <= NTCP_MAX_ATTEMPTS.
     * (A copy into a struct of an older, smaller layout must set size to
     * that struct's sizeof before ntcp_conn_info_json() reads it.) */
    unsigned n_attempt;
    ntcp_attempt_info_t attempt[NTCP_MAX_ATTEMPTS];
    /* The TTL of the last low-TTL SYN this end sent (0: none), and 1 when a
     * router outside this end's site answered one with "time exceeded"
     * (the punch left this end's NAT(s) and died before the peer's). */
    unsigned punch_ttl;
    int ttl_left_site;
} ntcp_conn_info_t;

/* Asks the broker for this peer's offers: register `name` (NULL: the
 * context's name) and accept incoming connections from then on, queued until
 * ntcp_accept() takes them. Blocks until registered or timeout_ms (<= 0: 30 s)
 * passed. Returns 0, NTCP_ECONFIG (no broker or name), NTCP_ETIMEDOUT,
 * NTCP_EREFUSED (the broker refused the registration: the name is bound to
 * another key, or not authorized), NTCP_ECERT or NTCP_ETLS (TLS to the broker:
 * its certificate refused, or its port does not speak TLS, or does), or
 * another error. Calling it again with the same name returns 0 at once. */
NTCP_EXPORT int ntcp_listen(ntcp_t *ctx, const char *name, int timeout_ms);

/* Waits for the next verified incoming connection (TCP, or a UDP path made
 * by ntcp_udp_punch() on the other end: info->transport says which).
 * Returns the descriptor, or NTCP_ETIMEDOUT after timeout_ms (< 0: forever,
 * 0: poll), NTCP_ENOTREADY before ntcp_listen(), NTCP_ECLOSED when the context
 * is being freed. info may be NULL. */
NTCP_EXPORT int ntcp_accept(ntcp_t *ctx, ntcp_conn_info_t *info, int timeout_ms);

/* Opens a TCP connection to the peer registered as `peer`. Registers the
 * context's name first when ntcp_listen() was not called. Blocks for at most
 * about timeout_ms (<= 0: 30 s). Returns the descriptor, or:
 *   NTCP_ENOPEER       the broker knows no such peer;
 *   NTCP_EREFUSED      the peer's policy or the broker refused;
 *   NTCP_EUNREACHABLE  no method can traverse the two NATs, or every attempt
 *                      failed (info->detail says which and why);
 *   NTCP_ETIMEDOUT     the time ran out;
 *   NTCP_EINTEGRITY    something answered but could not prove the peer's key;
 *   NTCP_ECONFIG       no broker or no name configured.
 * info (may be NULL) is filled in every case. */
NTCP_EXPORT int ntcp_connect(ntcp_t *ctx, const char *peer, ntcp_conn_info_t *info, int timeout_ms);

/* The asynchronous forms. cb runs once, on the runtime thread, with the
 * descriptor (>= 0, the callee's to close) or an error, and info (valid during
 * the call only). They return 0 when the request was queued, or an error with
 * no callback. */
typedef void (*ntcp_conn_cb)(ntcp_t *ctx, int fd_or_err, const ntcp_conn_info_t *info,
                             void *user_ptr);
typedef void (*ntcp_listen_cb)(ntcp_t *ctx, int status, void *user_ptr);
NTCP_EXPORT int ntcp_listen_async(ntcp_t *ctx, const char *name, ntcp_listen_cb cb, void *user_ptr);
NTCP_EXPORT int ntcp_connect_async(ntcp_t *ctx, const char *peer, int timeout_ms, ntcp_conn_cb cb,
                       void *user_ptr);
/* The next incoming connection goes to cb instead of the ntcp_accept()
 * queue (one callback per call; a connection already queued is given at
 * once). */
NTCP_EXPORT int ntcp_accept_async(ntcp_t *ctx, ntcp_conn_cb cb, void *user_ptr);

/* ---- UDP: ntcp_udp_punch (docs/udp.md) ----
 *
 * A connected UDP socket to the peer registered as `peer`, punched through
 * both NATs (same LAN, direct, hole punching, port prediction, and a
 * bounded birthday search against one random-port NAT), after the same key
 * proof as TCP, carried in the first datagrams. The listening side gets its
 * end through ntcp_accept() (info->transport == NTCP_UDP). Returns the
 * descriptor (blocking mode, connect()ed to the peer) or an error as for
 * ntcp_connect().
 *
 * The library keeps the path alive: a zero-length datagram every half of
 * the NAT's measured mapping lifetime (15 s when unknown), from its own
 * duplicate of the socket, until the application closes its descriptor
 * (seen at the next keepalive: the library then closes its duplicate, and
 * the socket and its NAT mappings go) or calls ntcp_udp_close(), which
 * stops it at once and closes the descriptor. The application reads the peer's
 * keepalives as datagrams of length 0, and, rarely (when the last handshake
 * datagrams were lost), a repeated handshake datagram: ntcp_udp_is_control()
 * tells both apart from its own data, which it should then ignore. */
NTCP_EXPORT int ntcp_udp_punch(ntcp_t *ctx, const char *peer, ntcp_conn_info_t *info, int timeout_ms);
NTCP_EXPORT int ntcp_udp_punch_async(ntcp_t *ctx, const char *peer, int timeout_ms, ntcp_conn_cb cb,
                         void *user_ptr);
/* Stops the path's keepalive at once and closes fd. Returns 0, or NTCP_EINVAL. */
NTCP_EXPORT int ntcp_udp_close(ntcp_t *ctx, int fd);
/* 1 when a received datagram is ntcp's own (a keepalive or a handshake
 * repeat), 0 when it is the peer application's. */
NTCP_EXPORT int ntcp_udp_is_control(const void *buf, size_t len);

/* Who may connect: called on the runtime thread for each offer, before any
 * packet is sent to the peer; return 1 to accept, 0 to refuse (the requester
 * gets NTCP_EREFUSED). Without a policy every offer is accepted. Set it before
 * ntcp_listen(). */
typedef int (*ntcp_policy_fn)(ntcp_t *ctx, const char *peer, ntcp_transport_t transport,
                              void *user_ptr);
NTCP_EXPORT int ntcp_set_policy(ntcp_t *ctx, ntcp_policy_fn fn, void *user_ptr);

/* The relay policy (ntcp_config_t.relay, the file's `relay` key); set it
 * before the first connection. Returns 0 or NTCP_EINVAL. */
NTCP_EXPORT int ntcp_set_relay(ntcp_t *ctx, ntcp_relay_policy_t policy);
/* The context's relay policy (NTCP_RELAY_AUTO for NULL). */
NTCP_EXPORT ntcp_relay_policy_t ntcp_get_relay(const ntcp_t *ctx);
/* The `methods` setting as given (ntcp_config_t.methods, the file's key),
 * or NULL when all methods are allowed. Owned by the context. */
NTCP_EXPORT const char *ntcp_get_methods(const ntcp_t *ctx);

/* The profile the runtime discovered and registered (zeroed, with status
 * NTCP_ENOTREADY, before the runtime has one). Returns the discovery status. */
NTCP_EXPORT int ntcp_get_profile(ntcp_t *ctx, ntcp_nat_profile_t *profile);

/* One JSON object describing info (method, times, addresses), snprintf
 * rules: returns the length it needed. */
NTCP_EXPORT size_t ntcp_conn_info_json(const ntcp_conn_info_t *info, int status, char *buf, size_t len);

/* A static, never-NULL English description of an NTCP_E* code. */
NTCP_EXPORT const char *ntcp_strerror(int err);

/* The library's version string, e.g. "0.1.0". */
NTCP_EXPORT const char *ntcp_version(void);

#ifdef __cplusplus
}
#endif

#endif /* NTCP_H */
