/*
 * udp_punch.c: UDP hole punching (issue 7): probes from the broker's socket
 * along a udp_plan, the key proof of docs/verify.md one message per
 * datagram on every path the peer answers on, the requester's PICK of one
 * verified path, then a connected socket. Also the datagram codec and the
 * keepalive on the punched path. docs/udp.md says why it is built this way.
 */
#include "udp_punch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "addr.h"
#include "birthday.h"
#include "sock_linux.h"

#define TICK_MS 10
#define RTO_MIN_MS 150
#define RTO_MAX_MS 1000
#define RECV_BUDGET 64 /* datagrams read per readiness callback */
/* The birthday side with many sockets repeats its probes this often: they
 * only keep its mappings alive, the other side's probes do the finding. */
#define BIRTHDAY_ROUND_MS 1000
#define FLIGHT_MAX 3 /* HELLO, PROOF, and a REFUSE */

/* ---- codec ---- */

static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

int udp_dgram_build(uint8_t *buf, size_t cap, uint16_t method, uint32_t role,
                    const uint8_t session_id[VERIFY_SESSION_ID_SIZE])
{
    uint8_t tid[STUN_TID_SIZE];
    if (stun_new_tid(tid) < 0)
        return NTCP_ESYS;
    stun_builder b;
    stun_build_init(&b, buf, cap, method, STUN_INDICATION, tid, false);
    stun_build_attr(&b, VERIFY_ATTR_SESSION_ID, session_id, VERIFY_SESSION_ID_SIZE);
    stun_build_u32(&b, VERIFY_ATTR_ROLE, role);
    return stun_build_finish(&b, NULL);
}

int udp_dgram_parse(const uint8_t *buf, size_t len, udp_dgram *out)
{
    memset(out, 0, sizeof out[0]);
    if (len < STUN_HEADER_SIZE || len > VERIFY_MAX_MESSAGE)
        return len < STUN_HEADER_SIZE ? NTCP_ETRUNCATED : NTCP_ERANGE;
    if (!stun_looks_like(buf, len) || rd32(buf + 4) != STUN_MAGIC_COOKIE)
        return NTCP_ENOTSTUN;
    uint16_t type = (uint16_t)((buf[0] << 8) | buf[1]);
    /* Method bits M0-M11 around the class bits C0 (bit 4) and C1 (bit 8). */
    uint16_t method = (uint16_t)((type & 0x000F) | ((type & 0x00E0) >> 1) | ((type & 0x3E00) >> 2));
    if (method == UDP_PUNCH_PROBE || method == UDP_PUNCH_PICK) {
        stun_msg m;
        int rc = stun_parse(&m, buf, len);
        if (rc < 0)
            return rc;
        if (m.cls != STUN_INDICATION || m.rfc3489)
            return NTCP_EPROTO;
        const stun_attr *sid = NULL, *role = NULL;
        for (size_t i = 0; i < m.nattrs; i++) {
            const stun_attr *a = &m.attrs[i];
            const stun_attr **slot = a->type == VERIFY_ATTR_SESSION_ID ? &sid
                                     : a->type == VERIFY_ATTR_ROLE     ? &role
                                                                       : NULL;
            if (slot) {
                if (*slot)
                    return NTCP_EBADATTR; /* twice: refused, not resolved */
                *slot = a;
            } else if (a->type < 0x8000) {
                return NTCP_EBADATTR; /* unknown comprehension-required */
            }
        }
        if (!sid || !role || sid->len != VERIFY_SESSION_ID_SIZE || role->len != 4)
            return NTCP_EBADATTR;
        out->role = rd32(stun_attr_value(&m, role));
        if (out->role > BROKER_ROLE_TARGET)
            return NTCP_EBADATTR;
        out->session_id = stun_attr_value(&m, sid);
        out->kind = method == UDP_PUNCH_PROBE ? UDP_DG_PROBE : UDP_DG_PICK;
        return 0;
    }
    uint16_t unknown = 0;
    int rc = ntcp_verify_parse(&out->v, buf, len, &unknown);
    if (rc < 0)
        return rc;
    out->kind = UDP_DG_VERIFY;
    return 0;
}

/* ---- engine state ---- */

typedef struct psock {
    int fd;
    uv_poll_t poll;
    bool polling;
    bool path_only; /* a socket connected to one path's peer: no probes from it */
    struct udp_puncher *p;
} psock;

typedef struct path {
    unsigned sock;
    struct sockaddr_storage remote;
    ntcp_verify_core *core;
    bool failed, done;
    udp_method_t method;
    /* Our flight so far (HELLO, then PROOF: at once or after the peer's
     * HELLO, whatever the verify version), each message its own datagram. */
    uint8_t flight[FLIGHT_MAX][VERIFY_MAX_MESSAGE];
    size_t flen[FLIGHT_MAX];
    unsigned nflight;
    uint8_t peer_hello[VERIFY_MAX_MESSAGE];
    size_t peer_hello_len;
    uint8_t peer_random[VERIFY_RANDOM_SIZE];
    uint64_t started, next_tx, last_tx;
    uint32_t rto;
} path;

