/*
 * session.c: the peer side of the broker protocol on a libuv loop: connect,
 * register by signing the broker's challenge, refresh, UDP keepalives,
 * reconnect with backoff when the broker goes away, offers and connects.
 */
#include "session.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "addr.h"
#include "identity.h"
#include "ntcp.h"
#include "sock_linux.h"
#include "tls.h"
#include "verify.h"

#define TICK_MS 20

enum txn_kind { T_HELLO, T_REGISTER, T_REFRESH, T_LOOKUP, T_CONNECT };

typedef struct txn {
    struct txn *next;
    uint8_t kind;
    int preset_err;               /* completes at the next tick with this error */
    uint8_t tid[STUN_TID_SIZE];
    uint64_t deadline_ms;
    union {
        ntcp_session_connect_cb connect;
        ntcp_session_lookup_cb lookup;
    } cb;
    void *arg;
} txn;

typedef struct wreq {
    uv_write_t req;
    uint8_t data[];
} wreq;

enum { C_NONE, C_CONNECTING, C_HELLO, C_SIGNED, C_REGISTERED, C_CLOSING, C_TLS, C_RESOLVING };

#define MAX_CANDS 16 /* broker addresses of one round */
#define MAX_PER_NAME 4

/* One name being resolved on the thread pool. */
typedef struct gai_req {
    uv_getaddrinfo_t req;
    ntcp_session *s;
    uint8_t ent;
} gai_req;

struct ntcp_session {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_udp_t *udp;                /* heap: an old socket's handle closes while its successor runs */
    ntcp_session_udp_sink udp_sink; /* datagrams on it that are not the broker's */
    void *udp_sink_user;
    int udp_family;               /* of udp's socket */
    uv_timer_t timer;
    int open_handles;
    bool tcp_open, has_udp, closed;
    int conn;                     /* C_* */
    int state;                    /* NTCP_SESSION_* reported */

    char name[BROKER_NAME_MAX + 1];
    char *broker_id;              /* expected, or NULL */
    EVP_PKEY *key;
    uint8_t pub[BROKER_KEY_SIZE];
    struct sockaddr_storage broker, broker_udp; /* broker: the candidate in use */
    bool udp_at_broker;           /* broker_udp follows broker */

    /* The broker list: entries as configured, candidates as resolved. A
     * round tries each candidate once, starting at a random one. */
    char (*hosts)[256];           /* nents entries, owned */
    uint16_t ports[NTCP_SESSION_MAX_BROKERS];
    size_t nents;
    struct sockaddr_storage res[NTCP_SESSION_MAX_BROKERS][MAX_PER_NAME];
    uint8_t nres[NTCP_SESSION_MAX_BROKERS];
    struct {
        struct sockaddr_storage addr;
        uint8_t ent;
    } cands[MAX_CANDS];
    size_t ncand, cur;
    bool need_resolve;            /* before the next attempt (a new round) */
    unsigned resolving;           /* uv_getaddrinfo requests in flight */
    unsigned round_fails;         /* candidates failed in a row before registering */
    bool round_failed;            /* the last IDLE ended a failed round */
    char why[512];                /* the causes of this round's failures */
    broker_addr priv[BROKER_MAX_PRIVATE];
    size_t nprivate;
    uint8_t profile[BROKER_PROFILE_MAX];
    uint32_t accept_all;          /* BROKER_ACCEPT_*: sent as ACCEPT-ALL with our own info */
    size_t profile_len;
    uint32_t refresh_cfg, refresh_ms, backoff_min, backoff_max, backoff, req_timeout;
    ntcp_session_offer_fn on_offer;
    ntcp_session_go_fn on_go;
    ntcp_session_state_fn on_state;
    ntcp_session_raw_isn_fn on_raw_isn;
    ntcp_session_relay_addr_fn on_relay_addr;
    bool broker_spoofs;           /* SPOOF in the last REGISTER answer */
    void *user;

    uint64_t next_refresh_ms, reconnect_ms, connect_deadline_ms;
    uint8_t udp_key[BROKER_UDP_KEY_SIZE];
    uint64_t udp_retry_at;        /* next keepalive while none was answered */
    uint32_t udp_retry_gap;       /* its backoff: 250 ms doubling to 5 s */
    struct sockaddr_storage public_addr, public_udp;
    unsigned registrations, resumed;
    txn *txns;

    /* The last REGISTER answer's resumption ticket and its key (a cluster's
     * nodes share the key that seals it): the next registration, at any
     * node, proves itself with them instead of a signature. */
    uint8_t ticket[BROKER_TICKET_MAX];
    size_t ticket_len;
    uint8_t resume_key[BROKER_RESUME_KEY_SIZE];
    bool resuming; /* the REGISTER in flight carries the ticket */

    /* TLS (tls_ctx non-NULL): one connection object per TCP connection. */
    SSL_CTX *tls_ctx;
    ntcp_tls *tls;
    ntcp_tls_verify tls_verify;
    uint8_t tls_pins[NTCP_TLS_MAX_PINS][NTCP_TLS_PIN_SIZE];
    char *tls_ca_file, *tls_host; /* tls_host: the name, or the broker's IP */
    char tls_err[320];
    uint8_t cbuf[16384 + 512];    /* ciphertext as read; one record at a time is enough */

    stun_framer framer;
    uint8_t rbuf[2 * BROKER_MAX_MESSAGE];
    uint8_t ubuf[VERIFY_MAX_MESSAGE + 1]; /* + 1: a longer datagram is seen as such */
};

int ntcp_parse_hostport(const char *s, struct sockaddr_storage *out)
{
    return ntcp_parse_addr(s, -1, out);
}

static uint64_t now_ms(ntcp_session *s)
{
    return uv_now(s->loop);
}

static void set_state(ntcp_session *s, int state, int err, int code)
{
    if (s->state == state && err == 0)
        return;
    s->state = state;
    if (s->on_state)
        s->on_state(s, state, err, code, s->user);
}

/* ---- transactions ---- */

static txn *txn_new(ntcp_session *s, uint8_t kind, uint32_t timeout_ms)
{
    txn *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->kind = kind;
    stun_new_tid(t->tid);
    t->deadline_ms = now_ms(s) + timeout_ms;
    t->next = s->txns;
    s->txns = t;
    return t;
}

static txn *txn_take(ntcp_session *s, const uint8_t tid[STUN_TID_SIZE])
{
    for (txn **pp = &s->txns; *pp; pp = &(*pp)->next) {
        if (memcmp((*pp)->tid, tid, STUN_TID_SIZE) == 0) {
            txn *t = *pp;
            *pp = t->next;
            return t;
        }
    }
    return NULL;
}

/* Completes a caller's transaction (connect/lookup) with an error; internal
 * ones (hello, register, refresh) are just dropped. Frees t. */
static void txn_fail(ntcp_session *s, txn *t, int err, int code)
{
    if (t->kind == T_CONNECT && t->cb.connect)
        t->cb.connect(s, err, code, NULL, t->arg);
    else if (t->kind == T_LOOKUP && t->cb.lookup)
        t->cb.lookup(s, err, code, NULL, t->arg);
    free(t);
}

/* ---- sending ---- */

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error too */
    free(req);
}

static void lose(ntcp_session *s, int err, int code);

