/*
 * turn_client.c: the TURN client of turn_client.h: one allocation over a TCP
 * control connection, RFC 6062 data connections handed out as plain sockets,
 * Send/Data indications for a UDP allocation. Runs on the caller's loop.
 */
#include "turn_client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"

#define TC_MAX_TXN 16
#define TC_MAX_PERMS 8
#define TC_TICK_MS 100
#define TC_CTRL_BUF (STUN_MAX_MESSAGE + 1)
#define TC_OUT_BUF (64 * 1024 + 2048)
/* Permissions last 300 s (RFC 8656 9); refreshed well before. */
#define TC_PERM_REFRESH_MS 120000

enum conn_kind { CONN_CTRL, CONN_DATA };

typedef struct tc_conn {
    turn_client *c;
    enum conn_kind kind;
    int fd;
    uv_poll_t poll;
    bool connected;
    struct tc_conn *next;
    /* pending output (the control connection may queue several messages) */
    uint8_t *out;
    size_t outlen, outcap;
    /* data connection: the ConnectionBind in flight */
    uint32_t connection_id;
    struct sockaddr_storage peer;
    uint8_t tid[STUN_TID_SIZE];
    unsigned tries;
    uint64_t deadline;
    uint8_t rx[2048];
    size_t rxlen;
} tc_conn;

typedef struct tc_txn {
    bool used;
    uint8_t tid[STUN_TID_SIZE];
    uint16_t method;
    struct sockaddr_storage peer; /* CreatePermission, Connect */
    bool has_lifetime;
    uint32_t lifetime;
    unsigned tries;
    uint64_t deadline;
} tc_txn;

struct turn_client {
    uv_loop_t *loop;
    turn_client_cb cb;
    void *user;
    turn_client_config cfg;
    turn_auth auth;
    uv_timer_t tick;
    tc_conn *ctrl;
    tc_conn *conns; /* every open conn, the control one included */
    unsigned handles;
    bool closing, failed, allocated;
    uint8_t *framebuf;
    stun_framer fr;
    tc_txn txn[TC_MAX_TXN];
    struct sockaddr_storage perms[TC_MAX_PERMS];
    bool permitted[TC_MAX_PERMS]; /* TURN_EV_PERMITTED reported */
    size_t nperms;
    uint64_t refresh_at, perm_refresh_at;
    int start_errno; /* the control socket could not even be opened */
    struct sockaddr_storage relayed, mapped;
    char why[256];
};

static void conn_close(tc_conn *k, bool close_fd);
static void on_poll(uv_poll_t *h, int status, int events);

static char *server_str(turn_client *c, char *buf, size_t len)
{
    return (char *)ntcp_addr_str((const struct sockaddr *)&c->cfg.server, buf, len);
}

/* Reports an error event; before the allocation it is final (everything
 * closes and no more events come). */
static void fail(turn_client *c, int err, int code, const char *fmt, ...)
{
    if (c->closing || c->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof c->why, fmt, ap);
    va_end(ap);
    turn_event ev = {.type = TURN_EV_ERROR, .err = err, .code = code, .why = c->why, .fd = -1};
    bool final = !c->allocated || err == NTCP_ECLOSED;
    if (final) {
        c->failed = true;
        for (tc_conn *k = c->conns; k; k = k->next)
            conn_close(k, true);
    }
    c->cb(c, &ev, c->user);
}

/* ---- connections ---- */

static void on_conn_closed(uv_handle_t *h)
{
    tc_conn *k = h->data;
    turn_client *c = k->c;
    free(k->out);
    free(k);
    if (--c->handles == 0 && c->closing) {
        free(c->framebuf);
        free(c);
    }
}

static void conn_close(tc_conn *k, bool close_fd)
{
    if (k->fd < 0)
        return;
    turn_client *c = k->c;
    for (tc_conn **pp = &c->conns; *pp; pp = &(*pp)->next)
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    if (c->ctrl == k)
        c->ctrl = NULL;
    uv_poll_stop(&k->poll);
    if (close_fd)
        close(k->fd);
    k->fd = -1;
    uv_close((uv_handle_t *)&k->poll, on_conn_closed);
}

