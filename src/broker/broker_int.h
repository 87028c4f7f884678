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
    uint8_t busy;                  /* a signature check is running for it */
    uint8_t nprivate;
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

/* A connect waiting for the target's answer. */
typedef struct pending {
    struct pending *prev, *next;
    bsession *req, *tgt;
    uint64_t deadline_ms;
    uint64_t sent_us;              /* when the offer left, for the target's RTT */
    uint32_t transport;            /* enum broker_transport, from the CONNECT */
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

/* spoof.c */
int spoof_init(ntcp_broker *b, bool spoof);
void spoof_free(ntcp_broker *b);
bool spoof_enabled(const ntcp_broker *b);
void rdv_add(ntcp_broker *b, bsession *req, bsession *tgt, const uint8_t nonce[BROKER_NONCE_SIZE]);
void rdv_forget(ntcp_broker *b, bsession *s);
/* The other end of the TCP connect `nonce` that s is part of, or NULL. */
bsession *rdv_other(ntcp_broker *b, const bsession *s, const uint8_t nonce[BROKER_NONCE_SIZE]);
void do_raw_isn(bsession *s, const stun_msg *m);

/* turn_creds.c */
int broker_turn_init(ntcp_broker *b, const char *server, const char *secret_file, uint32_t ttl_s);
void broker_turn_free(ntcp_broker *b);
/* Adds TURN-SERVER, TURN-USERNAME and TURN-PASSWORD for name (nothing when
 * the broker has no TURN server). */
void broker_turn_build(ntcp_broker *b, stun_builder *sb, const char *name);
/* RELAY-ADDR: forwarded to the other end of the connect it names. */
void do_relay_addr(bsession *s, const stun_msg *m);

#endif