static void send_raw(ntcp_session *s, const uint8_t *msg, size_t len)
{
    wreq *w = malloc(sizeof *w + len);
    if (!w) {
        lose(s, NTCP_ENOMEM, 0);
        return;
    }
    memcpy(w->data, msg, len);
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&s->tcp, &buf, 1, on_written) < 0) {
        free(w);
        lose(s, NTCP_ESYS, 0);
    }
}

/* Sends the TLS records the connection has made (handshake, messages,
 * alerts, KeyUpdate answers). */
static void tls_flush(ntcp_session *s)
{
    size_t n = ntcp_tls_pending(s->tls);
    if (n == 0)
        return;
    wreq *w = malloc(sizeof *w + n);
    if (!w) {
        lose(s, NTCP_ENOMEM, 0);
        return;
    }
    n = ntcp_tls_take(s->tls, w->data, n);
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&s->tcp, &buf, 1, on_written) < 0) {
        free(w);
        lose(s, NTCP_ESYS, 0);
    }
}

static void send_tcp(ntcp_session *s, const uint8_t *msg, size_t len)
{
    if (!s->tls) {
        send_raw(s, msg, len);
        return;
    }
    if (ntcp_tls_write(s->tls, msg, len) < 0) {
        lose(s, NTCP_ETLS, 0);
        return;
    }
    tls_flush(s);
}

static void build_send(ntcp_session *s, stun_builder *sb)
{
    int n = stun_build_finish(sb, NULL);
    if (n > 0)
        send_tcp(s, sb->buf, (size_t)n);
}

static void add_own_info(ntcp_session *s, stun_builder *sb)
{
    /* A private address given without a port gets the session's local TCP
     * port: the one a same-LAN peer connects to (PLAN_LOCAL_SESSION). */
    struct sockaddr_storage local;
    uint16_t lport = ntcp_session_local_addr(s, &local) == 0 ? ntcp_sa_port(&local) : 0;
    for (size_t i = 0; i < s->nprivate; i++) {
        broker_addr pa = s->priv[i];
        if (pa.port == 0)
            pa.port = lport;
        broker_build_baddr(sb, BROKER_ATTR_PRIVATE_ADDR, &pa);
    }
    if (s->profile_len)
        stun_build_attr(sb, BROKER_ATTR_PROFILE, s->profile, s->profile_len);
    stun_build_u32(sb, BROKER_ATTR_ACCEPT_ALL, s->accept_all);
}

static void send_hello(ntcp_session *s)
{
    txn *t = txn_new(s, T_HELLO, s->req_timeout);
    if (!t) {
        lose(s, NTCP_ENOMEM, 0);
        return;
    }
    uint8_t buf[256];
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, t->tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, s->name, strlen(s->name));
    stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, s->pub, sizeof s->pub);
    stun_build_u32(&sb, BROKER_ATTR_VERSION, BROKER_PROTO_VERSION);
    s->conn = C_HELLO;
    build_send(s, &sb);
}

static void send_udp_keepalive(ntcp_session *s)
{
    if (!s->has_udp)
        return;
    uint8_t buf[256], tid[STUN_TID_SIZE];
    stun_builder sb;
    stun_new_tid(tid);
    stun_build_init(&sb, buf, sizeof buf, BROKER_KEEPALIVE, STUN_REQUEST, tid, false);
    stun_build_string(&sb, STUN_ATTR_USERNAME, s->name);
    stun_build_integrity(&sb, s->udp_key, sizeof s->udp_key);
    int n = stun_build_finish(&sb, NULL);
    if (n > 0) {
        uv_buf_t ub = uv_buf_init((char *)buf, (unsigned)n);
        uv_udp_try_send(s->udp, &ub, 1, (struct sockaddr *)&s->broker_udp);
    }
}

/* A REFRESH; with own_info, carrying the private addresses and the profile
 * again (the broker stores them: the next CONNECT-GO has them). */
static void send_refresh_ex(ntcp_session *s, bool own_info)
{
    txn *t = txn_new(s, T_REFRESH, s->req_timeout);
    if (!t) {
        lose(s, NTCP_ENOMEM, 0);
        return;
    }
    uint8_t buf[BROKER_MAX_MESSAGE];
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, BROKER_REFRESH, STUN_REQUEST, t->tid, false);
    if (own_info)
        add_own_info(s, &sb);
    build_send(s, &sb);
    send_udp_keepalive(s);
}

static void send_refresh(ntcp_session *s)
{
    send_refresh_ex(s, false);
}

int ntcp_session_set_profile(ntcp_session *s, const uint8_t *profile, size_t len)
{
    if (!s || len > sizeof s->profile || (len && !profile))
        return NTCP_EINVAL;
    if (len)
        memcpy(s->profile, profile, len);
    s->profile_len = len;
    /* Registered: now, on the same stream as what follows, so that the
     * broker has it before any later CONNECT or OFFER answer of ours. Else
     * the next REGISTER carries it. */
    if (s->conn == C_REGISTERED)
        send_refresh_ex(s, true);
    return 0;
}

int ntcp_session_set_accept_all(ntcp_session *s, uint32_t transports)
{
    if (!s || (transports & ~(BROKER_ACCEPT_TCP | BROKER_ACCEPT_UDP)))
        return NTCP_EINVAL;
    bool changed = s->accept_all != transports;
    s->accept_all = transports;
    if (changed && s->conn == C_REGISTERED)
        send_refresh_ex(s, true);
    return 0;
}

/* ---- connection life ---- */

static void session_free(ntcp_session *s)
{
    OPENSSL_cleanse(s->resume_key, sizeof s->resume_key);
    free(s->hosts);
    ntcp_tls_free(s->tls);
    SSL_CTX_free(s->tls_ctx);
    free(s->tls_ca_file);
    free(s->tls_host);
    free(s->broker_id);
    free(s);
}

/* The session goes when the application closed it and nothing refers to
 * it any more: handles closed, name resolutions returned. */
static void maybe_free(ntcp_session *s)
{
    if (s->closed && s->open_handles == 0 && s->resolving == 0)
        session_free(s);
}

static void on_tcp_closed(uv_handle_t *h)
{
    ntcp_session *s = h->data;
    /* Freed here, not in lose(): a read callback may still be walking it. */
    ntcp_tls_free(s->tls);
    s->tls = NULL;
    s->tcp_open = false;
    s->open_handles--;
    if (s->closed) {
        maybe_free(s);
        return;
    }
    if (!s->closed)
        s->conn = C_NONE;
}

static uint32_t backoff_cap(ntcp_session *s)
{
    uint32_t cap = s->backoff_max;
    /* Back within one keepalive period after the broker returns. */
    if (s->refresh_ms && s->refresh_ms < cap)
        cap = s->refresh_ms;
    return cap < s->backoff_min ? s->backoff_min : cap;
}

/* Adds "where: what" to the causes of this round's failures. */
static void note_cause(ntcp_session *s, const char *where, const char *what)
{
    size_t n = strlen(s->why);
    if (n + 3 >= sizeof s->why)
        return;
    snprintf(s->why + n, sizeof s->why - n, "%s%s: %s", n ? "; " : "", where, what);
}

static void note_cand_cause(ntcp_session *s, const char *what)
{
    char a[64];
    if (s->ncand == 0)
        return;
    note_cause(s, ntcp_addr_str((struct sockaddr *)&s->cands[s->cur].addr, a, sizeof a), what);
}

