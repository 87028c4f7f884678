/*
 * test_sock_linux.c: the socket helpers of src/sock_linux.h on loopback:
 * two sockets share a port only with the reuse options, the TTL and hop
 * limit read back as set (and as the default after -1), and an ICMP port
 * unreachable drawn by a UDP datagram to a closed loopback port comes back
 * from the error queue with its origin, type, code, errno and sender.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <time.h>
#include <linux/errqueue.h>
#include <unistd.h>

#include "addr.h"
#include "sock_linux.h"

static struct sockaddr_storage loopback(uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return ss;
}

static uint16_t bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    return ntcp_sa_port(&ss);
}

static void test_open_and_share_port(void **state)
{
    (void)state;
    struct sockaddr_storage any = loopback(0);
    int a = ntcp_sock_open(AF_INET, SOCK_STREAM, NTCP_SOCK_REUSE, &any);
    assert_true(a >= 0);
    assert_true(fcntl(a, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(a, F_GETFD) & FD_CLOEXEC);
    int on = 0;
    socklen_t ol = sizeof on;
    assert_int_equal(getsockopt(a, SOL_SOCKET, SO_REUSEPORT, &on, &ol), 0);
    assert_true(on);

    /* A listener and a connecting socket on one port, as in a traversal
     * attempt: both have SO_REUSEPORT. */
    assert_int_equal(listen(a, 1), 0);
    struct sockaddr_storage same = loopback(bound_port(a));
    int b = ntcp_sock_open(AF_INET, SOCK_STREAM, NTCP_SOCK_REUSE, &same);
    assert_true(b >= 0);
    assert_int_equal(bound_port(b), bound_port(a));
    /* Without SO_REUSEPORT on the newcomer the kernel refuses the port (the
     * listener's SO_REUSEADDR is not enough), and the helper leaves nothing
     * open. */
    assert_int_equal(ntcp_sock_open(AF_INET, SOCK_STREAM, NTCP_SOCK_REUSEADDR, &same), -EADDRINUSE);

    /* No address: nothing bound yet (the caller binds, or connect() does). */
    int c = ntcp_sock_open(AF_INET, SOCK_DGRAM, 0, NULL);
    assert_true(c >= 0);
    assert_int_equal(bound_port(c), 0);
    /* ntcp_sock_reuse() alone, on a socket opened elsewhere. */
    assert_int_equal(ntcp_sock_reuse(c, NTCP_SOCK_REUSEPORT), 0);
    on = 0;
    assert_int_equal(getsockopt(c, SOL_SOCKET, SO_REUSEPORT, &on, &ol), 0);
    assert_true(on);
    on = 1;
    assert_int_equal(getsockopt(c, SOL_SOCKET, SO_REUSEADDR, &on, &ol), 0);
    assert_false(on);
    close(a);
    close(b);
    close(c);
}

static int get_int(int fd, int level, int opt)
{
    int v = -2;
    socklen_t vl = sizeof v;
    assert_int_equal(getsockopt(fd, level, opt, &v, &vl), 0);
    return v;
}

static void test_ttl(void **state)
{
    (void)state;
    int fd = ntcp_sock_open(AF_INET, SOCK_STREAM, 0, NULL);
    assert_true(fd >= 0);
    int deflt = get_int(fd, IPPROTO_IP, IP_TTL);
    assert_int_equal(ntcp_sock_set_ttl(fd, AF_INET, 3), 0);
    assert_int_equal(get_int(fd, IPPROTO_IP, IP_TTL), 3);
    assert_int_equal(ntcp_sock_set_ttl(fd, AF_INET, -1), 0);
    assert_int_equal(get_int(fd, IPPROTO_IP, IP_TTL), deflt);
    assert_int_equal(ntcp_sock_set_ttl(fd, AF_INET, 300), -EINVAL);
    close(fd);

    /* IPv6 sockets exist even without an IPv6 address; not at all when
     * the kernel has no IPv6. */
    fd = ntcp_sock_open(AF_INET6, SOCK_STREAM, 0, NULL);
    if (fd < 0)
        return;
    deflt = get_int(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS);
    assert_int_equal(ntcp_sock_set_ttl(fd, AF_INET6, 4), 0);
    assert_int_equal(get_int(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS), 4);
    assert_int_equal(ntcp_sock_set_ttl(fd, AF_INET6, -1), 0);
    assert_int_equal(get_int(fd, IPPROTO_IPV6, IPV6_UNICAST_HOPS), deflt);
    close(fd);
}

/* Sends a datagram from fd to dst and waits up to ms for an error to be
 * queued. Returns whether one was. */
static bool send_and_wait_error(int fd, const struct sockaddr_storage *dst, int ms)
{
    ssize_t n = sendto(fd, "x", 1, 0, (const struct sockaddr *)dst, ntcp_sa_len(dst));
    /* A UDP socket may report an earlier error at its next send. */
    assert_true(n == 1 || errno == ECONNREFUSED);
    struct pollfd p = {.fd = fd, .events = 0};
    return poll(&p, 1, ms) == 1 && (p.revents & POLLERR);
}

static void test_icmp_from_error_queue(void **state)
{
    (void)state;
    struct sockaddr_storage any = loopback(0);
    /* A port that was just free: bound, then closed. */
    int gone = ntcp_sock_open(AF_INET, SOCK_DGRAM, 0, &any);
    assert_true(gone >= 0);
    struct sockaddr_storage closed = loopback(bound_port(gone));
    close(gone);

    int fd = ntcp_sock_open(AF_INET, SOCK_DGRAM, 0, &any);
    assert_true(fd >= 0);
    ntcp_sock_err se;
    assert_false(ntcp_sock_err_read(fd, &se)); /* nothing queued yet */

    assert_int_equal(ntcp_sock_recverr(fd, AF_INET, true), 0);
    assert_int_equal(get_int(fd, IPPROTO_IP, IP_RECVERR), 1);
    assert_true(send_and_wait_error(fd, &closed, 2000));
    assert_true(ntcp_sock_err_read(fd, &se));
    assert_int_equal(se.origin, SO_EE_ORIGIN_ICMP);
    assert_true(se.icmp);
    assert_int_equal(se.type, 3); /* destination unreachable (RFC 792) */
    assert_int_equal(se.code, 3); /* port unreachable */
    assert_int_equal(se.err, ECONNREFUSED);
    struct sockaddr_storage lo = loopback(0);
    assert_int_equal(se.offender.ss_family, AF_INET);
    assert_true(ntcp_sockaddr_same_ip((struct sockaddr *)&se.offender, (struct sockaddr *)&lo));
    assert_false(ntcp_sock_err_read(fd, &se)); /* one error, taken */

    /* Off again: an unconnected UDP socket hears of no ICMP error. */
    assert_int_equal(ntcp_sock_recverr(fd, AF_INET, false), 0);
    assert_int_equal(get_int(fd, IPPROTO_IP, IP_RECVERR), 0);
    assert_false(send_and_wait_error(fd, &closed, 200));
    assert_false(ntcp_sock_err_read(fd, &se));
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_and_share_port),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_icmp_from_error_queue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
