/*
 * test_tls_config.c: the TLS settings of the public context: ntcp_config_t's
 * fields (read only when the caller's struct has them), the configuration
 * file's keys, "tls://" brokers, and the combinations that are refused.
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

#define PIN "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="

static void test_config_struct(void **state)
{
    (void)state;
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    cfg.broker = "broker.example.net:8888";
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_get_broker_tls(ctx), 0);
    assert_null(ntcp_get_broker_ca(ctx));
    assert_null(ntcp_get_broker_pin(ctx));
    ntcp_free(ctx);

    /* "tls://" turns TLS on and is not part of the stored address. */
    cfg.broker = "tls://broker.example.net:8888";
    cfg.broker_pin = PIN;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_get_broker_tls(ctx), 1);
    assert_string_equal(ntcp_get_broker(ctx), "broker.example.net:8888");
    assert_string_equal(ntcp_get_broker_pin(ctx), PIN);
    assert_int_equal(ntcp_get_broker_tls_insecure(ctx), 0);
    ntcp_free(ctx);

    cfg.broker = "broker.example.net:8888";
    cfg.broker_tls = 1;
    cfg.broker_pin = NULL;
    cfg.broker_ca = "/etc/ntcp/ca.pem";
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_get_broker_tls(ctx), 1);
    assert_string_equal(ntcp_get_broker_ca(ctx), "/etc/ntcp/ca.pem");
    ntcp_free(ctx);

    /* Refused: a CA without TLS, insecure with a CA, a bad pin. */
    cfg.broker_tls = 0;
    assert_int_equal(ntcp_new(&cfg, &ctx), NTCP_EINVAL);
    assert_null(ctx);
    cfg.broker_tls = 1;
    cfg.broker_tls_insecure = 1;
    assert_int_equal(ntcp_new(&cfg, &ctx), NTCP_EINVAL);
    cfg.broker_ca = NULL;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_get_broker_tls_insecure(ctx), 1);
    ntcp_free(ctx);
    cfg.broker_tls_insecure = 0;
    cfg.broker_pin = "sha256/notbase64";
    assert_int_equal(ntcp_new(&cfg, &ctx), NTCP_EINVAL);

    /* A caller built against the struct before the TLS fields: they are
     * not read, whatever lies beyond its size. */
    cfg.size = offsetof(ntcp_config_t, key_file) + sizeof cfg.key_file;
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_int_equal(ntcp_get_broker_tls(ctx), 0);
    assert_null(ntcp_get_broker_pin(ctx));
    ntcp_free(ctx);
}

/* A broker list (the nodes of a cluster): kept as given; every entry needs
 * its port; at most eight. */
static void test_broker_list(void **state)
{
    (void)state;
    ntcp_config_t cfg;
    ntcp_config_init(&cfg);
    ntcp_t *ctx;
    cfg.broker = "a.example.net:3490, 192.0.2.7:3491 [2001:db8::1]:3492";
    assert_int_equal(ntcp_new(&cfg, &ctx), 0);
    assert_string_equal(ntcp_get_broker(ctx), cfg.broker);
    ntcp_free(ctx);
    static const char *const bad[] = {
        "a.example.net:3490, b.example.net", /* no port */
        "a.example.net:3490,,:3491",         /* no host */
        "a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9", /* nine */
        " , ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg.broker = bad[i];
        assert_int_equal(ntcp_new(&cfg, &ctx), NTCP_EINVAL);
    }
}

static int from_file(const char *text, ntcp_t **ctx)
{
    char path[] = "/tmp/ntcp-tls-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    int rc = ntcp_new_from_file(path, ctx);
    unlink(path);
    return rc;
}

static void test_config_file(void **state)
{
    (void)state;
    ntcp_t *ctx;
    assert_int_equal(from_file("[holePunch]\nConnectionBroker: broker.example.net:8888\n"
                               "[ntcp]\nbroker_tls = yes\nbroker_ca = /etc/ca.pem\n"
                               "broker_pin: " PIN ", " PIN "\n",
                               &ctx),
                     0);
    assert_int_equal(ntcp_get_broker_tls(ctx), 1);
    assert_string_equal(ntcp_get_broker_ca(ctx), "/etc/ca.pem");
    assert_string_equal(ntcp_get_broker_pin(ctx), PIN ", " PIN);
    ntcp_free(ctx);
    /* The order of the keys does not matter; "tls://" works for NTCP 0.2's key. */
    assert_int_equal(from_file("broker_pin = " PIN "\nConnectionBroker = tls://10.0.0.1:8888\n", &ctx), 0);
    assert_int_equal(ntcp_get_broker_tls(ctx), 1);
    assert_string_equal(ntcp_get_broker(ctx), "10.0.0.1:8888");
    ntcp_free(ctx);
    assert_int_equal(from_file("broker = b:1\nbroker_tls = on\nbroker_tls_insecure = true\n", &ctx), 0);
    assert_int_equal(ntcp_get_broker_tls_insecure(ctx), 1);
    ntcp_free(ctx);
    /* Refused. */
    assert_int_equal(from_file("broker = b:1\nbroker_pin = " PIN "\n", &ctx), NTCP_ECONFIG);
    assert_null(ctx);
    assert_int_equal(from_file("broker = b:1\nbroker_tls = maybe\n", &ctx), NTCP_ECONFIG);
    assert_int_equal(from_file("broker = b:1\nbroker_tls = yes\nbroker_pin = md5/x\n", &ctx), NTCP_ECONFIG);
    assert_int_equal(from_file("broker = tls://b:1\nbroker_tls_insecure = yes\nbroker_ca = x\n", &ctx),
                     NTCP_ECONFIG);
    /* Another section's keys are not the peer's. */
    assert_int_equal(from_file("broker = b:1\n[stunt]\nbroker_tls = yes\n", &ctx), 0);
    assert_int_equal(ntcp_get_broker_tls(ctx), 0);
    ntcp_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_struct),
        cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_broker_list),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
