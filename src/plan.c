/*
 * plan.c: the traversal planner. Turns the two ends' NAT behaviours and
 * addresses into the attempts this end runs, staged like Happy Eyeballs
 * (RFC 8305); and the profile blob that carries a behaviour to the peer.
 */
#include "plan.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "addr.h"
#include "birthday.h"
#include "natside.h"

const char *ntcp_method_name(ntcp_method_t m)
{
    switch (m) {
    case NTCP_METHOD_SAME_LAN: return "same-lan";
    case NTCP_METHOD_DIRECT: return "direct";
    case NTCP_METHOD_REVERSAL: return "reversal";
    case NTCP_METHOD_STUNT2: return "stunt2";
    case NTCP_METHOD_P2PNAT: return "p2pnat";
    case NTCP_METHOD_PREDICT: return "predict";
    case NTCP_METHOD_STUNT1: return "stunt1";
    case NTCP_METHOD_NATBLASTER: return "natblaster";
    case NTCP_METHOD_BIRTHDAY: return "birthday";
    case NTCP_METHOD_NONE:
    case NTCP_METHOD_COUNT: break;
    }
    return "none";
}

int plan_methods_parse(const char *list, unsigned *mask)
{
    *mask = 0;
    if (!list)
        return 0;
    const char *p = list;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t')
            p++;
        size_t n = strcspn(p, ", \t");
        if (n == 0)
            break;
        ntcp_method_t found = NTCP_METHOD_NONE;
        for (int m = NTCP_METHOD_NONE + 1; m < NTCP_METHOD_COUNT; m++) {
            const char *name = ntcp_method_name((ntcp_method_t)m);
            if (strlen(name) == n && strncasecmp(p, name, n) == 0)
                found = (ntcp_method_t)m;
        }
        if (found == NTCP_METHOD_NONE) {
            *mask = 0;
            return NTCP_EINVAL;
        }
        *mask |= PLAN_METHOD_BIT(found);
        p += n;
    }
    return 0;
}

void plan_keep_methods(plan *p, unsigned mask)
{
    if (!mask || p->status != 0)
        return;
    unsigned had = 0;
    size_t k = 0;
    for (size_t i = 0; i < p->n; i++) {
        had |= PLAN_METHOD_BIT(p->a[i].method);
        if (mask & PLAN_METHOD_BIT(p->a[i].method))
            p->a[k++] = p->a[i];
    }
    p->n = k;
    if (k > 0)
        return;
    char names[96] = "";
    size_t len = 0;
    for (int m = NTCP_METHOD_NONE + 1; m < NTCP_METHOD_COUNT && len < sizeof names; m++)
        if (had & PLAN_METHOD_BIT(m))
            len += (size_t)snprintf(names + len, sizeof names - len, "%s%s", len ? ", " : "",
                                    ntcp_method_name((ntcp_method_t)m));
    p->status = NTCP_EUNREACHABLE;
    snprintf(p->reason, sizeof p->reason,
             "the methods this pair needs (%s) are not among those configured (methods)",
             had ? names : "none");
}

void plan_input_init(plan_input *in)
{
    memset(in, 0, sizeof *in);
}

/* ---- How the planner sees one end ---- */


typedef struct side {
    const plan_end *e;
    const char *who; /* "initiator" / "target", for reasons */
    nat_map_class map;
    nat_filt_class filt;
    bool blocked;
    bool map_assumed; /* mapping unknown, tried as endpoint-independent */
    bool rst;         /* its NAT may answer an unsolicited SYN with an RST */
    int delta;
    unsigned used;    /* new mappings the plan has made on it so far */
    unsigned window;
} side;

static void classify_side(side *s, const plan_end *e, const char *who, unsigned window)
{
    const ntcp_nat_behaviour_t *b = &e->tcp;
    memset(s, 0, sizeof *s);
    s->e = e;
    s->who = who;
    s->window = window;
    nat_side ns;
    nat_side_classify(b, true, &ns);
    s->blocked = ns.blocked;
    s->map = ns.map;
    s->map_assumed = ns.map_assumed;
    s->delta = ns.delta;
    s->filt = ns.filt;
    /* Unknown answers are taken as the worst: an RST ends the sender's
     * conntrack state, so its hole, at once. */
    s->rst = b->syn == NTCP_SYN_RST || b->syn == NTCP_SYN_UNKNOWN;
}

/* ---- Shared attempts: both halves, initiator = 0, target = 1 ---- */

typedef struct half {
    plan_role_t role;
    plan_local_t local;
    plan_ports target;
    plan_ports ext;
    uint8_t ttl;
    bool peer_any_port;
    uint32_t hold;  /* PUNCH: offset inside the attempt of the normal-TTL SYN, 0 = none */
    uint32_t start; /* offset of this half inside the attempt */
    uint32_t repeat_ms;
    uint16_t repeats;
    uint16_t sockets, guesses, pps; /* birthday */
    uint32_t guess_ms;
} half;

typedef struct shared {
    ntcp_method_t method;
    uint32_t start, stop;
    uint32_t len; /* how long it needs before the next method may take the session port */
    half h[2];
    char why[128];
} shared;

typedef struct builder {
    side s[2];
    shared a[PLAN_MAX_ATTEMPTS];
    size_t n;
    uint32_t rtt, margin, stage, slot, next;
} builder;

static plan_ports ports_one(const struct sockaddr_storage *a, uint16_t port)
{
    plan_ports p;
    memset(&p, 0, sizeof p);
    p.addr = *a;
    ntcp_sa_set_port(&p.addr, port);
    p.count = 1;
    return p;
}

static plan_ports ports_none(void)
{
    plan_ports p;
    memset(&p, 0, sizeof p);
    return p;
}

