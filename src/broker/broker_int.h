/*
 * broker_int.h: the broker's internal state, shared by broker.c (sessions and
 * messages) and keys.c (name bindings, authorized keys, the state dir, rate
 * limits). Sized for many peers: one session struct and one binding per peer,
 * buffers only while a message is split or a socket is slow.
 */
#ifndef NTCP_BROKER_INT_H
#define NTCP_BROKER_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "broker.h"
#include "broker_proto.h"

#define TICKET_KEY_SIZE 32

/* A name bound to a key, registered or not. One allocation, name inline. */
typedef struct binding {
    struct binding *next;   /* hash chain */
    struct bsession *live;  /* the session registered under it, or NULL */
    uint8_t key[BROKER_KEY_SIZE];
    uint8_t flags;          /* BIND_* */
    uint8_t namelen;
    char name[];            /* NUL-terminated */
} binding;

#define BIND_AUTHORIZED 0x01 /* from the authorized-keys file */
#define BIND_STALE 0x02      /* during a reload: not seen in the new file */

enum { S_NEW = 0, S_CHALLENGED = 1, S_REGISTERED = 2, S_CLOSING = 3 };

/* Output that the socket did not take at once: allocated only then. */
typedef struct outbuf {
    uv_write_t req;
    uint32_t len;    /* bytes held */
    uint32_t wlen;   /* bytes handed to uv_write (0: no write in flight) */
    uint8_t data[];  /* OUTBUF_CAP */
} outbuf;
#define OUTBUF_CAP 16384

typedef struct bsession {
    uv_tcp_t tcp;                  /* handle.data = this */
    ntcp_broker *b;
    struct bsession *prev, *next;  /* activity list, oldest first */
    binding *bind;                 /* when registered */
    uint64_t last_ms;              /* last request (loop time) */
    uint64_t challenge_us;         /* when the challenge left (hrtime) */
    double tokens;                 /* rate limit bucket */
    uint64_t tokens_ms;
    uint8_t state;
    uint8_t busy;                  /* a signature check (or the cluster's verdict on
                                    * the registration) is pending for it */
    uint8_t dead;                  /* closed, freed when refs drops to 0 */
    uint16_t refs;                 /* cluster requests in flight that name it */
    uint64_t serial;               /* this registration, unique on this node */
    uint8_t nprivate;
    uint8_t accept_all;            /* BROKER_ACCEPT_*: connects sent GOs without an offer */
    uint16_t profile_len;
    uint16_t inlen;                /* bytes of a split message held in in */
    uint16_t npending;             /* connects this session takes part in */
    uint32_t rtt_us;               /* smoothed application round trip */
    uint8_t *in;                   /* BROKER_MAX_MESSAGE, only while split */
    outbuf *out;
    struct ntcp_tls *tls;          /* NULL: plain TCP */
    uint8_t *extra;                /* nprivate broker_addr then the profile */
    broker_addr pub;               /* TCP source as the broker sees it */
    broker_addr udp;               /* UDP mapping, family 0 until learned */
    uint8_t challenge[BROKER_CHALLENGE_SIZE];
    uint8_t udp_key[BROKER_UDP_KEY_SIZE];
} bsession;

/* A connect waiting for the target's answer. In a cluster one end may be
 * on another node: req NULL (the requester's node waits, `node` and `ref`
 * say where to answer) or tgt NULL (the target's node was asked). */
typedef struct pending {
    struct pending *prev, *next;
    bsession *req, *tgt;
    uint64_t ref;                  /* the requester's node's number for it */
    char node[17];                 /* the other node, "" when both are here */
    uint32_t req_rtt_us;           /* remote requester: its RTT at its node */
    uint32_t node_delay_us;        /* remote requester: its node's half trip to Redis */
    struct cl_remote *remote;      /* remote requester: its data, for the target's GO */
    uint64_t deadline_ms;
    uint64_t sent_us;              /* when the offer left, for the target's RTT */
    uint32_t transport;            /* enum broker_transport, from the CONNECT */
    bool relay;                    /* remote requester: its node offers our TURN server */
    uint8_t req_tid[STUN_TID_SIZE];
    uint8_t offer_tid[STUN_TID_SIZE];
} pending;