static tc_conn *conn_open(turn_client *c, enum conn_kind kind)
{
    int fam = c->cfg.server.ss_family;
    int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    tc_conn *k = calloc(1, sizeof *k);
    if (!k || uv_poll_init(c->loop, &k->poll, fd) < 0) {
        free(k);
        close(fd);
        return NULL;
    }
    k->c = c;
    k->kind = kind;
    k->fd = fd;
    k->poll.data = k;
    k->next = c->conns;
    c->conns = k;
    c->handles++;
    k->deadline = uv_now(c->loop) + c->cfg.timeout_ms;
    int rc = connect(fd, (const struct sockaddr *)&c->cfg.server, ntcp_sa_len(&c->cfg.server));
    if (rc < 0 && errno != EINPROGRESS) {
        int e = errno;
        conn_close(k, true);
        errno = e;
        return NULL;
    }
    uv_poll_start(&k->poll, UV_READABLE | UV_WRITABLE, on_poll);
    return k;
}

/* Queues bytes and writes what the socket takes now. */
static int conn_send(tc_conn *k, const uint8_t *p, size_t n)
{
    if (k->outlen + n > k->outcap) {
        size_t cap = k->kind == CONN_CTRL ? TC_OUT_BUF : 2048;
        if (k->outlen + n > cap)
            return NTCP_ENOSPC;
        if (!k->out) {
            k->out = malloc(cap);
            if (!k->out)
                return NTCP_ENOMEM;
            k->outcap = cap;
        }
    }
    if (n) {
        memcpy(k->out + k->outlen, p, n);
        k->outlen += n;
    }
    if (!k->connected)
        return 0;
    ssize_t w = k->outlen ? send(k->fd, k->out, k->outlen, MSG_NOSIGNAL) : 0;
    if (w > 0) {
        memmove(k->out, k->out + w, k->outlen - (size_t)w);
        k->outlen -= (size_t)w;
    }
    uv_poll_start(&k->poll, UV_READABLE | (k->outlen ? UV_WRITABLE : 0), on_poll);
    return 0;
}

/* ---- control transactions ---- */

static int txn_send(turn_client *c, tc_txn *t)
{
    if (!c->ctrl)
        return NTCP_ECLOSED;
    turn_req r = {.method = t->method, .cls = STUN_REQUEST, .has_lifetime = t->has_lifetime,
                  .lifetime = t->lifetime};
    if (t->method == TURN_ALLOCATE)
        r.transport = c->cfg.transport;
    if (t->method == TURN_CREATE_PERMISSION || t->method == TURN_CONNECT)
        r.peer = (const struct sockaddr *)&t->peer;
    uint8_t buf[1500];
    if (stun_new_tid(t->tid) < 0)
        return NTCP_ESYS;
    int n = turn_build(buf, sizeof buf, &r, &c->auth, t->tid);
    if (n < 0)
        return n;
    t->tries++;
    t->deadline = uv_now(c->loop) + c->cfg.timeout_ms;
    return conn_send(c->ctrl, buf, (size_t)n);
}

static int txn_start(turn_client *c, uint16_t method, const struct sockaddr *peer,
                     bool has_lifetime, uint32_t lifetime)
{
    for (size_t i = 0; i < TC_MAX_TXN; i++) {
        tc_txn *t = &c->txn[i];
        if (t->used)
            continue;
        memset(t, 0, sizeof *t);
        t->used = true;
        t->method = method;
        t->has_lifetime = has_lifetime;
        t->lifetime = lifetime;
        if (peer)
            memcpy(&t->peer, peer,
                   peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in));
        int rc = txn_send(c, t);
        if (rc < 0)
            t->used = false;
        return rc;
    }
    return NTCP_ERANGE;
}

