/*
 * api.c: ntcp_listen, ntcp_accept, ntcp_connect and their asynchronous
 * forms: the context's runtime. The runtime's types, its threads and who
 * owns what: rt.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <uv.h>

#include "addr.h"
#include "broker_proto.h"
#include "context.h"
#include "discover.h"
#include "engine.h"
#include "identity.h"
#include "ntcp.h"
#include "plan.h"
#include "plan_go.h"
#include "portmux.h"
#include "raw.h"
#include "relay.h"
#include "rt.h"
#include "session.h"
#include "stun.h"
#include "udp_plan.h"
#include "udp_punch.h"
#include "verify.h"

#define DEFAULT_TIMEOUT_MS 30000
#define DISCOVER_TIMEOUT_MS 15000
#define TICK_MS 50

/* dst = a b c, cut to cap bytes (a detail line may lose its end). a may be
 * dst itself. */
static void join3(char *dst, size_t cap, const char *a, const char *b, const char *c)
{
    char tmp[512];
    size_t n = 0;
    const char *parts[3] = {a, b, c};
    for (int k = 0; k < 3; k++)
        for (const char *q = parts[k]; q && *q && n + 1 < sizeof tmp; q++)
            tmp[n++] = *q;
    if (n >= cap)
        n = cap ? cap - 1 : 0;
    if (cap) {
        memcpy(dst, tmp, n);
        dst[n] = 0;
    }
}

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void info_init(ntcp_conn_info_t *i, const char *peer, bool initiator)
{
    memset(i, 0, sizeof *i);
    i->size = sizeof *i;
    snprintf(i->peer, sizeof i->peer, "%s", peer ? peer : "");
    i->initiator = initiator;
    i->broker_ms = i->start_ms = i->connected_ms = i->verified_ms = -1;
}

/* Copies what the caller's (possibly older, smaller) struct has room for. */
static void info_copy_out(ntcp_conn_info_t *dst, const ntcp_conn_info_t *src)
{
    if (!dst)
        return;
    size_t n = dst->size && dst->size < sizeof *src ? dst->size : sizeof *src;
    memcpy(dst, src, n);
    dst->size = n;
}

/* ---- completing requests ---- */

static void req_complete(ntcp_rt *rt, req *r, int status, const ntcp_conn_info_t *info)
{
    if (r->blocking) {
        pthread_mutex_lock(&rt->mu);
        r->status = status;
        if (info)
            r->info = *info;
        else /* "filled in every case" (ntcp.h), also when ended before it started */
            info_init(&r->info, r->kind == R_CONNECT ? r->name : "", r->kind == R_CONNECT);
        r->done = true;
        pthread_cond_broadcast(&rt->cv);
        pthread_mutex_unlock(&rt->mu);
        return;
    }
    if (r->kind == R_LISTEN) {
        if (r->listen_cb)
            r->listen_cb(rt->ctx, status, r->user);
    } else if (r->conn_cb) {
        ntcp_conn_info_t empty;
        if (!info) {
            info_init(&empty, r->kind == R_CONNECT ? r->name : "", r->kind == R_CONNECT);
            info = &empty;
        }
        r->conn_cb(rt->ctx, status, info, r->user);
    } else if (status >= 0) {
        close(status);
    }
    free(r);
}

static void unlink_waiting(ntcp_rt *rt, req *r)
{
    for (req **p = &rt->waiting; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            return;
        }
}

/* An incoming verified connection: to an accept callback, or the queue. */
static void deliver_incoming(ntcp_rt *rt, int fd, const ntcp_conn_info_t *info)
{
    if (rt->acb_head) {
        req *r = rt->acb_head;
        rt->acb_head = r->next;
        if (!rt->acb_head)
            rt->acb_tail = NULL;
        req_complete(rt, r, fd, info);
        return;
    }
    queued *q = malloc(sizeof *q);
    if (!q) {
        close(fd);
        return;
    }
    q->next = NULL;
    q->fd = fd;
    q->info = *info;
    pthread_mutex_lock(&rt->mu);
    if (rt->aq_tail)
        rt->aq_tail->next = q;
    else
        rt->aq_head = q;
    rt->aq_tail = q;
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
}

/* ---- the newest external port, with sequential ports ----
 *
 * Behind a NAT that gives each new mapping the next port (+delta), every
 * connection moves the ports the peer must predict: the planner's base is
 * the newest external port known. After each connection this end opens one
 * TCP connection to the STUN server, reads the port it was seen from
 * (ntcp_port_sample_start(), discover.h), and
 * sends the profile with that port to the broker (a REFRESH on the session's
 * stream, so the broker has it before any later CONNECT or OFFER answer of
 * ours). Both plans then start from it: the peer from the CONNECT-GO's
 * blob, this end from the blob it sent last. */

static void resample(ntcp_rt *rt);

/* The sample's port (0: none): into the profile, to the broker. */
static void sample_port(uint16_t port, void *user)
{
    ntcp_rt *rt = user;
    if (rt->debug)
        fprintf(stderr, "ntcp: newest external port %u\n", port);
    if (port && rt->s && rt->blen > 0) {
        rt->me.seq_port[PLAN_TCP4] = port;
        int n = plan_profile_encode(&rt->me, rt->blob, sizeof rt->blob);
        if (n > 0) {
            rt->blen = n;
            ntcp_session_set_profile(rt->s, rt->blob, (size_t)n);
        }
    }
}

/* The sampler is gone: the next sample, if a connection ended during it. */
static void sample_freed(void *user)
{
    ntcp_rt *rt = user;
    rt->sampling = NULL;
    if (rt->sample_again && rt->phase != P_IDLE) {
        rt->sample_again = false;
        resample(rt);
    }
}

static void resample(ntcp_rt *rt)
{
    if (rt->debug)
        fprintf(stderr, "ntcp: resample: tcp4 %d ports %d stun %d session %d\n",
                rt->me.has[PLAN_TCP4], rt->me.b[PLAN_TCP4].ports, rt->stun_addr.ss_family,
                rt->s != NULL);
    if (!rt->me.has[PLAN_TCP4] || rt->me.b[PLAN_TCP4].ports != NTCP_PORTS_SEQUENTIAL ||
        !rt->stun_addr.ss_family || !rt->s)
        return;
    if (rt->sampling) {
        rt->sample_again = true;
        return;
    }
    ntcp_port_sample_start(&rt->loop, &rt->stun_addr, 5000, sample_port, sample_freed, rt,
                           &rt->sampling);
}

/* ---- connections ---- */

static void run_held(ntcp_rt *rt);

