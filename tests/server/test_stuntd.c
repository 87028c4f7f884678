/*
 * test_stuntd.c: ntcp-stuntd in-process on 127.0.0.1 and 127.0.0.2 (free
 * ports): Binding over UDP and TCP on all four sockets, RFC 3489,
 * CHANGE-REQUEST, RESPONSE-PORT, errors, junk, limits, and the connect-back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define IP1 "127.0.0.1"
#define IP2 "127.0.0.2"
#define WAIT_MS 3000 /* deadline for answers that must come */
#define QUIET_MS 300 /* how long "no answer" is watched for */

static harness H; /* the shared server of the group */

static int group_setup(void **state)
{
    (void)state;
    ntcp_stuntd_config cfg;
    test_config(&cfg, IP1, IP2);
    return harness_start(&H, &cfg) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    return harness_stop(&H) == 0 ? 0 : -1;
}

static void local_addr(int fd, struct sockaddr_storage *a)
{
    socklen_t l = sizeof(*a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)a, &l), 0);
}

/* Sends a request over UDP from fd to dst and parses the answer into m
 * (buf must outlive m). Returns the source of the answer. */
static void udp_ask(int fd, const struct sockaddr_storage *dst, const req_opts *o, uint8_t *buf,
                    size_t cap, stun_msg *m, uint8_t tid[16], struct sockaddr_storage *from)
{
    uint8_t req[256];
    size_t n = build_request(req, sizeof(req), o, tid);
    assert_true(n > 0);
    assert_int_equal(udp_send(fd, req, n, dst), 0);
    int got = udp_recv(fd, buf, cap, WAIT_MS, from);
    assert_true(got > 0);
    assert_int_equal(stun_parse(m, buf, (size_t)got), 0);
    assert_memory_equal(m->tid, tid, STUN_TID_SIZE);
}

static void check_addr_attr(const stun_msg *m, uint16_t type, const struct sockaddr_storage *want)
{
    struct sockaddr_storage got;
    assert_int_equal(stun_get_addr(m, type, &got), 0);
    assert_true(sa_equal(&got, want));
}

/* Binding over UDP on each of the four sockets. */
static void udp_binding_four_sockets(void **state)
{
    (void)state;
    int fd = udp_socket(IP1);
    assert_true(fd >= 0);
    struct sockaddr_storage me;
    local_addr(fd, &me);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            uint8_t buf[1024], tid[16];
            stun_msg m;
            struct sockaddr_storage from;
            req_opts o = {.fingerprint = true};
            udp_ask(fd, &H.addr[i][j], &o, buf, sizeof(buf), &m, tid, &from);
            assert_int_equal(m.cls, STUN_SUCCESS);
            assert_int_equal(m.method, STUN_BINDING);
            assert_false(m.rfc3489);
            assert_true(sa_equal(&from, &H.addr[i][j]));
            check_addr_attr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &me);
            check_addr_attr(&m, STUN_ATTR_MAPPED_ADDRESS, &me);
            check_addr_attr(&m, STUN_ATTR_RESPONSE_ORIGIN, &H.addr[i][j]);
            struct sockaddr_storage other;
            assert_int_equal(stun_get_addr(&m, STUN_ATTR_OTHER_ADDRESS, &other), 0);
            assert_true(sa_equal(&other, &H.addr[!i][!j]));
            /* The point of OTHER-ADDRESS: both IP and port differ. */
            assert_false(sa_same_ip(&other, &H.addr[i][j]));
            assert_int_not_equal(sa_port_of(&other), sa_port_of(&H.addr[i][j]));
            const char *sw;
            size_t swl;
            assert_int_equal(stun_get_string(&m, STUN_ATTR_SOFTWARE, &sw, &swl), 0);
            assert_true(swl > 0 && memcmp(sw, "ntcp-stuntd", 11) == 0);
            assert_true(m.fingerprint >= 0);
        }
    close(fd);
}