/* The session ended: fail what waits on it, then the next candidate at
 * once (failover, or the rest of a round), or after a backoff the next
 * round. why: the cause, for ntcp_session_last_error() (NULL: err's). */
static void lose_why(ntcp_session *s, int err, int code, const char *why)
{
    if (s->conn == C_CLOSING || s->conn == C_NONE)
        return;
    bool registered = s->conn == C_REGISTERED, resolving = s->conn == C_RESOLVING;
    if (s->closed && s->tls && ntcp_tls_established(s->tls)) {
        /* Closed by the application: close_notify, best effort, so the
         * broker sees an orderly end (RFC 8446 6.1). */
        uint8_t notify[128];
        uv_os_fd_t fd;
        ntcp_tls_shutdown(s->tls);
        size_t n = ntcp_tls_take(s->tls, notify, sizeof notify);
        /* send(), not a libuv write: MSG_NOSIGNAL, a broker gone already
         * must not raise SIGPIPE in the application. */
        if (n && uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0)
            (void)!send(fd, notify, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    s->conn = C_CLOSING;
    txn *t = s->txns;
    s->txns = NULL;
    while (t) {
        txn *next = t->next;
        txn_fail(s, t, NTCP_ECLOSED, 0);
        t = next;
    }
    if (s->tcp_open && !uv_is_closing((uv_handle_t *)&s->tcp))
        uv_close((uv_handle_t *)&s->tcp, on_tcp_closed);
    else if (!s->tcp_open)
        s->conn = C_NONE; /* nothing to wait for (still resolving, or no socket) */
    if (s->closed)
        return;
    /* A broker that refused us (a code) or whose TLS failed answered: that
     * is its own report. Anything else before registering means this
     * candidate does not work: the next one is tried at once, and a round
     * in which none worked is reported as such. */
    bool transport = !registered && code == 0 && err != NTCP_ETLS && err != NTCP_ECERT;
    bool next_now = false;
    s->round_failed = false;
    if (registered) {
        s->round_fails = 0;
        s->why[0] = '\0';
        next_now = s->ncand > 1; /* failover: the next broker, now */
    } else if (transport) {
        if (!resolving)
            note_cand_cause(s, why ? why : ntcp_strerror(err));
        if (++s->round_fails < s->ncand) {
            next_now = true;
        } else {
            s->round_failed = true;
            s->round_fails = 0;
            s->need_resolve = true; /* names may point elsewhere now */
        }
    } else {
        note_cand_cause(s, why ? why : ntcp_strerror(err));
    }
    if (s->ncand > 1)
        s->cur = (s->cur + 1) % s->ncand;
    if (next_now) {
        s->reconnect_ms = now_ms(s);
        set_state(s, NTCP_SESSION_IDLE, registered ? err : 0, registered ? code : 0);
        return;
    }
    uint32_t jitter = 0;
    RAND_bytes((unsigned char *)&jitter, sizeof jitter);
    uint32_t wait = s->backoff + (s->backoff ? jitter % (s->backoff / 4 + 1) : 0);
    s->reconnect_ms = now_ms(s) + wait;
    s->backoff = s->backoff * 2 > backoff_cap(s) ? backoff_cap(s) : s->backoff * 2;
    set_state(s, NTCP_SESSION_IDLE, err, code);
}

static void lose(ntcp_session *s, int err, int code)
{
    lose_why(s, err, code, NULL);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    ntcp_session *s = h->data;
    if (s->tls) {
        buf->base = (char *)s->cbuf;
        buf->len = sizeof s->cbuf;
        return;
    }
    uint8_t *p;
    size_t avail;
    stun_framer_space(&s->framer, &p, &avail);
    buf->base = (char *)p;
    buf->len = avail;
}

static void on_connected(uv_connect_t *req, int status)
{
    ntcp_session *s = req->data;
    if (s->conn != C_CONNECTING)
        return; /* given up already */
    if (status < 0) {
        lose_why(s, NTCP_EUNREACHABLE, 0, uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    stun_framer_init(&s->framer, s->rbuf, sizeof s->rbuf);
    if (s->tls_ctx) {
        /* REGISTER waits for the handshake: names and addresses only ever
         * travel encrypted. */
        /* The certificate must name the broker as configured: the name
         * given for TLS, else this candidate's entry (a name, or an
         * address). */
        const char *host = s->tls_host ? s->tls_host : s->hosts[s->cands[s->cur].ent];
        if (!(s->tls = ntcp_tls_new(s->tls_ctx, false, host, &s->tls_verify))) {
            lose(s, NTCP_ENOMEM, 0);
            return;
        }
        s->conn = C_TLS;
    }
    if (uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read) < 0) {
        lose(s, NTCP_ESYS, 0);
        return;
    }
    if (s->tls) {
        ntcp_tls_read(s->tls, NULL, 0); /* makes the ClientHello */
        tls_flush(s);
    } else {
        send_hello(s);
    }
}

static int udp_open(ntcp_session *s);
static void on_udp_closed(uv_handle_t *h);

static void start_connect(ntcp_session *s)
{
    if (s->tcp_open)
        return; /* the old handle is still closing: next tick */
    if (s->ncand == 0)
        return;
    s->broker = s->cands[s->cur].addr;
    if (s->udp_at_broker) {
        /* Keepalives go where this broker listens; a socket of its family. */
        s->broker_udp = s->broker;
        if (!s->has_udp || !s->udp || s->udp_family != s->broker.ss_family) {
            if (s->has_udp && s->udp)
                uv_close((uv_handle_t *)s->udp, on_udp_closed);
            s->udp = NULL;
            if (udp_open(s) < 0) {
                if (s->has_udp && s->udp)
                    uv_close((uv_handle_t *)s->udp, on_udp_closed);
                s->udp = NULL;
                s->has_udp = false;
            }
        }
    }
    /* The socket exists before connect() so that it can share its port:
     * traversal attempts bind the session's port (PLAN_LOCAL_SESSION), whose
     * mapping the broker has seen, with SO_REUSEADDR and SO_REUSEPORT, and
     * the kernel lets them only when this socket set both too. */
    if (uv_tcp_init_ex(s->loop, &s->tcp, s->broker.ss_family) < 0)
        return;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0)
        ntcp_sock_reuse(fd, NTCP_SOCK_REUSE);
    s->tcp.data = s;
    s->tcp_open = true;
    s->open_handles++;
    s->conn = C_CONNECTING;
    s->connect_deadline_ms = now_ms(s) + s->req_timeout;
    s->creq.data = s;
    set_state(s, NTCP_SESSION_CONNECTING, 0, 0);
    int rc = uv_tcp_connect(&s->creq, &s->tcp, (struct sockaddr *)&s->broker, on_connected);
    if (rc < 0)
        lose_why(s, NTCP_EUNREACHABLE, 0, uv_strerror(rc));
}

/* ---- the broker list ---- */

int ntcp_broker_list_parse(const char *list, char (*hosts)[256], uint16_t *ports, size_t max)
{
    if (!list)
        return NTCP_EINVAL;
    size_t n = 0, len;
    const char *p = list, *at;
    while ((at = ntcp_list_next(&p, &len))) {
        char item[300];
        if (n == max || len >= sizeof item)
            return NTCP_EINVAL;
        memcpy(item, at, len);
        item[len] = '\0';
        if (ntcp_split_host_port(item, hosts[n], 256, &ports[n], 0) < 0 || ports[n] == 0 ||
            !hosts[n][0])
            return NTCP_EINVAL; /* a broker has no default port: say which */
        n++;
    }
    return n ? (int)n : NTCP_EINVAL;
}

/* Candidates in entry order, IPv4 before IPv6 within a name (the planner
 * works on IPv4 behaviour), starting at a random one so that peers given
 * the same list spread over its brokers. */
static void build_candidates(ntcp_session *s)
{
    s->ncand = 0;
    for (size_t e = 0; e < s->nents; e++)
        for (int pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < s->nres[e] && s->ncand < MAX_CANDS; i++) {
                int want = pass == 0 ? AF_INET : AF_INET6;
                if (s->res[e][i].ss_family != want)
                    continue;
                s->cands[s->ncand].addr = s->res[e][i];
                s->cands[s->ncand].ent = (uint8_t)e;
                s->ncand++;
            }
    uint32_t r = 0;
    RAND_bytes((unsigned char *)&r, sizeof r);
    s->cur = s->ncand ? r % s->ncand : 0;
}

static void resolved_all(ntcp_session *s)
{
    build_candidates(s);
    if (s->ncand == 0) {
        lose(s, NTCP_EUNREACHABLE, 0); /* causes noted per name */
        return;
    }
    s->conn = C_NONE;
    start_connect(s);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    gai_req *g = (gai_req *)req;
    ntcp_session *s = g->s;
    size_t e = g->ent;
    free(g);
    s->resolving--;
    if (!s->closed && s->conn == C_RESOLVING) {
        if (status < 0) {
            char what[160];
            snprintf(what, sizeof what, "cannot resolve: %s", uv_strerror(status));
            note_cause(s, s->hosts[e], what);
        }
        for (const struct addrinfo *a = status == 0 ? res : NULL; a && s->nres[e] < MAX_PER_NAME;
             a = a->ai_next) {
            if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) ||
                a->ai_addrlen > sizeof(struct sockaddr_storage))
                continue;
            struct sockaddr_storage *ss = &s->res[e][s->nres[e]++];
            memset(ss, 0, sizeof *ss);
            memcpy(ss, a->ai_addr, a->ai_addrlen);
            ntcp_sa_set_port(ss, s->ports[e]);
        }
    }
    uv_freeaddrinfo(res);
    if (s->closed) {
        maybe_free(s);
        return;
    }
    if (s->resolving == 0 && s->conn == C_RESOLVING)
        resolved_all(s);
}