static void conn_free(conn *c)
{
    ntcp_rt *rt = c->rt;
    if (c->bridge)
        ntcp_relay_bridge_close(c->bridge); /* not handed over: the allocation ends */
    for (conn **p = &rt->conns; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    free(c);
}

static void conn_finish(conn *c, int status)
{
    if (c->finished)
        return;
    c->finished = true;
    ntcp_rt *rt = c->rt;
    if (c->going)
        resample(rt); /* its attempts made mappings: the ports moved */
    if (status < 0 && !c->info.detail[0])
        snprintf(c->info.detail, sizeof c->info.detail, "%s", ntcp_strerror(status));
    if (c->r) {
        req *r = c->r;
        c->r = NULL;
        req_complete(rt, r, status, &c->info);
    } else if (status >= 0) {
        deliver_incoming(rt, status, &c->info);
    }
    if (!c->e && !c->p && !c->relay)
        conn_free(c); /* else freed by the engine's (punch's, relay's) callback */
    run_held(rt);
}

static int64_t since(const conn *c, uint64_t t)
{
    return t >= c->t0 ? (int64_t)(t - c->t0) : 0;
}

/* The winner of a connection's engine or punch: the descriptor in
 * blocking mode (as accept() or connect() would give it) and its facts in
 * the connection's info. Offsets are from the common start. */
static void conn_won(conn *c, int fd, const char *method, const struct sockaddr_storage *local,
                     const struct sockaddr_storage *remote, int64_t connected_ms,
                     int64_t verified_ms)
{
    ntcp_conn_info_t *i = &c->info;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    snprintf(i->method, sizeof i->method, "%s", method);
    i->local = *local;
    i->remote = *remote;
    if (i->start_ms >= 0) {
        i->connected_ms = i->start_ms + connected_ms;
        i->verified_ms = i->start_ms + verified_ms;
    }
}

/* The engine or punch of c has ended with status (a descriptor or an
 * error): to its caller, unless the caller already had an answer (then the
 * descriptor goes, through close_fd). Frees c. */
static void conn_ended(conn *c, int status, void (*close_fd)(ntcp_rt *, int))
{
    if (status == NTCP_ECLOSED && c->cancel_err)
        status = c->cancel_err;
    if (c->finished) {
        if (status >= 0)
            close_fd(c->rt, status);
        conn_free(c);
        return;
    }
    conn_finish(c, status); /* frees c: nothing of it runs any more */
}

static void close_tcp(ntcp_rt *rt, int fd)
{
    (void)rt;
    close(fd);
}

static bool relay_after_engine(conn *c, const ntcp_engine_result *res);
static void udp_relay_resume(conn *c);

/* The engine's per-attempt reports into the public info (ntcp.h). */
static void info_attempts(ntcp_conn_info_t *i, const ntcp_engine_result *res)
{
    size_t n = res->n < NTCP_MAX_ATTEMPTS ? res->n : NTCP_MAX_ATTEMPTS;
    i->n_attempt = (unsigned)n;
    for (size_t k = 0; k < n; k++) {
        const ntcp_attempt_report *a = &res->a[k];
        ntcp_attempt_info_t *o = &i->attempt[k];
        snprintf(o->method, sizeof o->method, "%s", ntcp_method_name(a->method));
        snprintf(o->role, sizeof o->role, "%s", ntcp_engine_role_name(a->role));
        snprintf(o->outcome, sizeof o->outcome, "%s", ntcp_attempt_outcome_name(a->outcome));
        o->sys_errno = a->sys_errno;
        o->started_ms = a->started_ms;
        o->connected_ms = a->connected_ms;
        o->ended_ms = a->ended_ms;
        o->syns = a->syns;
        o->refusals = a->refusals;
        o->connections = a->connections;
        snprintf(o->why, sizeof o->why, "%s", a->why ? a->why : "");
    }
    i->punch_ttl = res->punch_ttl;
    i->ttl_left_site = res->ttl_left_site;
}

static void on_engine(ntcp_engine *e, const ntcp_engine_result *res, void *user)
{
    (void)e;
    conn *c = user;
    c->e = NULL;
    ntcp_conn_info_t *i = &c->info;
    if (c->rt->debug) {
        /* NTCP_DEBUG set: the plan and every attempt's outcome, for people. */
        static char pj[8192], ej[8192];
        plan_format(&c->pl, true, pj, sizeof pj);
        ntcp_engine_result_json(res, ej, sizeof ej);
        fprintf(stderr, "ntcp: plan %s\nntcp: result %s\n", pj, ej);
    }
    i->attempts = (unsigned)res->n;
    snprintf(i->detail, sizeof i->detail, "%s", res->reason);
    info_attempts(i, res);
    if (relay_after_engine(c, res))
        return; /* the relay has won, or goes on from here (relay.h) */
    if (res->err == 0)
        conn_won(c, res->fd, ntcp_method_name(res->method), &res->local, &res->remote,
                 res->connected_ms, res->verified_ms);
    conn_ended(c, res->err == 0 ? res->fd : res->err, close_tcp);
}

/* ---- the relay of last resort (relay.h) ---- */

static void relay_won(conn *c, const ntcp_relay_result *res)
{
    ntcp_conn_info_t *i = &c->info;
    int64_t t0 = (int64_t)c->t0 + (i->start_ms >= 0 ? i->start_ms : 0);
    conn_won(c, res->fd, "relay", &res->local, &res->remote,
             (int64_t)res->connected_at - t0, (int64_t)res->verified_at - t0);
    i->relay = res->server;
    char sb[64], rb[64] = "?", head[192];
    ntcp_addr_str((const struct sockaddr *)&res->server, sb, sizeof sb);
    if (res->relayed.ss_family)
        ntcp_addr_str((const struct sockaddr *)&res->relayed, rb, sizeof rb);
    snprintf(head, sizeof head, "relay %.63s (relayed address %.63s); direct: ", sb, rb);
    join3(i->detail, sizeof i->detail, head, i->detail[0] ? i->detail : "not tried", "");
}

/* The relay's turn once the direct methods are over (also when they never
 * ran: relay = always). */
static void relay_go(conn *c)
{
    /* The requester until its call's deadline. The target as long as the
     * requester could still come: its engine ends with ours (same plan
     * deadline, same common start), then it connects at once: 5 s and a few
     * round trips cover that. Not longer: a connection under way holds
     * this context's next connect to the same peer (conns_busy()). */
    uint64_t deadline = c->r ? c->r->deadline : mono_ms() + 5000 + 8u * c->info.rtt_ms;
    if (c->rt->debug)
        fprintf(stderr, "ntcp: direct methods over (%s): relay\n", c->info.detail);
    ntcp_relay_go(c->relay, deadline);
}

/* The engine of c has ended with res. Returns true when the relay takes it
 * from here: its socket was verified meanwhile (handed over now), or no
 * direct method got through and the relay goes on. Otherwise (the engine
 * won, or was cancelled) the relay is stopped and the caller goes on. */
static bool relay_after_engine(conn *c, const ntcp_engine_result *res)
{
    if (c->relay_ready) {
        int fd = c->relay_res.fd;
        c->relay_ready = false;
        relay_won(c, &c->relay_res);
        conn_ended(c, fd, close_tcp);
        return true;
    }
    if (res->err != 0 && res->err != NTCP_ECLOSED && c->relay && !c->finished) {
        relay_go(c);
        return true;
    }
    if (c->relay)
        ntcp_relay_cancel(c->relay); /* its callback ends it */
    if (res->err != 0 && c->relay_why[0])
        join3(c->info.detail, sizeof c->info.detail, c->info.detail, "; relay: ", c->relay_why);
    return false;
}

static void on_relay(ntcp_relay *rl, const ntcp_relay_result *res, void *user)
{
    conn *c = user;
    c->relay = NULL;
    if (res->err == 0 && c->relay_allocator)
        ntcp_relay_keep(rl, res->fd, &c->rt->relays); /* the allocation lives with the socket */
    if (c->finished) {
        if (res->err == 0)
            close(res->fd);
        if (!c->e && !c->p)
            conn_free(c);
        return;
    }
    if (c->e) {
        /* The engine still runs. A verified relay connection means the peer
         * gave up on the direct methods: it wins, the engine stops. */
        if (res->err == 0) {
            c->relay_ready = true;
            c->relay_res = *res;
            ntcp_engine_cancel(c->e); /* on_engine hands the relay's socket over */
        } else {
            join3(c->relay_why, sizeof c->relay_why, res->why, "", "");
        }
        return;
    }
    if (res->err == 0) {
        relay_won(c, res);
        conn_ended(c, res->fd, close_tcp);
        return;
    }
    ntcp_conn_info_t *i = &c->info;
    join3(i->detail, sizeof i->detail, i->detail[0] ? i->detail : "no direct method", "; relay: ",
          res->why);
    /* The relay's own failure says most: refused (credentials, quota),
     * unreachable, timed out, or the proof's error. */
    conn_ended(c, res->err, close_tcp);
}

static void relay_send_addr(void *user, const struct sockaddr_storage *relayed, const char *why)
{
    conn *c = user;
    ntcp_session_send_relay_addr(c->rt->s, c->nonce, relayed, why);
}

static void on_relay_addr(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                          const struct sockaddr_storage *relayed, const char *why, void *user)
{
    (void)s;
    ntcp_rt *rt = user;
    for (conn *c = rt->conns; c; c = c->next) {
        if (memcmp(c->nonce, nonce, sizeof c->nonce) != 0)
            continue;
        if (c->relay && !c->relay_allocator)
            ntcp_relay_peer_addr(c->relay, relayed, why);
        if (c->urelay_on && !c->bridge && c->urelay_state == 0) {
            /* UDP: the requester's relay step may be waiting for it. */
            if (relayed && relayed->ss_family) {
                c->urelayed = *relayed;
                c->urelay_state = 1;
            } else {
                c->urelay_state = -1;
                snprintf(c->urelay_why, sizeof c->urelay_why, "the peer has no relay: %s",
                         why && *why ? why : "(no reason given)");
            }
            udp_relay_resume(c);
        }
    }
}

/* Whether this connect may use the relay (TCP or UDP): the broker offers one
 * and the policy allows it. A target that may not tells the requester, so
 * that it does not wait for an address that will not come. */
static bool relay_allowed(conn *c, const broker_go *g)
{
    ntcp_rt *rt = c->rt;
    if (g->turn_server.ss_family == 0)
        return false;
    if (rt->ctx->relay == NTCP_RELAY_NEVER) {
        if (g->role == BROKER_ROLE_TARGET)
            ntcp_session_send_relay_addr(rt->s, g->nonce, NULL, "the peer's policy forbids the relay");
        return false;
    }
    return true;
}

/* Starts the relay beside the engine when relay_allowed(). The target
 * allocates, the requester connects. */
static void relay_start(conn *c, const broker_go *g, const ntcp_verify_params *vp)
{
    ntcp_rt *rt = c->rt;
    if (!relay_allowed(c, g))
        return;
    ntcp_relay_config rc;
    memset(&rc, 0, sizeof rc);
    rc.allocator = g->role == BROKER_ROLE_TARGET;
    rc.server = g->turn_server;
    rc.user = g->turn_user;
    rc.pass = g->turn_pass;
    rc.peer_public = g->peer.public_addr;
    rc.verify = *vp;
    rc.send_addr = relay_send_addr;
    rc.send_user = c;
    c->relay_allocator = rc.allocator;
    if (ntcp_relay_start(&rt->loop, &rc, on_relay, c, &c->relay) < 0)
        c->relay = NULL;
}

/* RAW_SYN attempts: our ISN to the peer, and the peer's to the engine. */
static void raw_send_isn(void *user, const struct sockaddr_storage *ext, uint32_t isn, bool spoof)
{
    conn *c = user;
    ntcp_session_send_raw_isn(c->rt->s, c->nonce, ext, isn, spoof);
}

static void on_raw_isn(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
                       const struct sockaddr_storage *ext, uint32_t isn, void *user)
{
    (void)s;
    (void)ext;
    ntcp_rt *rt = user;
    for (conn *c = rt->conns; c; c = c->next)
        if (c->e && c->going && memcmp(c->nonce, nonce, sizeof c->nonce) == 0)
            ntcp_engine_raw_isn(c->e, isn);
}

/* ---- UDP (ntcp_udp_punch(), docs/udp.md) ---- */

static void udp_relay_go(conn *c);

static void on_punch(udp_puncher *p, const ntcp_udp_punch_result *r, void *user)
{
    (void)p;
    conn *c = user;
    ntcp_rt *rt = c->rt;
    c->p = NULL;
    ntcp_conn_info_t *i = &c->info;
    if (rt->debug) {
        static char pj[4096], rj[4096];
        udp_plan_format(&c->upl, pj, sizeof pj);
        ntcp_udp_punch_result_json(r, rj, sizeof rj);
        fprintf(stderr, "ntcp: udp plan %s\nntcp: udp result %s\n", pj, rj);
    }
    if (c->urelay) {
        /* The relay's punch (relay_udp.c): its reason after the direct one's. */
        join3(i->detail, sizeof i->detail, i->detail, "; relay: ", r->reason);
    } else {
        snprintf(i->detail, sizeof i->detail, "%s", r->reason);
        i->attempts = r->paths;
        if (r->err != 0 && (r->err != NTCP_ECLOSED || c->urelay_now) && c->urelay_on && !c->finished) {
            udp_relay_go(c); /* no direct path: the relay */
            if (c->p || c->urelay_wait)
                return;
        }
    }
    if (r->err == 0 && c->urelay) {
        i->relay = c->uturn;
        conn_won(c, r->fd, "relay", &r->local, &r->remote, r->reached_ms, r->verified_ms);
        if (c->bridge) /* the target: the bridge lives with the application's socket */
            ntcp_relay_bridge_keep(c->bridge, r->fd, &rt->bridges);
        c->bridge = NULL;
    } else if (r->err == 0) {
        conn_won(c, r->fd, udp_method_name(r->method), &r->local, &r->remote, r->reached_ms,
                 r->verified_ms);
        /* The path's keepalive, until ntcp_udp_close() (or ntcp_free()). */
        rt_keepalive_start(rt, r->fd);
    }
    if (c->bridge) {
        ntcp_relay_bridge_close(c->bridge); /* a direct path won, or nothing did */
        c->bridge = NULL;
    }
    conn_ended(c, r->err == 0 ? r->fd : r->err, rt_udp_close_fd);
}

/* ---- UDP through the relay (relay_udp.c, docs/relay.md) ---- */

/* The relay's punch: one target (the relayed address, or at the target the
 * bridge's stand-in for the peer), probed at once, the same proof and PICK
 * as a direct path. fd is the punch's from here. */
static void udp_relay_punch(conn *c, int fd, const struct sockaddr_storage *target)
{
    ntcp_rt *rt = c->rt;
    udp_plan *pl = &c->upl;
    memset(pl, 0, sizeof *pl);
    pl->method = UDP_METHOD_DIRECT;
    pl->nsockets = 1;
    pl->ntargets = 1;
    pl->t[0].addr = *target;
    pl->t[0].count = 1;
    pl->kind[0] = UDP_T_PUBLIC;
    pl->rtt_ms = c->info.rtt_ms > 0 ? c->info.rtt_ms : 50;
    pl->interval_ms = 200;
    pl->deadline_ms = 8000 + 8 * pl->rtt_ms;
    snprintf(pl->reason, sizeof pl->reason, "relay");
    ntcp_udp_punch_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.plan = pl;
    cfg.fd = fd;
    cfg.start_at = uv_now(&rt->loop);
    cfg.verify = c->uvp;
    cfg.verify.peer_name = c->upeer;
    cfg.verify.key = rt->key;
    cfg.verify.name = rt->name;
    c->urelay_wait = false;
    int rc = ntcp_udp_punch_start(&rt->loop, &cfg, on_punch, c, &c->p);
    if (rc < 0) {
        c->p = NULL;
        close(fd);
        snprintf(c->urelay_why, sizeof c->urelay_why, "cannot start the relay's punch: %s",
                 ntcp_strerror(rc));
    }
}

/* The direct paths are over (or were skipped): the relay's turn. Starts its
 * punch, or waits (urelay_wait) for the address or the bridge; otherwise
 * leaves the reason in urelay_why and neither c->p nor urelay_wait. */
static void udp_relay_go(conn *c)
{
    c->urelay = true;
    if (c->bridge) {
        const char *why = "";
        int st = ntcp_relay_bridge_state(c->bridge, &why);
        if (st == 0) {
            c->urelay_wait = true;
            c->urelay_deadline = mono_ms() + 8000 + 8u * c->info.rtt_ms;
            return;
        }
        struct sockaddr_storage standin;
        int fd = st == 1 ? ntcp_relay_bridge_take(c->bridge, &standin) : -1;
        if (fd < 0) {
            snprintf(c->urelay_why, sizeof c->urelay_why, "%s", why);
            return;
        }
        udp_relay_punch(c, fd, &standin);
        return;
    }
    if (c->urelay_state == 0) {
        c->urelay_wait = true;
        c->urelay_deadline = mono_ms() + 8000 + 8u * c->info.rtt_ms;
        return;
    }
    if (c->urelay_state < 0)
        return; /* urelay_why says why */
    int fd = socket(c->urelayed.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(c->urelay_why, sizeof c->urelay_why, "socket: %s", strerror(errno));
        return;
    }
    udp_relay_punch(c, fd, &c->urelayed);
}

/* A relay step that could not start: the connection ends with why. */
static void udp_relay_failed(conn *c, int err)
{
    ntcp_conn_info_t *i = &c->info;
    join3(i->detail, sizeof i->detail, i->detail[0] ? i->detail : "no direct path", "; relay: ",
          c->urelay_why[0] ? c->urelay_why : "no relay");
    c->urelay_wait = false;
    conn_finish(c, err);
}

/* What the relay step waited for has come (an address, the bridge). */
static void udp_relay_resume(conn *c)
{
    if (!c->urelay_wait || c->finished)
        return;
    c->urelay_wait = false;
    udp_relay_go(c);
    if (!c->p && !c->urelay_wait)
        udp_relay_failed(c, NTCP_EUNREACHABLE);
}

/* The target's bridge saw the requester's first datagram: the requester has
 * given up on the direct paths, so the target's own punch stops and the
 * relay's starts. */
static void udp_relay_peer_seen(void *user)
{
    conn *c = user;
    if (c->p && !c->urelay && !c->finished) {
        c->urelay_now = true;
        ntcp_udp_punch_cancel(c->p); /* on_punch goes to the relay */
    }
}

static void udp_relay_send_addr(void *user, const struct sockaddr_storage *relayed, const char *why)
{
    conn *c = user;
    ntcp_session_send_relay_addr(c->rt->s, c->nonce, relayed, why);
    udp_relay_resume(c); /* the target waiting for its bridge */
}

/* At the UDP CONNECT-GO: the bridge (target) or the wait for its address
 * (requester), when the broker offers a relay and the policy allows it. */
static void udp_relay_start(conn *c, const broker_go *g, const ntcp_verify_params *vp)
{
    ntcp_rt *rt = c->rt;
    if (!relay_allowed(c, g))
        return;
    memcpy(c->nonce, g->nonce, sizeof c->nonce); /* RELAY-ADDR names the connect by it */
    c->uvp = *vp;
    snprintf(c->upeer, sizeof c->upeer, "%s", vp->peer_name ? vp->peer_name : "");
    c->uvp.peer_name = c->upeer;
    c->uturn = g->turn_server;
    c->urelay_on = true;
    if (g->role != BROKER_ROLE_TARGET)
        return;
    ntcp_relay_config rc;
    memset(&rc, 0, sizeof rc);
    rc.allocator = true;
    rc.server = g->turn_server;
    rc.user = g->turn_user;
    rc.pass = g->turn_pass;
    rc.peer_public = g->peer.public_udp.ss_family ? g->peer.public_udp : g->peer.public_addr;
    rc.verify = *vp;
    rc.send_addr = udp_relay_send_addr;
    rc.send_user = c;
    rc.peer_seen = udp_relay_peer_seen;
    if (ntcp_relay_bridge_start(&rt->loop, &rc, &c->bridge) < 0) {
        c->bridge = NULL;
        c->urelay_on = false;
    }
}

/* Both ends of a UDP connect: the UDP plan, the session's UDP socket (whose
 * mapping the broker gave the peer), the punch. */
static void udp_go(conn *c, const broker_go *g, const plan_profile *peer)
{
    ntcp_rt *rt = c->rt;
    ntcp_conn_info_t *i = &c->info;
    i->transport = NTCP_UDP;
    i->peer_public = g->peer.public_udp;
    ntcp_session_public_udp(rt->s, &i->public_addr);
    udp_plan_input in;
    udp_plan_input_init(&in);
    if (rt->me.has[PLAN_UDP4])
        in.me.udp = rt->me.b[PLAN_UDP4];
    ntcp_session_public_udp(rt->s, &in.me.public_udp);
    in.me.rtt_ms = rt->me.rtt_ms;
    if (peer->has[PLAN_UDP4])
        in.peer.udp = peer->b[PLAN_UDP4];
    in.peer.public_udp = g->peer.public_udp;
    in.peer.npriv = g->peer.nprivate < PLAN_MAX_PRIVATE ? g->peer.nprivate : PLAN_MAX_PRIVATE;
    for (size_t k = 0; k < in.peer.npriv; k++)
        in.peer.priv[k] = g->peer.private_addr[k];
    in.peer.rtt_ms = peer->rtt_ms;
    in.initiator = g->role == BROKER_ROLE_REQUESTER;
    int rc = udp_plan_make(&in, &c->upl);
    if (rc == NTCP_EINVAL) {
        /* The peer's UDP keepalive has not reached the broker yet: the
         * requester asks again shortly (on_tick), the target waits for that
         * next CONNECT-GO. */
        if (c->r && c->asks < 20) {
            c->going = false;
            c->asks++;
            c->retry_at = mono_ms() + 300;
            return;
        }
        snprintf(i->detail, sizeof i->detail, "the broker has no UDP mapping of %s", i->peer);
        conn_finish(c, NTCP_EUNREACHABLE);
        return;
    }
    ntcp_udp_punch_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.plan = &c->upl;
    /* The session's next keepalive, from its new socket, would be one more
     * mapping inside a sequential NAT's predicted window: after the punch. */
    if (ntcp_session_take_udp(rt->s, c->upl.deadline_ms + 2000, &cfg.fd, NULL, NULL) < 0) {
        snprintf(i->detail, sizeof i->detail, "no UDP socket at the broker session");
        conn_finish(c, NTCP_ESYS);
        return;
    }
    cfg.start_at = uv_now(&rt->loop) + g->start_delay_ms;
    if (ntcp_verify_params_from_go(&cfg.verify, g) < 0) {
        close(cfg.fd);
        snprintf(i->detail, sizeof i->detail, "the broker's CONNECT-GO has no key for %s", i->peer);
        conn_finish(c, NTCP_EPROTO);
        return;
    }
    cfg.verify.key = rt->key;
    cfg.verify.name = rt->name;
    udp_relay_start(c, g, &cfg.verify);
    if (c->urelay_on && rt->ctx->relay == NTCP_RELAY_ALWAYS && c->r) {
        close(cfg.fd); /* the session's socket is not needed: the relay only */
        snprintf(i->detail, sizeof i->detail, "direct paths skipped (relay = always)");
        udp_relay_go(c);
        if (!c->p && !c->urelay_wait)
            udp_relay_failed(c, NTCP_EUNREACHABLE);
        return;
    }
    rc = ntcp_udp_punch_start(&rt->loop, &cfg, on_punch, c, &c->p);
    if (rc < 0) {
        c->p = NULL;
        close(cfg.fd);
        snprintf(i->detail, sizeof i->detail, "cannot start the punch: %s", ntcp_strerror(rc));
        conn_finish(c, rc);
    }
}

/* Both ends of a TCP or UDP connect: the plan from both profiles, then the
 * engine (TCP) or the punch (UDP). */
static void conn_go(conn *c, const broker_go *g)
{
    ntcp_rt *rt = c->rt;
    if (c->going || c->finished)
        return;
    c->going = true;
    uint64_t now = mono_ms();
    ntcp_conn_info_t *i = &c->info;
    i->broker_ms = since(c, now);
    i->start_ms = i->broker_ms + g->start_delay_ms;
    i->peer_public = g->peer.public_addr;
    i->rtt_ms = g->rtt_us / 1000;
    ntcp_session_public_addr(rt->s, &i->public_addr);
    snprintf(i->peer, sizeof i->peer, "%s", g->peer.name);

    plan_profile peer;
    memset(&peer, 0, sizeof peer);
    if (g->peer.profile_len && plan_profile_decode(g->peer.profile, g->peer.profile_len, &peer) < 0)
        memset(&peer, 0, sizeof peer); /* an unreadable profile is an unknown one */
    if (g->transport == BROKER_TRANSPORT_UDP) {
        udp_go(c, g, &peer);
        return;
    }
    struct sockaddr_storage sl;
    uint16_t sport = ntcp_session_local_addr(rt->s, &sl) == 0 ? ntcp_sa_port(&sl) : 0;
    plan_input in;
    plan_input_init(&in);
    plan_input_from_go(&in, &rt->me, &i->public_addr, rt->priv, rt->npriv, sport, g, &peer);
    /* STUNT#1 / NATBlaster: both blobs say "raw usable" (privileged and
     * built with NTCP_RAW); STUNT#1 also needs the broker's spoofing. */
    in.raw_enabled = raw_built();
    in.broker_spoofs = ntcp_session_broker_spoofs(rt->s);
    memcpy(c->nonce, g->nonce, sizeof c->nonce);
    if (rt->debug)
        fprintf(stderr, "ntcp: plan input: my newest port %u, the peer's %u\n", in.me.seq_port,
                in.peer.seq_port);
    plan_make(&in, &c->pl); /* an impossible plan goes to the engine, which reports it */

    ntcp_engine_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.plan = &c->pl;
    cfg.session_port = sport;
    cfg.start_at = uv_now(&rt->loop) + g->start_delay_ms;
    if (ntcp_verify_params_from_go(&cfg.verify, g) < 0) {
        /* The detail first: conn_finish() hands it over and frees c. */
        snprintf(i->detail, sizeof i->detail, "the broker's CONNECT-GO has no key for %s", i->peer);
        conn_finish(c, NTCP_EPROTO);
        return;
    }
    cfg.verify.key = rt->key;
    cfg.verify.name = rt->name;
    cfg.raw_send_isn = raw_send_isn;
    cfg.raw_user = c;
    cfg.mux = rt->mux;
    relay_start(c, g, &cfg.verify);
    if (c->relay && rt->ctx->relay == NTCP_RELAY_ALWAYS) {
        snprintf(i->detail, sizeof i->detail, "direct methods skipped (relay = always)");
        relay_go(c);
        return;
    }
    int rc = ntcp_engine_start(&rt->loop, &cfg, on_engine, c, &c->e);
    if (rc < 0) {
        c->e = NULL;
        snprintf(i->detail, sizeof i->detail, "cannot start the attempts: %s", ntcp_strerror(rc));
        conn_finish(c, rc);
    }
}

static void on_connect_answer(ntcp_session *s, int err, int code, const broker_go *g, void *arg)
{
    (void)s;
    conn *c = arg;
    if (c->finished) {
        if (!c->e && !c->p)
            conn_free(c);
        return;
    }
    if (err == 0) {
        conn_go(c, g);
        return;
    }
    int st = err;
    const char *why = NULL;
    if (err == NTCP_ENOTFOUND) {
        st = NTCP_ENOPEER;
        why = "the broker knows no peer of that name";
    } else if (err == NTCP_EPROTO && (code == 603 || code == 403)) {
        st = NTCP_EREFUSED;
        why = code == 603 ? "the peer declined the connection" : "the broker refused: not authorized";
    } else if (err == NTCP_EPROTO && (code == 408 || code == 410)) {
        st = NTCP_EUNREACHABLE;
        why = code == 408 ? "the peer did not answer the broker's offer" : "the peer left";
    } else if (err == NTCP_EPROTO && code == 429) {
        st = NTCP_EREFUSED;
        why = "the broker's rate limit";
    } else if (err == NTCP_EPROTO && code == BROKER_ERR_NO_UDP) {
        st = NTCP_EREFUSED;
        why = "the broker has no UDP port (ntcp-brokerd --udp none): it cannot coordinate UDP";
    } else if (err == NTCP_ECLOSED || err == NTCP_EUNREACHABLE) {
        /* NTCP_ECLOSED is for ntcp_free(); a lost broker is unreachable. */
        pthread_mutex_lock(&c->rt->mu);
        bool stopping = c->rt->stopping;
        pthread_mutex_unlock(&c->rt->mu);
        st = stopping ? NTCP_ECLOSED : NTCP_EUNREACHABLE;
        why = stopping ? "the context is being freed" : "the broker session was lost";
    }
    if (why)
        snprintf(c->info.detail, sizeof c->info.detail, "%s (code %d)", why, code);
    else
        snprintf(c->info.detail, sizeof c->info.detail, "broker: %s (code %d)",
                 ntcp_strerror(err), code);
    conn_finish(c, st);
}

static void connect_now(ntcp_rt *rt, req *r)
{
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        req_complete(rt, r, NTCP_ENOMEM, NULL);
        return;
    }
    c->rt = rt;
    c->r = r;
    c->t0 = r->t0;
    info_init(&c->info, r->name, true);
    c->info.transport = r->transport;
    c->next = rt->conns;
    rt->conns = c;
    uint64_t now = mono_ms();
    uint32_t left = r->deadline > now ? (uint32_t)(r->deadline - now) : 1;
    int rc = ntcp_session_connect_ex(rt->s, r->name,
                                     r->transport == NTCP_UDP ? BROKER_TRANSPORT_UDP
                                                              : BROKER_TRANSPORT_TCP,
                                     left, on_connect_answer, c);
    if (rc < 0) {
        snprintf(c->info.detail, sizeof c->info.detail, "cannot ask the broker: %s",
                 ntcp_strerror(rc));
        conn_finish(c, rc);
    }
}

