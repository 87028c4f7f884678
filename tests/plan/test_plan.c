/*
 * test_plan.c: the traversal planner, table-driven over every pair of lab
 * personalities x SYN answer x hairpin (and same-NAT, double-NAT, unknown
 * cases): both ends' plans must be complementary, follow the rules of
 * docs/traversal.md, and fail honestly where no method can work. Also the
 * profile blob's encoding and its decoder's refusal of bad input.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "plan.h"

/* ---- Profiles ---- */

typedef struct prof {
    char name[64];
    ntcp_reach_t reach;
    ntcp_nat_dep_t mapping, filtering;
    ntcp_port_alloc_t ports;
    int delta;
    ntcp_tristate_t hairpin;
    ntcp_syn_answer_t syn;
} prof;

#define EI NTCP_DEP_ENDPOINT_INDEPENDENT
#define AD NTCP_DEP_ADDRESS
#define APD NTCP_DEP_ADDRESS_PORT

typedef struct personality {
    const char *name;
    ntcp_reach_t reach;
    ntcp_nat_dep_t mapping, filtering;
    ntcp_port_alloc_t ports;
    int delta;
} personality;

/* The lab's personalities as discovery classifies them (docs/lab.md). */
static const personality personalities[] = {
    {"none", NTCP_REACH_OPEN, EI, NTCP_DEP_NONE, NTCP_PORTS_PRESERVED, 0},
    {"fw", NTCP_REACH_FIREWALL, EI, APD, NTCP_PORTS_PRESERVED, 0},
    {"full-cone", NTCP_REACH_NAT, EI, EI, NTCP_PORTS_PRESERVED, 0},
    {"restricted-cone", NTCP_REACH_NAT, EI, AD, NTCP_PORTS_PRESERVED, 0},
    {"port-restricted", NTCP_REACH_NAT, EI, APD, NTCP_PORTS_PRESERVED, 0},
    {"symmetric-seq", NTCP_REACH_NAT, APD, APD, NTCP_PORTS_SEQUENTIAL, 1},
    {"symmetric-seq2", NTCP_REACH_NAT, APD, APD, NTCP_PORTS_SEQUENTIAL, 2},
    {"symmetric-random", NTCP_REACH_NAT, APD, APD, NTCP_PORTS_RANDOM, 0},
    /* double NAT: full cone behind a port-restricted CGN (lab verify table) */
    {"double", NTCP_REACH_NAT, EI, APD, NTCP_PORTS_RANDOM, 0},
    /* not in the lab: address-dependent mapping, sequential; unknown fields */
    {"addr-dep-seq", NTCP_REACH_NAT, AD, AD, NTCP_PORTS_SEQUENTIAL, 1},
    {"unknown-mapping", NTCP_REACH_NAT, NTCP_DEP_UNKNOWN, NTCP_DEP_UNKNOWN, NTCP_PORTS_UNKNOWN, 0},
    {"blocked", NTCP_REACH_BLOCKED, NTCP_DEP_UNKNOWN, NTCP_DEP_UNKNOWN, NTCP_PORTS_UNKNOWN, 0},
};
#define NPERS (sizeof personalities / sizeof personalities[0])

static const ntcp_syn_answer_t syns[] = {NTCP_SYN_DROPPED, NTCP_SYN_RST, NTCP_SYN_ICMP,
                                         NTCP_SYN_UNKNOWN};
static const ntcp_tristate_t hairpins[] = {NTCP_YES, NTCP_NO};

#define MAXPROF (NPERS * 4 * 2)
static prof profs[MAXPROF];
static size_t nprofs;

static void make_profiles(void)
{
    nprofs = 0;
    for (size_t p = 0; p < NPERS; p++)
        for (size_t s = 0; s < 4; s++)
            for (size_t h = 0; h < 2; h++) {
                prof *x = &profs[nprofs++];
                const personality *q = &personalities[p];
                snprintf(x->name, sizeof x->name, "%s/%s/hairpin=%s", q->name, ntcp_syn_name(syns[s]),
                         ntcp_tristate_name(hairpins[h]));
                x->reach = q->reach;
                x->mapping = q->mapping;
                x->filtering = q->filtering;
                x->ports = q->ports;
                x->delta = q->delta;
                x->hairpin = hairpins[h];
                /* An open host lets the connect-back in. */
                x->syn = q->filtering == NTCP_DEP_NONE || q->filtering == EI ? NTCP_SYN_ACCEPTED
                                                                              : syns[s];
            }
}

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
    return ss;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

static bool same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    return ntcp_sockaddr_same_ip((const struct sockaddr *)a, (const struct sockaddr *)b);
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    return ntcp_sockaddr_equal((const struct sockaddr *)a, (const struct sockaddr *)b);
}

/* Two sites (a behind nat-a, b behind nat-b), or both behind nat-a. */
static void make_end(plan_end *e, const prof *p, int site, bool same_nat, bool raw, uint32_t rtt,
                     uint8_t hops)
{
    memset(e, 0, sizeof *e);
    e->tcp.reach = p->reach;
    e->tcp.mapping = p->mapping;
    e->tcp.filtering = p->filtering;
    e->tcp.ports = p->ports;
    e->tcp.delta = p->delta;
    e->tcp.hairpin = p->hairpin;
    e->tcp.syn = p->syn;
    bool natted = p->reach == NTCP_REACH_NAT;
    if (same_nat) {
        e->public_addr = v4("203.0.113.1", (uint16_t)(site == 0 ? 40001 : 40003));
        e->priv[0] = v4(site == 0 ? "10.0.1.10" : "10.0.1.11", 5000);
    } else if (natted) {
        e->public_addr = v4(site == 0 ? "203.0.113.1" : "203.0.113.2", (uint16_t)(40001 + site));
        e->priv[0] = v4(site == 0 ? "10.0.1.10" : "10.0.2.10", 5000);
    } else {
        e->public_addr = v4(site == 0 ? "198.51.100.10" : "198.51.100.74", 5000);
        e->priv[0] = e->public_addr;
    }
    e->npriv = 1;
    e->raw = raw;
    e->rtt_ms = rtt;
    e->nat_hops = hops;
}

/* ---- An independent oracle: is the pair traversable at all? ----
 * Written from the physics (docs/traversal.md, "What can work"), not from
 * the planner's code. */

static bool lets_in(const prof *p)
{
    return p->reach == NTCP_REACH_OPEN || p->filtering == NTCP_DEP_NONE || p->filtering == EI;
}

static bool unpredictable(const prof *p)
{
    if (p->reach != NTCP_REACH_NAT)
        return false;
    if (p->mapping == EI || p->mapping == NTCP_DEP_UNKNOWN)
        return false;
    return !(p->ports == NTCP_PORTS_SEQUENTIAL && p->delta != 0);
}

static bool traversable(const prof *a, const prof *b, bool same_nat)
{
    if (a->reach == NTCP_REACH_BLOCKED || b->reach == NTCP_REACH_BLOCKED)
        return false;
    if (same_nat)
        return true; /* the private addresses */
    if (lets_in(a) || lets_in(b))
        return true;
    bool ra = unpredictable(a), rb = unpredictable(b);
    if (!ra && !rb)
        return true;
    if (ra && rb)
        return false;
    /* One unpredictable end: a peer that filters by address alone (and
     * whose own port is known) lets its SYN in; a peer whose mapping is
     * known (not assumed) can be met by a birthday search. */
    const prof *other = ra ? b : a;
    bool known = other->reach != NTCP_REACH_NAT || other->mapping == EI;
    return (other->filtering == AD && !unpredictable(other)) || known;
}

/* ---- Complementarity and rules ---- */

static bool complement(plan_role_t a, plan_role_t b)
{
    return (a == PLAN_CONNECT && (b == PLAN_ACCEPT || b == PLAN_PUNCH)) ||
           (b == PLAN_CONNECT && (a == PLAN_ACCEPT || a == PLAN_PUNCH)) ||
           (a == PLAN_SIMOPEN && b == PLAN_SIMOPEN) || (a == PLAN_RAW_SYN && b == PLAN_RAW_SYN) ||
           (a == PLAN_SPRAY && b == PLAN_GUESS) || (a == PLAN_GUESS && b == PLAN_SPRAY);
}

static struct sockaddr_storage nth(const plan_ports *p, unsigned k)
{
    struct sockaddr_storage ss = p->addr;
    ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)(port_of(&p->addr) + (int32_t)k * p->step));
    return ss;
}