/* A new round: the names resolved again (on the thread pool: a slow DNS
 * server must not stall the loop), addresses taken as they are. */
static void start_resolve(ntcp_session *s)
{
    s->need_resolve = false;
    s->round_fails = 0;
    s->why[0] = '\0';
    s->conn = C_RESOLVING;
    set_state(s, NTCP_SESSION_CONNECTING, 0, 0);
    for (size_t e = 0; e < s->nents; e++) {
        s->nres[e] = 0;
        char item[300];
        snprintf(item, sizeof item, strchr(s->hosts[e], ':') ? "[%s]:%u" : "%s:%u", s->hosts[e],
                 s->ports[e]);
        if (ntcp_parse_addr(item, -1, &s->res[e][0]) == 0) {
            s->nres[e] = 1;
            continue;
        }
        gai_req *g = malloc(sizeof *g);
        if (!g) {
            note_cause(s, s->hosts[e], "out of memory");
            continue;
        }
        g->s = s;
        g->ent = (uint8_t)e;
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        int rc = uv_getaddrinfo(s->loop, &g->req, on_resolved, s->hosts[e], NULL, &hints);
        if (rc < 0) {
            free(g);
            note_cause(s, s->hosts[e], uv_strerror(rc));
            continue;
        }
        s->resolving++;
    }
    if (s->resolving == 0)
        resolved_all(s);
}

/* ---- incoming messages ---- */

static void on_challenge(ntcp_session *s, const stun_msg *m)
{
    uint8_t chal[BROKER_CHALLENGE_SIZE];
    const char *id;
    size_t idlen;
    if (broker_get_fixed(m, BROKER_ATTR_CHALLENGE, chal, sizeof chal) < 0 ||
        stun_get_string(m, BROKER_ATTR_BROKER_ID, &id, &idlen) < 0) {
        lose(s, NTCP_EPROTO, 0);
        return;
    }
    /* Sign only for the broker we meant to register with: a signature is
     * bound to the broker's identity, so it is worthless to another one. */
    if (s->broker_id && (strlen(s->broker_id) != idlen || memcmp(s->broker_id, id, idlen) != 0)) {
        lose(s, NTCP_EPROTO, BROKER_ERR_FORBIDDEN);
        return;
    }
    uint8_t tr[BROKER_TRANSCRIPT_MAX], sig[BROKER_SIG_SIZE], proof[BROKER_PROOF_SIZE];
    /* With a ticket: its proof over this challenge, no signature (the
     * broker saves the verification); a refused ticket brings a new
     * challenge, which is then signed. */
    s->resuming = s->ticket_len > 0 &&
                  broker_resume_proof(proof, s->resume_key, id, idlen, chal, s->name,
                                      strlen(s->name), s->pub) == 0;
    int tl = broker_transcript(tr, sizeof tr, id, idlen, chal, s->name, strlen(s->name), s->pub);
    if (tl < 0 || (!s->resuming && ntcp_identity_sign(s->key, tr, (size_t)tl, sig) < 0)) {
        lose(s, NTCP_EPROTO, 0);
        return;
    }
    txn *t = txn_new(s, T_REGISTER, s->req_timeout);
    if (!t) {
        lose(s, NTCP_ENOMEM, 0);
        return;
    }
    uint8_t buf[BROKER_MAX_MESSAGE];
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, BROKER_REGISTER, STUN_REQUEST, t->tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, s->name, strlen(s->name));
    stun_build_attr(&sb, BROKER_ATTR_PUBLIC_KEY, s->pub, sizeof s->pub);
    stun_build_attr(&sb, BROKER_ATTR_CHALLENGE, chal, sizeof chal);
    if (s->resuming) {
        stun_build_attr(&sb, BROKER_ATTR_TICKET, s->ticket, s->ticket_len);
        stun_build_attr(&sb, BROKER_ATTR_PROOF, proof, sizeof proof);
    } else {
        stun_build_attr(&sb, BROKER_ATTR_SIGNATURE, sig, sizeof sig);
    }
    add_own_info(s, &sb);
    s->conn = C_SIGNED;
    build_send(s, &sb);
}