struct udp_puncher {
    uv_loop_t *loop;
    uv_timer_t timer;
    int open_handles;
    bool finished, cancelled;
    ntcp_udp_punch_cb cb;
    void *user;

    udp_plan plan;
    ntcp_verify_params vp;
    char name[BROKER_NAME_MAX + 1], peer_name[BROKER_NAME_MAX + 1];
    uint8_t sid[VERIFY_SESSION_ID_SIZE];
    uint32_t role, verify_ms;

    psock *socks;
    unsigned nsocks, cap_socks;
    /* Shared mode: socket 0 is the session's (read by it: datagrams come
     * through the hub), and a path becomes a socket of ours when chosen. */
    udp_punch_hub *hub;
    udp_puncher *hub_next;
    path *paths[UDP_PUNCH_MAX_PATHS];
    unsigned npaths;
    int picked; /* requester: the path it picked, -1 none */

    uint64_t t_start_call, start_at, deadline;
    uint64_t next_round;
    unsigned rounds;
    /* Birthday, probing side: a random order of the ports still to try. */
    uint16_t *rports;
    unsigned nrports, rsent;

    int last_err;
    const char *last_why;
    ntcp_udp_punch_result res;
};

static uint64_t now(udp_puncher *p)
{
    return uv_now(p->loop);
}

static int64_t rel(udp_puncher *p)
{
    return (int64_t)now(p) - (int64_t)p->start_at;
}

/* ---- the end ---- */

static void on_handle_closed(uv_handle_t *h)
{
    udp_puncher *p = h->data;
    if (--p->open_handles == 0) {
        for (unsigned i = 0; i < p->npaths; i++) {
            if (p->paths[i]) {
                OPENSSL_cleanse(p->paths[i]->core, sizeof *p->paths[i]->core);
                free(p->paths[i]->core);
                free(p->paths[i]);
            }
        }
        free(p->socks);
        free(p->rports);
        free(p);
    }
}

static void on_poll_closed(uv_handle_t *h)
{
    psock *s = h->data;
    h->data = s->p;
    on_handle_closed(h);
}

static bool is_ours(const uint8_t *buf, size_t n)
{
    udp_dgram d;
    return udp_dgram_parse(buf, n, &d) == 0;
}

/* connect() does not purge what is queued already: drop the punch's own
 * datagrams and strangers' that wait in front of the first one the
 * application must see (the peer's data, or a zero-length keepalive). */
static void purge(int fd, const struct sockaddr_storage *remote)
{
    uint8_t buf[VERIFY_MAX_MESSAGE + 1];
    for (int i = 0; i < 4096; i++) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT, (struct sockaddr *)&from,
                             &fl);
        if (n < 0)
            return;
        bool stranger = !ntcp_sockaddr_equal((struct sockaddr *)&from, (const struct sockaddr *)remote);
        if (!stranger && !(n > 0 && (size_t)n <= VERIFY_MAX_MESSAGE && is_ours(buf, (size_t)n)))
            return;
        (void)recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    }
}

/* ---- the hub (shared mode) ---- */

static void hub_leave(udp_puncher *p)
{
    if (!p->hub)
        return;
    for (udp_puncher **pp = &p->hub->head; *pp; pp = &(*pp)->hub_next) {
        if (*pp == p) {
            *pp = p->hub_next;
            break;
        }
    }
    p->hub = NULL;
}

static path *find_path(udp_puncher *p, unsigned sock, const struct sockaddr_storage *from);
static void on_dgram(udp_puncher *p, unsigned sock, const struct sockaddr_storage *from,
                     const uint8_t *buf, size_t n);
static void on_readable(uv_poll_t *h, int status, int events);

/* Whether a PROOF (or REFUSE) from `from` fits punch p: a live path from
 * that address on the shared socket that waits for one; for a PROOF, one
 * whose proof it also verifies (tried on a copy of the path's state, which
 * stays as it was). */
static bool hub_fits(udp_puncher *p, const struct sockaddr_storage *from, const udp_dgram *d,
                     const uint8_t *buf, size_t len, bool try_proof)
{
    path *x = find_path(p, 0, from);
    if (!x || x->failed || x->done)
        return false;
    if (d->v.method != VERIFY_PROOF || !try_proof)
        return true;
    if (x->core->state != VERIFY_WAIT_PROOF)
        return false;
    ntcp_verify_core *copy = malloc(sizeof *copy);
    if (!copy)
        return false;
    memcpy(copy, x->core, sizeof *copy); /* the key is borrowed: nothing to free */
    bool ok = ntcp_verify_core_input(copy, buf, len) != VERIFY_FAILED;
    OPENSSL_cleanse(copy, sizeof *copy);
    free(copy);
    return ok;
}