static void udp_fingerprint_only_when_asked(void **state)
{
    (void)state;
    int fd = udp_socket(IP1);
    uint8_t buf[1024], tid[16];
    stun_msg m;
    req_opts o = {0};
    udp_ask(fd, &H.addr[0][0], &o, buf, sizeof(buf), &m, tid, NULL);
    assert_int_equal(m.cls, STUN_SUCCESS);
    assert_int_equal(m.fingerprint, -1);
    assert_null(stun_find(&m, STUN_ATTR_FINGERPRINT));
    close(fd);
}

static void udp_rfc3489(void **state)
{
    (void)state;
    int fd = udp_socket(IP1);
    struct sockaddr_storage me;
    local_addr(fd, &me);
    uint8_t buf[1024], tid[16];
    stun_msg m;
    struct sockaddr_storage from;
    req_opts o = {.rfc3489 = true};
    udp_ask(fd, &H.addr[1][0], &o, buf, sizeof(buf), &m, tid, &from);
    assert_true(m.rfc3489);
    assert_int_equal(m.cls, STUN_SUCCESS);
    check_addr_attr(&m, STUN_ATTR_MAPPED_ADDRESS, &me);
    check_addr_attr(&m, STUN_ATTR_SOURCE_ADDRESS, &H.addr[1][0]);
    check_addr_attr(&m, STUN_ATTR_CHANGED_ADDRESS, &H.addr[0][1]);
    assert_null(stun_find(&m, STUN_ATTR_XOR_MAPPED_ADDRESS));
    assert_true(sa_equal(&from, &H.addr[1][0]));
    close(fd);
}

/* CHANGE-REQUEST: the answer comes from the changed IP and/or port. */
static void udp_change_request(void **state)
{
    (void)state;
    int fd = udp_socket(IP1);
    static const uint32_t flags[] = {STUN_CHANGE_PORT, STUN_CHANGE_IP,
                                     STUN_CHANGE_IP | STUN_CHANGE_PORT, 0};
    for (int ask = 0; ask < 2; ask++) /* from the primary, then the alternate */
        for (size_t k = 0; k < 4; k++) {
            int i = ask, j = ask;
            int oi = i ^ ((flags[k] & STUN_CHANGE_IP) != 0);
            int oj = j ^ ((flags[k] & STUN_CHANGE_PORT) != 0);
            uint8_t buf[1024], tid[16];
            stun_msg m;
            struct sockaddr_storage from;
            req_opts o = {.has_change = true, .change = flags[k]};
            udp_ask(fd, &H.addr[i][j], &o, buf, sizeof(buf), &m, tid, &from);
            assert_int_equal(m.cls, STUN_SUCCESS);
            assert_true(sa_equal(&from, &H.addr[oi][oj]));
            check_addr_attr(&m, STUN_ATTR_RESPONSE_ORIGIN, &H.addr[oi][oj]);
            /* OTHER-ADDRESS stays relative to the socket that was asked. */
            check_addr_attr(&m, STUN_ATTR_OTHER_ADDRESS, &H.addr[!i][!j]);
        }
    close(fd);
}

static void udp_response_port(void **state)
{
    (void)state;
    int a = udp_socket(IP1), b = udp_socket(IP1);
    struct sockaddr_storage me_a, me_b;
    local_addr(a, &me_a);
    local_addr(b, &me_b);
    uint8_t req[256], buf[1024], tid[16];
    req_opts o = {.response_port = sa_port_of(&me_b)};
    size_t n = build_request(req, sizeof(req), &o, tid);
    assert_int_equal(udp_send(a, req, n, &H.addr[0][0]), 0);
    int got = udp_recv(b, buf, sizeof(buf), WAIT_MS, NULL);
    assert_true(got > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)got), 0);
    assert_memory_equal(m.tid, tid, 16);
    /* The mapped address is still the requester's. */
    check_addr_attr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &me_a);
    assert_int_equal(udp_recv(a, buf, sizeof(buf), QUIET_MS, NULL), -1);
    close(a);
    close(b);
}

static void expect_error(const stun_msg *m, int want)
{
    int code;
    const char *reason;
    size_t rl;
    assert_int_equal(m->cls, STUN_ERROR);
    assert_int_equal(stun_get_error(m, &code, &reason, &rl), 0);
    assert_int_equal(code, want);
}