/* The port of the k-th new mapping after the public one (k >= 1). Ports
 * wrap like a 16-bit counter; the NAT's real range is unknown. */
static uint16_t predicted(const side *s, unsigned k)
{
    uint16_t base = s->e->seq_port ? s->e->seq_port : ntcp_sa_port(&s->e->public_addr);
    return (uint16_t)(base + (int32_t)k * s->delta);
}

/* Where side s is seen for an attempt from `local` that makes `nmap` new
 * mappings; those mappings are counted as used. */
static plan_ports take_ext(side *s, plan_local_t local, unsigned nmap)
{
    if (local == PLAN_LOCAL_ANY)
        return ports_none();
    if (local == PLAN_LOCAL_SESSION)
        return ports_one(&s->e->public_addr, ntcp_sa_port(&s->e->public_addr));
    /* FRESH, predictable: the window covers the plan's own mappings and
     * those other hosts behind the NAT make meanwhile. */
    plan_ports p = ports_one(&s->e->public_addr, predicted(s, s->used + 1));
    p.count = (uint16_t)s->window;
    p.step = s->delta;
    s->used += nmap;
    return p;
}

static plan_local_t local_for(const side *s)
{
    return s->map == NAT_MAP_PREDICT ? PLAN_LOCAL_FRESH : PLAN_LOCAL_SESSION;
}

static uint8_t low_ttl(const side *s)
{
    /* One more than the hops to leave our own NAT(s): it creates our mapping
     * and dies at the next router. Unknown hops: the engine learns them. */
    return s->e->nat_hops ? (uint8_t)(s->e->nat_hops + 1) : PLAN_TTL_LEARN;
}

static shared *add(builder *b, ntcp_method_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static shared *add(builder *b, ntcp_method_t m, const char *fmt, ...)
{
    if (b->n == PLAN_MAX_ATTEMPTS)
        return NULL;
    shared *a = &b->a[b->n++];
    memset(a, 0, sizeof *a);
    a->method = m;
    a->start = b->next;
    a->len = b->slot;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->why, sizeof a->why, fmt, ap);
    va_end(ap);
    return a;
}

/* Does the attempt send SYNs from the session's port? Two sockets cannot
 * hold one 4-tuple, and the targets of two methods often coincide, so such
 * attempts take turns: each is closed when the next one starts. */
static bool uses_session(const shared *a)
{
    for (int i = 0; i < 2; i++)
        if (a->h[i].role != PLAN_ACCEPT && a->h[i].local == PLAN_LOCAL_SESSION)
            return true;
    return false;
}

/* The next method starts when the last one has had its time. */
static void advance(builder *b)
{
    if (b->n)
        b->next = b->a[b->n - 1].start + b->a[b->n - 1].len;
}