static bool in_ports(const struct sockaddr_storage *a, const plan_ports *set)
{
    for (unsigned k = 0; k < set->count; k++) {
        struct sockaddr_storage x = nth(set, k);
        if (same_addr(a, &x))
            return true;
    }
    return false;
}

static bool ports_equal(const plan_ports *a, const plan_ports *b)
{
    return a->count == b->count && a->step == b->step &&
           (a->count == 0 || same_addr(&a->addr, &b->addr));
}

static char msg[9000];

static void pair_fail(const char *what, const char *pair, const plan *x, const plan *y)
{
    char tx[4096], ty[4096];
    plan_format(x, false, tx, sizeof tx);
    plan_format(y, false, ty, sizeof ty);
    snprintf(msg, sizeof msg, "%s: %s\ninitiator:\n%starget:\n%s", pair, what, tx, ty);
    fail_msg("%s", msg);
}

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            pair_fail(what, pair, PI, PT);                                                          \
    } while (0)

/* Where an end is seen from a given local port: SESSION = its public
 * address; FRESH = a window at predicted ports; ANY = unknown. */
static void check_ext(const plan_attempt *a, const plan_end *e, const char *pair, const plan *PI,
                      const plan *PT)
{
    switch (a->local) {
    case PLAN_LOCAL_ANY:
        CHECK(a->ext.addr.ss_family == 0 || a->role == PLAN_ACCEPT ||
                  (a->role == PLAN_SPRAY && port_of(&a->ext.addr) == 0),
              "ANY port must have no known ext");
        break;
    case PLAN_LOCAL_SESSION:
        CHECK(a->ext.count == 1, "session port: one ext");
        /* Only an end whose session mapping holds for every destination may
         * send from it expecting to be seen at its public address. */
        CHECK(a->role == PLAN_ACCEPT || e->tcp.reach != NTCP_REACH_NAT || e->tcp.mapping == EI ||
                  e->tcp.mapping == NTCP_DEP_UNKNOWN,
              "SYNs from the session port of a dependent mapping");
        CHECK(same_addr(&a->ext.addr, &e->public_addr) ||
                  (a->role == PLAN_ACCEPT && a->method == NTCP_METHOD_SAME_LAN),
              "session port must be seen at the public address");
        break;
    case PLAN_LOCAL_FRESH: {
        CHECK(e->tcp.ports == NTCP_PORTS_SEQUENTIAL, "fresh port only on a sequential NAT");
        CHECK(a->ext.step == e->tcp.delta, "window step is the delta");
        CHECK(a->ext.count >= 2, "a window of predicted ports");
        int off = (int)port_of(&a->ext.addr) - (int)port_of(&e->public_addr);
        CHECK(off != 0 && off % e->tcp.delta == 0 && off / e->tcp.delta >= 1,
              "window starts at a later mapping");
        break;
    }
    }
}

static void check_pair(const prof *A, const prof *B, bool same_nat, bool raw, uint32_t rtt,
                       uint8_t hops)
{
    char pair[256];
    snprintf(pair, sizeof pair, "%s%s <-> %s%s", A->name, same_nat ? " (same NAT)" : "", B->name,
             raw ? " raw" : "");
    plan_input in;
    plan_input_init(&in);
    make_end(&in.me, A, 0, same_nat, raw, rtt, hops);
    make_end(&in.peer, B, 1, same_nat, raw, rtt, hops);
    in.initiator = true;
    in.raw_enabled = raw;
    plan pi, pt;
    int ri = plan_make(&in, &pi);
    plan_input rev = in;
    rev.me = in.peer;
    rev.peer = in.me;
    rev.initiator = false;
    int rt = plan_make(&rev, &pt);
    const plan *PI = &pi, *PT = &pt;

    /* Pure: the same input gives the very same plan. */
    plan again;
    plan_make(&in, &again);
    CHECK(memcmp(&again, &pi, sizeof pi) == 0, "not deterministic");

    CHECK(ri == rt, "the two ends disagree on the outcome");
    bool ok = traversable(A, B, same_nat);
    if (!ok) {
        CHECK(ri == NTCP_EUNREACHABLE && pi.status == NTCP_EUNREACHABLE, "should be impossible");
        CHECK(pi.n == 0 && pt.n == 0, "impossible plan with attempts");
        CHECK(strlen(pi.reason) > 20 && strcmp(pi.reason, pt.reason) == 0, "reason");
        bool random = (unpredictable(A) || unpredictable(B)) && A->reach != NTCP_REACH_BLOCKED &&
                      B->reach != NTCP_REACH_BLOCKED;
        CHECK(!random || strstr(pi.reason, "random") != NULL, "reason names the random mapping");
        CHECK(!random || strstr(pi.reason, "relay") != NULL, "reason says a relay is needed");
        return;
    }
    CHECK(ri == 0 && pi.status == 0, "should be possible");
    CHECK(pi.n > 0 && pi.n == pt.n, "both ends have the same number of attempts");
    CHECK(pi.deadline_ms == pt.deadline_ms && pi.rtt_ms == pt.rtt_ms, "timings agree");

    const plan_end *E[2] = {&in.me, &in.peer};
    for (size_t k = 0; k < pi.n; k++) {
        const plan_attempt *a = &pi.a[k];
        const plan_attempt *b = NULL;
        for (size_t j = 0; j < pt.n; j++)
            if (pt.a[j].id == a->id)
                b = &pt.a[j];
        CHECK(b != NULL, "attempt missing on the target");
        CHECK(a->method == b->method, "method differs");
        CHECK(complement(a->role, b->role), "roles are not complementary");
        CHECK(a->stop_ms == b->stop_ms && a->stop_ms > a->start_ms && b->stop_ms > b->start_ms,
              "stop times");
        CHECK(a->stop_ms <= pi.deadline_ms, "stop after the deadline");
        if (k > 0)
            CHECK(pi.a[k - 1].start_ms <= a->start_ms, "attempts ordered by start");
        check_ext(a, E[0], pair, &pi, &pt);
        check_ext(b, E[1], pair, &pi, &pt);
        for (int side = 0; side < 2; side++) {
            const plan_attempt *x = side ? b : a, *y = side ? a : b;
            const plan_end *ye = E[!side];
            switch (x->role) {
            case PLAN_CONNECT:
                CHECK(x->target.count >= 1, "connect without target");
                /* Every SYN goes where the other end is (or will be) seen. */
                for (unsigned t = 0; t < x->target.count; t++) {
                    struct sockaddr_storage to = nth(&x->target, t);
                    CHECK(in_ports(&to, &y->ext), "connect target is not where the peer is seen");
                }
                if (y->role == PLAN_PUNCH)
                    CHECK(x->start_ms > y->start_ms, "connect before the punch");
                else
                    /* The accept is up when the connect starts (a same-lan
                     * connect through the hairpin starts a margin later). */
                    CHECK(x->start_ms >= y->start_ms, "connect before the accept");
                if (x->local == PLAN_LOCAL_FRESH)
                    CHECK(x->repeats == 1, "a re-issue from a predicted port is a new mapping");
                break;
            case PLAN_ACCEPT:
                CHECK(x->local == PLAN_LOCAL_SESSION, "accept on the session port");
                CHECK(x->target.addr.ss_family == 0 || same_ip(&x->target.addr, &ye->public_addr),
                      "accept expects the peer's public address");
                break;
            case PLAN_PUNCH:
                CHECK(x->ttl == (hops ? hops + 1 : PLAN_TTL_LEARN), "punch TTL");
                /* The hold: when the connector's SYN leaves, so that the
                 * ends' start skew may be half a round trip either way; up
                 * to 3 ms later on the shortest paths. None for a connector
                 * from any port (the listener takes its SYN). */
                if (x->peer_any_port)
                    CHECK(x->hold_ms == 0, "a hold where the listener takes the SYN");
                else
                    CHECK(y->role == PLAN_CONNECT && x->hold_ms >= y->start_ms &&
                              x->hold_ms - y->start_ms == (pi.rtt_ms < 6 ? 3 - pi.rtt_ms / 2 : 0),
                          "the hold is not when the connector's SYN leaves");
                if (y->ext.addr.ss_family)
                    CHECK(ports_equal(&x->target, &y->ext), "punch aims where the connector is seen");
                else
                    CHECK(x->target.count == 1 && same_ip(&x->target.addr, &ye->public_addr) &&
                              E[side]->tcp.filtering == AD,
                          "punch to an unknown port needs an address-dependent filter");
                break;
            case PLAN_SPRAY:
                CHECK(x->method == NTCP_METHOD_BIRTHDAY && y->role == PLAN_GUESS, "spray without guesses");
                CHECK(ports_equal(&x->target, &y->ext) && x->target.count == 1,
                      "spray aims at the guessing end's one port");
                CHECK(x->sockets >= 64 && x->ttl == (hops ? hops + 1 : PLAN_TTL_LEARN), "spray size, TTL");
                CHECK(unpredictable(E[side] == &in.me ? A : B), "spray from a predictable end");
                break;
            case PLAN_GUESS:
                CHECK(x->local == PLAN_LOCAL_SESSION, "guesses from the session port");
                CHECK(same_ip(&x->target.addr, &ye->public_addr), "guesses at the spraying end's address");
                CHECK(x->guesses >= 256 && x->pps > 0 && x->pps <= 2000 && x->guess_ms >= 100,
                      "guess count, rate, wait");
                CHECK(x->start_ms > y->start_ms, "guesses before the spray");
                CHECK(x->start_ms + (uint32_t)x->guesses * 1000 / x->pps <= x->stop_ms,
                      "the guesses do not fit before the stop");
                break;
            case PLAN_SIMOPEN:
            case PLAN_RAW_SYN:
                CHECK(ports_equal(&x->target, &y->ext), "simultaneous open aims at the peer's ext");
                CHECK(x->start_ms == y->start_ms, "simultaneous open starts together");
                CHECK(x->role != PLAN_SIMOPEN || (x->repeats > 1 && x->repeat_ms >= 50),
                      "simultaneous open is repeated");
                break;
            }
        }
        CHECK(a->method != NTCP_METHOD_SAME_LAN || same_nat, "same-lan across sites");
        CHECK((a->method != NTCP_METHOD_STUNT1 && a->method != NTCP_METHOD_NATBLASTER) || raw,
              "raw method without raw sockets");
    }
    /* On each end, attempts that send from the session port take turns. */
    for (int side = 0; side < 2; side++) {
        const plan *p = side ? &pt : &pi;
        for (size_t i = 0; i < p->n; i++)
            for (size_t j = i + 1; j < p->n; j++) {
                const plan_attempt *x = &p->a[i], *y = &p->a[j];
                if (x->local != PLAN_LOCAL_SESSION || y->local != PLAN_LOCAL_SESSION ||
                    x->role == PLAN_ACCEPT || y->role == PLAN_ACCEPT)
                    continue;
                CHECK(x->stop_ms <= y->start_ms || y->stop_ms <= x->start_ms,
                      "two attempts hold the session port at once");
            }
    }

    /* The rules of docs/traversal.md. */
    const plan_attempt *first = &pi.a[0];
    bool in_a = lets_in(A), in_b = lets_in(B);
    if (same_nat && pi.a[0].method != NTCP_METHOD_SAME_LAN)
        CHECK(0, "same NAT: the private addresses first");
    if (!same_nat) {
        if (in_b)
            CHECK(first->method == NTCP_METHOD_DIRECT, "reachable target: direct first");
        else if (in_a)
            CHECK(first->method == NTCP_METHOD_REVERSAL, "reachable initiator: reversal first");
        if (in_a || in_b) {
            CHECK(pi.n == (size_t)(in_a + in_b), "only direct/reversal when one end is reachable");
        } else {
            bool rst = A->syn == NTCP_SYN_RST || A->syn == NTCP_SYN_UNKNOWN ||
                       B->syn == NTCP_SYN_RST || B->syn == NTCP_SYN_UNKNOWN;
            bool sim_ok = !unpredictable(A) && !unpredictable(B) &&
                          !(A->ports == NTCP_PORTS_SEQUENTIAL && A->mapping != EI &&
                            B->ports == NTCP_PORTS_SEQUENTIAL && B->mapping != EI);
            if (rst)
                CHECK(first->role != PLAN_SIMOPEN, "an RST-answering NAT: no plain simultaneous open first");
            if (!rst && sim_ok)
                CHECK(first->role == PLAN_SIMOPEN, "no RST: simultaneous open first");
            /* A low-TTL SYN that may reach an RST-answering NAT ends its
             * sender's hole: punch from the side facing a quieter NAT when
             * there is one. */
            for (size_t k = 0; k < pi.n; k++) {
                if (pi.a[k].role != PLAN_PUNCH && pt.a[k].role != PLAN_PUNCH)
                    continue;
                const prof *facing = pi.a[k].role == PLAN_PUNCH ? B : A;
                const prof *other = facing == B ? A : B;
                bool facing_rst = facing->syn == NTCP_SYN_RST || facing->syn == NTCP_SYN_UNKNOWN;
                bool other_rst = other->syn == NTCP_SYN_RST || other->syn == NTCP_SYN_UNKNOWN;
                bool other_can = !unpredictable(facing) && !unpredictable(other);
                if (facing_rst && !other_rst && other_can)
                    CHECK(0, "the first punch faces an RST-answering NAT when the other need not");
                break;
            }
        }
    }
}