static void udp_malformed_gets_400(void **state)
{
    (void)state;
    int fd = udp_socket(IP1);
    uint8_t req[256], buf[1024], tid[16];
    req_opts o = {0};
    size_t n = build_request(req, sizeof(req), &o, tid);
    /* An attribute whose length runs past the end of the message. */
    uint8_t bad[64];
    memcpy(bad, req, n);
    bad[n + 0] = 0x80; /* SOFTWARE */
    bad[n + 1] = 0x22;
    bad[n + 2] = 0x00;
    bad[n + 3] = 0x40; /* 64 bytes, only 4 present */
    memset(bad + n + 4, 'x', 4);
    size_t blen = n + 8;
    bad[2] = 0;
    bad[3] = (uint8_t)(blen - STUN_HEADER_SIZE);
    assert_int_equal(udp_send(fd, bad, blen, &H.addr[0][0]), 0);
    int got = udp_recv(fd, buf, sizeof(buf), WAIT_MS, NULL);
    assert_true(got > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)got), 0);
    assert_memory_equal(m.tid, tid, 16);
    expect_error(&m, 400);
    /* A wrong FINGERPRINT is silently discarded (RFC 8489 6.3). */
    req_opts fp = {.fingerprint = true};
    n = build_request(req, sizeof(req), &fp, tid);
    req[n - 1] ^= 0x01;
    assert_int_equal(udp_send(fd, req, n, &H.addr[0][0]), 0);
    assert_int_equal(udp_recv(fd, buf, sizeof(buf), QUIET_MS, NULL), -1);
    close(fd);
}

static void udp_unknown_attr_gets_420(void **state)
{
    (void)state;
    int fd = udp_socket(IP1);
    uint8_t buf[1024], tid[16];
    stun_msg m;
    req_opts o = {.unknown_attr = 0x0077, .fingerprint = true};
    udp_ask(fd, &H.addr[0][1], &o, buf, sizeof(buf), &m, tid, NULL);
    expect_error(&m, 420);
    uint16_t types[8];
    size_t nt = 0;
    assert_int_equal(stun_get_unknown(&m, types, 8, &nt), 0);
    assert_int_equal(nt, 1);
    assert_int_equal(types[0], 0x0077);
    close(fd);
}

static void udp_junk_dropped(void **state)
{
    (void)state;
    int fd = udp_socket(IP1);
    static const char junk[] = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    uint8_t buf[1024], tid[16];
    assert_int_equal(udp_send(fd, junk, sizeof(junk) - 1, &H.addr[0][0]), 0);
    uint8_t tiny[3] = {0, 1, 0};
    assert_int_equal(udp_send(fd, tiny, sizeof(tiny), &H.addr[0][0]), 0);
    assert_int_equal(udp_recv(fd, buf, sizeof(buf), QUIET_MS, NULL), -1);
    /* An indication and a response get no answer either. */
    req_opts ind = {.cls = STUN_INDICATION};
    uint8_t req[256];
    size_t n = build_request(req, sizeof(req), &ind, tid);
    assert_int_equal(udp_send(fd, req, n, &H.addr[0][0]), 0);
    req_opts resp = {.cls = STUN_SUCCESS};
    n = build_request(req, sizeof(req), &resp, tid);
    assert_int_equal(udp_send(fd, req, n, &H.addr[0][0]), 0);
    assert_int_equal(udp_recv(fd, buf, sizeof(buf), QUIET_MS, NULL), -1);
    /* And the server still answers. */
    stun_msg m;
    req_opts o = {0};
    udp_ask(fd, &H.addr[0][0], &o, buf, sizeof(buf), &m, tid, NULL);
    assert_int_equal(m.cls, STUN_SUCCESS);
    close(fd);
}

static void udp_connect_back_rejected(void **state)
{
    (void)state;
    int fd = udp_socket(IP1);
    uint8_t buf[1024], tid[16];
    stun_msg m;
    req_opts o = {.method = STUNT_CONNECT_BACK, .has_change = true, .change = STUN_CHANGE_PORT};
    udp_ask(fd, &H.addr[0][0], &o, buf, sizeof(buf), &m, tid, NULL);
    assert_int_equal(m.method, STUNT_CONNECT_BACK);
    expect_error(&m, 400);
    close(fd);
}