static uint32_t clampu(uint32_t v, uint32_t lo, uint32_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* One end connects from any port to the other's listening address. */
static void connect_accept(builder *b, ntcp_method_t m, int from, const struct sockaddr_storage *to,
                           const struct sockaddr_storage *expect_ip, const char *why)
{
    shared *a = add(b, m, "%s", why);
    if (!a)
        return;
    half *c = &a->h[from], *l = &a->h[!from];
    c->role = PLAN_CONNECT;
    c->local = PLAN_LOCAL_ANY;
    c->target = ports_one(to, ntcp_sa_port(to));
    c->ext = ports_none();
    c->repeats = 1;
    l->role = PLAN_ACCEPT;
    l->local = PLAN_LOCAL_SESSION;
    l->target = expect_ip ? ports_one(expect_ip, 0) : ports_none();
    l->ext = c->target;
    l->repeats = 1;
}

/* How long after the connector's start the puncher holds its 4-tuple with a
 * normal SYN (plan_attempt.hold_ms), for a round trip of rtt ms: 3 ms on a
 * path of no length, less as it grows, none from 6 ms on. */
static uint32_t hold_after(uint32_t rtt)
{
    return rtt < 6 ? 3 - rtt / 2 : 0;
}

/* STUNT#2, or its predicted form: x punches with a low TTL and listens, y
 * connects once x's mapping exists. */
static void stunt2(builder *b, int x)
{
    side *X = &b->s[x], *Y = &b->s[!x];
    bool predict = X->map == NAT_MAP_PREDICT || (Y->map == NAT_MAP_PREDICT && X->filt != NAT_FILT_ADDR);
    bool y_any = X->filt == NAT_FILT_ADDR;
    plan_local_t xl = local_for(X);
    plan_local_t yl = y_any ? PLAN_LOCAL_ANY : local_for(Y);
    shared *a = add(b, predict ? NTCP_METHOD_PREDICT : NTCP_METHOD_STUNT2,
                    "%s punches (low TTL) and listens, %s connects%s", X->who, Y->who,
                    y_any ? " from any port (address-dependent filter)" : "");
    if (!a)
        return;
    half *hx = &a->h[x], *hy = &a->h[!x];

    /* x's SYNs: to y's address when x filters by address only (any port of
     * y's will then be let in), else to each port y may be seen from. Y's
     * mappings are made after x's punch, but x must aim at them first, so
     * the window is taken now and y's count is settled below. */
    unsigned y_used_before = Y->used;
    uint16_t y_conn_count;
    if (y_any) {
        hx->target = ports_one(&Y->e->public_addr, ntcp_sa_port(&Y->e->public_addr));
    } else if (Y->map == NAT_MAP_PREDICT) {
        hx->target = ports_one(&Y->e->public_addr, predicted(Y, y_used_before + 1));
        hx->target.count = (uint16_t)Y->window;
        hx->target.step = Y->delta;
    } else {
        hx->target = ports_one(&Y->e->public_addr, ntcp_sa_port(&Y->e->public_addr));
    }
    hx->role = PLAN_PUNCH;
    hx->local = xl;
    hx->ttl = low_ttl(X);
    hx->peer_any_port = y_any;
    hx->ext = take_ext(X, xl, hx->target.count);
    hx->repeats = 1;

    /* y's SYNs: to x's external address; to x's window when x's mappings are
     * predicted. When both are predicted, y's k-th SYN goes to x's (2k)-th
     * predicted port: SYN k meets the punch made for y's actual port when
     * the NATs' combined drift is k (see docs/traversal.md). */
    hy->role = PLAN_CONNECT;
    hy->local = yl;
    hy->target = hx->ext;
    if (X->map == NAT_MAP_PREDICT && yl == PLAN_LOCAL_FRESH) {
        hy->target.step = 2 * X->delta;
        hy->target.count = (uint16_t)((X->window + 1) / 2);
    }
    y_conn_count = hy->target.count;
    /* Refused early SYNs are re-issued; from a predicted port each
     * re-issue would be a new mapping, so those go once. */
    hy->repeats = yl == PLAN_LOCAL_FRESH ? 1 : 3;
    hy->repeat_ms = hy->repeats > 1 ? clampu(b->rtt, 100, 1000) : 0;
    hy->start = b->margin;
    /* x holds the punched 4-tuple with a normal SYN when y's SYN leaves y's
     * NAT: x's SYN reaches y's NAT half a round trip later, y's reaches x's
     * then too, each finds a hole, as in a simultaneous open. Centred so,
     * the ends' start skew may be up to half a round trip either way. Too
     * early, x's SYN meets y's NAT shut (an RST there ends x's hole); too
     * late, y's SYN meets a punch socket whose "time exceeded" is still on
     * its way, or none between two punches (our RST ends y's hole). On the
     * shortest paths the punches' errors stop soon (routers rate-limit
     * them) and only the first danger is left: there the hold comes up to
     * 3 ms after y's start. (y connecting from any port is taken by x's
     * listener: no hold.) See hold_after(). */
    if (!y_any)
        hx->hold = hy->start + hold_after(b->rtt);
    hy->ext = take_ext(Y, yl, y_conn_count);
    if (yl == PLAN_LOCAL_FRESH) {
        /* The window x aimed at starts where y's ext starts. */
        hy->ext.count = hx->target.count;
    }
}

/* Simultaneous open (P2PNAT), from ports whose mapping is known or
 * predicted, re-issued until the NATs agree. */
static void simopen(builder *b)
{
    side *I = &b->s[0], *T = &b->s[1];
    bool predict = I->map == NAT_MAP_PREDICT || T->map == NAT_MAP_PREDICT;
    shared *a = add(b, predict ? NTCP_METHOD_PREDICT : NTCP_METHOD_P2PNAT,
                    "simultaneous open, both ends at once, repeated");
    if (!a)
        return;
    /* A SYN and its answer take a round trip: re-issue after that. */
    uint32_t every = clampu(b->rtt + b->rtt / 2, 50, 1000);
    a->len = every * 4 + b->rtt > b->slot ? every * 4 + b->rtt : b->slot;
    for (int i = 0; i < 2; i++) {
        side *me = &b->s[i];
        half *h = &a->h[i];
        h->role = PLAN_SIMOPEN;
        h->local = local_for(me);
        /* A predicted end sends one SYN (to the other's known address) and
         * keeps that mapping while it re-issues: no new port per repeat. */
        h->ext = take_ext(me, h->local, 1);
        h->repeat_ms = every;
        h->repeats = 4;
    }
    for (int i = 0; i < 2; i++)
        a->h[i].target = a->h[!i].ext;
}

/* STUNT#1 (broker spoofs the SYN-ACKs) or NATBlaster (each end sends it). */
static void raw_method(builder *b, ntcp_method_t m)
{
    shared *a = add(b, m, "%s",
                    m == NTCP_METHOD_STUNT1 ? "low-TTL SYNs, ISNs to the broker, which spoofs the SYN-ACKs"
                                            : "low-TTL SYNs, ISNs exchanged, each end sends the SYN-ACK");
    if (!a)
        return;
    for (int i = 0; i < 2; i++) {
        half *h = &a->h[i];
        h->role = PLAN_RAW_SYN;
        h->local = PLAN_LOCAL_SESSION;
        h->ttl = low_ttl(&b->s[i]);
        h->ext = take_ext(&b->s[i], PLAN_LOCAL_SESSION, 1);
        h->repeats = 1;
    }
    for (int i = 0; i < 2; i++)
        a->h[i].target = a->h[!i].ext;
    /* The ISNs go through the broker before the SYN-ACKs: a round trip more. */
    a->len = b->slot + b->rtt;
}

/* The birthday search (birthday.h): r's NAT maps each connection to a random
 * port, k's mapping is known but its filter admits only the exact address
 * and port it sent to. r opens many mappings towards k's one port, each a
 * socket whose low-TTL SYN opened it and which waits in SYN-SENT; k guesses
 * random ports of r's address from that one port, paced. A guess that hits
 * a mapping passes r's NAT (it comes from exactly where that mapping points)
 * and meets r's socket: a simultaneous open, whose SYN-ACK passes k's filter
 * (k sent to that port). */
static void birthday(builder *b, int r)
{
    side *R = &b->s[r], *K = &b->s[!r];
    shared *a = add(b, NTCP_METHOD_BIRTHDAY,
                    "birthday: the %s opens %u random mappings, the %s guesses %u ports",
                    R->who, NTCP_BIRTHDAY_SOCKETS, K->who, NTCP_BIRTHDAY_GUESSES);
    if (!a)
        return;
    half *hr = &a->h[r], *hk = &a->h[!r];
    hr->role = PLAN_SPRAY;
    hr->local = PLAN_LOCAL_ANY; /* each socket a fresh port, one new mapping each */
    hr->target = ports_one(&K->e->public_addr, ntcp_sa_port(&K->e->public_addr));
    hr->ttl = low_ttl(R);
    hr->ext = ports_one(&R->e->public_addr, 0); /* its address; the ports are random */
    hr->sockets = NTCP_BIRTHDAY_SOCKETS;
    hr->repeats = 1;
    hk->role = PLAN_GUESS;
    hk->local = PLAN_LOCAL_SESSION;
    hk->target = hr->ext;
    hk->ext = take_ext(K, PLAN_LOCAL_SESSION, 1);
    hk->guesses = NTCP_BIRTHDAY_GUESSES;
    hk->pps = NTCP_BIRTHDAY_PPS;
    /* A guess that hits is answered within a round trip. */
    hk->guess_ms = clampu(2 * b->rtt + 100, 200, 2000);
    hk->repeats = 1;
    /* The guesses start once r's first mappings exist (r opens them over
     * ENGINE's spray time, 64 ms) and the ends' clocks may disagree. */
    hk->start = b->margin + 64;
    a->len = hk->start + (uint32_t)hk->guesses * 1000 / hk->pps + hk->guess_ms + b->rtt;
}

static int impossible(plan *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int impossible(plan *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof out->reason, fmt, ap);
    va_end(ap);
    out->status = NTCP_EUNREACHABLE;
    out->n = 0;
    return NTCP_EUNREACHABLE;
}

/* Why a pair with an unpredictable end cannot be traversed (never called
 * for a pair that can be). */
static int why_impossible(plan *out, const side *s)
{
    if (s[0].map == NAT_MAP_RANDOM && s[1].map == NAT_MAP_RANDOM)
        return impossible(out, "both ends are behind NATs with unpredictable (random) TCP port "
                               "mappings and port-dependent filters: no SYN can be aimed at a port "
                               "the other NAT will let in; a relay is needed");
    int r = s[0].map == NAT_MAP_RANDOM ? 0 : 1;
    return impossible(out, "the %s's NAT maps each connection to an unpredictable (random) port and "
                           "the %s's NAT only lets in SYNs from the exact port it sent to: a relay "
                           "is needed",
                      s[r].who, s[!r].who);
}

/* STUNT#2 order score: x's low-TTL SYN may reach y's NAT (no router in
 * between), and an RST there would end x's hole; an address-dependent x
 * lets y connect from any port; an x whose NAT refuses loudly is the one
 * to keep early SYNs away from. */
static int score(const side *s, int x)
{
    return (s[!x].rst ? 0 : 4) + (s[x].filt == NAT_FILT_ADDR ? 2 : 0) + (s[x].rst ? 1 : 0);
}

static bool same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    return ntcp_sockaddr_same_ip((const struct sockaddr *)a, (const struct sockaddr *)b);
}