/* ---- A geometric NAT simulator ----
 * Plays each attempt of both plans through two modelled NATs (mappings made
 * as each SYN leaves, holes per filter), ignoring races, with drift (ports
 * taken by other hosts) on sequential NATs and random ports on random ones.
 * It knows nothing of the planner's own idea of where an end is seen, so it
 * checks that the windows and roles actually meet. */

typedef struct hole {
    uint16_t ext;
    struct sockaddr_storage remote;
} hole;

typedef struct simnat {
    const plan_end *e;
    int kind; /* 0 no translation, 1 endpoint-independent, 2 sequential, 3 random */
    bool open, addr_only;
    unsigned n;
    int drift;
    uint32_t rng;
    hole holes[512];
    size_t nh;
} simnat;

static void sim_init(simnat *N, const plan_end *e, int drift, uint32_t seed)
{
    memset(N, 0, sizeof *N);
    N->e = e;
    const ntcp_nat_behaviour_t *b = &e->tcp;
    if (b->reach == NTCP_REACH_OPEN || b->reach == NTCP_REACH_FIREWALL)
        N->kind = 0;
    else if (b->mapping == EI || b->mapping == NTCP_DEP_UNKNOWN)
        N->kind = 1;
    else if (b->ports == NTCP_PORTS_SEQUENTIAL && b->delta)
        N->kind = 2;
    else
        N->kind = 3;
    N->open = b->reach == NTCP_REACH_OPEN || b->filtering == NTCP_DEP_NONE || b->filtering == EI;
    N->addr_only = b->filtering == AD;
    N->drift = drift;
    N->rng = seed;
}

static uint16_t sim_rand(simnat *N)
{
    N->rng = N->rng * 1103515245u + 12345u;
    return (uint16_t)(1024 + (N->rng >> 8) % 60000);
}

/* A SYN leaves from `local` towards `to`: the external port it gets. */
static uint16_t sim_map(simnat *N, plan_local_t local, const struct sockaddr_storage *to)
{
    uint16_t pub = port_of(&N->e->public_addr), ext;
    if (local == PLAN_LOCAL_SESSION && N->kind <= 1)
        ext = pub;
    else if (N->kind == 2)
        ext = (uint16_t)(pub + (int)(++N->n + (unsigned)N->drift) * N->e->tcp.delta);
    else
        ext = sim_rand(N);
    if (N->nh < 512) {
        N->holes[N->nh].ext = ext;
        N->holes[N->nh].remote = *to;
        N->nh++;
    }
    return ext;
}

/* Does a SYN from src reach a listener behind N at port dst? listen[] are
 * the external ports of the receiving half's sockets. */
static bool sim_admits(const simnat *N, uint16_t dst, const struct sockaddr_storage *src,
                       const uint16_t *listen, size_t nlisten)
{
    bool listening = false;
    for (size_t i = 0; i < nlisten; i++)
        listening |= listen[i] == dst;
    if (!listening)
        return false;
    if (N->open)
        return true;
    for (size_t i = 0; i < N->nh; i++)
        if (N->holes[i].ext == dst &&
            (N->addr_only ? same_ip(&N->holes[i].remote, src) : same_addr(&N->holes[i].remote, src)))
            return true;
    return false;
}