/* Connections of a context run at once: the session port's listener is
 * shared through the mux (portmux.h), which gives each engine the
 * connections whose HELLO names its session. Two exceptions wait in
 * rt->waiting (with their deadline) for the one under way to end:
 *   - a second TCP connect to the same peer: both would connect from the
 *     session port to the same peer address and port, one 4-tuple that two
 *     sockets cannot hold (EADDRNOTAVAIL);
 *   - a UDP punch while another one is under way: each takes the session's
 *     UDP socket, whose mapping the broker saw (ntcp_session_take_udp()),
 *     and the next one's mapping is unknown until the new socket's
 *     keepalive reached the broker (docs/udp.md).
 * Offers from peers cannot wait (their start time is shared) and are never
 * held. */
static bool conn_blocks(const conn *c, const req *r)
{
    if (c->finished)
        return false;
    if (r->transport == NTCP_UDP)
        return c->info.transport == NTCP_UDP;
    return c->info.transport != NTCP_UDP && strcmp(c->info.peer, r->name) == 0;
}

static bool conns_busy(const ntcp_rt *rt, const req *r)
{
    for (const conn *c = rt->conns; c; c = c->next)
        if (conn_blocks(c, r))
            return true;
    return false;
}

static void connect_or_hold(ntcp_rt *rt, req *r)
{
    if (!conns_busy(rt, r)) {
        connect_now(rt, r);
        return;
    }
    req **p = &rt->waiting;
    while (*p)
        p = &(*p)->next;
    r->next = NULL;
    *p = r;
}