static int build(builder *b, const plan_input *in, plan *out)
{
    side *s = b->s;
    if (s[0].blocked || s[1].blocked)
        return impossible(out, "TCP is blocked at the %s (discovery got no TCP answer at all)",
                          s[0].blocked ? s[0].who : s[1].who);

    /* Same public address: one NAT (or one host) in front of both. Private
     * addresses first, both ways, and the public one if the NAT hairpins. */
    if (same_ip(&s[0].e->public_addr, &s[1].e->public_addr)) {
        for (int from = 0; from < 2; from++) {
            const plan_end *to = s[!from].e;
            for (size_t k = 0; k < to->npriv && k < 3; k++)
                connect_accept(b, NTCP_METHOD_SAME_LAN, from, &to->priv[k], NULL,
                               from == 0 ? "same public address: to the target's private address"
                                         : "same public address: to the initiator's private address");
        }
        if (s[0].e->tcp.hairpin == NTCP_YES && s[1].e->tcp.hairpin == NTCP_YES) {
            size_t n0 = b->n;
            connect_accept(b, NTCP_METHOD_SAME_LAN, 0, &s[1].e->public_addr, NULL,
                           "same public address: to the target's public address (the NAT hairpins)");
            /* A margin after the private addresses: on one LAN both would
             * connect, and the direct path should win, not the detour
             * through the NAT (Happy Eyeballs' preference, RFC 8305). */
            if (b->n > n0)
                b->a[n0].h[0].start = b->margin;
        }
        /* The rest only matters when the private networks do not meet
         * (behind one carrier-grade NAT): staged after. */
        if (b->n)
            b->next += b->stage;
    }

    bool reach0 = s[0].filt == NAT_FILT_OPEN, reach1 = s[1].filt == NAT_FILT_OPEN;
    if (reach1)
        connect_accept(b, NTCP_METHOD_DIRECT, 0, &s[1].e->public_addr, &s[0].e->public_addr,
                       "the target lets unsolicited SYNs in: the initiator connects");
    if (reach0)
        connect_accept(b, NTCP_METHOD_REVERSAL, 1, &s[0].e->public_addr, &s[1].e->public_addr,
                       "the initiator lets unsolicited SYNs in: the target connects");
    if (reach0 || reach1)
        return 0;

    /* Neither end lets an unsolicited SYN in: holes must be punched. x may
     * punch (and y connect) when x's external port can be known and y's
     * too, unless x filters by address only. */
    bool can[2];
    for (int x = 0; x < 2; x++)
        can[x] = s[x].map != NAT_MAP_RANDOM && (s[x].filt == NAT_FILT_ADDR || s[!x].map != NAT_MAP_RANDOM);
    bool sim = s[0].map != NAT_MAP_RANDOM && s[1].map != NAT_MAP_RANDOM &&
               !(s[0].map == NAT_MAP_PREDICT && s[1].map == NAT_MAP_PREDICT);
    if (!can[0] && !can[1]) {
        int r = s[0].map == NAT_MAP_RANDOM ? 0 : 1;
        if (s[r].map == NAT_MAP_RANDOM && s[!r].map == NAT_MAP_KNOWN && !s[!r].map_assumed) {
            birthday(b, r);
            return 0;
        }
        if (b->n) /* same NAT: the private addresses and hairpin remain */
            return 0;
        return why_impossible(out, s);
    }
    int first = can[0] && (!can[1] || score(s, 0) >= score(s, 1)) ? 0 : 1;
    bool second = can[!first];
    bool any_rst = s[0].rst || s[1].rst;
    bool raw = in->raw_enabled && s[0].e->raw && s[1].e->raw && s[0].map == NAT_MAP_KNOWN &&
               s[1].map == NAT_MAP_KNOWN;

    /* Simultaneous open is race-free when neither NAT answers an early SYN
     * with an RST (a dropped SYN is retransmitted; after an ICMP error the
     * NAT keeps the hole and the listener takes the peer's SYN): then it is
     * the cheapest, one round trip. Otherwise a role split comes first. */
    if (sim && !any_rst) {
        simopen(b);
        advance(b);
        stunt2(b, first);
    } else {
        stunt2(b, first);
        if (sim) {
            advance(b);
            simopen(b);
        }
    }
    if (raw) {
        advance(b);
        raw_method(b, in->broker_spoofs ? NTCP_METHOD_STUNT1 : NTCP_METHOD_NATBLASTER);
    }
    if (second) {
        advance(b);
        stunt2(b, !first);
    }
    return 0;
}