static void udp_rate_limit(void **state)
{
    (void)state;
    harness h;
    ntcp_stuntd_config cfg;
    test_config(&cfg, IP1, IP2);
    cfg.udp_rate = 0.5; /* no refill worth counting during the test */
    cfg.udp_burst = 3;
    assert_int_equal(harness_start(&h, &cfg), 0);
    int fd = udp_socket(IP1);
    uint8_t req[256], buf[1024], tid[16];
    req_opts o = {0};
    for (int i = 0; i < 10; i++) {
        size_t n = build_request(req, sizeof(req), &o, tid);
        assert_int_equal(udp_send(fd, req, n, &h.addr[i & 1][0]), 0);
    }
    int answers = 0;
    while (udp_recv(fd, buf, sizeof(buf), QUIET_MS * 2, NULL) > 0)
        answers++;
    assert_true(answers >= 3);
    assert_true(answers <= 4);
    /* Another source IP has its own bucket. */
    int fd2 = udp_socket(IP2);
    size_t n = build_request(req, sizeof(req), &o, tid);
    assert_int_equal(udp_send(fd2, req, n, &h.addr[0][0]), 0);
    assert_true(udp_recv(fd2, buf, sizeof(buf), WAIT_MS, NULL) > 0);
    close(fd);
    close(fd2);
    assert_int_equal(harness_stop(&h), 0);
}

/* ---- TCP ----------------------------------------------------------------- */

static void tcp_ask(int fd, const req_opts *o, uint8_t *buf, size_t cap, stun_msg *m,
                    uint8_t tid[16])
{
    uint8_t req[256];
    size_t n = build_request(req, sizeof(req), o, tid);
    assert_int_equal(write_all(fd, req, n), 0);
    int got = tcp_read_msg(fd, buf, cap, WAIT_MS);
    assert_true(got > 0);
    assert_int_equal(stun_parse(m, buf, (size_t)got), 0);
    assert_memory_equal(m->tid, tid, 16);
}

static void tcp_binding_four_sockets(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            int fd = tcp_connect(&H.addr[i][j], NULL, false);
            assert_true(fd >= 0);
            struct sockaddr_storage me;
            local_addr(fd, &me);
            uint8_t buf[1024], tid[16];
            stun_msg m;
            req_opts o = {.fingerprint = (i == j)};
            tcp_ask(fd, &o, buf, sizeof(buf), &m, tid);
            assert_int_equal(m.cls, STUN_SUCCESS);
            check_addr_attr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &me);
            check_addr_attr(&m, STUN_ATTR_MAPPED_ADDRESS, &me);
            check_addr_attr(&m, STUN_ATTR_RESPONSE_ORIGIN, &H.addr[i][j]);
            check_addr_attr(&m, STUN_ATTR_OTHER_ADDRESS, &H.addr[!i][!j]);
            assert_int_equal(m.fingerprint >= 0, i == j);
            /* RFC 3489 over the same connection. */
            req_opts o3 = {.rfc3489 = true};
            tcp_ask(fd, &o3, buf, sizeof(buf), &m, tid);
            assert_true(m.rfc3489);
            check_addr_attr(&m, STUN_ATTR_CHANGED_ADDRESS, &H.addr[!i][!j]);
            close(fd);
        }
}

static void tcp_errors(void **state)
{
    (void)state;
    int fd = tcp_connect(&H.addr[0][0], NULL, false);
    assert_true(fd >= 0);
    uint8_t buf[1024], tid[16];
    stun_msg m;
    req_opts chg = {.has_change = true, .change = STUN_CHANGE_IP};
    tcp_ask(fd, &chg, buf, sizeof(buf), &m, tid);
    expect_error(&m, 400);
    req_opts unk = {.unknown_attr = 0x0042};
    tcp_ask(fd, &unk, buf, sizeof(buf), &m, tid);
    expect_error(&m, 420);
    req_opts nochg = {.method = STUNT_CONNECT_BACK};
    tcp_ask(fd, &nochg, buf, sizeof(buf), &m, tid);
    expect_error(&m, 400);
    req_opts ok = {0};
    tcp_ask(fd, &ok, buf, sizeof(buf), &m, tid);
    assert_int_equal(m.cls, STUN_SUCCESS);
    close(fd);
}

