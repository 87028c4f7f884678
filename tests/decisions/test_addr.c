/*
 * test_addr.c: the one address parser and the sockaddr helpers: every form
 * ntcp accepts, and the ones it must refuse.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <string.h>

#include "addr.h"

static void check(const char *in, int defport, int want_rc, const char *want)
{
    struct sockaddr_storage ss;
    char buf[80];
    int rc = ntcp_parse_addr(in, defport, &ss);
    if (rc != want_rc)
        fail_msg("%s: rc %d, want %d", in, rc, want_rc);
    if (rc == 0)
        assert_string_equal(ntcp_addr_str((struct sockaddr *)&ss, buf, sizeof buf), want);
}

static void test_parse(void **state)
{
    (void)state;
    check("192.0.2.1:3478", -1, 0, "192.0.2.1:3478");
    check("192.0.2.1", 3479, 0, "192.0.2.1:3479");
    check("192.0.2.1", -1, NTCP_EINVAL, NULL);
    check("192.0.2.1:0", -1, 0, "192.0.2.1:0");
    check("[2001:db8::1]:5", -1, 0, "[2001:db8::1]:5");
    check("[2001:db8::1]", 7, 0, "[2001:db8::1]:7");
    check("2001:db8::1", 7, 0, "[2001:db8::1]:7");
    check("2001:db8::1", -1, NTCP_EINVAL, NULL);
    check("[192.0.2.1]:5", -1, NTCP_EINVAL, NULL); /* brackets are for IPv6 */
    check("192.0.2.1:65536", -1, NTCP_EINVAL, NULL);
    check("192.0.2.1:-1", -1, NTCP_EINVAL, NULL);
    check("192.0.2.1:", -1, NTCP_EINVAL, NULL);
    check("192.0.2.1:5x", -1, NTCP_EINVAL, NULL);
    check("[2001:db8::1]x", -1, NTCP_EINVAL, NULL);
    check("[2001:db8::1", -1, NTCP_EINVAL, NULL);
    check("example.net:5", -1, NTCP_EINVAL, NULL); /* names are not resolved here */
    check("", 1, NTCP_EINVAL, NULL);
}

static void test_split(void **state)
{
    (void)state;
    char host[16];
    uint16_t port;
    assert_int_equal(ntcp_split_host_port("stun.example:99", host, sizeof host, &port, 1), 0);
    assert_string_equal(host, "stun.example");
    assert_int_equal(port, 99);
    assert_int_equal(ntcp_split_host_port("stun.example", host, sizeof host, &port, 3478), 0);
    assert_int_equal(port, 3478);
    /* A host longer than the buffer is refused, not cut. */
    assert_int_equal(ntcp_split_host_port("a-very-long-host-name.example", host, sizeof host, &port, 1),
                     NTCP_EINVAL);
}

static void test_compare(void **state)
{
    (void)state;
    struct sockaddr_storage a, b;
    assert_int_equal(ntcp_parse_addr("198.51.100.1:10", -1, &a), 0);
    assert_int_equal(ntcp_parse_addr("198.51.100.1:11", -1, &b), 0);
    assert_true(ntcp_sockaddr_same_ip((struct sockaddr *)&a, (struct sockaddr *)&b));
    assert_false(ntcp_sockaddr_equal((struct sockaddr *)&a, (struct sockaddr *)&b));
    ntcp_sa_set_port(&b, 10);
    assert_true(ntcp_sockaddr_equal((struct sockaddr *)&a, (struct sockaddr *)&b));
    assert_int_equal(ntcp_sa_port(&b), 10);
    assert_int_equal(ntcp_parse_addr("[::ffff:198.51.100.1]:10", -1, &b), 0);
    assert_false(ntcp_sockaddr_same_ip((struct sockaddr *)&a, (struct sockaddr *)&b));
    assert_int_equal(ntcp_sa_len(&b), sizeof(struct sockaddr_in6));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
