/*
 * relay.c: the relay of last resort for one TCP connect (relay.h): the
 * target's TURN allocation and the requester's plain connect to it, the key
 * proof over the relayed stream, and the keeper that holds the allocation
 * while the application's socket lives.
 */
#include "relay.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "addr.h"
#include "broker_proto.h"
#include "turn_client.h"

#define RELAY_TICK_MS 100
#define RELAY_KEEP_CHECK_MS 2000

struct ntcp_relay {
    uv_loop_t *loop;
    ntcp_relay_cb cb;
    void *user;
    bool allocator;
    struct sockaddr_storage server, peer_public;
    char user_name[BROKER_TURN_USER_MAX + 1], pass[BROKER_TURN_PASS_MAX + 1];
    ntcp_verify_params vp;
    char name[BROKER_NAME_MAX + 1], peer_name[BROKER_NAME_MAX + 1];
    uint32_t timeout_ms;
    void (*send_addr)(void *user, const struct sockaddr_storage *relayed, const char *why);
    void *send_user;
    char peer_why[208]; /* connector: why the peer has no relay */

    turn_client *tc;
    ntcp_verify *v;
    int cfd;                  /* connector: the socket being connected */
    uv_poll_t cpoll;
    bool cpoll_open;
    uv_timer_t timer;
    unsigned handles;

    bool addr_known, addr_none, went, done, cancelled, timed_out, kept, freeing;
    bool addr_sent;
    uint64_t deadline, connected_at;
    int alloc_err;
    char alloc_why[256];
    struct sockaddr_storage relayed;

    /* keeper */
    int app_fd;
    dev_t dev;
    ino_t ino;
    ntcp_relay **list;
    ntcp_relay *next;
};

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void on_handle_closed(uv_handle_t *h)
{
    ntcp_relay *r = h->data;
    if (--r->handles == 0)
        free(r);
}

/* Closes everything left; r is freed once its handles are closed. */
static void relay_free(ntcp_relay *r)
{
    if (r->freeing)
        return;
    r->freeing = true;
    if (r->list) {
        for (ntcp_relay **p = r->list; *p; p = &(*p)->next)
            if (*p == r) {
                *p = r->next;
                break;
            }
        r->list = NULL;
    }
    if (r->tc) {
        turn_client_close(r->tc);
        r->tc = NULL;
    }
    if (r->cpoll_open) {
        uv_poll_stop(&r->cpoll);
        uv_close((uv_handle_t *)&r->cpoll, on_handle_closed);
        r->cpoll_open = false;
    }
    if (r->cfd >= 0) {
        close(r->cfd);
        r->cfd = -1;
    }
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, on_handle_closed);
}

/* The one callback; then r goes, unless the allocator's caller kept it. */
static void finish(ntcp_relay *r, int err, int fd, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void finish(ntcp_relay *r, int err, int fd, const char *fmt, ...)
{
    if (r->done)
        return;
    r->done = true;
    ntcp_relay_result res;
    memset(&res, 0, sizeof res);
    res.err = err;
    res.fd = fd;
    res.server = r->server;
    res.relayed = r->relayed;
    res.connected_at = r->connected_at;
    res.verified_at = err == 0 ? mono_ms() : 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res.why, sizeof res.why, fmt, ap);
    va_end(ap);
    if (fd >= 0) {
        socklen_t l = sizeof res.local;
        getsockname(fd, (struct sockaddr *)&res.local, &l);
        l = sizeof res.remote;
        getpeername(fd, (struct sockaddr *)&res.remote, &l);
    }
    r->cb(r, &res, r->user);
    if (!r->kept)
        relay_free(r);
}

static void on_verified(ntcp_verify *v, const ntcp_verify_result *vr, void *user)
{
    (void)v;
    ntcp_relay *r = user;
    r->v = NULL;
    char sb[64];
    ntcp_addr_str((struct sockaddr *)&r->server, sb, sizeof sb);
    if (vr->err == 0)
        finish(r, 0, vr->fd, "relayed through the TURN server %s", sb);
    else if (r->cancelled)
        finish(r, NTCP_ECLOSED, -1, "cancelled");
    else if (r->timed_out)
        finish(r, NTCP_ETIMEDOUT, -1, "timed out in the key proof over the relay %s", sb);
    else
        finish(r, vr->err, -1, "the key proof over the relay %s failed: %s", sb,
               vr->why ? vr->why : ntcp_strerror(vr->err));
}

static void start_proof(ntcp_relay *r, int fd)
{
    r->connected_at = mono_ms();
    int rc = ntcp_verify_start(r->loop, fd, &r->vp, on_verified, r, &r->v);
    if (rc < 0) {
        close(fd);
        r->v = NULL;
        finish(r, rc, -1, "cannot start the key proof over the relay: %s", ntcp_strerror(rc));
    }
}

/* ---- the allocator ---- */

