/*
 * raw_attempt.c: runs one STUNT#1 / NATBlaster attempt on the loop (the
 * steps are in raw_attempt.h): low-TTL SYN from a connecting socket, its ISN
 * captured and sent to the peer, the SYN-ACK crafted (NATBlaster) or left to
 * the broker (STUNT#1), the connected socket handed to the engine.
 */
#include "raw_attempt.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "ntcp.h"
#include "raw.h"
#include "sock_linux.h"

/* A socket that lived this long after its SYN was not ended by an ICMP
 * error: its ISN is the one to send. */
#define RAW_STABLE_MS 30
/* NATBlaster's SYN-ACK is sent again this often until connected (it may
 * reach the peer's NAT before the peer's own SYN has left it). */
#define RAW_RESEND_MS 200
#define RAW_MAX_SYNACKS 20
/* New sockets after an error ended one (see raw_attempt.h, step 2). */
#define RAW_MAX_REISSUE 24
#define RAW_REISSUE_MS 10
/* How long connect() may take to put the SYN where the capture sees it. */
#define RAW_CAPTURE_WAIT_MS 50

typedef struct rsock {
    uv_poll_t poll;
    raw_attempt *a;
    int fd;
} rsock;

struct raw_attempt {
    raw_attempt_cfg c;
    uv_timer_t timer;
    rsock *s;     /* the connecting socket, or NULL */
    int send_fd;  /* NATBlaster's raw socket, -1 */
    unsigned refs;
    bool stopped, done;
    bool connected;       /* handed over; NATBlaster still owes the peer its SYN-ACK */
    bool have_isn, isn_sent, have_peer;
    uint32_t isn, peer_isn;
    uint64_t isn_at;      /* when the current socket's SYN left (loop ms) */
    uint64_t retry_at;    /* a new socket then, 0 = none */
    uint64_t resend_at;   /* NATBlaster: the next SYN-ACK, 0 = none */
    unsigned reissues, synacks;
};

static void unref(raw_attempt *a)
{
    if (--a->refs == 0)
        free(a);
}

static void on_rsock_closed(uv_handle_t *h)
{
    rsock *s = h->data;
    raw_attempt *a = s->a;
    if (s->fd >= 0)
        close(s->fd);
    free(s);
    unref(a);
}

static void rsock_close(raw_attempt *a, bool keep_fd)
{
    rsock *s = a->s;
    if (!s)
        return;
    a->s = NULL;
    uv_poll_stop(&s->poll);
    if (keep_fd)
        s->fd = -1;
    uv_close((uv_handle_t *)&s->poll, on_rsock_closed);
}

static void arm(raw_attempt *a);
static void on_poll(uv_poll_t *h, int status, int events);

static void end(raw_attempt *a, int err, int sys, const char *why)
{
    if (a->done)
        return;
    a->done = true;
    rsock_close(a, false);
    uv_timer_stop(&a->timer);
    a->c.ended(a->c.user, err, sys, why);
}

