/*
 * engine.c: runs this end's traversal plan on a libuv loop: the attempts'
 * sockets at their offsets, the key proof on each connection from the peer,
 * one winner agreed with the peer, everything else closed (engine.h).
 */
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/errqueue.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "birthday.h"
#include "raw_attempt.h"
#include "retry.h"
#include "sock_linux.h"

/* Connections under proof at once: more would only be a peer (or a
 * stranger) flooding us. */
#define ENGINE_MAX_VERIFY 8

/* The byte the requester sends on the connection it keeps, right after its
 * proof succeeded (see select_* below). */
#define ENGINE_SELECT_BYTE 0x53

/* A punch's SYN is sent again this often (see punch_one). */
#define ENGINE_REPUNCH_MS 800
/* After an ICMP error or RST ended a punch socket: punch again this soon,
 * at most this many times per attempt. */
#define ENGINE_REPUNCH_RETRY_MS 10
/* The punch TTL is never raised past this while learning (punch_ttl_seen). */
#define ENGINE_MAX_TTL 16
/* SPRAY (birthday) opens this many sockets every ENGINE_SPRAY_TICK_MS: 256
 * in 64 ms, then re-punches each every ENGINE_REPUNCH_MS (320 low-TTL SYNs
 * a second, which die at the first router past the NAT). */
#define ENGINE_SPRAY_BATCH 8
#define ENGINE_SPRAY_TICK_MS 2
#define ENGINE_BIRTHDAY_TICK_MS 10
/* GUESS: at most this many guesses sent in one tick, and waiting at once. */
#define ENGINE_GUESS_BURST 32
#define ENGINE_GUESS_OPEN 256

enum { SK_CONNECT = 1, SK_LISTEN, SK_SELECT };

typedef struct eattempt eattempt;

typedef struct esock {
    uv_poll_t poll;
    ntcp_engine *e;
    eattempt *at;
    struct esock *next;
    int fd;
    int kind;
    unsigned idx; /* SK_CONNECT: which target of the window */
    uint8_t ttl;  /* SK_CONNECT of a PUNCH: the TTL its SYN was sent with */
    uint64_t expire; /* SK_CONNECT of a GUESS: closed then unless its handshake is under way */
    /* SK_SELECT: the verified connection waiting for the requester's choice */
    struct sockaddr_storage local, remote;
    int64_t connected_ms;
    uint8_t binding[VERIFY_BINDING_SIZE];
} esock;

struct eattempt {
    plan_attempt p;
    ntcp_attempt_report *rep;
    bool started, stopped;
    uint16_t issued;
    uint64_t next_at; /* next re-issue on the loop clock, 0 = none */
    uint16_t port;    /* fixed local port once known (SESSION, FRESH) */
    /* Targets whose connect was refused, to be tried again at retry_at. */
    uint64_t retry_at;
    uint32_t retry_mask;
    unsigned repunches; /* punches sent again after an ICMP error or RST */
    uint8_t ttl;        /* PUNCH: the TTL of its next low-TTL SYN */
    /* PUNCH with a hold time (plan_attempt.hold_ms): whether it has come,
     * and the targets whose 4-tuple a normal-TTL socket now holds. */
    bool hold_due;
    uint32_t held;
    /* SPRAY: each socket's local port (0 until opened) and last punch time,
     * and how many are open. GUESS: the ports to guess, in order, and how
     * many were sent. (Allocated at the start, freed at the stop.) */
    uint16_t *bport;
    uint64_t *bat;
    unsigned bn;
    uint16_t *gports;
    unsigned gsent;
    raw_attempt *raw;   /* RAW_SYN: the attempt's own machinery (raw_attempt.c) */
    struct ntcp_engine *raw_engine;
    /* Its listener on the session port, as a registration at the
     * context's mux (portmux.h), and the engine, for the mux's callback. */
    ntcp_portmux_reg *mreg;
    struct ntcp_engine *mux_engine;
};

typedef struct everif {
    ntcp_engine *e;
    eattempt *at;
    ntcp_verify *v;
    struct everif *next;
    struct sockaddr_storage local, remote;
    int64_t connected_ms;
} everif;

struct ntcp_engine {
    uv_loop_t *loop;
    uv_timer_t timer;
    ntcp_engine_cb cb;
    void *user;
    plan plan;
    size_t nat;
    eattempt at[PLAN_MAX_ATTEMPTS];
    esock *socks;
    everif *verifs;
    unsigned nverif;
    unsigned refs; /* the timer, every esock until closed, every verify until its callback */
    bool done;
    ntcp_engine_result res;
    ntcp_verify_params vp;
    char name[BROKER_NAME_MAX + 1], peer_name[BROKER_NAME_MAX + 1];
    uint16_t session_port;
    struct sockaddr_storage local_addr;
    uint64_t start_at, t0, plan_end, hard_end;
    uint8_t learn_ttl;  /* where a learned punch TTL starts */
    uint8_t ttl;        /* the highest punch TTL found necessary so far */
    int last_verify_err;
    const char *last_verify_why;
    /* RAW_SYN: the relay of our ISN to the peer, and the peer's latest. */
    void (*raw_send_isn)(void *user, const struct sockaddr_storage *ext, uint32_t isn, bool spoof);
    void *raw_user;
    bool have_peer_isn;
    uint32_t peer_isn;
    ntcp_portmux *mux;
    uint8_t sid[VERIFY_SESSION_ID_SIZE]; /* our session's id, as HELLOs carry it */
};

const char *ntcp_attempt_outcome_name(ntcp_attempt_outcome_t o)
{
    switch (o) {
    case NTCP_ATTEMPT_NOT_STARTED: return "not-started";
    case NTCP_ATTEMPT_RUNNING: return "running";
    case NTCP_ATTEMPT_WON: return "won";
    case NTCP_ATTEMPT_CONNECTED: return "connected";
    case NTCP_ATTEMPT_REFUSED: return "refused";
    case NTCP_ATTEMPT_TIMED_OUT: return "timed-out";
    case NTCP_ATTEMPT_VERIFY_FAILED: return "verify-failed";
    case NTCP_ATTEMPT_FAILED: return "failed";
    case NTCP_ATTEMPT_CANCELLED: return "cancelled";
    }
    return "?";
}

static int64_t rel_now(const ntcp_engine *e)
{
    return (int64_t)uv_now(e->loop) - (int64_t)e->start_at;
}

static void maybe_free(ntcp_engine *e)
{
    if (e->done && e->refs == 0)
        free(e);
}

static void unref(ntcp_engine *e)
{
    e->refs--;
    maybe_free(e);
}

/* ---- sockets ---- */

static void on_sock_closed(uv_handle_t *h)
{
    esock *s = h->data;
    ntcp_engine *e = s->e;
    free(s);
    unref(e);
}

/* Unlinks s, stops watching it, closes its descriptor unless keep_fd (it
 * went to the proof), and frees it once libuv let go of the handle. */
