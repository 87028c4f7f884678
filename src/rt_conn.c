/*
 * rt_conn.c: the runtime's connections (rt.h), at either end: the plan from
 * both profiles at the CONNECT-GO, then the engine (TCP) or the punch
 * (UDP), the relay of last resort beside them, and the connects that wait
 * for one under way. Loop thread only.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "addr.h"
#include "broker_proto.h"
#include "engine.h"
#include "ntcp.h"
#include "plan.h"
#include "plan_go.h"
#include "raw.h"
#include "relay.h"
#include "rt.h"
#include "session.h"
#include "udp_plan.h"
#include "udp_punch.h"
#include "verify.h"

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


void rt_conn_free(conn *c)
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

void rt_conn_finish(conn *c, int status)
{
    if (c->finished)
        return;
    c->finished = true;
    ntcp_rt *rt = c->rt;
    if (c->going)
        rt_resample(rt); /* its attempts made mappings: the ports moved */
    if (status < 0 && !c->info.detail[0])
        snprintf(c->info.detail, sizeof c->info.detail, "%s", ntcp_strerror(status));
    if (c->r) {
        req *r = c->r;
        c->r = NULL;
        rt_req_complete(rt, r, status, &c->info);
    } else if (status >= 0) {
        rt_deliver_incoming(rt, status, &c->info);
    }
    if (!c->e && !c->p && !c->relay)
        rt_conn_free(c); /* else freed by the engine's (punch's, relay's) callback */
    rt_run_held(rt);
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
        rt_conn_free(c);
        return;
    }
    rt_conn_finish(c, status); /* frees c: nothing of it runs any more */
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
    uint64_t deadline = c->r ? c->r->deadline : rt_mono_ms() + 5000 + 8u * c->info.rtt_ms;
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
            rt_conn_free(c);
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