static void on_registered(ntcp_session *s, const stun_msg *m)
{
    uint32_t expiry = 60;
    stun_get_u32(m, BROKER_ATTR_EXPIRY, &expiry);
    if (expiry == 0)
        expiry = 1;
    stun_get_addr(m, STUN_ATTR_XOR_MAPPED_ADDRESS, &s->public_addr);
    if (broker_get_fixed(m, BROKER_ATTR_UDP_KEY, s->udp_key, sizeof s->udp_key) < 0)
        memset(s->udp_key, 0, sizeof s->udp_key);
    const stun_attr *tk = stun_find(m, BROKER_ATTR_TICKET);
    if (tk && broker_get_fixed(m, BROKER_ATTR_RESUME_KEY, s->resume_key, sizeof s->resume_key) == 0) {
        memcpy(s->ticket, stun_attr_value(m, tk), tk->len);
        s->ticket_len = tk->len;
    } else {
        s->ticket_len = 0; /* a broker without tickets: sign next time */
    }
    if (s->resuming)
        s->resumed++;
    s->resuming = false;
    uint32_t spoof = 0;
    stun_get_u32(m, BROKER_ATTR_SPOOF, &spoof);
    s->broker_spoofs = spoof == 1;
    s->refresh_ms = s->refresh_cfg ? s->refresh_cfg : expiry * 1000 / 3;
    s->next_refresh_ms = now_ms(s) + s->refresh_ms;
    s->backoff = s->backoff_min;
    s->conn = C_REGISTERED;
    s->registrations++;
    /* A new registration is a new broker state (it may have restarted): the
     * UDP mapping counts as unknown until this keepalive is answered, and is
     * retried until then (on_tick). */
    memset(&s->public_udp, 0, sizeof s->public_udp);
    s->udp_retry_at = 0;
    send_udp_keepalive(s);
    set_state(s, NTCP_SESSION_REGISTERED, 0, 0);
}

static void on_offer(ntcp_session *s, const stun_msg *m)
{
    broker_peer_info from;
    bool ok = broker_parse_peer_info(m, &from) == 0;
    if (ok && s->on_offer)
        ok = s->on_offer(s, &from, s->user);
    if (s->conn != C_REGISTERED)
        return; /* the callback closed the session */
    uint8_t buf[128];
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, BROKER_OFFER, ok ? STUN_SUCCESS : STUN_ERROR, m->tid, false);
    if (!ok)
        stun_build_error(&sb, BROKER_ERR_DECLINED, "Declined");
    build_send(s, &sb);
}

static void on_response(ntcp_session *s, const stun_msg *m)
{
    txn *t = txn_take(s, m->tid);
    if (!t)
        return; /* timed out already */
    int code = 0;
    if (m->cls == STUN_ERROR)
        broker_get_error(m, &code, NULL, NULL);
    switch (t->kind) {
    case T_HELLO:
        free(t);
        if (code == BROKER_ERR_UNAUTHORIZED)
            on_challenge(s, m);
        else
            lose(s, NTCP_EPROTO, code);
        return;
    case T_REGISTER:
        free(t);
        if (m->cls == STUN_SUCCESS) {
            on_registered(s, m);
        } else if (s->resuming) {
            /* The ticket was refused (expired, another cluster's, a key
             * since replaced): forgotten, and the new challenge signed. */
            s->resuming = false;
            s->ticket_len = 0;
            OPENSSL_cleanse(s->resume_key, sizeof s->resume_key);
            if (code == BROKER_ERR_UNAUTHORIZED)
                on_challenge(s, m);
            else
                lose(s, NTCP_EPROTO, code);
        } else {
            lose(s, NTCP_EPROTO, code);
        }
        return;
    case T_REFRESH:
        free(t);
        if (m->cls == STUN_SUCCESS)
            stun_get_addr(m, STUN_ATTR_XOR_MAPPED_ADDRESS, &s->public_addr);
        else if (code != BROKER_ERR_RATE_LIMITED)
            lose(s, NTCP_EPROTO, code);
        return;
    case T_LOOKUP: {
        broker_peer_info p;
        if (m->cls == STUN_SUCCESS && broker_parse_peer_info(m, &p) == 0)
            t->cb.lookup(s, 0, 0, &p, t->arg);
        else
            t->cb.lookup(s, code == BROKER_ERR_UNKNOWN_USER ? NTCP_ENOTFOUND : NTCP_EPROTO, code,
                         NULL, t->arg);
        free(t);
        return;
    }
    case T_CONNECT: {
        broker_go g;
        if (m->cls == STUN_SUCCESS && broker_parse_go(m, &g) == 0)
            t->cb.connect(s, 0, 0, &g, t->arg);
        else
            t->cb.connect(s, code == BROKER_ERR_UNKNOWN_USER ? NTCP_ENOTFOUND : NTCP_EPROTO, code,
                          NULL, t->arg);
        free(t);
        return;
    }
    }
}

static void on_message(ntcp_session *s, const uint8_t *data, size_t len)
{
    stun_msg m;
    uint16_t unknown[STUN_MAX_UNKNOWN];
    size_t nunknown;
    if (stun_parse(&m, data, len) < 0 || broker_validate(&m, unknown, STUN_MAX_UNKNOWN, &nunknown) < 0) {
        lose(s, NTCP_EPROTO, 0);
        return;
    }
    if (m.cls == STUN_SUCCESS || m.cls == STUN_ERROR) {
        on_response(s, &m);
        return;
    }
    if (s->conn != C_REGISTERED)
        return;
    if (m.method == BROKER_UNREGISTER && m.cls == STUN_INDICATION) {
        /* Replaced by another session with our key, or no longer
         * authorized: retry only slowly, so two holders of one identity do
         * not take the name from each other in a loop. */
        uint32_t code = 0;
        stun_get_u32(&m, BROKER_ATTR_DETAIL, &code);
        s->backoff = backoff_cap(s);
        lose(s, NTCP_EPROTO, (int)code);
        return;
    }
    if (m.method == BROKER_OFFER && m.cls == STUN_REQUEST) {
        on_offer(s, &m);
    } else if (m.method == BROKER_GO && m.cls == STUN_INDICATION) {
        broker_go g;
        if (broker_parse_go(&m, &g) == 0 && s->on_go)
            s->on_go(s, &g, s->user);
    } else if (m.method == BROKER_RAW_ISN && m.cls == STUN_INDICATION && s->on_raw_isn) {
        uint8_t nonce[BROKER_NONCE_SIZE];
        struct sockaddr_storage ext;
        uint32_t isn;
        if (broker_get_fixed(&m, BROKER_ATTR_SESSION_NONCE, nonce, sizeof nonce) == 0 &&
            broker_get_addr(&m, BROKER_ATTR_PUBLIC_ADDR, &ext) == 0 &&
            stun_get_u32(&m, BROKER_ATTR_ISN, &isn) == 0)
            s->on_raw_isn(s, nonce, &ext, isn, s->user);
    } else if (m.method == BROKER_RELAY_ADDR && m.cls == STUN_INDICATION && s->on_relay_addr) {
        broker_relay_addr ra;
        if (broker_parse_relay_addr(&m, &ra) == 0)
            s->on_relay_addr(s, ra.nonce, &ra.relayed, ra.why, s->user);
    }
}

/* Hands the whole messages the framer holds to on_message. */
static void take_messages(ntcp_session *s)
{
    const uint8_t *msg;
    size_t len;
    int rc;
    while (s->conn != C_CLOSING && (rc = stun_framer_next(&s->framer, &msg, &len)) != 0) {
        if (rc < 0) {
            lose(s, NTCP_EPROTO, 0);
            return;
        }
        on_message(s, msg, len);
    }
}