/* Starts every held connect that nothing blocks any more, in order. */
static void run_held(ntcp_rt *rt)
{
    if (rt->phase != P_REGISTERED)
        return;
    for (req *w = rt->waiting, *n; w; w = n) {
        n = w->next;
        if (w->kind != R_CONNECT || conns_busy(rt, w))
            continue;
        unlink_waiting(rt, w);
        w->next = NULL;
        connect_now(rt, w);
    }
}

/* ---- the session ---- */

static bool on_offer(ntcp_session *s, const broker_peer_info *from, void *user)
{
    (void)s;
    ntcp_rt *rt = user;
    pthread_mutex_lock(&rt->mu);
    bool ok = rt->listening && !rt->stopping;
    pthread_mutex_unlock(&rt->mu);
    if (ok && rt->ctx->policy)
        ok = rt->ctx->policy(rt->ctx, from->name,
                             from->transport == BROKER_TRANSPORT_UDP ? NTCP_UDP : NTCP_TCP,
                             rt->ctx->policy_user) != 0;
    return ok;
}

static void on_go(ntcp_session *s, const broker_go *g, void *user)
{
    (void)s;
    ntcp_rt *rt = user;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->rt = rt;
    c->t0 = mono_ms();
    info_init(&c->info, g->peer.name, false);
    c->next = rt->conns;
    rt->conns = c;
    conn_go(c, g);
}