static void summary(const builder *b, plan *out)
{
    size_t used = 0;
    used += (size_t)snprintf(out->reason, sizeof out->reason, "%zu attempts:", b->n);
    for (size_t i = 0; i < b->n && used < sizeof out->reason; i++) {
        ntcp_method_t m = b->a[i].method;
        if (i > 0 && b->a[i - 1].method == m)
            continue;
        used += (size_t)snprintf(out->reason + used, sizeof out->reason - used, " %s@%u",
                                 ntcp_method_name(m), (unsigned)b->a[i].start);
    }
}

int plan_make(const plan_input *in, plan *out)
{
    if (!in || !out)
        return NTCP_EINVAL;
    memset(out, 0, sizeof *out);
    const plan_end *ends[2] = {in->initiator ? &in->me : &in->peer,
                               in->initiator ? &in->peer : &in->me};
    for (int i = 0; i < 2; i++) {
        sa_family_t f = ends[i]->public_addr.ss_family;
        if ((f != AF_INET && f != AF_INET6) || ends[i]->npriv > PLAN_MAX_PRIVATE) {
            out->status = NTCP_EINVAL;
            snprintf(out->reason, sizeof out->reason, "the %s's public address is missing",
                     i == 0 ? "initiator" : "target");
            return NTCP_EINVAL;
        }
    }
    if (ends[0]->public_addr.ss_family != ends[1]->public_addr.ss_family) {
        /* One family per plan: the engine plans IPv4 and IPv6 apart. */
        out->status = NTCP_EINVAL;
        snprintf(out->reason, sizeof out->reason, "the public addresses are of different families");
        return NTCP_EINVAL;
    }
    unsigned window = in->window ? in->window : PLAN_DEFAULT_WINDOW;
    if (window > PLAN_MAX_WINDOW)
        window = PLAN_MAX_WINDOW;

    builder b; /* on the stack: no global state, about 12 KiB */
    memset(&b, 0, sizeof b);
    classify_side(&b.s[0], ends[0], "initiator", window);
    classify_side(&b.s[1], ends[1], "target", window);
    /* Timings depend only on values both ends share, so both compute the
     * same ones. The peers' round trip is taken as the larger of the two
     * ends' round trips to the server. */
    uint32_t rtt = ends[0]->rtt_ms > ends[1]->rtt_ms ? ends[0]->rtt_ms : ends[1]->rtt_ms;
    b.rtt = rtt ? clampu(rtt, 1, 5000) : 100;
    /* The ends start within half a broker round trip of each other. */
    b.margin = b.rtt / 2 + 20;
    /* Happy Eyeballs' connection attempt delay (250 ms default, RFC 8305
     * 5), in round trips where they are known. */
    b.stage = clampu(2 * b.rtt + 50, 150, 2000);
    /* What a method gets on the shared tuple before the next one replaces
     * it: its SYNs, a retransmission of the peer's, and the handshake. */
    b.slot = clampu(b.margin + 4 * b.rtt + 100, 300, 4000);

    int rc = build(&b, in, out);
    out->rtt_ms = b.rtt;
    if (rc < 0)
        return rc;

    /* Attempts that send from the session's port hand it over to the next
     * such attempt; every other attempt runs until the plan's deadline, so
     * a slow success is not cut short by a later method. */
    uint32_t deadline = 0;
    for (size_t i = 0; i < b.n; i++) {
        if (b.a[i].start + b.a[i].len > deadline)
            deadline = b.a[i].start + b.a[i].len;
        /* A lost SYN is sent again after the initial RTO, 1 s (RFC 6298):
         * the last attempt waits for that retransmission and its answer. */
        uint32_t last = b.a[i].start + b.margin; /* the latest a half starts */
        if (last + 1000 + 2 * b.rtt > deadline)
            deadline = last + 1000 + 2 * b.rtt;
    }
    for (size_t i = 0; i < b.n; i++) {
        b.a[i].stop = deadline;
        if (!uses_session(&b.a[i]))
            continue;
        for (size_t j = i + 1; j < b.n; j++)
            if (uses_session(&b.a[j])) {
                b.a[i].stop = b.a[j].start;
                break;
            }
    }
    out->deadline_ms = deadline;

    int me = in->initiator ? 0 : 1;
    for (size_t i = 0; i < b.n; i++) {
        const shared *sa = &b.a[i];
        const half *h = &sa->h[me];
        plan_attempt *pa = &out->a[out->n++];
        pa->id = (unsigned)i + 1;
        pa->method = sa->method;
        pa->role = h->role;
        pa->local = h->local;
        pa->target = h->target;
        pa->ext = h->ext;
        pa->ttl = h->ttl;
        pa->peer_any_port = h->peer_any_port;
        pa->hold_ms = h->hold ? sa->start + h->hold : 0;
        pa->start_ms = sa->start + h->start;
        pa->stop_ms = sa->stop;
        pa->repeat_ms = h->repeat_ms;
        pa->repeats = h->repeats ? h->repeats : 1;
        pa->sockets = h->sockets;
        pa->guesses = h->guesses;
        pa->pps = h->pps;
        pa->guess_ms = h->guess_ms;
        snprintf(pa->why, sizeof pa->why, "%s", sa->why);
    }
    /* Stable order by start time (insertion sort: at most 16). */
    for (size_t i = 1; i < out->n; i++) {
        plan_attempt t = out->a[i];
        size_t j = i;
        while (j > 0 && (out->a[j - 1].start_ms > t.start_ms ||
                         (out->a[j - 1].start_ms == t.start_ms && out->a[j - 1].id > t.id))) {
            out->a[j] = out->a[j - 1];
            j--;
        }
        out->a[j] = t;
    }
    summary(&b, out);
    out->status = 0;
    return 0;
}