/* A signature check on the thread pool. */
typedef struct vjob {
    uv_work_t req;
    struct vjob *next_free;
    struct bsession *s;
    uint64_t rtt_us;
    int tl;
    bool ok;
    uint8_t tid[STUN_TID_SIZE];
    uint8_t key[BROKER_KEY_SIZE];
    uint8_t sig[BROKER_SIG_SIZE];
    uint8_t tr[BROKER_TRANSCRIPT_MAX];
    char name[BROKER_NAME_MAX + 1];
} vjob;

/* Per-source token buckets: 4-way sets, least recently used replaced. */
typedef struct src_bucket {
    uint8_t ip[16];
    uint64_t last_ms; /* 0 = empty */
    double tokens;
} src_bucket;
#define SRC_WAYS 4
#define SRC_SETS 4096

struct ntcp_broker {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_tcp_t tls_listener;         /* with tls_listen only */
    bool has_tls_listener, listen_tls; /* listen_tls: `listener` speaks TLS */
    struct ssl_ctx_st *tls_ctx;    /* NULL: no TLS; reloaded by SIGHUP */
    char *tls_cert, *tls_key;
    uv_udp_t udp;
    uv_timer_t timer;
    bool has_udp, has_timer;
    int open_handles;              /* closed on stop */
    void (*done)(void *);
    void *done_arg;
    bool stopping;

    /* configuration (strings owned) */
    char *authorized_keys, *state_dir, *broker_id;
    size_t broker_id_len;
    uint32_t expiry_s, handshake_ms, offer_timeout_ms, start_margin_ms;
    double peer_rate, source_rate;
    uint32_t peer_burst, source_burst, max_sessions;
    ntcp_broker_log_fn log;
    void *log_user;
    int log_level;

    /* name -> binding */
    binding **table;
    size_t table_size;             /* power of two */
    uint8_t hash_key[16];

    /* sessions by activity, oldest first: unregistered and registered */
    bsession *new_head, *new_tail, *reg_head, *reg_tail;
    pending *pend_head, *pend_tail;
    pending *pend_free;            /* recycled, so a connect allocates nothing */
    uint32_t npend_free;
    vjob *vfree;                   /* recycled signature checks */
    uint32_t nvfree;
    uint32_t jobs;                 /* signature checks in flight */

    src_bucket *src;               /* SRC_SETS * SRC_WAYS, or NULL when unlimited */

    int journal_fd;                /* state_dir/bindings.journal, or -1 */

    struct cluster *cl;            /* cluster.c: shared state in Redis, or NULL */
    uint8_t ticket_key[TICKET_KEY_SIZE]; /* the cluster's (from Redis), or this process's */
    bool has_ticket_key;
    uint32_t ticket_lifetime_s;
    uint64_t next_serial;

    ntcp_broker_stats st;
    /* spoof.c: connects remembered for RAW-ISN; the spoofing socket (-1: off). */
    struct rdv *rdv;
    int spoof_fd;
    double spoof_tokens;
    uint64_t spoof_ms;
    /* turn_creds.c: the relay offered in CONNECT-GO (docs/relay.md). */
    struct {
        bool enabled;
        struct sockaddr_storage server;
        char secret[256];
        size_t secret_len;
        uint32_t ttl_s;
    } turn;
    uint8_t rbuf[65536];           /* every TCP read lands here first */
    uint8_t pbuf[16384];           /* plaintext of a TLS session's records */
    uint8_t ubuf[BROKER_MAX_MESSAGE];
};

