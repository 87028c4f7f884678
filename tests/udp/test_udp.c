/*
 * test_udp.c: UDP hole punching below the public API (issue 7): the UDP
 * planner on every pair of lab personalities, the punch datagram codec, the
 * engine with two ends on loopback (success, strangers, a wrong key, an
 * impossible plan, cancel, many sockets), and the keepalive.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <uv.h>

#include "addr.h"
#include "identity.h"
#include "ntcp.h"
#include "udp_plan.h"
#include "udp_punch.h"

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

/* The lab's personalities as discovery classifies their UDP (docs/lab.md). */
static const personality pers[] = {
    {"none", NTCP_REACH_OPEN, EI, NTCP_DEP_NONE, NTCP_PORTS_PRESERVED, 0},
    {"fw", NTCP_REACH_FIREWALL, EI, APD, NTCP_PORTS_PRESERVED, 0},
    {"full-cone", NTCP_REACH_NAT, EI, EI, NTCP_PORTS_PRESERVED, 0},
    {"restricted-cone", NTCP_REACH_NAT, EI, AD, NTCP_PORTS_PRESERVED, 0},
    {"port-restricted", NTCP_REACH_NAT, EI, APD, NTCP_PORTS_PRESERVED, 0},
    {"symmetric-seq", NTCP_REACH_NAT, APD, APD, NTCP_PORTS_SEQUENTIAL, 1},
    {"symmetric-random", NTCP_REACH_NAT, APD, APD, NTCP_PORTS_RANDOM, 0},
};
#define NPERS 7

/* The expected method of every pair (symmetric), docs/udp.md's table. */
static const char *expected[NPERS][NPERS] = {
    /*                none      fw          full-cone  restricted port-restr  sym-seq    sym-random */
    /* none */       {"direct", "direct",   "direct",  "direct",  "direct",   "direct",  "direct"},
    /* fw */         {"direct", "punch",    "direct",  "punch",   "punch",    "predict", "birthday"},
    /* full-cone */  {"direct", "direct",   "direct",  "direct",  "direct",   "direct",  "direct"},
    /* restricted */ {"direct", "punch",    "direct",  "punch",   "punch",    "punch",   "punch"},
    /* port-restr */ {"direct", "punch",    "direct",  "punch",   "punch",    "predict", "birthday"},
    /* sym-seq */    {"direct", "predict",  "direct",  "punch",   "predict",  "predict", NULL},
    /* sym-random */ {"direct", "birthday", "direct",  "punch",   "birthday", NULL,      NULL},
};

static void sa4(struct sockaddr_storage *ss, const char *ip, int port)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
}

static void end_of(udp_plan_end *e, const personality *q, const char *ip, int port)
{
    memset(e, 0, sizeof *e);
    e->udp.reach = q->reach;
    e->udp.mapping = q->mapping;
    e->udp.filtering = q->filtering;
    e->udp.ports = q->ports;
    e->udp.delta = q->delta;
    sa4(&e->public_udp, ip, port);
    e->rtt_ms = 20;
}

static void make(const personality *a, const personality *b, bool a_side, udp_plan *out, int *rc)
{
    udp_plan_input in;
    udp_plan_input_init(&in);
    const personality *me = a_side ? a : b, *peer = a_side ? b : a;
    end_of(&in.me, me, a_side ? "203.0.113.1" : "203.0.113.2", a_side ? 40001 : 50002);
    end_of(&in.peer, peer, a_side ? "203.0.113.2" : "203.0.113.1", a_side ? 50002 : 40001);
    in.initiator = a_side;
    *rc = udp_plan_make(&in, out);
}