void rt_conn_on_relay_addr(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
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

void rt_conn_on_raw_isn(ntcp_session *s, const uint8_t nonce[BROKER_NONCE_SIZE],
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
        snprintf(i->detail, sizeof i->detail, "%s", c->yielded ? c->yield_why : r->reason);
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
        rt_keepalive_start(rt, r->fd, c->info.peer);
    }
    if (c->bridge) {
        ntcp_relay_bridge_close(c->bridge); /* a direct path won, or nothing did */
        c->bridge = NULL;
    }
    int st = r->err == 0 ? r->fd : r->err;
    if (c->yielded && st == NTCP_ECLOSED) {
        /* Cancelled for another connection with the same peer, no relay. */
        snprintf(i->detail, sizeof i->detail, "%s; no relay offered", c->yield_why);
        st = NTCP_EUNREACHABLE;
    }
    conn_ended(c, st, rt_udp_close_fd);
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
            c->urelay_deadline = rt_mono_ms() + 8000 + 8u * c->info.rtt_ms;
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
        c->urelay_deadline = rt_mono_ms() + 8000 + 8u * c->info.rtt_ms;
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
void rt_conn_udp_relay_failed(conn *c, int err)
{
    ntcp_conn_info_t *i = &c->info;
    join3(i->detail, sizeof i->detail, i->detail[0] ? i->detail : "no direct path", "; relay: ",
          c->urelay_why[0] ? c->urelay_why : "no relay");
    c->urelay_wait = false;
    rt_conn_finish(c, err);
}

/* What the relay step waited for has come (an address, the bridge). */
static void udp_relay_resume(conn *c)
{
    if (!c->urelay_wait || c->finished)
        return;
    c->urelay_wait = false;
    udp_relay_go(c);
    if (!c->p && !c->urelay_wait)
        rt_conn_udp_relay_failed(c, NTCP_EUNREACHABLE);
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

/* One direct UDP path per pair of peers (docs/udp.md, "One socket, many
 * punches"): every punch of a context goes from the session's UDP socket,
 * and so does every other end's, so two connections between the same two
 * contexts would be one 4-tuple, whose datagrams the kernel gives to the
 * path's connected socket once one exists. Both ends decide alike: an open
 * path takes precedence; between two punches at once, the one whose
 * requester's name sorts first keeps the direct path. */
static bool udp_first(const conn *c)
{
    const char *me = c->rt->name, *peer = c->info.peer;
    return c->r ? strcmp(me, peer) < 0 : strcmp(peer, me) < 0;
}

/* Why c must leave the direct path to another (NULL: it need not). A
 * punch of this context that must leave it to c is cancelled here (its
 * relay, or its end, follows in on_punch). */
static const char *udp_pair_busy(conn *c)
{
    ntcp_rt *rt = c->rt;
    static char why[200];
    struct sockaddr_storage sl;
    uint16_t port = ntcp_session_local_udp(rt->s, &sl) == 0 ? ntcp_sa_port(&sl) : 0;
    if (rt_udp_path_open(rt, port, c->info.peer)) {
        snprintf(why, sizeof why,
                 "a UDP path with %s is open on this context's port: one direct UDP path per "
                 "pair of peers (close it first)", c->info.peer);
        return why;
    }
    conn *other = NULL;
    for (conn *o = rt->conns; o; o = o->next)
        if (o != c && !o->finished && o->p && !o->urelay && o->info.transport == NTCP_UDP &&
            strcmp(o->info.peer, c->info.peer) == 0)
            other = o;
    if (!other)
        return NULL;
    if (!udp_first(c)) {
        snprintf(why, sizeof why,
                 "a UDP connection with %s asked for at the same moment has the direct path "
                 "(one per pair of peers)", c->info.peer);
        return why;
    }
    snprintf(other->yield_why, sizeof other->yield_why,
             "a UDP connection with %s asked for at the same moment took the direct path "
             "(one per pair of peers)", other->info.peer);
    other->yielded = true;
    other->urelay_now = other->urelay_on; /* on_punch: to the relay, if there is one */
    ntcp_udp_punch_cancel(other->p);
    return NULL;
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
            c->retry_at = rt_mono_ms() + 300;
            return;
        }
        snprintf(i->detail, sizeof i->detail, "the broker has no UDP mapping of %s", i->peer);
        rt_conn_finish(c, NTCP_EUNREACHABLE);
        return;
    }
    ntcp_udp_punch_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.plan = &c->upl;
    /* The session's UDP socket, shared: every punch of this context sends
     * from it, and its datagrams come through the hub. */
    cfg.hub = &rt->hub;
    if (ntcp_session_share_udp(rt->s, &cfg.fd, NULL, NULL) < 0) {
        snprintf(i->detail, sizeof i->detail, "no UDP socket at the broker session");
        rt_conn_finish(c, NTCP_ESYS);
        return;
    }
    cfg.start_at = uv_now(&rt->loop) + g->start_delay_ms;
    if (ntcp_verify_params_from_go(&cfg.verify, g) < 0) {
        close(cfg.fd);
        snprintf(i->detail, sizeof i->detail, "the broker's CONNECT-GO has no key for %s", i->peer);
        rt_conn_finish(c, NTCP_EPROTO);
        return;
    }
    cfg.verify.key = rt->key;
    cfg.verify.name = rt->name;
    udp_relay_start(c, g, &cfg.verify);
    const char *busy = udp_pair_busy(c);
    if (busy && !c->urelay_on) {
        close(cfg.fd);
        snprintf(i->detail, sizeof i->detail, "%s; no relay offered", busy);
        rt_conn_finish(c, NTCP_EUNREACHABLE);
        return;
    }
    if (c->urelay_on && (busy || (rt->ctx->relay == NTCP_RELAY_ALWAYS && c->r))) {
        close(cfg.fd); /* the session's socket is not needed: the relay only */
        snprintf(i->detail, sizeof i->detail, "direct paths skipped (%s)",
                 busy ? busy : "relay = always");
        udp_relay_go(c);
        if (!c->p && !c->urelay_wait)
            rt_conn_udp_relay_failed(c, NTCP_EUNREACHABLE);
        return;
    }
    rc = ntcp_udp_punch_start(&rt->loop, &cfg, on_punch, c, &c->p);
    if (rc < 0) {
        c->p = NULL;
        close(cfg.fd);
        snprintf(i->detail, sizeof i->detail, "cannot start the punch: %s", ntcp_strerror(rc));
        rt_conn_finish(c, rc);
    }
}

/* Both ends of a TCP or UDP connect: the plan from both profiles, then the
 * engine (TCP) or the punch (UDP). */