static void registered(ntcp_rt *rt)
{
    rt->phase = P_REGISTERED;
    rt->reg_err = 0;
    req *w = rt->waiting;
    rt->waiting = NULL;
    while (w) {
        req *n = w->next;
        w->next = NULL;
        if (w->kind == R_LISTEN) {
            pthread_mutex_lock(&rt->mu);
            rt->listening = true;
            pthread_mutex_unlock(&rt->mu);
            req_complete(rt, w, 0, NULL);
        } else {
            connect_or_hold(rt, w);
        }
        w = n;
    }
}

/* Every request waiting for the registration ends with err and why. */
static void fail_waiting(ntcp_rt *rt, int err, const char *why)
{
    req *w = rt->waiting;
    rt->waiting = NULL;
    while (w) {
        req *n = w->next;
        ntcp_conn_info_t info;
        info_init(&info, w->kind == R_CONNECT ? w->name : "", w->kind == R_CONNECT);
        snprintf(info.detail, sizeof info.detail, "%s", why);
        req_complete(rt, w, err, &info);
        w = n;
    }
}

static void on_state(ntcp_session *s, int state, int err, int code, void *user)
{
    ntcp_rt *rt = user;
    if (state == NTCP_SESSION_REGISTERED) {
        registered(rt);
        return;
    }
    if (rt->phase == P_REGISTERED)
        rt->phase = P_REGISTERING; /* the session registers again by itself */
    if (err == NTCP_EPROTO && (code == 403 || code == 409)) {
        /* Refused: waiting callers learn it now (the session keeps trying). */
        rt->reg_err = NTCP_EREFUSED;
        char why[160];
        snprintf(why, sizeof why,
                 code == 403 ? "the broker refused the registration of %s: not authorized"
                             : "the broker refused the registration of %s: the name is bound "
                               "to another key",
                 rt->name);
        fail_waiting(rt, NTCP_EREFUSED, why);
    }
    if (err == NTCP_ECERT || err == NTCP_ETLS) {
        /* TLS with the broker failed: its certificate was refused, or the
         * port does not speak what we do. Waiting callers learn it now,
         * with the reason; the session keeps trying (slowly, for a
         * certificate). */
        char why[256];
        snprintf(why, sizeof why, "TLS with the broker failed: %s", ntcp_session_tls_error(s));
        fail_waiting(rt, err, why);
    }
    if (err && ntcp_session_round_failed(s)) {
        /* No broker of the list could be reached (refused, unreachable,
         * silent, not resolved): waiting callers learn it now, with the
         * causes, not at their timeout. The session keeps trying. */
        char why[600];
        snprintf(why, sizeof why, "the broker is unreachable: %s", ntcp_session_last_error(s));
        fail_waiting(rt, NTCP_EUNREACHABLE, why);
    }
}

/* The private addresses same-LAN peers may reach us on: the interface the
 * STUN probe left from first, then every other address that is up and not
 * loopback, of the broker's family. Port 0: the session sends its own. */
static size_t private_addrs(const ntcp_rt *rt, int family, struct sockaddr_storage *out,
                            size_t max)
{
    size_t n = 0;
    const struct sockaddr_storage *probe = &rt->prof.tcp4.local;
    if (probe->ss_family == family && n < max) {
        out[n] = *probe;
        ntcp_sa_set_port(&out[n], 0);
        n++;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0)
        return n;
    for (struct ifaddrs *i = ifs; i && n < max; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != family || !(i->ifa_flags & IFF_UP) ||
            (i->ifa_flags & IFF_LOOPBACK))
            continue;
        struct sockaddr_storage a;
        memset(&a, 0, sizeof a);
        memcpy(&a, i->ifa_addr, family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
        if (family == AF_INET6 && IN6_IS_ADDR_LINKLOCAL(&((struct sockaddr_in6 *)&a)->sin6_addr))
            continue;
        ntcp_sa_set_port(&a, 0);
        bool dup = false;
        for (size_t k = 0; k < n; k++)
            dup = dup || ntcp_sockaddr_same_ip((struct sockaddr *)&a, (struct sockaddr *)&out[k]);
        if (!dup)
            out[n++] = a;
    }
    freeifaddrs(ifs);
    return n;
}


static void start_session(ntcp_rt *rt)
{
    ntcp_t *ctx = rt->ctx;
    char why[256];
    int rc;
    if (!rt->key) {
        rc = ctx->key_file ? ntcp_identity_load(ctx->key_file, 1, &rt->key)
                           : ntcp_identity_generate(&rt->key);
        if (rc < 0) {
            snprintf(why, sizeof why, "cannot load or make the key %s: %s",
                     ctx->key_file ? ctx->key_file : "(ephemeral)", ntcp_strerror(rc));
            rt->phase = P_IDLE;
            fail_waiting(rt, rc == NTCP_ENOMEM ? rc : NTCP_ECONFIG, why);
            return;
        }
    }
    /* The session resolves the broker names itself, off the loop. Private
     * addresses of IPv4 unless the first broker is an IPv6 address. */
    char bhost[NTCP_SESSION_MAX_BROKERS][256];
    uint16_t bports[NTCP_SESSION_MAX_BROKERS];
    unsigned char a6[16];
    int family = ntcp_broker_list_parse(ctx->broker, bhost, bports, NTCP_SESSION_MAX_BROKERS) > 0 &&
                         inet_pton(AF_INET6, bhost[0], a6) == 1
                     ? AF_INET6
                     : AF_INET;
    rt->npriv = private_addrs(rt, family, rt->priv, BROKER_MAX_PRIVATE);

    ntcp_session_config sc;
    memset(&sc, 0, sizeof sc);
    sc.broker = ctx->broker;
    sc.udp_at_broker = true; /* ntcp-brokerd's UDP: the same address and port */
    sc.name = rt->name;
    sc.key = rt->key;
    sc.private_addrs = rt->priv;
    sc.nprivate = rt->npriv;
    sc.profile = rt->blen > 0 ? rt->blob : NULL;
    sc.profile_len = rt->blen > 0 ? (size_t)rt->blen : 0;
    sc.on_offer = on_offer;
    sc.on_go = on_go;
    sc.on_state = on_state;
    sc.on_raw_isn = on_raw_isn;
    sc.on_relay_addr = on_relay_addr;
    sc.user = rt;
    /* TLS to the broker: its certificate must carry the host name the
     * configuration gives (or that address), unless pinned. */
    if (ctx->broker_tls) {
        sc.tls = true;
        sc.tls_ca_file = ctx->broker_ca;
        sc.tls_pin = ctx->broker_pin;
        sc.tls_insecure = ctx->broker_tls_insecure != 0;
    }
    rt->phase = P_REGISTERING;
    rc = ntcp_session_start(&rt->loop, &sc, &rt->s);
    if (rc < 0) {
        rt->s = NULL;
        rt->phase = P_IDLE;
        fail_waiting(rt, rc, "cannot start the broker session");
    }
}