static void tcp_split_byte_by_byte(void **state)
{
    (void)state;
    int fd = tcp_connect(&H.addr[1][1], NULL, false);
    assert_true(fd >= 0);
    uint8_t req[256], buf[1024], tid[16];
    req_opts o = {.fingerprint = true};
    size_t n = build_request(req, sizeof(req), &o, tid);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(write_all(fd, req + i, 1), 0);
    int got = tcp_read_msg(fd, buf, sizeof(buf), WAIT_MS);
    assert_true(got > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)got), 0);
    assert_memory_equal(m.tid, tid, 16);
    assert_int_equal(m.cls, STUN_SUCCESS);
    close(fd);
}

static void tcp_coalesced(void **state)
{
    (void)state;
    enum { N = 300 }; /* more than one read's worth of answers */
    int fd = tcp_connect(&H.addr[0][1], NULL, false);
    assert_true(fd >= 0);
    static uint8_t all[N * 64];
    static uint8_t tids[N][16];
    size_t len = 0;
    req_opts o = {.fingerprint = true};
    for (int i = 0; i < N; i++)
        len += build_request(all + len, sizeof(all) - len, &o, tids[i]);
    assert_int_equal(write_all(fd, all, len), 0);
    for (int i = 0; i < N; i++) {
        uint8_t buf[1024];
        int got = tcp_read_msg(fd, buf, sizeof(buf), WAIT_MS);
        assert_true(got > 0);
        stun_msg m;
        assert_int_equal(stun_parse(&m, buf, (size_t)got), 0);
        assert_memory_equal(m.tid, tids[i], 16);
        assert_int_equal(m.cls, STUN_SUCCESS);
    }
    close(fd);
}

static void tcp_idle_timeout(void **state)
{
    (void)state;
    harness h;
    ntcp_stuntd_config cfg;
    test_config(&cfg, IP1, IP2);
    cfg.tcp_idle_ms = 300;
    assert_int_equal(harness_start(&h, &cfg), 0);
    int fd = tcp_connect(&h.addr[0][0], NULL, false);
    assert_true(fd >= 0);
    /* Half a header, then silence. */
    uint8_t req[256], tid[16], buf[64];
    req_opts o = {0};
    build_request(req, sizeof(req), &o, tid);
    assert_int_equal(write_all(fd, req, 7), 0);
    assert_true(wait_readable(fd, 5000));
    assert_int_equal(read(fd, buf, sizeof(buf)), 0); /* EOF: closed by the server */
    close(fd);
    assert_int_equal(harness_stop(&h), 0);
}

static void tcp_connection_cap(void **state)
{
    (void)state;
    harness h;
    ntcp_stuntd_config cfg;
    test_config(&cfg, IP1, IP2);
    cfg.tcp_max_conns = 2;
    assert_int_equal(harness_start(&h, &cfg), 0);
    uint8_t buf[1024], tid[16];
    stun_msg m;
    req_opts o = {0};
    int a = tcp_connect(&h.addr[0][0], NULL, false);
    int b = tcp_connect(&h.addr[1][1], NULL, false);
    assert_true(a >= 0 && b >= 0);
    tcp_ask(a, &o, buf, sizeof(buf), &m, tid);
    tcp_ask(b, &o, buf, sizeof(buf), &m, tid);
    int c = tcp_connect(&h.addr[0][1], NULL, false);
    assert_true(c >= 0); /* accepted by the kernel, closed by the server */
    uint8_t req[256];
    size_t n = build_request(req, sizeof(req), &o, tid);
    write_all(c, req, n);
    /* Closed without an answer: EOF, or a reset if our request hit the
     * closed socket. */
    assert_true(wait_readable(c, WAIT_MS));
    ssize_t r = read(c, buf, sizeof(buf));
    assert_true(r == 0 || (r < 0 && errno == ECONNRESET));
    close(c);
    /* Once one closes, a new connection is served again. */
    close(a);
    int served = 0;
    for (int attempt = 0; attempt < 50 && !served; attempt++) {
        int d = tcp_connect(&h.addr[0][0], NULL, false);
        assert_true(d >= 0);
        n = build_request(req, sizeof(req), &o, tid);
        write_all(d, req, n);
        served = tcp_read_msg(d, buf, sizeof(buf), WAIT_MS) > 0;
        close(d);
    }
    assert_true(served);
    close(b);
    assert_int_equal(harness_stop(&h), 0);
}