void rt_conn_go(conn *c, const broker_go *g)
{
    ntcp_rt *rt = c->rt;
    if (c->going || c->finished)
        return;
    c->going = true;
    uint64_t now = rt_mono_ms();
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
    plan_keep_methods(&c->pl, rt->ctx->methods_mask); /* the configuration's `methods` */

    ntcp_engine_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.plan = &c->pl;
    cfg.session_port = sport;
    cfg.start_at = uv_now(&rt->loop) + g->start_delay_ms;
    if (ntcp_verify_params_from_go(&cfg.verify, g) < 0) {
        /* The detail first: rt_conn_finish() hands it over and frees c. */
        snprintf(i->detail, sizeof i->detail, "the broker's CONNECT-GO has no key for %s", i->peer);
        rt_conn_finish(c, NTCP_EPROTO);
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
        rt_conn_finish(c, rc);
    }
}

void rt_conn_on_connect_answer(ntcp_session *s, int err, int code, const broker_go *g, void *arg)
{
    (void)s;
    conn *c = arg;
    if (c->finished) {
        if (!c->e && !c->p)
            rt_conn_free(c);
        return;
    }
    if (err == 0) {
        rt_conn_go(c, g);
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
    rt_conn_finish(c, st);
}

static void connect_now(ntcp_rt *rt, req *r)
{
    conn *c = calloc(1, sizeof *c);
    if (!c) {
        rt_req_complete(rt, r, NTCP_ENOMEM, NULL);
        return;
    }
    c->rt = rt;
    c->r = r;
    c->t0 = r->t0;
    rt_info_init(&c->info, r->name, true);
    c->info.transport = r->transport;
    c->next = rt->conns;
    rt->conns = c;
    uint64_t now = rt_mono_ms();
    uint32_t left = r->deadline > now ? (uint32_t)(r->deadline - now) : 1;
    int rc = ntcp_session_connect_ex(rt->s, r->name,
                                     r->transport == NTCP_UDP ? BROKER_TRANSPORT_UDP
                                                              : BROKER_TRANSPORT_TCP,
                                     left, rt_conn_on_connect_answer, c);
    if (rc < 0) {
        snprintf(c->info.detail, sizeof c->info.detail, "cannot ask the broker: %s",
                 ntcp_strerror(rc));
        rt_conn_finish(c, rc);
    }
}

/* Connections of a context run at once: the session port's listener is
 * shared through the mux (portmux.h), which gives each engine the
 * connections whose HELLO names its session, and the session's UDP socket
 * through the hub (udp_punch.h), which gives each punch its datagrams. A
 * second connect to a peer already being connected over the same
 * transport waits in rt->waiting (with its deadline) for the one under way
 * to end: two TCP connects would connect from the session port to the same
 * peer address and port, one 4-tuple that two sockets cannot hold
 * (EADDRNOTAVAIL); two UDP punches would be one path between the same two
 * sockets (one per pair of peers: udp_pair_busy()). Offers from peers
 * cannot wait (their start time is shared) and are never held. */
static bool conn_blocks(const conn *c, const req *r)
{
    if (c->finished)
        return false;
    if (!c->rt->mux)
        return true; /* no shared listener (portmux.h): one at a time */
    /* One connect at a time to a peer per transport: either way, two would
     * share a 4-tuple. */
    return (c->info.transport == NTCP_UDP) == (r->transport == NTCP_UDP) &&
           strcmp(c->info.peer, r->name) == 0;
}

static bool conns_busy(const ntcp_rt *rt, const req *r)
{
    for (const conn *c = rt->conns; c; c = c->next)
        if (conn_blocks(c, r))
            return true;
    return false;
}

void rt_connect_or_hold(ntcp_rt *rt, req *r)
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
void rt_run_held(ntcp_rt *rt)
{
    if (rt->phase != P_REGISTERED)
        return;
    /* connect_now() may end a connection at once (the session cannot send),
     * which calls this again and may complete and free any held request:
     * no walk survives that, so the inner call only asks for another pass. */
    if (rt->in_run_held) {
        rt->run_again = true;
        return;
    }
    rt->in_run_held = true;
    do {
        rt->run_again = false;
        for (req *w = rt->waiting; w; w = w->next) {
            if (w->kind != R_CONNECT || conns_busy(rt, w))
                continue;
            rt_unlink_waiting(rt, w);
            w->next = NULL;
            connect_now(rt, w);
            rt->run_again = true; /* the list may have changed: from its head again */
            break;
        }
    } while (rt->run_again);
    rt->in_run_held = false;
}
