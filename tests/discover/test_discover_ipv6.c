/*
 * test_discover_ipv6.c: discovery over IPv6, which needs two server
 * addresses: the test moves itself into a fresh network namespace (root
 * only) where 2001:db8::1 and 2001:db8::2 sit on lo, and runs ntcp-stuntd
 * and the discovery there, in-process. Without root it is skipped (77).
 */
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ntcp.h"
#include "server/stuntd.h"

typedef struct run {
    bool done;
    int status;
    ntcp_nat_profile_t profile;
    ntcp_stuntd *server;
} run;

static void on_done(ntcp_t *ctx, int status, const ntcp_nat_profile_t *p, void *user)
{
    run *r = user;
    (void)ctx;
    r->done = true;
    r->status = status;
    r->profile = *p;
    ntcp_stuntd_stop(r->server);
}

static void test_ipv6_open(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    ntcp_stuntd_config cfg;
    ntcp_stuntd_config_init(&cfg);
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, false, "[2001:db8::1]:0"), 0);
    assert_int_equal(ntcp_stuntd_config_set_addr(&cfg, true, "[2001:db8::2]:0"), 0);
    cfg.udp_rate = 0;
    cfg.cb_rate = 0;
    cfg.log_level = NTCP_LOG_WARN;
    run r = {0};
    char err[256] = "";
    if (ntcp_stuntd_start(&loop, &cfg, &r.server, err, sizeof err) != 0)
        fail_msg("server: %s", err);
    struct sockaddr_storage p, a;
    assert_int_equal(ntcp_stuntd_addrs(r.server, NTCP_STUNTD_V6, &p, &a), 0);
    char addr[80];
    snprintf(addr, sizeof addr, "[2001:db8::1]:%u", ntohs(((struct sockaddr_in6 *)&p)->sin6_port));
    ntcp_t *ctx;
    assert_int_equal(ntcp_new(NULL, &ctx), 0);
    assert_int_equal(ntcp_add_stun_server(ctx, addr), 0);
    assert_int_equal(ntcp_discover_start(ctx, &loop, NTCP_DISCOVER_UDP | NTCP_DISCOVER_TCP, 10000,
                                         on_done, &r),
                     0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(r.done);
    assert_int_equal(r.status, 0);
    /* The server has no IPv4 address: IPv4 is not probed, and says why. */
    assert_false(r.profile.flags & NTCP_DISCOVER_IPV4);
    assert_true(strstr(r.profile.udp4.why, "no IPv4 address") != NULL);
    const ntcp_nat_behaviour_t *bs[2] = {&r.profile.udp6, &r.profile.tcp6};
    for (int i = 0; i < 2; i++) {
        const ntcp_nat_behaviour_t *b = bs[i];
        print_message("%s: reach=%s mapping=%s filtering=%s hairpin=%s syn=%s why=%s\n",
                      i ? "tcp6" : "udp6", ntcp_reach_name(b->reach), ntcp_dep_name(b->mapping),
                      ntcp_dep_name(b->filtering), ntcp_tristate_name(b->hairpin),
                      ntcp_syn_name(b->syn), b->why);
        assert_int_equal(b->reach, NTCP_REACH_OPEN);
        assert_int_equal(b->mapping, NTCP_DEP_ENDPOINT_INDEPENDENT);
        assert_int_equal(b->filtering, NTCP_DEP_NONE);
        assert_int_equal(b->mapped.ss_family, AF_INET6);
    }
    assert_int_equal(r.profile.tcp6.syn, NTCP_SYN_ACCEPTED);
    assert_int_equal(uv_loop_close(&loop), 0);
    ntcp_free(ctx);
}

int main(void)
{
    if (geteuid() != 0) {
        printf("skipped: needs root (a private network namespace with two IPv6 addresses)\n");
        return 77;
    }
    if (unshare(CLONE_NEWNET) != 0) {
        printf("skipped: cannot create a network namespace here\n");
        return 77;
    }
    if (system("ip link set lo up && ip -6 addr add 2001:db8::1/128 dev lo nodad && "
               "ip -6 addr add 2001:db8::2/128 dev lo nodad") != 0) {
        printf("setup failed: ip -6 addr add in the namespace\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ipv6_open),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