/* Why a refused authentication was refused: expired REST credentials are
 * named as such (the username says when they ended). */
static void fail_auth(turn_client *c, const turn_msg *m, const char *what)
{
    char sb[64];
    uint64_t exp;
    time_t now = time(NULL);
    if (turn_rest_expiry(c->auth.user, &exp) == 0 && now > 0 && exp < (uint64_t)now)
        fail(c, NTCP_EREFUSED, m->code,
             "TURN server %s: %s refused: the credentials expired %llu s ago (%d %s)",
             server_str(c, sb, sizeof sb), what, (unsigned long long)((uint64_t)now - exp),
             m->code, turn_error_name(m->code));
    else
        fail(c, NTCP_EREFUSED, m->code,
             "TURN server %s: %s refused: wrong credentials (%d %s; a wrong shared secret?)",
             server_str(c, sb, sizeof sb), what, m->code, turn_error_name(m->code));
}

static void on_ctrl_response(turn_client *c, tc_txn *t, const turn_msg *m)
{
    char sb[64], pb[64];
    uint16_t method = t->method;
    if (m->cls == STUN_ERROR) {
        if (m->code == TURN_ERR_UNAUTHORIZED || m->code == TURN_ERR_STALE_NONCE ||
            m->code == TURN_ERR_WRONG_CREDENTIALS) {
            int rc = t->tries < 4 ? turn_auth_challenge(&c->auth, m) : NTCP_EREFUSED;
            if (rc == 0 && txn_send(c, t) == 0)
                return;
            t->used = false;
            if (rc == NTCP_EPROTO)
                fail(c, NTCP_EPROTO, m->code, "TURN server %s: a %d without REALM or NONCE",
                     server_str(c, sb, sizeof sb), m->code);
            else
                fail_auth(c, m, stun_method_name(method));
            return;
        }
        t->used = false;
        if (method == TURN_ALLOCATE)
            fail(c, NTCP_EREFUSED, m->code,
                 "TURN server %s refused the %s allocation: %d %s%s%s",
                 server_str(c, sb, sizeof sb),
                 c->cfg.transport == TURN_TRANSPORT_TCP ? "TCP" : "UDP", m->code,
                 turn_error_name(m->code), m->reason[0] ? ": " : "", m->reason);
        else if (method == TURN_CONNECT)
            fail(c, m->code == TURN_ERR_CONNECTION_FAILED ? NTCP_EUNREACHABLE : NTCP_EREFUSED,
                 m->code, "TURN server %s could not connect to %s: %d %s",
                 server_str(c, sb, sizeof sb),
                 ntcp_addr_str((const struct sockaddr *)&t->peer, pb, sizeof pb), m->code,
                 turn_error_name(m->code));
        else if (method == TURN_CREATE_PERMISSION)
            fail(c, NTCP_EREFUSED, m->code, "TURN server %s refused a permission for %s: %d %s",
                 server_str(c, sb, sizeof sb),
                 ntcp_addr_str((const struct sockaddr *)&t->peer, pb, sizeof pb), m->code,
                 turn_error_name(m->code));
        else
            fail(c, NTCP_EREFUSED, m->code, "TURN server %s: %s failed: %d %s",
                 server_str(c, sb, sizeof sb), stun_method_name(method), m->code,
                 turn_error_name(m->code));
        return;
    }
    t->used = false;
    /* A success response to an authenticated request must prove the server
     * knows the key (RFC 8489 9.2.5). */
    if (!m->integrity && c->auth.have_key) {
        fail(c, NTCP_EINTEGRITY, 0, "TURN server %s: %s response without valid integrity",
             server_str(c, sb, sizeof sb), stun_method_name(method));
        return;
    }
    uint64_t now = uv_now(c->loop);
    if (method == TURN_ALLOCATE) {
        if (!m->has_relayed) {
            fail(c, NTCP_EPROTO, 0, "TURN server %s: Allocate response without XOR-RELAYED-ADDRESS",
                 server_str(c, sb, sizeof sb));
            return;
        }
        c->relayed = m->relayed;
        c->mapped = m->mapped;
        uint32_t life = m->has_lifetime && m->lifetime ? m->lifetime : c->cfg.lifetime_s;
        c->refresh_at = now + (uint64_t)life * 1000 / 2;
        c->perm_refresh_at = now + TC_PERM_REFRESH_MS;
        c->allocated = true;
        for (size_t i = 0; i < c->nperms; i++)
            txn_start(c, TURN_CREATE_PERMISSION, (struct sockaddr *)&c->perms[i], false, 0);
        turn_event ev = {.type = TURN_EV_ALLOCATED, .relayed = c->relayed, .mapped = c->mapped,
                         .fd = -1, .why = ""};
        c->cb(c, &ev, c->user);
    } else if (method == TURN_CREATE_PERMISSION) {
        for (size_t i = 0; i < c->nperms; i++)
            if (!c->permitted[i] &&
                ntcp_sockaddr_same_ip((struct sockaddr *)&c->perms[i], (struct sockaddr *)&t->peer)) {
                c->permitted[i] = true;
                turn_event ev = {.type = TURN_EV_PERMITTED, .peer = t->peer, .fd = -1, .why = ""};
                c->cb(c, &ev, c->user);
            }
    } else if (method == TURN_REFRESH) {
        uint32_t life = m->has_lifetime && m->lifetime ? m->lifetime : c->cfg.lifetime_s;
        c->refresh_at = now + (uint64_t)life * 1000 / 2;
    } else if (method == TURN_CONNECT) {
        if (!m->has_connection_id) {
            fail(c, NTCP_EPROTO, 0, "TURN server %s: Connect response without CONNECTION-ID",
                 server_str(c, sb, sizeof sb));
            return;
        }
        tc_conn *k = conn_open(c, CONN_DATA);
        if (!k) {
            fail(c, NTCP_EUNREACHABLE, 0, "TURN server %s: data connection: %s",
                 server_str(c, sb, sizeof sb), strerror(errno));
            return;
        }
        k->connection_id = m->connection_id;
        k->peer = t->peer;
    }
}

