/*
 * test_stuntd_config.c: ntcp-stuntd's configuration helpers, no network:
 * address syntax, NTCP 0.2's [stunt] keys with ':' and '=', and the checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static void parse_addr(void **state)
{
    (void)state;
    struct sockaddr_storage a, want;
    assert_int_equal(ntcp_stuntd_parse_addr("192.0.2.1:5000", 3478, &a), 0);
    sa_make(&want, "192.0.2.1", 5000);
    assert_true(sa_equal(&a, &want));
    assert_int_equal(ntcp_stuntd_parse_addr("192.0.2.1", 3478, &a), 0);
    assert_int_equal(sa_port_of(&a), 3478);
    assert_int_equal(ntcp_stuntd_parse_addr("[2001:db8::1]:7", 3478, &a), 0);
    sa_make(&want, "2001:db8::1", 7);
    assert_true(sa_equal(&a, &want));
    assert_int_equal(ntcp_stuntd_parse_addr("[2001:db8::1]", 9, &a), 0);
    assert_int_equal(sa_port_of(&a), 9);
    assert_int_equal(ntcp_stuntd_parse_addr("2001:db8::2", 9, &a), 0);
    assert_int_equal(a.ss_family, AF_INET6);
    static const char *const bad[] = {"", "192.0.2.1:", "192.0.2.1:65536", "192.0.2.1:-1",
                                      "192.0.2.1:x", "example.org", "[192.0.2.1]:5",
                                      "[2001:db8::1", "[2001:db8::1]x", "256.0.0.1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ntcp_stuntd_parse_addr(bad[i], 1, &a), NTCP_EINVAL);
}

static void set_addr_defaults(void **state)
{
    (void)state;
    ntcp_stuntd_config cfg;
    ntcp_stuntd_config_init(&cfg);
    char err[256];
    assert_int_equal(ntcp_stuntd_config_check(&cfg, err, sizeof(err)), NTCP_ECONFIG);
    assert_non_null(strstr(err, "no addresses"));
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, false, "192.0.2.1"), 0);
    assert_int_equal(ntcp_stuntd_config_check(&cfg, err, sizeof(err)), NTCP_ECONFIG);
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, true, "192.0.2.2"), 0);
    assert_int_equal(sa_port_of(&cfg.primary[NTCP_STUNTD_V4]), 3478);
    assert_int_equal(sa_port_of(&cfg.alternate[NTCP_STUNTD_V4]), 3479);
    assert_int_equal(ntcp_stuntd_config_check(&cfg, err, sizeof(err)), 0);
    /* IPv6 goes to its own slot. */
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, false, "[2001:db8::1]:4000"), 0);
    assert_int_equal(ntcp_stuntd_config_check(&cfg, err, sizeof(err)), NTCP_ECONFIG);
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, true, "[2001:db8::2]:4001"), 0);
    assert_int_equal(ntcp_stuntd_config_check(&cfg, err, sizeof(err)), 0);
    /* Same IP, or same port, is refused: OTHER-ADDRESS must differ in both. */
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, true, "192.0.2.1:4000"), 0);
    assert_int_equal(ntcp_stuntd_config_check(&cfg, err, sizeof(err)), NTCP_ECONFIG);
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, true, "192.0.2.2:3478"), 0);
    assert_int_equal(ntcp_stuntd_config_check(&cfg, err, sizeof(err)), NTCP_ECONFIG);
    assert_non_null(strstr(err, "ports must differ"));
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void load_ntcp02_file(void **state)
{
    (void)state;
    char path[] = "/tmp/ntcp-stuntd-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    /* NTCP 0.2's p2pNetwork.conf style: ':' separators, other sections. */
    write_file(path, "[general]\nfoo: bar\n\n[stunt]\nstuntIp: 192.0.2.10\nstuntPort: 5000\n"
                     "otherStuntIp: 192.0.2.11\notherStuntPort: 5001\nsomethingElse: 1\n");
    ntcp_stuntd_config cfg;
    ntcp_stuntd_config_init(&cfg);
    char err[256];
    assert_int_equal(ntcp_stuntd_config_load(&cfg, path, err, sizeof(err)), 0);
    struct sockaddr_storage want;
    sa_make(&want, "192.0.2.10", 5000);
    assert_true(sa_equal(&cfg.primary[NTCP_STUNTD_V4], &want));
    sa_make(&want, "192.0.2.11", 5001);
    assert_true(sa_equal(&cfg.alternate[NTCP_STUNTD_V4], &want));

    /* '=' separators, IPv6, ports defaulted. */
    write_file(path, "[stunt]\nstuntIp = 2001:db8::10\notherStuntIp = 2001:db8::11\n");
    ntcp_stuntd_config_init(&cfg);
    assert_int_equal(ntcp_stuntd_config_load(&cfg, path, err, sizeof(err)), 0);
    sa_make(&want, "2001:db8::10", 3478);
    assert_true(sa_equal(&cfg.primary[NTCP_STUNTD_V6], &want));
    sa_make(&want, "2001:db8::11", 3479);
    assert_true(sa_equal(&cfg.alternate[NTCP_STUNTD_V6], &want));
    assert_int_equal(ntcp_stuntd_config_check(&cfg, err, sizeof(err)), 0);

    /* Errors name the file and line. */
    write_file(path, "[stunt]\nstuntIp = 192.0.2.1\nstuntPort = 99999\n");
    ntcp_stuntd_config_init(&cfg);
    assert_int_equal(ntcp_stuntd_config_load(&cfg, path, err, sizeof(err)), NTCP_ECONFIG);
    assert_non_null(strstr(err, ":3:"));
    write_file(path, "[stunt]\nstuntIp = not-an-ip\n");
    assert_int_equal(ntcp_stuntd_config_load(&cfg, path, err, sizeof(err)), NTCP_ECONFIG);
    assert_non_null(strstr(err, "stuntIp"));
    unlink(path);
    assert_int_equal(ntcp_stuntd_config_load(&cfg, path, err, sizeof(err)), NTCP_ESYS);
    assert_non_null(strstr(err, "cannot open"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_addr),
        cmocka_unit_test(set_addr_defaults),
        cmocka_unit_test(load_ntcp02_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
