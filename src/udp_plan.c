/*
 * udp_plan.c: the UDP hole-punching planner (docs/udp.md): from the two
 * ends' UDP behaviours and PUBLIC-UDP mappings, where this end's probes go,
 * from how many sockets, and for how long. Pure: no I/O, no clock.
 */
#include "udp_plan.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "addr.h"
#include "natside.h"

const char *udp_method_name(udp_method_t m)
{
    switch (m) {
    case UDP_METHOD_SAME_LAN: return "same-lan";
    case UDP_METHOD_DIRECT: return "direct";
    case UDP_METHOD_PUNCH: return "punch";
    case UDP_METHOD_PREDICT: return "predict";
    case UDP_METHOD_BIRTHDAY: return "birthday";
    case UDP_METHOD_NONE: break;
    }
    return "none";
}

void udp_plan_input_init(udp_plan_input *in)
{
    memset(in, 0, sizeof *in);
}


typedef struct side {
    const udp_plan_end *e;
    const char *who;
    nat_map_class map;
    nat_filt_class filt;
    bool blocked;
    int delta;
} side;

/* The same reading of a behaviour as plan.c's for TCP (natside.c), on
 * the UDP one. */
static void classify(side *s, const udp_plan_end *e, const char *who)
{
    memset(s, 0, sizeof *s);
    s->e = e;
    s->who = who;
    nat_side ns;
    nat_side_classify(&e->udp, false, &ns);
    s->blocked = ns.blocked;
    s->map = ns.map;
    s->filt = ns.filt;
    s->delta = ns.delta;
}

static int impossible(udp_plan *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int impossible(udp_plan *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof out->reason, fmt, ap);
    va_end(ap);
    out->status = NTCP_EUNREACHABLE;
    out->method = UDP_METHOD_NONE;
    out->ntargets = 0;
    out->nsockets = 0;
    out->random_probes = 0;
    return NTCP_EUNREACHABLE;
}

static void add(udp_plan *p, const struct sockaddr_storage *a, uint16_t port, uint16_t count,
                int32_t step, uint8_t kind)
{
    if (p->ntargets >= UDP_PLAN_MAX_TARGETS || count == 0)
        return;
    plan_ports *t = &p->t[p->ntargets];
    memset(t, 0, sizeof *t);
    t->addr = *a;
    ntcp_sa_set_port(&t->addr, port);
    t->count = count;
    t->step = step;
    p->kind[p->ntargets++] = kind;
}

/* The k-th new mapping after PUBLIC-UDP (k >= 1); 16-bit wrap like the NAT's
 * counter would, its real range being unknown. */
static uint16_t predicted(const side *s, unsigned k)
{
    return (uint16_t)(ntcp_sa_port(&s->e->public_udp) + (int32_t)k * s->delta);
}