static void sock_close(esock *s, bool keep_fd)
{
    ntcp_engine *e = s->e;
    for (esock **pp = &e->socks; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    uv_poll_stop(&s->poll);
    if (!keep_fd && s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches fd (which it owns from now on; closed on failure). */
static esock *sock_watch(ntcp_engine *e, eattempt *at, int fd, int kind, int events)
{
    esock *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        return NULL;
    }
    if (uv_poll_init(e->loop, &s->poll, fd) < 0) {
        free(s);
        close(fd);
        return NULL;
    }
    s->poll.data = s;
    s->e = e;
    s->at = at;
    s->fd = fd;
    s->kind = kind;
    s->next = e->socks;
    e->socks = s;
    e->refs++;
    uv_poll_start(&s->poll, events, on_poll);
    return s;
}

/* A non-blocking TCP socket of family fam bound to port (0 = any), with
 * SO_REUSEADDR and SO_REUSEPORT when the port is fixed or will be shared.
 * Returns the fd or -errno. */
/* The local address of family fam on port: the configured one, or the
 * wildcard. */
static void local_sockaddr(const ntcp_engine *e, int fam, uint16_t port, struct sockaddr_storage *la)
{
    if (e->local_addr.ss_family == fam) {
        *la = e->local_addr;
    } else {
        memset(la, 0, sizeof *la);
        la->ss_family = (sa_family_t)fam;
    }
    ntcp_sa_set_port(la, port);
}

static int bound_socket(ntcp_engine *e, int fam, uint16_t port, bool reuse)
{
    struct sockaddr_storage la;
    local_sockaddr(e, fam, port, &la);
    bool bind_it = port != 0 || e->local_addr.ss_family == fam;
    return ntcp_sock_open(fam, SOCK_STREAM, reuse ? NTCP_SOCK_REUSE : 0, bind_it ? &la : NULL);
}

static void attempt_fail(ntcp_engine *e, eattempt *at, int err, int sys, const char *why);

/* The i-th target of the attempt's window; false when it falls outside the
 * port range. */
static bool target_at(const eattempt *at, unsigned i, struct sockaddr_storage *out)
{
    *out = at->p.target.addr;
    int64_t port = (int64_t)ntcp_sa_port(out) + (int64_t)i * at->p.target.step;
    if (port < 1 || port > 65535)
        return false;
    ntcp_sa_set_port(out, (uint16_t)port);
    return true;
}

static void on_connection(ntcp_engine *e, eattempt *at, int fd);
static void arm(ntcp_engine *e);

/* The address family of an attempt: its targets', or for an ACCEPT that
 * takes anyone (same LAN: the peer's private address is not known) the
 * family of the address the peer connects to. */
static int attempt_family(const eattempt *at)
{
    int fam = at->p.target.addr.ss_family;
    if (fam == 0 && at->p.role == PLAN_ACCEPT)
        fam = at->p.ext.addr.ss_family;
    return fam;
}

static bool accepted(ntcp_engine *e, eattempt *at, int fd, const struct sockaddr_storage *from);

/* The mux hands over a connection to the session port whose HELLO names
 * our session (or any, when ours is the port's only session). */
static bool mux_take(void *user, int fd, const struct sockaddr_storage *from)
{
    eattempt *at = user;
    return accepted(at->mux_engine, at, fd, from);
}

static void listen_start(ntcp_engine *e, eattempt *at)
{
    int fam = attempt_family(at);
    if (e->mux && at->port != 0 && at->port == e->session_port) {
        struct sockaddr_storage la;
        local_sockaddr(e, fam, at->port, &la);
        at->mux_engine = e;
        int sys = 0;
        int rc = ntcp_portmux_add(e->mux, &la, e->sid, mux_take, at, &at->mreg, &sys);
        if (rc < 0) {
            at->mreg = NULL;
            attempt_fail(e, at, rc, sys, "cannot listen on the session port");
        }
        return;
    }
    int fd = bound_socket(e, fam, at->port, true);
    if (fd < 0) {
        attempt_fail(e, at, NTCP_ESYS, -fd, "cannot bind the local port to listen");
        return;
    }
    if (listen(fd, 8) < 0) {
        int err = errno;
        close(fd);
        attempt_fail(e, at, NTCP_ESYS, err, "listen() failed");
        return;
    }
    if (at->port == 0) { /* FRESH: the port the kernel chose is the attempt's */
        struct sockaddr_storage la;
        socklen_t sl = sizeof la;
        if (getsockname(fd, (struct sockaddr *)&la, &sl) == 0)
            at->port = ntcp_sa_port(&la);
    }
    if (!sock_watch(e, at, fd, SK_LISTEN, UV_READABLE))
        attempt_fail(e, at, NTCP_ENOMEM, 0, "cannot watch the listener");
}

/* Makes room on the 4-tuple of target i for a new SYN: the connecting
 * socket of the previous issue goes first (two sockets cannot hold one
 * 4-tuple, and a fresh SYN is what a re-issue is for). Returns false, and
 * keeps it, when the peer's SYN or SYN-ACK has already met it (SYN-RECV, or
 * connected and not yet seen by the loop): a new socket, with a new
 * sequence number, would answer the rest of that handshake with an RST. */
static bool make_room(ntcp_engine *e, eattempt *at, unsigned i)
{
    for (esock *s = e->socks; s; s = s->next)
        if (s->at == at && s->kind == SK_CONNECT && s->idx == i) {
            struct tcp_info ti;
            socklen_t tl = sizeof ti;
            if (getsockopt(s->fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
                ti.tcpi_state != TCP_SYN_SENT && ti.tcpi_state != TCP_CLOSE)
                return false;
            sock_close(s, false);
            return true;
        }
    return true;
}

/* One connect() to target i (make_room). */
static esock *connect_one(ntcp_engine *e, eattempt *at, unsigned i, const struct sockaddr_storage *dst)
{
    if (!make_room(e, at, i))
        return NULL;
    int fd = bound_socket(e, dst->ss_family, at->port, at->port != 0);
    if (fd < 0) {
        at->rep->sys_errno = -fd;
        return NULL;
    }
    if (at->p.local == PLAN_LOCAL_FRESH)
        ntcp_sock_recverr(fd, dst->ss_family, true); /* an ICMP error is retried (on_poll) */
    at->rep->syns++;
    if (connect(fd, (const struct sockaddr *)dst, ntcp_sa_len(dst)) == 0) {
        on_connection(e, at, fd);
        return NULL;
    }
    if (errno != EINPROGRESS) {
        at->rep->sys_errno = errno;
        if (errno == ECONNREFUSED)
            at->rep->refusals++;
        close(fd);
        return NULL;
    }
    esock *s = sock_watch(e, at, fd, SK_CONNECT, UV_WRITABLE);
    if (s)
        s->idx = i;
    return s;
}

/* From the hold time on (plan.h, hold_ms), the punched 4-tuple of target i
 * is held by a socket connecting with the normal TTL: its SYN reaches the
 * peer's NAT after the peer's own SYN has opened it, and the peer's SYN
 * finds it in SYN-SENT (a simultaneous open). The low-TTL punch it replaces
 * may still draw its "time exceeded"; that error quotes the punch's
 * sequence number, not this socket's, and the kernel ignores it, where it
 * would have ended the punch socket even after the peer's SYN met it. */
static void hold_one(ntcp_engine *e, eattempt *at, unsigned i)
{
    struct sockaddr_storage dst;
    if (i >= 32 || !target_at(at, i, &dst))
        return;
    at->held |= 1u << i;
    esock *s = connect_one(e, at, i, &dst);
    if (s) {
        ntcp_sock_recverr(s->fd, dst.ss_family, true);
        return;
    }
    /* Kept (a handshake under way) or connected at once: held. Failed (no
     * descriptor, say): not held, so that the regular issue tries again. */
    for (esock *k = e->socks; k; k = k->next)
        if (k->at == at && k->kind == SK_CONNECT && k->idx == i)
            return;
    if (at->rep->connections == 0)
        at->held &= ~(1u << i);
}

/* A SYN with a low TTL from the attempt's port: it opens our NAT's mapping
 * and dies before the peer. The socket is kept, in SYN-SENT, with the
 * normal TTL restored once the SYN has left: when the peer's SYN comes in
 * through the hole, this socket answers it (a simultaneous open) with a
 * SYN-ACK carrying the punch's own sequence number. A listener's SYN-ACK
 * would carry a new one, which a NAT that tracks TCP windows (Linux
 * conntrack: the punch's ISN plus one window, a few ms of ISN clock) drops
 * as invalid or lets out untranslated. The listener stays as a fallback
 * (after an ICMP error ended this socket). Re-punched every
 * ENGINE_REPUNCH_MS, before the kernel would retransmit the SYN at the
 * normal TTL (initial RTO 1 s, RFC 6298). */
static uint16_t local_port(int fd)
{
    struct sockaddr_storage la;
    socklen_t sl = sizeof la;
    return getsockname(fd, (struct sockaddr *)&la, &sl) == 0 ? ntcp_sa_port(&la) : 0;
}

/* The low-TTL SYN of punch_one() from a given local port (0: any). */
static esock *punch_from(ntcp_engine *e, eattempt *at, unsigned i, const struct sockaddr_storage *dst,
                         uint16_t port)
{
    int fd = bound_socket(e, dst->ss_family, port, true);
    if (fd < 0) {
        at->rep->sys_errno = -fd;
        return NULL;
    }
    int ttl = at->ttl, deflt = -1;
    bool v6 = dst->ss_family == AF_INET6;
    int lvl = v6 ? IPPROTO_IPV6 : IPPROTO_IP, opt = v6 ? IPV6_UNICAST_HOPS : IP_TTL;
    if (setsockopt(fd, lvl, opt, &ttl, sizeof ttl) < 0) {
        at->rep->sys_errno = errno;
        close(fd);
        return NULL;
    }
    at->rep->syns++;
    if (connect(fd, (const struct sockaddr *)dst, ntcp_sa_len(dst)) < 0 && errno != EINPROGRESS) {
        at->rep->sys_errno = errno;
        close(fd);
        return NULL;
    }
    setsockopt(fd, lvl, opt, &deflt, sizeof deflt); /* -1: the system's default */
    e->res.punch_ttl = (uint8_t)ttl;
    ntcp_sock_recverr(fd, dst->ss_family, true);
    esock *s = sock_watch(e, at, fd, SK_CONNECT, UV_WRITABLE);
    if (s) {
        s->idx = i;
        s->ttl = (uint8_t)ttl;
    }
    return s;
}

static void punch_one(ntcp_engine *e, eattempt *at, unsigned i, const struct sockaddr_storage *dst)
{
    if (!make_room(e, at, i))
        return;
    esock *s = punch_from(e, at, i, dst, at->port);
    if (s && at->port == 0) /* FRESH without a listener: the port connect() chose */
        at->port = local_port(s->fd);
}

/* What ended a punch socket, from its error queue (IP_RECVERR). */
typedef struct icmp_seen {
    bool icmp;                    /* an ICMP message (not an RST) */
    bool time_exceeded;           /* ICMP time exceeded / ICMPv6 hop limit exceeded */
    struct sockaddr_storage from; /* who sent it (family 0: not said) */
} icmp_seen;

static icmp_seen icmp_error(int fd)
{
    icmp_seen r;
    memset(&r, 0, sizeof r);
    ntcp_sock_err se;
    if (!ntcp_sock_err_read(fd, &se))
        return r;
    r.icmp = se.icmp;
    r.time_exceeded = (se.origin == SO_EE_ORIGIN_ICMP && se.type == 11) ||
                      (se.origin == SO_EE_ORIGIN_ICMP6 && se.type == 3);
    r.from = se.offender;
    return r;
}

/* Whether a and b are on one subnet: equal under the mask m (n bytes). */
static bool masked_equal(const uint8_t *a, const uint8_t *b, const uint8_t *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((a[i] & m[i]) != (b[i] & m[i]))
            return false;
    return true;
}

/* Whether a router that answered from `from` is still inside this end's own
 * site: a private, shared (RFC 6598, carrier-grade NATs), link-local or
 * unique-local address, or one on a subnet of our own interfaces (the
 * router of a site with public addresses, such as a firewall). A SYN that
 * died there has not left our NAT(s) or firewall yet. */
static bool hop_inside(const struct sockaddr_storage *from)
{
    const uint8_t *a;
    size_t n;
    if (from->ss_family == AF_INET) {
        a = (const uint8_t *)&((const struct sockaddr_in *)from)->sin_addr;
        n = 4;
        if (a[0] == 10 || a[0] == 127 || (a[0] == 172 && (a[1] & 0xf0) == 16) ||
            (a[0] == 192 && a[1] == 168) || (a[0] == 100 && (a[1] & 0xc0) == 64) ||
            (a[0] == 169 && a[1] == 254))
            return true;
    } else if (from->ss_family == AF_INET6) {
        a = (const uint8_t *)&((const struct sockaddr_in6 *)from)->sin6_addr;
        n = 16;
        if ((a[0] & 0xfe) == 0xfc || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80))
            return true;
    } else {
        return false;
    }
    struct ifaddrs *ifs = NULL;
    bool in = false;
    if (getifaddrs(&ifs) < 0)
        return false;
    for (struct ifaddrs *i = ifs; i && !in; i = i->ifa_next) {
        if (!i->ifa_addr || !i->ifa_netmask || i->ifa_addr->sa_family != from->ss_family)
            continue;
        const uint8_t *ia, *im;
        if (n == 4) {
            ia = (const uint8_t *)&((const struct sockaddr_in *)(void *)i->ifa_addr)->sin_addr;
            im = (const uint8_t *)&((const struct sockaddr_in *)(void *)i->ifa_netmask)->sin_addr;
        } else {
            ia = (const uint8_t *)&((const struct sockaddr_in6 *)(void *)i->ifa_addr)->sin6_addr;
            im = (const uint8_t *)&((const struct sockaddr_in6 *)(void *)i->ifa_netmask)->sin6_addr;
        }
        in = masked_equal(a, ia, im, n);
    }
    freeifaddrs(ifs);
    return in;
}

/* ---- birthday (plan.c, birthday()) ---- */

static bool punch_ttl_seen(ntcp_engine *e, eattempt *at, uint8_t sent_ttl, const icmp_seen *ic);

/* SPRAY socket j: a low-TTL SYN from its own port to the guessing end's one
 * port; the first one opens a new random mapping, later ones (same port,
 * same 4-tuple, same conntrack entry) keep it. */
static void spray_one(ntcp_engine *e, eattempt *at, unsigned j)
{
    at->bat[j] = uv_now(e->loop);
    if (!make_room(e, at, j))
        return;
    esock *s = punch_from(e, at, j, &at->p.target.addr, at->bport[j]);
    if (s) {
        if (!at->bport[j])
            at->bport[j] = local_port(s->fd);
    } else if (at->rep->sys_errno == EADDRNOTAVAIL) {
        /* Its 4-tuple is taken: by its own connection, under proof or
         * lost. Not punched again. */
        at->bat[j] = UINT64_MAX - ENGINE_REPUNCH_MS;
    }
}

/* Opens the sockets a batch at a time, then re-punches each before the
 * kernel would retransmit its SYN with the normal TTL (1 s): that SYN would
 * reach the other NAT, whose RST would end the mapping. */
static void spray_tick(ntcp_engine *e, eattempt *at)
{
    uint64_t now = uv_now(e->loop);
    if (at->bn < at->p.sockets) {
        for (unsigned k = 0; k < ENGINE_SPRAY_BATCH && at->bn < at->p.sockets && !at->stopped; k++)
            spray_one(e, at, at->bn++);
        at->next_at = now + ENGINE_SPRAY_TICK_MS;
        return;
    }
    for (unsigned j = 0; j < at->bn && !at->stopped; j++)
        if (now >= at->bat[j] + ENGINE_REPUNCH_MS)
            spray_one(e, at, j);
    at->next_at = now + ENGINE_BIRTHDAY_TICK_MS;
}

/* An error ended SPRAY socket j. "Time exceeded" (the normal case, until
 * the router's rate limit stops answering) raises the TTL when it came from
 * inside our site, and the punch goes again at once from the same port: the
 * mapping lives on. Anything else waits for the regular re-punch. */
static void spray_ended(ntcp_engine *e, eattempt *at, esock *s)
{
    unsigned j = s->idx;
    uint8_t sent_ttl = s->ttl;
    icmp_seen ic = icmp_error(s->fd);
    sock_close(s, false);
    punch_ttl_seen(e, at, sent_ttl, &ic);
    if (!at->stopped && ic.time_exceeded && j < at->bn &&
        at->repunches < RETRY_MAX_REPUNCH + (unsigned)at->p.sockets) {
        at->repunches++;
        spray_one(e, at, j);
    }
}

/* Sends the guesses that are due (pps from the attempt's start), and closes
 * those whose wait is over. */
static void guess_tick(ntcp_engine *e, eattempt *at)
{
    uint64_t now = uv_now(e->loop);
    unsigned open = 0;
    esock *s = e->socks;
    while (s) {
        esock *n = s->next;
        if (s->at == at && s->kind == SK_CONNECT) {
            struct tcp_info ti;
            socklen_t tl = sizeof ti;
            if (now >= s->expire && getsockopt(s->fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
                ti.tcpi_state == TCP_SYN_SENT)
                sock_close(s, false);
            else
                open++;
        }
        s = n;
    }
    /* Paced from the attempt's start; a stalled loop does not make up for
     * lost time in one burst, and the guesses waiting for an answer stay
     * bounded (descriptors), whatever the round trip. */
    uint64_t t0 = e->start_at + at->p.start_ms;
    uint64_t due = now > t0 ? (now - t0) * at->p.pps / 1000 + 1 : 1;
    if (due > at->p.guesses)
        due = at->p.guesses;
    for (unsigned k = 0; at->gsent < due && k < ENGINE_GUESS_BURST && open < ENGINE_GUESS_OPEN &&
                         !at->stopped;
         k++) {
        struct sockaddr_storage dst = at->p.target.addr;
        ntcp_sa_set_port(&dst, at->gports[at->gsent]);
        esock *g = connect_one(e, at, at->gsent++, &dst);
        if (g) {
            g->expire = now + at->p.guess_ms;
            open++;
        }
    }
    if (at->gsent < at->p.guesses || open)
        at->next_at = now + ENGINE_BIRTHDAY_TICK_MS;
    else
        at->next_at = 0;
}

static int birthday_start(ntcp_engine *e, eattempt *at)
{
    if (at->p.role == PLAN_SPRAY) {
        if (at->p.sockets == 0)
            return NTCP_EINVAL;
        at->bport = calloc(at->p.sockets, sizeof *at->bport);
        at->bat = calloc(at->p.sockets, sizeof *at->bat);
        if (!at->bport || !at->bat)
            return NTCP_ENOMEM;
    } else {
        if (at->p.guesses == 0 || at->p.pps == 0 || at->p.guesses > 65536 - NTCP_BIRTHDAY_PORT_LO)
            return NTCP_EINVAL;
        at->gports = malloc(at->p.guesses * sizeof *at->gports);
        if (!at->gports)
            return NTCP_ENOMEM;
        int rc = ntcp_birthday_ports(at->gports, at->p.guesses);
        if (rc < 0)
            return rc;
    }
    at->next_at = uv_now(e->loop);
    return 0;
}

static void birthday_free(eattempt *at)
{
    free(at->bport);
    free(at->bat);
    free(at->gports);
    at->bport = NULL;
    at->bat = NULL;
    at->gports = NULL;
}

static void attempt_issue(ntcp_engine *e, eattempt *at)
{
    if (at->p.role == PLAN_SPRAY) {
        spray_tick(e, at);
        return;
    }
    if (at->p.role == PLAN_GUESS) {
        guess_tick(e, at);
        return;
    }
    at->issued++;
    for (unsigned i = 0; i < at->p.target.count && !at->stopped; i++) {
        struct sockaddr_storage dst;
        if (!target_at(at, i, &dst))
            continue;
        if (at->p.role != PLAN_PUNCH)
            connect_one(e, at, i, &dst);
        else if (i < 32 && (at->held & (1u << i)))
            continue; /* its normal-TTL socket stays: its SYN is retransmitted */
        else if (at->hold_due)
            hold_one(e, at, i); /* no "time exceeded" came: the router is silent */
        else
            punch_one(e, at, i, &dst);
    }
    if (!at->stopped && at->p.role == PLAN_PUNCH)
        at->next_at = uv_now(e->loop) + ENGINE_REPUNCH_MS;
    else if (!at->stopped && at->issued < at->p.repeats && at->p.repeat_ms > 0)
        at->next_at = uv_now(e->loop) + at->p.repeat_ms;
    else
        at->next_at = 0;
}

/* Closes the attempt's sockets; a connection already under proof goes on. */
static void attempt_stop(ntcp_engine *e, eattempt *at, ntcp_attempt_outcome_t outcome)
{
    if (at->stopped)
        return;
    at->stopped = true;
    at->next_at = 0;
    at->rep->ended_ms = rel_now(e);
    at->retry_at = 0;
    raw_attempt_stop(at->raw);
    at->raw = NULL;
    birthday_free(at);
    ntcp_portmux_remove(at->mreg);
    at->mreg = NULL;
    if (at->rep->outcome == NTCP_ATTEMPT_RUNNING) {
        if (outcome == NTCP_ATTEMPT_TIMED_OUT && at->rep->connections > 0)
            outcome = NTCP_ATTEMPT_VERIFY_FAILED;
        else if (outcome == NTCP_ATTEMPT_TIMED_OUT && at->rep->syns > 0 &&
                 at->rep->refusals == at->rep->syns)
            outcome = NTCP_ATTEMPT_REFUSED;
        at->rep->outcome = outcome;
    }
    esock *s = e->socks;
    while (s) {
        esock *n = s->next;
        if (s->at == at && s->kind != SK_SELECT)
            sock_close(s, false);
        s = n;
    }
}

static void attempt_fail(ntcp_engine *e, eattempt *at, int err, int sys, const char *why)
{
    at->rep->err = err;
    at->rep->sys_errno = sys;
    at->rep->why = why;
    if (at->rep->outcome == NTCP_ATTEMPT_RUNNING || at->rep->outcome == NTCP_ATTEMPT_NOT_STARTED)
        at->rep->outcome = NTCP_ATTEMPT_FAILED;
    if (at->rep->started_ms < 0)
        at->rep->started_ms = rel_now(e);
    attempt_stop(e, at, NTCP_ATTEMPT_FAILED);
}

/* ---- RAW_SYN (STUNT#1, NATBlaster): run by raw_attempt.c ---- */

static void raw_isn_out(void *user, const struct sockaddr_storage *ext, uint32_t isn, bool spoof)
{
    eattempt *at = user;
    ntcp_engine *e = at->raw_engine;
    at->rep->syns++;
    e->raw_send_isn(e->raw_user, ext, isn, spoof);
}

static void raw_connected(void *user, int fd)
{
    eattempt *at = user;
    on_connection(at->raw_engine, at, fd);
}

static void raw_ended(void *user, int err, int sys, const char *why)
{
    eattempt *at = user;
    attempt_fail(at->raw_engine, at, err, sys, why);
}

static void raw_start(ntcp_engine *e, eattempt *at)
{
    if (!e->raw_send_isn) {
        attempt_fail(e, at, NTCP_EUNREACHABLE, 0, "no relay to the peer for the ISN (raw_send_isn)");
        return;
    }
    if (e->session_port == 0) {
        attempt_fail(e, at, NTCP_EINVAL, 0, "the session's local port is unknown");
        return;
    }
    raw_attempt_cfg rc;
    memset(&rc, 0, sizeof rc);
    rc.loop = e->loop;
    rc.natblaster = at->p.method == NTCP_METHOD_NATBLASTER;
    rc.port = e->session_port;
    rc.local_addr = e->local_addr;
    rc.target = at->p.target.addr;
    rc.ext = at->p.ext.addr;
    rc.ttl = at->p.ttl != PLAN_TTL_LEARN ? at->p.ttl : e->learn_ttl;
    if (e->ttl > rc.ttl)
        rc.ttl = e->ttl;
    rc.send_isn = raw_isn_out;
    rc.connected = raw_connected;
    rc.ended = raw_ended;
    rc.user = at;
    at->raw_engine = e;
    const char *why = "";
    int rc2 = raw_attempt_start(&rc, &at->raw, &why);
    if (rc2 < 0) {
        at->raw = NULL;
        attempt_fail(e, at, rc2, 0, why);
        return;
    }
    e->res.punch_ttl = rc.ttl;
    if (e->have_peer_isn)
        raw_attempt_peer_isn(at->raw, e->peer_isn);
}

void ntcp_engine_raw_isn(ntcp_engine *e, uint32_t isn)
{
    if (!e || e->done)
        return;
    e->have_peer_isn = true;
    e->peer_isn = isn;
    for (size_t i = 0; i < e->nat; i++)
        if (e->at[i].raw)
            raw_attempt_peer_isn(e->at[i].raw, isn);
}

static void attempt_start(ntcp_engine *e, eattempt *at)
{
    at->started = true;
    at->rep->started_ms = rel_now(e);
    at->rep->outcome = NTCP_ATTEMPT_RUNNING;
    int fam = attempt_family(at);
    if (at->p.role == PLAN_RAW_SYN) {
        raw_start(e, at);
        return;
    }
    if (fam != AF_INET && fam != AF_INET6) {
        attempt_fail(e, at, NTCP_EINVAL, 0, "no target address");
        return;
    }
    if (at->p.role == PLAN_PUNCH || at->p.role == PLAN_SPRAY) {
        /* The plan's TTL (computed from the hops discovery measured) or
         * the one learned so far, whichever is higher (punch_ttl_seen). */
        at->ttl = at->p.ttl != PLAN_TTL_LEARN ? at->p.ttl : e->learn_ttl;
        if (e->ttl > at->ttl)
            at->ttl = e->ttl;
    }
    if (at->p.local == PLAN_LOCAL_SESSION) {
        if (e->session_port == 0) {
            attempt_fail(e, at, NTCP_EINVAL, 0, "the session's local port is unknown");
            return;
        }
        at->port = e->session_port;
    }
    /* A fixed port listens too: a SYN that crossed ours, or came after an
     * RST/ICMP ended our connect, is still taken. Not a punch whose peer
     * connects on the punched 4-tuple: its SYN is for the punch socket
     * (punch_one), and one that slipped into a listener while that socket
     * was between an ICMP error and its re-punch would get a SYN-ACK our
     * NAT refuses (another sequence number), and the listener's pending
     * connection would then hold the 4-tuple for a minute, every later
     * punch failing with EADDRNOTAVAIL. Without a listener such a SYN is
     * reset, the peer tries again, and the punch is already back. */
    if (at->p.role == PLAN_SPRAY || at->p.role == PLAN_GUESS) {
        /* No listener: a hit meets a socket in SYN-SENT on its 4-tuple. */
        int rc = birthday_start(e, at);
        if (rc < 0)
            attempt_fail(e, at, rc, 0, "cannot start the birthday search");
        return;
    }
    bool fixed = at->p.local != PLAN_LOCAL_ANY;
    if (at->p.role == PLAN_PUNCH ? at->p.peer_any_port : (at->p.role == PLAN_ACCEPT || fixed))
        listen_start(e, at);
    if (at->stopped || at->p.role == PLAN_ACCEPT)
        return;
    attempt_issue(e, at);
}

/* ---- the proof and the choice ---- */

static void finish(ntcp_engine *e, int err, const char *reason);
static void maybe_finish_early(ntcp_engine *e);
#define role_name ntcp_engine_role_name

static bool is_requester(const ntcp_engine *e)
{
    return e->vp.role == BROKER_ROLE_REQUESTER;
}

static void win(ntcp_engine *e, eattempt *at, int fd, const struct sockaddr_storage *local,
                const struct sockaddr_storage *remote, int64_t connected_ms,
                const uint8_t binding[VERIFY_BINDING_SIZE])
{
    ntcp_engine_result *r = &e->res;
    /* The caller's connection: ICMP errors soft again (a punch socket asked
     * for them), and a close that sends its data (see on_connection). */
    struct linger lg = {0, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    ntcp_sock_recverr(fd, local->ss_family, false);
    r->fd = fd;
    r->method = at->p.method;
    r->attempt_id = at->p.id;
    r->role = at->p.role;
    r->local = *local;
    r->remote = *remote;
    r->connected_ms = connected_ms;
    r->verified_ms = rel_now(e);
    memcpy(r->binding, binding, VERIFY_BINDING_SIZE);
    at->rep->outcome = NTCP_ATTEMPT_WON;
    char a[64], b[64];
    snprintf(r->reason, sizeof r->reason, "%s (attempt %u, %s) %s -> %s",
             ntcp_method_name(at->p.method), at->p.id, role_name(at->p.role),
             ntcp_addr_str((const struct sockaddr *)local, a, sizeof a),
             ntcp_addr_str((const struct sockaddr *)remote, b, sizeof b));
    finish(e, 0, NULL);
}

/* A connection of the attempt failed its proof: the attempt goes on until
 * its stop time; once stopped, that is what it ends as. */
static void verify_failed(ntcp_engine *e, eattempt *at, int err, const char *why)
{
    e->last_verify_err = err;
    e->last_verify_why = why;
    at->rep->err = err;
    at->rep->why = why;
    if (at->stopped && at->rep->outcome != NTCP_ATTEMPT_WON)
        at->rep->outcome = NTCP_ATTEMPT_VERIFY_FAILED;
}

static void on_verified(ntcp_verify *v, const ntcp_verify_result *r, void *user)
{
    (void)v;
    everif *ev = user;
    ntcp_engine *e = ev->e;
    for (everif **pp = &e->verifs; *pp; pp = &(*pp)->next)
        if (*pp == ev) {
            *pp = ev->next;
            break;
        }
    e->nverif--;
    eattempt *at = ev->at;
    if (r->err != 0) {
        if (!e->done)
            verify_failed(e, at, r->err, r->why);
    } else if (e->done) {
        close(r->fd);
    } else if (is_requester(e)) {
        /* Both ends may verify two connections (two attempts met) and each
         * take a different one first. The requester decides: it sends one
         * byte on the connection it keeps and closes the others; the target
         * takes the connection that byte arrives on. */
        uint8_t b = ENGINE_SELECT_BYTE;
        if (send(r->fd, &b, 1, MSG_NOSIGNAL) == 1) {
            win(e, at, r->fd, &ev->local, &ev->remote, ev->connected_ms, r->binding);
        } else {
            close(r->fd);
            verify_failed(e, at, NTCP_ECLOSED, "the peer closed after the proof");
        }
    } else {
        esock *s = sock_watch(e, at, r->fd, SK_SELECT, UV_READABLE | UV_DISCONNECT);
        if (s) {
            s->local = ev->local;
            s->remote = ev->remote;
            s->connected_ms = ev->connected_ms;
            memcpy(s->binding, r->binding, VERIFY_BINDING_SIZE);
        }
    }
    free(ev);
    if (!e->done)
        maybe_finish_early(e);
    unref(e);
}

static void maybe_finish_early(ntcp_engine *e)
{
    if (e->done || e->verifs)
        return;
    for (esock *s = e->socks; s; s = s->next)
        if (s->kind == SK_SELECT)
            return;
    for (size_t i = 0; i < e->nat; i++)
        if (!e->at[i].stopped)
            return;
    char why[160];
    if (e->last_verify_err) {
        snprintf(why, sizeof why, "every attempt ended; the last key proof failed: %s",
                 e->last_verify_why ? e->last_verify_why : "?");
        finish(e, e->last_verify_err == NTCP_EINTEGRITY ? NTCP_EINTEGRITY : NTCP_EUNREACHABLE, why);
    } else if (uv_now(e->loop) >= e->plan_end) {
        finish(e, NTCP_ETIMEDOUT, "no connection by the plan's deadline");
    } else {
        finish(e, NTCP_EUNREACHABLE, "every attempt was refused or failed before the deadline");
    }
}

/* A TCP connection with the peer (connected or accepted): to the proof. */
static void on_connection(ntcp_engine *e, eattempt *at, int fd)
{
    int64_t now = rel_now(e);
    at->rep->connections++;
    if (at->rep->connected_ms < 0)
        at->rep->connected_ms = now;
    if (e->done || e->nverif >= ENGINE_MAX_VERIFY) {
        close(fd);
        return;
    }
    everif *ev = calloc(1, sizeof *ev);
    if (!ev) {
        close(fd);
        return;
    }
    ev->e = e;
    ev->at = at;
    ev->connected_ms = now;
    socklen_t sl = sizeof ev->local;
    getsockname(fd, (struct sockaddr *)&ev->local, &sl);
    sl = sizeof ev->remote;
    getpeername(fd, (struct sockaddr *)&ev->remote, &sl);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Until it wins, closing it resets it: a connection closed with a FIN
     * lingers in FIN-WAIT or TIME-WAIT and keeps its 4-tuple, and a later
     * attempt on the same one (the session port to the same peer port)
     * would fail with EADDRNOTAVAIL for a minute. win() undoes this. */
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    if (ntcp_verify_start(e->loop, fd, &e->vp, on_verified, ev, &ev->v) < 0) {
        close(fd);
        free(ev);
        verify_failed(e, at, NTCP_ESYS, "cannot start the key proof");
        return;
    }
    ev->next = e->verifs;
    e->verifs = ev;
    e->nverif++;
    e->refs++;
}

/* A connection accepted by one of the attempt's listeners (its own, or
 * the mux's). Only the peer: a listener on a public port takes anyone's
 * SYN. Returns false, and leaves fd to the caller, when it is not taken. */
static bool accepted(ntcp_engine *e, eattempt *at, int fd, const struct sockaddr_storage *from)
{
    if (e->done || at->stopped)
        return false;
    if (at->p.target.addr.ss_family != 0 &&
        !ntcp_sockaddr_same_ip((const struct sockaddr *)from,
                               (const struct sockaddr *)&at->p.target.addr))
        return false;
    on_connection(e, at, fd);
    return true;
}

/* Learning the punch TTL. The low-TTL SYN must leave this end's NAT(s) (or
 * its firewall), so that they record it, and die before the peer's NAT. A
 * router's "time exceeded" says where it died: from inside our site
 * (hop_inside), it did not leave, and the TTL goes up by one; from outside,
 * it left, and the TTL is right. RFC 1812 routers send these errors (rate-
 * limited), Linux queues them on the socket (IP_RECVERR); when none comes
 * the TTL stays what the plan computed or learn_ttl. The SYN of a TTL too
 * high reaches the peer's NAT instead: answered, refused or dropped, never
 * "time exceeded", so it is not raised further. */
static bool punch_ttl_seen(ntcp_engine *e, eattempt *at, uint8_t sent_ttl, const icmp_seen *ic)
{
    if (!ic->time_exceeded || ic->from.ss_family == 0)
        return false;
    if (hop_inside(&ic->from)) {
        /* One more than the SYN that died (a window of punches draws one
         * error each, all for the same hop). */
        if (sent_ttl >= at->ttl && sent_ttl < ENGINE_MAX_TTL)
            at->ttl = (uint8_t)(sent_ttl + 1);
        if (at->ttl > e->ttl)
            e->ttl = at->ttl;
        return false;
    }
    e->res.ttl_left_site = true;
    return true;
}

static void retry_soon(ntcp_engine *e, eattempt *at, unsigned i)
{
    at->retry_mask |= 1u << i;
    if (!at->retry_at) {
        at->retry_at = uv_now(e->loop) + ENGINE_REPUNCH_RETRY_MS;
        arm(e);
    }
}

/* How a connecting socket ended, for the rules (retry.h). */
static retry_end_t end_of(int err, const icmp_seen *ic)
{
    if (ic->time_exceeded)
        return RETRY_END_TIME_EXCEEDED;
    if (ic->icmp)
        return RETRY_END_ICMP;
    return err == ECONNREFUSED ? RETRY_END_RST : RETRY_END_OTHER;
}

/* A socket of a PUNCH attempt ended with err before connecting: its
 * low-TTL punch, or from the hold time on its normal-TTL SYN (hold_one).
 * The rules and their reasons are retry.c's; here they are carried out.
 * A time exceeded from inside our site raises the TTL (punch_ttl_seen). */
static void punch_ended(ntcp_engine *e, eattempt *at, esock *s, int err)
{
    unsigned i = s->idx;
    uint8_t sent_ttl = s->ttl;
    bool was_held = i < 32 && (at->held & (1u << i));
    icmp_seen ic = icmp_error(s->fd);
    sock_close(s, false);
    retry_in in = {
        .role = at->p.role,
        .local = at->p.local,
        .end = end_of(err, &ic),
        .stopped = at->stopped,
        .target = i,
        .was_held = was_held,
        .left_site = !was_held && punch_ttl_seen(e, at, sent_ttl, &ic),
        .hold_due = at->hold_due,
        .repunches = at->repunches,
        .window = at->p.target.count,
    };
    retry_out o = retry_decide(&in);
    if (o.count_repunch)
        at->repunches++;
    struct sockaddr_storage dst;
    switch (o.action) {
    case RETRY_UNHOLD_PUNCH_NOW:
        at->held &= ~(1u << i);
        /* fall through */
    case RETRY_PUNCH_NOW:
        if (target_at(at, i, &dst))
            punch_one(e, at, i, &dst);
        break;
    case RETRY_HOLD_NOW: hold_one(e, at, i); break;
    case RETRY_SOON: retry_soon(e, at, i); break;
    default: break;
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    esock *s = h->data;
    ntcp_engine *e = s->e;
    eattempt *at = s->at;
    (void)events;
    if (e->done)
        return;
    if (s->kind == SK_CONNECT) {
        int err = 0;
        socklen_t sl = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
            err = errno;
        if (err == 0 && status < 0)
            err = EIO;
        if (err == 0) {
            int fd = s->fd;
            sock_close(s, true);
            on_connection(e, at, fd);
        } else {
            at->rep->sys_errno = err;
            if (at->p.role == PLAN_PUNCH) {
                punch_ended(e, at, s, err);
                return;
            }
            if (at->p.role == PLAN_SPRAY) {
                spray_ended(e, at, s);
                return;
            }
            if (at->p.role == PLAN_GUESS) { /* a miss: the port was not one of the peer's */
                if (err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH)
                    at->rep->refusals++;
                sock_close(s, false);
                return;
            }
            if (err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH)
                at->rep->refusals++;
            /* Refused or failed: the rules (retry.c) say when to try that
             * target again. */
            unsigned i = s->idx;
            icmp_seen ic = icmp_error(s->fd);
            sock_close(s, false);
            retry_in in = {
                .role = at->p.role,
                .local = at->p.local,
                .end = end_of(err, &ic),
                .stopped = at->stopped,
                .target = i,
                .refusals = at->rep->refusals,
            };
            retry_out o = retry_decide(&in);
            struct sockaddr_storage dst;
            if (o.action == RETRY_CONNECT_NOW) {
                if (target_at(at, i, &dst))
                    connect_one(e, at, i, &dst);
            } else if (o.action == RETRY_AFTER_RTT) {
                at->retry_mask |= 1u << i;
                if (!at->retry_at) {
                    uint32_t d = e->plan.rtt_ms > 50 ? e->plan.rtt_ms : 50;
                    at->retry_at = uv_now(e->loop) + d;
                    arm(e);
                }
            }
        }
    } else if (s->kind == SK_LISTEN) {
        for (;;) {
            struct sockaddr_storage from;
            socklen_t sl = sizeof from;
            int fd = accept4(s->fd, (struct sockaddr *)&from, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0)
                break;
            if (!accepted(e, at, fd, &from))
                close(fd);
            if (e->done)
                break;
        }
    } else { /* SK_SELECT: the target waits for the requester's choice */
        uint8_t b = 0;
        ssize_t n = recv(s->fd, &b, 1, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n == 1 && b == ENGINE_SELECT_BYTE) {
            int fd = s->fd;
            struct sockaddr_storage l = s->local, r = s->remote;
            int64_t cms = s->connected_ms;
            uint8_t bind[VERIFY_BINDING_SIZE];
            memcpy(bind, s->binding, sizeof bind);
            sock_close(s, true);
            win(e, at, fd, &l, &r, cms, bind);
        } else {
            sock_close(s, false);
            maybe_finish_early(e);
        }
    }
}

/* ---- time ---- */

static void on_tick(uv_timer_t *t);

static void arm(ntcp_engine *e)
{
    if (e->done)
        return;
    uint64_t now = uv_now(e->loop);
    uint64_t next = e->hard_end;
    bool all_stopped = true;
    for (size_t i = 0; i < e->nat; i++) {
        eattempt *at = &e->at[i];
        if (at->stopped)
            continue;
        all_stopped = false;
        uint64_t t = at->started ? e->start_at + at->p.stop_ms : e->start_at + at->p.start_ms;
        if (t < next)
            next = t;
        if (at->next_at && at->next_at < next)
            next = at->next_at;
        if (at->retry_at && at->retry_at < next)
            next = at->retry_at;
        if (at->started && at->p.hold_ms && !at->hold_due && e->start_at + at->p.hold_ms < next)
            next = e->start_at + at->p.hold_ms;
    }
    if (!all_stopped && e->plan_end < next)
        next = e->plan_end;
    uv_timer_start(&e->timer, on_tick, next > now ? next - now : 0, 0);
}

static void on_tick(uv_timer_t *t)
{
    ntcp_engine *e = t->data;
    if (e->done)
        return;
    if (e->plan.status != 0) {
        finish(e, NTCP_EUNREACHABLE, e->plan.reason);
        return;
    }
    uint64_t now = uv_now(e->loop);
    if (now >= e->hard_end) {
        finish(e, NTCP_ETIMEDOUT, "no verified connection by the plan's deadline");
        return;
    }
    /* Stops before starts: successive attempts from the session port take
     * turns on one 4-tuple, the next starts when the previous stops. */
    for (size_t i = 0; i < e->nat; i++) {
        eattempt *at = &e->at[i];
        if (at->started && !at->stopped &&
            (now >= e->start_at + at->p.stop_ms || now >= e->plan_end))
            attempt_stop(e, at, NTCP_ATTEMPT_TIMED_OUT);
    }
    for (size_t i = 0; i < e->nat && !e->done; i++) {
        eattempt *at = &e->at[i];
        if (!at->started && now >= e->start_at + at->p.start_ms) {
            if (now >= e->start_at + at->p.stop_ms || now >= e->plan_end) {
                at->started = at->stopped = true; /* its whole window has passed */
                at->rep->outcome = NTCP_ATTEMPT_NOT_STARTED;
                at->rep->why = "its window had passed when the engine started";
            } else {
                attempt_start(e, at);
            }
        }
    }
    for (size_t i = 0; i < e->nat && !e->done; i++) {
        eattempt *at = &e->at[i];
        if (at->started && !at->stopped && at->p.hold_ms && !at->hold_due &&
            now >= e->start_at + at->p.hold_ms) {
            at->hold_due = true;
            for (unsigned k = 0; k < at->p.target.count && k < 32 && !at->stopped; k++)
                if (!(at->held & (1u << k)))
                    hold_one(e, at, k);
        }
        if (at->started && !at->stopped && at->next_at && now >= at->next_at)
            attempt_issue(e, at);
        if (at->started && !at->stopped && at->retry_at && now >= at->retry_at) {
            uint32_t mask = at->retry_mask;
            at->retry_mask = 0;
            at->retry_at = 0;
            for (unsigned k = 0; k < 32 && !at->stopped; k++) {
                struct sockaddr_storage dst;
                if (!(mask & (1u << k)) || !target_at(at, k, &dst))
                    continue;
                if (at->p.role == PLAN_PUNCH && (at->held & (1u << k)))
                    hold_one(e, at, k);
                else if (at->p.role == PLAN_PUNCH)
                    punch_one(e, at, k, &dst);
                else
                    connect_one(e, at, k, &dst);
            }
        }
    }
    if (e->done)
        return;
    maybe_finish_early(e);
    arm(e);
}

static void on_timer_closed(uv_handle_t *h)
{
    unref(h->data);
}

/* Ends the engine: every socket closed, every proof cancelled, the result
 * delivered. The engine is freed later, when the last handle is closed. */
static void finish(ntcp_engine *e, int err, const char *reason)
{
    if (e->done)
        return;
    e->done = true;
    ntcp_engine_result *r = &e->res;
    r->err = err;
    if (err != 0) {
        r->fd = -1;
        snprintf(r->reason, sizeof r->reason, "%s", reason ? reason : "failed");
    }
    r->elapsed_ms = uv_now(e->loop) - e->t0;
    int64_t now = rel_now(e);
    for (size_t i = 0; i < e->nat; i++) {
        ntcp_attempt_report *rep = e->at[i].rep;
        if (!e->at[i].stopped && e->at[i].started) {
            e->at[i].stopped = true;
            rep->ended_ms = now;
        }
        raw_attempt_stop(e->at[i].raw);
        e->at[i].raw = NULL;
        birthday_free(&e->at[i]);
        ntcp_portmux_remove(e->at[i].mreg);
        e->at[i].mreg = NULL;
        if (rep->outcome == NTCP_ATTEMPT_RUNNING) {
            if (rep->connections > 0)
                rep->outcome = err == 0 ? NTCP_ATTEMPT_CONNECTED : NTCP_ATTEMPT_VERIFY_FAILED;
            else
                rep->outcome = err == 0 ? NTCP_ATTEMPT_CANCELLED : NTCP_ATTEMPT_TIMED_OUT;
        }
    }
    while (e->socks)
        sock_close(e->socks, false);
    for (everif *v = e->verifs; v; v = v->next)
        ntcp_verify_cancel(v->v);
    uv_timer_stop(&e->timer);
    uv_close((uv_handle_t *)&e->timer, on_timer_closed);
    e->refs++; /* held across the callback: nothing frees e under it */
    e->cb(e, r, e->user);
    unref(e);
}

/* ---- API ---- */

int ntcp_engine_start(uv_loop_t *loop, const ntcp_engine_config *cfg, ntcp_engine_cb cb,
                      void *user, ntcp_engine **out)
{
    if (!loop || !cfg || !cfg->plan || !cb || !cfg->verify.key || !cfg->verify.name ||
        !cfg->verify.peer_name || cfg->plan->n > PLAN_MAX_ATTEMPTS)
        return NTCP_EINVAL;
    if (strlen(cfg->verify.name) > BROKER_NAME_MAX || strlen(cfg->verify.peer_name) > BROKER_NAME_MAX)
        return NTCP_EINVAL;
    uint8_t sid[VERIFY_SESSION_ID_SIZE];
    if (ntcp_verify_session_id(cfg->verify.nonce, sid) < 0)
        return NTCP_ENOMEM;
    ntcp_engine *e = calloc(1, sizeof *e);
    if (!e)
        return NTCP_ENOMEM;
    if (uv_timer_init(loop, &e->timer) < 0) {
        free(e);
        return NTCP_ENOMEM;
    }
    e->timer.data = e;
    e->refs = 1;
    e->loop = loop;
    e->cb = cb;
    e->user = user;
    e->plan = *cfg->plan;
    e->nat = e->plan.status == 0 ? e->plan.n : 0;
    e->session_port = cfg->session_port;
    e->local_addr = cfg->local_addr;
    e->learn_ttl = cfg->learn_ttl ? cfg->learn_ttl : 2;
    e->raw_send_isn = cfg->raw_send_isn;
    e->raw_user = cfg->raw_user;
    e->mux = cfg->mux;
    memcpy(e->sid, sid, sizeof sid);
    if (e->learn_ttl > ENGINE_MAX_TTL)
        e->learn_ttl = ENGINE_MAX_TTL;
    e->vp = cfg->verify;
    snprintf(e->name, sizeof e->name, "%s", cfg->verify.name);
    snprintf(e->peer_name, sizeof e->peer_name, "%s", cfg->verify.peer_name);
    e->vp.name = e->name;
    e->vp.peer_name = e->peer_name;
    uint32_t vto = e->vp.timeout_ms ? e->vp.timeout_ms : VERIFY_DEFAULT_TIMEOUT_MS;
    e->t0 = uv_now(loop);
    e->start_at = cfg->start_at;
    e->plan_end = e->start_at + e->plan.deadline_ms;
    e->hard_end = e->plan_end + (cfg->grace_ms ? cfg->grace_ms : vto);
    ntcp_engine_result *r = &e->res;
    r->fd = -1;
    r->connected_ms = r->verified_ms = -1;
    r->n = e->nat;
    for (size_t i = 0; i < e->nat; i++) {
        eattempt *at = &e->at[i];
        at->p = e->plan.a[i];
        if (at->p.repeats == 0)
            at->p.repeats = 1;
        at->rep = &r->a[i];
        at->rep->id = at->p.id;
        at->rep->method = at->p.method;
        at->rep->role = at->p.role;
        at->rep->why = "";
        at->rep->started_ms = at->rep->connected_ms = at->rep->ended_ms = -1;
    }
    if (out)
        *out = e;
    /* Even an impossible plan is reported from the loop, never from here. */
    uv_timer_start(&e->timer, on_tick, 0, 0);
    if (e->plan.status == 0)
        arm(e);
    return 0;
}

void ntcp_engine_cancel(ntcp_engine *e)
{
    if (e && !e->done)
        finish(e, NTCP_ECLOSED, "cancelled");
}

const char *ntcp_engine_role_name(plan_role_t r)
{
    switch (r) {
    case PLAN_CONNECT: return "connect";
    case PLAN_ACCEPT: return "accept";
    case PLAN_SIMOPEN: return "simopen";
    case PLAN_PUNCH: return "punch";
    case PLAN_RAW_SYN: return "raw-syn";
    case PLAN_SPRAY: return "spray";
    case PLAN_GUESS: return "guess";
    }
    return "?";
}

/* Appends with snprintf rules; *off may run past len (the needed length). */
static void put(char *buf, size_t len, size_t *off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char *buf, size_t len, size_t *off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*off < len ? buf + *off : NULL, *off < len ? len - *off : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        *off += (size_t)n;
}

size_t ntcp_engine_result_json(const ntcp_engine_result *r, char *buf, size_t len)
{
    size_t off = 0;
    char l[64] = "", m[64] = "";
    if (len)
        buf[0] = '\0';
    if (r->err == 0) {
        ntcp_addr_str((const struct sockaddr *)&r->local, l, sizeof l);
        ntcp_addr_str((const struct sockaddr *)&r->remote, m, sizeof m);
    }
    /* reason: printable ASCII without quotes or backslashes, by construction
     * of the texts it comes from; replaced defensively anyway. */
    char reason[sizeof r->reason];
    size_t k = 0;
    for (; r->reason[k] && k + 1 < sizeof reason; k++)
        reason[k] = (r->reason[k] == '"' || r->reason[k] == '\\' || (unsigned char)r->reason[k] < 32)
                        ? '\''
                        : r->reason[k];
    reason[k] = '\0';
    put(buf, len, &off,
        "{\"err\":%d,\"method\":\"%s\",\"attempt\":%u,\"local\":\"%s\",\"remote\":\"%s\","
        "\"connected_ms\":%lld,\"verified_ms\":%lld,\"elapsed_ms\":%llu,\"punch_ttl\":%u,"
        "\"ttl_left_site\":%s,\"reason\":\"%s\",\"attempts\":[",
        r->err, r->err == 0 ? ntcp_method_name(r->method) : "none", r->attempt_id, l, m,
        (long long)r->connected_ms, (long long)r->verified_ms, (unsigned long long)r->elapsed_ms,
        (unsigned)r->punch_ttl, r->ttl_left_site ? "true" : "false", reason);
    for (size_t i = 0; i < r->n; i++) {
        const ntcp_attempt_report *a = &r->a[i];
        put(buf, len, &off,
            "%s{\"id\":%u,\"method\":\"%s\",\"role\":\"%s\",\"outcome\":\"%s\",\"started_ms\":%lld,"
            "\"connected_ms\":%lld,\"ended_ms\":%lld,\"syns\":%u,\"refusals\":%u,\"connections\":%u,"
            "\"errno\":%d,\"why\":\"%s\"}",
            i ? "," : "", a->id, ntcp_method_name(a->method), role_name(a->role),
            ntcp_attempt_outcome_name(a->outcome), (long long)a->started_ms,
            (long long)a->connected_ms, (long long)a->ended_ms, a->syns, a->refusals,
            a->connections, a->sys_errno, a->why ? a->why : "");
    }
    put(buf, len, &off, "]}");
    return off;
}