/* ticket.c: resumption tickets (docs/broker-protocol.md 4.1). */
typedef struct ticket {
    uint64_t expires;        /* Unix time, seconds */
    uint8_t ip_bound;        /* 1: valid only from ip (issued on a plain session) */
    uint8_t family;          /* 4 or 6, when ip_bound */
    uint8_t ip[16];
    uint8_t resume_key[BROKER_RESUME_KEY_SIZE];
    uint8_t key[BROKER_KEY_SIZE];
    char name[BROKER_NAME_MAX + 1];
} ticket;
/* Returns the sealed length or NTCP_ENOSPC / NTCP_ESYS. */
int ticket_seal(const uint8_t tkey[TICKET_KEY_SIZE], const ticket *t, uint8_t *out, size_t cap);
/* Returns 0, or NTCP_EINVAL for anything not sealed by tkey or malformed. */
int ticket_open(const uint8_t tkey[TICKET_KEY_SIZE], const uint8_t *in, size_t len, ticket *t);
/* The plaintext's parser (ticket_open's second half; the fuzz target's). */
int ticket_parse(const uint8_t *plain, size_t plen, ticket *t);

/* keys.c */
uint64_t broker_siphash(const uint8_t key[16], const void *data, size_t len);
binding *binding_find(ntcp_broker *b, const char *name, size_t len);
/* Adds a binding (not yet present). Returns it or NULL (out of memory). */
binding *binding_add(ntcp_broker *b, const char *name, size_t len, const uint8_t key[32], uint8_t flags);
void binding_remove(ntcp_broker *b, binding *x);
void bindings_free(ntcp_broker *b);
int keys_load_authorized(ntcp_broker *b, bool reload);
int keys_load_state(ntcp_broker *b);
/* Remembers a first-use binding in the journal (when there is a state dir). */
void keys_persist(ntcp_broker *b, const binding *x);
bool src_allow(ntcp_broker *b, const struct sockaddr *sa, uint64_t now_ms);