static void on_discovered(ntcp_t *ctx, int status, const ntcp_nat_profile_t *np, void *user)
{
    (void)ctx;
    ntcp_rt *rt = user;
    pthread_mutex_lock(&rt->mu);
    rt->prof = *np;
    rt->prof_status = status;
    pthread_mutex_unlock(&rt->mu);
    if (rt->phase != P_DISCOVER)
        return; /* stopping */
    plan_profile pp;
    /* "raw usable": built with NTCP_RAW and allowed raw sockets now. */
    plan_profile_from_nat(&pp, np, raw_check(NULL, 0) == 0, 0);
    rt->blen = plan_profile_encode(&pp, rt->blob, sizeof rt->blob);
    if (rt->blen < 0 || plan_profile_decode(rt->blob, (size_t)rt->blen, &rt->me) < 0) {
        rt->blen = 0;
        memset(&rt->me, 0, sizeof rt->me);
    }
    start_session(rt);
}

static void bring_up(ntcp_rt *rt)
{
    ntcp_t *ctx = rt->ctx;
    if (ctx->n_stun_servers == 0) {
        /* No discovery: the profile stays unknown and the planner tries
         * what works without one. */
        pthread_mutex_lock(&rt->mu);
        rt->prof_status = NTCP_ECONFIG;
        pthread_mutex_unlock(&rt->mu);
        start_session(rt);
        return;
    }
    rt->phase = P_DISCOVER;
    /* rt->stun_addr: the server that answered, as discovery reached it,
     * for the port samples (resample()); no lookup of ours on this loop. */
    int rc = ntcp_discover_start_addr(ctx, &rt->loop,
                                      NTCP_DISCOVER_TCP | NTCP_DISCOVER_UDP | NTCP_DISCOVER_IPV4,
                                      DISCOVER_TIMEOUT_MS, on_discovered, rt, &rt->stun_addr);
    if (rc < 0)
        start_session(rt);
}

/* ---- requests on the loop ---- */

static void handle(ntcp_rt *rt, req *r)
{
    if (r->kind == R_UDP_CLOSE) {
        rt_udp_close_fd(rt, r->status);
        req_complete(rt, r, 0, NULL);
        return;
    }
    if (r->kind == R_ACCEPT_CB) {
        /* A connection already queued goes to it at once. */
        pthread_mutex_lock(&rt->mu);
        queued *q = rt->aq_head;
        if (q) {
            rt->aq_head = q->next;
            if (!rt->aq_head)
                rt->aq_tail = NULL;
        }
        pthread_mutex_unlock(&rt->mu);
        if (q) {
            req_complete(rt, r, q->fd, &q->info);
            free(q);
            return;
        }
        r->next = NULL;
        if (rt->acb_tail)
            rt->acb_tail->next = r;
        else
            rt->acb_head = r;
        rt->acb_tail = r;
        return;
    }
    const char *name = r->kind == R_LISTEN ? r->name : rt->ctx->name;
    if (r->kind == R_LISTEN && !r->name[0])
        name = rt->ctx->name;
    if (rt->phase != P_IDLE && name && strcmp(name, rt->name) != 0 && r->kind == R_LISTEN) {
        ntcp_conn_info_t info;
        info_init(&info, "", false);
        snprintf(info.detail, sizeof info.detail,
                 "this context is registered as %s: one name per context", rt->name);
        req_complete(rt, r, NTCP_EINVAL, &info);
        return;
    }
    if (rt->phase == P_REGISTERED) {
        if (r->kind == R_LISTEN) {
            pthread_mutex_lock(&rt->mu);
            rt->listening = true;
            pthread_mutex_unlock(&rt->mu);
            req_complete(rt, r, 0, NULL);
        } else {
            connect_or_hold(rt, r);
        }
        return;
    }
    if (rt->phase == P_IDLE && !name) { /* a connect with no name registered */
        req_complete(rt, r, NTCP_ECONFIG, NULL);
        return;
    }
    r->next = rt->waiting;
    rt->waiting = r;
    if (rt->phase == P_IDLE) {
        snprintf(rt->name, sizeof rt->name, "%s", name);
        bring_up(rt);
    }
}

static void on_wake(uv_async_t *a)
{
    ntcp_rt *rt = a->data;
    pthread_mutex_lock(&rt->mu);
    req *list = rt->rq_head;
    rt->rq_head = rt->rq_tail = NULL;
    bool stop = rt->stopping;
    pthread_mutex_unlock(&rt->mu);
    while (list) {
        req *n = list->next;
        list->next = NULL;
        if (stop)
            req_complete(rt, list, NTCP_ECLOSED, NULL);
        else
            handle(rt, list);
        list = n;
    }
    if (!stop)
        return;

    /* Stop: every request and connection ends, every handle closes. */
    fail_waiting(rt, NTCP_ECLOSED, "the context is being freed");
    while (rt->acb_head) {
        req *r = rt->acb_head;
        rt->acb_head = r->next;
        req_complete(rt, r, NTCP_ECLOSED, NULL);
    }
    rt->acb_tail = NULL;
    for (conn *c = rt->conns, *n; c; c = n) {
        n = c->next;
        if (c->e) {
            c->cancel_err = NTCP_ECLOSED;
            ntcp_engine_cancel(c->e); /* its callback frees c */
        } else if (c->p) {
            c->cancel_err = NTCP_ECLOSED;
            ntcp_udp_punch_cancel(c->p); /* its callback frees c */
        } else if (c->relay) {
            c->cancel_err = NTCP_ECLOSED;
            ntcp_relay_cancel(c->relay); /* its callback frees c */
        } else if (c->urelay_wait && !c->finished) {
            snprintf(c->urelay_why, sizeof c->urelay_why, "the context is being freed");
            udp_relay_failed(c, NTCP_ECLOSED); /* frees c */
        } else if (c->retry_at && !c->finished) {
            snprintf(c->info.detail, sizeof c->info.detail, "the context is being freed");
            conn_finish(c, NTCP_ECLOSED); /* no broker answer pending: frees c */
        }
        /* Otherwise c waits for the broker's answer: closing the session
         * below gives it (NTCP_ECLOSED), and on_connect_answer ends it. */
    }
    ntcp_relay_close_all(&rt->relays); /* allocations of handed-over relayed sockets */
    ntcp_relay_bridge_close_all(&rt->bridges); /* and the UDP paths' bridges */
    /* The handed-over UDP paths' keepalives (the application's descriptors
     * stay open). */
    rt_keepalives_stop_all(rt);
    if (rt->s) {
        ntcp_session_close(rt->s); /* pending connects complete with NTCP_ECLOSED */
        rt->s = NULL;
    }
    rt->phase = P_IDLE;
    if (rt->sampling)
        ntcp_port_sample_cancel(rt->sampling);
    /* Every engine was cancelled above and removed its registrations. */
    ntcp_portmux_free(rt->mux);
    rt->mux = NULL;
    uv_close((uv_handle_t *)&rt->tick, NULL);
    uv_close((uv_handle_t *)&rt->wake, NULL);
}

