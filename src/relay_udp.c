/*
 * relay_udp.c: the target's bridge for a UDP path through the relay
 * (relay.h): a TURN UDP allocation, and two loopback UDP sockets between
 * which the punch engine, and then the application, see an ordinary peer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "addr.h"
#include "broker_proto.h"
#include "relay.h"
#include "turn_client.h"

#define BRIDGE_KEEP_CHECK_MS 2000

struct ntcp_relay_bridge {
    uv_loop_t *loop;
    turn_client *tc;
    struct sockaddr_storage server, peer_public, relayed;
    struct sockaddr_storage peer;   /* the requester as coturn sees it (first Data) */
    bool have_peer;
    int a_fd, l_fd;                 /* A: the application's; L: ours */
    struct sockaddr_storage l_addr;
    uv_poll_t lpoll;
    bool lpoll_open;
    uv_timer_t timer;
    unsigned handles;
    int state;                      /* 0 allocating, 1 ready, < 0 failed */
    bool reported, closing;
    char why[256];
    void (*send_addr)(void *user, const struct sockaddr_storage *relayed, const char *why);
    void *send_user;
    void (*peer_seen)(void *user);
    char user_name[BROKER_TURN_USER_MAX + 1], pass[BROKER_TURN_PASS_MAX + 1];
    /* keeper */
    int app_fd;
    dev_t dev;
    ino_t ino;
    ntcp_relay_bridge **list;
    ntcp_relay_bridge *next;
};

static void on_closed(uv_handle_t *h)
{
    ntcp_relay_bridge *b = h->data;
    if (--b->handles == 0)
        free(b);
}

void ntcp_relay_bridge_close(ntcp_relay_bridge *b)
{
    if (!b || b->closing)
        return;
    b->closing = true;
    if (b->list) {
        for (ntcp_relay_bridge **p = b->list; *p; p = &(*p)->next)
            if (*p == b) {
                *p = b->next;
                break;
            }
        b->list = NULL;
    }
    if (b->tc)
        turn_client_close(b->tc);
    b->tc = NULL;
    if (b->lpoll_open) {
        uv_poll_stop(&b->lpoll);
        uv_close((uv_handle_t *)&b->lpoll, on_closed);
        b->lpoll_open = false;
    }
    if (b->l_fd >= 0)
        close(b->l_fd);
    if (b->a_fd >= 0)
        close(b->a_fd);
    b->l_fd = b->a_fd = -1;
    uv_timer_stop(&b->timer);
    uv_close((uv_handle_t *)&b->timer, on_closed);
}

static void report(ntcp_relay_bridge *b)
{
    if (b->reported)
        return;
    b->reported = true;
    if (b->send_addr)
        b->send_addr(b->send_user, b->state == 1 ? &b->relayed : NULL, b->state == 1 ? NULL : b->why);
}

static void fail(ntcp_relay_bridge *b, int err, const char *why)
{
    if (b->state < 0)
        return;
    b->state = err < 0 ? err : NTCP_EUNREACHABLE;
    snprintf(b->why, sizeof b->why, "%s", why);
    report(b);
}

/* From the application (A) to the peer, through the relay. */
static void on_l_readable(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    ntcp_relay_bridge *b = h->data;
    uint8_t buf[65536];
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(b->l_fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0)
            return;
        /* Before the peer's first datagram its address (as coturn sees it)
         * is unknown: the punch's probes repeat, so nothing is lost. */
        if (b->have_peer && b->tc)
            turn_client_send(b->tc, (struct sockaddr *)&b->peer, buf, (size_t)n);
    }
}