/* One low-TTL SYN from a new socket, its ISN captured. */
static void issue(raw_attempt *a)
{
    rsock_close(a, false);
    a->have_isn = a->isn_sent = false;
    int cap = raw_capture_open(a->c.port, &a->c.target);
    if (cap < 0) {
        end(a, NTCP_ESYS, -cap, "cannot open the SYN capture (AF_PACKET)");
        return;
    }
    struct sockaddr_storage la;
    if (a->c.local_addr.ss_family == AF_INET) {
        la = a->c.local_addr;
    } else {
        memset(&la, 0, sizeof la);
        la.ss_family = AF_INET;
    }
    ntcp_sa_set_port(&la, a->c.port);
    int fd = ntcp_sock_open(AF_INET, SOCK_STREAM, NTCP_SOCK_REUSE, &la);
    int err = fd < 0 ? -fd : -ntcp_sock_set_ttl(fd, AF_INET, a->c.ttl);
    if (err == 0 && connect(fd, (struct sockaddr *)&a->c.target, sizeof(struct sockaddr_in)) < 0 &&
        errno != EINPROGRESS)
        err = errno;
    if (err != 0) {
        if (fd >= 0)
            close(fd);
        close(cap);
        /* The 4-tuple may still be held by a socket of an earlier method
         * that is closing: try again shortly, within the reissue budget. */
        if (a->reissues++ < RAW_MAX_REISSUE) {
            a->retry_at = uv_now(a->c.loop) + RAW_REISSUE_MS;
            arm(a);
        } else {
            end(a, NTCP_ESYS, err, "cannot send the low-TTL SYN from the session port");
        }
        return;
    }
    /* The SYN leaves inside connect() unless a queueing discipline holds
     * it: wait a little for it to show in the capture. */
    uint32_t isn = 0;
    int rc = NTCP_ENOTFOUND;
    for (int waited = 0; waited <= RAW_CAPTURE_WAIT_MS && rc == NTCP_ENOTFOUND; waited += 5) {
        rc = raw_capture_isn(cap, &isn);
        if (rc == NTCP_ENOTFOUND) {
            struct pollfd p = {.fd = cap, .events = POLLIN};
            poll(&p, 1, 5);
        }
    }
    close(cap);
    if (rc != 0) {
        close(fd);
        end(a, NTCP_ESYS, rc < 0 && rc != NTCP_ENOTFOUND ? -rc : 0,
            "the low-TTL SYN did not show in the capture");
        return;
    }
    rsock *s = calloc(1, sizeof *s);
    if (!s || uv_poll_init(a->c.loop, &s->poll, fd) < 0) {
        free(s);
        close(fd);
        end(a, NTCP_ENOMEM, 0, "cannot watch the socket");
        return;
    }
    ntcp_sock_recverr(fd, AF_INET, true);
    s->poll.data = s;
    s->a = a;
    s->fd = fd;
    a->s = s;
    a->refs++;
    uv_poll_start(&s->poll, UV_WRITABLE, on_poll);
    a->isn = isn;
    a->have_isn = true;
    a->isn_at = uv_now(a->c.loop);
    arm(a);
}

static void send_synack(raw_attempt *a)
{
    if (!a->c.natblaster || !a->have_isn || !a->isn_sent || !a->have_peer ||
        (!a->s && !a->connected) || a->stopped)
        return;
    /* From our NAT's external address and port, the 4-tuple the peer's NAT
     * recorded for its SYN: our NAT finds no state for it (its own state is
     * for our private address) and forwards it untranslated. */
    raw_segment seg;
    memset(&seg, 0, sizeof seg);
    seg.src = a->c.ext;
    seg.dst = a->c.target;
    seg.seq = a->isn;
    seg.ack = a->peer_isn + 1;
    seg.flags = RAW_TCP_SYN | RAW_TCP_ACK;
    seg.window = 65535;
    seg.mss = 1400;
    raw_send_tcp(a->send_fd, &seg);
    a->synacks++;
    a->resend_at = a->synacks < RAW_MAX_SYNACKS ? uv_now(a->c.loop) + RAW_RESEND_MS : 0;
}

static void on_timer(uv_timer_t *t)
{
    raw_attempt *a = t->data;
    if (a->done)
        return;
    uint64_t now = uv_now(a->c.loop);
    if (a->retry_at && now >= a->retry_at) {
        a->retry_at = 0;
        issue(a);
        if (a->done)
            return;
    }
    if (a->have_isn && !a->isn_sent && a->s && !a->connected && now >= a->isn_at + RAW_STABLE_MS) {
        a->isn_sent = true;
        a->c.send_isn(a->c.user, &a->c.ext, a->isn, !a->c.natblaster);
        if (a->done)
            return;
        a->synacks = 0;
        send_synack(a);
    } else if (a->resend_at && now >= a->resend_at) {
        send_synack(a);
    }
    arm(a);
}