void ntcp_udp_hub_input(udp_punch_hub *h, const struct sockaddr_storage *from,
                        const uint8_t *buf, size_t len)
{
    udp_dgram d;
    if (len > VERIFY_MAX_MESSAGE || udp_dgram_parse(buf, len, &d) < 0) {
        h->dropped++;
        return;
    }
    /* PROBE, PICK and HELLO name their session. A PROOF or REFUSE names
     * none: it belongs to the punch with a path from that address. Two
     * punches may have one (two peers connecting to each other at the same
     * moment): a PROOF goes to the one it verifies for, an ambiguous
     * REFUSE nowhere (that path then times out instead of failing at
     * once). */
    const uint8_t *sid = d.kind != UDP_DG_VERIFY          ? d.session_id
                         : d.v.method == VERIFY_HELLO      ? d.v.session_id
                                                           : NULL;
    udp_puncher *to = NULL;
    unsigned fits = 0;
    for (udp_puncher *p = h->head; p; p = p->hub_next) {
        if (sid) {
            if (CRYPTO_memcmp(sid, p->sid, VERIFY_SESSION_ID_SIZE) == 0) {
                to = p;
                fits = 1;
                break;
            }
        } else if (hub_fits(p, from, &d, buf, len, false)) {
            to = to ? to : p;
            fits++;
        }
    }
    if (!sid && fits > 1) {
        to = NULL;
        if (d.v.method == VERIFY_PROOF)
            for (udp_puncher *p = h->head; p && !to; p = p->hub_next)
                if (hub_fits(p, from, &d, buf, len, true))
                    to = p;
    }
    if (!to) {
        h->dropped++;
        return;
    }
    /* on_dgram may finish `to`, whose callback may start another punch on
     * this hub: nothing of the list is used after it. */
    on_dgram(to, 0, from, buf, len);
}

/* Shared mode: path x, on the session's socket, gets a socket of its own,
 * bound to the same address and port and connected to the peer, so that
 * the kernel gives it the peer's datagrams from now on (session.h,
 * ntcp_session_share_udp()). Returns 0 or NTCP_ESYS. */
static int own_socket(udp_puncher *p, path *x)
{
    /* Only socket 0 is shared; the birthday side's others are ours. */
    if (!p->hub || x->sock != 0 || p->nsocks >= p->cap_socks)
        return 0;
    struct sockaddr_storage l0;
    socklen_t l0len = sizeof l0;
    memset(&l0, 0, sizeof l0);
    if (getsockname(p->socks[x->sock].fd, (struct sockaddr *)&l0, &l0len) < 0)
        return NTCP_ESYS;
    int fd = ntcp_sock_open(l0.ss_family, SOCK_DGRAM, NTCP_SOCK_REUSEPORT, &l0);
    if (fd < 0)
        return NTCP_ESYS;
    if (connect(fd, (const struct sockaddr *)&x->remote, ntcp_sa_len(&x->remote)) < 0) {
        close(fd);
        return NTCP_ESYS;
    }
    unsigned idx = p->nsocks++;
    psock *c = &p->socks[idx];
    c->fd = fd;
    c->p = p;
    c->path_only = true;
    if (uv_poll_init(p->loop, &c->poll, fd) == 0) {
        c->poll.data = c;
        c->polling = true;
        p->open_handles++;
        uv_poll_start(&c->poll, UV_READABLE, on_readable);
    }
    x->sock = idx;
    return 0;
}

static void finish(udp_puncher *p, int err, const path *win, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void finish(udp_puncher *p, int err, const path *win, const char *fmt, ...)
{
    if (p->finished)
        return;
    p->finished = true;
    hub_leave(p);
    ntcp_udp_punch_result *r = &p->res;
    r->err = err;
    r->fd = -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    int keep = -1;
    if (err == 0 && win) {
        int fd = p->socks[win->sock].fd;
        if (connect(fd, (const struct sockaddr *)&win->remote, ntcp_sa_len(&win->remote)) < 0) {
            r->err = NTCP_ESYS;
            snprintf(r->reason, sizeof r->reason, "connect() on the punched socket: %s",
                     strerror(errno));
        } else {
            purge(fd, &win->remote);
            keep = (int)win->sock;
            r->fd = fd;
            r->method = win->method;
            r->remote = win->remote;
            socklen_t ll = sizeof r->local;
            getsockname(fd, (struct sockaddr *)&r->local, &ll);
            memcpy(r->binding, win->core->binding, VERIFY_BINDING_SIZE);
        }
    }
    r->sockets = p->nsocks;
    r->paths = p->npaths;
    r->elapsed_ms = now(p) - p->t_start_call;
    uv_timer_stop(&p->timer);
    for (unsigned i = 0; i < p->nsocks; i++) {
        psock *s = &p->socks[i];
        if (s->polling) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_poll_closed);
            s->polling = false;
        }
        if ((int)i != keep && s->fd >= 0)
            close(s->fd);
        s->fd = -1;
    }
    uv_close((uv_handle_t *)&p->timer, on_handle_closed);
    p->cb(p, r, p->user);
}

/* ---- sending ---- */

static void send_to(udp_puncher *p, unsigned sock, const struct sockaddr_storage *to,
                    const uint8_t *buf, size_t len)
{
    if (p->socks[sock].fd < 0)
        return;
    (void)sendto(p->socks[sock].fd, buf, len, MSG_DONTWAIT, (const struct sockaddr *)to,
                 ntcp_sa_len(to));
}