static void test_plan_every_pair(void **state)
{
    (void)state;
    for (int i = 0; i < NPERS; i++) {
        for (int j = 0; j < NPERS; j++) {
            udp_plan pa, pb;
            int ra, rb;
            make(&pers[i], &pers[j], true, &pa, &ra);
            make(&pers[i], &pers[j], false, &pb, &rb);
            const char *want = expected[i][j];
            assert_string_equal(want ? want : "-", expected[j][i] ? expected[j][i] : "-");
            if (!want) {
                assert_int_equal(ra, NTCP_EUNREACHABLE);
                assert_int_equal(rb, NTCP_EUNREACHABLE);
                assert_int_equal(pa.ntargets + pb.ntargets, 0);
                assert_non_null(strstr(pa.reason, "relay"));
                assert_non_null(strstr(pb.reason, "random"));
                continue;
            }
            if (ra != 0 || rb != 0 || strcmp(udp_method_name(pa.method), want) != 0 ||
                pa.method != pb.method)
                fail_msg("%s x %s: want %s, got %s / %s (%s)", pers[i].name, pers[j].name, want,
                         udp_method_name(pa.method), udp_method_name(pb.method), pa.reason);
            /* Both ends aim somewhere, or one probes random ports. */
            assert_true(pa.ntargets >= 1 && pb.ntargets >= 1);
            assert_true(pa.deadline_ms >= 3000 && pa.interval_ms >= 50);
            const udp_plan *pp[2] = {&pa, &pb};
            for (int s = 0; s < 2; s++) {
                const personality *peer = s == 0 ? &pers[j] : &pers[i];
                const udp_plan *p = pp[s];
                const plan_ports *t = &p->t[0];
                uint16_t peer_port = s == 0 ? 50002 : 40001;
                if (p->kind[0] == UDP_T_PREDICTED) {
                    /* A window of the sequential peer's next ports. */
                    assert_int_equal(peer->ports, NTCP_PORTS_SEQUENTIAL);
                    assert_int_equal(ntcp_sa_port(&t->addr), peer_port + peer->delta);
                    assert_int_equal(t->count, UDP_PLAN_DEFAULT_WINDOW);
                    assert_true(t->step == peer->delta || t->step == 2 * peer->delta);
                } else {
                    assert_int_equal(p->kind[0], UDP_T_PUBLIC);
                    assert_int_equal(ntcp_sa_port(&t->addr), peer_port);
                    assert_int_equal(t->count, 1);
                }
            }
            if (pa.method == UDP_METHOD_BIRTHDAY) {
                /* One side many sockets, the other random ports. */
                const udp_plan *hard = pers[i].ports == NTCP_PORTS_RANDOM ? &pa : &pb;
                const udp_plan *easy = hard == &pa ? &pb : &pa;
                assert_int_equal(hard->nsockets, UDP_PLAN_BIRTHDAY_SOCKETS);
                assert_int_equal(hard->random_probes, 0);
                assert_int_equal(easy->nsockets, 1);
                assert_int_equal(easy->random_probes, UDP_PLAN_BIRTHDAY_PROBES);
                assert_int_equal(easy->random_pps, UDP_PLAN_BIRTHDAY_PPS);
                assert_true(easy->deadline_ms >=
                            UDP_PLAN_BIRTHDAY_PROBES * 1000 / UDP_PLAN_BIRTHDAY_PPS);
            } else {
                assert_int_equal(pa.nsockets, 1);
                assert_int_equal(pb.nsockets, 1);
                assert_int_equal(pa.random_probes + pb.random_probes, 0);
            }
        }
    }
}