static void on_ctrl_message(turn_client *c, const uint8_t *p, size_t n)
{
    turn_msg m;
    if (turn_read(&m, p, n, &c->auth) < 0)
        return; /* a bad or forged message is dropped; the deadline still runs */
    if (m.cls == STUN_SUCCESS || m.cls == STUN_ERROR) {
        for (size_t i = 0; i < TC_MAX_TXN; i++) {
            tc_txn *t = &c->txn[i];
            if (t->used && memcmp(t->tid, m.tid, STUN_TID_SIZE) == 0 && t->method == m.method) {
                on_ctrl_response(c, t, &m);
                return;
            }
        }
        return;
    }
    if (m.method == TURN_CONNECTION_ATTEMPT && m.has_connection_id &&
        c->cfg.transport == TURN_TRANSPORT_TCP && c->allocated) {
        tc_conn *k = conn_open(c, CONN_DATA);
        if (!k)
            return;
        k->connection_id = m.connection_id;
        if (m.has_peer)
            k->peer = m.peer;
        return;
    }
    if (m.method == TURN_DATA && m.cls == STUN_INDICATION && m.data && m.has_peer &&
        c->cfg.transport == TURN_TRANSPORT_UDP) {
        turn_event ev = {.type = TURN_EV_DATA, .peer = m.peer, .data = m.data,
                         .len = m.data_len, .fd = -1, .why = ""};
        c->cb(c, &ev, c->user);
    }
}

/* ---- data connections ---- */

static int data_send_bind(tc_conn *k)
{
    turn_client *c = k->c;
    turn_req r = {.method = TURN_CONNECTION_BIND, .cls = STUN_REQUEST,
                  .has_connection_id = true, .connection_id = k->connection_id};
    uint8_t buf[1500];
    if (stun_new_tid(k->tid) < 0)
        return NTCP_ESYS;
    int n = turn_build(buf, sizeof buf, &r, &c->auth, k->tid);
    if (n < 0)
        return n;
    k->tries++;
    k->rxlen = 0;
    return conn_send(k, buf, (size_t)n);
}

