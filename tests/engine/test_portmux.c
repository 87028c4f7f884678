/*
 * test_portmux.c: the session port's shared listener (src/portmux.h) on
 * loopback: connections go to the session their HELLO names, whole or split
 * over several segments; one session on the port takes connections at once;
 * garbage, unknown sessions and declined connections are closed; the last
 * registration's removal closes the listener.
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
#include <poll.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "ntcp.h"
#include "free_port.h"
#include "portmux.h"
#include "verify.h"

typedef struct taker {
    int fds[8];
    int n;
    bool decline;
} taker;

static bool take(void *user, int fd, const struct sockaddr_storage *from)
{
    taker *t = user;
    assert_int_equal(from->ss_family, AF_INET);
    if (t->decline)
        return false;
    assert_true(t->n < 8);
    t->fds[t->n++] = fd;
    return true;
}

static void sid_of(uint8_t tag, uint8_t sid[VERIFY_SESSION_ID_SIZE])
{
    uint8_t nonce[BROKER_NONCE_SIZE];
    memset(nonce, tag, sizeof nonce);
    assert_int_equal(ntcp_verify_session_id(nonce, sid), 0);
}

static struct sockaddr_storage local_at(uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a->sin_port = htons(port);
    return ss;
}

static int dial(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_storage ss = local_at(port);
    assert_int_equal(connect(fd, (struct sockaddr *)&ss, sizeof(struct sockaddr_in)), 0);
    return fd;
}

static size_t hello(uint8_t tag, uint8_t *buf, size_t cap)
{
    uint8_t sid[VERIFY_SESSION_ID_SIZE], key[BROKER_KEY_SIZE], rnd[VERIFY_RANDOM_SIZE];
    sid_of(tag, sid);
    memset(key, 7, sizeof key);
    memset(rnd, tag, sizeof rnd);
    int n = ntcp_verify_build_hello(buf, cap, BROKER_ROLE_REQUESTER, sid, "alice", key, rnd);
    assert_true(n > 0);
    return (size_t)n;
}

static void run_until(uv_loop_t *loop, const int *count, int want)
{
    for (int i = 0; i < 400 && *count < want; i++)
        uv_run(loop, UV_RUN_NOWAIT), usleep(5000);
}

/* Whether the peer closed fd (EOF or reset) within a second. */
static bool closed_by_peer(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 1000) != 1)
        return false;
    char c;
    ssize_t n = recv(fd, &c, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

/* A mux on a loop with sessions 1 and 2 registered on one loopback port. */
typedef struct two {
    uv_loop_t loop;
    ntcp_portmux *m;
    uint16_t port;
    struct sockaddr_storage la;
    uint8_t s1[VERIFY_SESSION_ID_SIZE];
    ntcp_portmux_reg *r1, *r2;
} two;

static void two_start(two *w, taker *t1, taker *t2)
{
    uv_loop_init(&w->loop);
    assert_int_equal(ntcp_portmux_new(&w->loop, &w->m), 0);
    w->port = free_port();
    w->la = local_at(w->port);
    uint8_t s2[VERIFY_SESSION_ID_SIZE];
    sid_of(1, w->s1);
    sid_of(2, s2);
    assert_int_equal(ntcp_portmux_add(w->m, &w->la, w->s1, take, t1, &w->r1, NULL), 0);
    assert_int_equal(ntcp_portmux_add(w->m, &w->la, s2, take, t2, &w->r2, NULL), 0);
}

/* Frees the mux (registrations left are dropped) and closes the loop. */
static void two_end(two *w)
{
    ntcp_portmux_free(w->m);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
}

static void test_by_session(void **state)
{
    (void)state;
    taker t1 = {0}, t2 = {0};
    two w;
    two_start(&w, &t1, &t2);
    uv_loop_t *loopp = &w.loop;
    ntcp_portmux *m = w.m;
    uint16_t port = w.port;
    struct sockaddr_storage la = w.la;
    ntcp_portmux_reg *r1 = w.r1, *r2 = w.r2;

    /* Session 2's HELLO whole; session 1's in three pieces. */
    uint8_t b1[VERIFY_MAX_MESSAGE], b2[VERIFY_MAX_MESSAGE];
    size_t n1 = hello(1, b1, sizeof b1), n2 = hello(2, b2, sizeof b2);
    int c2 = dial(port), c1 = dial(port);
    assert_int_equal(send(c2, b2, n2, 0), (ssize_t)n2);
    assert_int_equal(send(c1, b1, 7, 0), 7);
    run_until(loopp, &t2.n, 1);
    assert_int_equal(t2.n, 1);
    assert_int_equal(t1.n, 0);
    assert_int_equal(send(c1, b1 + 7, 30, 0), 30);
    for (int i = 0; i < 20; i++)
        uv_run(loopp, UV_RUN_NOWAIT), usleep(2000);
    assert_int_equal(t1.n, 0); /* not yet whole */
    assert_int_equal(send(c1, b1 + 37, n1 - 37, 0), (ssize_t)(n1 - 37));
    run_until(loopp, &t1.n, 1);
    assert_int_equal(t1.n, 1);

    /* The HELLO is still in the socket, for the proof. */
    uint8_t got[VERIFY_MAX_MESSAGE];
    assert_int_equal(recv(t1.fds[0], got, sizeof got, 0), (ssize_t)n1);
    assert_memory_equal(got, b1, n1);

    /* An unknown session, and garbage: closed. */
    uint8_t b3[VERIFY_MAX_MESSAGE];
    size_t n3 = hello(3, b3, sizeof b3);
    int c3 = dial(port), c4 = dial(port);
    assert_int_equal(send(c3, b3, n3, 0), (ssize_t)n3);
    memset(b3, 0x55, 64);
    assert_int_equal(send(c4, b3, 64, 0), 64);
    for (int i = 0; i < 40; i++)
        uv_run(loopp, UV_RUN_NOWAIT), usleep(2000);
    assert_true(closed_by_peer(c3));
    assert_true(closed_by_peer(c4));
    ntcp_portmux_stats st;
    ntcp_portmux_get_stats(m, &st);
    assert_int_equal(st.accepted, 4);
    assert_int_equal(st.by_session, 2);
    assert_int_equal(st.dropped, 2);
    assert_int_equal(st.listeners, 1);
    assert_int_equal(st.pending, 0);

    /* One session left: a connection goes to it at once, HELLO or not. */
    ntcp_portmux_remove(r2);
    int c5 = dial(port);
    run_until(loopp, &t1.n, 2);
    assert_int_equal(t1.n, 2);
    ntcp_portmux_get_stats(m, &st);
    assert_int_equal(st.direct, 1);

    /* Declined: closed. */
    t1.decline = true;
    int c6 = dial(port);
    for (int i = 0; i < 40; i++)
        uv_run(loopp, UV_RUN_NOWAIT), usleep(2000);
    assert_true(closed_by_peer(c6));

    /* The last registration gone, nobody listens. */
    ntcp_portmux_remove(r1);
    for (int i = 0; i < 5; i++)
        uv_run(loopp, UV_RUN_NOWAIT);
    ntcp_portmux_get_stats(m, &st);
    assert_int_equal(st.listeners, 0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_not_equal(connect(fd, (struct sockaddr *)&la, sizeof(struct sockaddr_in)), 0);
    assert_int_equal(errno, ECONNREFUSED);
    close(fd);

    int all[] = {c1, c2, c3, c4, c5, c6, t1.fds[0], t1.fds[1], t2.fds[0]};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        close(all[i]);
    two_end(&w);
}

/* Freeing the mux with connections still waiting closes them and every
 * handle. */
static void test_free_with_pending(void **state)
{
    (void)state;
    taker t = {0};
    two w;
    two_start(&w, &t, &t);
    /* A second port is a second listener. */
    struct sockaddr_storage la2 = local_at(free_port());
    ntcp_portmux_reg *r3;
    assert_int_equal(ntcp_portmux_add(w.m, &la2, w.s1, take, &t, &r3, NULL), 0);
    int c = dial(w.port);
    for (int i = 0; i < 40; i++)
        uv_run(&w.loop, UV_RUN_NOWAIT), usleep(1000);
    ntcp_portmux_stats st;
    ntcp_portmux_get_stats(w.m, &st);
    assert_int_equal(st.pending, 1);
    assert_int_equal(st.listeners, 2);
    assert_int_equal(st.registrations, 3);
    two_end(&w);
    assert_true(closed_by_peer(c));
    close(c);
    assert_int_equal(t.n, 0);
}

/* Part of a HELLO, then the peer's FIN: closed at once, and the loop is
 * not kept busy (the socket stays readable after a FIN whatever
 * SO_RCVLOWAT says). */
static void test_partial_then_fin(void **state)
{
    (void)state;
    taker t = {0};
    two w;
    two_start(&w, &t, &t);
    uint8_t b[VERIFY_MAX_MESSAGE];
    hello(1, b, sizeof b);
    int c = dial(w.port);
    assert_int_equal(send(c, b, 28, 0), 28); /* header and a bit */
    shutdown(c, SHUT_WR);
    clock_t cpu0 = clock();
    for (int i = 0; i < 50; i++)
        uv_run(&w.loop, UV_RUN_NOWAIT), usleep(2000);
    double cpu = (double)(clock() - cpu0) / CLOCKS_PER_SEC;
    ntcp_portmux_stats st;
    ntcp_portmux_get_stats(w.m, &st);
    assert_int_equal(st.pending, 0);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(t.n, 0);
    assert_true(closed_by_peer(c));
    /* 100 ms of waiting must not have been 100 ms of spinning. */
    assert_true(cpu < 0.05);
    close(c);
    two_end(&w);
}

static void test_bad_args(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    ntcp_portmux *m;
    assert_int_equal(ntcp_portmux_new(&loop, &m), 0);
    uint8_t s[VERIFY_SESSION_ID_SIZE] = {0};
    struct sockaddr_storage la = local_at(0);
    ntcp_portmux_reg *r;
    taker t = {0};
    assert_int_equal(ntcp_portmux_add(m, &la, s, take, &t, &r, NULL), NTCP_EINVAL); /* port 0 */
    /* A port another socket holds without SO_REUSEPORT: bind fails. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    la = local_at(free_port());
    assert_int_equal(bind(fd, (struct sockaddr *)&la, sizeof(struct sockaddr_in)), 0);
    assert_int_equal(listen(fd, 1), 0);
    int sys = 0;
    assert_int_equal(ntcp_portmux_add(m, &la, s, take, &t, &r, &sys), NTCP_ESYS);
    assert_int_equal(sys, EADDRINUSE);
    close(fd);
    ntcp_portmux_remove(NULL);
    ntcp_portmux_free(m);
    ntcp_portmux_free(NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_by_session),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_partial_then_fin),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