static void tls_failed(ntcp_session *s, int err)
{
    snprintf(s->tls_err, sizeof s->tls_err, "%s", ntcp_tls_error(s->tls));
    /* A certificate we refuse will not change in a second: retry slowly. */
    if (err == NTCP_ECERT)
        s->backoff = backoff_cap(s);
    lose(s, err, 0);
}

/* Ciphertext in; the handshake, then plaintext into the framer. */
static void on_read_tls(ntcp_session *s, const uint8_t *p, size_t n)
{
    if (s->conn == C_TLS && n >= 8 && p[0] < 0x40 && p[4] == 0x21 && p[5] == 0x12 &&
        p[6] == 0xA4 && p[7] == 0x42) {
        /* A STUN header (magic cookie) where the ServerHello should be. */
        snprintf(s->tls_err, sizeof s->tls_err, "the broker answered in plain TCP: no TLS on this port");
        lose(s, NTCP_ETLS, 0);
        return;
    }
    if (ntcp_tls_feed(s->tls, p, n) < 0) {
        lose(s, NTCP_ENOMEM, 0);
        return;
    }
    while (s->conn != C_CLOSING) {
        uint8_t *space;
        size_t avail;
        stun_framer_space(&s->framer, &space, &avail);
        if (avail == 0) {
            lose(s, NTCP_EPROTO, 0);
            return;
        }
        int rc = ntcp_tls_read(s->tls, space, avail);
        tls_flush(s);
        if (s->conn == C_TLS && rc >= 0 && ntcp_tls_established(s->tls)) {
            s->tls_err[0] = '\0';
            send_hello(s);
        }
        if (rc == 0 || s->conn == C_CLOSING)
            return;
        if (rc < 0) {
            tls_failed(s, rc);
            return;
        }
        stun_framer_commit(&s->framer, (size_t)rc);
        take_messages(s);
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    ntcp_session *s = st->data;
    if (nread < 0) {
        lose_why(s, NTCP_ECLOSED, 0, nread == UV_EOF ? "closed the connection" : uv_strerror((int)nread));
        return;
    }
    if (s->tls) {
        on_read_tls(s, (const uint8_t *)buf->base, (size_t)nread);
        return;
    }
    /* A TLS record (alert or handshake, version 3.x) where the answer to
     * REGISTER should be: the broker speaks TLS and we do not. */
    const uint8_t *b = (const uint8_t *)buf->base;
    if (s->conn == C_HELLO && stun_framer_pending(&s->framer) == 0 && nread >= 2 &&
        (b[0] == 0x15 || b[0] == 0x16) && b[1] == 0x03) {
        snprintf(s->tls_err, sizeof s->tls_err, "the broker speaks TLS: turn TLS on");
        lose(s, NTCP_ETLS, 0);
        return;
    }
    stun_framer_commit(&s->framer, (size_t)nread);
    take_messages(s);
}

static void on_udp(uv_udp_t *u, ssize_t nread, const uv_buf_t *buf, const struct sockaddr *from,
                   unsigned flags)
{
    ntcp_session *s = u->data;
    if (nread < 0 || !from)
        return;
    const uint8_t *b = (const uint8_t *)buf->base;
    stun_msg m;
    /* The broker's answer to a keepalive (whatever its source address: a
     * broker on a wildcard address may answer from another one); its
     * integrity is what makes it the broker's. */
    if (nread > 0 && !(flags & UV_UDP_PARTIAL) && stun_parse(&m, b, (size_t)nread) == 0 &&
        m.method == BROKER_KEEPALIVE) {
        if (s->conn == C_REGISTERED && m.cls == STUN_SUCCESS &&
            stun_check_integrity(&m, s->udp_key, sizeof s->udp_key, false) == 0)
            stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &s->public_udp);
        return;
    }
    /* A peer's: the punches sharing this socket (ntcp_session_share_udp()).
     * A truncated one is passed on as longer than the buffer, for the sink
     * to drop. */
    if (s->udp_sink) {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof ss);
        memcpy(&ss, from, from->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                       : sizeof(struct sockaddr_in));
        size_t n = (flags & UV_UDP_PARTIAL) ? sizeof s->ubuf : (size_t)nread;
        s->udp_sink(s->udp_sink_user, &ss, b, n);
    }
}

static void on_udp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    ntcp_session *s = h->data;
    buf->base = (char *)s->ubuf;
    buf->len = sizeof s->ubuf;
}

/* ---- the clock ---- */

static void on_tick(uv_timer_t *timer)
{
    ntcp_session *s = timer->data;
    uint64_t now = now_ms(s);
    /* Deadlines. A caller's request times out alone; an unanswered
     * registration or refresh means the broker is gone. */
    for (txn **pp = &s->txns; *pp;) {
        txn *t = *pp;
        if (t->preset_err == 0 && t->deadline_ms > now) {
            pp = &t->next;
            continue;
        }
        *pp = t->next;
        if (t->kind == T_CONNECT || t->kind == T_LOOKUP) {
            txn_fail(s, t, t->preset_err ? t->preset_err : NTCP_ETIMEDOUT, 0);
        } else {
            const char *why = t->kind == T_REFRESH ? "no answer to REFRESH" : "no answer to REGISTER";
            free(t);
            lose_why(s, NTCP_ETIMEDOUT, 0, why);
            return;
        }
    }
    switch (s->conn) {
    case C_NONE:
        if (now >= s->reconnect_ms) {
            if (s->need_resolve)
                start_resolve(s);
            else
                start_connect(s);
        }
        break;
    case C_CONNECTING:
    case C_TLS: /* a broker that never finishes the handshake */
        if (now >= s->connect_deadline_ms)
            lose_why(s, NTCP_ETIMEDOUT, 0,
                     s->conn == C_TLS ? "no TLS handshake in time" : "no answer to the TCP connect");
        break;
    case C_REGISTERED:
        if (s->has_udp && !s->public_udp.ss_family && now >= s->udp_retry_at) {
            /* No keepalive answered yet: one was lost, and without the
             * mapping no UDP connect can be punched. Again, with backoff. */
            if (s->udp_retry_at) {
                s->udp_retry_gap = s->udp_retry_gap ? s->udp_retry_gap * 2 : 250;
                if (s->udp_retry_gap > 5000)
                    s->udp_retry_gap = 5000;
                send_udp_keepalive(s);
            } else {
                s->udp_retry_gap = 250; /* the one sent at registration is in flight */
            }
            s->udp_retry_at = now + s->udp_retry_gap;
        }
        if (now >= s->next_refresh_ms) {
            s->next_refresh_ms = now + s->refresh_ms;
            send_refresh(s);
        }
        break;
    }
}

/* ---- the UDP keepalive socket ---- */

static void on_udp_closed(uv_handle_t *h)
{
    ntcp_session *s = h->data;
    free(h);
    s->open_handles--;
    maybe_free(s);
}

/* Opens the UDP keepalive socket on an ephemeral port, then sets
 * SO_REUSEPORT so that a punch can bind a socket of its own there and
 * connect it (ntcp_session_share_udp()). Bound first without it: a port-0
 * bind with SO_REUSEPORT may be given a port another such socket of this
 * user holds (another context's), and the two would share its datagrams.
 * Never SO_REUSEADDR: for UDP it would let any user bind the port too.
 * has_udp is set as soon as a handle exists, so that close() closes it. */