static void send_probe(udp_puncher *p, unsigned sock, const struct sockaddr_storage *to)
{
    uint8_t buf[64];
    int n = udp_dgram_build(buf, sizeof buf, UDP_PUNCH_PROBE, p->role, p->sid);
    if (n > 0) {
        send_to(p, sock, to, buf, (size_t)n);
        p->res.probes++;
    }
}

static void send_pick(udp_puncher *p, const path *x)
{
    uint8_t buf[64];
    int n = udp_dgram_build(buf, sizeof buf, UDP_PUNCH_PICK, p->role, p->sid);
    if (n > 0)
        send_to(p, x->sock, &x->remote, buf, (size_t)n);
}

/* Moves what the core queued into the path's flight, one message per entry
 * (split on the STUN header's length, however the core hands them out), and
 * sends each new one in its own datagram. */
static void take_output(udp_puncher *p, path *x)
{
    for (;;) {
        const uint8_t *o;
        size_t len;
        ntcp_verify_core_output(x->core, &o, &len);
        if (len < STUN_HEADER_SIZE)
            return;
        size_t m = STUN_HEADER_SIZE + (size_t)((o[2] << 8) | o[3]);
        if (m > len || m > VERIFY_MAX_MESSAGE) {
            ntcp_verify_core_sent(x->core, len); /* never: the core builds whole messages */
            return;
        }
        if (x->nflight < FLIGHT_MAX) {
            memcpy(x->flight[x->nflight], o, m);
            x->flen[x->nflight++] = m;
        }
        send_to(p, x->sock, &x->remote, o, m);
        ntcp_verify_core_sent(x->core, m);
        x->last_tx = now(p);
    }
}

/* Everything the peer may lack, given where this path is. */
static void retransmit(udp_puncher *p, path *x)
{
    uint64_t t = now(p);
    x->last_tx = t;
    for (unsigned i = 0; i < x->nflight; i++)
        send_to(p, x->sock, &x->remote, x->flight[i], x->flen[i]);
    if (p->picked >= 0 && p->paths[p->picked] == x)
        send_pick(p, x);
    x->next_tx = t + x->rto;
    x->rto = x->rto * 2 > RTO_MAX_MS ? RTO_MAX_MS : x->rto * 2;
}

/* ---- paths ---- */

static path *find_path(udp_puncher *p, unsigned sock, const struct sockaddr_storage *from)
{
    for (unsigned i = 0; i < p->npaths; i++)
        if (p->paths[i]->sock == sock &&
            ntcp_sockaddr_equal((const struct sockaddr *)&p->paths[i]->remote,
                                (const struct sockaddr *)from))
            return p->paths[i];
    return NULL;
}

static udp_method_t method_of(const udp_puncher *p, const struct sockaddr_storage *from)
{
    for (size_t i = 0; i < p->plan.ntargets; i++)
        if (p->plan.kind[i] == UDP_T_PRIVATE &&
            ntcp_sockaddr_same_ip((const struct sockaddr *)&p->plan.t[i].addr,
                                  (const struct sockaddr *)from))
            return UDP_METHOD_SAME_LAN;
    return p->plan.method == UDP_METHOD_NONE ? UDP_METHOD_SAME_LAN : p->plan.method;
}

static path *new_path(udp_puncher *p, unsigned sock, const struct sockaddr_storage *from)
{
    if (p->npaths >= UDP_PUNCH_MAX_PATHS)
        return NULL;
    path *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->core = malloc(sizeof *x->core);
    if (!x->core || ntcp_verify_core_init(x->core, &p->vp, NULL) < 0) {
        free(x->core);
        free(x);
        return NULL;
    }
    x->sock = sock;
    x->remote = *from;
    x->method = method_of(p, from);
    x->started = now(p);
    uint32_t r = p->plan.rtt_ms * 2;
    x->rto = r < RTO_MIN_MS ? RTO_MIN_MS : r > RTO_MAX_MS ? RTO_MAX_MS : r;
    p->paths[p->npaths++] = x;
    take_output(p, x); /* our HELLO (and PROOF, when the version sends it at once) */
    x->next_tx = now(p) + x->rto;
    return x;
}

static void path_failed(udp_puncher *p, path *x)
{
    x->failed = true;
    p->last_err = x->core->err ? x->core->err : NTCP_EPROTO;
    p->last_why = x->core->why;
    /* A REFUSE (only ever before our PROOF) goes out once. */
    take_output(p, x);
}

static void feed(udp_puncher *p, path *x, const uint8_t *buf, size_t n, bool hello)
{
    int st = ntcp_verify_core_input(x->core, buf, n);
    if (hello && st != VERIFY_FAILED) {
        memcpy(x->peer_hello, buf, n);
        x->peer_hello_len = n;
    }
    if (st == VERIFY_FAILED) {
        path_failed(p, x);
        return;
    }
    take_output(p, x);
    if (st == VERIFY_DONE) {
        x->done = true;
        if (p->res.verified_ms < 0)
            p->res.verified_ms = rel(p);
        if (p->role == BROKER_ROLE_REQUESTER && p->picked < 0) {
            for (unsigned i = 0; i < p->npaths; i++)
                if (p->paths[i] == x)
                    p->picked = (int)i;
            /* PICK now, and with the PROOF until the target confirms: from
             * a socket of the path's own in shared mode, where the
             * confirmation (or the target's first data) will arrive. */
            if (own_socket(p, x) < 0) {
                finish(p, NTCP_ESYS, NULL, "a socket for the verified path: %s", strerror(errno));
                return;
            }
            x->rto = x->rto < RTO_MIN_MS ? RTO_MIN_MS : x->rto;
            send_pick(p, x);
            x->next_tx = now(p) + x->rto;
        }
    }
}