typedef struct simhalf {
    const plan_attempt *a;
    uint16_t ext[PLAN_MAX_WINDOW + 1];
    struct sockaddr_storage to[PLAN_MAX_WINDOW];
    size_t n;
} simhalf;

static void sim_send(simnat *N, simhalf *h)
{
    h->n = 0;
    if (h->a->role == PLAN_ACCEPT)
        return;
    for (unsigned k = 0; k < h->a->target.count && k < PLAN_MAX_WINDOW; k++) {
        h->to[h->n] = nth(&h->a->target, k);
        h->ext[h->n] = sim_map(N, h->a->local, &h->to[h->n]);
        h->n++;
    }
}

/* Did any SYN of s (behind S) get through R to a listener of r? */
static bool sim_through(const simnat *S, const simhalf *s, const simnat *R, const simhalf *r)
{
    uint16_t listen[PLAN_MAX_WINDOW + 1];
    size_t nl = 0;
    if (r->a->local == PLAN_LOCAL_SESSION)
        listen[nl++] = port_of(&R->e->public_addr);
    for (size_t i = 0; i < r->n && nl < PLAN_MAX_WINDOW + 1; i++)
        listen[nl++] = r->ext[i];
    for (size_t i = 0; i < s->n; i++) {
        if (!same_ip(&s->to[i], &R->e->public_addr))
            continue;
        struct sockaddr_storage src = S->e->public_addr;
        ((struct sockaddr_in *)&src)->sin_port = htons(s->ext[i]);
        if (sim_admits(R, port_of(&s->to[i]), &src, listen, nl))
            return true;
    }
    return false;
}

/* Birthday: the spraying end's NAT maps each of its sockets to a random
 * port (holes towards the guessing end's one address); a guess connects
 * when it names one of them, coming from exactly that address. */
static bool sim_birthday(simnat *NS, const plan_attempt *sp, simnat *NG, const plan_attempt *gu)
{
    uint16_t ext[1024];
    unsigned n = sp->sockets < 1024 ? sp->sockets : 1024;
    for (unsigned j = 0; j < n; j++)
        ext[j] = sim_map(NS, PLAN_LOCAL_ANY, &sp->target.addr);
    struct sockaddr_storage src = NG->e->public_addr; /* the guesses' source: the session port */
    for (unsigned g = 0; g < gu->guesses; g++) {
        uint16_t port = sim_rand(NG);
        for (unsigned j = 0; j < n; j++)
            if (ext[j] == port && same_ip(&gu->target.addr, &NS->e->public_addr)) {
                uint16_t listen[1] = {port};
                if (sim_admits(NS, port, &src, listen, 1))
                    return true;
            }
    }
    return false;
}

/* Plays both plans; returns the id of the first attempt that connects, 0
 * if none does. */
static unsigned simulate(const plan *pi, const plan *pt, const plan_end *ei, const plan_end *et,
                         int di, int dt, uint32_t seed)
{
    simnat N[2];
    sim_init(&N[0], ei, di, seed);
    sim_init(&N[1], et, dt, seed ^ 0x9e3779b9u);
    for (size_t k = 0; k < pi->n; k++) {
        const plan_attempt *a = &pi->a[k], *b = NULL;
        for (size_t j = 0; j < pt->n; j++)
            if (pt->a[j].id == a->id)
                b = &pt->a[j];
        if (!b || a->method == NTCP_METHOD_SAME_LAN)
            continue;
        if (a->method == NTCP_METHOD_BIRTHDAY) {
            bool sa = a->role == PLAN_SPRAY;
            if (sim_birthday(&N[sa ? 0 : 1], sa ? a : b, &N[sa ? 1 : 0], sa ? b : a))
                return a->id;
            continue;
        }
        simhalf h[2] = {{.a = a}, {.a = b}};
        /* The puncher's SYNs leave first; otherwise the initiator's. */
        int first = b->role == PLAN_PUNCH ? 1 : 0;
        sim_send(&N[first], &h[first]);
        sim_send(&N[!first], &h[!first]);
        bool ok;
        if (a->role == PLAN_SIMOPEN || a->role == PLAN_RAW_SYN)
            /* Both SYNs must get through: each NAT needs its own hole. */
            ok = sim_through(&N[0], &h[0], &N[1], &h[1]) && sim_through(&N[1], &h[1], &N[0], &h[0]);
        else {
            int c = a->role == PLAN_CONNECT ? 0 : 1;
            ok = sim_through(&N[c], &h[c], &N[!c], &h[!c]);
        }
        if (ok)
            return a->id;
    }
    return 0;
}

static void sim_pair(const prof *A, const prof *B)
{
    plan_input in;
    plan_input_init(&in);
    make_end(&in.me, A, 0, false, false, 50, 1);
    make_end(&in.peer, B, 1, false, false, 50, 1);
    in.initiator = true;
    plan pi, pt;
    if (plan_make(&in, &pi) != 0)
        return;
    plan_input rev = in;
    rev.me = in.peer;
    rev.peer = in.me;
    rev.initiator = false;
    assert_int_equal(plan_make(&rev, &pt), 0);
    /* Drift below half the window on each NAT: combined below 4 for two
     * sequential NATs, which the diagonal covers. */
    static const int drifts[][2] = {{0, 0}, {1, 0}, {0, 1}, {2, 1}, {0, 3}, {3, 0}};
    for (size_t d = 0; d < sizeof drifts / sizeof drifts[0]; d++)
        for (uint32_t seed = 1; seed <= 3; seed++) {
            unsigned won = simulate(&pi, &pt, &in.me, &in.peer, drifts[d][0], drifts[d][1], seed);
            if (!won) {
                char t[4096];
                plan_format(&pi, false, t, sizeof t);
                fail_msg("%s <-> %s, drift %d/%d: no attempt connects in the simulator\n%s", A->name,
                         B->name, drifts[d][0], drifts[d][1], t);
            }
            /* With no drift, the first attempt is the one that works. */
            if (drifts[d][0] == 0 && drifts[d][1] == 0 && won != pi.a[0].id)
                fail_msg("%s <-> %s: the first attempt does not connect (attempt %u does)", A->name,
                         B->name, won);
        }
}

static void test_simulated(void **state)
{
    (void)state;
    make_profiles();
    for (size_t i = 0; i < nprofs; i++)
        for (size_t j = 0; j < nprofs; j++)
            sim_pair(&profs[i], &profs[j]);
}

static void test_every_pair(void **state)
{
    (void)state;
    make_profiles();
    size_t checked = 0;
    for (size_t i = 0; i < nprofs; i++)
        for (size_t j = 0; j < nprofs; j++) {
            check_pair(&profs[i], &profs[j], false, false, 50, 0);
            check_pair(&profs[i], &profs[j], false, true, 120, 1);
            /* RTTs unknown, tiny and absurd: the same rules hold. */
            check_pair(&profs[i], &profs[j], false, false, (uint32_t)(i + j) % 3 == 0 ? 0 : 1, 0);
            check_pair(&profs[i], &profs[j], false, true, 100000, 3);
            checked += 4;
            /* Same NAT: both ends behind one NAT, so one personality. */
            if (strncmp(profs[i].name, profs[j].name, strcspn(profs[i].name, "/")) == 0 &&
                profs[i].reach == NTCP_REACH_NAT && profs[i].syn == profs[j].syn &&
                profs[i].hairpin == profs[j].hairpin) {
                check_pair(&profs[i], &profs[j], true, false, 10, 2);
                checked++;
            }
        }
    assert_true(checked > 2 * nprofs * nprofs);
}

/* ---- Named rows: the docs/traversal.md table, first methods ---- */

typedef struct row {
    const char *a, *b; /* personality names */
    ntcp_syn_answer_t sa, sb;
    const char *methods; /* the initiator's attempts' methods, space-separated; NULL impossible */
    const char *roles;   /* the initiator's roles */
} row;

#define D NTCP_SYN_DROPPED
#define R NTCP_SYN_RST
#define I NTCP_SYN_ICMP

