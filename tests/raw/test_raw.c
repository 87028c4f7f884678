/*
 * test_raw.c: the raw-socket helpers of STUNT#1 and NATBlaster (src/raw.h).
 * Without arguments (label unit): the crafted segment's layout and both
 * checksums. With --capture (label root; 77 without CAP_NET_RAW or when
 * built without NTCP_RAW): the ISN of our own SYN on loopback, checked
 * against the kernel's RST, whose ack is that ISN + 1.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ntcp.h"
#include "raw.h"

#ifdef __linux__
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#endif

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a->sin_addr);
    return ss;
}

/* The one's-complement sum, written out bit by bit differently from raw.c:
 * a block with a correct checksum in it sums to 0xffff. */
static uint16_t sum16(const uint8_t *p, size_t n, uint64_t acc)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        acc += ((uint64_t)p[i] << 8) + p[i + 1];
    if (n & 1)
        acc += (uint64_t)p[n - 1] << 8;
    while (acc > 0xffff)
        acc = (acc >> 16) + (acc & 0xffff);
    return (uint16_t)acc;
}

static void test_build(void **state)
{
    (void)state;
    raw_segment s;
    memset(&s, 0, sizeof s);
    s.src = v4("192.0.2.17", 40001);
    s.dst = v4("192.0.2.33", 40002);
    s.seq = 0x01020304;
    s.ack = 0xfffffffe;
    s.flags = RAW_TCP_SYN | RAW_TCP_ACK;
    s.window = 65535;
    s.mss = 1400;
    uint8_t b[64];
    int n = raw_build_tcp4(&s, b, sizeof b);
    assert_int_equal(n, 44);
    assert_int_equal(b[0], 0x45);
    assert_int_equal(b[2] << 8 | b[3], 44);
    assert_int_equal(b[8], 64); /* ttl 0: 64 */
    assert_int_equal(b[9], IPPROTO_TCP);
    assert_int_equal(sum16(b, 20, 0), 0xffff);
    const uint8_t *t = b + 20;
    assert_int_equal(t[0] << 8 | t[1], 40001);
    assert_int_equal(t[2] << 8 | t[3], 40002);
    assert_memory_equal(t + 4, "\x01\x02\x03\x04", 4);
    assert_memory_equal(t + 8, "\xff\xff\xff\xfe", 4);
    assert_int_equal(t[12] >> 4, 6);
    assert_int_equal(t[13], 0x12);
    assert_memory_equal(t + 20, "\x02\x04\x05\x78", 4);
    /* pseudo-header: addresses, zero, protocol, TCP length */
    uint8_t ph[12];
    memcpy(ph, b + 12, 8);
    ph[8] = 0;
    ph[9] = IPPROTO_TCP;
    ph[10] = 0;
    ph[11] = 24;
    assert_int_equal(sum16(t, 24, sum16(ph, 12, 0)), 0xffff);

    s.mss = 0;
    s.ttl = 3;
    assert_int_equal(raw_build_tcp4(&s, b, sizeof b), 40);
    assert_int_equal(b[8], 3);
    assert_int_equal(b[20 + 12] >> 4, 5);
    assert_int_equal(raw_build_tcp4(&s, b, 39), NTCP_ENOSPC);
    s.dst.ss_family = AF_INET6;
    assert_int_equal(raw_build_tcp4(&s, b, sizeof b), NTCP_EINVAL);
}

static void test_checksum_vector(void **state)
{
    (void)state;
    /* RFC 1071 section 3's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2. */
    const uint8_t d[] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
    assert_int_equal(raw_inet_checksum(d, sizeof d, 0), (uint16_t)~0xddf2);
}

static void test_check_reports(void **state)
{
    (void)state;
    char why[160] = "";
    int rc = raw_check(why, sizeof why);
    if (rc < 0)
        assert_true(why[0] != '\0'); /* it says why */
    else
        assert_true(raw_built());
}

/* --capture: the ISN of a SYN to a closed port on loopback is the RST's
 * ack - 1. Returns 0, 1 (wrong) or 77 (cannot run). */