static void on_dgram(udp_puncher *p, unsigned sock, const struct sockaddr_storage *from,
                     const uint8_t *buf, size_t n)
{
    udp_dgram d;
    if (udp_dgram_parse(buf, n, &d) < 0) {
        p->res.dropped++;
        return;
    }
    const uint8_t *sid = d.kind == UDP_DG_VERIFY ? d.v.session_id : d.session_id;
    if (d.kind != UDP_DG_VERIFY || d.v.method == VERIFY_HELLO) {
        /* PROBE, PICK, HELLO: of our session and from the other role, or
         * dropped here, before they can cost a path. */
        uint32_t role = d.kind == UDP_DG_VERIFY ? d.v.role : d.role;
        if (CRYPTO_memcmp(sid, p->sid, VERIFY_SESSION_ID_SIZE) != 0 || role == p->role) {
            p->res.dropped++;
            return;
        }
    }
    path *x = find_path(p, sock, from);
    if (d.kind == UDP_DG_VERIFY && d.v.method == VERIFY_HELLO) {
        /* The peer draws a RANDOM per path: one seen on another path is a
         * copy of its HELLO sent from elsewhere (a replay), not a new path. */
        for (unsigned i = 0; i < p->npaths; i++) {
            path *o = p->paths[i];
            if (o != x && o->peer_hello_len &&
                CRYPTO_memcmp(o->peer_random, d.v.random, VERIFY_RANDOM_SIZE) == 0) {
                p->res.dropped++;
                return;
            }
        }
    }
    if (!x && (d.kind == UDP_DG_PROBE || (d.kind == UDP_DG_VERIFY && d.v.method == VERIFY_HELLO)))
        x = new_path(p, sock, from);
    if (!x || x->failed) {
        p->res.dropped++;
        return;
    }
    p->res.received++;
    if (p->res.reached_ms < 0)
        p->res.reached_ms = rel(p);
    int st = x->core->state;
    switch (d.kind) {
    case UDP_DG_PROBE:
        return; /* the path exists; our HELLO goes out on its timer */
    case UDP_DG_PICK:
        if (p->role == BROKER_ROLE_REQUESTER) {
            if (p->picked >= 0 && p->paths[p->picked] == x)
                finish(p, 0, x, "%s path verified, picked and confirmed",
                       udp_method_name(x->method));
        } else if (x->done) {
            if (own_socket(p, x) < 0) {
                finish(p, NTCP_ESYS, NULL, "a socket for the picked path: %s", strerror(errno));
                return;
            }
            send_pick(p, x); /* the confirmation; the requester hands over on it */
            finish(p, 0, x, "%s path verified and picked by the requester",
                   udp_method_name(x->method));
        }
        return; /* not verified here yet: the requester repeats PROOF and PICK */
    default:
        break;
    }
    switch (d.v.method) {
    case VERIFY_HELLO:
        if (st == VERIFY_WAIT_HELLO) {
            memcpy(x->peer_random, d.v.random, VERIFY_RANDOM_SIZE);
            feed(p, x, buf, n, true);
        } else if (n == x->peer_hello_len && memcmp(buf, x->peer_hello, n) == 0) {
            /* The peer repeats its HELLO: it lacks ours, or our PROOF. */
            if (now(p) >= x->last_tx + 20)
                retransmit(p, x);
        } else {
            p->res.dropped++; /* another HELLO on this path: a replay */
        }
        return;
    case VERIFY_PROOF:
        if (st == VERIFY_WAIT_PROOF)
            feed(p, x, buf, n, false);
        /* Before the HELLO (reordered: it comes again), or a repeat. */
        return;
    case VERIFY_REFUSE:
        if (st == VERIFY_WAIT_HELLO || st == VERIFY_WAIT_PROOF)
            feed(p, x, buf, n, false);
        return;
    }
}

/* ---- the loop ---- */

