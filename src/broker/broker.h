/*
 * broker.h: the ntcp connection broker (ntcp-brokerd) as library code on a
 * caller's libuv loop, so that tests run it in-process and the program is a
 * thin main(). Protocol: docs/broker-protocol.md; codec: src/broker_proto.h.
 * Everything runs on the caller's loop thread except the Ed25519 signature
 * checks, which go to libuv's thread pool (uv_queue_work) and touch no
 * broker state there.
 */
#ifndef NTCP_BROKER_H
#define NTCP_BROKER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <uv.h>

typedef struct ntcp_broker ntcp_broker;

enum { NTCP_LOG_ERROR = 0, NTCP_LOG_WARN = 1, NTCP_LOG_INFO = 2, NTCP_LOG_DEBUG = 3 };

/* Receives each log line (no newline). msg is valid during the call only. */
typedef void (*ntcp_broker_log_fn)(void *user, int level, const char *msg);

/* Zero means "the default" for every number. The strings are copied by
 * ntcp_broker_start(); the caller keeps ownership of its own. */
typedef struct ntcp_broker_config {
    const char *listen;          /* "IP:PORT" for the TCP sessions (required; port 0 = any) */
    const char *udp;             /* "IP:PORT" for UDP keepalives, or NULL for none */
    bool udp_on_listen;          /* UDP keepalives on the address and port `listen`
                                  * got (with port 0 too), where peers send them
                                  * by default; instead of udp */
    const char *authorized_keys; /* file of "name base64-key" lines, or NULL: first use binds */
    const char *state_dir;       /* where first-use bindings are kept, or NULL: memory only */
    const char *broker_id;       /* identity string signed by peers; default "ntcp-brokerd" */
    uint32_t expiry_s;           /* a registration lives this long without refresh; 60 */
    uint32_t handshake_ms;       /* time a new session has to register; 10000 */
    uint32_t offer_timeout_ms;   /* time a target has to answer a connect offer; 5000 */
    uint32_t start_margin_ms;    /* added to both start delays; 0: an eighth of the
                                  * slower round trip, 2 to 20 ms */
    double peer_rate;            /* requests/s per session; 50 (negative: unlimited) */
    uint32_t peer_burst;         /* 100 */
    double source_rate;          /* new sessions + signed registrations /s per source IP;
                                  * 100 (negative: unlimited) */
    uint32_t source_burst;       /* 1000 */
    uint32_t max_sessions;       /* 1000000 */
    ntcp_broker_log_fn log;      /* NULL: no logging */
    void *log_user;
    int log_level;               /* lines above this level are not produced; NTCP_LOG_INFO */
    /* TLS 1.3 (docs/broker-protocol.md 1.1): PEM certificate (chain) and key.
     * Without tls_listen, `listen` speaks TLS only; with it, `listen` stays
     * plain and tls_listen ("IP:PORT") speaks TLS. */
    const char *tls_cert;
    const char *tls_key;
    const char *tls_listen;
    /* STUNT#1's spoofing service (docs/broker-protocol.md 5.1): an
     * IPPROTO_RAW socket opened by ntcp_broker_start() (CAP_NET_RAW; NTCP_ESYS
     * without it). Off: RAW-ISN is relayed, nothing is spoofed. */
    bool spoof;
    /* Cluster mode (docs/cluster.md): "redis://HOST:PORT[/DB]". The nodes of
     * one cluster share registrations, first-use name bindings, lookups and
     * connects through that Redis; without it (NULL) nothing of this runs.
     * A node that cannot reach Redis refuses new registrations (503) and
     * recovers by itself. */
    const char *cluster;
    /* Resumption tickets (docs/broker-protocol.md 4.1): the key that seals
     * them (32 bytes, copied); NULL: a random one per process, or in a
     * cluster the one the nodes share in Redis. Lifetime 0: 86400 s. */
    const uint8_t *ticket_key;
    uint32_t ticket_lifetime_s;
    /* The relay of last resort (docs/relay.md): a TURN server ("IP:PORT",
     * coturn with use-auth-secret) and the file holding its shared secret
     * (first line). Both or neither. Each CONNECT-GO then carries the server
     * and TURN REST credentials for that end, valid turn_ttl_s (86400). */
    const char *turn_server;
    const char *turn_secret_file;
    uint32_t turn_ttl_s;
} ntcp_broker_config;

typedef struct ntcp_broker_stats {
    uint64_t sessions;     /* open TCP sessions */
    uint64_t peers;        /* registered sessions */
    uint64_t bindings;     /* names bound to keys */
    uint64_t pending;      /* connects waiting for the target */
    uint64_t requests;     /* requests handled since start (TCP and UDP) */
    uint64_t registrations;
    uint64_t connects_ok;
    uint64_t connects_failed;
    uint64_t refused;      /* bad signature, bound name, not authorized, stale challenge */
    uint64_t bad_sessions; /* closed for garbage, oversize or protocol violation */
    uint64_t reaped;       /* closed for silence */
    uint64_t rate_limited;
    uint64_t tls_sessions; /* open sessions that speak TLS */
    uint64_t tls_failed;   /* TLS handshakes or records that failed (also in bad_sessions) */
    uint64_t raw_isn;      /* RAW-ISN indications taken (STUNT#1, NATBlaster) */
    uint64_t spoofed;      /* SYN-ACKs spoofed (STUNT#1) */
    uint64_t cluster_up;   /* cluster mode: 1 while Redis is reachable */
    uint64_t resumptions;  /* registrations by ticket (no signature checked) */
    uint64_t tickets_refused; /* tickets or proofs refused (the peer then signs) */
} ntcp_broker_stats;

/* Binds the sockets, loads keys/state and starts serving on loop. On success
 * *out is the broker (owned by the caller: ntcp_broker_stop()). Returns 0,
 * NTCP_EINVAL, NTCP_ECONFIG (bad address, unreadable keys or state, a TLS
 * certificate or key that does not load or match, half a TLS setting),
 * NTCP_ESYS (bind failed; errno set) or NTCP_ENOMEM. A broker without UDP
 * answers a UDP CONNECT with 501 at once. */
int ntcp_broker_start(uv_loop_t *loop, const ntcp_broker_config *cfg, ntcp_broker **out);

/* Re-reads the authorized-keys file and the TLS certificate and key
 * (SIGHUP). Sessions whose name left the file or whose key changed are
 * closed; TLS sessions already open keep the certificate they started with.
 * On error the old keys (or certificate) stay, and the error is returned
 * (the other part is reloaded all the same). */
int ntcp_broker_reload(ntcp_broker *b);

void ntcp_broker_get_stats(const ntcp_broker *b, ntcp_broker_stats *st);

/* The bound addresses (useful with port 0). NTCP_ENOTFOUND for no UDP. */
int ntcp_broker_tcp_addr(const ntcp_broker *b, struct sockaddr_storage *out);
int ntcp_broker_udp_addr(const ntcp_broker *b, struct sockaddr_storage *out);
/* The address that speaks TLS: tls_listen's, or listen's when TLS replaces
 * plain TCP there. NTCP_ENOTFOUND without TLS. */
int ntcp_broker_tls_addr(const ntcp_broker *b, struct sockaddr_storage *out);

/* Closes every session and socket. b is freed once every handle is closed,
 * then done(arg) runs (done may be NULL). The loop must keep running. */
void ntcp_broker_stop(ntcp_broker *b, void (*done)(void *arg), void *arg);

#endif