static int make_bridge(ntcp_relay_bridge *b)
{
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_storage a_addr;
    socklen_t sl;
    b->a_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    b->l_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (b->a_fd < 0 || b->l_fd < 0 || bind(b->a_fd, (struct sockaddr *)&lo, sizeof lo) < 0 ||
        bind(b->l_fd, (struct sockaddr *)&lo, sizeof lo) < 0)
        return NTCP_ESYS;
    sl = sizeof a_addr;
    if (getsockname(b->a_fd, (struct sockaddr *)&a_addr, &sl) < 0)
        return NTCP_ESYS;
    sl = sizeof b->l_addr;
    if (getsockname(b->l_fd, (struct sockaddr *)&b->l_addr, &sl) < 0)
        return NTCP_ESYS;
    /* L hears only A (and sends only to it). */
    if (connect(b->l_fd, (struct sockaddr *)&a_addr, sizeof(struct sockaddr_in)) < 0)
        return NTCP_ESYS;
    /* Room for a burst while the loop is busy. */
    int sz = 1 << 20;
    setsockopt(b->l_fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    setsockopt(b->a_fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    if (uv_poll_init(b->loop, &b->lpoll, b->l_fd) < 0)
        return NTCP_ESYS;
    b->lpoll.data = b;
    b->lpoll_open = true;
    b->handles++;
    uv_poll_start(&b->lpoll, UV_READABLE, on_l_readable);
    return 0;
}

static void on_turn(turn_client *c, const turn_event *ev, void *user)
{
    (void)c;
    ntcp_relay_bridge *b = user;
    switch (ev->type) {
    case TURN_EV_ALLOCATED:
        b->relayed = ev->relayed;
        if (turn_client_permit(b->tc, (const struct sockaddr *)&b->peer_public) < 0)
            fail(b, NTCP_EINVAL, "no address of the peer to permit");
        return;
    case TURN_EV_PERMITTED:
        if (make_bridge(b) < 0) {
            char w[128];
            snprintf(w, sizeof w, "cannot make the relay's local sockets: %s", strerror(errno));
            fail(b, NTCP_ESYS, w);
            return;
        }
        b->state = 1;
        report(b);
        return;
    case TURN_EV_DATA:
        /* The requester's datagram: its address as coturn sees it is where
         * ours go. A datagram from another permitted address (none: only
         * the requester's IP is) would take its place. */
        b->peer = ev->peer;
        if (b->l_fd >= 0)
            send(b->l_fd, ev->data, ev->len, MSG_DONTWAIT);
        if (!b->have_peer) {
            b->have_peer = true;
            if (b->peer_seen)
                b->peer_seen(b->send_user); /* last: it may take A at once */
        }
        return;
    case TURN_EV_ERROR:
        if (b->state == 0) {
            fail(b, ev->err, ev->why);
        } else if (ev->err == NTCP_ECLOSED && b->app_fd >= 0) {
            ntcp_relay_bridge_close(b); /* a keeper whose allocation died */
        }
        return;
    case TURN_EV_CONNECTION:
        close(ev->fd); /* not for a UDP allocation */
        return;
    }
}

static void on_timer(uv_timer_t *t)
{
    ntcp_relay_bridge *b = t->data;
    struct stat st;
    if (b->app_fd >= 0 &&
        (fstat(b->app_fd, &st) < 0 || st.st_dev != b->dev || st.st_ino != b->ino))
        ntcp_relay_bridge_close(b);
}

int ntcp_relay_bridge_start(uv_loop_t *loop, const ntcp_relay_config *cfg, ntcp_relay_bridge **out)
{
    if (out)
        *out = NULL;
    if (!loop || !cfg || !cfg->user || !cfg->pass || !out ||
        strlen(cfg->user) > BROKER_TURN_USER_MAX || strlen(cfg->pass) > BROKER_TURN_PASS_MAX)
        return NTCP_EINVAL;
    ntcp_relay_bridge *b = calloc(1, sizeof *b);
    if (!b)
        return NTCP_ENOMEM;
    b->loop = loop;
    b->server = cfg->server;
    b->peer_public = cfg->peer_public;
    b->send_addr = cfg->send_addr;
    b->send_user = cfg->send_user;
    b->peer_seen = cfg->peer_seen;
    b->a_fd = b->l_fd = b->app_fd = -1;
    snprintf(b->user_name, sizeof b->user_name, "%s", cfg->user);
    snprintf(b->pass, sizeof b->pass, "%s", cfg->pass);
    uv_timer_init(loop, &b->timer);
    b->timer.data = b;
    b->handles = 1;
    turn_client_config tc = {.server = b->server, .user = b->user_name, .pass = b->pass,
                             .transport = TURN_TRANSPORT_UDP, .timeout_ms = cfg->timeout_ms};
    int rc = turn_client_start(loop, &tc, on_turn, b, &b->tc);
    if (rc < 0) {
        b->tc = NULL;
        b->state = rc;
        snprintf(b->why, sizeof b->why, "cannot start the TURN client: %s", ntcp_strerror(rc));
    }
    *out = b;
    if (b->state < 0)
        report(b); /* the peer must not wait for an address */
    return 0;
}

int ntcp_relay_bridge_state(const ntcp_relay_bridge *b, const char **why)
{
    if (why)
        *why = b->why;
    return b->state;
}

int ntcp_relay_bridge_take(ntcp_relay_bridge *b, struct sockaddr_storage *peer_standin)
{
    if (!b || b->state != 1 || b->a_fd < 0)
        return NTCP_EINVAL;
    int fd = b->a_fd;
    b->a_fd = -1;
    *peer_standin = b->l_addr;
    return fd;
}

const struct sockaddr_storage *ntcp_relay_bridge_relayed(const ntcp_relay_bridge *b)
{
    return &b->relayed;
}

const struct sockaddr_storage *ntcp_relay_bridge_server(const ntcp_relay_bridge *b)
{
    return &b->server;
}

void ntcp_relay_bridge_keep(ntcp_relay_bridge *b, int app_fd, ntcp_relay_bridge **list)
{
    struct stat st;
    if (!b || !list || app_fd < 0 || fstat(app_fd, &st) < 0) {
        ntcp_relay_bridge_close(b);
        return;
    }
    b->app_fd = app_fd;
    b->dev = st.st_dev;
    b->ino = st.st_ino;
    b->list = list;
    b->next = *list;
    *list = b;
    uv_timer_start(&b->timer, on_timer, BRIDGE_KEEP_CHECK_MS, BRIDGE_KEEP_CHECK_MS);
}

void ntcp_relay_bridge_close_all(ntcp_relay_bridge **list)
{
    while (list && *list)
        ntcp_relay_bridge_close(*list);
}