static void test_plan_rows(void **state)
{
    (void)state;
    udp_plan a, b;
    int ra, rb;
    /* Two sequential NATs: the initiator walks the target's window one by
     * one, the target walks the initiator's two by two. */
    make(&pers[5], &pers[5], true, &a, &ra);
    make(&pers[5], &pers[5], false, &b, &rb);
    assert_int_equal(ra, 0);
    assert_int_equal(a.t[0].step, 1);
    assert_int_equal(b.t[0].step, 2);
    assert_int_equal(ntcp_sa_port(&a.t[0].addr), 50003);
    assert_int_equal(ntcp_sa_port(&b.t[0].addr), 40002);
    /* Sequential against a port filter: only the filtering end uses the
     * window; the sequential end aims at the known mapping. */
    make(&pers[4], &pers[5], true, &a, &ra);
    make(&pers[4], &pers[5], false, &b, &rb);
    assert_int_equal(a.kind[0], UDP_T_PREDICTED);
    assert_int_equal(b.kind[0], UDP_T_PUBLIC);
    assert_int_equal(ntcp_sa_port(&b.t[0].addr), 40001);
    /* Sequential against random: impossible, and it says why. */
    make(&pers[5], &pers[6], true, &a, &ra);
    assert_int_equal(ra, NTCP_EUNREACHABLE);
    assert_non_null(strstr(a.reason, "sequential"));
    /* Both random. */
    make(&pers[6], &pers[6], false, &a, &ra);
    assert_int_equal(ra, NTCP_EUNREACHABLE);
    assert_non_null(strstr(a.reason, "both ends"));

    /* A mapping the broker never learned. */
    udp_plan_input in;
    udp_plan_input_init(&in);
    end_of(&in.me, &pers[4], "203.0.113.1", 40001);
    end_of(&in.peer, &pers[4], "203.0.113.2", 50002);
    memset(&in.peer.public_udp, 0, sizeof in.peer.public_udp);
    assert_int_equal(udp_plan_make(&in, &a), NTCP_EINVAL);
    assert_non_null(strstr(a.reason, "peer's UDP mapping is unknown"));
    /* Ours unknown is fine: the peer aims at what the broker saw. */
    end_of(&in.peer, &pers[4], "203.0.113.2", 50002);
    memset(&in.me.public_udp, 0, sizeof in.me.public_udp);
    assert_int_equal(udp_plan_make(&in, &a), 0);
    assert_int_equal(a.method, UDP_METHOD_PUNCH);
    end_of(&in.me, &pers[4], "203.0.113.1", 40001);
    /* UDP blocked. */
    end_of(&in.peer, &pers[4], "203.0.113.2", 50002);
    in.peer.udp.reach = NTCP_REACH_BLOCKED;
    assert_int_equal(udp_plan_make(&in, &a), NTCP_EUNREACHABLE);
    assert_non_null(strstr(a.reason, "blocked"));
    /* Birthday bounds are enforced. */
    end_of(&in.peer, &pers[6], "203.0.113.2", 50002);
    in.birthday_probes = UDP_PLAN_MAX_BIRTHDAY_PROBES + 1;
    assert_int_equal(udp_plan_make(&in, &a), NTCP_EINVAL);
    in.birthday_probes = 100;
    in.birthday_pps = 50;
    assert_int_equal(udp_plan_make(&in, &a), 0);
    assert_int_equal(a.method, UDP_METHOD_BIRTHDAY);
    assert_int_equal(a.random_probes, 100);
    assert_int_equal(a.deadline_ms, 100 * 1000 / 50 + 3000);

    /* One NAT in front of both: private addresses first, at the public
     * UDP port and at the reported port; random ends keep only those. */
    udp_plan_input_init(&in);
    end_of(&in.me, &pers[6], "203.0.113.1", 40001);
    end_of(&in.peer, &pers[6], "203.0.113.1", 40009);
    sa4(&in.peer.priv[0], "10.0.1.11", 5000);
    in.peer.npriv = 1;
    assert_int_equal(udp_plan_make(&in, &a), 0);
    assert_int_equal(a.method, UDP_METHOD_SAME_LAN);
    assert_int_equal(a.ntargets, 2);
    assert_int_equal(a.kind[0], UDP_T_PRIVATE);
    assert_int_equal(ntcp_sa_port(&a.t[0].addr), 40009);
    assert_int_equal(ntcp_sa_port(&a.t[1].addr), 5000);
    end_of(&in.me, &pers[4], "203.0.113.1", 40001);
    end_of(&in.peer, &pers[4], "203.0.113.1", 40009);
    sa4(&in.peer.priv[0], "10.0.1.11", 5000);
    in.peer.npriv = 1;
    assert_int_equal(udp_plan_make(&in, &a), 0);
    assert_int_equal(a.method, UDP_METHOD_PUNCH);
    assert_int_equal(a.ntargets, 3);
    assert_int_equal(a.kind[2], UDP_T_PUBLIC);

    char js[1024];
    size_t n = udp_plan_format(&a, js, sizeof js);
    assert_true(n < sizeof js);
    assert_non_null(strstr(js, "\"method\":\"punch\""));
    assert_non_null(strstr(js, "\"kind\":\"private\""));
    assert_int_equal(udp_plan_format(&a, js, 10), n); /* snprintf rules */
    assert_int_equal(strlen(js), 9);
}

/* ---- codec ---- */