static const row rows[] = {
    {"none", "none", D, D, "direct reversal", "connect accept"},
    {"port-restricted", "none", D, D, "direct", "connect"},
    {"none", "symmetric-random", D, D, "reversal", "accept"},
    {"full-cone", "port-restricted", R, R, "reversal", "accept"},
    {"port-restricted", "port-restricted", D, D, "p2pnat stunt2 stunt2", "simopen punch connect"},
    {"port-restricted", "port-restricted", I, D, "p2pnat stunt2 stunt2", "simopen punch connect"},
    /* b's NAT answers RST: b punches (its SYN meets a's quiet NAT), a connects */
    {"port-restricted", "port-restricted", D, R, "stunt2 p2pnat stunt2", "connect simopen punch"},
    {"port-restricted", "port-restricted", R, D, "stunt2 p2pnat stunt2", "punch simopen connect"},
    {"fw", "port-restricted", R, R, "stunt2 p2pnat stunt2", "punch simopen connect"},
    /* the address-dependent end punches; the random end connects from any port */
    {"restricted-cone", "symmetric-random", D, D, "stunt2", "punch"},
    {"symmetric-random", "restricted-cone", R, R, "stunt2", "connect"},
    {"symmetric-seq", "port-restricted", D, D, "predict predict predict", "simopen punch connect"},
    {"symmetric-seq", "symmetric-seq", D, D, "predict predict", "punch connect"},
    /* the random end against a known port that filters by port: birthday */
    {"symmetric-random", "port-restricted", D, D, "birthday", "spray"},
    {"symmetric-random", "fw", R, R, "birthday", "spray"},
    {"port-restricted", "symmetric-random", I, R, "birthday", "guess"},
    {"symmetric-seq", "symmetric-random", D, D, NULL, NULL},
    {"symmetric-random", "symmetric-random", D, D, NULL, NULL},
    {"blocked", "none", D, D, NULL, NULL},
};

static const char *role_word(plan_role_t r)
{
    switch (r) {
    case PLAN_CONNECT: return "connect";
    case PLAN_ACCEPT: return "accept";
    case PLAN_SIMOPEN: return "simopen";
    case PLAN_PUNCH: return "punch";
    case PLAN_RAW_SYN: return "raw";
    case PLAN_SPRAY: return "spray";
    case PLAN_GUESS: return "guess";
    }
    return "?";
}

static const personality *find_pers(const char *name)
{
    for (size_t i = 0; i < NPERS; i++)
        if (strcmp(personalities[i].name, name) == 0)
            return &personalities[i];
    fail_msg("no personality %s", name);
    return NULL;
}

static prof prof_of(const char *name, ntcp_syn_answer_t syn)
{
    const personality *q = find_pers(name);
    prof p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "%s", name);
    p.reach = q->reach;
    p.mapping = q->mapping;
    p.filtering = q->filtering;
    p.ports = q->ports;
    p.delta = q->delta;
    p.hairpin = NTCP_NO;
    p.syn = q->filtering == NTCP_DEP_NONE || q->filtering == EI ? NTCP_SYN_ACCEPTED : syn;
    return p;
}

static void test_rows(void **state)
{
    (void)state;
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        prof A = prof_of(rows[r].a, rows[r].sa), B = prof_of(rows[r].b, rows[r].sb);
        plan_input in;
        plan_input_init(&in);
        make_end(&in.me, &A, 0, false, false, 50, 0);
        make_end(&in.peer, &B, 1, false, false, 50, 0);
        in.initiator = true;
        plan p;
        int rc = plan_make(&in, &p);
        char got_m[256] = "", got_r[256] = "";
        for (size_t k = 0; k < p.n; k++) {
            snprintf(got_m + strlen(got_m), sizeof got_m - strlen(got_m), "%s%s", k ? " " : "",
                     ntcp_method_name(p.a[k].method));
            snprintf(got_r + strlen(got_r), sizeof got_r - strlen(got_r), "%s%s", k ? " " : "",
                     role_word(p.a[k].role));
        }
        if (!rows[r].methods) {
            if (rc != NTCP_EUNREACHABLE)
                fail_msg("%s/%s vs %s/%s: expected impossible, got %s", rows[r].a,
                         ntcp_syn_name(rows[r].sa), rows[r].b, ntcp_syn_name(rows[r].sb), got_m);
            continue;
        }
        if (rc != 0 || strcmp(got_m, rows[r].methods) != 0 || strcmp(got_r, rows[r].roles) != 0)
            fail_msg("%s/%s vs %s/%s: expected [%s] [%s], got [%s] [%s] (rc %d: %s)", rows[r].a,
                     ntcp_syn_name(rows[r].sa), rows[r].b, ntcp_syn_name(rows[r].sb),
                     rows[r].methods, rows[r].roles, got_m, got_r, rc, p.reason);
    }
}

/* The configuration's `methods`: the list parses by name, and a plan keeps
 * only the attempts of the methods allowed, or becomes impossible. */
static void test_methods(void **state)
{
    (void)state;
    unsigned m = 99;
    assert_int_equal(plan_methods_parse(NULL, &m), 0);
    assert_int_equal(m, 0);
    assert_int_equal(plan_methods_parse(" , ", &m), 0);
    assert_int_equal(m, 0);
    assert_int_equal(plan_methods_parse("stunt2, P2PNAT\tbirthday", &m), 0);
    assert_int_equal(m, PLAN_METHOD_BIT(NTCP_METHOD_STUNT2) | PLAN_METHOD_BIT(NTCP_METHOD_P2PNAT) |
                            PLAN_METHOD_BIT(NTCP_METHOD_BIRTHDAY));
    assert_int_equal(plan_methods_parse("stunt2,stunt", &m), NTCP_EINVAL);
    assert_int_equal(m, 0);
    assert_int_equal(plan_methods_parse("none", &m), NTCP_EINVAL);
    assert_int_equal(plan_methods_parse("same-lan", &m), 0);
    assert_int_equal(m, PLAN_METHOD_BIT(NTCP_METHOD_SAME_LAN));

    /* Two port-restricted NATs answering RST, both ends raw: stunt2, then
     * p2pnat, then a raw method, then stunt2 the other way. */
    prof A = prof_of("port-restricted", NTCP_SYN_RST), B = A;
    plan_input in;
    plan_input_init(&in);
    make_end(&in.me, &A, 0, false, true, 50, 0);
    make_end(&in.peer, &B, 1, false, true, 50, 0);
    in.initiator = true;
    in.raw_enabled = true;
    plan full, p;
    assert_int_equal(plan_make(&in, &full), 0);
    p = full;
    plan_keep_methods(&p, 0);
    assert_int_equal(p.n, full.n);
    assert_int_equal(plan_methods_parse("natblaster", &m), 0);
    plan_keep_methods(&p, m);
    assert_int_equal(p.status, 0);
    assert_true(p.n >= 1 && p.n < full.n);
    for (size_t k = 0; k < p.n; k++) {
        assert_int_equal(p.a[k].method, NTCP_METHOD_NATBLASTER);
        assert_int_equal(p.a[k].role, PLAN_RAW_SYN);
    }
    /* Timings unchanged: the kept attempt starts where it did in the full plan. */
    for (size_t k = 0; k < full.n; k++)
        if (full.a[k].method == NTCP_METHOD_NATBLASTER)
            assert_int_equal(full.a[k].start_ms, p.a[0].start_ms);
    /* Only methods this pair does not plan: impossible, and the reason
     * names what it needed. */
    p = full;
    assert_int_equal(plan_methods_parse("direct reversal", &m), 0);
    plan_keep_methods(&p, m);
    assert_int_equal(p.status, NTCP_EUNREACHABLE);
    assert_int_equal(p.n, 0);
    assert_non_null(strstr(p.reason, "stunt2"));
    assert_non_null(strstr(p.reason, "natblaster"));
    assert_non_null(strstr(p.reason, "methods"));
}