static uint32_t clampu(uint32_t v, uint32_t lo, uint32_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* The peer's public paths: where this end (me) aims. */
static int public_targets(const udp_plan_input *in, const side *me, const side *peer, unsigned w,
                          udp_plan *out)
{
    const struct sockaddr_storage *pu = &peer->e->public_udp;
    if (me->map == NAT_MAP_RANDOM && peer->map == NAT_MAP_RANDOM)
        return impossible(out, "both ends are behind NATs with unpredictable (random) UDP port "
                               "mappings: neither can aim at a port the other NAT will let in; a "
                               "relay is needed");
    if (me->map == NAT_MAP_RANDOM || peer->map == NAT_MAP_RANDOM) {
        const side *r = me->map == NAT_MAP_RANDOM ? me : peer;
        const side *o = me->map == NAT_MAP_RANDOM ? peer : me;
        if (o->map == NAT_MAP_PREDICT)
            return impossible(out, "random UDP ports at the %s, sequential at the %s: each probe "
                                   "to a guessed port is a new sequential mapping the random end "
                                   "cannot aim at; a relay is needed",
                              r->who, o->who);
        if (o->filt != NAT_FILT_PORT) {
            /* The random end aims at the known mapping; the known end opens
             * its filter for the random end's whole address (or needs not). */
            out->method = o->filt == NAT_FILT_OPEN ? UDP_METHOD_DIRECT : UDP_METHOD_PUNCH;
            add(out, pu, ntcp_sa_port(pu), 1, 0, UDP_T_PUBLIC);
            return 0;
        }
        /* Birthday: the random end makes many mappings towards the known
         * mapping; the known end probes random ports of the random end's
         * address; a probe to one of those mappings gets in. */
        out->method = UDP_METHOD_BIRTHDAY;
        unsigned ns = in->birthday_sockets ? in->birthday_sockets : UDP_PLAN_BIRTHDAY_SOCKETS;
        unsigned np = in->birthday_probes ? in->birthday_probes : UDP_PLAN_BIRTHDAY_PROBES;
        unsigned pps = in->birthday_pps ? in->birthday_pps : UDP_PLAN_BIRTHDAY_PPS;
        if (ns > UDP_PLAN_MAX_BIRTHDAY_SOCKETS || np > UDP_PLAN_MAX_BIRTHDAY_PROBES ||
            pps > UDP_PLAN_MAX_BIRTHDAY_PPS)
            return NTCP_EINVAL;
        if (r == me) {
            out->nsockets = ns;
            add(out, pu, ntcp_sa_port(pu), 1, 0, UDP_T_PUBLIC);
        } else {
            out->random_probes = np;
            out->random_pps = pps;
            out->random_ip = *pu;
            /* Also the one port the broker saw: costs one probe. */
            add(out, pu, ntcp_sa_port(pu), 1, 0, UDP_T_PUBLIC);
        }
        /* Time to send them all, and a verification after the last. */
        out->deadline_ms = (uint32_t)((uint64_t)np * 1000 / pps) + 3000;
        return 0;
    }
    /* Known or predictable on both sides. */
    bool predict = me->map == NAT_MAP_PREDICT || peer->map == NAT_MAP_PREDICT;
    if (me->map == NAT_MAP_PREDICT && peer->map == NAT_MAP_PREDICT) {
        /* Each probe of one socket to a new destination is a new mapping, so
         * the two windows are walked at different speeds: the initiator's
         * j-th probe goes to the target's predicted port j, the target's
         * k-th to the initiator's port 2k. With drifts dI and dT (mappings
         * made meanwhile), they meet at k = dI + dT, j = dI + 2 dT. */
        uint16_t n = (uint16_t)w;
        if (in->initiator) {
            add(out, pu, predicted(peer, 1), n, peer->delta, UDP_T_PREDICTED);
        } else {
            add(out, pu, predicted(peer, 1), n, 2 * peer->delta, UDP_T_PREDICTED);
        }
        out->method = UDP_METHOD_PREDICT;
        return 0;
    }
    if (peer->map == NAT_MAP_PREDICT) {
        /* A sequential peer sends one probe (one new mapping) to us: unless
         * our filter lets it in anyway, aim at its next ports. */
        if (me->filt == NAT_FILT_PORT)
            add(out, pu, predicted(peer, 1), (uint16_t)w, peer->delta, UDP_T_PREDICTED);
        else
            add(out, pu, ntcp_sa_port(pu), 1, 0, UDP_T_PUBLIC); /* opens an address filter */
    } else {
        add(out, pu, ntcp_sa_port(pu), 1, 0, UDP_T_PUBLIC);
    }
    if (predict && (me->map == NAT_MAP_PREDICT ? peer : me)->filt == NAT_FILT_PORT)
        out->method = UDP_METHOD_PREDICT;
    else if (me->filt == NAT_FILT_OPEN || peer->filt == NAT_FILT_OPEN)
        out->method = UDP_METHOD_DIRECT;
    else
        out->method = UDP_METHOD_PUNCH;
    return 0;
}

int udp_plan_make(const udp_plan_input *in, udp_plan *out)
{
    if (!in || !out)
        return NTCP_EINVAL;
    memset(out, 0, sizeof *out);
    /* Only the peer's mapping is needed: ours is what the peer aims at, and
     * the broker may have it when its answer to our keepalive was lost. */
    if (!in->peer.public_udp.ss_family) {
        snprintf(out->reason, sizeof out->reason,
                 "the peer's UDP mapping is unknown: its UDP keepalive never reached the broker");
        out->status = NTCP_EINVAL;
        return NTCP_EINVAL;
    }
    unsigned w = in->window ? in->window : UDP_PLAN_DEFAULT_WINDOW;
    if (w > UDP_PLAN_MAX_WINDOW)
        w = UDP_PLAN_MAX_WINDOW;
    side me, peer;
    const char *mine = in->initiator ? "requester" : "target";
    const char *theirs = in->initiator ? "target" : "requester";
    classify(&me, &in->me, mine);
    classify(&peer, &in->peer, theirs);
    uint32_t r = in->me.rtt_ms > in->peer.rtt_ms ? in->me.rtt_ms : in->peer.rtt_ms;
    if (r == 0)
        r = 100;
    out->rtt_ms = r;
    out->nsockets = 1;
    out->interval_ms = clampu(r, 50, 500);
    out->deadline_ms = clampu(8 * r + 2000, 3000, 15000);
    if (me.blocked || peer.blocked)
        return impossible(out, "UDP is blocked at the %s (discovery got no UDP answer at all)",
                          me.blocked ? me.who : peer.who);

    /* One public address: one NAT in front of both (or one host). The
     * private addresses meet on one LAN; they go first. */
    bool same = in->me.public_udp.ss_family &&
                ntcp_sockaddr_same_ip((const struct sockaddr *)&in->me.public_udp,
                                      (const struct sockaddr *)&in->peer.public_udp);
    if (same) {
        uint16_t pub = ntcp_sa_port(&in->peer.public_udp);
        for (size_t i = 0; i < in->peer.npriv && i < 3; i++) {
            const struct sockaddr_storage *a = &in->peer.priv[i];
            if (!a->ss_family || a->ss_family != in->peer.public_udp.ss_family)
                continue;
            add(out, a, pub, 1, 0, UDP_T_PRIVATE);
            if (ntcp_sa_port(a) && ntcp_sa_port(a) != pub)
                add(out, a, ntcp_sa_port(a), 1, 0, UDP_T_PRIVATE);
        }
    }
    int rc = public_targets(in, &me, &peer, w, out);
    if (rc == NTCP_EINVAL)
        return rc;
    if (rc == NTCP_EUNREACHABLE && same && in->peer.npriv) {
        /* Only the LAN can work: keep the private targets. */
        char why[192];
        snprintf(why, sizeof why, "%s", out->reason);
        memset(out, 0, sizeof *out);
        out->rtt_ms = r;
        out->nsockets = 1;
        out->interval_ms = clampu(r, 50, 500);
        out->deadline_ms = clampu(8 * r + 2000, 3000, 15000);
        uint16_t pub = ntcp_sa_port(&in->peer.public_udp);
        for (size_t i = 0; i < in->peer.npriv && i < 3; i++) {
            const struct sockaddr_storage *a = &in->peer.priv[i];
            if (!a->ss_family || a->ss_family != in->peer.public_udp.ss_family)
                continue;
            add(out, a, pub, 1, 0, UDP_T_PRIVATE);
            if (ntcp_sa_port(a) && ntcp_sa_port(a) != pub)
                add(out, a, ntcp_sa_port(a), 1, 0, UDP_T_PRIVATE);
        }
        out->method = UDP_METHOD_SAME_LAN;
        snprintf(out->reason, sizeof out->reason, "same NAT: private addresses only (%.150s)", why);
        return 0;
    }
    if (rc < 0)
        return rc;
    char a[64];
    snprintf(out->reason, sizeof out->reason, "%s%s: %zu target run%s from %u socket%s, first %s%s",
             same ? "same-lan, then " : "", udp_method_name(out->method), out->ntargets,
             out->ntargets == 1 ? "" : "s", out->nsockets, out->nsockets == 1 ? "" : "s",
             out->ntargets ? ntcp_addr_str((const struct sockaddr *)&out->t[0].addr, a, sizeof a)
                           : "-",
             out->random_probes ? ", and random ports" : "");
    return 0;
}

typedef struct obuf {
    char *buf;
    size_t len, need;
} obuf;

static void put(obuf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(obuf *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->need < o->len ? o->len - o->need : 0;
    int n = vsnprintf(room ? o->buf + o->need : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->need += (size_t)n;
}

static const char *kind_name(uint8_t k)
{
    return k == UDP_T_PRIVATE ? "private" : k == UDP_T_PREDICTED ? "predicted" : "public";
}

size_t udp_plan_format(const udp_plan *p, char *buf, size_t len)
{
    obuf o = {buf, len, 0};
    if (len)
        buf[0] = '\0';
    put(&o, "{\"status\":\"%s\",\"method\":\"%s\",\"sockets\":%u,\"interval_ms\":%u,"
            "\"deadline_ms\":%u,\"targets\":[",
        p->status == 0 ? "ok" : p->status == NTCP_EUNREACHABLE ? "impossible" : "invalid",
        udp_method_name(p->method), p->nsockets, p->interval_ms, p->deadline_ms);
    for (size_t i = 0; i < p->ntargets; i++) {
        char a[64];
        put(&o, "%s{\"addr\":\"%s\",\"count\":%u,\"step\":%d,\"kind\":\"%s\"}", i ? "," : "",
            ntcp_addr_str((const struct sockaddr *)&p->t[i].addr, a, sizeof a), p->t[i].count,
            (int)p->t[i].step, kind_name(p->kind[i]));
    }
    put(&o, "],\"random_probes\":%u,\"random_pps\":%u,\"reason\":\"", p->random_probes,
        p->random_pps);
    for (const char *c = p->reason; *c; c++)
        put(&o, (*c == '"' || *c == '\\') ? "\\%c" : "%c", *c);
    put(&o, "\"}");
    if (len && o.need >= len)
        buf[len - 1] = '\0';
    return o.need;
}