static void test_codec(void **state)
{
    (void)state;
    uint8_t sid[VERIFY_SESSION_ID_SIZE], buf[128];
    memset(sid, 0xA5, sizeof sid);
    int n = udp_dgram_build(buf, sizeof buf, UDP_PUNCH_PROBE, BROKER_ROLE_TARGET, sid);
    assert_int_equal(n, UDP_PUNCH_PROBE_SIZE);
    udp_dgram d;
    assert_int_equal(udp_dgram_parse(buf, (size_t)n, &d), 0);
    assert_int_equal(d.kind, UDP_DG_PROBE);
    assert_int_equal(d.role, BROKER_ROLE_TARGET);
    assert_memory_equal(d.session_id, sid, sizeof sid);
    n = udp_dgram_build(buf, sizeof buf, UDP_PUNCH_PICK, BROKER_ROLE_REQUESTER, sid);
    assert_int_equal(udp_dgram_parse(buf, (size_t)n, &d), 0);
    assert_int_equal(d.kind, UDP_DG_PICK);
    assert_int_equal(d.role, BROKER_ROLE_REQUESTER);
    /* Truncations, garbage, a zero-length keepalive. */
    for (int k = 0; k < n; k++)
        assert_true(udp_dgram_parse(buf, (size_t)k, &d) < 0);
    assert_true(udp_dgram_parse((const uint8_t *)"", 0, &d) < 0);
    uint8_t junk[64];
    memset(junk, 0xFF, sizeof junk);
    assert_int_equal(udp_dgram_parse(junk, sizeof junk, &d), NTCP_ENOTSTUN);

    uint8_t tid[STUN_TID_SIZE] = {0};
    stun_builder b;
    /* A role out of range, a duplicate, a missing attribute, an unknown
     * comprehension-required one, a request instead of an indication. */
    const struct {
        uint8_t cls;
        uint32_t role;
        bool dup, nosid, unknown;
    } bad[] = {{STUN_INDICATION, 2, false, false, false},
               {STUN_INDICATION, 0, true, false, false},
               {STUN_INDICATION, 0, false, true, false},
               {STUN_INDICATION, 0, false, false, true},
               {STUN_REQUEST, 0, false, false, false}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        stun_build_init(&b, buf, sizeof buf, UDP_PUNCH_PROBE, bad[i].cls, tid, false);
        if (!bad[i].nosid)
            stun_build_attr(&b, VERIFY_ATTR_SESSION_ID, sid, sizeof sid);
        if (bad[i].dup)
            stun_build_attr(&b, VERIFY_ATTR_SESSION_ID, sid, sizeof sid);
        stun_build_u32(&b, VERIFY_ATTR_ROLE, bad[i].role);
        if (bad[i].unknown)
            stun_build_u32(&b, 0x4E4F, 1);
        n = stun_build_finish(&b, NULL);
        assert_true(n > 0);
        assert_true(udp_dgram_parse(buf, (size_t)n, &d) < 0);
    }
    /* A comprehension-optional extra is ignored (SOFTWARE). */
    stun_build_init(&b, buf, sizeof buf, UDP_PUNCH_PICK, STUN_INDICATION, tid, false);
    stun_build_attr(&b, VERIFY_ATTR_SESSION_ID, sid, sizeof sid);
    stun_build_u32(&b, VERIFY_ATTR_ROLE, 1);
    stun_build_string(&b, STUN_ATTR_SOFTWARE, "x");
    n = stun_build_finish(&b, NULL);
    assert_int_equal(udp_dgram_parse(buf, (size_t)n, &d), 0);
    /* A verify HELLO is a datagram of the punch too. */
    uint8_t key[32], rnd[32];
    memset(key, 1, sizeof key);
    memset(rnd, 2, sizeof rnd);
    uint8_t hb[VERIFY_MAX_MESSAGE];
    n = ntcp_verify_build_hello(hb, sizeof hb, 0, sid, "alice", key, rnd);
    assert_true(n > 0);
    assert_int_equal(udp_dgram_parse(hb, (size_t)n, &d), 0);
    assert_int_equal(d.kind, UDP_DG_VERIFY);
    assert_int_equal(d.v.method, VERIFY_HELLO);
}

/* ---- the engine on loopback ---- */

typedef struct end {
    udp_puncher *p;
    bool done;
    ntcp_udp_punch_result r;
    EVP_PKEY *key;
    uint8_t pub[32];
    int fd;
    struct sockaddr_storage local;
} end;