static int capture_test(void)
{
    char why[160];
    if (!raw_built() || raw_check(why, sizeof why) < 0) {
        printf("skipped: %s\n", raw_built() ? why : "built without NTCP_RAW");
        return 77;
    }
    /* A closed port: bind one, read its number, close it. */
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_storage any = v4("127.0.0.1", 0);
    socklen_t sl = sizeof any;
    if (probe < 0 || bind(probe, (struct sockaddr *)&any, sizeof(struct sockaddr_in)) < 0 ||
        getsockname(probe, (struct sockaddr *)&any, &sl) < 0)
        return 1;
    close(probe);
    uint16_t dport = ntohs(((struct sockaddr_in *)&any)->sin_port);
    struct sockaddr_storage dst = v4("127.0.0.1", dport);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_storage la = v4("127.0.0.1", 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&la, sizeof(struct sockaddr_in)) < 0)
        return 1;
    sl = sizeof la;
    getsockname(fd, (struct sockaddr *)&la, &sl);
    uint16_t sport = ntohs(((struct sockaddr_in *)&la)->sin_port);
    int cap = raw_capture_open(sport, &dst);
    /* The kernel's RST (from dport to sport) acks the SYN: read it with a
     * plain packet socket of the test's own. */
    int all = -1;
#ifdef __linux__
    all = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK, htons(ETH_P_ALL));
#endif
    if (cap < 0 || all < 0) {
        printf("capture: %s\n", strerror(-cap));
        return 1;
    }
    if (connect(fd, (struct sockaddr *)&dst, sizeof(struct sockaddr_in)) < 0 && errno != EINPROGRESS)
        return 1;
    uint32_t isn = 0;
    int rc = NTCP_ENOTFOUND;
    for (int i = 0; i < 100 && rc == NTCP_ENOTFOUND; i++) {
        rc = raw_capture_isn(cap, &isn);
        if (rc == NTCP_ENOTFOUND) {
            struct pollfd p = {.fd = cap, .events = POLLIN};
            poll(&p, 1, 10);
        }
    }
    close(cap);
    close(fd);
    if (rc != 0) {
        printf("no SYN captured (%d)\n", rc);
        return 1;
    }
    uint32_t rst_ack = 0;
    bool seen = false;
    for (int i = 0; i < 100 && !seen; i++) {
        uint8_t pkt[128];
        ssize_t n = recv(all, pkt, sizeof pkt, 0);
        if (n < 0) {
            struct pollfd p = {.fd = all, .events = POLLIN};
            poll(&p, 1, 10);
            continue;
        }
        size_t ihl = (size_t)(pkt[0] & 15) * 4;
        if ((pkt[0] >> 4) != 4 || pkt[9] != IPPROTO_TCP || (size_t)n < ihl + 20)
            continue;
        const uint8_t *t = pkt + ihl;
        if ((t[0] << 8 | t[1]) == dport && (t[2] << 8 | t[3]) == sport && (t[13] & RAW_TCP_RST)) {
            rst_ack = (uint32_t)t[8] << 24 | (uint32_t)t[9] << 16 | (uint32_t)t[10] << 8 | t[11];
            seen = true;
        }
    }
    close(all);
    if (!seen || rst_ack != isn + 1) {
        printf("captured ISN %u, RST ack %u (%s)\n", isn, rst_ack, seen ? "seen" : "no RST");
        return 1;
    }
    /* A second SYN from the same port: a new connection, a new ISN, and
     * the capture must report that one, not the first. */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    cap = raw_capture_open(sport, &dst);
    if (fd < 0 || cap < 0 || bind(fd, (struct sockaddr *)&la, sizeof(struct sockaddr_in)) < 0) {
        printf("second socket: %s\n", strerror(errno));
        return 1;
    }
    connect(fd, (struct sockaddr *)&dst, sizeof(struct sockaddr_in));
    uint32_t isn2 = 0;
    rc = NTCP_ENOTFOUND;
    for (int i = 0; i < 100 && rc == NTCP_ENOTFOUND; i++) {
        rc = raw_capture_isn(cap, &isn2);
        if (rc == NTCP_ENOTFOUND) {
            struct pollfd p = {.fd = cap, .events = POLLIN};
            poll(&p, 1, 10);
        }
    }
    close(cap);
    close(fd);
    printf("ISNs %u %u\n", isn, isn2);
    return rc == 0 && isn2 != isn ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--capture") == 0)
        return capture_test();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build),
        cmocka_unit_test(test_checksum_vector),
        cmocka_unit_test(test_check_reports),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