static int udp_open(ntcp_session *s)
{
    struct sockaddr_storage any;
    memset(&any, 0, sizeof any);
    any.ss_family = s->broker_udp.ss_family;
    uv_udp_t *u = malloc(sizeof *u);
    if (!u || uv_udp_init(s->loop, u) < 0) {
        free(u);
        s->has_udp = false;
        return NTCP_ESYS;
    }
    u->data = s;
    s->udp = u;
    s->udp_family = any.ss_family;
    s->open_handles++;
    s->has_udp = true;
    int fd = ntcp_sock_open(any.ss_family, SOCK_DGRAM, 0, &any);
    if (fd < 0)
        return NTCP_ESYS;
    if (ntcp_sock_reuse(fd, NTCP_SOCK_REUSEPORT) < 0) {
        close(fd);
        return NTCP_ESYS;
    }
    if (uv_udp_open(u, fd) < 0) {
        close(fd);
        return NTCP_ESYS;
    }
    if (uv_udp_recv_start(u, on_udp_alloc, on_udp) < 0)
        return NTCP_ESYS;
    return 0;
}

int ntcp_session_share_udp(ntcp_session *s, int *fd, struct sockaddr_storage *local,
                           struct sockaddr_storage *public_udp)
{
    *fd = -1;
    if (!s || s->closed || !s->has_udp || !s->udp)
        return NTCP_ENOTFOUND;
    uv_os_fd_t ofd;
    if (uv_fileno((uv_handle_t *)s->udp, &ofd) < 0)
        return NTCP_ESYS;
    int nfd = fcntl(ofd, F_DUPFD_CLOEXEC, 0);
    if (nfd < 0)
        return NTCP_ESYS;
    if (local) {
        socklen_t len = sizeof *local;
        memset(local, 0, sizeof *local);
        getsockname(nfd, (struct sockaddr *)local, &len);
    }
    if (public_udp)
        *public_udp = s->public_udp;
    *fd = nfd;
    return 0;
}

void ntcp_session_set_udp_sink(ntcp_session *s, ntcp_session_udp_sink fn, void *user)
{
    s->udp_sink = fn;
    s->udp_sink_user = user;
}

/* ---- API ---- */

static int tls_setup(ntcp_session *s, const ntcp_session_config *cfg)
{
    /* "Check nothing" together with something to check is a mistake. */
    if (cfg->tls_insecure && (cfg->tls_ca_file || cfg->tls_pin))
        return NTCP_EINVAL;
    s->tls_verify.insecure = cfg->tls_insecure;
    if (cfg->tls_pin) {
        int n = ntcp_tls_parse_pins(cfg->tls_pin, s->tls_pins, NTCP_TLS_MAX_PINS);
        if (n < 0)
            return NTCP_EINVAL;
        s->tls_verify.pins = (const uint8_t(*)[NTCP_TLS_PIN_SIZE])s->tls_pins;
        s->tls_verify.npins = (size_t)n;
    }
    if (cfg->tls_ca_file && !(s->tls_ca_file = strdup(cfg->tls_ca_file)))
        return NTCP_ENOMEM;
    s->tls_verify.ca_file = s->tls_ca_file;
    /* No name given: each candidate's entry (its name, or its address). */
    if (cfg->tls_host && !(s->tls_host = strdup(cfg->tls_host)))
        return NTCP_ENOMEM;
    char why[320];
    if (!(s->tls_ctx = ntcp_tls_client_ctx(&s->tls_verify, why, sizeof why))) {
        snprintf(s->tls_err, sizeof s->tls_err, "%s", why);
        return NTCP_ECONFIG;
    }
    return 0;
}

int ntcp_session_start(uv_loop_t *loop, const ntcp_session_config *cfg, ntcp_session **out)
{
    *out = NULL;
    if (!loop || !cfg || !cfg->name || !cfg->key || !cfg->broker ||
        !broker_name_valid(cfg->name, strlen(cfg->name)) || cfg->nprivate > BROKER_MAX_PRIVATE ||
        cfg->profile_len > BROKER_PROFILE_MAX)
        return NTCP_EINVAL;
    ntcp_session *s = calloc(1, sizeof *s);
    if (!s)
        return NTCP_ENOMEM;
    s->loop = loop;
    s->hosts = calloc(NTCP_SESSION_MAX_BROKERS, sizeof *s->hosts);
    int n = s->hosts ? ntcp_broker_list_parse(cfg->broker, s->hosts, s->ports,
                                              NTCP_SESSION_MAX_BROKERS)
                     : NTCP_ENOMEM;
    if (n < 0 || (cfg->broker_udp && ntcp_parse_hostport(cfg->broker_udp, &s->broker_udp) < 0) ||
        (cfg->broker_udp && cfg->udp_at_broker) || ntcp_identity_public(cfg->key, s->pub) < 0) {
        session_free(s);
        return n == NTCP_ENOMEM ? n : NTCP_EINVAL;
    }
    s->nents = (size_t)n;
    s->udp_at_broker = cfg->udp_at_broker;
    if (cfg->broker_id && !(s->broker_id = strdup(cfg->broker_id))) {
        session_free(s);
        return NTCP_ENOMEM;
    }
    if (cfg->tls) {
        int rc = tls_setup(s, cfg);
        if (rc < 0) {
            session_free(s);
            return rc;
        }
    }
    strcpy(s->name, cfg->name);
    s->key = cfg->key;
    for (size_t i = 0; i < cfg->nprivate; i++)
        broker_addr_from_sa(&s->priv[i], (const struct sockaddr *)&cfg->private_addrs[i]);
    s->nprivate = cfg->nprivate;
    if (cfg->profile_len)
        memcpy(s->profile, cfg->profile, cfg->profile_len);
    s->profile_len = cfg->profile_len;
    s->accept_all = cfg->accept_all & (BROKER_ACCEPT_TCP | BROKER_ACCEPT_UDP);
    s->refresh_cfg = cfg->refresh_ms;
    s->backoff_min = cfg->backoff_min_ms ? cfg->backoff_min_ms : 100;
    s->backoff_max = cfg->backoff_max_ms ? cfg->backoff_max_ms : 5000;
    s->backoff = s->backoff_min;
    s->req_timeout = cfg->request_timeout_ms ? cfg->request_timeout_ms : 5000;
    s->on_offer = cfg->on_offer;
    s->on_go = cfg->on_go;
    s->on_raw_isn = cfg->on_raw_isn;
    s->on_relay_addr = cfg->on_relay_addr;
    s->on_state = cfg->on_state;
    s->user = cfg->user;
    s->conn = C_NONE;

    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    s->open_handles++;
    if (cfg->broker_udp && udp_open(s) < 0) {
        ntcp_session_close(s);
        return NTCP_ESYS;
    }
    uv_timer_start(&s->timer, on_tick, TICK_MS, TICK_MS);
    start_resolve(s);
    *out = s;
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    ntcp_session *s = h->data;
    s->open_handles--;
    maybe_free(s);
}