/* Port prediction: the window and the diagonal of two sequential NATs. */
static void test_prediction(void **state)
{
    (void)state;
    prof S = prof_of("symmetric-seq2", D), P = prof_of("port-restricted", D);
    plan_input in;
    plan_input_init(&in);
    make_end(&in.me, &S, 0, false, false, 50, 1);
    make_end(&in.peer, &P, 1, false, false, 50, 1);
    in.initiator = true;
    in.window = 4;
    plan p;
    assert_int_equal(plan_make(&in, &p), 0);
    /* First: simultaneous open; the sequential end sends one SYN from a
     * fresh port, seen at base + 2 .. base + 8. */
    assert_int_equal(p.a[0].role, PLAN_SIMOPEN);
    assert_int_equal(p.a[0].local, PLAN_LOCAL_FRESH);
    assert_int_equal(port_of(&p.a[0].ext.addr), 40003);
    assert_int_equal(p.a[0].ext.count, 4);
    assert_int_equal(p.a[0].ext.step, 2);
    assert_int_equal(port_of(&p.a[0].target.addr), 40002);
    /* Then the punch: one mapping later. */
    assert_int_equal(p.a[1].role, PLAN_PUNCH);
    assert_int_equal(port_of(&p.a[1].ext.addr), 40005);
    assert_int_equal(p.a[1].ttl, 2);

    /* Two sequential NATs: y's k-th SYN to x's (2k)-th port. */
    prof S1 = prof_of("symmetric-seq", D);
    make_end(&in.peer, &S1, 1, false, false, 50, 1);
    in.window = 8;
    assert_int_equal(plan_make(&in, &p), 0);
    assert_int_equal(p.a[0].role, PLAN_PUNCH);
    assert_int_equal(p.a[0].target.count, 8);
    assert_int_equal(p.a[0].target.step, 1);
    assert_int_equal(port_of(&p.a[0].target.addr), 40003);
    in.initiator = false;
    plan_input rev = in;
    rev.me = in.peer;
    rev.peer = in.me;
    assert_int_equal(plan_make(&rev, &p), 0);
    assert_int_equal(p.a[0].role, PLAN_CONNECT);
    assert_int_equal(p.a[0].target.count, 4);
    assert_int_equal(p.a[0].target.step, 4);
    assert_int_equal(port_of(&p.a[0].target.addr), 40003);
    assert_int_equal(p.a[0].repeats, 1);

    /* The newest port seen (seq_port, from the blob) is the base, not the
     * session's: after 10 more mappings the window starts past them. */
    make_end(&in.me, &S, 0, false, false, 50, 1);
    make_end(&in.peer, &P, 1, false, false, 50, 1);
    in.initiator = true;
    in.window = 4;
    in.me.seq_port = 40021;
    assert_int_equal(plan_make(&in, &p), 0);
    assert_int_equal(p.a[0].local, PLAN_LOCAL_FRESH);
    assert_int_equal(port_of(&p.a[0].ext.addr), 40023);
    /* and the peer, given the same facts, aims at the same ports */
    plan_input other;
    plan_input_init(&other);
    other.me = in.peer;
    other.peer = in.me;
    other.initiator = false;
    other.window = 4;
    assert_int_equal(plan_make(&other, &p), 0);
    assert_int_equal(port_of(&p.a[0].target.addr), 40023);
}

/* Timings: in round trips, and Happy Eyeballs' staging. */
static void test_timing(void **state)
{
    (void)state;
    prof A = prof_of("port-restricted", D), B = prof_of("port-restricted", D);
    plan_input in;
    plan_input_init(&in);
    make_end(&in.me, &A, 0, false, false, 50, 0);
    make_end(&in.peer, &B, 1, false, false, 200, 0);
    in.initiator = true;
    plan p;
    assert_int_equal(plan_make(&in, &p), 0);
    assert_int_equal(p.rtt_ms, 200); /* the larger of the two */
    assert_int_equal(p.a[0].start_ms, 0);
    assert_true(p.a[1].start_ms >= 2 * 200); /* staged in round trips */
    assert_int_equal(p.a[0].repeat_ms, 300);
    assert_true(p.a[0].repeats >= 3);
    assert_true(p.deadline_ms < 10000);
    /* The last attempt waits for one SYN retransmission (1 s) and its answer. */
    assert_true(p.deadline_ms >= p.a[p.n - 1].start_ms + 1000 + 2 * 200);
    /* The hold (STUNT#2 with an RST on either side): when the connector's
     * SYN leaves on a path of some length; a few ms after on the shortest,
     * where the punches' errors soon stop and only a hold that reaches the
     * peer's NAT before its SYN has left could hurt. */
    for (uint32_t rtt = 1; rtt <= 40; rtt++) {
        prof X = prof_of("port-restricted", R), Y = prof_of("port-restricted", R);
        plan_input h;
        plan_input_init(&h);
        make_end(&h.me, &X, 0, false, false, rtt, 0);
        make_end(&h.peer, &Y, 1, false, false, rtt, 0);
        h.initiator = true;
        plan ph;
        assert_int_equal(plan_make(&h, &ph), 0);
        h.me = h.peer;
        make_end(&h.peer, &X, 0, false, false, rtt, 0);
        h.initiator = false;
        plan pt;
        assert_int_equal(plan_make(&h, &pt), 0);
        assert_int_equal(ph.a[0].role, PLAN_PUNCH);
        assert_int_equal(pt.a[0].role, PLAN_CONNECT);
        uint32_t want = rtt < 2 ? 3 : rtt < 4 ? 2 : rtt < 6 ? 1 : 0;
        assert_int_equal(ph.a[0].hold_ms, pt.a[0].start_ms + want);
    }
    /* Unknown RTT: 100 ms assumed. */
    in.me.rtt_ms = in.peer.rtt_ms = 0;
    assert_int_equal(plan_make(&in, &p), 0);
    assert_int_equal(p.rtt_ms, 100);
    /* Same NAT: other methods staged after the private addresses. */
    prof C = prof_of("port-restricted", D);
    make_end(&in.me, &C, 0, true, false, 20, 0);
    make_end(&in.peer, &C, 1, true, false, 20, 0);
    in.me.tcp.hairpin = in.peer.tcp.hairpin = NTCP_YES;
    assert_int_equal(plan_make(&in, &p), 0);
    assert_int_equal(p.a[0].method, NTCP_METHOD_SAME_LAN);
    assert_int_equal(p.a[1].method, NTCP_METHOD_SAME_LAN);
    assert_int_equal(p.a[2].method, NTCP_METHOD_SAME_LAN); /* hairpin */
    assert_int_equal(port_of(&p.a[2].target.addr), 40003);
    assert_true(p.a[3].start_ms >= 150);
    /* Raw methods: only with both ends raw and the build option. */
    make_end(&in.me, &A, 0, false, true, 50, 1);
    make_end(&in.peer, &B, 1, false, true, 50, 1);
    in.raw_enabled = false;
    assert_int_equal(plan_make(&in, &p), 0);
    for (size_t k = 0; k < p.n; k++)
        assert_true(p.a[k].method != NTCP_METHOD_NATBLASTER && p.a[k].method != NTCP_METHOD_STUNT1);
    in.raw_enabled = true;
    assert_int_equal(plan_make(&in, &p), 0);
    bool nb = false;
    for (size_t k = 0; k < p.n; k++)
        nb |= p.a[k].method == NTCP_METHOD_NATBLASTER;
    assert_true(nb);
    in.broker_spoofs = true;
    assert_int_equal(plan_make(&in, &p), 0);
    bool s1 = false;
    for (size_t k = 0; k < p.n; k++)
        s1 |= p.a[k].method == NTCP_METHOD_STUNT1 && p.a[k].role == PLAN_RAW_SYN && p.a[k].ttl == 2;
    assert_true(s1);
    in.peer.raw = false;
    assert_int_equal(plan_make(&in, &p), 0);
    for (size_t k = 0; k < p.n; k++)
        assert_true(p.a[k].method != NTCP_METHOD_STUNT1);
}

static void test_bad_input(void **state)
{
    (void)state;
    plan p;
    plan_input in;
    plan_input_init(&in);
    assert_int_equal(plan_make(NULL, &p), NTCP_EINVAL);
    assert_int_equal(plan_make(&in, NULL), NTCP_EINVAL);
    assert_int_equal(plan_make(&in, &p), NTCP_EINVAL); /* no public addresses */
    assert_non_null(strstr(p.reason, "public address"));
    prof A = prof_of("none", D);
    make_end(&in.me, &A, 0, false, false, 0, 0);
    make_end(&in.peer, &A, 1, false, false, 0, 0);
    in.peer.npriv = PLAN_MAX_PRIVATE + 1;
    assert_int_equal(plan_make(&in, &p), NTCP_EINVAL);
    in.peer.npriv = 1;
    assert_int_equal(plan_make(&in, &p), 0);
    /* One family per plan. */
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&in.peer.public_addr;
    memset(s6, 0, sizeof in.peer.public_addr);
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(5000);
    inet_pton(AF_INET6, "2001:db8::30", &s6->sin6_addr);
    assert_int_equal(plan_make(&in, &p), NTCP_EINVAL);
    assert_non_null(strstr(p.reason, "families"));
    /* IPv6 on both ends is planned like IPv4. */
    in.me.public_addr = in.peer.public_addr;
    ((struct sockaddr_in6 *)&in.me.public_addr)->sin6_addr.s6_addr[15] = 0x10;
    assert_int_equal(plan_make(&in, &p), 0);
    assert_int_equal(p.a[0].method, NTCP_METHOD_DIRECT);
    char text[1024];
    plan_format(&p, false, text, sizeof text);
    assert_non_null(strstr(text, "[2001:db8::30]:5000"));
}