static void on_done(udp_puncher *p, const ntcp_udp_punch_result *r, void *user)
{
    (void)p;
    end *e = user;
    e->r = *r;
    e->done = true;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool run_until(uv_loop_t *loop, bool *a, bool *b, uint32_t ms)
{
    uint64_t dl = mono_ms() + ms;
    while (!(*a && (!b || *b)) && mono_ms() < dl)
        uv_run(loop, UV_RUN_NOWAIT), usleep(1000);
    return *a && (!b || *b);
}

static void udp_socket(end *e)
{
    e->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    assert_true(e->fd >= 0);
    struct sockaddr_storage any;
    sa4(&any, "127.0.0.1", 0);
    assert_int_equal(bind(e->fd, (struct sockaddr *)&any, sizeof(struct sockaddr_in)), 0);
    socklen_t l = sizeof e->local;
    getsockname(e->fd, (struct sockaddr *)&e->local, &l);
}

typedef struct pair {
    uv_loop_t loop;
    end a, b;
    uint8_t nonce[32];
    udp_plan pa, pb;
} pair;

static void pair_init(pair *x, const personality *pa, const personality *pb)
{
    memset(x, 0, sizeof *x);
    uv_loop_init(&x->loop);
    end *e[2] = {&x->a, &x->b};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ntcp_identity_generate(&e[i]->key), 0);
        assert_int_equal(ntcp_identity_public(e[i]->key, e[i]->pub), 0);
        udp_socket(e[i]);
    }
    RAND_bytes(x->nonce, sizeof x->nonce);
    udp_plan_input in;
    for (int i = 0; i < 2; i++) {
        udp_plan_input_init(&in);
        const personality *me = i == 0 ? pa : pb, *peer = i == 0 ? pb : pa;
        end_of(&in.me, me, "127.0.0.1", 0);
        end_of(&in.peer, peer, "127.0.0.1", 0);
        in.me.public_udp = e[i]->local;
        in.peer.public_udp = e[!i]->local;
        in.initiator = i == 0;
        in.birthday_sockets = 16;
        in.birthday_probes = 64;
        udp_plan *out = i == 0 ? &x->pa : &x->pb;
        udp_plan_make(&in, out);
        /* Loopback: one public address, but no private ones to try. */
    }
}

static void params(pair *x, int i, ntcp_verify_params *v)
{
    end *me = i == 0 ? &x->a : &x->b, *peer = i == 0 ? &x->b : &x->a;
    memset(v, 0, sizeof *v);
    v->key = me->key;
    v->name = i == 0 ? "alice" : "bob";
    v->peer_name = i == 0 ? "bob" : "alice";
    memcpy(v->peer_key, peer->pub, 32);
    memcpy(v->nonce, x->nonce, 32);
    v->role = i == 0 ? BROKER_ROLE_REQUESTER : BROKER_ROLE_TARGET;
    v->timeout_ms = 2000;
}

static void start(pair *x, int i)
{
    ntcp_udp_punch_config c;
    memset(&c, 0, sizeof c);
    c.plan = i == 0 ? &x->pa : &x->pb;
    end *e = i == 0 ? &x->a : &x->b;
    c.fd = e->fd;
    c.start_at = uv_now(&x->loop) + 20;
    c.grace_ms = 500;
    params(x, i, &c.verify);
    assert_int_equal(ntcp_udp_punch_start(&x->loop, &c, on_done, e, &e->p), 0);
}

static void pair_free(pair *x)
{
    for (int i = 0; i < 50; i++)
        uv_run(&x->loop, UV_RUN_NOWAIT);
    uv_loop_close(&x->loop);
    EVP_PKEY_free(x->a.key);
    EVP_PKEY_free(x->b.key);
}