static void send_addr(ntcp_relay *r, const struct sockaddr_storage *relayed)
{
    if (r->addr_sent)
        return;
    r->addr_sent = true;
    if (r->send_addr)
        r->send_addr(r->send_user, relayed, relayed ? NULL : r->alloc_why);
}

static void on_turn(turn_client *c, const turn_event *ev, void *user)
{
    ntcp_relay *r = user;
    switch (ev->type) {
    case TURN_EV_ALLOCATED:
        r->relayed = ev->relayed;
        if (turn_client_permit(c, (const struct sockaddr *)&r->peer_public) < 0) {
            r->alloc_err = NTCP_EINVAL;
            snprintf(r->alloc_why, sizeof r->alloc_why, "no address of the peer to permit");
            send_addr(r, NULL);
        }
        return;
    case TURN_EV_PERMITTED:
        send_addr(r, &r->relayed);
        return;
    case TURN_EV_CONNECTION:
        /* The first connection to the relayed address is the peer's (only
         * its IP is permitted); the proof decides. Others are closed. */
        if (r->done || r->v)
            close(ev->fd);
        else
            start_proof(r, ev->fd);
        return;
    case TURN_EV_ERROR:
        if (r->done) {
            /* A keeper whose allocation died: nothing left to keep. */
            if (r->kept && (ev->err == NTCP_ECLOSED || !r->tc))
                relay_free(r);
            return;
        }
        if (!r->addr_sent) {
            r->alloc_err = ev->err;
            snprintf(r->alloc_why, sizeof r->alloc_why, "%s", ev->why);
            send_addr(r, NULL);
            if (r->went && !r->v)
                finish(r, ev->err, -1, "relay: %s", ev->why);
        } else if (ev->err == NTCP_ECLOSED && !r->v) {
            finish(r, NTCP_EUNREACHABLE, -1, "relay: %s", ev->why);
        }
        return;
    case TURN_EV_DATA:
        return;
    }
}

/* ---- the connector ---- */