/* Reads the ConnectionBind response byte-exactly: the header, then the
 * length it gives, never a byte of the peer's stream behind it. */
static void data_readable(tc_conn *k)
{
    turn_client *c = k->c;
    char sb[64];
    for (;;) {
        size_t want = STUN_HEADER_SIZE;
        if (k->rxlen >= 4)
            want = STUN_HEADER_SIZE + (size_t)((k->rx[2] << 8) | k->rx[3]);
        if (want > sizeof k->rx) {
            conn_close(k, true);
            return;
        }
        if (k->rxlen == want && k->rxlen >= STUN_HEADER_SIZE)
            break;
        ssize_t r = recv(k->fd, k->rx + k->rxlen, want - k->rxlen, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (r <= 0) {
            fail(c, NTCP_EPROTO, 0, "TURN server %s closed a data connection before ConnectionBind",
                 server_str(c, sb, sizeof sb));
            conn_close(k, true);
            return;
        }
        k->rxlen += (size_t)r;
    }
    turn_msg m;
    int rc = turn_read(&m, k->rx, k->rxlen, &c->auth);
    if (rc < 0 || m.method != TURN_CONNECTION_BIND || memcmp(m.tid, k->tid, STUN_TID_SIZE) != 0) {
        conn_close(k, true);
        return;
    }
    if (m.cls == STUN_ERROR) {
        if ((m.code == TURN_ERR_UNAUTHORIZED || m.code == TURN_ERR_STALE_NONCE) && k->tries < 3 &&
            turn_auth_challenge(&c->auth, &m) == 0 && data_send_bind(k) == 0)
            return;
        fail(c, NTCP_EREFUSED, m.code, "TURN server %s: ConnectionBind refused: %d %s",
             server_str(c, sb, sizeof sb), m.code, turn_error_name(m.code));
        conn_close(k, true);
        return;
    }
    int fd = k->fd;
    turn_event ev = {.type = TURN_EV_CONNECTION, .peer = k->peer, .fd = fd, .why = ""};
    conn_close(k, false); /* the fd is the caller's now */
    c->cb(c, &ev, c->user);
}

/* ---- events ---- */

static void on_connected(tc_conn *k)
{
    turn_client *c = k->c;
    char sb[64];
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        if (k->kind == CONN_CTRL)
            fail(c, NTCP_EUNREACHABLE, 0, "TURN server %s unreachable: %s",
                 server_str(c, sb, sizeof sb), strerror(err));
        conn_close(k, true);
        return;
    }
    k->connected = true;
    if (k->kind == CONN_DATA)
        data_send_bind(k);
    else if (k->outlen)
        conn_send(k, NULL, 0);
    if (k->fd >= 0)
        uv_poll_start(&k->poll, UV_READABLE | (k->outlen ? UV_WRITABLE : 0), on_poll);
}

static void ctrl_readable(tc_conn *k)
{
    turn_client *c = k->c;
    char sb[64];
    uint8_t *p;
    size_t avail;
    stun_framer_space(&c->fr, &p, &avail);
    ssize_t r = avail ? recv(k->fd, p, avail, 0) : -1;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (r <= 0) {
        fail(c, NTCP_ECLOSED, 0, "TURN server %s closed the control connection%s%s",
             server_str(c, sb, sizeof sb), r < 0 ? ": " : "", r < 0 ? strerror(errno) : "");
        return;
    }
    stun_framer_commit(&c->fr, (size_t)r);
    const uint8_t *msg;
    size_t len;
    int rc;
    while (!c->closing && !c->failed && (rc = stun_framer_next(&c->fr, &msg, &len)) == 1)
        on_ctrl_message(c, msg, len);
    if (rc < 0 && !c->closing && !c->failed)
        fail(c, NTCP_EPROTO, 0, "TURN server %s: the control stream is not STUN",
             server_str(c, sb, sizeof sb));
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    tc_conn *k = h->data;
    if (k->fd < 0)
        return;
    if (!k->connected) {
        if (status < 0 || (events & (UV_WRITABLE | UV_READABLE)))
            on_connected(k);
        return;
    }
    if ((events & UV_WRITABLE) && k->outlen)
        conn_send(k, NULL, 0);
    if (k->fd >= 0 && (events & UV_READABLE || status < 0)) {
        if (k->kind == CONN_CTRL)
            ctrl_readable(k);
        else
            data_readable(k);
    }
}