void ntcp_session_close(ntcp_session *s)
{
    if (!s || s->closed)
        return;
    s->closed = true;
    set_state(s, NTCP_SESSION_CLOSED, 0, 0);
    if (s->conn != C_NONE && s->conn != C_CLOSING) {
        lose(s, NTCP_ECLOSED, 0);
    } else {
        txn *t = s->txns;
        s->txns = NULL;
        while (t) {
            txn *next = t->next;
            txn_fail(s, t, NTCP_ECLOSED, 0);
            t = next;
        }
    }
    s->conn = C_CLOSING;
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    if (s->has_udp && s->udp)
        uv_close((uv_handle_t *)s->udp, on_udp_closed);
    /* The TCP handle, if open, is closing already and frees s last. */
}

int ntcp_session_state(const ntcp_session *s)
{
    return s->state;
}

int ntcp_session_public_addr(const ntcp_session *s, struct sockaddr_storage *out)
{
    *out = s->public_addr;
    return s->public_addr.ss_family ? 0 : NTCP_ENOTFOUND;
}

int ntcp_session_local_addr(const ntcp_session *s, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (!s->tcp_open || s->conn == C_NONE)
        return NTCP_ENOTFOUND;
    int len = (int)sizeof *out;
    if (uv_tcp_getsockname(&s->tcp, (struct sockaddr *)out, &len) < 0 || ntcp_sa_port(out) == 0) {
        memset(out, 0, sizeof *out);
        return NTCP_ENOTFOUND;
    }
    return 0;
}

int ntcp_session_local_udp(const ntcp_session *s, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (!s->has_udp)
        return NTCP_ENOTFOUND;
    int len = (int)sizeof *out;
    if (!s->udp || uv_udp_getsockname(s->udp, (struct sockaddr *)out, &len) < 0) {
        memset(out, 0, sizeof *out);
        return NTCP_ENOTFOUND;
    }
    return 0;
}

int ntcp_session_public_udp(const ntcp_session *s, struct sockaddr_storage *out)
{
    *out = s->public_udp;
    return s->public_udp.ss_family ? 0 : NTCP_ENOTFOUND;
}

const char *ntcp_session_tls_error(const ntcp_session *s)
{
    return s->tls_err;
}

bool ntcp_session_round_failed(const ntcp_session *s)
{
    return s->round_failed;
}

const char *ntcp_session_last_error(const ntcp_session *s)
{
    return s->why;
}

int ntcp_session_broker_addr(const ntcp_session *s, struct sockaddr_storage *out)
{
    *out = s->broker;
    return s->broker.ss_family ? 0 : NTCP_ENOTFOUND;
}

unsigned ntcp_session_resumed(const ntcp_session *s)
{
    return s->resumed;
}

unsigned ntcp_session_registrations(const ntcp_session *s)
{
    return s->registrations;
}

static int request(ntcp_session *s, uint16_t method, uint8_t kind, const char *name,
                   uint32_t transport, uint32_t timeout_ms, ntcp_session_connect_cb ccb,
                   ntcp_session_lookup_cb lcb, void *arg)
{
    if (!s || s->closed || !name || !broker_name_valid(name, strlen(name)) || (!ccb && !lcb) ||
        transport > BROKER_TRANSPORT_UDP)
        return NTCP_EINVAL;
    if (!timeout_ms)
        timeout_ms = 10000;
    txn *t = txn_new(s, kind, timeout_ms);
    if (!t)
        return NTCP_ENOMEM;
    /* The callback is in place before anything is sent: a failed send
     * completes the transaction through lose(). */
    if (ccb)
        t->cb.connect = ccb;
    else
        t->cb.lookup = lcb;
    t->arg = arg;
    if (s->conn != C_REGISTERED) {
        t->preset_err = NTCP_EUNREACHABLE;
        return 0;
    }
    uint8_t buf[256];
    stun_builder sb;
    stun_build_init(&sb, buf, sizeof buf, method, STUN_REQUEST, t->tid, false);
    stun_build_attr(&sb, BROKER_ATTR_NAME, name, strlen(name));
    if (method == BROKER_CONNECT)
        stun_build_u32(&sb, BROKER_ATTR_TIMEOUT, timeout_ms);
    /* Absent means TCP: a TCP connect is what a version-1 broker knows. */
    if (method == BROKER_CONNECT && transport != BROKER_TRANSPORT_TCP)
        stun_build_u32(&sb, BROKER_ATTR_TRANSPORT, transport);
    build_send(s, &sb);
    return 0;
}

int ntcp_session_connect(ntcp_session *s, const char *name, uint32_t timeout_ms,
                         ntcp_session_connect_cb cb, void *arg)
{
    return request(s, BROKER_CONNECT, T_CONNECT, name, BROKER_TRANSPORT_TCP, timeout_ms, cb, NULL,
                   arg);
}

int ntcp_session_connect_ex(ntcp_session *s, const char *name, uint32_t transport,
                            uint32_t timeout_ms, ntcp_session_connect_cb cb, void *arg)
{
    return request(s, BROKER_CONNECT, T_CONNECT, name, transport, timeout_ms, cb, NULL, arg);
}

int ntcp_session_lookup(ntcp_session *s, const char *name, uint32_t timeout_ms,
                        ntcp_session_lookup_cb cb, void *arg)
{
    return request(s, BROKER_LOOKUP, T_LOOKUP, name, 0, timeout_ms, NULL, cb, arg);
}

int ntcp_session_send_raw_isn(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                              const struct sockaddr_storage *ext, uint32_t isn, bool spoof)
{
    if (!s || !nonce || !ext || (ext->ss_family != AF_INET && ext->ss_family != AF_INET6))
        return NTCP_EINVAL;
    if (s->conn != C_REGISTERED)
        return NTCP_EUNREACHABLE;
    uint8_t buf[128], tid[STUN_TID_SIZE];
    stun_builder sb;
    stun_new_tid(tid);
    stun_build_init(&sb, buf, sizeof buf, BROKER_RAW_ISN, STUN_INDICATION, tid, false);
    stun_build_attr(&sb, BROKER_ATTR_SESSION_NONCE, nonce, BROKER_NONCE_SIZE);
    broker_addr ba;
    broker_addr_from_sa(&ba, (const struct sockaddr *)ext);
    broker_build_baddr(&sb, BROKER_ATTR_PUBLIC_ADDR, &ba);
    stun_build_u32(&sb, BROKER_ATTR_ISN, isn);
    if (spoof)
        stun_build_u32(&sb, BROKER_ATTR_SPOOF, 1);
    build_send(s, &sb);
    return 0;
}

int ntcp_session_send_relay_addr(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                                 const struct sockaddr_storage *relayed, const char *why)
{
    if (!s || !nonce)
        return NTCP_EINVAL;
    if (s->conn != C_REGISTERED)
        return NTCP_EUNREACHABLE;
    uint8_t buf[384], tid[STUN_TID_SIZE];
    stun_builder sb;
    stun_new_tid(tid);
    broker_relay_addr ra;
    memset(&ra, 0, sizeof ra);
    memcpy(ra.nonce, nonce, BROKER_NONCE_SIZE);
    if (relayed)
        ra.relayed = *relayed;
    snprintf(ra.why, sizeof ra.why, "%s", why ? why : "");
    stun_build_init(&sb, buf, sizeof buf, BROKER_RELAY_ADDR, STUN_INDICATION, tid, false);
    broker_build_relay_addr(&sb, &ra);
    build_send(s, &sb);
    return 0;
}

bool ntcp_session_broker_spoofs(const ntcp_session *s)
{
    return s && s->broker_spoofs;
}