static void on_connect_poll(uv_poll_t *h, int status, int events)
{
    (void)events;
    ntcp_relay *r = h->data;
    int err = 0;
    socklen_t el = sizeof err;
    if (status < 0 || getsockopt(r->cfd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
        err = err ? err : EIO;
    uv_poll_stop(&r->cpoll);
    uv_close((uv_handle_t *)&r->cpoll, on_handle_closed);
    r->cpoll_open = false;
    int fd = r->cfd;
    r->cfd = -1;
    if (err) {
        close(fd);
        char ab[64];
        finish(r, NTCP_EUNREACHABLE, -1, "the relayed address %s: %s",
               ntcp_addr_str((struct sockaddr *)&r->relayed, ab, sizeof ab), strerror(err));
        return;
    }
    start_proof(r, fd);
}

static void connect_relayed(ntcp_relay *r)
{
    char ab[64];
    ntcp_addr_str((struct sockaddr *)&r->relayed, ab, sizeof ab);
    int fd = socket(r->relayed.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        finish(r, NTCP_ESYS, -1, "socket: %s", strerror(errno));
        return;
    }
    if (connect(fd, (struct sockaddr *)&r->relayed, ntcp_sa_len(&r->relayed)) < 0 &&
        errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        finish(r, NTCP_EUNREACHABLE, -1, "the relayed address %s: %s", ab, strerror(e));
        return;
    }
    if (uv_poll_init(r->loop, &r->cpoll, fd) < 0) {
        close(fd);
        finish(r, NTCP_ESYS, -1, "cannot watch the connect to %s", ab);
        return;
    }
    r->cfd = fd;
    r->cpoll.data = r;
    r->cpoll_open = true;
    r->handles++;
    uv_poll_start(&r->cpoll, UV_WRITABLE, on_connect_poll);
}

/* ---- time ---- */

static void on_timer(uv_timer_t *t)
{
    ntcp_relay *r = t->data;
    if (r->kept) {
        /* Is the application's descriptor still our socket? */
        struct stat st;
        if (fstat(r->app_fd, &st) < 0 || st.st_dev != r->dev || st.st_ino != r->ino)
            relay_free(r);
        return;
    }
    if (r->done || !r->went)
        return;
    char ab[64];
    if (r->cancelled) {
        if (!r->v)
            finish(r, NTCP_ECLOSED, -1, "cancelled");
        return;
    }
    if (r->allocator && r->alloc_err && !r->v) {
        finish(r, r->alloc_err, -1, "relay: %s", r->alloc_why);
        return;
    }
    if (!r->allocator && r->addr_none) {
        finish(r, NTCP_EUNREACHABLE, -1, "the peer has no relay: %s",
               r->peer_why[0] ? r->peer_why : "(no reason given)");
        return;
    }
    if (mono_ms() < r->deadline)
        return;
    if (r->v) {
        r->timed_out = true;
        ntcp_verify_cancel(r->v);
        return;
    }
    if (r->allocator)
        finish(r, NTCP_ETIMEDOUT, -1, "no connection came to the relayed address %s in time",
               r->addr_sent ? ntcp_addr_str((struct sockaddr *)&r->relayed, ab, sizeof ab) : "(none)");
    else if (!r->addr_known)
        finish(r, NTCP_ETIMEDOUT, -1, "no relayed address from the peer in time");
    else
        finish(r, NTCP_ETIMEDOUT, -1, "timed out connecting to the relayed address %s",
               ntcp_addr_str((struct sockaddr *)&r->relayed, ab, sizeof ab));
}

/* ---- API ---- */

int ntcp_relay_start(uv_loop_t *loop, const ntcp_relay_config *cfg, ntcp_relay_cb cb, void *user,
                     ntcp_relay **out)
{
    if (out)
        *out = NULL;
    if (!loop || !cfg || !cb || !cfg->user || !cfg->pass || !cfg->verify.key ||
        !cfg->verify.name || !cfg->verify.peer_name ||
        strlen(cfg->user) > BROKER_TURN_USER_MAX || strlen(cfg->pass) > BROKER_TURN_PASS_MAX ||
        strlen(cfg->verify.name) > BROKER_NAME_MAX || strlen(cfg->verify.peer_name) > BROKER_NAME_MAX)
        return NTCP_EINVAL;
    ntcp_relay *r = calloc(1, sizeof *r);
    if (!r)
        return NTCP_ENOMEM;
    r->loop = loop;
    r->cb = cb;
    r->user = user;
    r->allocator = cfg->allocator;
    r->server = cfg->server;
    r->peer_public = cfg->peer_public;
    snprintf(r->user_name, sizeof r->user_name, "%s", cfg->user);
    snprintf(r->pass, sizeof r->pass, "%s", cfg->pass);
    r->vp = cfg->verify;
    snprintf(r->name, sizeof r->name, "%s", cfg->verify.name);
    snprintf(r->peer_name, sizeof r->peer_name, "%s", cfg->verify.peer_name);
    r->vp.name = r->name;
    r->vp.peer_name = r->peer_name;
    r->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 5000;
    r->send_addr = cfg->send_addr;
    r->send_user = cfg->send_user;
    r->cfd = -1;
    r->app_fd = -1;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    r->handles = 1;
    uv_timer_start(&r->timer, on_timer, RELAY_TICK_MS, RELAY_TICK_MS);
    if (r->allocator) {
        turn_client_config tc = {.server = r->server, .user = r->user_name, .pass = r->pass,
                                 .transport = TURN_TRANSPORT_TCP, .timeout_ms = r->timeout_ms};
        int rc = turn_client_start(loop, &tc, on_turn, r, &r->tc);
        if (rc < 0) {
            r->tc = NULL;
            r->alloc_err = rc;
            snprintf(r->alloc_why, sizeof r->alloc_why, "cannot start the TURN client: %s",
                     ntcp_strerror(rc));
        }
    }
    if (out)
        *out = r;
    return 0;
}

void ntcp_relay_peer_addr(ntcp_relay *r, const struct sockaddr_storage *relayed, const char *why)
{
    if (!r || r->allocator || r->done || r->addr_known || r->addr_none)
        return;
    if (!relayed || (relayed->ss_family != AF_INET && relayed->ss_family != AF_INET6)) {
        r->addr_none = true;
        snprintf(r->peer_why, sizeof r->peer_why, "%s", why ? why : "");
        return; /* reported by the timer once gone */
    }
    r->relayed = *relayed;
    r->addr_known = true;
    if (r->went)
        connect_relayed(r);
}

void ntcp_relay_go(ntcp_relay *r, uint64_t deadline)
{
    if (!r || r->done || r->went)
        return;
    r->went = true;
    r->deadline = deadline;
    if (!r->allocator && r->addr_known)
        connect_relayed(r);
    /* The rest (a failed allocation, no address) is told by the timer: never
     * from inside this call. */
}

void ntcp_relay_cancel(ntcp_relay *r)
{
    if (!r || r->done || r->cancelled)
        return;
    r->cancelled = true;
    r->went = true;
    if (r->v)
        ntcp_verify_cancel(r->v); /* its callback finishes with NTCP_ECLOSED */
    /* otherwise the next tick does */
}

void ntcp_relay_keep(ntcp_relay *r, int app_fd, ntcp_relay **list)
{
    if (!r || !list || !r->allocator || r->kept || app_fd < 0)
        return;
    struct stat st;
    if (fstat(app_fd, &st) < 0)
        return; /* not kept: freed after the callback */
    r->kept = true;
    r->app_fd = app_fd;
    r->dev = st.st_dev;
    r->ino = st.st_ino;
    r->list = list;
    r->next = *list;
    *list = r;
    uv_timer_start(&r->timer, on_timer, RELAY_KEEP_CHECK_MS, RELAY_KEEP_CHECK_MS);
}

void ntcp_relay_close_all(ntcp_relay **list)
{
    while (list && *list)
        relay_free(*list);
}