static void on_tick(uv_timer_t *h)
{
    turn_client *c = h->data;
    if (c->closing || c->failed)
        return;
    uint64_t now = uv_now(c->loop);
    char sb[64];
    if (c->start_errno) {
        fail(c, NTCP_EUNREACHABLE, 0, "TURN server %s unreachable: %s",
             server_str(c, sb, sizeof sb), strerror(c->start_errno));
        return;
    }
    for (tc_conn *k = c->conns, *next; k; k = next) {
        next = k->next;
        if (!k->connected && now >= k->deadline) {
            if (k->kind == CONN_CTRL) {
                fail(c, NTCP_EUNREACHABLE, 0, "TURN server %s unreachable: no answer to the TCP "
                     "connect in %u ms", server_str(c, sb, sizeof sb), c->cfg.timeout_ms);
                return;
            }
            conn_close(k, true);
        } else if (k->kind == CONN_DATA && now >= k->deadline + c->cfg.timeout_ms) {
            fail(c, NTCP_ETIMEDOUT, 0, "TURN server %s: no ConnectionBind answer in %u ms",
                 server_str(c, sb, sizeof sb), c->cfg.timeout_ms);
            conn_close(k, true);
        }
    }
    for (size_t i = 0; i < TC_MAX_TXN; i++) {
        tc_txn *t = &c->txn[i];
        if (t->used && now >= t->deadline) {
            t->used = false;
            fail(c, NTCP_ETIMEDOUT, 0, "TURN server %s: no answer to %s in %u ms",
                 server_str(c, sb, sizeof sb), stun_method_name(t->method), c->cfg.timeout_ms);
            if (c->failed || c->closing)
                return;
        }
    }
    if (c->allocated && now >= c->refresh_at) {
        c->refresh_at = now + (uint64_t)c->cfg.lifetime_s * 1000 / 2;
        txn_start(c, TURN_REFRESH, NULL, true, c->cfg.lifetime_s);
    }
    if (c->allocated && now >= c->perm_refresh_at) {
        c->perm_refresh_at = now + TC_PERM_REFRESH_MS;
        for (size_t i = 0; i < c->nperms; i++)
            txn_start(c, TURN_CREATE_PERMISSION, (struct sockaddr *)&c->perms[i], false, 0);
    }
}

static void on_tick_closed(uv_handle_t *h)
{
    turn_client *c = h->data;
    if (--c->handles == 0 && c->closing) {
        free(c->framebuf);
        free(c);
    }
}

/* ---- API ---- */