/* broker.c */
void broker_logf(ntcp_broker *b, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void session_close(bsession *s, bool flush);
void notify_ended(bsession *s, int code, const char *reason);
void broker_send(bsession *s, const uint8_t *msg, size_t len);

/* broker.c, for cluster.c */
void session_unref(bsession *s);
void answer_error(bsession *s, uint16_t method, const uint8_t tid[STUN_TID_SIZE], int code,
                  const char *reason);
void session_info(const bsession *s, broker_peer_info *p);
/* A registration whose name the cluster bound to its key (ok), refused (409,
 * or 503 without Redis): completes it and restarts reading. */
void register_verdict(bsession *s, const char *name, const uint8_t key[BROKER_KEY_SIZE],
                      const uint8_t tid[STUN_TID_SIZE], int code);
/* Both GOs of an accepted connect: sends the requester's (local) or hands
 * the target's timing to the caller (remote requester). */
pending *pending_new(ntcp_broker *b);
void pending_link(ntcp_broker *b, pending *p);
void pending_free(ntcp_broker *b, pending *p);
/* Ends a connect with an error to its requester (if here). */
void pending_fail(ntcp_broker *b, pending *p, int code, const char *reason);
uint32_t session_rtt(bsession *s);
uint32_t start_margin(const ntcp_broker *b, uint32_t slow_us);
void send_offer(bsession *t, const broker_peer_info *from, pending *p, uint32_t timeout);
/* A CONNECT-GO carrying the other end's data: the requester's (the CONNECT
 * success answering req_tid) or, req_tid NULL, the target's GO. relay: with
 * the TURN server and credentials for this end, when the broker has them
 * (and, across nodes, when the other end's node offers the same server). */
void send_go(bsession *s, const uint8_t *req_tid, const broker_peer_info *other,
             const uint8_t nonce[BROKER_NONCE_SIZE], uint32_t delay_ms, uint32_t rtt_us,
             uint32_t transport, bool relay);

/* cluster.c: the broker as one node of a cluster (docs/cluster.md). Every
 * function is a no-op, or answers as a lone broker would, when b->cl is
 * NULL. */
int cluster_start(ntcp_broker *b, const char *url);
void cluster_stop(ntcp_broker *b);
bool cluster_up(const ntcp_broker *b);
/* Registration: asks Redis to bind name to key (first use) for s, then
 * calls register_verdict(). Returns false when Redis is not there now. */
bool cluster_bind(bsession *s, const char *name, const uint8_t key[BROKER_KEY_SIZE],
                  const uint8_t tid[STUN_TID_SIZE]);
/* A handle of the broker's closed: frees it when it was the last one and
 * the broker is stopping. */
void broker_handle_closed(ntcp_broker *b);
/* The registration record: written (full), its TTL renewed, removed. */
void cluster_publish(bsession *s, bool took_over);
void cluster_touch(bsession *s);
void cluster_forget(bsession *s);
/* LOOKUP / CONNECT of a name not registered here. Return false without a
 * cluster (the caller answers 404). */
bool cluster_lookup(bsession *s, const stun_msg *m, const char *name);
bool cluster_connect(bsession *s, const stun_msg *m, const char *name, uint32_t transport,
                     uint32_t timeout);
/* The target here answered a remote requester's offer (code 0: accepted),
 * or its session ended (410). */
void cluster_answer(ntcp_broker *b, pending *p, int code, bsession *t);
/* The cluster's ticket key arrived (or changed, after Redis lost it). */
void broker_set_ticket_key(ntcp_broker *b, const uint8_t key[TICKET_KEY_SIZE]);
/* Stats: cluster messages, Redis state. */
uint64_t cluster_rtt_us(const ntcp_broker *b);

/* spoof.c */
int spoof_init(ntcp_broker *b, bool spoof);
void spoof_free(ntcp_broker *b);
bool spoof_enabled(const ntcp_broker *b);
void rdv_add(ntcp_broker *b, bsession *req, bsession *tgt, const uint8_t nonce[BROKER_NONCE_SIZE]);
void rdv_forget(ntcp_broker *b, bsession *s);
/* The other end of the connect `nonce` that s is part of: its session here
 * (*other), or the node it is registered at (*node, cluster). False when s
 * is part of no such connect of the last 30 s, or the other end is gone. */
bool rdv_other(ntcp_broker *b, const bsession *s, const uint8_t nonce[BROKER_NONCE_SIZE],
               bsession **other, const char **node);
/* Our end of the connect `nonce` whose other end is registered at node, or
 * NULL: where a message that node relays for that connect may go. */
bsession *rdv_remote_end(ntcp_broker *b, const char *node, const uint8_t nonce[BROKER_NONCE_SIZE]);
void do_raw_isn(bsession *s, const stun_msg *m);
void rdv_add_remote(ntcp_broker *b, bsession *s, int me, const char *node,
                    const uint8_t nonce[BROKER_NONCE_SIZE]);
void rdv_remote_isn(ntcp_broker *b, const char *node, const uint8_t nonce[BROKER_NONCE_SIZE],
                    const struct sockaddr_storage *ext, uint32_t isn, bool spoof);
/* cluster.c: a RAW-ISN, a RELAY-ADDR, for the end of a connect registered
 * at node. */
void cluster_raw_isn(ntcp_broker *b, const char *node, const uint8_t nonce[BROKER_NONCE_SIZE],
                     const struct sockaddr_storage *ext, uint32_t isn, bool spoof);
void cluster_relay_addr(ntcp_broker *b, const char *node, const broker_relay_addr *ra);

/* turn_creds.c */
int broker_turn_init(ntcp_broker *b, const char *server, const char *secret_file, uint32_t ttl_s);
void broker_turn_free(ntcp_broker *b);
/* Adds TURN-SERVER, TURN-USERNAME and TURN-PASSWORD for name (nothing when
 * the broker has no TURN server). */
void broker_turn_build(ntcp_broker *b, stun_builder *sb, const char *name);
/* Cluster: TURN-SERVER (this node's, when it has one) in a cross-node OFFER
 * or its answer; and whether a message from the other node names the same
 * server as ours: the connect then gets the relay at both nodes. */
void broker_turn_build_server(ntcp_broker *b, stun_builder *sb);
bool broker_turn_agrees(const ntcp_broker *b, const stun_msg *m);
/* RELAY-ADDR: forwarded to the other end of the connect it names (here, or
 * through its node); relay_addr_send() is the forwarded indication. */
void do_relay_addr(bsession *s, const stun_msg *m);
void relay_addr_send(bsession *to, const broker_relay_addr *ra);

#endif