static bool fd_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static void test_punch_loopback(void **state)
{
    (void)state;
    pair x;
    pair_init(&x, &pers[0], &pers[0]);
    /* A stranger talks to alice's socket first: garbage, a PROBE and a
     * HELLO of another session. */
    end s;
    udp_socket(&s);
    uint8_t sid[16], buf[VERIFY_MAX_MESSAGE];
    memset(sid, 7, sizeof sid);
    int n = udp_dgram_build(buf, sizeof buf, UDP_PUNCH_PROBE, BROKER_ROLE_TARGET, sid);
    sendto(s.fd, "garbage", 7, 0, (struct sockaddr *)&x.a.local, sizeof(struct sockaddr_in));
    sendto(s.fd, buf, (size_t)n, 0, (struct sockaddr *)&x.a.local, sizeof(struct sockaddr_in));
    uint8_t rnd[32];
    memset(rnd, 9, sizeof rnd);
    n = ntcp_verify_build_hello(buf, sizeof buf, BROKER_ROLE_TARGET, sid, "bob", x.b.pub, rnd);
    sendto(s.fd, buf, (size_t)n, 0, (struct sockaddr *)&x.a.local, sizeof(struct sockaddr_in));

    start(&x, 0);
    start(&x, 1);
    assert_true(run_until(&x.loop, &x.a.done, &x.b.done, 8000));
    assert_int_equal(x.a.r.err, 0);
    assert_int_equal(x.b.r.err, 0);
    assert_string_equal(udp_method_name(x.a.r.method), "direct");
    assert_int_equal(x.a.r.method, x.b.r.method);
    assert_memory_equal(x.a.r.binding, x.b.r.binding, VERIFY_BINDING_SIZE);
    assert_true(x.a.r.dropped >= 3); /* the stranger's three */
    assert_true(x.a.r.verified_ms >= 0 && x.a.r.reached_ms >= 0);
    assert_int_equal(x.a.r.fd, x.a.fd);
    /* Connected to each other: what one sends, the other reads, first. */
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    assert_int_equal(getpeername(x.a.r.fd, (struct sockaddr *)&peer, &pl), 0);
    assert_true(ntcp_sockaddr_equal((struct sockaddr *)&peer, (struct sockaddr *)&x.b.local));
    assert_int_equal(send(x.b.r.fd, "hello alice", 11, 0), 11);
    assert_int_equal(send(x.a.r.fd, "hello bob", 9, 0), 9);
    char rb[64];
    uint64_t dl = mono_ms() + 2000;
    ssize_t got = -1;
    while (got < 0 && mono_ms() < dl)
        got = recv(x.a.r.fd, rb, sizeof rb, MSG_DONTWAIT);
    assert_int_equal(got, 11);
    assert_memory_equal(rb, "hello alice", 11);
    got = -1;
    while (got < 0 && mono_ms() < dl)
        got = recv(x.b.r.fd, rb, sizeof rb, MSG_DONTWAIT);
    assert_int_equal(got, 9);
    /* The stranger cannot reach the connected socket any more. */
    sendto(s.fd, "late", 4, 0, (struct sockaddr *)&x.a.local, sizeof(struct sockaddr_in));
    usleep(20000);
    assert_true(recv(x.a.r.fd, rb, sizeof rb, MSG_DONTWAIT) < 0);

    char js[1024];
    ntcp_udp_punch_result_json(&x.a.r, js, sizeof js);
    assert_non_null(strstr(js, "\"method\":\"direct\""));

    /* The keepalive: zero-length datagrams, and only until the application
     * closes its descriptor. */
    assert_int_equal(ntcp_udp_keepalive_interval_ms(0), 15000);
    assert_int_equal(ntcp_udp_keepalive_interval_ms(30), 15000);
    assert_int_equal(ntcp_udp_keepalive_interval_ms(1), 1000);
    assert_int_equal(ntcp_udp_keepalive_interval_ms(600), 60000);
    ntcp_udp_keepalive *k = NULL;
    assert_int_equal(ntcp_udp_keepalive_start(&x.loop, x.a.r.fd, 20, &k), 0);
    dl = mono_ms() + 3000;
    while (ntcp_udp_keepalive_count(k) < 3 && mono_ms() < dl)
        uv_run(&x.loop, UV_RUN_NOWAIT), usleep(2000);
    assert_true(ntcp_udp_keepalive_count(k) >= 3);
    int zeros = 0;
    while ((got = recv(x.b.r.fd, rb, sizeof rb, MSG_DONTWAIT)) >= 0)
        zeros += got == 0;
    assert_true(zeros >= 3);
    assert_false(ntcp_udp_keepalive_ended(k));
    /* The application closes its descriptor and another socket takes the
     * number at once: the keepalive sees it is not its socket any more, ends,
     * and writes nothing to the newcomer. */
    int afd = x.a.r.fd;
    close(afd);
    int other = socket(AF_INET, SOCK_DGRAM, 0);
    assert_int_equal(other, afd);
    dl = mono_ms() + 3000;
    while (!ntcp_udp_keepalive_ended(k) && mono_ms() < dl)
        uv_run(&x.loop, UV_RUN_NOWAIT), usleep(2000);
    assert_true(ntcp_udp_keepalive_ended(k));
    unsigned sent = ntcp_udp_keepalive_count(k);
    while ((got = recv(x.b.r.fd, rb, sizeof rb, MSG_DONTWAIT)) >= 0)
        ;
    for (int i = 0; i < 20; i++)
        uv_run(&x.loop, UV_RUN_NOWAIT), usleep(5000);
    assert_int_equal(ntcp_udp_keepalive_count(k), sent);
    assert_true(recv(x.b.r.fd, rb, sizeof rb, MSG_DONTWAIT) < 0);
    close(other);
    ntcp_udp_keepalive_stop(k);
    for (int i = 0; i < 5; i++)
        uv_run(&x.loop, UV_RUN_NOWAIT);
    close(x.b.r.fd);
    close(s.fd);
    pair_free(&x);
}