static void on_readable(uv_poll_t *h, int status, int events)
{
    psock *s = h->data;
    udp_puncher *p = s->p;
    (void)events;
    if (p->finished || status < 0)
        return;
    unsigned idx = (unsigned)(s - p->socks);
    uint8_t buf[VERIFY_MAX_MESSAGE + 1];
    for (int i = 0; i < RECV_BUDGET && !p->finished && s->fd >= 0; i++) {
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        int flags = MSG_DONTWAIT;
        path *pk = p->picked >= 0 ? p->paths[p->picked] : NULL;
        /* After its PICK the requester only peeks first: the target's own
         * data (or keepalive) on the picked path means it has confirmed,
         * and that datagram belongs to the application. */
        if (pk && pk->sock == idx)
            flags |= MSG_PEEK;
        ssize_t n = recvfrom(s->fd, buf, sizeof buf, flags, (struct sockaddr *)&from, &fl);
        if (n < 0)
            return; /* EAGAIN, or an ICMP error reported on the socket */
        if (flags & MSG_PEEK) {
            if (ntcp_sockaddr_equal((struct sockaddr *)&from, (struct sockaddr *)&pk->remote) &&
                !(n > 0 && (size_t)n <= VERIFY_MAX_MESSAGE && is_ours(buf, (size_t)n))) {
                finish(p, 0, pk, "%s path verified and picked; the target's data confirmed it",
                       udp_method_name(pk->method));
                return;
            }
            (void)recv(s->fd, buf, sizeof buf, MSG_DONTWAIT);
        }
        if (n > VERIFY_MAX_MESSAGE) {
            p->res.dropped++;
            continue;
        }
        on_dgram(p, idx, &from, buf, (size_t)n);
    }
}

static void probe_round(udp_puncher *p)
{
    for (unsigned s = 0; s < p->nsocks; s++) {
        if (p->socks[s].path_only)
            continue;
        for (size_t t = 0; t < p->plan.ntargets; t++) {
            const plan_ports *pp = &p->plan.t[t];
            struct sockaddr_storage to = pp->addr;
            uint16_t base = ntcp_sa_port(&pp->addr);
            for (unsigned k = 0; k < pp->count; k++) {
                ntcp_sa_set_port(&to, (uint16_t)(base + (int32_t)k * pp->step));
                send_probe(p, s, &to);
            }
        }
    }
}

static void random_probes(udp_puncher *p, uint64_t t)
{
    if (p->rsent >= p->nrports)
        return;
    uint64_t due = (t - p->start_at) * p->plan.random_pps / 1000 + 1;
    if (due > p->nrports)
        due = p->nrports;
    struct sockaddr_storage to = p->plan.random_ip;
    while (p->rsent < due) {
        ntcp_sa_set_port(&to, p->rports[p->rsent++]);
        send_probe(p, 0, &to);
    }
}

static bool any_done(const udp_puncher *p)
{
    for (unsigned i = 0; i < p->npaths; i++)
        if (p->paths[i]->done)
            return true;
    return false;
}

static void on_tick(uv_timer_t *timer)
{
    udp_puncher *p = timer->data;
    if (p->finished)
        return;
    uint64_t t = now(p);
    if (p->plan.status != 0) {
        finish(p, p->plan.status == NTCP_EUNREACHABLE ? NTCP_EUNREACHABLE : NTCP_EINVAL, NULL,
               "%s", p->plan.reason);
        return;
    }
    if (t < p->start_at)
        return;
    if (t >= p->deadline) {
        unsigned failed = 0;
        for (unsigned i = 0; i < p->npaths; i++)
            failed += p->paths[i]->failed;
        if (p->picked >= 0)
            finish(p, NTCP_ETIMEDOUT, NULL,
                   "the peer's proof verified here on %u path%s, but it never confirmed our pick "
                   "(it refused our proof, or every confirmation was lost)",
                   p->npaths, p->npaths == 1 ? "" : "s");
        else if (p->res.received == 0)
            finish(p, NTCP_ETIMEDOUT, NULL,
                   "no datagram of the peer arrived in %llu ms (%u probes sent, %u dropped): the "
                   "NATs let none of them through (%s)",
                   (unsigned long long)(t - p->start_at), p->res.probes, p->res.dropped,
                   udp_method_name(p->plan.method));
        else if (failed && failed == p->npaths && p->last_err == NTCP_EINTEGRITY)
            finish(p, NTCP_EINTEGRITY, NULL, "every proof failed (%u paths): %s", p->npaths,
                   p->last_why ? p->last_why : "");
        else
            finish(p, NTCP_ETIMEDOUT, NULL,
                   "the peer answered on %u path%s but no proof completed in time (%u failed%s%s)",
                   p->npaths, p->npaths == 1 ? "" : "s", failed, p->last_why ? ": " : "",
                   p->last_why ? p->last_why : "");
        return;
    }
    /* Probes until this end has a verified path. */
    if (!any_done(p)) {
        if (t >= p->next_round) {
            probe_round(p);
            p->rounds++;
            p->next_round = t + (p->nsocks > 1 ? BIRTHDAY_ROUND_MS : p->plan.interval_ms);
        }
        if (p->nrports)
            random_probes(p, t);
    }
    for (unsigned i = 0; i < p->npaths; i++) {
        path *x = p->paths[i];
        if (x->failed)
            continue;
        if (!x->done && t - x->started > p->verify_ms) {
            ntcp_verify_core_fail(x->core, NTCP_ETIMEDOUT, "the proof did not finish in time");
            path_failed(p, x);
            continue;
        }
        /* A done path needs nothing more, except the requester's picked one
         * until the target confirms. */
        bool want = !x->done || (p->picked >= 0 && p->paths[p->picked] == x);
        if (p->picked >= 0 && p->paths[p->picked] != x)
            want = false; /* the requester chose: the others go quiet */
        if (want && t >= x->next_tx)
            retransmit(p, x);
    }
}