/* ---- Rendering ---- */

static const char *role_name(plan_role_t r)
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

static const char *local_name(plan_local_t l)
{
    switch (l) {
    case PLAN_LOCAL_ANY: return "any";
    case PLAN_LOCAL_SESSION: return "session";
    case PLAN_LOCAL_FRESH: return "fresh";
    }
    return "?";
}

typedef struct out_buf {
    char *buf;
    size_t len, need;
} out_buf;

static void put(out_buf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(out_buf *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->need < o->len ? o->len - o->need : 0;
    int n = vsnprintf(room ? o->buf + o->need : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->need += (size_t)n;
}

/* "IP:PORT" / "[IP]:PORT" (port 0: "IP:*"), "-" when there is none. */
static void put_addr(out_buf *o, const struct sockaddr_storage *ss)
{
    char ip[INET6_ADDRSTRLEN] = "";
    uint16_t port = ntcp_sa_port(ss);
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, sizeof ip);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, ip, sizeof ip);
    else {
        put(o, "-");
        return;
    }
    const char *l = ss->ss_family == AF_INET6 ? "[" : "", *r = ss->ss_family == AF_INET6 ? "]" : "";
    if (port)
        put(o, "%s%s%s:%u", l, ip, r, (unsigned)port);
    else
        put(o, "%s%s%s:*", l, ip, r);
}

/* A JSON string. The planner's texts are plain ASCII words, but the plan
 * is a caller's struct: escape whatever it holds. */
static void put_json_str(out_buf *o, const char *str)
{
    put(o, "\"");
    for (const unsigned char *c = (const unsigned char *)str; *c; c++) {
        if (*c == '"' || *c == '\\')
            put(o, "\\%c", *c);
        else if (*c < 0x20)
            put(o, "\\u%04x", *c);
        else
            put(o, "%c", *c);
    }
    put(o, "\"");
}

static void put_ports(out_buf *o, const plan_ports *p)
{
    put_addr(o, &p->addr);
    if (p->count > 1)
        put(o, "+%dx%u", (int)p->step, (unsigned)p->count);
}