static void test_punch_wrong_key(void **state)
{
    (void)state;
    pair x;
    pair_init(&x, &pers[0], &pers[0]);
    x.pa.deadline_ms = x.pb.deadline_ms = 1500;
    start(&x, 0);
    /* bob was told another key for alice. */
    ntcp_udp_punch_config c;
    memset(&c, 0, sizeof c);
    c.plan = &x.pb;
    c.fd = x.b.fd;
    c.start_at = uv_now(&x.loop) + 20;
    c.grace_ms = 200;
    params(&x, 1, &c.verify);
    c.verify.peer_key[0] ^= 1;
    assert_int_equal(ntcp_udp_punch_start(&x.loop, &c, on_done, &x.b, &x.b.p), 0);
    assert_true(run_until(&x.loop, &x.a.done, &x.b.done, 8000));
    assert_true(x.a.r.err < 0);
    assert_true(x.b.r.err < 0);
    assert_int_equal(x.a.r.fd, -1);
    assert_false(fd_open(x.a.fd));
    assert_false(fd_open(x.b.fd));
    assert_true(x.b.r.received > 0); /* the datagrams came; the proof failed */
    assert_true(strlen(x.b.r.reason) > 0);
    pair_free(&x);
}

static void test_punch_impossible_and_cancel(void **state)
{
    (void)state;
    pair x;
    pair_init(&x, &pers[6], &pers[6]);
    assert_int_equal(x.pa.status, NTCP_EUNREACHABLE);
    start(&x, 0);
    assert_false(x.a.done); /* never from inside start */
    start(&x, 1);
    x.b.p = x.b.p;
    ntcp_udp_punch_cancel(x.b.p);
    assert_true(x.b.done); /* cancel reports at once */
    assert_int_equal(x.b.r.err, NTCP_ECLOSED);
    assert_true(run_until(&x.loop, &x.a.done, NULL, 2000));
    assert_int_equal(x.a.r.err, NTCP_EUNREACHABLE);
    assert_non_null(strstr(x.a.r.reason, "relay"));
    assert_false(fd_open(x.a.fd));
    pair_free(&x);
}

static void test_punch_many_sockets(void **state)
{
    (void)state;
    /* random (alice, 16 sockets) against port-restricted (bob, random
     * ports of 127.0.0.1): on loopback nothing filters, so alice's probes
     * reach bob at once; the many sockets still have to be run, one kept. */
    pair x;
    pair_init(&x, &pers[6], &pers[4]);
    assert_int_equal(x.pa.method, UDP_METHOD_BIRTHDAY);
    assert_int_equal(x.pa.nsockets, 16);
    assert_int_equal(x.pb.random_probes, 64);
    start(&x, 0);
    start(&x, 1);
    assert_true(run_until(&x.loop, &x.a.done, &x.b.done, 8000));
    assert_int_equal(x.a.r.err, 0);
    assert_int_equal(x.b.r.err, 0);
    assert_int_equal(x.a.r.sockets, 16);
    assert_string_equal(udp_method_name(x.b.r.method), "birthday");
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    assert_int_equal(getpeername(x.b.r.fd, (struct sockaddr *)&peer, &pl), 0);
    assert_true(ntcp_sockaddr_equal((struct sockaddr *)&peer, (struct sockaddr *)&x.a.r.local));
    assert_int_equal(send(x.a.r.fd, "x", 1, 0), 1);
    char rb[8];
    ssize_t got = -1;
    uint64_t dl = mono_ms() + 2000;
    while (got < 0 && mono_ms() < dl)
        got = recv(x.b.r.fd, rb, sizeof rb, MSG_DONTWAIT);
    assert_int_equal(got, 1);
    close(x.a.r.fd);
    close(x.b.r.fd);
    pair_free(&x);
}