int turn_client_start(uv_loop_t *loop, const turn_client_config *cfg, turn_client_cb cb,
                      void *user, turn_client **out)
{
    if (!loop || !cfg || !cb || (cfg->transport != TURN_TRANSPORT_TCP &&
                                 cfg->transport != TURN_TRANSPORT_UDP) ||
        (cfg->server.ss_family != AF_INET && cfg->server.ss_family != AF_INET6))
        return NTCP_EINVAL;
    turn_client *c = calloc(1, sizeof *c);
    if (!c)
        return NTCP_ENOMEM;
    c->framebuf = malloc(TC_CTRL_BUF);
    if (!c->framebuf || turn_auth_init(&c->auth, cfg->user, cfg->pass) < 0) {
        int rc = c->framebuf ? NTCP_EINVAL : NTCP_ENOMEM;
        free(c->framebuf);
        free(c);
        return rc;
    }
    c->loop = loop;
    c->cb = cb;
    c->user = user;
    c->cfg = *cfg;
    c->cfg.user = c->cfg.pass = NULL; /* the copies are in auth */
    if (!c->cfg.timeout_ms)
        c->cfg.timeout_ms = 5000;
    if (!c->cfg.lifetime_s)
        c->cfg.lifetime_s = 600;
    stun_framer_init(&c->fr, c->framebuf, TC_CTRL_BUF);
    uv_timer_init(loop, &c->tick);
    c->tick.data = c;
    c->handles = 1;
    uv_timer_start(&c->tick, on_tick, TC_TICK_MS, TC_TICK_MS);
    c->ctrl = conn_open(c, CONN_CTRL);
    if (!c->ctrl) {
        /* Reported by the first tick, never inside this call. */
        c->start_errno = errno ? errno : EINVAL;
    } else if (txn_start(c, TURN_ALLOCATE, NULL, true, c->cfg.lifetime_s) < 0) {
        c->start_errno = ENOMEM;
    }
    if (out)
        *out = c;
    return 0;
}

int turn_client_permit(turn_client *c, const struct sockaddr *peer)
{
    if (!c || !peer || (peer->sa_family != AF_INET && peer->sa_family != AF_INET6))
        return NTCP_EINVAL;
    if (c->closing || c->failed)
        return NTCP_ECLOSED;
    for (size_t i = 0; i < c->nperms; i++)
        if (ntcp_sockaddr_same_ip((struct sockaddr *)&c->perms[i], peer))
            return 0;
    if (c->nperms >= TC_MAX_PERMS)
        return NTCP_ERANGE;
    struct sockaddr_storage *p = &c->perms[c->nperms++];
    memset(p, 0, sizeof *p);
    memcpy(p, peer, peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                : sizeof(struct sockaddr_in));
    return c->allocated ? txn_start(c, TURN_CREATE_PERMISSION, (struct sockaddr *)p, false, 0) : 0;
}

int turn_client_connect(turn_client *c, const struct sockaddr *peer)
{
    if (!c || !peer || c->cfg.transport != TURN_TRANSPORT_TCP)
        return NTCP_EINVAL;
    if (c->closing || c->failed || !c->allocated)
        return c->closing || c->failed ? NTCP_ECLOSED : NTCP_ENOTREADY;
    return txn_start(c, TURN_CONNECT, peer, false, 0);
}

int turn_client_send(turn_client *c, const struct sockaddr *peer, const void *data, size_t len)
{
    if (!c || !peer || (!data && len) || c->cfg.transport != TURN_TRANSPORT_UDP)
        return NTCP_EINVAL;
    if (c->closing || c->failed || !c->ctrl)
        return NTCP_ECLOSED;
    if (len > 65000)
        return NTCP_ENOSPC;
    uint8_t *buf = malloc(len + 128);
    if (!buf)
        return NTCP_ENOMEM;
    uint8_t tid[STUN_TID_SIZE];
    int n = stun_new_tid(tid);
    turn_req r = {.method = TURN_SEND, .cls = STUN_INDICATION, .peer = peer, .data = data,
                  .data_len = len};
    if (n == 0)
        n = turn_build(buf, len + 128, &r, NULL, tid);
    if (n > 0)
        n = conn_send(c->ctrl, buf, (size_t)n);
    free(buf);
    return n < 0 ? n : 0;
}

const struct sockaddr_storage *turn_client_server(const turn_client *c)
{
    return &c->cfg.server;
}

void turn_client_close(turn_client *c)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    while (c->conns)
        conn_close(c->conns, true);
    uv_timer_stop(&c->tick);
    uv_close((uv_handle_t *)&c->tick, on_tick_closed);
}