size_t plan_format(const plan *p, bool json, char *buf, size_t len)
{
    out_buf o = {buf, len, 0};
    if (len)
        buf[0] = '\0';
    if (!p)
        return 0;
    if (json) {
        put(&o, "{\"version\":1,\"status\":\"%s\",\"rtt_ms\":%u,\"deadline_ms\":%u,\"reason\":",
            p->status == 0 ? "ok" : p->status == NTCP_EUNREACHABLE ? "impossible" : "invalid",
            (unsigned)p->rtt_ms, (unsigned)p->deadline_ms);
        put_json_str(&o, p->reason);
        put(&o, ",\"attempts\":[");
        for (size_t i = 0; i < p->n && i < PLAN_MAX_ATTEMPTS; i++) {
            const plan_attempt *a = &p->a[i];
            put(&o, "%s{\"id\":%u,\"method\":\"%s\",\"role\":\"%s\",\"local\":\"%s\",\"target\":\"",
                i ? "," : "", a->id, ntcp_method_name(a->method), role_name(a->role),
                local_name(a->local));
            put_addr(&o, &a->target.addr);
            put(&o, "\",\"target_count\":%u,\"target_step\":%d,\"ext\":\"", (unsigned)a->target.count,
                (int)a->target.step);
            put_addr(&o, &a->ext.addr);
            put(&o, "\",\"ext_count\":%u,\"ext_step\":%d,\"ttl\":%u,\"start_ms\":%u,\"stop_ms\":%u,"
                    "\"hold_ms\":%u,\"repeat_ms\":%u,\"repeats\":%u,\"sockets\":%u,\"guesses\":%u,"
                    "\"pps\":%u,\"guess_ms\":%u,\"why\":",
                (unsigned)a->ext.count, (int)a->ext.step, (unsigned)a->ttl, (unsigned)a->start_ms,
                (unsigned)a->stop_ms, (unsigned)a->hold_ms, (unsigned)a->repeat_ms,
                (unsigned)a->repeats, (unsigned)a->sockets, (unsigned)a->guesses, (unsigned)a->pps,
                (unsigned)a->guess_ms);
            put_json_str(&o, a->why);
            put(&o, "}");
        }
        put(&o, "]}");
        return o.need;
    }
    if (p->status) {
        put(&o, "%s: %s\n", p->status == NTCP_EUNREACHABLE ? "impossible" : "invalid", p->reason);
        return o.need;
    }
    put(&o, "plan (rtt %u ms, deadline %u ms): %s\n", (unsigned)p->rtt_ms, (unsigned)p->deadline_ms,
        p->reason);
    for (size_t i = 0; i < p->n && i < PLAN_MAX_ATTEMPTS; i++) {
        const plan_attempt *a = &p->a[i];
        put(&o, "  #%u %5u-%-5u ms %-10s %-7s from %-7s to ", a->id, (unsigned)a->start_ms,
            (unsigned)a->stop_ms, ntcp_method_name(a->method), role_name(a->role),
            local_name(a->local));
        put_ports(&o, &a->target);
        put(&o, " seen as ");
        put_ports(&o, &a->ext);
        if (a->role == PLAN_PUNCH || a->role == PLAN_RAW_SYN) {
            if (a->ttl == PLAN_TTL_LEARN)
                put(&o, " ttl learned");
            else
                put(&o, " ttl %u", (unsigned)a->ttl);
            if (a->hold_ms)
                put(&o, ", normal TTL from %u ms", (unsigned)a->hold_ms);
        }
        if (a->repeats > 1)
            put(&o, " x%u every %u ms", (unsigned)a->repeats, (unsigned)a->repeat_ms);
        if (a->role == PLAN_SPRAY)
            put(&o, " from %u sockets", (unsigned)a->sockets);
        if (a->role == PLAN_GUESS)
            put(&o, " %u random ports, %u/s, %u ms each", (unsigned)a->guesses, (unsigned)a->pps,
                (unsigned)a->guess_ms);
        put(&o, " (%s)\n", a->why);
    }
    return o.need;
}

/* ---- Profile blob ----
 *
 *  0: 'N' 'P'   magic
 *  2: version   high nibble major (1), low nibble minor (0): a newer minor
 *               only appends fields, which an older decoder skips
 *  3: flags     bit 0: raw sockets usable; others reserved, must be 0
 *  4: rtt_ms    u16 big-endian (capped)
 *  6: nat_hops  u8
 *  7: count     number of records (0..4)
 *  then each record: kind (0 tcp4, 1 udp4, 2 tcp6, 3 udp6), length (>= 9),
 *  then reach, mapping, filtering, ports, hairpin, syn (one byte each),
 *  delta (i16 BE), lifetime_s/4 (u8, capped), and length - 9 bytes that a
 *  later minor version may define. Minor 1 defines bytes 9-10: the newest
 *  external port seen (u16 BE, plan_profile.seq_port), present (length 11)
 *  only when not 0.
 */

#define BLOB_HEAD 8
#define BLOB_REC 9
#define BLOB_REC_SEQ 11 /* with seq_port (minor 1) */
#define BLOB_MINOR 1

static int rec_encode(const ntcp_nat_behaviour_t *b, uint8_t *o)
{
    /* Exactly what decode() refuses as out of range, "none" mapping and a
     * delta without sequential ports included: a blob the peer would refuse
     * is never sent. */
    if ((unsigned)b->reach > NTCP_REACH_NAT || (unsigned)b->mapping > NTCP_DEP_ADDRESS_PORT ||
        b->mapping == NTCP_DEP_NONE || (unsigned)b->filtering > NTCP_DEP_ADDRESS_PORT ||
        (unsigned)b->ports > NTCP_PORTS_RANDOM || (unsigned)b->hairpin > NTCP_YES ||
        (unsigned)b->syn > NTCP_SYN_ICMP || b->delta < INT16_MIN || b->delta > INT16_MAX ||
        (b->delta != 0 && b->ports != NTCP_PORTS_SEQUENTIAL) || b->lifetime_s < 0)
        return NTCP_ERANGE;
    o[0] = (uint8_t)b->reach;
    o[1] = (uint8_t)b->mapping;
    o[2] = (uint8_t)b->filtering;
    o[3] = (uint8_t)b->ports;
    o[4] = (uint8_t)b->hairpin;
    o[5] = (uint8_t)b->syn;
    uint16_t d = (uint16_t)(int16_t)b->delta;
    o[6] = (uint8_t)(d >> 8);
    o[7] = (uint8_t)d;
    int l = b->lifetime_s / 4;
    o[8] = (uint8_t)(l > 255 ? 255 : l);
    return 0;
}

int plan_profile_encode(const plan_profile *p, uint8_t *buf, size_t len)
{
    if (!p || (!buf && len))
        return NTCP_EINVAL;
    uint8_t tmp[PLAN_BLOB_MAX];
    size_t n = BLOB_HEAD, count = 0;
    tmp[0] = 'N';
    tmp[1] = 'P';
    tmp[2] = PLAN_BLOB_VERSION << 4 | BLOB_MINOR;
    tmp[3] = p->raw ? 1 : 0;
    uint32_t rtt = p->rtt_ms > 65535 ? 65535 : p->rtt_ms;
    tmp[4] = (uint8_t)(rtt >> 8);
    tmp[5] = (uint8_t)rtt;
    tmp[6] = p->nat_hops;
    for (int k = 0; k < PLAN_NBEHAVIOUR; k++) {
        if (!p->has[k])
            continue;
        uint8_t rlen = p->seq_port[k] ? BLOB_REC_SEQ : BLOB_REC;
        tmp[n] = (uint8_t)k;
        tmp[n + 1] = rlen;
        int rc = rec_encode(&p->b[k], tmp + n + 2);
        if (rc < 0)
            return rc;
        if (rlen == BLOB_REC_SEQ) {
            tmp[n + 2 + BLOB_REC] = (uint8_t)(p->seq_port[k] >> 8);
            tmp[n + 2 + BLOB_REC + 1] = (uint8_t)p->seq_port[k];
        }
        n += 2 + rlen;
        count++;
    }
    tmp[7] = (uint8_t)count;
    if (len < n)
        return NTCP_ENOSPC;
    memcpy(buf, tmp, n);
    return (int)n;
}