static void on_tick(uv_timer_t *t)
{
    ntcp_rt *rt = t->data;
    uint64_t now = mono_ms();
    for (req *w = rt->waiting, *n; w; w = n) {
        n = w->next;
        if (now < w->deadline)
            continue;
        unlink_waiting(rt, w);
        ntcp_conn_info_t info;
        info_init(&info, w->kind == R_CONNECT ? w->name : "", w->kind == R_CONNECT);
        snprintf(info.detail, sizeof info.detail, "%s",
                 rt->phase == P_DISCOVER     ? "timed out discovering the NAT"
                 : rt->phase == P_REGISTERED ? "timed out waiting for this context's "
                                               "connection under way to end"
                                             : "timed out registering with the broker");
        req_complete(rt, w, NTCP_ETIMEDOUT, &info);
    }
    for (conn *c = rt->conns, *n; c; c = n) {
        n = c->next;
        if (c->urelay_wait && !c->finished && now >= c->urelay_deadline) {
            snprintf(c->urelay_why, sizeof c->urelay_why, "%s",
                     c->bridge ? "the relay's allocation did not finish in time"
                               : "no relayed address from the peer in time");
            udp_relay_failed(c, NTCP_ETIMEDOUT); /* frees c */
            continue;
        }
        if (c->retry_at && !c->finished && c->r && now >= c->retry_at && now < c->r->deadline) {
            /* UDP: ask the broker again (the peer's mapping was unknown). */
            c->retry_at = 0;
            int rc = ntcp_session_connect_ex(rt->s, c->r->name, BROKER_TRANSPORT_UDP,
                                             (uint32_t)(c->r->deadline - now), on_connect_answer, c);
            if (rc < 0) {
                snprintf(c->info.detail, sizeof c->info.detail, "cannot ask the broker: %s",
                         ntcp_strerror(rc));
                conn_finish(c, rc);
            }
            continue;
        }
        if (!c->r || c->finished || now < c->r->deadline)
            continue;
        if (c->e) {
            c->cancel_err = NTCP_ETIMEDOUT;
            ntcp_engine_cancel(c->e);
        } else if (c->p) {
            c->cancel_err = NTCP_ETIMEDOUT;
            ntcp_udp_punch_cancel(c->p);
        } else if (c->relay) {
            c->cancel_err = NTCP_ETIMEDOUT;
            ntcp_relay_cancel(c->relay); /* on_relay ends c */
        } else if (c->urelay_wait) {
            snprintf(c->urelay_why, sizeof c->urelay_why, "timed out waiting for the relay");
            udp_relay_failed(c, NTCP_ETIMEDOUT); /* frees c */
        } else if (c->retry_at) {
            snprintf(c->info.detail, sizeof c->info.detail,
                     "timed out: the broker never had the peer's UDP mapping");
            conn_finish(c, NTCP_ETIMEDOUT); /* no broker answer pending: frees c */
        } else {
            snprintf(c->info.detail, sizeof c->info.detail, "%s",
                     c->going ? "timed out" : "timed out waiting for the broker's answer");
            c->finished = true;
            req *r = c->r;
            c->r = NULL;
            req_complete(rt, r, NTCP_ETIMEDOUT, &c->info);
            /* the session's answer will still come: on_connect_answer frees c */
        }
    }
    run_held(rt);
}

static void *rt_main(void *arg)
{
    ntcp_rt *rt = arg;
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    /* Closing callbacks of the session and engines. */
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    /* Connections still in the list were waiting for a broker answer that
     * the closed session will never give. */
    while (rt->conns)
        conn_free(rt->conns);
    pthread_mutex_lock(&rt->mu);
    rt->stopped = true;
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
    return NULL;
}

/* A public call's use of the runtime: rt_enter() counts the caller in
 * rt->users (and starts the runtime when create says so and there is none);
 * rt_leave() counts it out. ntcp_stop() waits until no caller is in, so a
 * call never touches a runtime being freed; after it every call returns
 * NTCP_ECLOSED. */
static ntcp_rt *get_rt(ntcp_t *ctx, int *err);

static ntcp_rt *rt_enter(ntcp_t *ctx, bool create, int *err)
{
    pthread_mutex_lock(&ctx->rt_mu);
    if (ctx->stopped) {
        pthread_mutex_unlock(&ctx->rt_mu);
        *err = NTCP_ECLOSED;
        return NULL;
    }
    bool have = ctx->rt != NULL;
    pthread_mutex_unlock(&ctx->rt_mu);
    if (!have && !create) {
        *err = NTCP_ENOTREADY;
        return NULL;
    }
    return get_rt(ctx, err); /* NTCP_ENOTREADY races are harmless: it then starts one */
}

static void rt_leave(ntcp_rt *rt)
{
    pthread_mutex_lock(&rt->mu);
    rt->users--;
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
}

/* The context's runtime, counting the caller in (rt_enter()). */
static ntcp_rt *get_rt(ntcp_t *ctx, int *err)
{
    pthread_mutex_lock(&ctx->rt_mu);
    if (ctx->stopped) {
        pthread_mutex_unlock(&ctx->rt_mu);
        *err = NTCP_ECLOSED;
        return NULL;
    }
    ntcp_rt *rt = ctx->rt;
    if (rt) {
        pthread_mutex_lock(&rt->mu);
        rt->users++;
        pthread_mutex_unlock(&rt->mu);
        pthread_mutex_unlock(&ctx->rt_mu);
        return rt;
    }
    *err = NTCP_ENOMEM;
    rt = calloc(1, sizeof *rt);
    if (!rt)
        goto out;
    rt->ctx = ctx;
    rt->prof_status = NTCP_ENOTREADY;
    const char *dbg = getenv("NTCP_DEBUG");
    rt->debug = dbg && *dbg && strcmp(dbg, "0") != 0;
    pthread_mutex_init(&rt->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&rt->cv, &ca);
    pthread_condattr_destroy(&ca);
    *err = NTCP_ESYS;
    if (uv_loop_init(&rt->loop) < 0)
        goto fail;
    uv_async_init(&rt->loop, &rt->wake, on_wake);
    rt->wake.data = rt;
    uv_timer_init(&rt->loop, &rt->tick);
    rt->tick.data = rt;
    uv_timer_start(&rt->tick, on_tick, TICK_MS, TICK_MS);
    if (ntcp_portmux_new(&rt->loop, &rt->mux) < 0)
        rt->mux = NULL; /* engines then listen alone, one at a time (portmux.h) */
    if (pthread_create(&rt->th, NULL, rt_main, rt) != 0) {
        uv_close((uv_handle_t *)&rt->wake, NULL);
        uv_close((uv_handle_t *)&rt->tick, NULL);
        ntcp_portmux_free(rt->mux);
        uv_run(&rt->loop, UV_RUN_DEFAULT);
        uv_loop_close(&rt->loop);
        goto fail;
    }
    rt->users = 1;
    ctx->rt = rt;
    pthread_mutex_unlock(&ctx->rt_mu);
    return rt;
fail:
    pthread_cond_destroy(&rt->cv);
    pthread_mutex_destroy(&rt->mu);
    free(rt);
    rt = NULL;
out:
    pthread_mutex_unlock(&ctx->rt_mu);
    return NULL;
}

void ntcp_rt_shutdown(ntcp_t *ctx)
{
    pthread_mutex_lock(&ctx->rt_mu);
    ctx->stopped = true;
    ntcp_rt *rt = ctx->rt;
    pthread_mutex_unlock(&ctx->rt_mu);
    if (!rt)
        return;
    pthread_mutex_lock(&rt->mu);
    rt->stopping = true;
    pthread_cond_broadcast(&rt->cv);
    pthread_mutex_unlock(&rt->mu);
    uv_async_send(&rt->wake);
    pthread_join(rt->th, NULL);
    pthread_mutex_lock(&rt->mu);
    while (rt->users > 0) /* callers leave (their requests ended with NTCP_ECLOSED) */
        pthread_cond_wait(&rt->cv, &rt->mu);
    pthread_mutex_unlock(&rt->mu);
    pthread_mutex_lock(&ctx->rt_mu);
    ctx->rt = NULL;
    pthread_mutex_unlock(&ctx->rt_mu);
    for (queued *q = rt->aq_head, *n; q; q = n) {
        n = q->next;
        close(q->fd);
        free(q);
    }
    EVP_PKEY_free(rt->key);
    uv_loop_close(&rt->loop);
    pthread_cond_destroy(&rt->cv);
    pthread_mutex_destroy(&rt->mu);
    free(rt);
}

void ntcp_stop(ntcp_t *ctx)
{
    if (ctx)
        ntcp_rt_shutdown(ctx);
}

/* ---- the public functions ---- */

static int check_ready(ntcp_t *ctx)
{
    if (!ctx->broker)
        return NTCP_ECONFIG;
    if (ctx->name)
        return 0;
    /* No configured name, but ntcp_listen(ctx, name, ...) registered one:
     * connects go out under it (ntcp.h). */
    bool named = false;
    pthread_mutex_lock(&ctx->rt_mu);
    if (ctx->rt) {
        pthread_mutex_lock(&ctx->rt->mu);
        named = ctx->rt->listening;
        pthread_mutex_unlock(&ctx->rt->mu);
    }
    pthread_mutex_unlock(&ctx->rt_mu);
    return named ? 0 : NTCP_ECONFIG;
}

static uint64_t deadline_of(int timeout_ms)
{
    return mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS);
}

/* Queues r for the loop. Returns 0, or NTCP_ECLOSED (r not queued). */
static int submit(ntcp_rt *rt, req *r)
{
    pthread_mutex_lock(&rt->mu);
    if (rt->stopping) {
        pthread_mutex_unlock(&rt->mu);
        return NTCP_ECLOSED;
    }
    r->next = NULL;
    if (rt->rq_tail)
        rt->rq_tail->next = r;
    else
        rt->rq_head = r;
    rt->rq_tail = r;
    pthread_mutex_unlock(&rt->mu);
    uv_async_send(&rt->wake);
    return 0;
}