/* ---- API ---- */

int ntcp_udp_punch_start(uv_loop_t *loop, const ntcp_udp_punch_config *cfg, ntcp_udp_punch_cb cb,
                         void *user, udp_puncher **out)
{
    if (out)
        *out = NULL;
    if (!loop || !cfg || !cfg->plan || !cb || cfg->fd < 0 || !cfg->verify.key ||
        !cfg->verify.name || !cfg->verify.peer_name || cfg->verify.role > BROKER_ROLE_TARGET)
        return NTCP_EINVAL;
    size_t nl = strlen(cfg->verify.name), pl = strlen(cfg->verify.peer_name);
    if (!broker_name_valid(cfg->verify.name, nl) || !broker_name_valid(cfg->verify.peer_name, pl))
        return NTCP_EINVAL;
    udp_puncher *p = calloc(1, sizeof *p);
    if (!p)
        return NTCP_ENOMEM;
    p->loop = loop;
    p->cb = cb;
    p->user = user;
    p->plan = *cfg->plan;
    p->vp = cfg->verify;
    memcpy(p->name, cfg->verify.name, nl + 1);
    memcpy(p->peer_name, cfg->verify.peer_name, pl + 1);
    p->vp.name = p->name;
    p->vp.peer_name = p->peer_name;
    p->role = cfg->verify.role;
    p->verify_ms = cfg->verify.timeout_ms ? cfg->verify.timeout_ms : VERIFY_DEFAULT_TIMEOUT_MS;
    p->picked = -1;
    p->res.reached_ms = p->res.verified_ms = -1;
    p->res.fd = -1;
    p->t_start_call = uv_now(loop);
    p->start_at = cfg->start_at;
    p->next_round = cfg->start_at;
    p->deadline = cfg->start_at + p->plan.deadline_ms + (cfg->grace_ms ? cfg->grace_ms : 2000);
    if (ntcp_verify_session_id(cfg->verify.nonce, p->sid) < 0) {
        free(p);
        return NTCP_ENOMEM;
    }
    unsigned ns = p->plan.status == 0 && p->plan.nsockets ? p->plan.nsockets : 1;
    /* Shared mode: one more, for the chosen path's own socket. */
    p->cap_socks = ns + (cfg->hub ? 1 : 0);
    p->socks = calloc(p->cap_socks, sizeof *p->socks);
    if (!p->socks) {
        free(p);
        return NTCP_ENOMEM;
    }
    if (p->plan.status == 0 && p->plan.random_probes) {
        /* A random order of the ports the NAT may hand out (birthday.h). */
        const unsigned span = 65536 - NTCP_BIRTHDAY_PORT_LO;
        unsigned np = p->plan.random_probes < span ? p->plan.random_probes : span;
        p->rports = malloc(np * sizeof *p->rports);
        if (!p->rports || ntcp_birthday_ports(p->rports, np) < 0) {
            free(p->rports);
            free(p->socks);
            free(p);
            return NTCP_ENOMEM;
        }
        p->nrports = np;
    }
    /* Socket 0 is the broker's; the birthday side opens the others. */
    int fl = fcntl(cfg->fd, F_GETFL);
    if (fl >= 0)
        fcntl(cfg->fd, F_SETFL, fl | O_NONBLOCK);
    struct sockaddr_storage l0;
    socklen_t l0len = sizeof l0;
    memset(&l0, 0, sizeof l0);
    getsockname(cfg->fd, (struct sockaddr *)&l0, &l0len);
    p->socks[0].fd = cfg->fd;
    p->nsocks = 1;
    for (unsigned i = 1; i < ns; i++) {
        int fd = socket(l0.ss_family ? l0.ss_family : AF_INET,
                        SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            break; /* out of descriptors: fewer sockets, a lower chance */
        p->socks[i].fd = fd;
        p->nsocks++;
    }
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    p->open_handles++;
    for (unsigned i = 0; i < p->nsocks; i++) {
        psock *s = &p->socks[i];
        s->p = p;
        if (i == 0 && cfg->hub)
            continue; /* the session reads it; the hub passes its datagrams on */
        if (uv_poll_init(loop, &s->poll, s->fd) == 0) {
            s->poll.data = s;
            s->polling = true;
            p->open_handles++;
            uv_poll_start(&s->poll, UV_READABLE, on_readable);
        }
    }
    if (cfg->hub) {
        p->hub = cfg->hub;
        p->hub_next = cfg->hub->head;
        cfg->hub->head = p;
    }
    uv_timer_start(&p->timer, on_tick, 0, TICK_MS);
    if (out)
        *out = p;
    return 0;
}

void ntcp_udp_punch_cancel(udp_puncher *p)
{
    if (p && !p->finished)
        finish(p, NTCP_ECLOSED, NULL, "cancelled");
}

size_t ntcp_udp_punch_result_json(const ntcp_udp_punch_result *r, char *buf, size_t len)
{
    char l[64] = "", m[64] = "", reason[sizeof r->reason];
    if (r->err == 0) {
        ntcp_addr_str((const struct sockaddr *)&r->local, l, sizeof l);
        ntcp_addr_str((const struct sockaddr *)&r->remote, m, sizeof m);
    }
    size_t k = 0;
    for (; r->reason[k] && k + 1 < sizeof reason; k++)
        reason[k] = (r->reason[k] == '"' || r->reason[k] == '\\' || (unsigned char)r->reason[k] < 32)
                        ? '\''
                        : r->reason[k];
    reason[k] = '\0';
    int n = snprintf(buf, len,
                     "{\"err\":%d,\"error\":\"%s\",\"method\":\"%s\",\"local\":\"%s\",\"remote\":\"%s\","
                     "\"reached_ms\":%lld,\"verified_ms\":%lld,\"elapsed_ms\":%llu,\"probes\":%u,"
                     "\"received\":%u,\"dropped\":%u,\"paths\":%u,\"sockets\":%u,\"reason\":\"%s\"}",
                     r->err, r->err ? ntcp_strerror(r->err) : "",
                     r->err == 0 ? udp_method_name(r->method) : "none", l, m,
                     (long long)r->reached_ms, (long long)r->verified_ms,
                     (unsigned long long)r->elapsed_ms, r->probes, r->received, r->dropped, r->paths,
                     r->sockets, reason);
    return n < 0 ? 0 : (size_t)n;
}

/* ---- keepalive ---- */

struct ntcp_udp_keepalive {
    uv_timer_t timer;
    int fd;      /* our duplicate: the only descriptor we ever write to */
    int app_fd;  /* the application's: watched, never written */
    dev_t dev;   /* the socket's identity, to tell it from a reused number */
    ino_t ino;
    bool ended;  /* the application closed its descriptor */
    unsigned sent;
};

uint32_t ntcp_udp_keepalive_interval_ms(int lifetime_s)
{
    if (lifetime_s <= 0)
        return 15000;
    uint32_t half = (uint32_t)lifetime_s * 1000 / 2;
    return half < 1000 ? 1000 : half > 60000 ? 60000 : half;
}

/* Has the application closed its descriptor? Its number then refers to
 * nothing, or to another file (reused): either way, not our socket. The
 * keepalive ends, and with our duplicate closed the socket and the NAT
 * mapping go. Returns whether it has ended. */
static bool keepalive_check_app(ntcp_udp_keepalive *k)
{
    if (k->ended)
        return true;
    struct stat st;
    if (fstat(k->app_fd, &st) < 0 || st.st_dev != k->dev || st.st_ino != k->ino) {
        k->ended = true;
        uv_timer_stop(&k->timer);
        close(k->fd);
        k->fd = -1;
    }
    return k->ended;
}

bool ntcp_udp_keepalive_path(ntcp_udp_keepalive *k, struct sockaddr_storage *local,
                             struct sockaddr_storage *remote)
{
    if (keepalive_check_app(k))
        return false;
    socklen_t ll = sizeof *local, rl = sizeof *remote;
    memset(local, 0, sizeof *local);
    memset(remote, 0, sizeof *remote);
    return getsockname(k->fd, (struct sockaddr *)local, &ll) == 0 &&
           getpeername(k->fd, (struct sockaddr *)remote, &rl) == 0;
}

static void on_keepalive(uv_timer_t *t)
{
    ntcp_udp_keepalive *k = t->data;
    if (keepalive_check_app(k))
        return;
    /* Zero bytes: the smallest datagram, and one no application protocol
     * needs for itself. Errors (an ICMP error reported, a full buffer) are
     * ignored: the next one may pass. */
    if (send(k->fd, "", 0, MSG_DONTWAIT | MSG_NOSIGNAL) == 0)
        k->sent++;
}

int ntcp_udp_keepalive_start(uv_loop_t *loop, int fd, uint32_t interval_ms,
                             ntcp_udp_keepalive **out)
{
    if (out)
        *out = NULL;
    if (!loop || fd < 0 || !out || interval_ms == 0)
        return NTCP_EINVAL;
    ntcp_udp_keepalive *k = calloc(1, sizeof *k);
    if (!k)
        return NTCP_ENOMEM;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        free(k);
        return NTCP_ESYS;
    }
    k->dev = st.st_dev;
    k->ino = st.st_ino;
    k->app_fd = fd;
    k->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (k->fd < 0) {
        free(k);
        return NTCP_ESYS;
    }
    uv_timer_init(loop, &k->timer);
    k->timer.data = k;
    uv_timer_start(&k->timer, on_keepalive, interval_ms, interval_ms);
    *out = k;
    return 0;
}

unsigned ntcp_udp_keepalive_count(const ntcp_udp_keepalive *k)
{
    return k->sent;
}

bool ntcp_udp_keepalive_ended(const ntcp_udp_keepalive *k)
{
    return k->ended;
}

static void on_keepalive_closed(uv_handle_t *h)
{
    free(h->data);
}

void ntcp_udp_keepalive_stop(ntcp_udp_keepalive *k)
{
    if (!k)
        return;
    uv_timer_stop(&k->timer);
    if (k->fd >= 0)
        close(k->fd);
    k->fd = -1;
    uv_close((uv_handle_t *)&k->timer, on_keepalive_closed);
}