static int decode(const uint8_t *buf, size_t len, plan_profile *out)
{
    if (len < BLOB_HEAD)
        return NTCP_ETRUNCATED;
    if (buf[0] != 'N' || buf[1] != 'P')
        return NTCP_EMALFORMED;
    if (buf[2] >> 4 != PLAN_BLOB_VERSION)
        return NTCP_EPROTO;
    if (len > PLAN_BLOB_MAX)
        return NTCP_EMALFORMED;
    if (buf[3] & ~1u)
        return NTCP_ERANGE;
    out->raw = buf[3] & 1;
    out->rtt_ms = (uint32_t)buf[4] << 8 | buf[5];
    out->nat_hops = buf[6];
    size_t count = buf[7], off = BLOB_HEAD;
    if (count > PLAN_NBEHAVIOUR)
        return NTCP_ERANGE;
    for (size_t r = 0; r < count; r++) {
        if (len - off < 2)
            return NTCP_ETRUNCATED;
        uint8_t kind = buf[off], rlen = buf[off + 1];
        if (kind >= PLAN_NBEHAVIOUR)
            return NTCP_ERANGE;
        if (out->has[kind])
            return NTCP_EMALFORMED;
        if (rlen < BLOB_REC)
            return NTCP_EMALFORMED;
        if (len - off - 2 < rlen)
            return NTCP_ETRUNCATED;
        const uint8_t *q = buf + off + 2;
        if (q[0] > NTCP_REACH_NAT || q[1] > NTCP_DEP_ADDRESS_PORT || q[2] > NTCP_DEP_ADDRESS_PORT ||
            q[3] > NTCP_PORTS_RANDOM || q[4] > NTCP_YES || q[5] > NTCP_SYN_ICMP)
            return NTCP_ERANGE;
        /* NONE is a filtering value only; a delta only with sequential ports. */
        int16_t delta = (int16_t)(uint16_t)((unsigned)q[6] << 8 | q[7]);
        if (q[1] == NTCP_DEP_NONE || (delta != 0 && q[3] != NTCP_PORTS_SEQUENTIAL))
            return NTCP_ERANGE;
        ntcp_nat_behaviour_t *b = &out->b[kind];
        b->reach = (ntcp_reach_t)q[0];
        b->mapping = (ntcp_nat_dep_t)q[1];
        b->filtering = (ntcp_nat_dep_t)q[2];
        b->ports = (ntcp_port_alloc_t)q[3];
        b->hairpin = (ntcp_tristate_t)q[4];
        b->syn = (ntcp_syn_answer_t)q[5];
        b->delta = delta;
        b->lifetime_s = q[8] * 4;
        if (rlen >= BLOB_REC_SEQ)
            out->seq_port[kind] = (uint16_t)((unsigned)q[9] << 8 | q[10]);
        out->has[kind] = true;
        off += 2 + (size_t)rlen;
    }
    return off == len ? 0 : NTCP_EMALFORMED;
}

int plan_profile_decode(const uint8_t *buf, size_t len, plan_profile *out)
{
    if (!out || (!buf && len))
        return NTCP_EINVAL;
    /* Decoded aside, so that a bad blob leaves out all zero, never half set. */
    plan_profile tmp;
    memset(&tmp, 0, sizeof tmp);
    memset(out, 0, sizeof *out);
    int rc = decode(buf, len, &tmp);
    if (rc == 0)
        *out = tmp;
    return rc;
}

void plan_profile_from_nat(plan_profile *p, const ntcp_nat_profile_t *np, bool raw,
                           uint8_t nat_hops)
{
    memset(p, 0, sizeof *p);
    if (!np)
        return;
    const ntcp_nat_behaviour_t *src[PLAN_NBEHAVIOUR] = {&np->tcp4, &np->udp4, &np->tcp6, &np->udp6};
    unsigned need[PLAN_NBEHAVIOUR] = {NTCP_DISCOVER_TCP | NTCP_DISCOVER_IPV4,
                                      NTCP_DISCOVER_UDP | NTCP_DISCOVER_IPV4,
                                      NTCP_DISCOVER_TCP | NTCP_DISCOVER_IPV6,
                                      NTCP_DISCOVER_UDP | NTCP_DISCOVER_IPV6};
    for (int k = 0; k < PLAN_NBEHAVIOUR; k++) {
        if ((np->flags & need[k]) != need[k] || src[k]->reach == NTCP_REACH_UNKNOWN)
            continue;
        p->has[k] = true;
        ntcp_nat_behaviour_t *b = &p->b[k];
        b->reach = src[k]->reach;
        b->mapping = src[k]->mapping;
        b->filtering = src[k]->filtering;
        b->ports = src[k]->ports;
        b->delta = src[k]->ports == NTCP_PORTS_SEQUENTIAL ? src[k]->delta : 0;
        b->hairpin = src[k]->hairpin;
        b->syn = src[k]->syn;
        b->lifetime_s = src[k]->lifetime_s;
    }
    p->raw = raw;
    p->rtt_ms = np->rtt_ms;
    p->nat_hops = nat_hops;
}