static void arm(raw_attempt *a)
{
    if (a->done)
        return;
    uint64_t now = uv_now(a->c.loop), next = UINT64_MAX;
    if (a->retry_at)
        next = a->retry_at;
    if (a->have_isn && !a->isn_sent && a->isn_at + RAW_STABLE_MS < next)
        next = a->isn_at + RAW_STABLE_MS;
    if (a->resend_at && a->resend_at < next)
        next = a->resend_at;
    if (next == UINT64_MAX)
        uv_timer_stop(&a->timer);
    else
        uv_timer_start(&a->timer, on_timer, next > now ? next - now : 0, 0);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    (void)events;
    rsock *s = h->data;
    raw_attempt *a = s->a;
    if (a->done || s != a->s)
        return;
    int err = 0;
    socklen_t sl = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
        err = errno;
    if (err == 0 && status < 0)
        err = EIO;
    if (err == 0) {
        int fd = s->fd;
        ntcp_sock_set_ttl(fd, AF_INET, -1); /* the system's default */
        rsock_close(a, true);
        /* The peer's SYN-ACK may have come before its ISN did (they travel
         * different paths): the peer's socket still waits for ours. So a
         * NATBlaster attempt goes on sending it until stopped. */
        a->connected = true;
        a->retry_at = 0;
        a->done = !a->c.natblaster;
        if (a->done)
            uv_timer_stop(&a->timer);
        else
            send_synack(a);
        a->c.connected(a->c.user, fd);
        return;
    }
    /* An ICMP error (the low-TTL SYN's "time exceeded", usually) or an RST
     * ended the socket: a new SYN, with a new ISN, from a new socket. */
    rsock_close(a, false);
    a->have_isn = false;
    a->resend_at = 0;
    if (a->reissues++ >= RAW_MAX_REISSUE) {
        end(a, NTCP_EUNREACHABLE, err, "every low-TTL SYN was ended by an ICMP error or RST");
        return;
    }
    a->retry_at = uv_now(a->c.loop) + (err == ECONNREFUSED ? 100 : 0);
    arm(a);
}

int raw_attempt_start(const raw_attempt_cfg *cfg, raw_attempt **out, const char **why)
{
    static char reason[160];
    *why = "";
    if (!cfg || !out || !cfg->send_isn || !cfg->connected || !cfg->ended || cfg->port == 0 ||
        cfg->target.ss_family != AF_INET || cfg->ext.ss_family != AF_INET) {
        *why = "raw methods need IPv4 addresses and the session port";
        return NTCP_EINVAL;
    }
    if (raw_check(reason, sizeof reason) < 0) {
        *why = reason; /* one loop thread per process writes it */
        return NTCP_EUNREACHABLE;
    }
    raw_attempt *a = calloc(1, sizeof *a);
    if (!a)
        return NTCP_ENOMEM;
    a->c = *cfg;
    if (a->c.ttl == 0)
        a->c.ttl = 2;
    a->send_fd = -1;
    if (cfg->natblaster) {
        a->send_fd = raw_send_open();
        if (a->send_fd < 0) {
            free(a);
            *why = "cannot open the raw socket for the SYN-ACK";
            return NTCP_EUNREACHABLE;
        }
    }
    if (uv_timer_init(cfg->loop, &a->timer) < 0) {
        if (a->send_fd >= 0)
            close(a->send_fd);
        free(a);
        return NTCP_ENOMEM;
    }
    a->timer.data = a;
    a->refs = 1;
    /* The first SYN from the loop, not from inside this call. */
    a->retry_at = uv_now(cfg->loop);
    arm(a);
    *out = a;
    return 0;
}

void raw_attempt_peer_isn(raw_attempt *a, uint32_t isn)
{
    if (!a || a->done)
        return;
    if (a->have_peer && a->peer_isn == isn)
        return;
    a->have_peer = true;
    a->peer_isn = isn;
    a->synacks = 0;
    send_synack(a);
    arm(a);
}

bool raw_attempt_have_isn(const raw_attempt *a, uint32_t *isn)
{
    if (a && a->have_isn && isn)
        *isn = a->isn;
    return a && a->have_isn;
}

static void on_timer_closed(uv_handle_t *h)
{
    unref(h->data);
}

void raw_attempt_stop(raw_attempt *a)
{
    if (!a || a->stopped)
        return;
    a->stopped = true;
    a->done = true;
    rsock_close(a, false);
    if (a->send_fd >= 0)
        close(a->send_fd);
    a->send_fd = -1;
    uv_timer_stop(&a->timer);
    uv_close((uv_handle_t *)&a->timer, on_timer_closed);
}