/* Bob by hand, on two sockets: the genuine flight from s1, and the same
 * bytes again from s2 (an on-path copier). Alice keeps one path, s1's. */
static void send_core_output(ntcp_verify_core *c, int fd, const struct sockaddr_storage *to,
                             uint8_t copies[4][VERIFY_MAX_MESSAGE], size_t *clen, int *ncopies)
{
    for (;;) {
        const uint8_t *o;
        size_t len;
        ntcp_verify_core_output(c, &o, &len);
        if (len < 20)
            return;
        size_t m = 20 + (size_t)((o[2] << 8) | o[3]);
        sendto(fd, o, m, 0, (const struct sockaddr *)to, sizeof(struct sockaddr_in));
        if (*ncopies < 4) {
            memcpy(copies[*ncopies], o, m);
            clen[(*ncopies)++] = m;
        }
        ntcp_verify_core_sent(c, m);
    }
}

static void test_punch_replayed_hello(void **state)
{
    (void)state;
    pair x;
    pair_init(&x, &pers[0], &pers[0]);
    end s2;
    udp_socket(&s2);
    start(&x, 0); /* alice only; bob is driven by hand on x.b.fd */
    ntcp_verify_params v;
    params(&x, 1, &v);
    ntcp_verify_core *c = malloc(sizeof *c);
    assert_int_equal(ntcp_verify_core_init(c, &v, NULL), 0);
    uint8_t copies[4][VERIFY_MAX_MESSAGE];
    size_t clen[4];
    int ncopies = 0, replayed = 0;
    send_core_output(c, x.b.fd, &x.a.local, copies, clen, &ncopies);
    uint64_t dl = mono_ms() + 8000;
    uint8_t buf[VERIFY_MAX_MESSAGE + 1];
    while (!x.a.done && mono_ms() < dl) {
        uv_run(&x.loop, UV_RUN_NOWAIT);
        /* the copier sends whatever bob sent so far, once */
        for (; replayed < ncopies; replayed++)
            sendto(s2.fd, copies[replayed], clen[replayed], 0, (struct sockaddr *)&x.a.local,
                   sizeof(struct sockaddr_in));
        ssize_t n = recv(x.b.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) {
            usleep(1000);
            continue;
        }
        udp_dgram d;
        if (udp_dgram_parse(buf, (size_t)n, &d) < 0)
            continue;
        if (d.kind == UDP_DG_PICK) {
            uint8_t pk[64];
            int m = udp_dgram_build(pk, sizeof pk, UDP_PUNCH_PICK, BROKER_ROLE_TARGET, d.session_id);
            sendto(x.b.fd, pk, (size_t)m, 0, (struct sockaddr *)&x.a.local, sizeof(struct sockaddr_in));
            continue;
        }
        if (d.kind != UDP_DG_VERIFY)
            continue;
        bool want = (c->state == VERIFY_WAIT_HELLO && d.v.method == VERIFY_HELLO) ||
                    (c->state == VERIFY_WAIT_PROOF && d.v.method == VERIFY_PROOF);
        if (want) {
            ntcp_verify_core_input(c, buf, (size_t)n);
            send_core_output(c, x.b.fd, &x.a.local, copies, clen, &ncopies);
        }
    }
    assert_true(x.a.done);
    assert_int_equal(x.a.r.err, 0);
    assert_int_equal(c->state, VERIFY_DONE);
    assert_true(ntcp_sockaddr_equal((struct sockaddr *)&x.a.r.remote, (struct sockaddr *)&x.b.local));
    assert_int_equal(x.a.r.paths, 1); /* the copier's HELLO opened no path */
    assert_true(x.a.r.dropped >= 1);
    assert_memory_equal(x.a.r.binding, c->binding, VERIFY_BINDING_SIZE);
    free(c);
    close(x.a.r.fd);
    close(x.b.fd);
    close(s2.fd);
    pair_free(&x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_every_pair),
        cmocka_unit_test(test_plan_rows),
        cmocka_unit_test(test_codec),
        cmocka_unit_test(test_punch_loopback),
        cmocka_unit_test(test_punch_wrong_key),
        cmocka_unit_test(test_punch_impossible_and_cancel),
        cmocka_unit_test(test_punch_many_sockets),
        cmocka_unit_test(test_punch_replayed_hello),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
