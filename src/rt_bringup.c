/*
 * rt_bringup.c: the runtime's bring-up (rt.h): discovery, the profile blob
 * (and its newest port behind a sequential NAT), the private addresses,
 * then the broker session and its callbacks: the registration, offers and
 * CONNECT-GOs from peers. Loop thread only.
 */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "addr.h"
#include "broker_proto.h"
#include "context.h"
#include "discover.h"
#include "identity.h"
#include "ntcp.h"
#include "plan.h"
#include "raw.h"
#include "rt.h"
#include "session.h"

#define DISCOVER_TIMEOUT_MS 15000

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
        rt_resample(rt);
    }
}

void rt_resample(ntcp_rt *rt)
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

/* ---- the session ---- */

/* What the broker may connect without an offer (ACCEPT-ALL): everything
 * when this context listens and has no policy to ask (a round trip less
 * for every peer that connects here); nothing otherwise, so that a policy
 * sees every offer. */
static uint32_t accept_all_of(const ntcp_rt *rt, bool listening)
{
    return listening && !rt->ctx->policy ? BROKER_ACCEPT_TCP | BROKER_ACCEPT_UDP : 0;
}

/* Tells the broker what may connect without an offer, when that changed:
 * once listening, and again within a tick of ntcp_set_policy() (the tick
 * calls this). */
void rt_accept_all_sync(ntcp_rt *rt)
{
    if (!rt->s || rt->phase != P_REGISTERED)
        return;
    pthread_mutex_lock(&rt->mu);
    bool listening = rt->listening && !rt->stopping;
    pthread_mutex_unlock(&rt->mu);
    uint32_t want = accept_all_of(rt, listening);
    if (want != rt->accept_sent && ntcp_session_set_accept_all(rt->s, want) == 0)
        rt->accept_sent = want;
}

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
    /* A GO without an offer (ACCEPT-ALL) must still find this context
     * listening, and a policy set since the flag left (rt_accept_all_sync()
     * takes it back within a tick) still decides. Ignored, the requester's
     * attempts find nobody and it times out. */
    pthread_mutex_lock(&rt->mu);
    bool ok = rt->listening && !rt->stopping;
    pthread_mutex_unlock(&rt->mu);
    if (ok && rt->accept_sent && rt->ctx->policy)
        ok = rt->ctx->policy(rt->ctx, g->peer.name,
                             g->transport == BROKER_TRANSPORT_UDP ? NTCP_UDP : NTCP_TCP,
                             rt->ctx->policy_user) != 0;
    if (!ok)
        return;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->rt = rt;
    c->t0 = rt_mono_ms();
    rt_info_init(&c->info, g->peer.name, false);
    c->next = rt->conns;
    rt->conns = c;
    rt_conn_go(c, g);
}

/* A listen or connect once registered: the listen completes (the context
 * listens from now on), the connect starts or waits for its turn. */
void rt_req_registered(ntcp_rt *rt, req *r)
{
    if (r->kind == R_LISTEN) {
        pthread_mutex_lock(&rt->mu);
        rt->listening = true;
        pthread_mutex_unlock(&rt->mu);
        rt_accept_all_sync(rt);
        rt_req_complete(rt, r, 0, NULL);
    } else {
        rt_connect_or_hold(rt, r);
    }
}

static void registered(ntcp_rt *rt)
{
    rt->phase = P_REGISTERED;
    rt->reg_err = 0;
    rt->silent_rounds = 0;
    req *w = rt->waiting;
    rt->waiting = NULL;
    while (w) {
        req *n = w->next;
        w->next = NULL;
        rt_req_registered(rt, w);
        w = n;
    }
}

/* Every request waiting for the registration ends with err and why. */
void rt_fail_waiting(ntcp_rt *rt, int err, const char *why)
{
    req *w = rt->waiting;
    rt->waiting = NULL;
    while (w) {
        req *n = w->next;
        ntcp_conn_info_t info;
        rt_info_init(&info, w->kind == R_CONNECT ? w->name : "", w->kind == R_CONNECT);
        snprintf(info.detail, sizeof info.detail, "%s", why);
        rt_req_complete(rt, w, err, &info);
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
        rt_fail_waiting(rt, NTCP_EREFUSED, why);
    }
    if (err == NTCP_ECERT || err == NTCP_ETLS) {
        /* TLS with the broker failed: its certificate was refused, or the
         * port does not speak what we do. Waiting callers learn it now,
         * with the reason; the session keeps trying (slowly, for a
         * certificate). */
        char why[256];
        snprintf(why, sizeof why, "TLS with the broker failed: %s", ntcp_session_tls_error(s));
        rt_fail_waiting(rt, err, why);
    }
    if (err && ntcp_session_round_failed(s)) {
        /* No broker of the list could be reached (refused, unreachable,
         * silent, not resolved): waiting callers learn it now, with the
         * causes, not at their timeout. The session keeps trying. A round
         * lost to silence alone (no answer in time: on a lossy path, a SYN
         * and its retransmission, or an answer, lost) gets a second round
         * first; a refusal or an unreachable network is said at once. */
        if (err == NTCP_ETIMEDOUT && ++rt->silent_rounds < 2)
            return;
        char why[600];
        snprintf(why, sizeof why, "the broker is unreachable: %s", ntcp_session_last_error(s));
        rt_fail_waiting(rt, NTCP_EUNREACHABLE, why);
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


static void on_session_udp(void *user, const struct sockaddr_storage *from, const uint8_t *buf,
                           size_t len)
{
    ntcp_rt *rt = user;
    ntcp_udp_hub_input(&rt->hub, from, buf, len);
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
            rt_fail_waiting(rt, rc == NTCP_ENOMEM ? rc : NTCP_ECONFIG, why);
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
    sc.on_raw_isn = rt_conn_on_raw_isn;
    sc.on_relay_addr = rt_conn_on_relay_addr;
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
        rt_fail_waiting(rt, rc, "cannot start the broker session");
        return;
    }
    /* Peers' datagrams on the session's UDP socket: to their punches. */
    ntcp_session_set_udp_sink(rt->s, on_session_udp, rt);
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

void rt_bring_up(ntcp_rt *rt)
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
     * for the port samples (rt_resample()); no lookup of ours on this loop. */
    int rc = ntcp_discover_start_addr(ctx, &rt->loop,
                                      NTCP_DISCOVER_TCP | NTCP_DISCOVER_UDP | NTCP_DISCOVER_IPV4,
                                      DISCOVER_TIMEOUT_MS, on_discovered, rt, &rt->stun_addr);
    if (rc < 0)
        start_session(rt);
}
