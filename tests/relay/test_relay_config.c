/*
 * test_relay_config.c: the relay policy of the public context (docs/relay.md):
 * ntcp_config_t.relay (read only when the caller's struct has it),
 * ntcp_set_relay()/ntcp_get_relay(), the configuration file's `relay` key,
 * and the values that are refused; likewise the `methods` setting
 * (ntcp_config_t.methods, ntcp_get_methods()).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ntcp.h"

static void test_config_struct(void **state)
{
    (void)state;
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    ntcp_t *ctx = NULL;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_get_relay(ctx), NTCP_RELAY_AUTO); /* the default */
    ntcp_free(ctx);

    cfg.relay = NTCP_RELAY_ALWAYS;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_get_relay(ctx), NTCP_RELAY_ALWAYS);
    assert_int_equal(ntcp_set_relay(ctx, NTCP_RELAY_NEVER), 0);
    assert_int_equal(ntcp_get_relay(ctx), NTCP_RELAY_NEVER);
    assert_int_equal(ntcp_set_relay(ctx, (ntcp_relay_policy_t)7), NTCP_EINVAL);
    assert_int_equal(ntcp_get_relay(ctx), NTCP_RELAY_NEVER);
    ntcp_free(ctx);

    cfg.relay = 3;
    assert_int_equal(ntcp_new(&cfg, &ctx), NTCP_ECONFIG);

    /* A caller built before the field existed: its struct ends before it,
     * and whatever follows in memory is not read. */
    cfg.relay = 99;
    cfg.size = offsetof(ntcp_config_t, relay);
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_get_relay(ctx), NTCP_RELAY_AUTO);
    ntcp_free(ctx);
    assert_int_equal(ntcp_get_relay(NULL), NTCP_RELAY_AUTO);
    assert_int_equal(ntcp_set_relay(NULL, NTCP_RELAY_AUTO), NTCP_EINVAL);
}

static int from_file(const char *text, ntcp_t **ctx)
{
    char path[] = "/tmp/ntcp-relay-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    *ctx = NULL;
    int rc = ntcp_new_from_file(path, ctx);
    unlink(path);
    return rc;
}

static void test_config_file(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int rc;
        ntcp_relay_policy_t want;
    } cases[] = {
        {"broker = b:1\n", 0, NTCP_RELAY_AUTO},
        {"relay = always\n", 0, NTCP_RELAY_ALWAYS},
        {"[ntcp]\nrelay = never\n", 0, NTCP_RELAY_NEVER},
        {"[ntcp]\nrelay: off\n", 0, NTCP_RELAY_NEVER},
        {"relay = Auto\n", 0, NTCP_RELAY_AUTO},
        {"relay = sometimes\n", NTCP_ECONFIG, NTCP_RELAY_AUTO},
        /* another program's section: not ours, ignored */
        {"[ntcp-stuntd]\nrelay = sometimes\n", 0, NTCP_RELAY_AUTO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ntcp_t *ctx;
        int rc = from_file(cases[i].text, &ctx);
        assert_int_equal(rc, cases[i].rc);
        if (rc == 0) {
            assert_int_equal(ntcp_get_relay(ctx), cases[i].want);
            ntcp_free(ctx);
        }
    }
}

static void test_methods(void **state)
{
    (void)state;
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    ntcp_t *ctx = NULL;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_null(ntcp_get_methods(ctx)); /* all, the default */
    ntcp_free(ctx);
    cfg.methods = "stunt1, natblaster";
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_string_equal(ntcp_get_methods(ctx), "stunt1, natblaster");
    ntcp_free(ctx);
    cfg.methods = "";
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_null(ntcp_get_methods(ctx));
    ntcp_free(ctx);
    cfg.methods = "stunt2,stunt3";
    assert_int_equal(ntcp_new(&cfg, &ctx), NTCP_ECONFIG);
    /* A caller built before the field existed. */
    cfg.size = offsetof(ntcp_config_t, methods);
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_null(ntcp_get_methods(ctx));
    ntcp_free(ctx);
    assert_null(ntcp_get_methods(NULL));

    assert_int_equal(from_file("[ntcp]\nmethods = p2pnat predict\n", &ctx), 0);
    assert_string_equal(ntcp_get_methods(ctx), "p2pnat predict");
    ntcp_free(ctx);
    assert_int_equal(from_file("methods = telepathy\n", &ctx), NTCP_ECONFIG);
    assert_null(ctx);
    assert_int_equal(from_file("[stuntd]\nmethods = telepathy\n", &ctx), 0); /* not ours */
    assert_null(ntcp_get_methods(ctx));
    ntcp_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_struct),
        cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_methods),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