static void test_names_and_format(void **state)
{
    (void)state;
    assert_string_equal(ntcp_method_name(NTCP_METHOD_STUNT2), "stunt2");
    assert_string_equal(ntcp_method_name(NTCP_METHOD_P2PNAT), "p2pnat");
    assert_string_equal(ntcp_method_name(NTCP_METHOD_NATBLASTER), "natblaster");
    assert_string_equal(ntcp_method_name((ntcp_method_t)99), "none");
    for (int m = 0; m < NTCP_METHOD_COUNT; m++)
        for (int n = m + 1; n < NTCP_METHOD_COUNT; n++)
            assert_string_not_equal(ntcp_method_name((ntcp_method_t)m), ntcp_method_name((ntcp_method_t)n));

    prof A = prof_of("symmetric-seq", D), B = prof_of("port-restricted", R);
    plan_input in;
    plan_input_init(&in);
    make_end(&in.me, &A, 0, false, false, 50, 0);
    make_end(&in.peer, &B, 1, false, false, 50, 0);
    in.initiator = true;
    plan p;
    assert_int_equal(plan_make(&in, &p), 0);
    char text[4096], json[8192];
    size_t nt = plan_format(&p, false, text, sizeof text);
    assert_true(nt > 0 && nt < sizeof text);
    assert_int_equal(strlen(text), nt);
    assert_non_null(strstr(text, "predict"));
    assert_non_null(strstr(text, "ttl learned"));
    assert_non_null(strstr(text, "203.0.113.2:40002"));
    size_t nj = plan_format(&p, true, json, sizeof json);
    assert_true(nj > 0 && nj < sizeof json);
    assert_non_null(strstr(json, "{\"version\":1,\"status\":\"ok\""));
    assert_non_null(strstr(json, "\"method\":\"predict\""));
    assert_string_equal(json + nj - 2, "]}");
    assert_non_null(strstr(json, "\"why\":\"simultaneous open"));
    /* Whatever the struct holds is escaped. */
    plan odd = p;
    snprintf(odd.reason, sizeof odd.reason, "a \"quoted\" \\ word\n");
    plan_format(&odd, true, json, sizeof json);
    assert_non_null(strstr(json, "\"reason\":\"a \\\"quoted\\\" \\\\ word\\u000a\""));
    /* snprintf rules: a short buffer gets a NUL-terminated prefix and the
     * length needed. */
    for (size_t len = 0; len < 64; len++) {
        char small[64];
        memset(small, 'x', sizeof small);
        assert_int_equal(plan_format(&p, true, small, len), nj);
        if (len) {
            assert_int_equal(strlen(small), len - 1);
            assert_memory_equal(small, json, len - 1);
        }
        if (len < sizeof small)
            assert_true(len == sizeof small || small[len] == 'x' || len == 0);
    }
    /* Impossible plans say why. */
    prof Rn = prof_of("symmetric-random", D);
    make_end(&in.me, &Rn, 0, false, false, 50, 0);
    make_end(&in.peer, &Rn, 1, false, false, 50, 0);
    assert_int_equal(plan_make(&in, &p), NTCP_EUNREACHABLE);
    plan_format(&p, false, text, sizeof text);
    assert_non_null(strstr(text, "impossible: "));
    assert_non_null(strstr(text, "relay is needed"));
    plan_format(&p, true, json, sizeof json);
    assert_non_null(strstr(json, "\"status\":\"impossible\""));
    assert_non_null(strstr(json, "\"attempts\":[]"));
}

/* ---- Profile blob ---- */

static plan_profile sample_profile(void)
{
    plan_profile p;
    memset(&p, 0, sizeof p);
    p.has[PLAN_TCP4] = p.has[PLAN_UDP4] = p.has[PLAN_TCP6] = true;
    p.b[PLAN_TCP4] = (ntcp_nat_behaviour_t){.reach = NTCP_REACH_NAT, .mapping = APD, .filtering = APD,
                                            .ports = NTCP_PORTS_SEQUENTIAL, .delta = -2,
                                            .hairpin = NTCP_NO, .syn = NTCP_SYN_RST};
    p.b[PLAN_UDP4] = (ntcp_nat_behaviour_t){.reach = NTCP_REACH_NAT, .mapping = EI, .filtering = AD,
                                            .ports = NTCP_PORTS_PRESERVED, .hairpin = NTCP_YES,
                                            .lifetime_s = 120};
    p.b[PLAN_TCP6] = (ntcp_nat_behaviour_t){.reach = NTCP_REACH_FIREWALL, .mapping = EI,
                                            .filtering = APD, .ports = NTCP_PORTS_PRESERVED,
                                            .syn = NTCP_SYN_ICMP};
    p.raw = true;
    p.rtt_ms = 51;
    p.nat_hops = 2;
    return p;
}

static bool same_behaviour(const ntcp_nat_behaviour_t *a, const ntcp_nat_behaviour_t *b)
{
    return a->reach == b->reach && a->mapping == b->mapping && a->filtering == b->filtering &&
           a->ports == b->ports && a->delta == b->delta && a->hairpin == b->hairpin &&
           a->syn == b->syn && a->lifetime_s == b->lifetime_s;
}

static void test_blob_roundtrip(void **state)
{
    (void)state;
    plan_profile p = sample_profile(), q;
    uint8_t buf[PLAN_BLOB_MAX];
    int n = plan_profile_encode(&p, buf, sizeof buf);
    assert_int_equal(n, 8 + 3 * 11);
    assert_int_equal(plan_profile_decode(buf, (size_t)n, &q), 0);
    for (int k = 0; k < PLAN_NBEHAVIOUR; k++) {
        assert_int_equal(q.has[k], p.has[k]);
        if (p.has[k])
            assert_true(same_behaviour(&q.b[k], &p.b[k]));
    }
    assert_true(q.raw);
    assert_int_equal(q.rtt_ms, 51);
    assert_int_equal(q.nat_hops, 2);
    assert_int_equal(q.seq_port[PLAN_TCP4], 0);
    /* Minor 1: the newest external port travels in a longer record, which
     * a minor-0 decoder skips (its length says so). */
    p.seq_port[PLAN_TCP4] = 40021;
    n = plan_profile_encode(&p, buf, sizeof buf);
    assert_int_equal(n, 8 + 3 * 11 + 2);
    assert_int_equal(plan_profile_decode(buf, (size_t)n, &q), 0);
    assert_int_equal(q.seq_port[PLAN_TCP4], 40021);
    assert_true(same_behaviour(&q.b[PLAN_TCP4], &p.b[PLAN_TCP4]));
    p.seq_port[PLAN_TCP4] = 0;
    /* All four fit in the broker's attribute, and within 64 bytes. */
    p.has[PLAN_UDP6] = true;
    p.b[PLAN_UDP6] = p.b[PLAN_UDP4];
    n = plan_profile_encode(&p, buf, sizeof buf);
    assert_true(n > 0 && n <= PLAN_BLOB_MAX);
    assert_int_equal(plan_profile_encode(&p, buf, (size_t)n - 1), NTCP_ENOSPC);
    /* Lossy on purpose: rtt capped, lifetime in 4 s steps up to 1020 s. */
    p.rtt_ms = 100000;
    p.b[PLAN_UDP4].lifetime_s = 5000;
    n = plan_profile_encode(&p, buf, sizeof buf);
    assert_int_equal(plan_profile_decode(buf, (size_t)n, &q), 0);
    assert_int_equal(q.rtt_ms, 65535);
    assert_int_equal(q.b[PLAN_UDP4].lifetime_s, 1020);
    /* Values out of range are refused at encoding. */
    p = sample_profile();
    p.b[PLAN_TCP4].syn = (ntcp_syn_answer_t)9;
    assert_int_equal(plan_profile_encode(&p, buf, sizeof buf), NTCP_ERANGE);
    p = sample_profile();
    p.b[PLAN_TCP4].delta = 40000;
    assert_int_equal(plan_profile_encode(&p, buf, sizeof buf), NTCP_ERANGE);
    /* And so is what the decoder would refuse: a "none" mapping, a delta
     * without sequential ports. */
    p = sample_profile();
    p.b[PLAN_UDP4].mapping = NTCP_DEP_NONE;
    assert_int_equal(plan_profile_encode(&p, buf, sizeof buf), NTCP_ERANGE);
    p = sample_profile();
    p.b[PLAN_UDP4].delta = 1; /* ports preserved */
    assert_int_equal(plan_profile_encode(&p, buf, sizeof buf), NTCP_ERANGE);
    /* Every lab personality's behaviour survives the trip. */
    make_profiles();
    for (size_t i = 0; i < nprofs; i++) {
        plan_profile x;
        memset(&x, 0, sizeof x);
        x.has[PLAN_TCP4] = true;
        x.b[PLAN_TCP4] = (ntcp_nat_behaviour_t){.reach = profs[i].reach, .mapping = profs[i].mapping,
                                                .filtering = profs[i].filtering, .ports = profs[i].ports,
                                                .delta = profs[i].delta, .hairpin = profs[i].hairpin,
                                                .syn = profs[i].syn};
        n = plan_profile_encode(&x, buf, sizeof buf);
        assert_true(n > 0);
        assert_int_equal(plan_profile_decode(buf, (size_t)n, &q), 0);
        assert_true(same_behaviour(&q.b[PLAN_TCP4], &x.b[PLAN_TCP4]));
    }
}

