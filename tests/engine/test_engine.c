/*
 * test_engine.c: the attempt engine (src/engine.c) on loopback: two engines
 * on one loop run hand-made complementary plans (direct, simultaneous open,
 * punch then connect), and the failures: refused, timeout, key proof
 * failing, raw SYN, impossible plan, cancel; no descriptor may leak.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "addr.h"
#include "engine.h"
#include "identity.h"
#include "ntcp.h"
#include "free_port.h"

static EVP_PKEY *akey, *bkey, *mkey;
static uint8_t apub[32], bpub[32], mpub[32];
static uint8_t nonce[BROKER_NONCE_SIZE];

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void lo(plan_ports *pp, uint16_t port, uint16_t count)
{
    memset(pp, 0, sizeof *pp);
    struct sockaddr_in *sin = (struct sockaddr_in *)&pp->addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = htons(port);
    pp->count = count;
    pp->step = 1;
}

static plan_attempt *add(plan *p, unsigned id, ntcp_method_t m, plan_role_t role, plan_local_t local,
                         uint16_t tport, uint32_t start, uint32_t stop)
{
    plan_attempt *a = &p->a[p->n++];
    memset(a, 0, sizeof *a);
    a->id = id;
    a->method = m;
    a->role = role;
    a->local = local;
    lo(&a->target, tport, 1);
    a->start_ms = start;
    a->stop_ms = stop;
    a->repeats = 1;
    if (stop > p->deadline_ms)
        p->deadline_ms = stop;
    return a;
}

typedef struct side {
    bool done;
    ntcp_engine_result r;
} side;

static void on_done(ntcp_engine *e, const ntcp_engine_result *r, void *user)
{
    (void)e;
    side *s = user;
    assert_false(s->done);
    s->done = true;
    s->r = *r;
}

static void params(ntcp_verify_params *v, bool requester, bool wrong_key)
{
    memset(v, 0, sizeof *v);
    v->key = requester ? akey : bkey;
    v->name = requester ? "alice" : "bob";
    v->peer_name = requester ? "bob" : "alice";
    memcpy(v->peer_key, wrong_key ? mpub : requester ? bpub : apub, 32);
    memcpy(v->nonce, nonce, sizeof nonce);
    v->role = requester ? BROKER_ROLE_REQUESTER : BROKER_ROLE_TARGET;
    v->timeout_ms = 2000;
}

/* Runs one or two engines to their results, with a deadline on the loop. */
static void run(plan *pa, uint16_t sa, plan *pb, uint16_t sb, bool wrong, side *A, side *B)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    uint64_t t0 = uv_now(&loop);
    memset(A, 0, sizeof *A);
    memset(B, 0, sizeof *B);
    ntcp_engine_config ca = {.plan = pa, .session_port = sa, .start_at = t0 + 20};
    params(&ca.verify, true, false);
    assert_int_equal(ntcp_engine_start(&loop, &ca, on_done, A, NULL), 0);
    if (pb) {
        ntcp_engine_config cb = {.plan = pb, .session_port = sb, .start_at = t0 + 20};
        params(&cb.verify, false, wrong);
        assert_int_equal(ntcp_engine_start(&loop, &cb, on_done, B, NULL), 0);
    } else {
        B->done = true;
    }
    assert_false(A->done); /* never from inside start */
    while (uv_run(&loop, UV_RUN_ONCE) && uv_now(&loop) - t0 < 20000) {
    }
    assert_true(A->done && B->done);
    assert_int_equal(uv_run(&loop, UV_RUN_NOWAIT), 0); /* every handle closed */
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Both fds verified and the same connection: carry a few bytes on it. */
static void check_pair(side *A, side *B, ntcp_method_t m)
{
    assert_int_equal(A->r.err, 0);
    assert_int_equal(B->r.err, 0);
    assert_int_equal(A->r.method, m);
    assert_int_equal(B->r.method, m);
    assert_memory_equal(A->r.binding, B->r.binding, VERIFY_BINDING_SIZE);
    assert_true(ntcp_sockaddr_equal((struct sockaddr *)&A->r.local, (struct sockaddr *)&B->r.remote));
    assert_int_equal(send(A->r.fd, "ping", 4, 0), 4);
    int fl = fcntl(B->r.fd, F_GETFL);
    assert_int_equal(fcntl(B->r.fd, F_SETFL, fl & ~O_NONBLOCK), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(B->r.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[8];
    assert_int_equal(recv(B->r.fd, buf, 4, MSG_WAITALL), 4);
    assert_memory_equal(buf, "ping", 4);
    close(A->r.fd);
    close(B->r.fd);
}

static void test_direct(void **st)
{
    (void)st;
    int fds = count_fds();
    uint16_t pb = free_port();
    plan a = {0}, b = {0};
    add(&a, 1, NTCP_METHOD_DIRECT, PLAN_CONNECT, PLAN_LOCAL_ANY, pb, 50, 2000); /* after B listens */
    add(&b, 1, NTCP_METHOD_DIRECT, PLAN_ACCEPT, PLAN_LOCAL_SESSION, 0, 0, 2000);
    side A, B;
    run(&a, 0, &b, pb, false, &A, &B);
    check_pair(&A, &B, NTCP_METHOD_DIRECT);
    assert_int_equal(A.r.a[0].outcome, NTCP_ATTEMPT_WON);
    assert_int_equal(B.r.a[0].outcome, NTCP_ATTEMPT_WON);
    char js[2048];
    assert_true(ntcp_engine_result_json(&A.r, js, sizeof js) < sizeof js);
    assert_non_null(strstr(js, "\"method\":\"direct\""));
    assert_int_equal(count_fds(), fds);
}

/* Both connect from their session ports and listen on them, repeated. */
static void test_simopen(void **st)
{
    (void)st;
    int fds = count_fds();
    uint16_t pa = free_port(), pb = free_port();
    plan a = {0}, b = {0};
    plan_attempt *x = add(&a, 1, NTCP_METHOD_P2PNAT, PLAN_SIMOPEN, PLAN_LOCAL_SESSION, pb, 0, 3000);
    plan_attempt *y = add(&b, 1, NTCP_METHOD_P2PNAT, PLAN_SIMOPEN, PLAN_LOCAL_SESSION, pa, 0, 3000);
    x->repeats = y->repeats = 4;
    x->repeat_ms = y->repeat_ms = 100;
    side A, B;
    run(&a, pa, &b, pb, false, &A, &B);
    check_pair(&A, &B, NTCP_METHOD_P2PNAT);
    assert_int_equal(ntcp_sa_port(&A.r.local), pa);
    assert_int_equal(ntcp_sa_port(&B.r.local), pb);
    assert_int_equal(count_fds(), fds);
}

/* A punches (a low-TTL SYN to the peer's port, here refused) and listens
 * on a fresh port; B connects to it a little later. */
static void test_punch(void **st)
{
    (void)st;
    int fds = count_fds();
    uint16_t pa = free_port(), pb = free_port();
    plan a = {0}, b = {0};
    plan_attempt *p = add(&a, 1, NTCP_METHOD_STUNT2, PLAN_PUNCH, PLAN_LOCAL_SESSION, pb, 0, 2000);
    p->ttl = 2;
    p->peer_any_port = true; /* B connects from any port: A's listener takes it */
    plan_attempt *c = add(&b, 1, NTCP_METHOD_STUNT2, PLAN_CONNECT, PLAN_LOCAL_ANY, pa, 50, 2000);
    c->repeats = 3;
    c->repeat_ms = 200;
    side A, B;
    run(&a, pa, &b, pb, false, &A, &B);
    check_pair(&A, &B, NTCP_METHOD_STUNT2);
    assert_true(A.r.a[0].syns >= 1);
    assert_int_equal(count_fds(), fds);
}

/* Staged: the first attempt is refused (nobody listens), the second wins. */
static void test_staged(void **st)
{
    (void)st;
    int fds = count_fds();
    uint16_t pb = free_port(), dead = free_port();
    plan a = {0}, b = {0};
    add(&a, 1, NTCP_METHOD_DIRECT, PLAN_CONNECT, PLAN_LOCAL_ANY, dead, 0, 200);
    add(&a, 2, NTCP_METHOD_REVERSAL, PLAN_ACCEPT, PLAN_LOCAL_FRESH, 0, 0, 3000);
    add(&b, 1, NTCP_METHOD_DIRECT, PLAN_ACCEPT, PLAN_LOCAL_SESSION, 0, 0, 200);
    side A, B;
    /* B connects to A's fresh port: learn it only by running A first is not
     * possible, so B's second attempt targets a port A takes as its session. */
    uint16_t pa = free_port();
    a.a[1].local = PLAN_LOCAL_SESSION;
    add(&b, 2, NTCP_METHOD_REVERSAL, PLAN_CONNECT, PLAN_LOCAL_ANY, pa, 250, 3000);
    run(&a, pa, &b, pb, false, &A, &B);
    check_pair(&A, &B, NTCP_METHOD_REVERSAL);
    assert_int_equal(A.r.a[0].outcome, NTCP_ATTEMPT_REFUSED);
    assert_true(A.r.a[0].refusals >= 1);
    assert_int_equal(count_fds(), fds);
}

/* Direct and reversal at once: two connections, both verified at both
 * ends; the requester's choice must make both ends keep the same one. */
static void test_two_connections(void **st)
{
    (void)st;
    int fds = count_fds();
    for (int round = 0; round < 5; round++) {
        uint16_t pa = free_port(), pb = free_port();
        plan a = {0}, b = {0};
        add(&a, 1, NTCP_METHOD_DIRECT, PLAN_CONNECT, PLAN_LOCAL_ANY, pb, 50, 2000);
        add(&a, 2, NTCP_METHOD_REVERSAL, PLAN_ACCEPT, PLAN_LOCAL_SESSION, 0, 0, 2000);
        add(&b, 1, NTCP_METHOD_DIRECT, PLAN_ACCEPT, PLAN_LOCAL_SESSION, 0, 0, 2000);
        add(&b, 2, NTCP_METHOD_REVERSAL, PLAN_CONNECT, PLAN_LOCAL_ANY, pa, 50, 2000);
        side A, B;
        run(&a, pa, &b, pb, false, &A, &B);
        check_pair(&A, &B, A.r.method); /* same binding: the same connection */
        assert_int_equal(A.r.attempt_id, B.r.attempt_id);
    }
    assert_int_equal(count_fds(), fds);
}

/* Nothing answers: the deadline ends it with NTCP_ETIMEDOUT. */
static void test_timeout(void **st)
{
    (void)st;
    int fds = count_fds();
    uint16_t pa = free_port();
    plan a = {0};
    add(&a, 1, NTCP_METHOD_DIRECT, PLAN_ACCEPT, PLAN_LOCAL_SESSION, 0, 0, 300);
    side A, B;
    run(&a, pa, NULL, 0, false, &A, &B);
    assert_int_equal(A.r.err, NTCP_ETIMEDOUT);
    assert_int_equal(A.r.fd, -1);
    assert_true(A.r.elapsed_ms >= 300 && A.r.elapsed_ms < 5000);
    assert_int_equal(A.r.a[0].outcome, NTCP_ATTEMPT_TIMED_OUT);
    assert_int_equal(count_fds(), fds);
}

/* The peer does not hold the key the broker vouched for: the connection is
 * made but refused, and both end without a socket. */
static void test_wrong_key(void **st)
{
    (void)st;
    int fds = count_fds();
    uint16_t pb = free_port();
    plan a = {0}, b = {0};
    add(&a, 1, NTCP_METHOD_DIRECT, PLAN_CONNECT, PLAN_LOCAL_ANY, pb, 50, 500);
    add(&b, 1, NTCP_METHOD_DIRECT, PLAN_ACCEPT, PLAN_LOCAL_SESSION, 0, 0, 500);
    side A, B;
    run(&a, 0, &b, pb, true, &A, &B);
    assert_true(A.r.err < 0);
    assert_true(B.r.err < 0);
    assert_int_equal(A.r.fd, -1);
    assert_int_equal(B.r.a[0].outcome, NTCP_ATTEMPT_VERIFY_FAILED);
    assert_int_equal(count_fds(), fds);
}

static void test_raw_and_impossible(void **st)
{
    (void)st;
    int fds = count_fds();
    plan a = {0};
    add(&a, 1, NTCP_METHOD_NATBLASTER, PLAN_RAW_SYN, PLAN_LOCAL_SESSION, 9, 0, 1000);
    side A, B;
    run(&a, 40000, NULL, 0, false, &A, &B);
    assert_int_equal(A.r.err, NTCP_EUNREACHABLE);
    assert_int_equal(A.r.a[0].outcome, NTCP_ATTEMPT_FAILED);
    assert_non_null(strstr(A.r.a[0].why, "raw"));
    assert_true(A.r.elapsed_ms < 500); /* no waiting for the deadline */

    plan imp = {0};
    imp.status = NTCP_EUNREACHABLE;
    snprintf(imp.reason, sizeof imp.reason, "b has a random mapping: a relay is needed");
    run(&imp, 0, NULL, 0, false, &A, &B);
    assert_int_equal(A.r.err, NTCP_EUNREACHABLE);
    assert_non_null(strstr(A.r.reason, "relay"));
    assert_int_equal(count_fds(), fds);
}

static void cancel_cb(uv_timer_t *t)
{
    ntcp_engine_cancel(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_cancel(void **st)
{
    (void)st;
    int fds = count_fds();
    uv_loop_t loop;
    uv_loop_init(&loop);
    plan a = {0};
    add(&a, 1, NTCP_METHOD_DIRECT, PLAN_ACCEPT, PLAN_LOCAL_SESSION, 0, 0, 10000);
    ntcp_engine_config ca = {.plan = &a, .session_port = free_port(), .start_at = uv_now(&loop)};
    params(&ca.verify, true, false);
    side A = {0};
    ntcp_engine *e;
    assert_int_equal(ntcp_engine_start(&loop, &ca, on_done, &A, &e), 0);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = e;
    uv_timer_start(&t, cancel_cb, 100, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(A.done);
    assert_int_equal(A.r.err, NTCP_ECLOSED);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(count_fds(), fds);
}

int main(void)
{
    if (ntcp_identity_generate(&akey) || ntcp_identity_generate(&bkey) ||
        ntcp_identity_generate(&mkey))
        return 1;
    ntcp_identity_public(akey, apub);
    ntcp_identity_public(bkey, bpub);
    ntcp_identity_public(mkey, mpub);
    memset(nonce, 7, sizeof nonce);
    /* libuv opens a process-wide pipe with the first loop: open it before
     * the descriptor counts start. */
    uv_loop_t warm;
    uv_loop_init(&warm);
    uv_loop_close(&warm);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct),   cmocka_unit_test(test_simopen),
        cmocka_unit_test(test_punch),    cmocka_unit_test(test_staged),
        cmocka_unit_test(test_timeout),  cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_raw_and_impossible), cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_two_connections),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    EVP_PKEY_free(akey);
    EVP_PKEY_free(bkey);
    EVP_PKEY_free(mkey);
    return rc;
}