/* Waits for a blocking request to be done; returns its status. */
static int wait_done(ntcp_rt *rt, req *r)
{
    pthread_mutex_lock(&rt->mu);
    while (!r->done)
        pthread_cond_wait(&rt->cv, &rt->mu);
    pthread_mutex_unlock(&rt->mu);
    return r->status;
}

static int check_name(const char *name)
{
    return name && broker_name_valid(name, strlen(name)) ? 0 : NTCP_EINVAL;
}

int ntcp_listen(ntcp_t *ctx, const char *name, int timeout_ms)
{
    if (!ctx || (name && check_name(name) < 0))
        return NTCP_EINVAL;
    if (!ctx->broker || (!name && !ctx->name))
        return NTCP_ECONFIG;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, true, &err);
    if (!rt)
        return err;
    req r;
    memset(&r, 0, sizeof r);
    r.kind = R_LISTEN;
    snprintf(r.name, sizeof r.name, "%s", name ? name : ctx->name);
    r.t0 = mono_ms();
    r.deadline = deadline_of(timeout_ms);
    r.blocking = true;
    int rc = submit(rt, &r);
    if (rc == 0)
        rc = wait_done(rt, &r);
    rt_leave(rt);
    return rc;
}

int ntcp_listen_async(ntcp_t *ctx, const char *name, ntcp_listen_cb cb, void *user_ptr)
{
    if (!ctx || !cb || (name && check_name(name) < 0))
        return NTCP_EINVAL;
    if (!ctx->broker || (!name && !ctx->name))
        return NTCP_ECONFIG;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, true, &err);
    if (!rt)
        return err;
    req *r = calloc(1, sizeof *r);
    if (!r) {
        rt_leave(rt);
        return NTCP_ENOMEM;
    }
    r->kind = R_LISTEN;
    snprintf(r->name, sizeof r->name, "%s", name ? name : ctx->name);
    r->t0 = mono_ms();
    r->deadline = deadline_of(0);
    r->listen_cb = cb;
    r->user = user_ptr;
    int rc = submit(rt, r);
    if (rc < 0)
        free(r);
    rt_leave(rt);
    return rc;
}

static int connect_common(ntcp_t *ctx, const char *peer, ntcp_transport_t transport,
                          int timeout_ms, req *r)
{
    if (!ctx || check_name(peer) < 0 || (transport != NTCP_TCP && transport != NTCP_UDP))
        return NTCP_EINVAL;
    int rc = check_ready(ctx);
    if (rc < 0)
        return rc;
    r->kind = R_CONNECT;
    snprintf(r->name, sizeof r->name, "%s", peer);
    r->transport = transport;
    r->t0 = mono_ms();
    r->deadline = deadline_of(timeout_ms);
    return 0;
}

static int connect_blocking(ntcp_t *ctx, const char *peer, ntcp_transport_t transport,
                            ntcp_conn_info_t *info, int timeout_ms)
{
    req r;
    memset(&r, 0, sizeof r);
    int rc = connect_common(ctx, peer, transport, timeout_ms, &r);
    if (rc == 0) {
        ntcp_rt *rt = rt_enter(ctx, true, &rc);
        if (rt) {
            r.blocking = true;
            rc = submit(rt, &r);
            if (rc == 0) {
                rc = wait_done(rt, &r);
                rt_leave(rt);
                info_copy_out(info, &r.info);
                return rc;
            }
            rt_leave(rt);
        }
    }
    if (info) {
        ntcp_conn_info_t tmp;
        info_init(&tmp, peer, true);
        tmp.transport = transport;
        snprintf(tmp.detail, sizeof tmp.detail, "%s",
                 rc == NTCP_ECONFIG ? "no broker or no name configured" : ntcp_strerror(rc));
        info_copy_out(info, &tmp);
    }
    return rc;
}

int ntcp_connect(ntcp_t *ctx, const char *peer, ntcp_conn_info_t *info, int timeout_ms)
{
    return connect_blocking(ctx, peer, NTCP_TCP, info, timeout_ms);
}

int ntcp_udp_punch(ntcp_t *ctx, const char *peer, ntcp_conn_info_t *info, int timeout_ms)
{
    return connect_blocking(ctx, peer, NTCP_UDP, info, timeout_ms);
}

static int connect_async(ntcp_t *ctx, const char *peer, ntcp_transport_t transport,
                         int timeout_ms, ntcp_conn_cb cb, void *user_ptr)
{
    if (!cb)
        return NTCP_EINVAL;
    req *r = calloc(1, sizeof *r);
    if (!r)
        return NTCP_ENOMEM;
    int rc = connect_common(ctx, peer, transport, timeout_ms, r);
    ntcp_rt *rt = rc == 0 ? rt_enter(ctx, true, &rc) : NULL;
    if (rt) {
        r->conn_cb = cb;
        r->user = user_ptr;
        rc = submit(rt, r);
        rt_leave(rt);
    }
    if (rc < 0)
        free(r);
    return rc;
}

int ntcp_connect_async(ntcp_t *ctx, const char *peer, int timeout_ms, ntcp_conn_cb cb,
                       void *user_ptr)
{
    return connect_async(ctx, peer, NTCP_TCP, timeout_ms, cb, user_ptr);
}

int ntcp_udp_punch_async(ntcp_t *ctx, const char *peer, int timeout_ms, ntcp_conn_cb cb,
                         void *user_ptr)
{
    return connect_async(ctx, peer, NTCP_UDP, timeout_ms, cb, user_ptr);
}

int ntcp_udp_close(ntcp_t *ctx, int fd)
{
    if (!ctx || fd < 0)
        return NTCP_EINVAL;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, false, &err);
    if (!rt) /* no runtime, or stopped: no keepalive runs */
        return close(fd) == 0 ? 0 : NTCP_ESYS;
    req r;
    memset(&r, 0, sizeof r);
    r.kind = R_UDP_CLOSE;
    r.status = fd;
    r.blocking = true;
    int rc = submit(rt, &r);
    if (rc == 0)
        wait_done(rt, &r);
    rt_leave(rt);
    if (rc < 0) /* stopping: the keepalives are gone with the runtime */
        return close(fd) == 0 ? 0 : NTCP_ESYS;
    return 0;
}

int ntcp_udp_is_control(const void *buf, size_t len)
{
    if (len == 0)
        return 1; /* a keepalive */
    udp_dgram d;
    return buf && udp_dgram_parse(buf, len, &d) == 0;
}

int ntcp_accept(ntcp_t *ctx, ntcp_conn_info_t *info, int timeout_ms)
{
    if (!ctx)
        return NTCP_EINVAL;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, false, &err);
    if (!rt)
        return err;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms > 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&rt->mu);
    if (!rt->listening) {
        pthread_mutex_unlock(&rt->mu);
        rt_leave(rt);
        return NTCP_ENOTREADY;
    }
    int rc = NTCP_ETIMEDOUT;
    for (;;) {
        if (rt->stopping) {
            rc = NTCP_ECLOSED;
            break;
        }
        queued *q = rt->aq_head;
        if (q) {
            rt->aq_head = q->next;
            if (!rt->aq_head)
                rt->aq_tail = NULL;
            rc = q->fd;
            info_copy_out(info, &q->info);
            free(q);
            break;
        }
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0)
            pthread_cond_wait(&rt->cv, &rt->mu);
        else if (pthread_cond_timedwait(&rt->cv, &rt->mu, &until) == ETIMEDOUT)
            timeout_ms = 0; /* one last look */
    }
    pthread_mutex_unlock(&rt->mu);
    rt_leave(rt);
    return rc;
}

int ntcp_accept_async(ntcp_t *ctx, ntcp_conn_cb cb, void *user_ptr)
{
    if (!ctx || !cb)
        return NTCP_EINVAL;
    int err = 0;
    ntcp_rt *rt = rt_enter(ctx, false, &err);
    if (!rt)
        return err;
    req *r = calloc(1, sizeof *r);
    int rc = NTCP_ENOMEM;
    if (r) {
        r->kind = R_ACCEPT_CB;
        r->conn_cb = cb;
        r->user = user_ptr;
        rc = submit(rt, r);
        if (rc < 0)
            free(r);
    }
    rt_leave(rt);
    return rc;
}

int ntcp_set_policy(ntcp_t *ctx, ntcp_policy_fn fn, void *user_ptr)
{
    if (!ctx)
        return NTCP_EINVAL;
    ctx->policy = fn;
    ctx->policy_user = user_ptr;
    return 0;
}

int ntcp_get_profile(ntcp_t *ctx, ntcp_nat_profile_t *profile)
{
    if (!ctx || !profile)
        return NTCP_EINVAL;
    memset(profile, 0, sizeof *profile);
    profile->size = sizeof *profile;
    pthread_mutex_lock(&ctx->rt_mu);
    ntcp_rt *rt = ctx->rt;
    int st = NTCP_ENOTREADY;
    if (rt) {
        pthread_mutex_lock(&rt->mu);
        *profile = rt->prof;
        st = rt->prof_status;
        pthread_mutex_unlock(&rt->mu);
    }
    pthread_mutex_unlock(&ctx->rt_mu);
    return st;
}