static void test_blob_from_nat(void **state)
{
    (void)state;
    ntcp_nat_profile_t np;
    memset(&np, 0, sizeof np);
    np.flags = NTCP_DISCOVER_TCP | NTCP_DISCOVER_UDP | NTCP_DISCOVER_IPV4;
    np.tcp4.reach = NTCP_REACH_NAT;
    np.tcp4.mapping = APD;
    np.tcp4.ports = NTCP_PORTS_RANDOM;
    np.tcp4.delta = 7; /* meaningless without sequential ports: dropped */
    np.udp4.reach = NTCP_REACH_OPEN;
    np.tcp6.reach = NTCP_REACH_NAT; /* not probed: ignored */
    np.rtt_ms = 40;
    plan_profile p;
    plan_profile_from_nat(&p, &np, true, 1);
    assert_true(p.has[PLAN_TCP4] && p.has[PLAN_UDP4] && !p.has[PLAN_TCP6] && !p.has[PLAN_UDP6]);
    assert_int_equal(p.b[PLAN_TCP4].delta, 0);
    assert_int_equal(p.rtt_ms, 40);
    uint8_t buf[PLAN_BLOB_MAX];
    assert_true(plan_profile_encode(&p, buf, sizeof buf) > 0);
}

static void test_blob_rejects(void **state)
{
    (void)state;
    plan_profile p = sample_profile(), q;
    uint8_t good[PLAN_BLOB_MAX], b[PLAN_BLOB_MAX + 8];
    int n = plan_profile_encode(&p, good, sizeof good);
    assert_true(n > 0);
    size_t len = (size_t)n;

    /* Every truncation fails, and leaves the output empty. */
    for (size_t l = 0; l < len; l++) {
        memset(&q, 0x5a, sizeof q);
        int rc = plan_profile_decode(good, l, &q);
        assert_true(rc == NTCP_ETRUNCATED || rc == NTCP_EMALFORMED);
        assert_false(q.has[0] || q.has[1] || q.raw || q.rtt_ms);
    }
    assert_int_equal(plan_profile_decode(NULL, 0, &q), NTCP_ETRUNCATED);
    assert_int_equal(plan_profile_decode(NULL, 5, &q), NTCP_EINVAL);
    assert_int_equal(plan_profile_decode(good, len, NULL), NTCP_EINVAL);

#define MUTATE(off, val, expect)                                                                   \
    do {                                                                                           \
        memcpy(b, good, len);                                                                      \
        b[off] = (uint8_t)(val);                                                                   \
        assert_int_equal(plan_profile_decode(b, len, &q), expect);                                 \
    } while (0)
    MUTATE(0, 'X', NTCP_EMALFORMED);              /* magic */
    MUTATE(2, 0x20, NTCP_EPROTO);                 /* major version 2 */
    MUTATE(2, 0x00, NTCP_EPROTO);                 /* major version 0 */
    MUTATE(2, 0x13, 0);                           /* a newer minor version: fine */
    MUTATE(3, 0x02, NTCP_ERANGE);                 /* reserved flag */
    MUTATE(7, 5, NTCP_ERANGE);                    /* more records than kinds */
    MUTATE(7, 4, NTCP_ETRUNCATED);                /* a record promised, none there */
    MUTATE(7, 2, NTCP_EMALFORMED);                /* trailing bytes */
    MUTATE(8, 4, NTCP_ERANGE);                    /* record kind */
    MUTATE(8 + 11, 0, NTCP_EMALFORMED);           /* tcp4 twice */
    MUTATE(9, 8, NTCP_EMALFORMED);                /* record shorter than v1's */
    MUTATE(9, 200, NTCP_ETRUNCATED);              /* record longer than the blob */
    MUTATE(10, NTCP_REACH_NAT + 1, NTCP_ERANGE);  /* reach */
    MUTATE(11, NTCP_DEP_NONE, NTCP_ERANGE);       /* mapping "none" */
    MUTATE(12, APD + 1, NTCP_ERANGE);             /* filtering */
    MUTATE(13, NTCP_PORTS_RANDOM + 1, NTCP_ERANGE);
    MUTATE(14, NTCP_YES + 1, NTCP_ERANGE);
    MUTATE(15, NTCP_SYN_ICMP + 1, NTCP_ERANGE);
    MUTATE(13, NTCP_PORTS_RANDOM, NTCP_ERANGE);   /* a delta without sequential ports */
#undef MUTATE

    /* A later minor version's longer record: its extra bytes are skipped. */
    memcpy(b, good, 8);
    b[7] = 1;
    memcpy(b + 8, good + 8, 11);
    b[9] = 9 + 2; /* v1's nine bytes and two more */
    b[8 + 11] = 0xAA;
    b[8 + 12] = 0xBB;
    assert_int_equal(plan_profile_decode(b, 8 + 13, &q), 0);
    assert_true(q.has[PLAN_TCP4] && same_behaviour(&q.b[PLAN_TCP4], &p.b[PLAN_TCP4]));
    /* Too long for a blob at all. */
    memset(b, 0, sizeof b);
    memcpy(b, good, len);
    assert_int_equal(plan_profile_decode(b, PLAN_BLOB_MAX + 1, &q), NTCP_EMALFORMED);

    /* Random bytes and random mutations: never a crash (ASan watches), and
     * whatever decodes re-encodes to something that decodes the same. */
    uint32_t seed = 12345;
    for (int it = 0; it < 200000; it++) {
        seed = seed * 1103515245u + 12345u;
        size_t l = (seed >> 16) % (PLAN_BLOB_MAX + 4);
        if (it % 2) {
            memcpy(b, good, len);
            for (int m = 0; m < 3; m++) {
                seed = seed * 1103515245u + 12345u;
                b[(seed >> 8) % len] = (uint8_t)(seed >> 24);
            }
            l = len;
        } else {
            for (size_t k = 0; k < l; k++) {
                seed = seed * 1103515245u + 12345u;
                b[k] = (uint8_t)(seed >> 24);
            }
            if (l >= 3) {
                b[0] = 'N';
                b[1] = 'P';
                b[2] = 0x10;
            }
        }
        if (plan_profile_decode(b, l, &q) == 0) {
            uint8_t again[PLAN_BLOB_MAX];
            plan_profile r;
            int m = plan_profile_encode(&q, again, sizeof again);
            assert_true(m > 0);
            assert_int_equal(plan_profile_decode(again, (size_t)m, &r), 0);
            for (int k = 0; k < PLAN_NBEHAVIOUR; k++) {
                assert_int_equal(r.has[k], q.has[k]);
                assert_true(!q.has[k] || same_behaviour(&r.b[k], &q.b[k]));
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_pair),     cmocka_unit_test(test_simulated),
        cmocka_unit_test(test_rows),           cmocka_unit_test(test_methods),
        cmocka_unit_test(test_prediction),     cmocka_unit_test(test_timing),
        cmocka_unit_test(test_bad_input),      cmocka_unit_test(test_names_and_format),
        cmocka_unit_test(test_blob_roundtrip), cmocka_unit_test(test_blob_from_nat),
        cmocka_unit_test(test_blob_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