/* ---- connect-back ---------------------------------------------------------- */

struct cb_result {
    stunt_connect_result r;
    struct sockaddr_storage target, origin;
    int error; /* error code, or 0 for success */
};

/* Runs one connect-back from a control connection to h's socket (i,j). With
 * listen, the client listens on its control connection's port and must
 * receive the indication. */
static void run_connect_back_from(const harness *h, int i, int j, uint32_t flags, bool listen,
                                  uint32_t timeout_ms, uint16_t cport, struct cb_result *res)
{
    memset(res, 0, sizeof(*res));
    struct sockaddr_storage me;
    const struct sockaddr_storage *dst = &h->addr[i][j];
    char ip[64];
    if (dst->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)dst)->sin6_addr, ip, sizeof(ip));
    else
        inet_ntop(AF_INET, &((const struct sockaddr_in *)dst)->sin_addr, ip, sizeof(ip));
    sa_make(&me, ip, cport);
    /* Bind the control socket first to learn the port, then listen on it. */
    int ctl = socket(me.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(ctl >= 0);
    int one = 1;
    setsockopt(ctl, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(ctl, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    socklen_t ml = me.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    assert_int_equal(bind(ctl, (struct sockaddr *)&me, ml), 0);
    local_addr(ctl, &me);
    int lfd = -1;
    if (listen) {
        lfd = tcp_listen_reuse(&me);
        assert_true(lfd >= 0);
    }
    assert_int_equal(connect(ctl, (const struct sockaddr *)dst, ml), 0);
    uint8_t req[256], buf[1024], tid[16];
    req_opts o = {.method = STUNT_CONNECT_BACK,
                  .has_change = true,
                  .change = flags,
                  .timeout_ms = timeout_ms,
                  .fingerprint = true};
    size_t n = build_request(req, sizeof(req), &o, tid);
    assert_int_equal(write_all(ctl, req, n), 0);
    if (listen) {
        assert_true(wait_readable(lfd, WAIT_MS));
        struct sockaddr_storage peer;
        socklen_t pl = sizeof(peer);
        int in = accept(lfd, (struct sockaddr *)&peer, &pl);
        assert_true(in >= 0);
        int got = tcp_read_msg(in, buf, sizeof(buf), WAIT_MS);
        assert_true(got > 0);
        stun_msg ind;
        assert_int_equal(stun_parse(&ind, buf, (size_t)got), 0);
        assert_int_equal(ind.cls, STUN_INDICATION);
        assert_memory_equal(ind.tid, tid, 16);
        int oi = i ^ ((flags & STUN_CHANGE_IP) != 0), oj = j ^ ((flags & STUN_CHANGE_PORT) != 0);
        assert_true(sa_equal(&peer, &h->addr[oi][oj]));
        close(in); /* the client closes first, as docs/protocol.md asks */
        close(lfd);
    }
    int got = tcp_read_msg(ctl, buf, sizeof(buf), WAIT_MS + (int)timeout_ms);
    assert_true(got > 0);
    stun_msg m;
    assert_int_equal(stun_parse(&m, buf, (size_t)got), 0);
    assert_memory_equal(m.tid, tid, 16);
    assert_int_equal(m.method, STUNT_CONNECT_BACK);
    if (m.cls == STUN_ERROR) {
        const char *reason;
        size_t rl;
        assert_int_equal(stun_get_error(&m, &res->error, &reason, &rl), 0);
    } else {
        assert_int_equal(m.cls, STUN_SUCCESS);
        assert_int_equal(stunt_get_connect_result(&m, &res->r), 0);
        assert_int_equal(stun_get_addr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &res->target), 0);
        assert_int_equal(stun_get_addr(&m, STUN_ATTR_RESPONSE_ORIGIN, &res->origin), 0);
        /* Only ever the control connection's source. */
        assert_true(sa_equal(&res->target, &me));
        int oi = i ^ ((flags & STUN_CHANGE_IP) != 0), oj = j ^ ((flags & STUN_CHANGE_PORT) != 0);
        assert_true(sa_equal(&res->origin, &h->addr[oi][oj]));
        assert_true(m.fingerprint >= 0);
    }
    close(ctl);
}

static void run_connect_back(const harness *h, int i, int j, uint32_t flags, bool listen,
                             uint32_t timeout_ms, struct cb_result *res)
{
    run_connect_back_from(h, i, j, flags, listen, timeout_ms, 0, res);
}

static void cb_connected(void **state)
{
    (void)state;
    static const uint32_t flags[] = {STUN_CHANGE_PORT, STUN_CHANGE_IP,
                                     STUN_CHANGE_IP | STUN_CHANGE_PORT};
    for (int k = 0; k < 3; k++)
        for (int s = 0; s < 2; s++) {
            struct cb_result r;
            run_connect_back(&H, s, s, flags[k], true, 0, &r);
            assert_int_equal(r.error, 0);
            assert_int_equal(r.r.outcome, STUNT_CONNECTED);
        }
}

static void cb_refused(void **state)
{
    (void)state;
    struct cb_result r;
    run_connect_back(&H, 0, 0, STUN_CHANGE_PORT, false, 0, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.r.outcome, STUNT_REFUSED);
    run_connect_back(&H, 1, 0, STUN_CHANGE_IP | STUN_CHANGE_PORT, false, 0, &r);
    assert_int_equal(r.r.outcome, STUNT_REFUSED);
}

static void cb_rate_limit(void **state)
{
    (void)state;
    harness h;
    ntcp_stuntd_config cfg;
    test_config(&cfg, IP1, IP2);
    cfg.cb_rate = 0.001;
    cfg.cb_burst = 2;
    assert_int_equal(harness_start(&h, &cfg), 0);
    struct cb_result r;
    run_connect_back(&h, 0, 0, STUN_CHANGE_PORT, false, 0, &r);
    assert_int_equal(r.error, 0);
    run_connect_back(&h, 0, 0, STUN_CHANGE_IP, false, 0, &r);
    assert_int_equal(r.error, 0);
    run_connect_back(&h, 0, 0, STUN_CHANGE_PORT, false, 0, &r);
    assert_int_equal(r.error, 429);
    assert_int_equal(harness_stop(&h), 0);
}

/* ---- root only: a private network namespace --------------------------------- */

static int sh(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

/* A firewall in front of the client's port: SYNs (not SYN-ACKs) to it are
 * rejected with ICMP or dropped. */
static void firewall(const char *verdict, uint16_t port)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "nft add rule inet ntcp_srvtest in tcp dport %u "
             "'tcp flags & (syn|ack) == syn' %s",
             port, verdict);
    assert_int_equal(sh(cmd), 0);
}

static void netns_cb_icmp(void **state)
{
    (void)state;
    firewall("reject with icmpx type admin-prohibited", 40001);
    struct cb_result r;
    run_connect_back_from(&H, 0, 0, STUN_CHANGE_IP, false, 2000, 40001, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.r.outcome, STUNT_ICMP);
    assert_int_equal(r.r.icmp_type, 3);  /* destination unreachable */
    assert_int_equal(r.r.icmp_code, 13); /* communication administratively prohibited */
}

static void netns_cb_timeout(void **state)
{
    (void)state;
    firewall("drop", 40002);
    struct cb_result r;
    run_connect_back_from(&H, 1, 1, STUN_CHANGE_PORT, false, 500, 40002, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.r.outcome, STUNT_TIMEOUT);
    assert_true(r.r.elapsed_ms >= 400);
}

static void netns_ipv6(void **state)
{
    (void)state;
    harness h;
    ntcp_stuntd_config cfg;
    test_config(&cfg, "2001:db8::1", "2001:db8::2");
    assert_int_equal(harness_start(&h, &cfg), 0);
    assert_int_equal(h.addr[0][0].ss_family, AF_INET6);
    int fd = udp_socket("2001:db8::2");
    assert_true(fd >= 0);
    struct sockaddr_storage me;
    local_addr(fd, &me);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            uint8_t buf[1024], tid[16];
            stun_msg m;
            struct sockaddr_storage from;
            req_opts o = {.has_change = true, .change = STUN_CHANGE_IP | STUN_CHANGE_PORT};
            udp_ask(fd, &h.addr[i][j], &o, buf, sizeof(buf), &m, tid, &from);
            assert_int_equal(m.cls, STUN_SUCCESS);
            assert_true(sa_equal(&from, &h.addr[!i][!j]));
            check_addr_attr(&m, STUN_ATTR_XOR_MAPPED_ADDRESS, &me);
            check_addr_attr(&m, STUN_ATTR_OTHER_ADDRESS, &h.addr[!i][!j]);
            /* TCP too. */
            int t = tcp_connect(&h.addr[i][j], NULL, false);
            assert_true(t >= 0);
            req_opts ot = {0};
            tcp_ask(t, &ot, buf, sizeof(buf), &m, tid);
            assert_int_equal(m.cls, STUN_SUCCESS);
            check_addr_attr(&m, STUN_ATTR_RESPONSE_ORIGIN, &h.addr[i][j]);
            close(t);
        }
    close(fd);
    struct cb_result r;
    run_connect_back(&h, 0, 0, STUN_CHANGE_IP | STUN_CHANGE_PORT, true, 0, &r);
    assert_int_equal(r.r.outcome, STUNT_CONNECTED);
    run_connect_back(&h, 1, 0, STUN_CHANGE_PORT, false, 0, &r);
    assert_int_equal(r.r.outcome, STUNT_REFUSED);
    firewall("reject with icmpx type admin-prohibited", 40003);
    run_connect_back_from(&h, 0, 1, STUN_CHANGE_IP, false, 2000, 40003, &r);
    assert_int_equal(r.r.outcome, STUNT_ICMP);
    assert_int_equal(r.r.icmp_type, 1); /* ICMPv6 destination unreachable */
    assert_int_equal(r.r.icmp_code, 1); /* administratively prohibited */
    assert_int_equal(harness_stop(&h), 0);
}

static int netns_main(void)
{
    if (geteuid() != 0) {
        printf("SKIP: needs root (private network namespace, nftables)\n");
        return 77;
    }
    if (unshare(CLONE_NEWNET) < 0) {
        printf("SKIP: cannot create a network namespace: %s\n", strerror(errno));
        return 77;
    }
    /* The namespace is this process's own: nothing to clean up after. */
    if (sh("ip link set lo up") || sh("ip -6 addr add 2001:db8::1/128 dev lo nodad") ||
        sh("ip -6 addr add 2001:db8::2/128 dev lo nodad") ||
        sh("nft add table inet ntcp_srvtest") ||
        sh("nft add chain inet ntcp_srvtest in '{ type filter hook input priority 0; }'"))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(netns_cb_icmp),
        cmocka_unit_test(netns_cb_timeout),
        cmocka_unit_test(netns_ipv6),
    };
    return cmocka_run_group_tests_name("stuntd_netns", tests, group_setup, group_teardown);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "netns") == 0)
        return netns_main();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(udp_binding_four_sockets),
        cmocka_unit_test(udp_fingerprint_only_when_asked),
        cmocka_unit_test(udp_rfc3489),
        cmocka_unit_test(udp_change_request),
        cmocka_unit_test(udp_response_port),
        cmocka_unit_test(udp_malformed_gets_400),
        cmocka_unit_test(udp_unknown_attr_gets_420),
        cmocka_unit_test(udp_junk_dropped),
        cmocka_unit_test(udp_connect_back_rejected),
        cmocka_unit_test(udp_rate_limit),
        cmocka_unit_test(tcp_binding_four_sockets),
        cmocka_unit_test(tcp_errors),
        cmocka_unit_test(tcp_split_byte_by_byte),
        cmocka_unit_test(tcp_coalesced),
        cmocka_unit_test(tcp_idle_timeout),
        cmocka_unit_test(tcp_connection_cap),
        cmocka_unit_test(cb_connected),
        cmocka_unit_test(cb_refused),
        cmocka_unit_test(cb_rate_limit),
    };
    return cmocka_run_group_tests_name("stuntd", tests, group_setup, group_teardown);
}
